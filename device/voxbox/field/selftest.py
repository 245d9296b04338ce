"""``voxbox selftest``: bench and field self-test of a unit, one PASS/FAIL table.

    voxbox selftest [--config PATH] [--json] [--skip CHECK ...] [--interactive]
                    [--button-timeout S] [--wake-sample WAV]

Checks (in this order; ``--skip NAME`` leaves one out, it is then reported as SKIP):

``mic``
    Opens ``audio.capture_device`` (16 kHz mono S16_LE) and records ``QUIET_S`` of the room
    while nothing plays. Noise floor = RMS after removing the DC offset, dBFS (dB re int16
    full scale). FAIL: digital silence (only zeros, or a constant value: a "deaf" mic,
    unplugged USB microphone or dead codec), more than ``MAX_CLIPPED_PCT`` % of samples at
    full scale (gain far too high), or a floor above ``MAX_FLOOR_DBFS``.
``echo``
    While the capture keeps running, opens ``audio.playback_device`` at
    ``audio.playback_rate`` and plays a calibration sweep (:func:`voxbox.dsp.calibration.chirp`,
    100 Hz - 7 kHz) followed by a band-limited pink-noise burst, both generated at 16 kHz
    and resampled to the playback rate with soxr. The echo is found in the capture with
    :func:`voxbox.dsp.calibration.measure_delay` (GCC-PHAT). Reported: the **echo delay**, ms, from
    ``write()`` to the microphone (the time a sample spends in the device's playback
    buffers, the converters and the air: what the far-end reference must be delayed by
    before the echo canceller), the echo return loss (ERL, dB) and the GCC-PHAT
    confidence; and the suggested ``frontend.reference_delay_ms`` (echo delay minus
    ``frontend.reference_lead_ms``). FAIL: no clear echo (confidence < ``MIN_CONFIDENCE``:
    speaker or microphone dead, volume 0), or a delay outside 0..``MAX_DELAY_MS``.
``aec``
    The captured sweep and noise, with the played signal as the reference aligned to lead
    its echo by ``frontend.reference_lead_ms`` (as the daemon aligns it), run through the
    daemon's own front end (:func:`voxbox.dsp.frontend.build_frontend`). ERLE, dB = microphone
    power / output power over the last ``ERLE_WINDOW_S`` of the noise burst (after
    ``CONVERGE_S`` of convergence). FAIL below ``MIN_ERLE_DB``. SKIP when
    ``frontend.echo_cancel = false`` or without an echo delay.
``button``
    Only with ``--interactive`` (else SKIP): shows every LED state pattern for
    ``--led-seconds`` each (the technician watches), then asks for a button press within
    ``--button-timeout`` s. PASS with the time to the press. ``gpio.pin_factory = "mock"``
    uses gpiozero's mock pins.
``network``
    Connects to ``realtime.url`` with the dialect's URL and auth headers
    (:mod:`voxbox.realtime.dialects`) and waits for ``session.created``. PASS with the time from
    the start of the connection to ``session.created``, ms. FAIL names the cause: DNS, TCP
    (refused/unreachable), TLS, HTTP status (401/403 = the API key is rejected), an
    ``error`` event (``invalid_api_key``), a close, or a timeout
    (``realtime.connect_timeout_s``); ``details.fatal`` is set when the daemon would treat
    the answer as fatal (no quick retry). ``url = "local"`` starts the local server as the
    daemon does. In token-broker mode (``broker.url`` set) the unit secret first gets a token
    from the broker (FAIL ``broker: ...`` names its HTTP status or cause), and the token is
    what connects. No key, secret or token is ever printed or logged.
``wake``
    Runs the wake-word detector (``wake.model``, ``wake.threshold``) over a stored sample:
    ``--wake-sample WAV`` (16-bit mono 16 kHz), else a packaged ``data/<model>.wav`` if one
    is installed, else the model's phrase rendered with espeak-ng (built-in models only).
    PASS when detected, value = peak score. SKIP when no sample can be had.

Output: a table (check | result | value | limit | hint) or, with ``--json``, one JSON
object ``{"result", "version", "time", "checks": [{name, result, value, unit, limit,
hint, details}]}``. Exit status 0 when every check is PASS or SKIP, 1 when any FAILs, 78
(EX_CONFIG) when the configuration cannot be loaded. One journald record
``VOXBOX_EVENT=selftest`` carries the overall result and the measurements
(``VOXBOX_SELFTEST_RESULT``, ``VOXBOX_SELFTEST_<CHECK>``, ``VOXBOX_NOISE_FLOOR_DBFS``,
``VOXBOX_ECHO_DELAY_MS``, ``VOXBOX_ERL_DB``, ``VOXBOX_ERLE_DB``, ...), and the last result
is written to ``$STATE_DIRECTORY/selftest.json`` (default ``/var/lib/voxbox``) for
support bundles.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from voxbox.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from voxbox.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from voxbox.field.audiocheck import (  # noqa: F401 (re-exported)
    AudioRun,
    check_aec,
    check_echo,
    check_mic,
    run_audio,
)
from voxbox.field.checkresult import CheckResult, _round, _skip
from voxbox.field.netcheck import LocalServerFactory, check_network

__all__ = [
    "CHECKS", "CheckResult", "AudioRun", "run_audio", "check_mic", "check_echo", "check_aec",
    "check_button_led", "check_network", "check_wake", "run_selftest", "format_table",
    "add_parser", "cmd_selftest",
]

log = logging.getLogger("voxbox.field.selftest")

CHECKS = ("mic", "echo", "aec", "button", "network", "wake")
EXIT_FAIL = EXIT_FAILURE  # a check failed
STATE_FILE = "selftest.json"
"""The last result, in :func:`voxbox.host.sd.state_dir` (read by ``voxbox report``)."""

WAKE_PHRASES = {"hey_jarvis": "Hey Jarvis", "alexa": "Alexa", "ok_nabu": "Okay Nabu",
                "hey_mycroft": "Hey Mycroft", "hey_rhasspy": "Hey Rhasspy"}


# -- checks ---------------------------------------------------------------------------------
def check_button_led(cfg: Config, timeout_s: float = 10.0, led_s: float = 1.0,
                     prompt: Callable[[str], None] | None = None, pin_factory=None) -> CheckResult:
    """Cycle the LED through every state pattern (``led_s`` s each), then wait up to
    ``timeout_s`` s for a button press. ``pin_factory`` overrides ``gpio.pin_factory``."""
    from voxbox.gpio.led import PATTERNS

    g = cfg.gpio
    say = prompt or (lambda s: print(s, file=sys.stderr, flush=True))
    limit = f"press within {timeout_s:g} s"
    if not g.enabled:
        return _skip("button", "gpio.enabled = false")
    factory = pin_factory
    if factory is None and g.pin_factory == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        factory = MockFactory(pin_class=MockPWMPin)
    led = button = None
    pins = f"button GPIO{g.button}, LED " + (f"GPIO{g.rgb_led}" if g.rgb_led else f"GPIO{g.led}")
    try:
        from gpiozero import Button

        from voxbox.gpio.board import GpioLed, GpioRgbLed

        if g.rgb_led is not None:
            led = GpioRgbLed(*g.rgb_led, pin_factory=factory, active_high=g.led_active_high)
        else:
            led = GpioLed(g.led, pin_factory=factory, active_high=g.led_active_high)
        button = Button(g.button, pull_up=g.button_active_low, bounce_time=None, pin_factory=factory)
        say(f"LED test ({pins}): watch the LED, {len(PATTERNS)} patterns, {led_s:g} s each")
        for state, pattern in PATTERNS.items():
            say(f"  LED: {state.value:<14} ({pattern.kind})")
            led.show(pattern)
            time.sleep(led_s)
        led.show(PATTERNS[next(iter(PATTERNS))])
        say(f"Press the button now (within {timeout_s:g} s)...")
        t0 = time.monotonic()
        pressed = button.wait_for_press(timeout=timeout_s)
        dt = (time.monotonic() - t0) * 1000
    except Exception as exc:  # gpiozero: no pin factory, pin in use, no permission
        return CheckResult("button", "FAIL", None, "ms", limit,
                           f"GPIO unavailable ({pins}): {type(exc).__name__}: {exc}; check gpio.* and "
                           "that the daemon is stopped (it holds the pins)")
    finally:
        for dev in (led, button):
            if dev is not None:
                try:
                    dev.close()
                except Exception:  # noqa: BLE001
                    pass
    det = {"patterns": len(PATTERNS), "button_pin": g.button,
           "led_pins": list(g.rgb_led) if g.rgb_led else [g.led]}
    if not pressed:
        return CheckResult("button", "FAIL", None, "ms", limit,
                           f"no press seen on GPIO{g.button}: check the wiring and gpio.button_active_low "
                           f"(= {g.button_active_low}); the LED patterns are judged by eye", det)
    return CheckResult("button", "PASS", _round(dt, 0), "ms", limit,
                       "LED patterns judged by eye", det)


def _wake_sample(cfg: Config, sample: Path | None) -> tuple[np.ndarray | None, str]:
    """(16 kHz int16 sample, where it came from) or (None, why there is none)."""
    from voxbox.field.replay import DspError, read_wav

    model = cfg.wake.model
    if sample is not None:
        try:
            return read_wav(sample, 16000, "--wake-sample"), str(sample)
        except DspError as exc:
            return None, str(exc)
    packaged = Path(__file__).parent.parent / "data" / f"{Path(model).stem}.wav"
    if packaged.is_file():
        try:
            return read_wav(packaged, 16000, "packaged sample"), str(packaged)
        except DspError as exc:
            return None, str(exc)
    phrase = WAKE_PHRASES.get(model)
    if phrase is None:
        return None, f"custom model {model!r}: pass --wake-sample WAV (16 kHz mono 16-bit)"
    try:
        from voxbox.audio.speech import SpeechError, render_speech

        return render_speech(phrase), f"espeak-ng {phrase!r}"
    except SpeechError:
        return None, ("no stored sample and espeak-ng is not installed: pass --wake-sample WAV "
                      "(16 kHz mono 16-bit) or apt-get install espeak-ng")


def check_wake(cfg: Config, sample: Path | None = None) -> CheckResult:
    """The wake-word detector on a stored sample: PASS when detected, value = peak score."""
    w = cfg.wake
    limit = f"detected, score >= {w.threshold:g}"
    if not w.enabled:
        return _skip("wake", "wake.enabled = false")
    x, source = _wake_sample(cfg, sample)
    if x is None:
        return CheckResult("wake", "SKIP" if sample is None else "FAIL", None, "score", limit, source)
    from voxbox.wake.detector import WakeModelError, WakeWordDetector

    try:
        det = WakeWordDetector(w.model, w.threshold, w.refractory_s)
    except WakeModelError as exc:
        return CheckResult("wake", "FAIL", None, "score", limit, f"wake.model: {exc}")
    pad = np.zeros(16000, np.int16)
    y = np.concatenate([pad, x, pad])
    hit = None
    for i in range(0, y.size, 160):
        d = det.process(y[i:i + 160], i / 16000)
        if d is not None and hit is None:
            hit = d
    details = {"model": det.model_name, "sample": source, "threshold": w.threshold}
    val = _round(det.peak_score, 3)
    if hit is None:
        return CheckResult("wake", "FAIL", val, "score", limit,
                           f"not detected on {source}: wrong model file, or wake.threshold too high", details)
    details["at_s"] = round(hit.t - 1.0, 2)
    return CheckResult("wake", "PASS", val, "score", limit, "", details)


# -- orchestration --------------------------------------------------------------------------
def run_selftest(cfg: Config, skip: set[str] | frozenset[str] = frozenset(), interactive: bool = False,
                 button_timeout_s: float = 10.0, led_s: float = 1.0, wake_sample: Path | None = None,
                 pin_factory=None, prompt: Callable[[str], None] | None = None,
                 environ: dict[str, str] | None = None,
                 local_server: LocalServerFactory | None = None) -> list[CheckResult]:
    """Run every check not in ``skip`` (names from :data:`CHECKS`); one result per check,
    in :data:`CHECKS` order. Never raises for a failing unit (only for programming errors)."""
    bad = set(skip) - set(CHECKS)
    if bad:
        raise ValueError(f"unknown check(s) {sorted(bad)}; checks: {', '.join(CHECKS)}")
    out: dict[str, CheckResult] = {}
    want_audio = {"mic", "echo", "aec"} - set(skip)
    if want_audio:
        run = run_audio(cfg, play=bool({"echo", "aec"} & want_audio))
        out["mic"] = check_mic(cfg, run)
        m = None
        if {"echo", "aec"} & want_audio:
            try:
                out["echo"], m = check_echo(cfg, run)
            except ValueError as exc:  # measure_delay on unusable input
                out["echo"] = CheckResult("echo", "FAIL", None, "ms", "", f"cannot measure: {exc}")
            out["aec"] = check_aec(cfg, run, m)
    if "button" not in skip:
        out["button"] = (check_button_led(cfg, button_timeout_s, led_s, prompt, pin_factory)
                         if interactive else _skip("button", "interactive only: run with --interactive"))
    if "network" not in skip:
        out["network"] = check_network(cfg, environ, local_server)
    if "wake" not in skip:
        out["wake"] = check_wake(cfg, wake_sample)
    return [out.get(n) or _skip(n, "--skip " + n) for n in CHECKS]


def overall(results: list[CheckResult]) -> str:
    return "FAIL" if any(r.result == "FAIL" for r in results) else "PASS"


def to_json(results: list[CheckResult]) -> dict[str, Any]:
    from voxbox import __version__
    return {"result": overall(results), "version": __version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checks": [asdict(r) for r in results]}


def format_table(results: list[CheckResult]) -> str:
    """The human-readable table: check | result | value | limit | hint."""
    rows = [("check", "result", "value", "limit", "hint")]
    rows += [(r.name, r.result, r.value_text, r.limit, r.hint) for r in results]
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(row[i].ljust(w[i]) for i in range(4)) + "  " + row[4])
        if k == 0:
            lines.append("  ".join("-" * w[i] for i in range(4)) + "  " + "-" * 4)
    lines.append(f"selftest: {overall(results)}")
    return "\n".join(lines)


_FIELDS = {("mic", None): "VOXBOX_NOISE_FLOOR_DBFS", ("echo", None): "VOXBOX_ECHO_DELAY_MS",
           ("echo", "erl_db"): "VOXBOX_ERL_DB", ("echo", "confidence"): "VOXBOX_ECHO_CONFIDENCE",
           ("echo", "suggested_reference_delay_ms"): "VOXBOX_SUGGESTED_REFERENCE_DELAY_MS",
           ("aec", None): "VOXBOX_ERLE_DB", ("network", None): "VOXBOX_CONNECT_MS",
           ("wake", None): "VOXBOX_WAKE_SCORE", ("button", None): "VOXBOX_BUTTON_MS"}


def journal_fields(results: list[CheckResult]) -> dict[str, Any]:
    """The ``VOXBOX_*`` fields of the journald record (measurements that exist only)."""
    f: dict[str, Any] = {"VOXBOX_EVENT": "selftest", "VOXBOX_SELFTEST_RESULT": overall(results)}
    by = {r.name: r for r in results}
    for r in results:
        f[f"VOXBOX_SELFTEST_{r.name.upper()}"] = r.result
    for (name, key), fld in _FIELDS.items():
        r = by.get(name)
        if r is None or r.result == "SKIP":
            continue
        v = r.value if key is None else r.details.get(key)
        if v is not None:
            f[fld] = v
    failed = [r.name for r in results if r.result == "FAIL"]
    if failed:
        f["VOXBOX_SELFTEST_FAILED"] = ",".join(failed)
    return f


def record(results: list[CheckResult], state_dir: Path | None = None) -> Path | None:
    """Log the journald record and write ``selftest.json`` (atomically) in ``state_dir``
    (default ``$STATE_DIRECTORY`` or ``/var/lib/voxbox``). Returns the path or None."""
    fields = journal_fields(results)
    res = overall(results)
    failed = fields.get("VOXBOX_SELFTEST_FAILED", "")
    (log.warning if res == "FAIL" else log.info)(
        "selftest %s%s", res, f" (failed: {failed})" if failed else "", extra=fields)
    if state_dir is None:
        from voxbox.host.sd import state_dir as default_state_dir

        state_dir = default_state_dir()
    path = Path(state_dir) / STATE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(to_json(results), indent=1) + "\n")
        os.replace(tmp, path)
        return path
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc.strerror or exc,
                    extra={"VOXBOX_EVENT": "state_file"})
        return None


def cmd_selftest(args: argparse.Namespace) -> int:
    from voxbox.host.sd import setup_logging

    try:
        cfg = load_config(args.config)
        from voxbox.realtime.dialects import check_features

        check_features(cfg.realtime)
    except (ConfigError, ValueError) as exc:
        print(f"voxbox selftest: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # journald when systemd-python is there (even from a shell), else stderr
    setup_logging(args.log_format or "journal", cfg.log.level)
    results = run_selftest(cfg, set(args.skip or ()), interactive=args.interactive,
                           button_timeout_s=args.button_timeout, led_s=args.led_seconds,
                           wake_sample=args.wake_sample, local_server=getattr(args, "local_server", None))
    record(results)
    if args.json:
        print(json.dumps(to_json(results)))
    else:
        print(format_table(results))
    return EXIT_FAIL if overall(results) == "FAIL" else EXIT_OK


def add_parser(sub, local_server: LocalServerFactory | None = None) -> argparse.ArgumentParser:
    """Register ``selftest`` on an argparse subparsers object; ``local_server`` starts the
    local Realtime server when the configuration says ``realtime.url = "local"``."""
    p = sub.add_parser("selftest", help="test microphone, speaker echo, echo canceller, GPIO, network, wake word",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                   help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--skip", action="append", choices=CHECKS, default=[], metavar="CHECK",
                   help=f"leave a check out (repeatable): {', '.join(CHECKS)}")
    p.add_argument("--interactive", action="store_true",
                   help="run the button and LED check (needs someone at the unit)")
    p.add_argument("--button-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the button press (default 10)")
    p.add_argument("--led-seconds", type=float, default=1.0, metavar="S",
                   help="seconds each LED pattern is shown (default 1)")
    p.add_argument("--wake-sample", type=Path, default=None, metavar="WAV",
                   help="wake-word recording (16-bit mono 16 kHz) instead of the stored/synthesised one")
    p.add_argument("--log-format", choices=["auto", "text", "json", "journal"], default=None,
                   help="where the result record goes (default journal, else stderr)")
    p.set_defaults(func=cmd_selftest, local_server=local_server)
    return p
