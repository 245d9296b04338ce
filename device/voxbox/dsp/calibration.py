"""One-shot echo-path measurement: the calibration sweep and the GCC-PHAT delay of a
played signal's echo in a captured one, on whole blocks.

Core module (numpy only; no I/O, no clocks, no randomness): the same input gives the
same output, whether it comes from the self-test, the daemon or an offline tool.

Conventions (16 kHz capture rate on the device; :mod:`voxbox.dsp.align` uses the same):

- **delay** (samples or ms): how much later the echo appears in the *captured* stream
  than the same sound in the *played* (reference) stream, i.e.
  ``captured[n] ~ g * played[n - delay]``. Positive = the reference leads its echo (what
  the echo canceller needs; keep it a few ms to a few tens of ms). Negative = the echo
  arrives before the reference (every echo canceller fails: the reference is late).
- **ERL** (echo return loss, dB): played level minus captured echo level (positive =
  the echo is quieter than the reference), the echo level being the part of the capture
  that is linearly coherent with the played signal (background noise excluded).

Pieces:

- :func:`chirp` — a log sweep for an explicit calibration (``voxbox selftest``), int16.
- :func:`measure_delay` — GCC-PHAT with sub-sample peak refinement on whole blocks,
  giving a :class:`DelayEstimate` (delay in samples and ms, confidence, peak, ERL in dB);
  :class:`voxbox.dsp.align.EchoDelayTracker` runs it on windows of normal operation.

The argument checks (``_check_signal``, ``_positive``) and ``_next_pow2`` are shared
with :mod:`voxbox.dsp.align`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["DelayEstimate", "chirp", "measure_delay"]

Int16Array = npt.NDArray[np.int16]


# -- helpers ------------------------------------------------------------------------------
def _check_signal(name: str, x: object, min_len: int = 1) -> np.ndarray:
    """1-D int16/float array with at least ``min_len`` finite samples, else ValueError."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray of shape (n,), got {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"{name}: expected shape (n,), got {x.shape}")
    if not (x.dtype == np.int16 or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{name}: expected dtype int16 or float, got {x.dtype}")
    if x.shape[0] < min_len:
        raise ValueError(f"{name}: too short, {x.shape[0]} samples (need at least {min_len})")
    if x.dtype != np.int16 and not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def _positive(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: must be a positive number, got {v!r}")
    return float(v)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


# -- calibration sweep --------------------------------------------------------------------
def chirp(sample_rate: int = 16000, seconds: float = 2.0, f0: float = 100.0, f1: float = 7000.0,
          level_dbfs: float = -12.0, fade_ms: float = 20.0) -> Int16Array:
    """Exponential (log) sine sweep for delay / echo-path calibration.

    Args:
        sample_rate: Hz.
        seconds: sweep duration, s (> 0).
        f0, f1: start / end frequency, Hz, ``0 < f0 < f1 <= sample_rate / 2``.
        level_dbfs: peak level, dB re int16 full scale (<= 0); the sweep's RMS is 3 dB lower.
        fade_ms: raised-cosine fade in and out, ms (clipped to a quarter of the sweep).

    Returns:
        int16 array, shape ``(round(seconds * sample_rate),)``.

    Raises:
        ValueError: a non-positive rate/duration, frequencies out of order or above
            Nyquist, a positive level; the message names the argument.
    """
    sr = _positive("sample_rate", sample_rate)
    secs = _positive("seconds", seconds)
    _positive("f0", f0)
    _positive("f1", f1)
    if not f0 < f1:
        raise ValueError(f"f1: must be above f0 ({f0} Hz), got {f1}")
    if f1 > sr / 2:
        raise ValueError(f"f1: must be <= sample_rate / 2 ({sr / 2} Hz), got {f1}")
    if not isinstance(level_dbfs, (int, float)) or isinstance(level_dbfs, bool) or level_dbfs > 0:
        raise ValueError(f"level_dbfs: must be a number <= 0, got {level_dbfs!r}")
    if not isinstance(fade_ms, (int, float)) or isinstance(fade_ms, bool) or fade_ms < 0:
        raise ValueError(f"fade_ms: must be a number >= 0, got {fade_ms!r}")
    n = int(round(secs * sr))
    if n < 16:
        raise ValueError(f"seconds: too short ({n} samples)")
    t = np.arange(n) / sr
    k = math.log(f1 / f0)
    phase = 2 * math.pi * f0 * secs / k * (np.exp(t * k / secs) - 1.0)
    y = np.sin(phase)
    nf = min(int(round(fade_ms * sr / 1000)), n // 4)
    if nf > 0:
        w = 0.5 - 0.5 * np.cos(np.pi * (np.arange(nf) + 0.5) / nf)
        y[:nf] *= w
        y[-nf:] *= w[::-1]
    amp = 32767.0 * 10 ** (level_dbfs / 20)
    return np.round(y * amp).astype(np.int16)


# -- delay measurement --------------------------------------------------------------------
@dataclass(frozen=True)
class DelayEstimate:
    """Result of :func:`measure_delay`.

    Attributes:
        delay_samples: echo delay, samples (float, sub-sample); positive = the captured
            echo lags the played signal (see the module conventions).
        delay_ms: the same in ms.
        confidence: peak-to-sidelobe ratio of the GCC-PHAT function: (peak - mean) / std
            over the searched lags more than 2 ms from the peak. Uncorrelated signals give
            about 4-5 (the largest of many Gaussian values); >= 10 is a clear echo.
        peak: height of the normalised GCC-PHAT peak, 0..1 (1 = a pure delay, noise-free).
        erl_db: echo return loss, dB: played level minus the level of the captured part
            that is linearly coherent with the played signal at this delay (Welch
            cross-spectra). ``nan`` when the overlap is too short to estimate it.
        sample_rate: Hz.
    """

    delay_samples: float
    delay_ms: float
    confidence: float
    peak: float
    erl_db: float
    sample_rate: int


def _band_weights(P: np.ndarray, nfft: int, sr: float, band_hz: tuple[float, float]) -> np.ndarray:
    """Bins inside ``band_hz`` where the played spectrum is within 50 dB of its band peak."""
    f = np.arange(P.shape[0]) * (sr / nfft)
    pw = P.real * P.real + P.imag * P.imag
    inband = (f >= band_hz[0]) & (f <= band_hz[1])
    if not inband.any():
        return inband.astype(np.float64)
    # smoothed played power, so a bin is judged by its neighbourhood, not by its own dip
    k = max(1, nfft // 512)
    sm = np.convolve(pw, np.ones(k) / k, mode="same")
    ref = np.max(sm[inband])
    return (inband & (sm > ref * 1e-5)).astype(np.float64)


def _refine_peak(G: np.ndarray, nfft: int, m0: int, cc: np.ndarray) -> float:
    """Sub-sample peak of the band-limited correlation ``irfft(G)`` near integer lag
    ``m0`` (index in ``cc``, which may be negative = wrapped): parabolic start, then
    Newton steps on the exact derivative computed from the spectrum."""
    y0, y1, y2 = cc[(m0 - 1) % nfft], cc[m0 % nfft], cc[(m0 + 1) % nfft]
    den = y0 - 2 * y1 + y2
    tau = float(m0) + (0.5 * (y0 - y2) / den if den < 0 else 0.0)
    # cc(t) = sum_k c_k Re(G_k exp(j w_k t)), c_k = 2 except DC/Nyquist (irfft scaling)
    k = np.arange(G.shape[0])
    w = 2 * np.pi * k / nfft
    c = np.full(G.shape[0], 2.0)
    c[0] = 1.0
    if nfft % 2 == 0:
        c[-1] = 1.0
    a = c * G
    for _ in range(6):
        e = np.exp(1j * w * tau)
        ae = a * e
        d1 = -np.sum(w * ae.imag)  # d/dt Re(a e^{jwt}) = -w Im(...)
        d2 = -np.sum(w * w * ae.real)
        if not d2 < 0:
            break
        step = d1 / d2
        if abs(step) > 0.5:
            break
        tau -= step
        if abs(step) < 1e-6:
            break
    if abs(tau - m0) > 1.0:  # Newton wandered off: keep the parabolic value
        tau = float(m0) + (0.5 * (y0 - y2) / den if den < 0 else 0.0)
    return tau


def _coherent_erl_db(p: np.ndarray, c: np.ndarray, lag: int, sr: float) -> float:
    """ERL from Welch cross-spectra of ``p`` and ``c`` aligned at integer ``lag``."""
    if lag >= 0:
        pp, cc = p[: max(0, min(p.shape[0], c.shape[0] - lag))], c[lag:]
    else:
        pp, cc = p[-lag:], c
    n = min(pp.shape[0], cc.shape[0])
    pp, cc = pp[:n], cc[:n]
    # segment length: long enough for the reverberant part of the echo path (up to 0.5 s)
    seg = 8192 if sr >= 16000 else 4096
    while seg > 256 and n < 6 * seg:
        seg //= 2
    if n < 2 * seg or seg < 256:
        return math.nan
    hop = seg // 2
    win = np.hanning(seg)
    starts = np.arange(0, n - seg + 1, hop)
    P = np.fft.rfft(pp[starts[:, None] + np.arange(seg)] * win, axis=1)
    C = np.fft.rfft(cc[starts[:, None] + np.arange(seg)] * win, axis=1)
    spp = np.mean(P.real**2 + P.imag**2, axis=0)
    scc = np.mean(C.real**2 + C.imag**2, axis=0)
    spc = np.mean(np.conj(P) * C, axis=0)
    ok = spp > np.max(spp) * 1e-9
    coh_pow = np.sum((spc.real[ok] ** 2 + spc.imag[ok] ** 2) / spp[ok])
    p_pow = np.sum(spp)
    if coh_pow <= 0 or p_pow <= 0 or np.sum(scc) <= 0:
        return math.nan
    return float(10 * math.log10(p_pow / coh_pow))


def measure_delay(played: np.ndarray, captured: np.ndarray, sample_rate: int = 16000,
                  max_delay_ms: float = 500.0, band_hz: tuple[float, float] | None = None) -> DelayEstimate:
    """Delay of the echo of ``played`` in ``captured`` by GCC-PHAT.

    Both arrays start at the same instant (sample 0 of each was played / captured at the
    same stream position). Works with a :func:`chirp` or with any broadband signal
    (speech); needs no particular level.

    Args:
        played: far-end reference, int16 or float, shape ``(n,)``, at least 0.1 s.
        captured: microphone signal, int16 or float, shape ``(m,)``, at least 0.1 s.
        sample_rate: Hz, common to both.
        max_delay_ms: the search range is ``[-max_delay_ms, +max_delay_ms]``, ms (> 0).
        band_hz: frequency band used, Hz; default ``(150, 0.45 * sample_rate)`` (small
            loudspeakers reproduce nothing lower; the top octave edge is left out).

    Returns:
        :class:`DelayEstimate` (delay in samples and ms, confidence, peak, ERL).

    Raises:
        ValueError: a non-array, wrong dtype, not 1-D, NaN/inf, shorter than 0.1 s, a
            silent ``played``, or a bad ``sample_rate`` / ``max_delay_ms`` / ``band_hz``;
            the message names the argument.
    """
    sr = _positive("sample_rate", sample_rate)
    min_len = int(0.1 * sr)
    played = _check_signal("played", played, min_len)
    captured = _check_signal("captured", captured, min_len)
    max_lag = int(round(_positive("max_delay_ms", max_delay_ms) * sr / 1000))
    if band_hz is None:
        band_hz = (150.0, 0.45 * sr)
    if (not isinstance(band_hz, tuple) or len(band_hz) != 2 or not 0 <= band_hz[0] < band_hz[1] <= sr / 2):
        raise ValueError(f"band_hz: expected (low, high) with 0 <= low < high <= {sr / 2}, got {band_hz!r}")
    p = played.astype(np.float64)
    c = captured.astype(np.float64)
    if not np.any(p):
        raise ValueError("played: is silent (all zeros)")
    n = _next_pow2(p.shape[0] + c.shape[0])
    P = np.fft.rfft(p, n)
    C = np.fft.rfft(c, n)
    G = np.conj(P) * C
    mag = np.abs(G)
    wts = _band_weights(P, n, sr, band_hz)
    nb = float(np.sum(wts))
    if nb == 0:
        raise ValueError("played: no energy in band_hz")
    G = np.where(mag > 0, G / np.maximum(mag, 1e-300), 0.0) * wts
    # normalise so a noise-free pure delay peaks at 1.0
    norm = (2 * nb - wts[0] - (wts[-1] if n % 2 == 0 else 0.0)) / n
    G /= norm
    cc = np.fft.irfft(G, n)
    max_lag = min(max_lag, n // 2 - 2)
    lags = np.concatenate([cc[n - max_lag:], cc[: max_lag + 1]])  # lags -max_lag..max_lag
    i = int(np.argmax(lags))
    m0 = i - max_lag
    peak = float(lags[i])
    excl = int(round(0.002 * sr))
    side = np.concatenate([lags[: max(0, i - excl)], lags[i + excl + 1:]])
    if side.shape[0] >= 8:
        sd = float(np.std(side))
        conf = (peak - float(np.mean(side))) / sd if sd > 0 else math.inf
    else:
        conf = math.nan
    tau = _refine_peak(G, n, m0, cc) if abs(m0) < max_lag else float(m0)
    erl = _coherent_erl_db(p, c, int(round(tau)), sr)
    return DelayEstimate(delay_samples=float(tau), delay_ms=float(tau) * 1000.0 / sr, confidence=float(conf),
                         peak=peak, erl_db=float(erl), sample_rate=int(sr))
