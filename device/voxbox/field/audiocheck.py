"""The audio part of ``voxbox selftest``: one run on the unit's devices (:func:`run_audio`:
the quiet recording, then the calibration signal played while recording) and the checks
made on it: ``mic`` (noise floor), ``echo`` (echo delay, ERL) and ``aec`` (ERLE of the
daemon's front end). The limits are described in :mod:`voxbox.field.selftest`."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxbox.config import Config
from voxbox.field.checkresult import CheckResult, _round, _skip

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


def _dbfs(power: float) -> float:
    """Power (mean square, int16 units) → dBFS; -inf for 0."""
    return 10 * math.log10(power / 32768.0**2) if power > 0 else -math.inf


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
