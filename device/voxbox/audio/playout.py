"""The playback side of the jitter buffer: what a pull produced, when it plays, and how
late its audio came out.

- :class:`PullResult` — what one :meth:`voxbox.audio.jitter.JitterBuffer.pull` produced:
  SOURCE samples of reply audio consumed and the device samples that carry them, the
  item, whether the buffer drained or underran, the flush epoch.
- :class:`PullClock` — the paced time (seconds, on the caller's clock: the daemon's
  ``time.monotonic()``) of each period the playback loop pulls: the ``t`` the daemon
  gives :meth:`~voxbox.audio.jitter.JitterBuffer.pull`, so a late wake-up of the
  playback thread is not taken for lag.
- :class:`LatencyHistogram` — a sample-weighted latency histogram (1 ms bins, ms): the
  jitter buffer's added latency per source sample (``JitterBuffer.added``), per turn by
  subtracting an earlier copy. :func:`quantile_bin` reads a quantile off cumulative
  bin counts (the jitter buffer's target histogram uses it too).

Core module, pure: numpy only, no I/O, no lock, no clock (:class:`PullClock` is given
``now``). The jitter buffer updates its histogram under its own lock.

The jitter buffer's added latency (``JitterBuffer.added``, a :class:`LatencyHistogram`):
per source sample handed out, the time of its pull minus ``g``, the time the earliest possible player handed it
out: what this buffer's prebuffer, rebuffering and stretching cost on top of the network.
With ``t`` given to :meth:`~voxbox.audio.jitter.JitterBuffer.pull` (the daemon passes :class:`~voxbox.audio.playout.PullClock`'s
paced time of the pull: a card paces its playback loop per period), ``g[i] = max(arrival[i], g[i-1] + 1/rate)``
from the response's first arrival, in continuous time, so the wait for the next pull
after an arrival (0-10 ms) counts: it is latency a non-stretching buffer cannot avoid and
accelerate can win back (``tests/benchmarks/test_jitter_bench.py`` computes the same
figure from outside); a pull is taken no earlier than the last arrival it could hand
out. A device that takes several periods at once (a one-page mono FIFO on the test rig:
85 ms at a time) understates the figure: :class:`PullClock` takes the burst's early
pulls for on-time ones (the mono rig gave -187.6 ms in the demo; the daemon harness
paces its speaker per period). Without ``t``, on the pull grid: pull ``k`` is at ``k`` periods, and the
earliest player hands out a period per pull of what had arrived by then. After
``pause`` and ``resume`` the earliest player restarts with the first pull after
the resume, at the buffer's position: the pause is not counted as added latency, what follows is
measured as before (a reply paused by a false barge-in still gets its figures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PullResult:
    """What one :meth:`~voxbox.audio.jitter.JitterBuffer.pull` produced.

    ``samples`` counts SOURCE samples of reply audio consumed by this period (what
    ``played`` grew by); ``device`` counts the samples of the period that carry that audio
    (before a fade tail). Without time-stretching the two are equal; an expanded period
    has ``device > samples`` and an accelerated one ``device < samples``. Both are
    informational: the daemon uses ``item_id``/``drained``/``underrun``/``epoch``.
    """

    item_id: str | None  # the item whose audio is (mostly) in this period, None for silence
    samples: int  # source samples of reply audio consumed by this period
    drained: bool  # the buffer just ran empty at the end of the expected audio
    underrun: bool  # the buffer ran empty while more audio was expected
    epoch: int = 0  # flush count when pulled: results from before a flush are stale
    device: int = 0  # samples of this period carrying reply audio (stretched or not)



class LatencyHistogram:
    """Sample-weighted histogram of a latency: 1 ms bins from 0 to ``max_ms`` (values
    below 0 count in the first bin, above ``max_ms`` in the last; the mean uses the exact
    values). :meth:`add` is O(1), for the playback thread's once-per-period update."""

    def __init__(self, max_ms: int = 2000):
        self.counts = np.zeros(max_ms + 1, dtype=np.int64)  # samples per 1 ms bin
        self.samples = 0
        self.total_ms = 0.0  # sum over samples of their latency (ms x samples)

    def add(self, ms: float, samples: int) -> None:
        """``samples`` samples at a latency of ``ms``."""
        i = min(max(int(ms), 0), self.counts.size - 1)
        self.counts[i] += samples
        self.samples += samples
        self.total_ms += ms * samples

    def copy(self) -> "LatencyHistogram":
        h = LatencyHistogram.__new__(LatencyHistogram)
        h.counts, h.samples, h.total_ms = self.counts.copy(), self.samples, self.total_ms
        return h

    def __sub__(self, other: "LatencyHistogram") -> "LatencyHistogram":
        """What was added since ``other`` (an earlier copy of this histogram)."""
        h = self.copy()
        h.counts -= other.counts
        h.samples -= other.samples
        h.total_ms -= other.total_ms
        return h

    def mean_ms(self) -> float | None:
        """Mean latency (ms) over the samples; None if there are none."""
        return self.total_ms / self.samples if self.samples else None

    def quantile_ms(self, q: float) -> float | None:
        """The ``q`` quantile (ms, to the 1 ms bin's upper edge); None if no samples."""
        if not self.samples:
            return None
        return float(quantile_bin(np.cumsum(self.counts), q) + 1)



class PullClock:
    """The paced time of each period the playback loop pulls, for
    :meth:`~voxbox.audio.jitter.JitterBuffer.pull`'s ``t``: period ``n`` at
    ``n * period / rate + offset`` (the device's sample clock). A
    device with a buffer of several periods lets a pull come late (the thread woke late)
    and the next ones early (catching up) without the device noticing; the time it plays
    them is unchanged. So the offset tracks a low quantile (about the 5th percentile) of
    ``now - n * period / rate``, the pulls on time: it moves down by at most ``down_ms``
    per pull and up by at most ``up_ms_per_s`` (ms per second of audio: clock drift,
    < 0.1 ms/s, and the later restart after the device starved). A pull early by more
    (a device that took several periods at once, as the test rig's speaker thread does
    when it wakes late) moves it by ``down_ms`` only. Without it a late pull looks like
    lag that accelerate would chase and the catch-up pulls after it look early, below the
    earliest possible playout. Measured on the rig, daemon loop under load: the pulls on
    time lie within 0.13 ms of each other, late ones up to 10 ms after."""

    def __init__(self, rate: int, period: int, up_ms_per_s: float = 1.0, down_ms: float = 0.2):
        self.step = period / rate  # seconds per period
        self._up = up_ms_per_s / 1000 * self.step
        self._down = down_ms / 1000
        self._n = 0
        self._offset: float | None = None

    def next(self, now: float) -> float:
        """Paced time (s, ``now``'s clock) of the period pulled at ``now``."""
        raw = self._n * self.step
        self._n += 1
        off = now - raw
        o = self._offset
        if o is None:
            self._offset = off
        elif off < o:
            self._offset = max(off, o - self._down)
        else:
            self._offset = min(off, o + self._up)
        return raw + self._offset


def quantile_bin(cs: np.ndarray, q: float) -> int:
    """The bin holding the ``q`` quantile of a histogram, given its cumulative sums."""
    return int(np.searchsorted(cs, q * cs[-1], side="left"))
