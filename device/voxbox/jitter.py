"""Adaptive reply-audio jitter buffer with exact per-item accounting of the samples played.

Realtime services send reply audio faster than real time, in bursts of chunks of varying
size, and over a mobile link with gaps. The network side :meth:`JitterBuffer.push` es
chunks (with their arrival time); the playback thread :meth:`JitterBuffer.pull` s exactly
one period per call and never waits: when nothing is ready it gets silence. Playback of a
response starts once ``prebuffer`` samples (the current *target*) are queued, or the
response's audio is complete.

Target depth (in the manner of WebRTC NetEq's delay manager): every chunk's arrival is
compared with the ideal media clock of its *playback segment* (a stretch of continuous
playback: from the first chunk pushed into an idle buffer until the buffer runs dry or is
flushed). If playback starts when the target is queued and then runs at the media rate,
chunk ``k`` (starting at media position ``m_k`` samples, arriving at ``t_k``) is on time
iff playback started no earlier than ``D_k = t_k - (m_k - period) / rate`` (one period of
margin: a period is pulled whole, up to 10 ms before its last sample is due). The buffer
holds, at ``D_k``, exactly the segment's samples that arrived before ``D_k``: that count
(+1) is the prebuffer the chunk *required*. For a real-time-paced sender this is NetEq's
relative arrival delay (relative to the segment's first chunk) expressed as audio; for a
sender running 2-4x faster than real time it is ~0 for every chunk after the first few,
so bursts on a good link never raise the target.

Because a fast sender makes almost every chunk trivially early, a per-chunk histogram
would be dominated by zeros and ignore the few chunks that actually cause underruns. The
unit at risk is the segment, so each closed segment contributes one observation: its
peak requirement (the prebuffer that would have played it without an underrun). The
observations go into a NetEq-style histogram with exponential forgetting (``forget`` per
observation; the n-th weighs at least ``1/n``, so the first ones count fully); the
target is its ``quantile`` (95 %), bounded by ``[min_ms, max_ms]``. With ``forget`` =
0.8 a single bad segment (weight 0.2 > 5 %) raises the target at once and about seven
calm segments bring it back down (after a long bad stretch, about fourteen), stepping
down through the recent requirements. ``prebuffer_ms`` is the target until the first
observation.

Underrun (the buffer ran empty while audio was still expected): counted once, the output
fades out over ``fade_samples`` (the tail of the audio, continued by the last sample
held, under a linear ramp: no step at the boundary, even when the buffer ran dry exactly
at a period boundary), playback rebuffers to the (possibly increased) target, and the
resumed audio fades in over ``fade_samples``. A segment that ended in an underrun is
closed by the next chunk pushed, so the late chunk's requirement is part of its
observation, before the rebuffering decision is taken.

``played[item_id]`` counts the samples of each assistant item handed to the device: the
number a ``conversation.item.truncate`` needs (realtime-device-notes.md, "Barge-in and
truncation"). Fade ramps scale samples but never add or drop any. :meth:`flush` drops
everything queued at once (barge-in).

Thread safety: one lock, held for queue bookkeeping, the estimator's O(log n) update per
push, one period's copy and, once per segment (at its end), a ~120-bucket histogram
update: a few microseconds. ``push``/``mark_complete``/``flush`` come from the network
thread, ``pull`` from the playback thread. Cores never read a clock, except ``push``'s
default arrival time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

BUCKET_MS = 5  # histogram resolution of the target


@dataclass
class PullResult:
    """What one :meth:`JitterBuffer.pull` produced."""

    item_id: str | None  # the item whose audio is (mostly) in this period, None for silence
    samples: int  # reply samples in this period (the rest is silence or a fade tail)
    drained: bool  # the buffer just ran empty at the end of the expected audio
    underrun: bool  # the buffer ran empty while more audio was expected
    epoch: int = 0  # flush count when pulled: results from before a flush are stale


class JitterBuffer:
    """Args:
    rate: sample rate (Hz) of the queued audio.
    period: samples per :meth:`pull` (10 ms at 24 kHz = 240).
    prebuffer_ms: initial target: audio queued before playback starts (ms), used until
        the first segment has been observed.
    fade_samples: length of the fade-out on an underrun and of the fade-in on resume
        (samples, at most one period).
    min_ms, max_ms: bounds of the adaptive target (ms). ``min_ms == max_ms`` gives a
        fixed-depth buffer.
    quantile: the target is this quantile of the recent segments' requirements.
    forget: per-observation forgetting factor of the requirement histogram.
    history_ms: how much of the audio last handed out is kept so :meth:`pause` can take
        back what the device had not yet played (ms).
    """

    def __init__(self, rate: int = 24000, period: int = 240, prebuffer_ms: int = 60,
                 fade_samples: int = 96, min_ms: float = 20, max_ms: float = 600,
                 quantile: float = 0.95, forget: float = 0.8, history_ms: int = 300):
        if not 0 <= min_ms <= max_ms:
            raise ValueError(f"need 0 <= min_ms <= max_ms, got {min_ms}, {max_ms}")
        if not 0 < quantile < 1 or not 0 < forget < 1:
            raise ValueError("quantile and forget must be in (0, 1)")
        self.rate = rate
        self.period = period
        self.prebuffer = rate * prebuffer_ms // 1000  # current target (samples)
        self.min_ms, self.max_ms = float(min_ms), float(max_ms)
        self.quantile, self.forget = quantile, forget
        f = max(1, min(fade_samples, period))
        self._fade_out = np.linspace(1.0, 0.0, f, dtype=np.float32)  # [0] = 1: no step in
        self._fade_in = np.linspace(0.0, 1.0, f + 1, dtype=np.float32)[1:]
        self._scratch = np.empty(period, dtype=np.float32)
        self._lock = threading.Lock()
        self._chunks: deque[tuple[str, np.ndarray]] = deque()
        self._offset = 0  # samples already taken from _chunks[0]
        self._queued = 0
        self._playing = False
        self._complete = False  # all audio of the current response has arrived
        self._stalled = False  # ran dry while audio was expected; cleared by the next push
        self._fade_in_pos = f  # position in the fade-in ramp; f = no fade in progress
        self._last_sample = 0  # last sample handed out (hold value for a fade-out)
        self.played: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.underruns = 0
        self.epoch = 0
        # estimator: the open segment's arrivals (times, cumulative samples after each chunk)
        self._seg_cap = 1024
        self._seg_t = np.empty(self._seg_cap, dtype=np.float64)
        self._seg_cum = np.empty(self._seg_cap, dtype=np.int64)
        self._seg_n = 0
        self._seg_peak = 0  # samples
        self._last_t = -math.inf
        nb = int(math.ceil(self.max_ms / BUCKET_MS)) + 1
        self._hist = np.zeros(nb, dtype=np.float64)
        self._hist_cs = np.empty(nb, dtype=np.float64)
        # the last samples handed out, so a pause can take back what the device still held
        self._hist_pcm = np.zeros(max(history_ms * rate // 1000, period), dtype=np.int16)
        self._hist_w = 0  # absolute samples written to _hist_pcm
        self._hist_runs: deque[list] = deque()  # [item_id, samples], oldest first
        self._hist_len = 0
        self._paused = False
        self.observations = 0  # segments observed
        self.last_requirement_ms: float | None = None  # the last segment's observation

    # ---- network side --------------------------------------------------------------------
    def push(self, item_id: str, pcm: np.ndarray, t: float | None = None) -> None:
        """Queue reply audio (int16, shape (n,)) for ``item_id``, arrived at ``t``
        (``time.monotonic()`` seconds; now if omitted)."""
        if pcm.size == 0:
            return
        if t is None:
            t = time.monotonic()
        with self._lock:
            t = max(t, self._last_t)  # arrival times must not go backwards
            self._last_t = t
            if not self._playing and self._queued == 0:
                # idle: this chunk opens a new playback segment
                if self._seg_n:
                    if self._stalled:  # the late chunk that the underrun waited for
                        self._seg_peak = max(self._seg_peak, self._requirement(t))
                    self._close_segment()
            elif self._seg_n:
                self._seg_peak = max(self._seg_peak, self._requirement(t))
            self._stalled = False
            self._seg_append(t, pcm.size)
            self._chunks.append((item_id, pcm))
            self._queued += pcm.size
            self.received[item_id] = self.received.get(item_id, 0) + pcm.size
            self._complete = False

    def mark_complete(self) -> None:
        """No more audio is coming for now (``response.done``): play out what is queued."""
        with self._lock:
            self._complete = True
            self._stalled = False  # a dry buffer now was the end of the audio, not a gap

    def pause(self, unplayed: int = 0) -> dict[str, int]:
        """Stop handing out reply audio but keep it queued (tentative barge-in). The last
        ``unplayed`` samples handed out (those the device had not played when it was
        stopped; at most ``history_ms``) go back to the head of the queue and leave
        ``played``. :meth:`pull` returns silence until :meth:`resume` or :meth:`flush`.
        Returns ``played`` per item after the take-back."""
        with self._lock:
            n = min(max(0, unplayed), self._hist_len)
            if n:
                if self._offset and self._chunks:
                    item, chunk = self._chunks[0]
                    self._chunks[0] = (item, chunk[self._offset:])
                    self._offset = 0
                cap = self._hist_pcm.shape[0]
                end = self._hist_w
                left = n
                while left:
                    run = self._hist_runs[-1]
                    k = min(left, run[1])
                    idx = np.arange(end - k, end) % cap
                    self._chunks.appendleft((run[0], self._hist_pcm[idx]))
                    self.played[run[0]] = self.played.get(run[0], 0) - k
                    run[1] -= k
                    if run[1] == 0:
                        self._hist_runs.pop()
                    end -= k
                    left -= k
                self._hist_w = end
                self._hist_len -= n
                self._queued += n
            self._paused = True
            return dict(self.played)

    def resume(self) -> None:
        """Hand out the paused audio again (fading in)."""
        with self._lock:
            if self._paused:
                self._paused = False
                self._fade_in_pos = 0 if self._queued else self._fade_in.size

    @property
    def paused(self) -> bool:
        return self._paused

    def flush(self) -> dict[str, int]:
        """Drop all queued audio (barge-in). Returns ``played`` per item at this moment."""
        with self._lock:
            self._paused = False
            self._hist_runs.clear()
            self._hist_len = 0
            self._chunks.clear()
            self._offset = 0
            self._queued = 0
            self._playing = False
            self._complete = True
            self._stalled = False
            self._fade_in_pos = self._fade_in.size
            if self._seg_n:
                self._close_segment()
            self.epoch += 1
            return dict(self.played)

    @property
    def queued_samples(self) -> int:
        return self._queued

    @property
    def active(self) -> bool:
        """True while there is reply audio queued or playing."""
        return self._queued > 0 or self._playing

    @property
    def target_ms(self) -> float:
        """Current target prebuffer (ms)."""
        return self.prebuffer * 1000 / self.rate

    # ---- estimator (called with the lock held) ------------------------------------------
    def _seg_append(self, t: float, n: int) -> None:
        i = self._seg_n
        if i == self._seg_cap:
            self._seg_cap *= 2
            self._seg_t = np.resize(self._seg_t, self._seg_cap)
            self._seg_cum = np.resize(self._seg_cum, self._seg_cap)
        self._seg_t[i] = t
        self._seg_cum[i] = (self._seg_cum[i - 1] if i else 0) + n
        self._seg_n = i + 1

    def _requirement(self, t: float) -> int:
        """Prebuffer (samples) the open segment needed for a chunk arriving now at ``t``."""
        n = self._seg_n
        m = int(self._seg_cum[n - 1])  # media position of the new chunk in the segment
        due = t - (m - self.period) / self.rate  # latest playback start that is on time
        k = int(np.searchsorted(self._seg_t[:n], due, side="left"))  # chunks before `due`
        return (int(self._seg_cum[k - 1]) if k else 0) + 1

    def _close_segment(self) -> None:
        obs_ms = self._seg_peak * 1000 / self.rate
        self._seg_n = 0
        self._seg_peak = 0
        self.last_requirement_ms = obs_ms
        self.observations += 1
        w = max(1.0 - self.forget, 1.0 / self.observations)  # start-up: plain average
        h = self._hist
        h *= 1.0 - w
        h[min(int(math.ceil(obs_ms / BUCKET_MS)), h.size - 1)] += w
        np.cumsum(h, out=self._hist_cs)
        b = int(np.searchsorted(self._hist_cs, self.quantile * self._hist_cs[-1], side="left"))
        target_ms = min(max(b * BUCKET_MS, self.min_ms), self.max_ms)
        self.prebuffer = int(math.ceil(target_ms * self.rate / 1000))

    # ---- playback side -----------------------------------------------------------------
    def pull(self, out: np.ndarray) -> PullResult:
        """Fill ``out`` (int16, shape (period,)) with the next period; silence if none.

        Never blocks on anything but the short internal lock.
        """
        n = out.shape[0]
        with self._lock:
            if self._paused:
                out[:] = 0
                self._last_sample = 0
                return PullResult(None, 0, False, False, self.epoch)
            if not self._playing:
                if self._queued and (self._queued >= self.prebuffer or self._complete):
                    self._playing = True
                else:
                    out[:] = 0
                    self._last_sample = 0
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
            if filled and main_item is not None:
                self._remember(out, filled, main_item)
            f = self._fade_in.size
            if self._fade_in_pos < f and filled:  # resuming after an underrun
                k = min(filled, f - self._fade_in_pos)
                seg = self._scratch[:k]
                np.multiply(out[:k], self._fade_in[self._fade_in_pos:self._fade_in_pos + k],
                            out=seg)
                out[:k] = seg
                self._fade_in_pos += k
            drained = underrun = False
            if filled < n:
                self._playing = False
                if self._complete:
                    drained = True
                    out[filled:] = 0
                    self._fade_in_pos = f
                    if self._seg_n:  # played out in one go: observe it now
                        self._close_segment()
                else:
                    underrun = True
                    self.underruns += 1
                    self._stalled = True
                    self._fade_out_tail(out, filled)
                    self._fade_in_pos = 0
            self._last_sample = int(out[n - 1])
            return PullResult(main_item, filled, drained, underrun, self.epoch)

    def _remember(self, out: np.ndarray, filled: int, item_id: str) -> None:
        """Keep the samples just handed out for :meth:`pause` (lock held). A period that
        spans two items is attributed to the one with most samples (a take-back of a few
        samples across an item boundary is off by at most one period's remainder)."""
        cap = self._hist_pcm.shape[0]
        w = self._hist_w % cap
        first = min(filled, cap - w)
        self._hist_pcm[w:w + first] = out[:first]
        if first < filled:
            self._hist_pcm[:filled - first] = out[first:filled]
        self._hist_w += filled
        if self._hist_runs and self._hist_runs[-1][0] == item_id:
            self._hist_runs[-1][1] += filled
        else:
            self._hist_runs.append([item_id, filled])
        self._hist_len += filled
        while self._hist_len > cap:
            extra = self._hist_len - cap
            run = self._hist_runs[0]
            k = min(extra, run[1])
            run[1] -= k
            self._hist_len -= k
            if run[1] == 0:
                self._hist_runs.popleft()

    def _fade_out_tail(self, out: np.ndarray, filled: int) -> None:
        """Ramp the period down to silence from the audio that ran out at ``filled``: the
        last ``f`` samples of the audio, continued by its last sample held, go under a
        1 -> 0 ramp; the rest of the period is silence."""
        n = out.shape[0]
        f = self._fade_out.size
        hold = out[filled - 1] if filled else self._last_sample
        start = max(0, filled - f)
        end = min(n, start + f)
        seg = self._scratch[:end - start]
        seg[:filled - start] = out[start:filled]
        seg[filled - start:] = hold
        seg *= self._fade_out[:end - start]
        out[start:end] = seg
        out[end:] = 0
