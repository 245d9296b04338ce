"""The jitter buffer's sample-level DSP: time-stretching by WSOLA on whole int16 numpy
frames (in the manner of WebRTC NetEq's preemptive expand and accelerate), and the fade
to silence when the audio runs out mid-period. Neither leaves a step in the waveform.

The pitch lag ``T`` (samples; the jitter buffer searches 2.5-15 ms) is the lag of the best
normalised cross-correlation (:func:`best_lag`). One period is inserted
(:func:`insert_period`) or removed (:func:`remove_period`) by a raised-cosine overlap-add
that starts and ends on the original waveform, so there is no step at either end.

What a stretch makes is a *piece*: ``src`` source samples turned into ``dev`` device
samples. :func:`src_at` maps the device samples handed out of a piece back to the source
samples they account for (exact integers, so the per-item totals stay exact).

:func:`fade_out_tail` ends a period whose audio ran out (an underrun) on a 1 -> 0 ramp
over the tail of the audio, continued by its last sample held.

Units: samples throughout (lags, lengths); audio is int16, ``x`` its float32 copy.

When to stretch, and by how much (the queue depth, the lag behind the earliest possible
player, periodic or quiet audio), is the jitter buffer's policy:
:class:`voxbox.audio.jitter.JitterBuffer`.

Core module, pure: numpy only; deterministic functions that keep no state (:func:`fade_out_tail`
writes into the arrays it is given).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def best_lag(x: np.ndarray, tmin: int, tmax: int) -> tuple[int, float]:
    """Pitch lag ``T`` in [tmin, tmax] maximising the normalised cross-correlation of
    ``x[:w]`` and ``x[T:T + w]`` (``x`` float, at least ``tmax + w`` long), and it."""
    w = min(tmax, x.size - tmax)
    ref = x[:w]
    win = sliding_window_view(x[tmin:tmax + w], w)
    c = win @ ref
    e2 = np.cumsum(np.concatenate([[0.0], x[tmin:tmax + w] ** 2]))
    ew = e2[w:] - e2[:-w]
    nc = c / np.sqrt(ew * float(ref @ ref) + 1e-9)
    i = int(np.argmax(nc))
    return tmin + i, float(nc[i])


def insert_period(x: np.ndarray, src: np.ndarray, T: int) -> np.ndarray:
    """``src`` (int16, at least ``T`` samples) with one pitch period ``T`` more: the device
    samples of an expand piece. ``x``: the head of ``src`` as float, at least ``2 T``."""
    # y = x[:T] ++ crossfade(x[T:2T] -> x[:T]) ++ src[T:]: one period more, continuous
    # at both ends (the crossfade starts on x[T] and ends on x[T-1], followed by x[T])
    fi = _ramp(T)
    ola = x[T:2 * T] * (1.0 - fi) + x[:T] * fi
    return np.concatenate([src[:T], _to16(ola), src[T:]])


def remove_period(x: np.ndarray, src: np.ndarray, T: int) -> np.ndarray:
    """``src`` (int16, at least ``2 T`` samples) with one pitch period ``T`` less: the
    device samples of an accelerate piece. ``x``: the head of ``src`` as float, at least
    ``2 T``."""
    # y = crossfade(x[:T] -> x[T:2T]) ++ src[2T:]: one period less, continuous at both
    # ends (starts on x[0], ends on x[2T-1], followed by x[2T])
    fi = _ramp(T)
    ola = x[:T] * (1.0 - fi) + x[T:2 * T] * fi
    return np.concatenate([_to16(ola), src[2 * T:]])


def src_at(d: int, s: int, dtot: int) -> int:
    """Source samples accounted for by the first ``d`` of ``dtot`` device samples made from
    ``s`` source samples: exact integers, monotone, 0 at 0 and ``s`` at ``dtot``."""
    return d if s == dtot else (d * s) // dtot


def fade_out_tail(out: np.ndarray, filled: int, hold: int, ramp: np.ndarray, scratch: np.ndarray) -> None:
    """Ramp the period ``out`` (int16) down to silence from the audio that ran out at
    ``filled``: the last ``f`` samples of the audio, continued by its last sample held
    (``hold``: ``out[filled - 1]``, or the previous period's last sample if ``filled`` is
    0), go under the 1 -> 0 ``ramp`` (float32, ``f`` samples, at most the period); the
    rest of the period is silence. ``scratch``: float32 work space, at least ``f``."""
    n = out.shape[0]
    f = ramp.size
    start = max(0, filled - f)
    end = min(n, start + f)
    seg = scratch[:end - start]
    seg[:filled - start] = out[start:filled]
    seg[filled - start:] = hold
    seg *= ramp[:end - start]
    out[start:end] = seg
    out[end:] = 0


def _ramp(n: int) -> np.ndarray:
    """Raised-cosine 0 -> 1 crossfade weights (float32), n samples, ends excluded."""
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(n, dtype=np.float32) + 0.5) / n)).astype(
        np.float32)


def _to16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)
