"""Reply-audio jitter buffer with exact per-item accounting of the samples played.

Realtime services send reply audio faster than real time, in chunks of varying size, and
over a mobile link with gaps. The network side :meth:`JitterBuffer.push` es chunks; the
playback thread :meth:`JitterBuffer.pull` s exactly one period per call and never waits:
when nothing is ready it gets silence. Playback of a response starts once
``prebuffer`` samples are queued (or the response's audio is complete); an underrun while
audio is still expected counts one underrun, fades the last frame out and rebuffers.

``played[item_id]`` counts the samples of each assistant item handed to the device: the
number a ``conversation.item.truncate`` needs (realtime-device-notes.md, "Barge-in and
truncation"). :meth:`flush` drops everything queued at once (barge-in).

Thread safety: one lock, held only for queue bookkeeping and one period's copy.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class PullResult:
    """What one :meth:`JitterBuffer.pull` produced."""

    item_id: str | None  # the item whose audio is (mostly) in this period, None for silence
    samples: int  # reply samples in this period (the rest is silence)
    drained: bool  # the buffer just ran empty at the end of the expected audio
    underrun: bool  # the buffer ran empty while more audio was expected
    epoch: int = 0  # flush count when pulled: results from before a flush are stale


class JitterBuffer:
    """Args:
    rate: sample rate (Hz) of the queued audio.
    period: samples per :meth:`pull` (10 ms at 24 kHz = 240).
    prebuffer_ms: audio queued before playback starts (ms).
    fade_samples: length of the fade-out applied on an underrun (samples).
    """

    def __init__(self, rate: int = 24000, period: int = 240, prebuffer_ms: int = 60,
                 fade_samples: int = 48):
        self.rate = rate
        self.period = period
        self.prebuffer = rate * prebuffer_ms // 1000
        self._fade = np.linspace(1.0, 0.0, min(fade_samples, period), dtype=np.float32)
        self._lock = threading.Lock()
        self._chunks: deque[tuple[str, np.ndarray]] = deque()
        self._offset = 0  # samples already taken from _chunks[0]
        self._queued = 0
        self._playing = False
        self._complete = False  # all audio of the current response has arrived
        self.played: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.underruns = 0
        self.epoch = 0

    # ---- network side --------------------------------------------------------------------
    def push(self, item_id: str, pcm: np.ndarray) -> None:
        """Queue reply audio (int16, shape (n,)) for ``item_id``."""
        if pcm.size == 0:
            return
        with self._lock:
            self._chunks.append((item_id, pcm))
            self._queued += pcm.size
            self.received[item_id] = self.received.get(item_id, 0) + pcm.size
            self._complete = False

    def mark_complete(self) -> None:
        """No more audio is coming for now (``response.done``): play out what is queued."""
        with self._lock:
            self._complete = True

    def flush(self) -> dict[str, int]:
        """Drop all queued audio (barge-in). Returns ``played`` per item at this moment."""
        with self._lock:
            self._chunks.clear()
            self._offset = 0
            self._queued = 0
            self._playing = False
            self._complete = True
            self.epoch += 1
            return dict(self.played)

    @property
    def queued_samples(self) -> int:
        return self._queued

    @property
    def active(self) -> bool:
        """True while there is reply audio queued or playing."""
        return self._queued > 0 or self._playing

    # ---- playback side -----------------------------------------------------------------
    def pull(self, out: np.ndarray) -> PullResult:
        """Fill ``out`` (int16, shape (period,)) with the next period; silence if none.

        Never blocks on anything but the short internal lock.
        """
        n = out.shape[0]
        with self._lock:
            if not self._playing:
                if self._queued and (self._queued >= self.prebuffer or self._complete):
                    self._playing = True
                else:
                    out[:] = 0
                    return PullResult(None, 0, False, False, self.epoch)
            filled = 0
            main_item: str | None = None
            main_count = 0
            while filled < n and self._chunks:
                item_id, chunk = self._chunks[0]
                take = min(n - filled, chunk.size - self._offset)
                out[filled:filled + take] = chunk[self._offset:self._offset + take]
                self.played[item_id] = self.played.get(item_id, 0) + take
                if take > main_count:
                    main_item, main_count = item_id, take
                filled += take
                self._offset += take
                if self._offset >= chunk.size:
                    self._chunks.popleft()
                    self._offset = 0
            self._queued -= filled
            drained = underrun = False
            if filled < n:
                out[filled:] = 0
                self._playing = False
                if self._complete:
                    drained = True
                else:
                    underrun = True
                    self.underruns += 1
                    # fade the tail of what we have instead of a click
                    k = min(filled, self._fade.size)
                    if k:
                        seg = out[filled - k:filled].astype(np.float32)
                        seg *= self._fade[-k:] if k < self._fade.size else self._fade
                        out[filled - k:filled] = seg.astype(np.int16)
            return PullResult(main_item, filled, drained, underrun, self.epoch)
