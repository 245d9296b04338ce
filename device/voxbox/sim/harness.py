"""Run the real ``voxbox`` daemon process on ALSA file devices, for the demo and e2e tests.

:class:`DaemonHarness` sets up, in a work directory:

- the ALSA ``file`` devices of :mod:`voxbox.sim.rig` (a microphone fed in real time, a speaker
  drained in real time, optionally a closed acoustic loop: the speaker's output mixed back
  into the microphone with a delay and a gain);
- the local Realtime server (:mod:`voxbox.parrot.server`) in this process, so what the unit
  sends can be counted at the server;
- a ``NOTIFY_SOCKET`` (datagram socket) that records every sd_notify message;
- a mock-GPIO control socket to press the button of the daemon's mock pins;
- the daemon as a subprocess (``python -m voxbox run --log-format json``), whose JSON log
  lines are parsed as they arrive.

All timestamps are ``time.monotonic()`` values, which are system-wide on Linux, so the
daemon's log times, the rig's and the server's can be put on one timeline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tomli_w

from voxbox.errors import VoxboxError
from voxbox.sim.rig import FileDeviceRig

API_KEY = "sk-local-test-0123456789abcdef"


class HarnessError(VoxboxError, RuntimeError):
    """The daemon under test did not do what a test waited for (in time), or could not start."""


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    path.write_text(tomli_w.dumps(sections))


class DaemonHarness:
    """Args:
    workdir: a fresh directory for the FIFOs, sockets, config and logs.
    dialect: the Realtime dialect the daemon speaks (the local server detects it).
    echo_db: closed acoustic loop gain (dB), None for no echo.
    echo_delay_ms: acoustic delay from speaker to microphone (ms).
    echo_rir, echo_nonlinearity: the room and the loudspeaker of the closed loop
        (:class:`voxbox.sim.rig.MicFeeder`); None: a pure delay and gain.
    mic_noise_dbfs: the microphone's background noise (white), dBFS.
    speaker_slack_periods: the rig's speaker carries a shortfall of up to this many periods
        to its next tick instead of playing silence (:class:`voxbox.sim.rig.Speaker`); the closed
        loop uses 2, so the daemon's scheduling never moves the echo path.
    speaker_pipe_bytes: the paced speaker's pipe (bytes; default 4 pages, ~43 ms at 24 kHz
        with 8 channels): a larger pipe absorbs the daemon's scheduling delays like a
        card's buffer, so a late write does not shift the echo path.
    config: extra config sections merged over the harness defaults.
    server_options: keyword arguments for the local server.
    pipe_bytes: the rig's microphone FIFO size, and the speaker's with ``speaker_channels=1``
        (bytes; the paced speaker's pipe holds 4 periods).
    speaker_channels: 8 (the default) paces the rig's speaker per 10 ms period like a real
        card; 1 takes 85 ms at a time (``FileDeviceRig``). The daemon is another process,
        so the paced speaker's blocking close cannot hold this process's GIL.
    alsa_config: more ALSA configuration for the daemon (PCM definitions: a device that
        appears later, one whose open blocks), in ``<workdir>/extra-asound.conf`` after the
        rig's on ``ALSA_CONFIG_PATH``; :meth:`set_alsa_config` replaces it while the
        daemon runs (a card that appears).
    """

    def __init__(self, workdir: Path, dialect: str = "openai-ga", echo_db: float | None = None,
                 echo_delay_ms: float = 25.0, config: dict[str, dict[str, Any]] | None = None,
                 server_options: dict[str, Any] | None = None, api_key: str = API_KEY,
                 pipe_bytes: int = 4096, speaker_channels: int = 8,
                 echo_rir=None, echo_nonlinearity=None, mic_noise_dbfs: float = -60.0,
                 speaker_pipe_bytes: int | None = None, speaker_slack_periods: int = 0,
                 alsa_config: str | None = None):
        self.speaker_pipe_bytes = speaker_pipe_bytes
        self.alsa_config = alsa_config
        self.alsa_config_path = Path(workdir) / "extra-asound.conf"
        self.speaker_slack_periods = speaker_slack_periods
        self.echo_rir = echo_rir
        self.echo_nonlinearity = echo_nonlinearity
        self.mic_noise_dbfs = mic_noise_dbfs
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dialect = dialect
        self.echo_db = echo_db
        self.echo_delay_ms = echo_delay_ms
        self.api_key = api_key
        self.extra_config = config or {}
        self.pipe_bytes = pipe_bytes
        self.speaker_channels = speaker_channels
        self.server_options = server_options or {}
        self.logs: list[dict[str, Any]] = []
        self.stderr_text: list[str] = []
        self.notify: list[tuple[float, str]] = []
        self._log_cv = threading.Condition()
        self.proc: subprocess.Popen | None = None
        self.rig: FileDeviceRig | None = None
        self.server = None
        self.speaker = None
        self.mic = None
        self._notify_sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.config_path = self.workdir / "config.toml"
        self.gpio_sock_path = str(self.workdir / "gpio.sock")
        #: the daemon's $STATE_DIRECTORY (mute state, volume, recordings); kept across restarts
        self.state_dir = self.workdir / "state"

    # ------------------------------------------------------------------ set-up
    def set_alsa_config(self, text: str) -> None:
        """Replace the extra ALSA configuration (see ``alsa_config``). Written to a new
        file renamed over the old one: alsa-lib re-reads a file whose inode or mtime
        (whole seconds) changed, and a rename changes the inode."""
        self.alsa_config = text
        tmp = self.alsa_config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.alsa_config_path)

    def start_server(self, port: int = 0) -> None:
        """Start the local server (``server_options``, the harness's key) on ``port`` (0: any
        free port); also to bring it back on the same port after ``server.stop()``."""
        from voxbox.parrot.server import ServerThread

        self.server = ServerThread(api_key=self.api_key, port=port, **self.server_options)
        self.server.start()

    def server_url(self) -> str:
        return self.server.client_url(self.dialect)

    def config_sections(self) -> dict[str, dict[str, Any]]:
        sections: dict[str, dict[str, Any]] = {
            "realtime": {"url": self.server_url(), "dialect": self.dialect,
                         "reconnect_initial_s": 0.2, "reconnect_max_s": 2.0,
                         "voice": "en-US-Ava:DragonHDLatestNeural" if self.dialect == "azure-voicelive"
                         else "marin"},
            # volume 100 %: the software gain is then exactly 1 and reply audio reaches the
            # speaker bit-exact (the tests compare it with what the server sent)
            # and no time-stretching in the jitter buffer, for the same reason
            "audio": {"capture_device": FileDeviceRig.MIC, "playback_device": FileDeviceRig.SPEAKER,
                      "volume": 100, "jitter_stretch": False},
            "gpio": {"pin_factory": "mock"},
            # cues off by default: tests compare the speaker stream with the reply bit for bit
            "earcons": {"wake": "off", "end": "off", "error": "off", "mute": "off", "unmute": "off",
                        "startup": "off"},
            # the rig's speaker pipe buffers ~85 ms that ALSA does not report; with slack
            # periods the speaker plays a shortfall late instead of as silence and runs
            # ~20 ms per slack period closer to the writer (2 periods: ~50 ms): the
            # reference must lead its echo, never lag it
            "frontend": {"reference_delay_ms": max(0, 80 - 20 * self.speaker_slack_periods)},
            "log": {"format": "json", "level": "info"},
        }
        for name, table in self.extra_config.items():
            merged = dict(sections.get(name, {}))
            for k, v in table.items():
                if isinstance(v, dict) and isinstance(merged.get(k), dict):
                    merged[k] = {**merged[k], **v}
                else:
                    merged[k] = v
            sections[name] = merged
        return sections

    def start(self, mic_signal: np.ndarray | None = None, wait_ready: bool = True,
              ready_timeout: float = 60.0, env: dict[str, str] | None = None) -> None:
        """Start server, rig and daemon; wait for ``READY=1``."""
        if self.server is None:
            self.start_server()
        self.rig = FileDeviceRig(self.workdir / "rig", pipe_bytes=self.pipe_bytes,
                                 speaker_channels=self.speaker_channels,
                                 speaker_pipe_bytes=self.speaker_pipe_bytes)
        self.speaker = self.rig.speaker(slack_periods=self.speaker_slack_periods)
        echo = {}
        if self.echo_db is not None:
            echo = dict(echo_from=self.speaker, echo_gain_db=self.echo_db,
                        echo_delay_ms=self.echo_delay_ms, echo_rir=self.echo_rir,
                        echo_nonlinearity=self.echo_nonlinearity)
        self.mic = self.rig.mic(None, tail="noise", noise_dbfs=self.mic_noise_dbfs, **echo)
        self.mic.start()
        if self.alsa_config is not None:
            self.set_alsa_config(self.alsa_config)
        write_config(self.config_path, self.config_sections())
        self._start_notify()
        self.launch(env=env)
        if wait_ready:
            self.wait_notify("READY=1", timeout=ready_timeout)
        if mic_signal is not None:
            self.mic.play(mic_signal)

    def launch(self, env: dict[str, str] | None = None) -> None:
        """Start (or restart) the daemon process."""
        penv = dict(os.environ)
        penv.update(self.rig.env)
        if self.alsa_config is not None:
            penv["ALSA_CONFIG_PATH"] += f":{self.alsa_config_path}"
        penv.update({"STATE_DIRECTORY": str(self.state_dir),
                     "NOTIFY_SOCKET": str(self.workdir / "notify.sock"), "WATCHDOG_USEC": "2000000",
                     "VOXBOX_API_KEY": self.api_key, "VOXBOX_MOCK_GPIO_SOCKET": self.gpio_sock_path,
                     "PYTHONUNBUFFERED": "1"})
        penv.pop("WATCHDOG_PID", None)
        penv.pop("JOURNAL_STREAM", None)
        if env:
            penv.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "voxbox", "run", "--config", str(self.config_path),
             "--log-format", "json"],
            env=penv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t = threading.Thread(target=self._read_logs, args=(self.proc,), daemon=True)
        t.start()
        self._threads.append(t)

    def _start_notify(self) -> None:
        path = self.workdir / "notify.sock"
        if path.exists():
            path.unlink()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(str(path))
        s.settimeout(0.2)
        self._notify_sock = s

        def reader() -> None:
            while self._notify_sock is not None:
                try:
                    data = s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    return
                now = time.monotonic()
                with self._log_cv:
                    for line in data.decode(errors="replace").splitlines():
                        self.notify.append((now, line))
                    self._log_cv.notify_all()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        self._threads.append(t)

    def _read_logs(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            line = line.rstrip("\n")
            with self._log_cv:
                self.stderr_text.append(line)
                try:
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        self.logs.append(rec)
                except ValueError:
                    pass
                self._log_cv.notify_all()

    # ------------------------------------------------------------------ queries
    def events(self, event: str) -> list[dict[str, Any]]:
        with self._log_cv:
            return [r for r in self.logs if r.get("VOXBOX_EVENT") == event]

    def wait_for(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._log_cv:
            while True:
                val = pred()
                if val:
                    return val
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(self.stderr_text[-25:])
                    raise HarnessError(f"timed out after {timeout} s waiting for {what}; daemon log tail:\n{tail}")
                if self.proc is not None and self.proc.poll() is not None and not val:
                    # let the reader thread drain the last lines, then fail
                    self._log_cv.wait(0.2)
                    val = pred()
                    if val:
                        return val
                    tail = "\n".join(self.stderr_text[-25:])
                    raise HarnessError(f"daemon exited ({self.proc.returncode}) while waiting for {what}:\n{tail}")
                self._log_cv.wait(min(left, 0.1))

    def wait_event(self, event: str, timeout: float = 30.0, after: float = 0.0,
                   where: Callable[[dict], bool] | None = None) -> dict[str, Any]:
        def pred():
            for r in self.logs:
                if r.get("VOXBOX_EVENT") == event and r.get("mono", 0) >= after and (where is None or where(r)):
                    return r
            return None

        return self.wait_for(pred, timeout, f"log event {event!r}")

    def wait_state(self, state: str, timeout: float = 30.0, after: float = 0.0) -> dict[str, Any]:
        return self.wait_event("state", timeout, after, lambda r: r.get("VOXBOX_STATE") == state)

    def wait_notify(self, prefix: str, timeout: float = 30.0) -> float:
        def pred():
            return next((t for t, m in self.notify if m.startswith(prefix)), None)

        return self.wait_for(pred, timeout, f"sd_notify {prefix!r}")

    def states(self) -> list[str]:
        return [r["VOXBOX_STATE"] for r in self.events("state")]

    def led_patterns(self) -> list[str]:
        return [r["VOXBOX_LED"] for r in self.events("led")]

    def button(self, pressed: bool) -> None:
        """Drive the daemon's mock button pin down (pressed) or up."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.sendto(b"press" if pressed else b"release", self.gpio_sock_path)
        finally:
            s.close()

    def press(self, hold_s: float = 0.12) -> None:
        """A tap on the daemon's mock button pin (through gpiozero in the daemon)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.sendto(b"press", self.gpio_sock_path)
            time.sleep(hold_s)
            s.sendto(b"release", self.gpio_sock_path)
        finally:
            s.close()

    # ------------------------------------------------------------------ teardown
    def stop_daemon(self, timeout: float = 10.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for t in self._threads:
            if t.name != "notify":
                t.join(0.5)
        return proc.returncode

    def close(self) -> None:
        self.stop_daemon()
        sock, self._notify_sock = self._notify_sock, None
        if sock is not None:
            sock.close()
        if self.rig is not None:
            self.rig.close()
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> "DaemonHarness":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
