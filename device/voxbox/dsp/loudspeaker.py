"""Loudspeaker model: an adaptive memoryless nonlinearity in front of the linear canceller.

Core module, pure: no clock, no I/O, no randomness; the echo canceller's impulse
response comes in through a callable.

Why: a small loudspeaker driven hard (a car at speaking volume, a kiosk in a noisy hall)
saturates. Its echo is then ``h * f(x)``, a nonlinearity ``f`` followed by the room
``h`` (a Hammerstein system), and a linear canceller fed ``x`` cannot remove the part of
the echo that ``f`` adds: in the front-end room family, soft-clipping and clipping
loudspeakers leave distortion 8-15 dB below the echo, which caps the echo return loss
enhancement (ERLE) at 21-27 dB whatever the canceller does. Feeding the canceller
``f(x)`` instead makes the echo path linear again (measured on the tuning rooms with the
true ``f``: ERLE median 27.7 -> 44.2 dB).

Model: ``f`` is a symmetric soft clipper with unity small-signal gain,

    f(x) = x / (1 + |x / c|^p)^(1/p),     x in [-1, 1] (full scale),

with clip level ``c`` (fraction of full scale; ``f`` tends to ``+-c``) and knee ``p``
(2: a gentle, tanh-like saturation; 8: close to a hard clip). ``c = inf`` is the
identity, the starting point, and the model never moves away from it unless the data
say so. The candidates are the identity plus ``clip_steps`` clip levels log-spaced in
``[clip_min, 1]`` at each knee in ``knees``.

Identification (every ``interval_ms`` while the far end plays): the canceller's current
impulse response ``h`` (``SPEEX_ECHO_GET_IMPULSE_RESPONSE``, libspeexdsp ``mdf.c``; it
maps the reference the canceller was fed to the microphone) is cut to the prefix that
holds ``energy_fraction`` of its energy. Over the last ``window_ms`` of raw reference
``x`` and microphone ``d``, each candidate ``f`` is scored by how much of ``d`` the
prediction ``y = h * f(x)`` cannot explain at the best gain: ``1 - rho^2`` with
``rho`` the normalised correlation of ``d`` and ``y``. Near-end speech and noise in ``d``
raise every candidate's score alike, so the ranking holds in double talk. One candidate
is scored per frame (an FFT pair of ``nfft`` points), so a round spreads over
``len(candidates)`` frames. At the end of a round the best candidate replaces the
current one if it explains the microphone better by at least ``margin_db``. ``h`` was
learnt on the current candidate's output, which favours the current candidate: the
margin only has to beat noise, and the alternation converges in a few rounds.

Shapes and units: frames are int16 ``(frame_size,)``; the impulse response is
``(filter_length,)`` in any scale (the score is scale-free).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

__all__ = ["LoudspeakerSettings", "LoudspeakerModel", "soft_clip"]

#: Speex MDF's pre-emphasis of the reference and the microphone (``mdf.c``, ``preemph``)
PREEMPHASIS = 0.9

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]


def soft_clip(x: FloatArray, clip: float, knee: float, out: FloatArray | None = None) -> FloatArray:
    """``x / (1 + |x / clip|^knee)^(1/knee)`` on whole arrays (float, full scale 1.0).

    Args:
        x: samples, any shape.
        clip: clip level (> 0, fraction of full scale); ``inf`` gives ``x``.
        knee: knee sharpness (> 0).
        out: optional preallocated float64 array of ``x``'s shape.
    """
    if out is None:
        out = np.empty(np.shape(x))
    if math.isinf(clip):
        out[...] = x
        return out
    np.multiply(x, 1.0 / clip, out=out)
    np.abs(out, out=out)
    np.power(out, knee, out=out)
    out += 1.0
    np.power(out, -1.0 / knee, out=out)
    out *= x
    return out


@dataclass(frozen=True)
class LoudspeakerSettings:
    """Tuning of :class:`LoudspeakerModel`.

    Attributes:
        enabled: model the loudspeaker (False: the canceller gets the reference as it is).
        clip_min: lowest clip level tried, fraction of full scale (0 < x < 1).
        clip_steps: clip levels tried per knee, log-spaced in ``[clip_min, 1]`` (>= 1).
        knees: knee sharpness values tried (each > 0).
        window_ms: scoring window, ms (> 0).
        interval_ms: time from one identification round to the next, ms (> 0).
        margin_db: how much better (dB of unexplained microphone power) a candidate
            must be to replace the current one (>= 0).
        confirm_rounds: a model restored at start (:meth:`LoudspeakerModel.restore`) is
            replaced only after this many rounds in a row found a better candidate by
            ``margin_db`` (the latest is taken; int >= 1); after that, and from the
            identity, one round does. After a restart the canceller's young impulse
            response ranks the candidates loosely: in the closed loop (+6 dB) a restored
            model was replaced by one 0.5 dB "better" and again a second later, two
            echo-path changes in the first reply that kept the near-end detector from
            pausing it. (Asking it of every change cost 1.6 dB of median ERLE on the
            front-end family bench: the model refines in steps.)
        min_level_dbfs: rounds are skipped when the window's far end is quieter than
            this (RMS, dBFS).
        energy_fraction: the impulse response is cut to the prefix holding this share of
            its energy (0 < x <= 1).
    """

    enabled: bool = True
    clip_min: float = 0.06
    clip_steps: int = 12
    knees: tuple[float, ...] = (2.0, 8.0)
    window_ms: float = 320.0
    interval_ms: float = 1000.0
    margin_db: float = 0.5
    confirm_rounds: int = 2
    min_level_dbfs: float = -45.0
    energy_fraction: float = 0.999

    def __post_init__(self) -> None:
        def bad(name: str, v: object) -> ValueError:
            return ValueError(f"LoudspeakerSettings.{name} out of range, got {v!r}")

        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "enabled":
                if not isinstance(v, bool):
                    raise ValueError(f"LoudspeakerSettings.enabled must be a bool, got {v!r}")
            elif f.name in ("clip_steps", "confirm_rounds"):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise bad(f.name, v)
            elif f.name == "knees":
                if (not isinstance(v, tuple) or not v
                        or any(isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0 or math.isinf(k)
                               for k in v)):
                    raise bad(f.name, v)
            else:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise bad(f.name, v)
        ok = {
            "clip_min": 0 < self.clip_min < 1,
            "window_ms": self.window_ms > 0,
            "interval_ms": self.interval_ms > 0,
            "margin_db": self.margin_db >= 0,
            "energy_fraction": 0 < self.energy_fraction <= 1,
        }
        for name, good in ok.items():
            if not good:
                raise bad(name, getattr(self, name))

    def candidates(self) -> list[tuple[float, float]]:
        """``[(clip, knee), ...]``: the identity ``(inf, inf)`` first, then every clip
        level at every knee."""
        clips = np.geomspace(self.clip_min, 1.0, self.clip_steps) if self.clip_steps > 1 else np.array([self.clip_min])
        return [(math.inf, math.inf)] + [(float(c), float(k)) for k in self.knees for c in clips]


class LoudspeakerModel:
    """Shapes the far-end reference with the identified loudspeaker nonlinearity.

    Args:
        frame_size: samples per frame (the canceller's).
        filter_length: the canceller's filter length, samples.
        sample_rate: Hz.
        settings: tuning; defaults to ``LoudspeakerSettings()``.

    Call :meth:`process` once per frame, before the canceller, with the raw reference
    and microphone frames it is about to get; hand the canceller the shaped frame.
    """

    def __init__(self, frame_size: int, filter_length: int, sample_rate: int,
                 settings: LoudspeakerSettings | None = None) -> None:
        self.settings = s = settings if settings is not None else LoudspeakerSettings()
        self.frame_size = f = int(frame_size)
        self.filter_length = int(filter_length)
        self.sample_rate = int(sample_rate)
        self.candidates = s.candidates()
        self._w = max(f, int(round(s.window_ms * sample_rate / 1000)) // f * f)
        self._interval = max(1, int(round(s.interval_ms * sample_rate / 1000 / f)))
        self._lmax = self.filter_length
        n = self._w + self._lmax
        self._x = np.zeros(n)  # raw reference history, full scale 1.0
        self._d = np.zeros(self._w)  # microphone history
        self._xs = np.zeros(n)  # a round's snapshot
        self._ds = np.zeros(self._w)
        self._u = np.zeros(n)
        self._xf = np.zeros(f)
        self._yf = np.zeros(f)
        self._nfft_max = nmax = 1 << n.bit_length()
        # a round's and a scoring frame's buffers (sliced to the round's nfft; no
        # allocation per frame but inside numpy's FFT)
        self._h = np.zeros(self._lmax)
        self._h2 = np.zeros(self._lmax)
        self._cum = np.zeros(self._lmax)
        self._H = np.zeros(nmax // 2 + 1, dtype=np.complex128)
        self._U = np.zeros(nmax // 2 + 1, dtype=np.complex128)
        self._y = np.zeros(nmax)
        self._yp = np.zeros(self._w)
        self._scores = np.ones(len(self.candidates))
        self._min_ms = 10 ** (s.min_level_dbfs / 10)
        self._margin = 10 ** (-s.margin_db / 10)
        self.reset()

    def reset(self) -> None:
        """Back to the identity, history cleared."""
        self.current = 0  # index into candidates
        self._x[:] = 0.0
        self._d[:] = 0.0
        self._frames = 0
        self._scored = -1  # candidates scored in the round in progress (-1: none running)
        self._nfft = 0
        self._lh = 0
        self._dd = 0.0
        self.rounds = 0
        self.changes = 0
        self._better_rounds = 0  # rounds in a row that found a better candidate than the current
        self._restored = False  # the current model was restored and no round has replaced it
        #: the last completed round: (best index, best score dB, current score dB)
        self.last_round: tuple[int, float, float] | None = None

    # -- state ---------------------------------------------------------------------------
    @property
    def clip(self) -> float:
        """Current clip level (fraction of full scale; ``inf`` = identity)."""
        return self.candidates[self.current][0]

    @property
    def knee(self) -> float:
        """Current knee (``inf`` with the identity)."""
        return self.candidates[self.current][1]

    def restore(self, clip: float, knee: float) -> bool:
        """Start from the candidate nearest ``(clip, knee)`` (a saved model); returns
        False (and keeps the current one) when the values are unusable."""
        try:
            clip, knee = float(clip), float(knee)
        except (TypeError, ValueError):
            return False
        if math.isinf(clip) and clip > 0:
            self.current = 0
            self._restored = False
            return True
        if not (math.isfinite(clip) and clip > 0 and knee > 0):
            return False
        best = min(range(1, len(self.candidates)),
                   key=lambda i: (abs(math.log(self.candidates[i][0] / clip))
                                  + abs(math.log(self.candidates[i][1] / knee)) if math.isfinite(knee) else 9))
        self.current = best
        self._restored = True
        self._better_rounds = 0
        return True

    # -- per frame -----------------------------------------------------------------------
    def process(self, ref: Int16Array, mic: Int16Array, out: Int16Array,
                impulse_response: Callable[[], npt.ArrayLike]) -> None:
        """One frame: record ``ref``/``mic`` (int16 ``(frame_size,)``), write the shaped
        reference into ``out`` (int16 ``(frame_size,)``, may not be ``ref``), and do this
        frame's share of identification. ``impulse_response()`` returns the canceller's
        current filter, ``(filter_length,)``; it is called once per round."""
        f = self.frame_size
        x = self._x
        xf = self._xf
        np.multiply(ref, 1.0 / 32768.0, out=xf)
        x[:-f] = x[f:]
        x[-f:] = xf
        d = self._d
        d[:-f] = d[f:]
        np.multiply(mic, 1.0 / 32768.0, out=d[-f:])
        self.shape(xf, out, self._yf)
        self._frames += 1
        if not self.settings.enabled:
            return
        if self._scored >= 0:
            self._score_next()
        elif self._frames % self._interval == 0 and self._frames * f >= x.shape[0]:
            self._start_round(impulse_response)

    def shape(self, x: FloatArray, out: Int16Array, scratch: FloatArray) -> None:
        """The reference as the loudspeaker plays it, at the current saturation: ``x``
        (float, full scale 1, any shape ``(n,)``) into ``out`` (int16 ``(n,)``), through
        ``scratch`` (float ``(n,)``); nothing is allocated."""
        c, k = self.candidates[self.current]
        if math.isinf(c):
            np.multiply(x, 32768.0, out=scratch)
        else:
            soft_clip(x, c, k, out=scratch)
            scratch *= 32768.0
        np.rint(scratch, out=scratch)
        np.clip(scratch, -32768, 32767, out=scratch)
        out[:] = scratch

    # -- identification ------------------------------------------------------------------
    def _start_round(self, impulse_response: Callable[[], npt.ArrayLike]) -> None:
        w = self._w
        xw = self._x[-w:]
        if float(np.dot(xw, xw)) / w < self._min_ms:
            return
        ir = np.asarray(impulse_response())[: self._lmax]
        m = ir.shape[0]
        h = self._h[:m]
        h[:] = ir
        e = np.multiply(h, h, out=self._h2[:m])
        tot = float(e.sum())
        if not tot > 0 or not math.isfinite(tot):
            return
        cum = np.cumsum(e, out=self._cum[:m])
        lh = int(np.searchsorted(cum, self.settings.energy_fraction * tot)) + 1
        self._lh = lh
        self._nfft = nfft = 1 << (w + lh).bit_length()
        np.fft.rfft(h[:lh], nfft, out=self._H[: nfft // 2 + 1])
        self._xs[:] = self._x
        # scored after Speex's pre-emphasis (mdf.c, 0.9), where its filter was learnt
        ds = self._ds
        ds[0] = self._d[0]
        np.subtract(self._d[1:], PREEMPHASIS * self._d[:-1], out=ds[1:])
        self._dd = float(np.dot(ds, ds))
        if not self._dd > 0:
            return
        self._scored = 0

    def _score(self, i: int) -> float:
        c, k = self.candidates[i]
        lh, w = self._lh, self._w
        n = self._xs.shape[0]
        seg = self._xs[n - w - lh:]
        u = soft_clip(seg, c, k, out=self._u[: seg.shape[0]])
        nfft = self._nfft
        U = np.fft.rfft(u, nfft, out=self._U[: nfft // 2 + 1])
        U *= self._H[: nfft // 2 + 1]
        y = np.fft.irfft(U, nfft, out=self._y[:nfft])[lh - 1: lh + w]
        y = np.subtract(y[1:], np.multiply(y[:-1], PREEMPHASIS, out=self._yp), out=self._yp)
        yy = float(np.dot(y, y))
        if not yy > 0:
            return 1.0
        dy = float(np.dot(self._ds, y))
        return max(1.0 - dy * dy / (self._dd * yy), 1e-12)

    def _score_next(self) -> None:
        scores = self._scores
        scores[self._scored] = self._score(self._scored)
        self._scored += 1
        if self._scored < scores.shape[0]:
            return
        self._scored = -1
        self.rounds += 1
        best = int(np.argmin(scores))
        cur = float(scores[self.current])
        self.last_round = (best, 10 * math.log10(float(scores[best])), 10 * math.log10(cur))
        if best != self.current and scores[best] < cur * self._margin:
            self._better_rounds += 1
            if not self._restored or self._better_rounds >= self.settings.confirm_rounds:
                self._better_rounds = 0
                self._restored = False
                self.current = best
                self.changes += 1
        else:
            self._better_rounds = 0
