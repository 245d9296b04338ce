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
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from voxbox.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from voxbox.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from voxbox.realtime.session import FATAL_CLOSE_CODES

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

# -- limits ---------------------------------------------------------------------------------
QUIET_S = 1.0  #: quiet recording for the noise floor, s
SETTLE_S = 0.2  #: capture discarded at the start (device start-up, stale buffers), s
MAX_FLOOR_DBFS = -30.0  #: noise floor above this = FAIL, dBFS
MAX_CLIPPED_PCT = 0.1  #: samples at full scale above this = FAIL, %
LEAD_S = 0.3  #: silence written before the sweep, s
CHIRP_S = 1.0  #: sweep duration, s
CHIRP_DBFS = -12.0  #: sweep peak level, dBFS
NOISE_S = 3.0  #: pink-noise burst after the sweep (echo canceller convergence), s
NOISE_DBFS = -20.0  #: pink-noise RMS level, dBFS
TAIL_S = 0.6  #: silence written after the burst (echo tail, longest delay), s
MAX_DELAY_MS = 500.0  #: echo delay search range, ms
MIN_CONFIDENCE = 10.0  #: GCC-PHAT peak-to-sidelobe ratio for "a clear echo"
CONVERGE_S = 1.5  #: ERLE measured after this much of the noise burst, s
ERLE_WINDOW_S = 1.5  #: ... over this long, s
MIN_ERLE_DB = 15.0  #: ERLE below this = FAIL, dB
WAKE_PHRASES = {"hey_jarvis": "Hey Jarvis", "alexa": "Alexa", "ok_nabu": "Okay Nabu",
                "hey_mycroft": "Hey Mycroft", "hey_rhasspy": "Hey Rhasspy"}


@dataclass
class CheckResult:
    """One row of the table.

    Attributes:
        name: check name (one of :data:`CHECKS`).
        result: ``"PASS"``, ``"FAIL"`` or ``"SKIP"``.
        value: the measurement (a number in ``unit``), or None.
        unit: unit of ``value`` (``dBFS``, ``ms``, ``dB``, ``score``).
        limit: the pass criterion, human-readable.
        hint: what a technician should do or know (empty when all is well).
        details: further measurements (numbers, strings), also in the JSON output.
    """

    name: str
    result: str
    value: float | None = None
    unit: str = ""
    limit: str = ""
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def value_text(self) -> str:
        if self.value is None:
            return "-"
        v = self.value
        fmt = ".3f" if self.unit == "score" else ".0f" if self.name in ("network", "button") else ".1f"
        return f"{v:{fmt}} {self.unit}".strip() if isinstance(v, float) else f"{v} {self.unit}".strip()


def _skip(name: str, hint: str) -> CheckResult:
    return CheckResult(name, "SKIP", hint=hint)


def _dbfs(power: float) -> float:
    """Power (mean square, int16 units) → dBFS; -inf for 0."""
    return 10 * math.log10(power / 32768.0**2) if power > 0 else -math.inf


def _round(x: float, nd: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


# -- audio run ------------------------------------------------------------------------------
@dataclass
class AudioRun:
    """What :func:`run_audio` recorded.

    Times are ``time.monotonic()`` seconds. ``captured[n]`` was captured at
    ``capture_t0 + n / capture_rate``; ``played16[k]`` (the written stream at 16 kHz) was
    handed to the playback device (``write()`` accepted it) at ``play_t0 + k / capture_rate``.
    """

    capture_rate: int
    quiet: np.ndarray  # int16, the QUIET_S recording for the noise floor
    captured: np.ndarray | None = None  # int16, the whole capture (16 kHz)
    capture_t0: float = math.nan
    played16: np.ndarray | None = None  # int16, the written stream at 16 kHz
    written: np.ndarray | None = None  # int16, the written stream at the playback rate
    play_t0: float = math.nan
    playback_rate: int = 0
    chirp16: tuple[int, int] = (0, 0)  # [start, end) of the sweep in played16
    noise16: tuple[int, int] = (0, 0)  # [start, end) of the noise burst in played16
    capture_error: str = ""
    playback_error: str = ""
    capture_xruns: int = 0
    playback_xruns: int = 0
    frames: int = 0


def _pink(n: int, dbfs: float, rate: int = 16000, band: tuple[float, float] = (200.0, 7000.0),
          seed: int = 1) -> np.ndarray:
    """Deterministic pink noise limited to ``band`` Hz (:func:`voxbox.audio.speech.pink_noise`)
    with 20 ms raised-cosine fades, float64, RMS (after the fades) at ``dbfs``."""
    from voxbox.audio.speech import pink_noise

    x = pink_noise(n, dbfs, seed, rate=rate, band=band)
    fade = int(0.02 * rate)
    w = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
    x[:fade] *= w
    x[-fade:] *= w[::-1]
    return x * (32768.0 * 10 ** (dbfs / 20) / float(np.sqrt(np.mean(x**2))))


def calibration_signal(rate16: int = 16000) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """The played stream at 16 kHz: ``LEAD_S`` silence, the sweep, the pink-noise burst,
    ``TAIL_S`` silence. Returns (int16 signal, sweep [start, end), noise [start, end))."""
    from voxbox.dsp.calibration import chirp

    lead = np.zeros(int(LEAD_S * rate16))
    sweep = chirp(rate16, seconds=CHIRP_S, level_dbfs=CHIRP_DBFS).astype(np.float64)
    noise = _pink(int(NOISE_S * rate16), NOISE_DBFS, rate16)
    tail = np.zeros(int(TAIL_S * rate16))
    x = np.concatenate([lead, sweep, noise, tail])
    a = lead.size
    b = a + sweep.size
    c = b + noise.size
    return np.clip(np.round(x), -32768, 32767).astype(np.int16), (a, b), (b, c)


def _line_start(times: list[float], counts: list[int], rate: int, skip_s: float) -> float:
    """Earliest-envelope start of a stream: ``min(t_i - n_i / rate)`` over the events after
    the first ``skip_s`` (``t_i``: when sample ``n_i`` had been moved). Scheduling jitter
    only ever makes an event late, so the minimum is the best estimate of the stream's
    timeline (s, monotonic)."""
    if not times:
        return math.nan
    t_first = times[0]
    vals = [t - n / rate for t, n in zip(times, counts) if t - t_first >= skip_s]
    if not vals:
        vals = [t - n / rate for t, n in zip(times, counts)]
    return float(min(vals))


def run_audio(cfg: Config, play: bool = True, quiet_s: float = QUIET_S) -> AudioRun:
    """Record ``quiet_s`` of the room, then (``play``) play the test signal while recording.

    Uses the daemon's :class:`voxbox.audio.alsa.CaptureLoop` and
    :class:`~voxbox.audio.alsa.PlaybackLoop` threads on ``audio.capture_device`` and
    ``audio.playback_device``. Device errors are returned in ``capture_error`` /
    ``playback_error`` (the message names the device and lists the PCMs available).
    Takes about ``SETTLE_S + quiet_s`` (+ the signal, 5.2 s, and the device latency).
    """
    from voxbox.audio.alsa import CaptureLoop, PlaybackLoop

    a = cfg.audio
    crate = a.capture_rate
    cper = crate * a.period_ms // 1000
    run = AudioRun(capture_rate=crate, quiet=np.zeros(0, np.int16))
    frames: list[np.ndarray] = []
    ctimes: list[float] = []
    lock = threading.Lock()

    def on_frame(frame: np.ndarray, t: float) -> None:
        with lock:
            frames.append(frame)
            ctimes.append(t + cper / crate)  # completion time: samples up to the frame's end

    cap = CaptureLoop(a.capture_device, on_frame, rate=crate, period=cper, periods=a.periods,
                      name="selftest-capture")
    try:
        cap.start()
    except Exception as exc:  # AudioDeviceError names the device and the PCMs available
        run.capture_error = str(exc)
        return run
    play_loop = None
    try:
        settle = int(round(SETTLE_S * crate / cper))
        need = settle + int(round(quiet_s * crate / cper))
        deadline = time.monotonic() + SETTLE_S + quiet_s + 2.0
        while time.monotonic() < deadline:
            with lock:
                if len(frames) >= need:
                    break
            time.sleep(0.02)
        with lock:
            got = list(frames)
        if len(got) < need:
            run.capture_error = (f"capture device {a.capture_device!r} delivered {len(got)} of {need} "
                                 f"periods in {SETTLE_S + quiet_s + 2.0:.1f} s (stalled)")
            return run
        run.quiet = np.concatenate(got[settle:need])
        if not play:
            return run
        # -- playback of the test signal --------------------------------------------------
        prate = a.playback_rate
        pper = prate * a.period_ms // 1000
        sig16, run.chirp16, run.noise16 = calibration_signal(crate)
        if prate != crate:
            import soxr

            sig = soxr.resample(sig16.astype(np.float32), crate, prate)
            sig = np.clip(np.round(sig), -32768, 32767).astype(np.int16)
        else:
            sig = sig16.copy()
        total = sig.size
        pos = {"n": 0}
        wtimes: list[float] = []
        wcounts: list[int] = []
        silence = np.zeros(pper, np.int16)

        def source() -> np.ndarray:
            p = pos["n"]
            pos["n"] = p + pper
            if p >= total:
                return silence
            chunk = sig[p:p + pper]
            return chunk if chunk.size == pper else np.concatenate([chunk, silence[: pper - chunk.size]])

        written_n = {"n": 0}

        def on_written(frame: np.ndarray, t: float) -> None:
            written_n["n"] += frame.shape[0]
            wtimes.append(t)
            wcounts.append(written_n["n"])

        play_loop = PlaybackLoop(a.playback_device, source, on_written, rate=prate, period=pper,
                                 periods=a.periods, name="selftest-playback")
        try:
            play_loop.start()
        except Exception as exc:
            run.playback_error = str(exc)
            play_loop = None
            return run
        # everything written, then the device latency (<= MAX_DELAY_MS of echo) plays out
        deadline = time.monotonic() + total / prate + 5.0
        while written_n["n"] < total and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        play_loop.stop(timeout=1.0)
        run.playback_xruns = play_loop.xruns
        play_loop = None
        if written_n["n"] < total:
            run.playback_error = (f"playback device {a.playback_device!r} accepted {written_n['n']} of "
                                  f"{total} samples (stalled)")
            return run
        with lock:
            got = list(frames)
            ct = list(ctimes)
        run.captured = np.concatenate(got)
        run.frames = len(got)
        run.capture_t0 = _line_start(ct, [(k + 1) * cper for k in range(len(ct))], crate, SETTLE_S)
        run.play_t0 = _line_start(wtimes, wcounts, prate, SETTLE_S)
        run.played16 = sig16
        run.written = sig
        run.playback_rate = prate
        return run
    finally:
        if play_loop is not None:
            play_loop.stop(timeout=1.0)
        cap.stop(timeout=1.0)
        run.capture_xruns = cap.xruns


# -- checks ---------------------------------------------------------------------------------
def check_mic(cfg: Config, run: AudioRun) -> CheckResult:
    """Noise floor of the quiet recording, dBFS; FAIL when deaf, clipped or too noisy."""
    limit = f"floor <= {MAX_FLOOR_DBFS:g} dBFS, clipped <= {MAX_CLIPPED_PCT:g} %, not digital silence"
    dev = cfg.audio.capture_device
    if run.capture_error:
        return CheckResult("mic", "FAIL", None, "dBFS", limit,
                           f"{run.capture_error}; check audio.capture_device", {"device": dev})
    x = run.quiet.astype(np.float64)
    if x.size == 0:
        return CheckResult("mic", "FAIL", None, "dBFS", limit, f"no audio from {dev!r}", {"device": dev})
    dc = float(np.mean(x))
    floor = _dbfs(float(np.mean((x - dc) ** 2)))
    peak = float(np.max(np.abs(x)))
    clipped = 100.0 * float(np.mean((run.quiet >= 32767) | (run.quiet <= -32768)))
    det = {"device": dev, "seconds": round(x.size / run.capture_rate, 2),
           "peak_dbfs": _round(20 * math.log10(peak / 32768) if peak > 0 else -math.inf, 1),
           "dc_offset": round(dc, 1), "clipped_pct": round(clipped, 3)}
    shown = _round(floor, 1)
    if not math.isfinite(floor):
        what = "only zeros" if peak == 0 else f"a constant value ({dc:.0f})"
        return CheckResult("mic", "FAIL", None, "dBFS", limit,
                           f"deaf microphone: {dev!r} delivers {what}; check the mic is plugged in, "
                           "the capture mixer switch/gain (alsamixer) and the codec", det)
    if clipped > MAX_CLIPPED_PCT:
        return CheckResult("mic", "FAIL", shown, "dBFS", limit,
                           f"{clipped:.2f} % of samples clipped in quiet: capture gain far too high "
                           "(alsamixer) or a faulty mic", det)
    if floor > MAX_FLOOR_DBFS:
        return CheckResult("mic", "FAIL", shown, "dBFS", limit,
                           "noise floor too high: lower the capture gain, look for hum or a noisy "
                           "USB supply, or test in a quieter room", det)
    return CheckResult("mic", "PASS", shown, "dBFS", limit, "", det)


@dataclass
class EchoMeasurement:
    """Echo path measured by :func:`measure_echo`: delay (ms, write() to microphone),
    the GCC estimate, and the shift ``s`` (samples) placing ``played16`` on the capture
    timeline (``captured[n]`` ≈ echo of ``played16[n - s - delay_samples]``)."""

    delay_ms: float
    erl_db: float
    confidence: float
    peak: float
    shift: int
    tau: float  # GCC delay in samples on the shifted timeline


def measure_echo(run: AudioRun) -> EchoMeasurement:
    """GCC-PHAT of the played stream, placed on the capture timeline, against the capture.

    ``played16[k]`` was handed over at ``play_t0 + k/r`` and ``captured[n]`` captured at
    ``capture_t0 + n/r``; with ``off = (play_t0 - capture_t0) * r`` and ``s = round(off)``
    the reference ``ref[n] = played16[n - s]`` is on the capture timeline up to
    ``frac = off - s``. :func:`voxbox.dsp.calibration.measure_delay` gives ``tau``
    (``captured[n]`` ≈ ``g * ref[n - tau]``), so the echo delay is ``(tau - frac) / r``.
    """
    from voxbox.dsp.calibration import measure_delay

    r = run.capture_rate
    cap = run.captured
    assert cap is not None and run.played16 is not None
    off = (run.play_t0 - run.capture_t0) * r
    s = int(round(off))
    frac = off - s
    ref = _place(run.played16, s, cap.size)
    start = max(0, s)  # the part of the capture from the start of the playback on
    est = measure_delay(ref[start:], cap[start:], r, max_delay_ms=MAX_DELAY_MS)
    return EchoMeasurement(delay_ms=(est.delay_samples - frac) * 1000.0 / r, erl_db=est.erl_db,
                           confidence=est.confidence, peak=est.peak, shift=s, tau=est.delay_samples)


def _place(x: np.ndarray, shift: int, n: int) -> np.ndarray:
    """``y[i] = x[i - shift]`` for ``0 <= i < n`` (zeros outside ``x``), int16."""
    y = np.zeros(n, np.int16)
    lo, hi = max(0, shift), min(n, shift + x.size)
    if hi > lo:
        y[lo:hi] = x[lo - shift:hi - shift]
    return y


def check_echo(cfg: Config, run: AudioRun) -> tuple[CheckResult, EchoMeasurement | None]:
    """Echo delay (ms), ERL (dB) and confidence of the played test signal's echo."""
    limit = f"confidence >= {MIN_CONFIDENCE:g}, 0 < delay < {MAX_DELAY_MS:g} ms"
    if run.capture_error:
        return CheckResult("echo", "FAIL", None, "ms", limit,
                           f"no capture: {run.capture_error}"), None
    if run.playback_error:
        return CheckResult("echo", "FAIL", None, "ms", limit,
                           f"{run.playback_error}; check audio.playback_device"), None
    m = measure_echo(run)
    lead = cfg.frontend.reference_lead_ms
    nzw = np.flatnonzero(run.written) if run.written is not None else np.zeros(0, np.int64)
    det: dict[str, Any] = {
        "erl_db": _round(m.erl_db, 1), "confidence": _round(m.confidence, 1), "peak": _round(m.peak, 3),
        "suggested_reference_delay_ms": max(0, int(round(m.delay_ms - lead))) if m.delay_ms > 0 else None,
        "play_t0": run.play_t0, "capture_t0": run.capture_t0,
        "chirp_start_written": int(run.chirp16[0] * run.playback_rate // run.capture_rate),
        "first_nonzero_written": int(nzw[0]) if nzw.size else None,
        "last_nonzero_written": int(nzw[-1]) if nzw.size else None,
        "playback_rate": run.playback_rate, "capture_xruns": run.capture_xruns,
        "playback_xruns": run.playback_xruns,
        "playback_device": cfg.audio.playback_device, "capture_device": cfg.audio.capture_device,
    }
    val = _round(m.delay_ms, 2)
    if not m.confidence >= MIN_CONFIDENCE:
        return CheckResult("echo", "FAIL", None, "ms", limit,
                           f"no echo of the test sweep found (confidence {m.confidence:.1f}): speaker or "
                           "amplifier dead/muted, volume 0, or the microphone deaf", det), None
    if not 0 < m.delay_ms < MAX_DELAY_MS:
        return CheckResult("echo", "FAIL", val, "ms", limit,
                           f"echo delay {m.delay_ms:.1f} ms is impossible: capture and playback on "
                           "different clocks/devices or xruns during the test; re-run", det), m
    hint = f"ERL {m.erl_db:.1f} dB; suggested frontend.reference_delay_ms = " \
           f"{det['suggested_reference_delay_ms']}"
    if run.capture_xruns or run.playback_xruns:
        hint += f"; xruns during the test (capture {run.capture_xruns}, playback {run.playback_xruns})"
    if math.isfinite(m.erl_db) and m.erl_db < 0:
        hint += "; echo louder than the signal: speaker too close/loud, risk of clipping"
    return CheckResult("echo", "PASS", val, "ms", limit, hint, det), m


def check_aec(cfg: Config, run: AudioRun, m: EchoMeasurement | None) -> CheckResult:
    """ERLE (dB) of the daemon's front end on the captured test signal, after convergence."""
    limit = f">= {MIN_ERLE_DB:g} dB after {CONVERGE_S:g} s"
    if not cfg.frontend.echo_cancel:
        return _skip("aec", "frontend.echo_cancel = false")
    if m is None or run.captured is None or run.played16 is None:
        return _skip("aec", "needs the echo delay (see the echo check)")
    from voxbox.dsp.frontend import build_frontend, run_frontend

    r = run.capture_rate
    cap = run.captured
    lead = int(round(cfg.frontend.reference_lead_ms * r / 1000))
    d = int(round(m.shift + m.tau))  # played16[k] echoes at captured[k + d]
    ref = _place(run.played16, d - lead, cap.size)  # reference leads its echo by `lead`
    fe = build_frontend(cfg)
    try:
        period = r * cfg.audio.period_ms // 1000
        out = run_frontend(fe, cap, ref, period)
        latency = fe.latency_samples
    finally:
        fe.close()
    a = run.noise16[0] + int(CONVERGE_S * r) + d
    b = min(a + int(ERLE_WINDOW_S * r), run.noise16[1] + d, cap.size - latency)
    if b - a < r // 4:
        return CheckResult("aec", "FAIL", None, "dB", limit, "capture too short for the ERLE window")
    mic_p = float(np.mean(cap[a:b].astype(np.float64) ** 2))
    out_p = float(np.mean(out[a + latency:b + latency].astype(np.float64) ** 2))
    erle = 10 * math.log10(mic_p / max(out_p, 1e-3))
    det = {"mic_dbfs": _round(_dbfs(mic_p), 1), "out_dbfs": _round(_dbfs(out_p), 1),
           "window_s": round((b - a) / r, 2), "reference_lead_ms": cfg.frontend.reference_lead_ms,
           "filter_ms": cfg.frontend.filter_ms}
    val = _round(erle, 1)
    if erle < MIN_ERLE_DB:
        return CheckResult("aec", "FAIL", val, "dB", limit,
                           "echo canceller does not converge: non-linear echo (speaker distortion, "
                           "rattle: lower the volume), an echo tail longer than frontend.filter_ms, "
                           "or a noisy room", det)
    return CheckResult("aec", "PASS", val, "dB", limit, "", det)


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


#: starts the local Realtime server for ``realtime.url = "local"``: called with the API key
#: it accepts (None: any), returns a started server with ``client_url(dialect)`` and
#: ``stop()``. The CLI passes :func:`voxbox.cli.start_local_server`; the field tools never
#: import the test server themselves (the import rules in ``.importlinter``).
LocalServerFactory = Callable[[str | None], Any]


def _local_url(cfg: Config, key: str, local_server: LocalServerFactory):
    server = local_server(key or None)
    return server, server.client_url(cfg.realtime.dialect)


async def _probe(url: str, headers: dict[str, str], timeout: float,
                 what: str = "API key") -> tuple[str, str, float, dict]:
    """Connect and wait for ``session.created``. Returns (result, cause, ms, details);
    ``what`` names the credential in auth failures. ``details["fatal"]`` follows the
    daemon's rule: :data:`voxbox.realtime.session.FATAL_ERROR_CODES`, :data:`FATAL_CLOSE_CODES`."""
    import asyncio
    import socket
    import ssl

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

    from voxbox.realtime.session import FATAL_ERROR_CODES

    t0 = time.monotonic()
    ms = lambda: (time.monotonic() - t0) * 1000  # noqa: E731
    try:
        async with asyncio.timeout(timeout):
            async with connect(url, additional_headers=headers, open_timeout=timeout, close_timeout=2,
                               compression=None, max_size=2**24, ping_interval=None) as ws:
                t_open = ms()
                while True:
                    ev = json.loads(await ws.recv())
                    typ = ev.get("type")
                    if typ == "session.created":
                        sess = ev.get("session") or {}
                        return "PASS", "", ms(), {"handshake_ms": round(t_open, 1),
                                                  "session_id": sess.get("id"), "model": sess.get("model")}
                    if typ == "error":
                        err = ev.get("error") or {}
                        code = str(err.get("code") or err.get("type") or "error")
                        fatal = code in FATAL_ERROR_CODES
                        det = {"code": code, "fatal": fatal}
                        if "api_key" in code or code in ("unauthorized", "forbidden"):
                            return "FAIL", f"auth: the service rejected the {what} ({code})", ms(), det
                        msg = str(err.get("message") or "")[:120]
                        if fatal:  # quota, model, API shape: the daemon would not retry soon
                            return "FAIL", (f"refused: {code}: {msg}; check realtime.model/deployment/"
                                            "dialect and the account"), ms(), det
                        return "FAIL", f"service error {code}: {msg}", ms(), det
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):  # fatal for the daemon too
            return "FAIL", f"auth: HTTP {status}, the {what} is rejected (or lacks access)", ms(), \
                {"http_status": status, "fatal": True}
        if status == 404:
            return "FAIL", "HTTP 404: wrong realtime.url path, model or deployment", ms(), {"http_status": status}
        return "FAIL", f"HTTP {status} from the service", ms(), {"http_status": status}
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        code = rcvd.code if rcvd is not None else None
        why = (f"auth: closed 3000 (invalid {what})" if code == 3000
               else f"closed {code} (invalid model or API shape: check realtime.model/dialect)" if code == 4000
               else f"connection closed ({code})")
        return "FAIL", why, ms(), {"close_code": code, "fatal": code in FATAL_CLOSE_CODES}
    except socket.gaierror as exc:
        return "FAIL", f"network: DNS lookup failed ({exc.strerror}); check DNS/the host name", ms(), {}
    except ssl.SSLError as exc:
        return "FAIL", f"TLS: {exc.reason or exc}; check the clock (date) and CA certificates", ms(), {}
    except (TimeoutError, asyncio.TimeoutError):
        return "FAIL", f"timeout: no session.created within {timeout:g} s (realtime.connect_timeout_s)", ms(), {}
    except InvalidURI as exc:
        return "FAIL", f"realtime.url invalid: {exc}", ms(), {}
    except InvalidHandshake as exc:
        return "FAIL", f"handshake failed: {exc}", ms(), {}
    except OSError as exc:
        return "FAIL", f"network: TCP connect failed ({exc.strerror or exc}); check the network/firewall", ms(), {}
    return "FAIL", "connection ended without session.created", ms(), {}


def check_network(cfg: Config, environ: dict[str, str] | None = None,
                  local_server: LocalServerFactory | None = None) -> CheckResult:
    """Connect to the configured service and wait for ``session.created``: time in ms.

    The credential is the daemon's (:func:`voxbox.realtime.broker.load_connect_secret`): the API
    key, or in token-broker mode the unit secret, with which a token is fetched from
    ``broker.url`` first (:func:`voxbox.realtime.broker.credential_source`), so the broker is tested
    too."""
    import asyncio

    from voxbox.host.credentials import CredentialError
    from voxbox.host.sd import redact
    from voxbox.realtime.broker import load_connect_secret

    rt = cfg.realtime
    limit = f"session.created within {rt.connect_timeout_s:g} s"
    try:
        secret = load_connect_secret(cfg, environ, required=True)
    except CredentialError as exc:
        return CheckResult("network", "FAIL", None, "ms", limit, f"unprovisioned: {exc}")
    redact(secret.value)
    result, cause, ms, det = asyncio.run(_connect(cfg, secret, local_server))
    return CheckResult("network", result, _round(ms, 0), "ms", limit, cause, det)


async def _connect(cfg: Config, secret, local_server: LocalServerFactory | None = None
                   ) -> tuple[str, str, float | None, dict]:
    """The network check in one event loop: credential (token from the broker), then
    :func:`_probe`. Returns (result, cause, ms, details)."""
    import asyncio
    from urllib.parse import urlsplit

    from voxbox.host.credentials import CredentialError
    from voxbox.realtime.broker import BrokerError, credential_source
    from voxbox.realtime.dialects import auth_headers, build_url

    rt, b = cfg.realtime, cfg.broker
    det: dict[str, Any] = {"dialect": rt.dialect, "key_source": secret.source}
    what = "API key"
    if b.url:
        what = "broker token"
        try:
            source = credential_source(cfg, secret)
        except (CredentialError, ValueError) as exc:  # no unit id, unusable broker.url
            return "FAIL", f"broker: {exc}", None, det
        det["broker"] = source.url
        t0 = time.monotonic()
        try:
            key = await source.token()
        except BrokerError as exc:
            det.update(broker_status=exc.status, fatal=exc.fatal)
            return "FAIL", f"broker: {exc}", None, det
        det["broker_ms"] = round((time.monotonic() - t0) * 1000, 1)
    else:
        key = await credential_source(cfg, secret).token()
    server = None
    try:
        if rt.url == "local":
            if local_server is None:
                return "FAIL", 'config: realtime.url = "local" needs the local server (`voxbox selftest` starts it)', None, det
            server, base = await asyncio.to_thread(_local_url, cfg, key.value, local_server)
            url = build_url(rt, base)
        else:
            url = build_url(rt, rt.url)
        headers = auth_headers(rt, key.value, url)
        result, cause, ms, pdet = await _probe(url, headers, rt.connect_timeout_s, what)
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
    parts = urlsplit(url)
    return result, cause, ms, {"host": parts.hostname, "port": parts.port, "path": parts.path, **det, **pdet}


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
