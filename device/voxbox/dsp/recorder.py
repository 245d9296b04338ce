"""Capture recorder: a bounded ring of the last N seconds of microphone, reference and
front-end output, for replaying field audio through ``voxbox dsp``.

Core module (no I/O): the capture thread calls :meth:`CaptureRecorder.write` once per
capture period with the three blocks it just used; any thread may take a
:meth:`CaptureRecorder.snapshot`. Writing copies whole numpy slices into a preallocated
``(capacity, 3)`` int16 array under a short lock; nothing is allocated per call.

Front-end events (:meth:`CaptureRecorder.note`): the retrainings of the echo canceller
(:meth:`voxbox.dsp.frontend.CaptureFrontEnd.realign`) happen at periods the event loop and
a retraining thread decide, not the audio; the capture thread notes each step at the
sample where it took it, and ``voxbox dsp --events`` replays them, so a recording from
the front end's start still replays bit for bit.

Channel order (the WAV files the daemon writes): ``mic`` (the near-end microphone as
captured), ``ref`` (the far-end reference exactly as handed to the echo canceller, i.e.
after the reference delay line), ``out`` (the front end's output, delayed by its
``latency_samples``).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CHANNELS", "EVENT_KINDS", "CaptureRecorder", "Recording"]

CHANNELS = ("mic", "ref", "out")

#: the front-end steps a recording notes: ``realign`` (value: the shift, samples;
#: ``CaptureFrontEnd.prepare_realign``), ``early`` (``prepare_early_retrain``), ``adopt``
#: (the retraining ran and is handed over; ``Retraining.run`` then
#: ``CaptureFrontEnd.adopt``), ``forget`` (``forget_history``)
EVENT_KINDS = ("realign", "early", "adopt", "forget")


@dataclass(frozen=True)
class Recording:
    """A snapshot of the ring.

    Attributes:
        samples: int16 array, shape ``(n, 3)`` (columns ``mic``, ``ref``, ``out``).
        start_sample: index of row 0 in the stream since the front end started (samples).
        from_start: True when nothing was dropped since the front end started, i.e.
            ``start_sample == 0``. Only then does ``voxbox dsp`` on ``mic``/``ref``
            reproduce ``out`` bit for bit (the canceller's state depends on all history).
        sample_rate: Hz.
        events: the front-end steps noted within the recording, oldest first:
            ``(sample, kind, value)`` with ``sample`` counted from row 0 (the step came
            before that sample was processed), ``kind`` one of ``EVENT_KINDS``.
    """

    samples: np.ndarray
    start_sample: int
    from_start: bool
    sample_rate: int
    events: tuple[tuple[int, str, int], ...] = field(default=())

    def channel(self, name: str) -> np.ndarray:
        """One channel as a contiguous int16 array, shape ``(n,)``.

        Raises:
            KeyError: ``name`` is not one of ``CHANNELS``.
        """
        if name not in CHANNELS:
            raise KeyError(f"recording channel {name!r}: expected one of {', '.join(CHANNELS)}")
        return np.ascontiguousarray(self.samples[:, CHANNELS.index(name)])


class CaptureRecorder:
    """Args:
        seconds: ring length in seconds (> 0).
        sample_rate: capture rate in Hz.

    Raises:
        ValueError: non-positive ``seconds`` or ``sample_rate``.
    """

    def __init__(self, seconds: float, sample_rate: int) -> None:
        if seconds <= 0:
            raise ValueError(f"recorder seconds must be > 0, got {seconds!r}")
        if sample_rate <= 0:
            raise ValueError(f"recorder sample_rate must be > 0, got {sample_rate!r}")
        self.sample_rate = sample_rate
        self.capacity = int(round(seconds * sample_rate))
        self._buf = np.zeros((self.capacity, len(CHANNELS)), dtype=np.int16)
        self._total = 0  # samples written since start
        self._lock = threading.Lock()
        #: (sample since start, kind, value); bounded: a recording keeps what its ring holds
        self._events: deque[tuple[int, str, int]] = deque(maxlen=4096)

    @property
    def total_samples(self) -> int:
        """Samples written since construction (or :meth:`clear`)."""
        return self._total

    def clear(self) -> None:
        """Forget everything (call when the front end is reset)."""
        with self._lock:
            self._total = 0
            self._events.clear()

    def note(self, kind: str, value: int = 0) -> None:
        """Capture thread: the front end took step ``kind`` (one of ``EVENT_KINDS``) before
        the block about to be written.

        Raises:
            ValueError: an unknown ``kind``.
        """
        if kind not in EVENT_KINDS:
            raise ValueError(f"recorder event {kind!r}: expected one of {', '.join(EVENT_KINDS)}")
        with self._lock:
            self._events.append((self._total, kind, int(value)))

    def write(self, mic: np.ndarray, ref: np.ndarray, out: np.ndarray) -> None:
        """Append one block of each channel (int16, same shape ``(n,)``)."""
        n = mic.shape[0]
        if n == 0:
            return
        buf, cap = self._buf, self.capacity
        with self._lock:
            if n >= cap:  # keep the newest `cap` samples
                mic, ref, out = mic[-cap:], ref[-cap:], out[-cap:]
                self._total += n - cap
                n = cap
            w = self._total % cap
            first = min(n, cap - w)
            buf[w : w + first, 0] = mic[:first]
            buf[w : w + first, 1] = ref[:first]
            buf[w : w + first, 2] = out[:first]
            if first < n:
                rest = n - first
                buf[:rest, 0] = mic[first:]
                buf[:rest, 1] = ref[first:]
                buf[:rest, 2] = out[first:]
            self._total += n

    def snapshot(self) -> Recording:
        """Copy of the ring in time order (oldest first)."""
        with self._lock:
            total, cap = self._total, self.capacity
            if total <= cap:
                data = self._buf[:total].copy()
                start = 0
            else:
                w = total % cap
                data = np.concatenate([self._buf[w:], self._buf[:w]])
                start = total - cap
            events = tuple((t - start, k, v) for t, k, v in self._events if t >= start)
        return Recording(data, start, start == 0, self.sample_rate, events)
