"""``voxbox`` command line.

    voxbox [run] [--config PATH]     run the daemon (what systemd starts)
    voxbox check-config [--config PATH]
    voxbox demo [--out DIR]          the whole appliance on real speech, ALSA file devices
    voxbox server [--port N]         the local Realtime server (parrot)
    voxbox dsp --mic M --ref R --out O [--set key=value]   replay audio through the front end
    voxbox report [--out FILE]       support bundle (journal, redacted config, versions, self-test)
    voxbox selftest [--json]         bench/field self-test (microphone, echo, canceller, link, wake word)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from voxbox import __version__
from voxbox.config import DEFAULT_CONFIG_PATH, Config, load_config
from voxbox.errors import EXIT_CONFIG, ConfigError, ConfigurationError, CredentialError, CredentialInvalid


def _load(path: Path) -> Config:
    return load_config(path)


def _preflight(cfg: Config, *, allow_unprovisioned: bool = False, check_devices: bool = True):
    """Everything that can be checked before touching audio. Returns the credential
    (:func:`voxbox.realtime.broker.load_connect_secret`: the API key, or the unit secret in
    token-broker mode; an empty Secret when ``allow_unprovisioned`` and there is none yet: the daemon then runs
    in the ``unprovisioned`` state and waits for the credential).

    A credential that is present but malformed (:class:`voxbox.host.credentials.CredentialInvalid`:
    a line break, control character or whitespace in it) always raises, also with
    ``allow_unprovisioned``: waiting would not make it valid.

    ``check_devices``: open (in a child process: an open that blocks cannot hang this
    one) and close both audio devices. ``voxbox check-config`` does; ``voxbox run`` does
    not: a device missing at start (a USB card not enumerated yet) is the daemon's to wait
    for, reported on the LED, in ``STATUS=`` and the journal; exiting would leave the unit
    down until a person comes.

    Raises:
        ConfigError / CredentialError / AudioDeviceError naming the problem (a credential
        by its source, never its value).
    """
    from voxbox.host.credentials import Secret
    from voxbox.realtime.broker import load_connect_secret
    from voxbox.realtime.dialects import check_features

    log = logging.getLogger("voxbox")
    for warning in check_features(cfg.realtime):  # raises UnsupportedFeature naming the key
        log.warning("%s", warning, extra={"VOXBOX_EVENT": "config_warning"})
    try:
        # the API key, or in token-broker mode the unit's own secret (and its unit id)
        key = load_connect_secret(cfg, required=True)
    except CredentialError as exc:
        if not allow_unprovisioned or isinstance(exc, CredentialInvalid):
            raise
        log.error("%s; waiting for provisioning", exc, extra={"VOXBOX_EVENT": "unprovisioned"})
        key = Secret("", "none")
    if check_devices:
        from voxbox.audio.alsa import open_check

        open_check(cfg.audio.capture_device, "capture")
        open_check(cfg.audio.playback_device, "playback")
    if cfg.wake.enabled:
        from voxbox.wake.detector import find_model

        find_model(cfg.wake.model)
    return key


def start_local_server(api_key: str | None):
    """Start the local Realtime server (parrot) for ``realtime.url = "local"``: it accepts
    ``api_key`` (None: any key). Returns the running :class:`voxbox.parrot.server.ServerThread`.
    Only the CLI imports the test server; the daemon and the self-test are given this."""
    from voxbox.parrot.server import ServerThread

    server = ServerThread(api_key=api_key)
    server.start()
    return server


def cmd_run(args: argparse.Namespace) -> int:
    from voxbox.host.sd import redact, setup_logging

    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        print(f"voxbox: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    fmt = args.log_format or cfg.log.format
    setup_logging(fmt, cfg.log.level)
    log = logging.getLogger("voxbox")
    try:
        key = _preflight(cfg, allow_unprovisioned=True, check_devices=False)
    except ConfigurationError as exc:  # the unit cannot run as configured: say what, exit before audio
        log.error("%s", exc, extra={"VOXBOX_EVENT": "config_error"})
        print(f"voxbox: {exc}", file=sys.stderr) if fmt == "json" else None
        return exc.exit_code
    redact(key.value)
    from voxbox.service.daemon import Daemon

    daemon = Daemon(cfg, key, mock_gpio_socket=os.environ.get("VOXBOX_MOCK_GPIO_SOCKET"),
                    local_server=start_local_server if cfg.realtime.url == "local" else None)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stop)
        loop.add_signal_handler(signal.SIGUSR1, daemon.dump_recording)
        return await daemon.run()

    return asyncio.run(main())


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args.config)
        _preflight(cfg)
    except Exception as exc:
        print(f"voxbox: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.config}: OK (dialect {cfg.realtime.dialect}, capture {cfg.audio.capture_device}, "
          f"playback {cfg.audio.playback_device})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from voxbox.sim.demo import run_demo

    return run_demo(out_dir=args.out, dialect=args.dialect, echo_db=args.echo_db)


def cmd_server(args: argparse.Namespace) -> int:
    from voxbox.parrot.server import main as server_main

    return server_main(["--port", str(args.port), "--host", args.host])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voxbox", description="Voxbox voice appliance")
    p.add_argument("--version", action="version", version=f"voxbox {__version__}")
    sub = p.add_subparsers(dest="command")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH})")

    run = sub.add_parser("run", help="run the daemon (default)")
    with_config(run)
    run.add_argument("--log-format", choices=["auto", "text", "json", "journal"], default=None)
    run.set_defaults(func=cmd_run)

    chk = sub.add_parser("check-config", help="validate the configuration, devices and credential")
    with_config(chk)
    chk.set_defaults(func=cmd_check_config)

    demo = sub.add_parser("demo", help="run the appliance end to end on recorded speech")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    demo.add_argument("--dialect", default="openai-ga",
                      choices=["openai-ga", "openai-beta", "azure-voicelive"])
    demo.add_argument("--echo-db", type=float, default=-26.0,
                      help="speaker-to-microphone echo gain in dB (closed acoustic loop)")
    demo.set_defaults(func=cmd_demo)

    from voxbox.field import firstboot, provision, report, selftest
    from voxbox.field import replay as dsp

    dsp.add_parser(sub)
    report.add_parser(sub)
    selftest.add_parser(sub, local_server=start_local_server)
    provision.add_parser(sub)
    firstboot.add_parser(sub)

    srv = sub.add_parser("server", help="run the local Realtime server (parrot)")
    srv.add_argument("--port", type=int, default=8765)
    srv.add_argument("--host", default="127.0.0.1")
    srv.set_defaults(func=cmd_server)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or argv[0].startswith("--") and argv[0] not in ("--help", "-h", "--version"):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)
