"""Uplink gate: while the unit plays, the uplink carries the user, not the echo.

Core module, pure: no clock, no I/O; the comfort noise comes from a seeded numpy
generator, so the same input stream gives the same output stream.

A real service's VAD hears speech at any level, and the residual echo of the unit's own
reply is speech. So while the far end is active (the speaker plays, and for ``tail_ms``
after: the room's echo tail), every capture period the near-end detector
(:mod:`voxbox.duplex.nearend`) classes as echo-only is replaced by comfort noise at the
measured noise floor (white, RMS ``noise_floor_dbfs``; digital silence when the floor is
unknown). A period with near-end speech passes, and the first one after a gated stretch
brings the last ``preroll_ms`` of real audio with it, so the user's first syllable,
which the detector needed to see before deciding, still reaches the service. Outside
playback the gate passes everything unchanged.

Shapes and units: periods are int16 ``(n,)`` at ``rate`` Hz; the output of a period is
``(n,)``, or ``(n + preroll,)`` when the gate opens on the near end (the service's audio
timeline grows by the pre-roll: it hears the user's first syllable once, a little later).

A barge-in that pauses the reply to check the user (:mod:`voxbox.duplex.interruption`) keeps
the gate closed while it checks, then calls :meth:`UplinkGate.open` with a pre-roll that
reaches back to the user's onset (the ring keeps up to ``max_preroll_ms``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["GateState", "GateChange", "UplinkGate"]

Int16Array = npt.NDArray[np.int16]


class GateState(str, enum.Enum):
    #: no far end (or its tail): the uplink is the cleaned microphone, unchanged
    OPEN = "open"
    #: far end active, no near-end speech: comfort noise goes out instead of the echo
    GATED = "gated"
    #: far end active and the user talks: the cleaned microphone goes out
    NEAR_END = "near_end"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class GateChange:
    """A gate decision change, for the journal: the new state, the previous one, and the
    samples of pre-roll sent with it (0 unless the gate opened on the near end)."""

    state: GateState
    previous: GateState
    preroll_samples: int


class UplinkGate:
    """Args:
        period: samples per capture period (160 at 16 kHz).
        rate: sample rate, Hz.
        preroll_ms: real audio sent ahead of the first near-end period after a gated
            stretch, ms (0..1000).
        tail_ms: the gate stays active this long after the last far-end period (the
            room's echo tail and the front end's latency), ms (0..2000).
        seed: the comfort noise generator's seed.

    Raises:
        ValueError: a non-positive ``period``/``rate`` or a duration out of range; the
            message names the argument.

    Not thread-safe: the capture thread calls :meth:`process` once per period.
    """

    def __init__(self, period: int, rate: int, preroll_ms: int = 300, tail_ms: int = 300,
                 seed: int = 0, max_preroll_ms: int = 1500) -> None:
        for name, v in (("period", period), ("rate", rate)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"UplinkGate {name} must be a positive int, got {v!r}")
        if not 0 <= preroll_ms <= 1000:
            raise ValueError(f"UplinkGate preroll_ms must be in 0..1000 ms, got {preroll_ms!r}")
        if not preroll_ms <= max_preroll_ms <= 3000:
            raise ValueError(f"UplinkGate max_preroll_ms must be in preroll_ms..3000 ms, got {max_preroll_ms!r}")
        if not 0 <= tail_ms <= 2000:
            raise ValueError(f"UplinkGate tail_ms must be in 0..2000 ms, got {tail_ms!r}")
        self.period, self.rate = period, rate
        self.preroll_samples = int(round(preroll_ms * rate / 1000))
        self.tail_periods = int(np.ceil(tail_ms * rate / 1000 / period))
        self._rng = np.random.default_rng(seed)
        self._noise = np.zeros(period, dtype=np.float32)
        # pre-roll ring: the last ring_samples of real audio, in time order on read
        self.ring_samples = max(1, int(round(max_preroll_ms * rate / 1000)))
        self._ring = np.zeros(self.ring_samples, dtype=np.int16)
        self._ring_pos = 0
        self._ring_fill = 0
        self.reset()

    def reset(self) -> None:
        """Forget the far end and the pre-roll (a new session, a restart of capture)."""
        self.state = GateState.OPEN
        self._since_far = self.tail_periods + 1  # periods since the last far-end period
        self._ring_fill = 0
        self._ring_pos = 0
        self._gated_run = 0  # samples replaced in the current gated stretch
        self._open_preroll: int | None = None  # open() asked for this pre-roll
        self.gated_periods = 0  # periods replaced by comfort noise (a counter for metrics)

    @property
    def active(self) -> bool:
        """The far end (or its tail) is active: the gate decides."""
        return self._since_far <= self.tail_periods

    def process(self, clean: Int16Array, far: bool, near: bool,
                noise_floor_dbfs: float | None = None) -> tuple[Int16Array, GateChange | None]:
        """One period.

        Args:
            clean: the front end's output, int16 ``(n,)``.
            far: the speaker played far-end signal in this period (the reference).
            near: the near-end detector hears the user now.
            noise_floor_dbfs: the comfort noise level (RMS, dBFS re int16 full scale);
                None or -inf: digital silence.

        Returns:
            ``(out, change)``: the samples to send (``clean`` itself when passing; a new
            array otherwise) and the decision change, or None.

        Raises:
            ValueError: ``clean`` is not a 1-d int16 array.
        """
        if not isinstance(clean, np.ndarray) or clean.dtype != np.int16 or clean.ndim != 1:
            raise ValueError(f"UplinkGate.process: clean must be a 1-d int16 array, got {clean!r:.60}")
        prev = self.state
        if self._open_preroll is not None:  # open(): the far end was stopped for the user
            want, self._open_preroll = self._open_preroll, None
            preroll = min(want, self._ring_fill, self._gated_run) if prev is GateState.GATED else 0
            out = np.concatenate([self._ring_read(preroll), clean]) if preroll else clean
            self._gated_run = 0
            self._ring_write(clean)
            self.state = GateState.OPEN
            return out, (GateChange(GateState.OPEN, prev, preroll) if prev is not GateState.OPEN else None)
        self._since_far = 0 if far else self._since_far + 1
        if not self.active:
            new = GateState.OPEN
        elif near:
            new = GateState.NEAR_END
        else:
            new = GateState.GATED
        out: Int16Array = clean
        preroll = 0
        if new is GateState.GATED:
            out = self._comfort(clean.shape[0], noise_floor_dbfs)
            self.gated_periods += 1
            self._gated_run += clean.shape[0]
        else:
            if prev is GateState.GATED and new is GateState.NEAR_END:
                # opening on the near end: the user's first syllable, which the detector
                # saw before it decided, goes out ahead of this period (never more than
                # the gate replaced: the rest was sent already)
                preroll = min(self.preroll_samples, self._ring_fill, self._gated_run)
                if preroll:
                    out = np.concatenate([self._ring_read(preroll), clean])
            self._gated_run = 0
        self._ring_write(clean)
        self.state = new
        change = GateChange(new, prev, preroll) if new is not prev else None
        return out, change

    def open(self, preroll_samples: int) -> None:
        """The far end was stopped for the user (a confirmed barge-in): from the next
        period the gate passes everything, the first period led by up to
        ``preroll_samples`` of the real audio it replaced (bounded by the ring)."""
        self._open_preroll = max(0, int(preroll_samples))
        self._since_far = self.tail_periods + 1

    # -- internals ---------------------------------------------------------------------
    def _comfort(self, n: int, floor_dbfs: float | None) -> Int16Array:
        if floor_dbfs is None or not np.isfinite(floor_dbfs):
            return np.zeros(n, dtype=np.int16)
        noise = self._noise if n == self.period else np.zeros(n, dtype=np.float32)
        self._rng.standard_normal(out=noise, dtype=np.float32)
        noise *= np.float32(32768.0 * 10 ** (min(floor_dbfs, -20.0) / 20))
        np.clip(noise, -32768, 32767, out=noise)
        return noise.astype(np.int16)

    def _ring_write(self, x: Int16Array) -> None:
        size = self.ring_samples
        if size == 0:
            return
        x = x[-size:]
        k = x.shape[0]
        pos = self._ring_pos
        first = min(k, size - pos)
        self._ring[pos:pos + first] = x[:first]
        if first < k:
            self._ring[:k - first] = x[first:]
        self._ring_pos = (pos + k) % size
        self._ring_fill = min(size, self._ring_fill + k)

    def _ring_read(self, fill: int) -> Int16Array:
        """The newest ``fill`` samples of the ring, oldest first."""
        size, pos = self.ring_samples, self._ring_pos
        start = (pos - fill) % size
        if start + fill <= size:
            return self._ring[start:start + fill].copy()
        return np.concatenate([self._ring[start:], self._ring[:pos]])
