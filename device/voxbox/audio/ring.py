"""A bounded single-producer/single-consumer sample ring for the far-end reference.

The playback thread :meth:`SampleRing.write` s what it handed the speaker (resampled to the
capture rate); the capture thread :meth:`SampleRing.read_into` s exactly one capture period
per microphone period, getting zeros for whatever is missing. Both sides copy whole numpy
slices under a short lock; nothing is allocated per call.
"""

from __future__ import annotations

import threading

import numpy as np


class SampleRing:
    """Args:
    capacity: samples kept; on overflow the oldest samples are dropped (counted in
        ``overflows``), so a stalled reader can never make the writer wait.
    """

    def __init__(self, capacity: int):
        self._buf = np.zeros(capacity, dtype=np.int16)
        self._cap = capacity
        self._r = 0  # absolute read index
        self._w = 0  # absolute write index
        self._lock = threading.Lock()
        self.overflows = 0
        self.shortfalls = 0
        self.resyncs = 0
        self._line: int | None = None  # read_delayed's line (None: place the reader)

    @property
    def available(self) -> int:
        return self._w - self._r

    def write(self, x: np.ndarray) -> None:
        """Append int16 samples, shape (n,)."""
        n = x.shape[0]
        if n == 0:
            return
        with self._lock:
            if n > self._cap:
                self._w += n - self._cap  # the first samples are overwritten at once
                x = x[-self._cap:]
                n = self._cap
            start = self._w % self._cap
            first = min(n, self._cap - start)
            self._buf[start:start + first] = x[:first]
            if first < n:
                self._buf[:n - first] = x[first:]
            self._w += n
            if self._w - self._r > self._cap:
                self.overflows += 1
                self._r = self._w - self._cap

    def skip(self, n: int, keep: int) -> int:
        """Advance the reader by up to ``n`` samples, leaving at least ``keep`` unread (a
        microphone that lost samples the reference still holds: the pairing catches up).
        Returns how many were skipped (0 when the backlog has no more than ``keep``)."""
        with self._lock:
            k = max(0, min(int(n), self._w - self._r - int(keep)))
            self._r += k
            return k

    def unwrite(self, n: int) -> int:
        """Take back the newest ``n`` samples not read yet (a device dropped them unplayed:
        the reference must not pair them with the microphone). Returns how many."""
        with self._lock:
            k = max(0, min(int(n), self._w - self._r))
            self._w -= k
            return k

    def read_delayed(self, out: np.ndarray, line: int) -> int:
        """Fill ``out`` (int16, shape (n,)) from a delay line counted in samples, not in
        time: the reader is placed ``line`` samples behind the writer on the first call,
        moved by the difference when ``line`` changes, and otherwise reads the next ``n``
        samples whatever the writer's timing. A writer that hands over its periods in
        bursts (a card, a pipe, a USB bus freeing space unevenly) so never shifts the
        pairing of reference and microphone, which for an echo canceller is an echo-path
        change. Only a distance the writer's timing cannot explain places the reader
        again (counted in ``resyncs``): nothing left to read (the writer stalled; the
        missing samples are zeros, counted in ``shortfalls``) or more than the ring holds.
        Returns how many were real samples."""
        n = out.shape[0]
        with self._lock:
            old = self._line
            if old is None:
                self._r = self._w - n - line
            elif line != old:
                self._r += old - line
            self._line = line
            if self._w - self._r > self._cap:  # older than the ring holds
                self._r = self._w - n - min(line, self._cap - n)
                self.resyncs += 1
            avail = self._w - self._r
            if avail < n:  # the writer stalled (or has not started): place the reader again
                self._line = None
                self.resyncs += 1
                if avail < 0:
                    self._r = self._w
                    avail = 0
            k = self._take(out, min(n, avail))
        return self._pad(out, k)

    def read_into(self, out: np.ndarray, max_backlog: int | None = None, min_backlog: int = 0) -> int:
        """Fill ``out`` (int16, shape (n,)); returns how many were real samples (rest zeros).

        Used as a delay line: the reader keeps between ``min_backlog`` and ``max_backlog``
        samples unread after each read. With more than ``max_backlog`` (a reader that
        started late, or a writer burst) the oldest samples are skipped; with fewer than
        ``min_backlog`` the read returns zeros and consumes nothing, letting the backlog
        grow back. Each correction counts one ``resyncs``.
        """
        n = out.shape[0]
        with self._lock:
            if max_backlog is not None and self._w - self._r > n + max_backlog:
                self._r = self._w - n - max_backlog
                self.resyncs += 1
            elif min_backlog and self._w - self._r < n + min_backlog:
                out[:] = 0
                self.resyncs += 1
                return 0
            k = self._take(out, min(n, self._w - self._r))
        return self._pad(out, k)

    def _take(self, out: np.ndarray, k: int) -> int:
        """Copy the next ``k`` samples into ``out[:k]`` and consume them (lock held)."""
        start = self._r % self._cap
        first = min(k, self._cap - start)
        out[:first] = self._buf[start:start + first]
        if first < k:
            out[first:k] = self._buf[:k - first]
        self._r += k
        return k

    def _pad(self, out: np.ndarray, k: int) -> int:
        """Zeros after the ``k`` real samples (a shortfall)."""
        if k < out.shape[0]:
            out[k:] = 0
            self.shortfalls += 1
        return k

    def clear(self) -> None:
        with self._lock:
            self._r = self._w


class FrameQueue:
    """A bounded single-producer/single-consumer queue of fixed-size frame tuples, to hand
    audio from a real-time thread to a worker without the real-time side ever waiting or
    allocating: :meth:`put` copies into a preallocated slot (or drops the frames when the
    worker is behind, counted in ``dropped``), :meth:`get_into` copies the oldest out.

    Args:
        slots: frames kept.
        width: samples per frame.
        channels: arrays per frame (e.g. 2: reference and microphone).
    """

    def __init__(self, slots: int, width: int, channels: int = 2):
        self._buf = np.zeros((slots, channels, width), dtype=np.int16)
        self._slots = slots
        self._r = 0
        self._w = 0
        self._lock = threading.Lock()
        self.dropped = 0

    def put(self, *frames: np.ndarray) -> bool:
        """Copy one frame per channel (int16, shape ``(width,)``); False if dropped."""
        with self._lock:
            if self._w - self._r >= self._slots:
                self.dropped += 1
                return False
            slot = self._buf[self._w % self._slots]
            for i, f in enumerate(frames):
                slot[i] = f
            self._w += 1
        return True

    def get_into(self, out: np.ndarray) -> bool:
        """Copy the oldest frame into ``out`` (shape ``(channels, width)``); False if empty."""
        with self._lock:
            if self._r == self._w:
                return False
            out[:] = self._buf[self._r % self._slots]
            self._r += 1
        return True
