"""Adaptive reply-audio jitter buffer with exact per-item accounting of the samples played.

Realtime services send reply audio faster than real time, in bursts of chunks of varying
size, and over a mobile link with gaps. The network side :meth:`JitterBuffer.push` es
chunks (with their arrival time); the playback thread :meth:`JitterBuffer.pull` s exactly
one period per call and never waits: when nothing is ready it gets silence. Without
time-stretching, playback of a response starts once ``prebuffer`` samples (the current
*target*) are queued, or the response's audio is complete (with it, see below).

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

Time-stretching (``stretch=True``, the default; in the manner of NetEq's preemptive
expand and accelerate: one pitch period ``T`` (2.5-15 ms) inserted or removed by WSOLA,
with no step at either end; the DSP is in :mod:`voxbox.audio.stretch`):

- expand: while less than ``max(expand_ms, min(target, expand_target_ms))`` is queued
  and more audio is expected, the head of the queue plays slower (one period inserted per ``T / max_expand`` consumed; at most
  ``max_expand_ms`` inserted per gap): a short gap is bridged instead of underrunning. It
  stops as soon as new audio lifts the queue (a real underrun still fades as above).
  With ``expand_target_ms`` above ``expand_ms`` the learned target raises the threshold
  (up to ``expand_target_ms``): on a link whose segments needed 100 ms the buffer starts
  stretching while 100 ms is still queued, so a gap of that size is bridged more often.
  The cap is 80 ms by default. Every early expand is lag that accelerate only wins back
  while ``accelerate_ms`` is queued: with real speech (the offline bench plays espeak-ng
  replies) the ``server-4g`` added p95 is 9.4 / 6.9 / 4.9 ms at a cap of 100 / 80 / 60 ms
  (fixed 60 ms buffer: 11.9 ms), at 1.8 / 2.0 / 2.2 underruns per minute (fixed: 5.0).
  On the real daemon (link bench, 20 turns) a cap of 100 ms gave a 4G p95 above the
  fixed buffer's (12 against 10 ms) and 60 ms lost the lossy proxy's underrun advantage
  (7 against 6).
- accelerate: the buffer follows the *earliest possible player* of the response (plays
  every sample as soon as it has arrived; in continuous time when :meth:`pull` gets the
  playout time ``t``, else on the pull grid). While we are behind it (after a prebuffer,
  an expand or a rebuffer) and at least ``accelerate_ms`` stays queued, one period per
  ``T / max_accelerate`` is removed where the audio is periodic (normalised
  correlation >= ``accelerate_corr``, 0.8) or quiet (RMS of the two periods below
  ``quiet_dbfs``, -30 dBFS), never more than the lag. With a real-time-paced sender the queue stays short,
  so the lag an expand built up stays as a cushion instead of expand and accelerate
  taking turns.
- playback starts once ``start_ms`` (60 ms) is queued or the response is complete: the
  first chunk is almost always longer (50-250 ms), so this costs nothing on a good link,
  and a reply whose first chunk is short does not start on a cushion that one late
  chunk or one slow wake-up of the network thread empties. (It used to start on the first
  chunk, expand covering the start; on the real daemon that underran where the fixed
  60 ms buffer did not: 1 against 0 in 107 s of steady-link replies.)

Added latency (:attr:`added`, a :class:`LatencyHistogram`): per source sample handed
out, the time of its pull minus the time the earliest possible player handed it out;
defined in :mod:`voxbox.audio.playout` ("The jitter buffer's added latency").

Accounting stays in SOURCE samples: ``played[item]`` and ``PullResult.samples`` count
the samples of the queued audio consumed (what ``conversation.item.truncate`` needs);
``PullResult.device`` the device samples they filled. Stretched audio is handed out from
"pieces" (source samples -> device samples, mapped exactly by
:func:`~voxbox.audio.stretch.src_at`). :meth:`pause` maps the
``unplayed`` device samples back to the source samples they were made from (per
handed-out fragment) and re-queues those, and the pieces made but not yet handed out.

Bounds (a misbehaving server can send 30 minutes of reply audio in 4 s, or 100,000
distinct item ids): :meth:`JitterBuffer.push` queues at most ``max_queued_ms`` of source
audio (60 s) and at most one chunk per ``MIN_CHUNK_MS`` (5 ms) of it (12,000 chunks: every
per-chunk structure, the queue, the arrivals since the last pull, the earliest player's
runs, is bounded by that); the excess is dropped (the head of a chunk that fits partly is
kept), counted in ``dropped`` and returned by ``push``. ``played`` and ``received`` keep at
most ``MAX_ITEMS`` (64) items, the oldest (first inserted) out first, and
:meth:`JitterBuffer.forget_done` drops every item with nothing queued or in the pause
history (the daemon calls it when a reply has played out). A playback segment stores the
arrivals of its first ``SEG_KEEP`` (4096) chunks, and of later ones only while they cover
less than ``max_ms``: a later chunk can only need a prebuffer above ``max_ms``, whose
observation falls in the histogram's last bucket either way (so the target is the same;
``last_requirement_ms`` is then a lower bound). The pause history holds at most
``history_ms``. Normal replies (a few hundred chunks) reach none of these bounds.

Thread safety: one lock, held for queue bookkeeping, the estimator's O(log n) update per
push, one period's copy and, once per segment (at its end), a ~120-bucket histogram
update: a few microseconds; a stretch operation adds a ~(300 x 360) correlation
(tens of microseconds), only on the periods that stretch or try to (an accelerate search that
finds the audio neither periodic nor quiet is not repeated on the same audio). ``push``/``mark_complete``/``flush`` come from the network
thread, ``pull`` from the playback thread. Cores never read a clock, except ``push``'s
default arrival time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

import numpy as np

from voxbox.audio.playout import LatencyHistogram, PullResult, quantile_bin
from voxbox.audio.stretch import best_lag, fade_out_tail, insert_period, remove_period, src_at

BUCKET_MS = 5  # histogram resolution of the target
MAX_ITEMS = 64  # items kept in ``played`` and ``received`` (oldest first out)
MIN_CHUNK_MS = 5  # at most one queued chunk per this much of ``max_queued_ms``
SEG_KEEP = 4096  # a segment's arrivals kept (more only while they cover < ``max_ms``)


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
        back what the device had not yet played (ms of device audio).
    stretch: time-stretch (WSOLA) to bridge short gaps (expand) and to catch up with
        the earliest possible playout (accelerate). ``False`` gives the plain buffer.
    max_expand: largest slow-down of one expand operation (1.0 = +100 %: one pitch
        period inserted per pitch period consumed).
    max_accelerate: largest speed-up of one accelerate operation (0.25 = one pitch
        period removed per four consumed, i.e. -25 % duration).
    expand_ms: expand while less than this much audio is queued and more is expected ...
    expand_target_ms: ... or less than the current target, up to this much (ms).
    max_expand_ms: at most this much audio is inserted per gap (then it underruns).
    accelerate_ms: accelerate only while at least this much audio stays queued (so the
        lag that expand built up stays as a cushion when the sender is only real-time
        paced, instead of expand and accelerate taking turns).
    start_ms: with ``stretch``, playback starts once ``start_ms`` is queued (or the
        response is complete); without, at the target.
    accelerate_corr: accelerate removes a pitch period where the normalised correlation
        of two consecutive periods is at least this (0-1] ...
    quiet_dbfs: ... or where their RMS is below this (dBFS, <= 0). At -40.8 dBFS (an
        RMS of 300) little of real speech qualified: with espeak-ng replies in the offline
        bench, the ``server-4g`` added p95 was 12.4 ms against the fixed buffer's 11.9;
        at -30 dBFS it is 9.4 ms (``expand_target_ms`` 100), at the same underruns and
        PESQ.
    max_queued_ms: :meth:`push` queues at most this much source audio (ms, > 0) and at
        most one chunk per ``MIN_CHUNK_MS`` of it; the excess is dropped (see
        :meth:`push`). 60 s: far more than a 2-4x real-time reply ever queues.

    Attributes (besides the statistics): ``played`` / ``received``: source samples per
    item handed out / pushed (at most ``MAX_ITEMS`` items, oldest first out; see
    :meth:`forget_done`); ``dropped``: samples (source samples at ``rate``) that
    :meth:`push` dropped since the buffer was made.

    Raises ValueError for bounds, quantiles or stretch factors out of range, and for
    ``max_queued_ms <= 0``.
    """

    def __init__(self, rate: int = 24000, period: int = 240, prebuffer_ms: int = 60,
                 fade_samples: int = 96, min_ms: float = 20, max_ms: float = 600,
                 quantile: float = 0.95, forget: float = 0.8, history_ms: int = 300,
                 stretch: bool = True, max_expand: float = 1.0,
                 max_accelerate: float = 0.25, expand_ms: float = 60,
                 max_expand_ms: float = 80, start_ms: float = 60,
                 accelerate_ms: float = 200, expand_target_ms: float = 80,
                 accelerate_corr: float = 0.8, quiet_dbfs: float = -30.0,
                 max_queued_ms: float = 60_000):
        if not 0 <= min_ms <= max_ms:
            raise ValueError(f"need 0 <= min_ms <= max_ms, got {min_ms}, {max_ms}")
        if not 0 < quantile < 1 or not 0 < forget < 1:
            raise ValueError("quantile and forget must be in (0, 1)")
        if not 0 < max_expand <= 1 or not 0 < max_accelerate <= 0.5:
            raise ValueError("need 0 < max_expand <= 1 and 0 < max_accelerate <= 0.5")
        if not 0 < accelerate_corr <= 1 or quiet_dbfs > 0:
            raise ValueError(f"need 0 < accelerate_corr <= 1 and quiet_dbfs <= 0, got "
                             f"{accelerate_corr}, {quiet_dbfs}")
        if not max_queued_ms > 0:  # (NaN too)
            raise ValueError(f"need max_queued_ms > 0, got {max_queued_ms}")
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
        self._inq = 0  # source samples in _chunks
        self._queued = 0  # source samples not yet handed out (_chunks + _ready)
        self.max_queued_ms = float(max_queued_ms)
        self._cap = max(1, int(max_queued_ms * rate / 1000))  # push queues at most this
        self._max_chunks = max(64, int(max_queued_ms / MIN_CHUNK_MS))  # ... in these chunks
        self.dropped = 0  # samples push dropped (queue full)
        # pieces made from the queue, not yet (fully) handed out: [item, src, dev, done];
        # ``dev`` is what the device gets for the source ``src`` (the same array when
        # not stretched), ``done`` the device samples of it already handed out
        self._ready: deque[list] = deque()
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
        self._seg_n = 0  # arrivals stored (> 0: a segment is open)
        self._seg_total = 0  # samples pushed in the open segment (all its chunks)
        # stop storing arrivals once SEG_KEEP are and they cover at least max_ms
        self._seg_full = int(math.ceil(self.max_ms * rate / 1000))
        self._seg_peak = 0  # samples
        self._last_t = -math.inf
        nb = int(math.ceil(self.max_ms / BUCKET_MS)) + 1
        self._hist = np.zeros(nb, dtype=np.float64)
        self._hist_cs = np.empty(nb, dtype=np.float64)
        # what was handed out lately, so a pause can take back what the device still held:
        # [item, source samples, device samples], oldest first
        self._hist_cap = max(history_ms * rate // 1000, period)
        self._hist_frags: deque[list] = deque()
        self._hist_len = 0  # device samples in _hist_frags
        self._paused = False
        self.observations = 0  # segments observed
        self.last_requirement_ms: float | None = None  # the last segment's observation
        # time-stretching
        self.stretch = stretch
        self.max_expand, self.max_accelerate = float(max_expand), float(max_accelerate)
        self._expand_floor = int(expand_ms * rate / 1000)
        self._expand_ceiling = max(self._expand_floor, int(expand_target_ms * rate / 1000))
        self._expand_cap = int(max_expand_ms * rate / 1000)
        self._start = int(start_ms * rate / 1000)
        self._accel_above = int(accelerate_ms * rate / 1000)
        self._accel_corr = float(accelerate_corr)
        self._quiet_power = (32768.0 * 10 ** (quiet_dbfs / 20)) ** 2  # mean square, int16 units
        self._tmin = max(8, int(0.0025 * rate))  # pitch lags searched: 2.5-15 ms
        self._tmax = max(self._tmin + 1, int(0.015 * rate))
        self._expanded = 0  # device samples inserted since the last push
        self._taken = 0  # source samples ever taken from the queue
        self._accel_after = 0  # no accelerate search before _taken reaches this
        # the earliest possible player of the current response (what a no-prebuffer,
        # non-stretching player would have played): accelerate catches up with it
        self._resp_open = False
        self._arrivals: list[tuple[float, int]] = []  # pushed since the last pull
        self._e_pos = 0.0  # its position (source samples of the response)
        self._e_t: float | None = None  # ... at this time
        self._e_avail = 0  # source samples of the response pushed
        self._r_pos = 0  # our position: source samples of the response handed out
        # when the earliest player (re)started playing, as (source position, time): it
        # plays source sample p at g(p) = t0 + (p - p0) / rate of the last run with p0 <= p
        self._g_runs: deque[tuple[int, float]] = deque()
        self._resumed = False  # resumed from a pause: the earliest player restarts with us
        self.added = LatencyHistogram()  # added latency of the audio handed out (see pull)
        self._pulls = 0  # pulls since made: the device's clock when pull gets no time
        # statistics (device samples handed out)
        self.audio_out = 0
        self.expand_out = 0  # device samples made by expand operations
        self.accelerate_out = 0  # device samples made by accelerate operations
        self.expands = 0
        self.accelerates = 0

    # ---- network side --------------------------------------------------------------------
    def push(self, item_id: str, pcm: np.ndarray, t: float | None = None) -> int:
        """Queue reply audio (int16, shape (n,)) for ``item_id``, arrived at ``t``
        (``time.monotonic()`` seconds; now if omitted). Returns the samples dropped: 0
        unless the queue is full. At most ``max_queued_ms`` is queued (source samples,
        including what a :meth:`pause` took back): of a chunk that does not fit whole,
        the head that fits is queued and the tail dropped; a chunk that does not fit at
        all (or would exceed the chunk limit, one per ``MIN_CHUNK_MS`` of
        ``max_queued_ms``) is dropped whole, as if it had never arrived. ``dropped``
        adds them up."""
        if pcm.size == 0:
            return 0
        if t is None:
            t = time.monotonic()
        with self._lock:
            room = self._cap - self._queued
            if room <= 0 or len(self._chunks) >= self._max_chunks:
                self.dropped += pcm.size
                return pcm.size
            drop = pcm.size - room
            if drop > 0:
                pcm = pcm[:room].copy()  # a copy, so the dropped tail can be freed
                self.dropped += drop
            else:
                drop = 0
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
            if not self._resp_open:  # first audio of a response: earliest player starts
                self._resp_open = True
                self._arrivals.clear()
                self._e_pos, self._e_t, self._e_avail, self._r_pos = 0.0, None, 0, 0
                self._g_runs.clear()
                self._resumed = False
            self._arrivals.append((t, pcm.size))
            self._stalled = False
            self._expanded = 0
            self._seg_append(t, pcm.size)
            self._chunks.append((item_id, pcm))
            self._queued += pcm.size
            self._inq += pcm.size
            received = self.received
            if item_id in received:
                received[item_id] += pcm.size
            else:
                _add_item(received, item_id, pcm.size)
            self._complete = False
            return drop

    def mark_complete(self) -> None:
        """No more audio is coming for now (``response.done``): play out what is queued."""
        with self._lock:
            self._complete = True
            self._stalled = False  # a dry buffer now was the end of the audio, not a gap

    def pause(self, unplayed: int = 0) -> dict[str, int]:
        """Stop handing out reply audio but keep it queued (tentative barge-in). The last
        ``unplayed`` samples handed out (device samples the device had not played when it
        was stopped; at most ``history_ms``) go back to the head of the queue as the
        source samples they were made from, and leave ``played``. :meth:`pull` returns
        silence until :meth:`resume` or :meth:`flush`. Returns ``played`` per item after
        the take-back."""
        with self._lock:
            self._unready()
            n = min(max(0, unplayed), self._hist_len)
            left = n
            while left:
                frag = self._hist_frags[-1]
                item, src, dev = frag
                k = min(left, dev)
                keep = src_at(dev - k, src.size, dev)
                back = src[keep:]
                if k == dev:
                    self._hist_frags.pop()
                else:
                    frag[1], frag[2] = src[:keep], dev - k
                if back.size:
                    self._requeue(item, back)
                    # (an item forgotten meanwhile, possible only with more than MAX_ITEMS
                    # items in the history, stays forgotten)
                    if item in self.played:
                        self.played[item] -= back.size
                    self._queued += back.size
                    self._r_pos -= back.size
                self._hist_len -= k
                left -= k
            self._paused = True
            self._e_pos = float(self._r_pos)  # a pause is not latency to catch up on
            self._g_runs.clear()  # nor added latency: measuring restarts at the resume
            return dict(self.played)

    def resume(self) -> None:
        """Hand out the paused audio again (fading in)."""
        with self._lock:
            if self._paused:
                self._paused = False
                self._resumed = self._resp_open
                self._e_pos = float(self._r_pos)  # nor is the pause lag to catch up on
                self._fade_in_pos = 0 if self._queued else self._fade_in.size

    @property
    def paused(self) -> bool:
        return self._paused

    def flush(self) -> dict[str, int]:
        """Drop all queued audio (barge-in). Returns ``played`` per item at this moment."""
        with self._lock:
            self._paused = False
            self._hist_frags.clear()
            self._hist_len = 0
            self._chunks.clear()
            self._ready.clear()
            self._offset = 0
            self._queued = 0
            self._inq = 0
            self._playing = False
            self._complete = True
            self._stalled = False
            self._resp_open = False
            self._fade_in_pos = self._fade_in.size
            if self._seg_n:
                self._close_segment()
            self.epoch += 1
            return dict(self.played)

    def forget_done(self) -> None:
        """Forget the accounting (``played``, ``received``) of every item with no audio
        queued or in the pause history (what :meth:`pause` could still take back): call
        it when a reply has played out. The items still queued or in the history keep
        theirs."""
        with self._lock:
            live = {it for it, _ in self._chunks}
            live.update(p[0] for p in self._ready)
            live.update(f[0] for f in self._hist_frags)
            for d in (self.played, self.received):
                for item in [it for it in d if it not in live]:
                    del d[item]

    @property
    def queued_samples(self) -> int:
        """Source samples queued (not yet handed out)."""
        return self._queued

    @property
    def active(self) -> bool:
        """True while there is reply audio queued or playing."""
        return self._queued > 0 or self._playing

    def added_latency(self) -> LatencyHistogram:
        """A copy of :attr:`added` (taken under the lock, so consistent): the latency this
        buffer added to the reply audio handed out since it was made, per source sample
        (ms). Subtract an earlier copy for an interval (a turn)."""
        with self._lock:
            return self.added.copy()

    @property
    def target_ms(self) -> float:
        """Current target prebuffer (ms)."""
        return self.prebuffer * 1000 / self.rate

    # ---- estimator (called with the lock held) ------------------------------------------
    def _seg_append(self, t: float, n: int) -> None:
        self._seg_total += n
        i = self._seg_n
        if i >= SEG_KEEP and self._seg_cum[i - 1] >= self._seg_full:
            # a chunk due after all stored ones needs more than max_ms: its exact
            # requirement lands in the histogram's last bucket anyway (see _requirement)
            return
        if i == self._seg_cap:
            self._seg_cap *= 2
            self._seg_t = np.resize(self._seg_t, self._seg_cap)
            self._seg_cum = np.resize(self._seg_cum, self._seg_cap)
        self._seg_t[i] = t
        self._seg_cum[i] = self._seg_total
        self._seg_n = i + 1

    def _requirement(self, t: float) -> int:
        """Prebuffer (samples) the open segment needed for a chunk arriving now at ``t``
        (a lower bound, above ``max_ms``, when it is due after all the stored arrivals
        and later ones were not stored: see ``_seg_append``)."""
        n = self._seg_n
        m = self._seg_total  # media position of the new chunk in the segment
        due = t - (m - self.period) / self.rate  # latest playback start that is on time
        k = int(np.searchsorted(self._seg_t[:n], due, side="left"))  # chunks before `due`
        return (int(self._seg_cum[k - 1]) if k else 0) + 1

    def _close_segment(self) -> None:
        obs_ms = self._seg_peak * 1000 / self.rate
        self._seg_n = 0
        self._seg_total = 0
        self._seg_peak = 0
        self.last_requirement_ms = obs_ms
        self.observations += 1
        w = max(1.0 - self.forget, 1.0 / self.observations)  # start-up: plain average
        h = self._hist
        h *= 1.0 - w
        h[min(int(math.ceil(obs_ms / BUCKET_MS)), h.size - 1)] += w
        np.cumsum(h, out=self._hist_cs)
        b = quantile_bin(self._hist_cs, self.quantile)
        target_ms = min(max(b * BUCKET_MS, self.min_ms), self.max_ms)
        self.prebuffer = int(math.ceil(target_ms * self.rate / 1000))

    def _lag(self, t: float | None, late: float = 0.0) -> float:
        """Advance the earliest player to this pull and return how far (source samples)
        we are behind it. With ``t`` (same clock as ``push``) it plays in continuous time
        from the response's first arrival, the arrivals moved ``late`` seconds earlier
        (onto ``t``'s paced clock); without, on the pull grid (one period a pull)."""
        n = 0 if self._paused else self.period  # the earliest player waits while paused
        if self._paused and t is not None and self._e_t is not None:
            self._e_t = max(self._e_t, t)
        runs = self._g_runs
        if self._resumed and not self._paused and (t is None or self._e_t is not None):
            # first pull after a resume: the earliest player restarts with us, at our position
            self._resumed = False
            self._e_t = self._e_t if t is None else t
            runs.clear()
            runs.append((self._r_pos, self._pulls * self.period / self.rate if t is None else t))
        if t is None:
            tg = self._pulls * self.period / self.rate  # the pull grid's clock
            for _, k in self._arrivals:
                if self._e_pos >= self._e_avail and not self._paused:  # it was dry: resumes now
                    runs.append((self._e_avail, tg))
                self._e_avail += k
            self._arrivals.clear()
            lag = self._e_pos - self._r_pos
            self._e_pos = min(float(self._e_avail), self._e_pos + n)
            return lag
        for a, k in self._arrivals:
            a -= late
            if self._e_t is None:  # the response's first arrival: it starts playing
                runs.append((self._e_avail, a))
            else:
                a = max(a, self._e_t)
                pos = self._e_pos + (a - self._e_t) * self.rate
                if pos >= self._e_avail:  # it had played all it had: it resumes with this chunk
                    self._e_pos = float(self._e_avail)
                    if not self._paused:
                        runs.append((self._e_avail, a))
                else:
                    self._e_pos = pos
            self._e_t = a
            self._e_avail += k
        self._arrivals.clear()
        if self._e_t is not None:
            t = max(t, self._e_t)
            self._e_pos = min(float(self._e_avail), self._e_pos + (t - self._e_t) * self.rate)
            self._e_t = t
        return self._e_pos - self._r_pos

    # ---- queue helpers (lock held) -------------------------------------------------------
    def _requeue(self, item: str, src: np.ndarray) -> None:
        """Put ``src`` back at the head of the queue."""
        if self._offset and self._chunks:
            it, chunk = self._chunks[0]
            self._chunks[0] = (it, chunk[self._offset:])
            self._offset = 0
        self._chunks.appendleft((item, src))
        self._inq += src.size

    def _unready(self) -> None:
        """Return the not yet handed out source of the ready pieces to the queue."""
        while self._ready:
            item, src, dev, done = self._ready.pop()
            rest = src[src_at(done, src.size, dev.size):]
            if rest.size:
                self._requeue(item, rest)

    def _peek(self, limit: int) -> tuple[str, np.ndarray]:
        """Up to ``limit`` queued source samples of the head item (contiguous copy)."""
        item = self._chunks[0][0]
        parts, got, off = [], 0, self._offset
        for it, chunk in self._chunks:
            if it != item or got >= limit:
                break
            take = min(limit - got, chunk.size - off)
            parts.append(chunk[off:off + take])
            got += take
            off = 0
        return item, (parts[0] if len(parts) == 1 else np.concatenate(parts))

    def _consume(self, s: int) -> None:
        self._taken += s
        while s:
            item, chunk = self._chunks[0]
            take = min(s, chunk.size - self._offset)
            self._offset += take
            s -= take
            self._inq -= take
            if self._offset >= chunk.size:
                self._chunks.popleft()
                self._offset = 0

    # ---- time-stretching (lock held) -----------------------------------------------------
    def _expand_piece(self) -> bool:
        """Insert one pitch period into the head of the queue (preemptive expand)."""
        tmax = min(self._tmax, self._inq // 2, self._expand_cap - self._expanded)
        if tmax < self._tmin or self._chunks[0][1].size == 0:
            return False
        item, xi = self._peek(2 * tmax)
        tmax = min(tmax, xi.size // 2)
        if tmax < self._tmin:
            return False
        x = xi.astype(np.float32)
        T, _ = best_lag(x, self._tmin, tmax)
        s = max(T, min(int(round(T / self.max_expand)), self._inq))
        src = xi[:s].copy() if s <= xi.size else self._peek(s)[1].copy()
        dev = insert_period(x, src, T)
        self._consume(s)
        self._ready.append([item, src, dev, 0])
        self._expanded += T
        self.expands += 1
        return True

    def _accelerate_piece(self, lag: float) -> int:
        """Remove one pitch period (where the audio is periodic or quiet) from the head of
        the queue, no more than ``lag`` samples, keeping enough queued. Returns the
        samples removed (0: none)."""
        tmax = min(self._tmax, int(lag))
        if tmax < self._tmin:
            return 0
        need = max(2 * tmax, int(math.ceil(tmax / self.max_accelerate)))
        if self._inq < need + self._accel_above:
            return 0
        item, xi = self._peek(need)
        if xi.size < need:
            return 0
        x = xi.astype(np.float32)
        T, corr = best_lag(x[:2 * tmax], self._tmin, tmax)
        quiet = float(np.mean(x[:2 * T] ** 2)) < self._quiet_power
        if corr < self._accel_corr and not quiet:
            # neither periodic nor quiet: do not search this audio again on every pull
            self._accel_after = self._taken + need
            return 0
        s = max(2 * T, int(round(T / self.max_accelerate)))
        src = xi[:s].copy()
        dev = remove_period(x, src, T)
        self._consume(s)
        self._ready.append([item, src, dev, 0])
        self.accelerates += 1
        return T

    def _make_piece(self, need: int, lag: float) -> int:
        """Move the next audio from the queue to the ready pieces (lock held). Returns the
        samples an accelerate removed (what is left of ``lag`` for this pull's next piece)."""
        if self.stretch:
            below = max(self._expand_floor, min(self.prebuffer, self._expand_ceiling))
            if not self._complete and self._inq < below:
                if self._expand_piece():
                    return 0
            elif lag >= self._tmin and self._taken >= self._accel_after:
                removed = self._accelerate_piece(lag)
                if removed:
                    return removed
        item, chunk = self._chunks[0]
        take = min(need, chunk.size - self._offset)
        piece = chunk[self._offset:self._offset + take]
        self._consume(take)
        self._ready.append([item, piece, piece, 0])
        return 0

    # ---- playback side -----------------------------------------------------------------
    def pull(self, out: np.ndarray, t: float | None = None, now: float | None = None) -> PullResult:
        """Fill ``out`` (int16, shape (period,)) with the next period; silence if none.

        ``t``: when this period starts playing, on ``push``'s clock (optional: without it
        the pull grid is the clock: pull ``k`` plays at ``k * period / rate``, and the
        earliest player hands out at most a period of what had arrived by each pull).
        ``now``: when ``t`` is a paced time (:class:`~voxbox.audio.playout.PullClock`), the
        actual time of this pull: it came ``now - t`` late, so audio that arrived up to then
        still makes this period, and its arrival counts that much earlier on the paced clock.
        Never blocks on anything but the short internal lock.
        """
        n = out.shape[0]
        with self._lock:
            self._pulls += 1
            lag = self._lag(t, 0.0 if now is None or t is None else max(0.0, now - t)) \
                if self._resp_open else 0.0
            if self._paused:
                out[:] = 0
                self._last_sample = 0
                return PullResult(None, 0, False, False, self.epoch)
            if not self._playing:
                start = self._start if self.stretch else self.prebuffer
                if self._queued and (self._queued >= min(start, self._cap) or self._complete):
                    self._playing = True
                else:
                    out[:] = 0
                    self._last_sample = 0
                    return PullResult(None, 0, False, False, self.epoch)
            filled = consumed = 0
            # the item with the most device samples in this period (pieces of one item
            # are consecutive): the current run and the best so far
            main_item, main_k, run_item, run_k = None, 0, None, 0
            while filled < n:
                if not self._ready:
                    if not self._chunks:
                        break
                    lag -= self._make_piece(n - filled, lag)  # never more than the lag
                    continue
                piece = self._ready[0]
                item, src, dev, done = piece
                k = min(n - filled, dev.size - done)
                s0, s1 = src_at(done, src.size, dev.size), src_at(done + k, src.size, dev.size)
                out[filled:filled + k] = dev[done:done + k]
                if s1 > s0:
                    played = self.played
                    if item in played:
                        played[item] += s1 - s0
                    else:
                        _add_item(played, item, s1 - s0)
                self._remember(item, src[s0:s1], k)
                if dev is not src:
                    if dev.size > src.size:
                        self.expand_out += k
                    else:
                        self.accelerate_out += k
                if item != run_item:
                    if run_k > main_k:
                        main_item, main_k = run_item, run_k
                    run_item, run_k = item, 0
                run_k += k
                consumed += s1 - s0
                filled += k
                piece[3] = done + k
                if piece[3] >= dev.size:
                    self._ready.popleft()
            if consumed and self._g_runs:
                # with ``t``: the pull is no earlier than the last arrival it could hand out
                # (``_lag`` left ``_e_t`` at max(t, arrivals)); without, the pull grid
                self._measure(self._e_t if t is not None else self._pulls * self.period / self.rate,
                              consumed)
            self._queued -= consumed
            self._r_pos += consumed
            self.audio_out += filled
            if run_k > main_k:
                main_item = run_item
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
                    self._resp_open = False
                    if self._seg_n:  # played out in one go: observe it now
                        self._close_segment()
                else:
                    underrun = True
                    self.underruns += 1
                    self._stalled = True
                    fade_out_tail(out, filled, out[filled - 1] if filled else self._last_sample,
                                  self._fade_out, self._scratch)
                    self._fade_in_pos = 0
            self._last_sample = int(out[n - 1])
            return PullResult(main_item, consumed, drained, underrun, self.epoch, filled)

    def _measure(self, t: float, n: int) -> None:
        """Added latency of the ``n`` source samples this pull (at ``t``) hands out, from
        the first of them: ``t - g(r)``, ``g`` the earliest player's playout (lock held)."""
        r0, runs = self._r_pos, self._g_runs
        while len(runs) > 1 and runs[1][0] <= r0:
            runs.popleft()
        p0, t0 = runs[0]
        if p0 <= r0:
            self.added.add((t - t0 - (r0 - p0) / self.rate) * 1000.0, n)

    def _remember(self, item_id: str, src: np.ndarray, dev: int) -> None:
        """Keep what was just handed out (``dev`` device samples made from ``src``) for
        :meth:`pause` (lock held), at most ``history_ms`` of device samples."""
        frags = self._hist_frags
        frags.append([item_id, src, dev])  # ~one period each: ~history_ms / 10 entries
        self._hist_len += dev
        over = self._hist_len - self._hist_cap
        while over > 0:
            frag = frags[0]
            if frag[2] <= over:
                frags.popleft()
                self._hist_len -= frag[2]
                over -= frag[2]
            else:
                cut = src_at(over, frag[1].size, frag[2])
                frag[1], frag[2] = frag[1][cut:], frag[2] - over
                self._hist_len -= over
                over = 0


def _add_item(d: dict[str, int], item: str, n: int) -> None:
    """Add ``item`` (not in ``d``) with ``n``; forget the oldest item beyond MAX_ITEMS."""
    d[item] = n
    if len(d) > MAX_ITEMS:
        del d[next(iter(d))]

