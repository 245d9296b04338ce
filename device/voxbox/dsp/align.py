"""Echo-path alignment: echo delay and clock-drift tracking during normal operation,
compensation of the far-end reference, and the policy that moves it.

Core module (numpy only; no I/O, no clocks, no randomness): the same input gives the
same output, whether it comes from the daemon or from an offline tool.

Conventions used throughout (16 kHz capture rate on the device):

- **delay** (samples or ms): how much later the echo appears in the *captured* stream
  than the same sound in the *played* (reference) stream, i.e.
  ``captured[n] ~ g * played[n - delay]``. Positive = the reference leads its echo (what
  the echo canceller needs; keep it a few ms to a few tens of ms). Negative = the echo
  arrives before the reference (every echo canceller fails: the reference is late).
- **drift** (ppm): ``(f_mic / f_play - 1) * 1e6``, the microphone clock relative to the
  playback clock. With a reference that is consumed at the microphone rate, the delay
  grows by ``ppm * 1e-6`` samples per sample: +100 ppm = the delay grows by 1.6 samples
  (0.1 ms) per second at 16 kHz.
- **ERL** (echo return loss, dB): played level minus captured echo level (positive =
  the echo is quieter than the reference), the echo level being the part of the capture
  that is linearly coherent with the played signal (background noise excluded).

Pieces:

- :func:`chirp`, :func:`measure_delay`, :class:`DelayEstimate` — the one-shot
  measurement (calibration sweep; GCC-PHAT with sub-sample peak refinement on whole
  blocks), in :mod:`voxbox.dsp.calibration`; re-exported here.
- :class:`EchoDelayTracker` — streaming: fed 10 ms (ref, mic) blocks during normal
  operation, estimates the delay every ``hop_s`` when the far end has been active, and
  the drift by robust regression of the successive delays.
- :class:`DriftCompensator` — resamples the reference stream by ``1 + ppm * 1e-6`` with a
  windowed-sinc polyphase interpolator; ``set_ppm`` changes the rate without a click.
- :class:`ReferenceAligner` — the policy: when to move the reference delay line and
  retune the compensator, from the tracker's estimates.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from voxbox.dsp.calibration import (
    DelayEstimate,
    _check_signal,
    _next_pow2,
    _positive,
    chirp,  # noqa: F401 (re-exported)
    measure_delay,
)

__all__ = ["DelayEstimate", "chirp", "measure_delay", "EchoDelayTracker", "DriftCompensator"]

FloatArray = npt.NDArray[np.float64]


# -- streaming delay and drift tracking ---------------------------------------------------
class EchoDelayTracker:
    """Streaming echo-delay and clock-drift estimation from normal operation (no chirp).

    Feed every capture period with the reference the echo canceller got and the
    microphone block (:meth:`push`). Every ``hop_s`` of stream time, if the reference
    was active (RMS above ``active_dbfs``) in at least ``min_active`` of the last
    ``window_s`` (10 ms frames), :func:`measure_delay` runs on that window (mic and
    reference over the same samples). Estimates with ``confidence >= min_confidence``
    are kept with their time (window centre, stream samples).

    Drift: least-squares slope of the kept delays over stream time, refitted without
    points more than ``max(4 * MAD, 0.25 sample)`` off the line; reported once the kept
    estimates span ``min_drift_span_s``. A sudden delay change (echo-path change, a ring
    resync) of more than ``jump_ms`` confirmed by ``3`` estimates in a row restarts the
    history (``jumps`` counts them). After changing the reference's rate (e.g.
    :meth:`DriftCompensator.set_ppm`) call :meth:`reset_drift`: the drift then measured
    is the *residual*, to be added to the compensator's ppm.

    Args:
        sample_rate: Hz.
        window_s: analysis window, s (>= 0.5; 2 s is a good trade-off for speech).
        hop_s: estimate period, s (> 0).
        max_delay_ms: search range ``+-max_delay_ms``, ms; keep it well below ``window_s``.
        active_dbfs: reference activity threshold per 10 ms frame, dBFS (RMS re int16 FS).
        min_active: fraction 0..1 of the window's frames that must be active.
        min_confidence: minimum :attr:`DelayEstimate.confidence` kept.
        min_drift_span_s: time span of kept estimates before :attr:`drift_ppm` is reported.
        history: estimates kept for the regression (oldest dropped).
        jump_ms: delay change treated as a jump, ms.

    Raises:
        ValueError: a bad argument (named in the message).

    Memory: two preallocated float64 rings of ``window_s`` samples and a history of
    ``history`` estimates; an analysis allocates its FFT buffers (about 1 MiB at 2 s).
    Not thread-safe: call from one thread (the capture loop).
    """

    def __init__(self, sample_rate: int = 16000, window_s: float = 2.0, hop_s: float = 1.0,
                 max_delay_ms: float = 250.0, active_dbfs: float = -50.0, min_active: float = 0.5,
                 min_confidence: float = 10.0, min_drift_span_s: float = 10.0, history: int = 240,
                 jump_ms: float = 1.0) -> None:
        self.sample_rate = int(_positive("sample_rate", sample_rate))
        self.window_s = _positive("window_s", window_s)
        if self.window_s < 0.5:
            raise ValueError(f"window_s: must be >= 0.5 s, got {window_s!r}")
        self.hop_s = _positive("hop_s", hop_s)
        self.max_delay_ms = _positive("max_delay_ms", max_delay_ms)
        if self.max_delay_ms >= self.window_s * 1000 / 2:
            raise ValueError(f"max_delay_ms: must be below window_s / 2 ({self.window_s * 500:g} ms), "
                             f"got {max_delay_ms!r}")
        if isinstance(active_dbfs, bool) or not isinstance(active_dbfs, (int, float)) or active_dbfs > 0:
            raise ValueError(f"active_dbfs: must be a number <= 0, got {active_dbfs!r}")
        if isinstance(min_active, bool) or not isinstance(min_active, (int, float)) or not 0 <= min_active <= 1:
            raise ValueError(f"min_active: must be within 0..1, got {min_active!r}")
        if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)):
            raise ValueError(f"min_confidence: must be a number, got {min_confidence!r}")
        self.min_drift_span_s = _positive("min_drift_span_s", min_drift_span_s)
        if isinstance(history, bool) or not isinstance(history, int) or history < 3:
            raise ValueError(f"history: must be an int >= 3, got {history!r}")
        self.jump_ms = _positive("jump_ms", jump_ms)
        self.active_dbfs = float(active_dbfs)
        self.min_active = float(min_active)
        self.min_confidence = float(min_confidence)
        self._win = int(round(self.window_s * self.sample_rate))
        self._hop = max(1, int(round(self.hop_s * self.sample_rate)))
        self._frame = max(1, self.sample_rate // 100)
        self._ref = np.zeros(self._win, dtype=np.float64)
        self._mic = np.zeros(self._win, dtype=np.float64)
        self._cap = history
        self._ht = np.zeros(history, dtype=np.float64)  # window centres, stream samples
        self._hd = np.zeros(history, dtype=np.float64)  # delays, samples
        self._pend_t = np.zeros(3, dtype=np.float64)
        self._pend_d = np.zeros(3, dtype=np.float64)
        self.reset()

    # -- state -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything (stream position, windows, estimates)."""
        self._ref[:] = 0
        self._mic[:] = 0
        self._w = 0  # ring write index
        self.samples = 0  # stream samples pushed
        self._next = self._win  # stream position of the next analysis
        self.windows = 0  # analyses run
        self.estimates = 0  # estimates accepted (confidence >= min_confidence)
        self.jumps = 0
        self.last: DelayEstimate | None = None
        self.last_t_s: float = math.nan
        self.reset_drift()

    def reset_drift(self) -> None:
        """Forget the delay history used for the drift (keep the latest delay)."""
        self._hn = 0  # estimates in the history
        self._h0 = 0  # index of the oldest
        self._npend = 0
        self._fit: tuple[float, float, float] | None = None  # slope, stderr, span (samples)

    # -- properties --------------------------------------------------------------------
    @property
    def delay_samples(self) -> float:
        """Latest accepted delay, samples (``nan`` before the first)."""
        return self.last.delay_samples if self.last is not None else math.nan

    @property
    def delay_ms(self) -> float:
        """Latest accepted delay, ms (``nan`` before the first)."""
        return self.last.delay_ms if self.last is not None else math.nan

    @property
    def confidence(self) -> float:
        """Confidence of the latest accepted delay (``nan`` before the first)."""
        return self.last.confidence if self.last is not None else math.nan

    @property
    def erl_db(self) -> float:
        """Echo return loss at the latest accepted estimate, dB (``nan`` before)."""
        return self.last.erl_db if self.last is not None else math.nan

    @property
    def drift_ppm(self) -> float:
        """Clock drift, ppm (mic relative to the reference stream; positive = the delay
        grows); ``nan`` until the history spans ``min_drift_span_s``."""
        f = self._fit
        if f is None or f[2] < self.min_drift_span_s * self.sample_rate:
            return math.nan
        return f[0] * 1e6

    @property
    def drift_stderr_ppm(self) -> float:
        """Standard error of :attr:`drift_ppm`, ppm (``nan`` when not reported)."""
        f = self._fit
        if f is None or f[2] < self.min_drift_span_s * self.sample_rate:
            return math.nan
        return f[1] * 1e6

    @property
    def history_span_s(self) -> float:
        """Time spanned by the estimates in the drift history, s."""
        return self._fit[2] / self.sample_rate if self._fit is not None else 0.0

    def history(self) -> tuple[FloatArray, FloatArray]:
        """(times in s, delays in ms) of the estimates in the drift history (copies)."""
        idx = (self._h0 + np.arange(self._hn)) % self._cap
        return self._ht[idx] / self.sample_rate, self._hd[idx] * 1000.0 / self.sample_rate

    # -- streaming ---------------------------------------------------------------------
    def push(self, ref: np.ndarray, mic: np.ndarray) -> DelayEstimate | None:
        """Add one block pair (same instants).

        Args:
            ref: reference given to the echo canceller, int16 or float (int16 units),
                shape ``(n,)``.
            mic: microphone block, same dtype kind and shape ``(n,)``.

        Returns:
            The new accepted :class:`DelayEstimate` when this block completed an analysis
            that passed the confidence gate, else ``None``.

        Raises:
            ValueError: wrong type/dtype/shape, or shapes differ (names the argument).
        """
        _check_signal("ref", ref, 0)
        _check_signal("mic", mic, 0)
        n = ref.shape[0]
        if mic.shape != (n,):
            raise ValueError(f"mic: expected shape ({n},) like ref, got {mic.shape}")
        result = None
        pos = 0
        while pos < n:
            k = min(n - pos, self._next - self.samples, self._win)
            w = self._w
            first = min(k, self._win - w)
            self._ref[w:w + first] = ref[pos:pos + first]
            self._mic[w:w + first] = mic[pos:pos + first]
            if first < k:
                self._ref[:k - first] = ref[pos + first:pos + k]
                self._mic[:k - first] = mic[pos + first:pos + k]
            self._w = (w + k) % self._win
            self.samples += k
            pos += k
            if self.samples >= self._next:
                self._next += self._hop
                est = self._analyse()
                if est is not None:
                    result = est
        return result

    def _analyse(self) -> DelayEstimate | None:
        w = self._w
        ref = np.concatenate([self._ref[w:], self._ref[:w]])
        mic = np.concatenate([self._mic[w:], self._mic[:w]])
        f = self._frame
        nfr = ref.shape[0] // f
        pw = np.mean(ref[: nfr * f].reshape(nfr, f) ** 2, axis=1)
        thr = (32768.0 * 10 ** (self.active_dbfs / 20)) ** 2
        if nfr == 0 or np.mean(pw > thr) < self.min_active:
            return None
        self.windows += 1
        try:
            est = measure_delay(ref, mic, self.sample_rate, self.max_delay_ms)
        except ValueError:
            return None
        if not est.confidence >= self.min_confidence:
            return None
        t = self.samples - self._win / 2.0
        self.estimates += 1
        self.last = est
        self.last_t_s = t / self.sample_rate
        self._add(t, est.delay_samples)
        return est

    def _add(self, t: float, d: float) -> None:
        jump = self.jump_ms * self.sample_rate / 1000.0
        if self._hn >= 3:
            pred = self._predict(t)
            if abs(d - pred) > jump:
                # candidate jump: confirmed by 3 consistent estimates in a row
                if self._npend and abs(d - self._pend_d[self._npend - 1]) > jump:
                    self._npend = 0
                self._pend_t[self._npend] = t
                self._pend_d[self._npend] = d
                self._npend += 1
                if self._npend == 3:
                    self.jumps += 1
                    pt, pd = self._pend_t.copy(), self._pend_d.copy()
                    self.reset_drift()
                    for i in range(3):
                        self._append(pt[i], pd[i])
                    self._refit()
                return
        self._npend = 0
        self._append(t, d)
        self._refit()

    def _append(self, t: float, d: float) -> None:
        i = (self._h0 + self._hn) % self._cap
        self._ht[i] = t
        self._hd[i] = d
        if self._hn < self._cap:
            self._hn += 1
        else:
            self._h0 = (self._h0 + 1) % self._cap

    def _predict(self, t: float) -> float:
        if self._fit is not None and self._hn >= 3:
            idx = (self._h0 + np.arange(self._hn)) % self._cap
            tt, dd = self._ht[idx], self._hd[idx]
            tm = float(np.mean(tt))
            return float(np.median(dd - self._fit[0] * (tt - tm))) + self._fit[0] * (t - tm)
        idx = (self._h0 + self._hn - 1) % self._cap
        return float(self._hd[idx])

    def _refit(self) -> None:
        if self._hn < 2:
            self._fit = None
            return
        idx = (self._h0 + np.arange(self._hn)) % self._cap
        t, d = self._ht[idx], self._hd[idx]
        keep = np.ones(t.shape[0], dtype=bool)
        slope = se = 0.0
        for _ in range(2):
            tt, dd = t[keep], d[keep]
            if tt.shape[0] < 2:
                break
            tm = tt - np.mean(tt)
            sxx = float(np.dot(tm, tm))
            if sxx <= 0:
                break
            slope = float(np.dot(tm, dd - np.mean(dd)) / sxx)
            res = d - (np.mean(dd) + slope * (t - np.mean(tt)))
            rk = res[keep]
            dof = rk.shape[0] - 2
            se = math.sqrt(float(np.dot(rk, rk)) / dof / sxx) if dof > 0 else math.inf
            mad = float(np.median(np.abs(rk - np.median(rk)))) * 1.4826
            keep = np.abs(res) <= max(4 * mad, 0.25)
        span = float(np.max(t) - np.min(t))
        self._fit = (slope, se, span)


# -- drift compensation -------------------------------------------------------------------
class DriftCompensator:
    """Resample a stream by ``1 + ppm * 1e-6`` (output rate / input rate) so a reference
    produced on the playback clock matches the microphone clock.

    A windowed-sinc interpolator (``taps`` taps, Kaiser window beta 10, cutoff at
    Nyquist, ``phases`` polyphase rows with linear interpolation between rows) evaluates
    the input at positions ``q_j = j / (1 + ppm * 1e-6) - latency_samples``. Measured error
    against ideal band-limited interpolation with the defaults: -90 dB for content up to
    0.4 x the sample rate (6.4 kHz at 16 kHz), -68 dB up to 0.45 x (7.2 kHz).

    :meth:`process` returns, over a stream, ``n * (1 + ppm * 1e-6)`` samples within one
    sample (each call: the outputs whose input neighbourhood has arrived). The content is
    delayed by ``latency_samples`` (``taps // 2``, 1.5 ms at 16 kHz with the defaults):
    subtract it from a configured reference delay if the lead matters. :meth:`set_ppm`
    changes the rate from the next output on; the read position is continuous, so there
    is no click. Deterministic: the same block sequence gives bit-identical output.

    Args:
        ppm: rate change, ppm, ``|ppm| <= 1000`` (positive = more output samples).
        taps: interpolator length, even, 8..128.
        phases: polyphase rows, >= 16.

    Raises:
        ValueError: a bad argument (named in the message).

    Not thread-safe: call from one thread (the playback loop).
    """

    MAX_PPM = 1000.0

    def __init__(self, ppm: float = 0.0, taps: int = 48, phases: int = 512) -> None:
        if isinstance(taps, bool) or not isinstance(taps, int) or taps % 2 or not 8 <= taps <= 128:
            raise ValueError(f"taps: must be an even int within 8..128, got {taps!r}")
        if isinstance(phases, bool) or not isinstance(phases, int) or phases < 16:
            raise ValueError(f"phases: must be an int >= 16, got {phases!r}")
        self.taps = taps
        self.phases = phases
        self.latency_samples: int = taps // 2
        half = taps // 2
        # coef[p, t]: weight of sample floor(q) - half + 1 + t for frac(q) = p / phases
        u = (np.arange(taps)[None, :] - half + 1) - np.arange(phases + 1)[:, None] / phases
        fc = 1.0  # cutoff re Nyquist (a lower one would leave echo the canceller cannot model)
        beta = 10.0
        win = np.i0(beta * np.sqrt(np.clip(1 - (u / (half + 0.5)) ** 2, 0, 1))) / np.i0(beta)
        h = fc * np.sinc(fc * u) * win
        h /= np.sum(h, axis=1, keepdims=True)
        self._coef = h
        self._dcoef = np.diff(h, axis=0)  # row p+1 - row p
        self._toff = np.arange(taps) - half + 1
        self._buf = np.zeros(4096, dtype=np.float64)
        self._ppm = 0.0
        self.set_ppm(ppm)
        self.reset()

    def reset(self) -> None:
        """Forget the stream (keeps ppm): the next sample is stream sample 0."""
        # buffer holds `taps` zeros before the stream, q in buffer coordinates
        self._buf[: self.taps] = 0.0
        self._len = self.taps
        self._q = float(self.taps - self.latency_samples)
        self.samples_in = 0
        self.samples_out = 0

    @property
    def ppm(self) -> float:
        """Current rate change, ppm."""
        return self._ppm

    def set_ppm(self, ppm: float) -> None:
        """Change the rate from the next output sample on (no discontinuity).

        Raises:
            ValueError: not a finite number within ``+-MAX_PPM`` (names ``ppm``).
        """
        if isinstance(ppm, bool) or not isinstance(ppm, (int, float, np.floating)) or not math.isfinite(ppm) \
                or abs(ppm) > self.MAX_PPM:
            raise ValueError(f"ppm: must be a finite number within +-{self.MAX_PPM:g}, got {ppm!r}")
        self._ppm = float(ppm)
        self._step = 1.0 / (1.0 + self._ppm * 1e-6)

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample one block.

        Args:
            block: int16 or float samples, shape ``(n,)``, any ``n >= 0``.

        Returns:
            Same dtype as ``block`` (int16 rounded and clipped), shape ``(m,)`` with ``m``
            about ``n * (1 + ppm * 1e-6)`` (+-1 per call, exact over a stream).

        Raises:
            ValueError: wrong type, dtype or shape (names ``block``).
        """
        _check_signal("block", block, 0)
        n = block.shape[0]
        half = self.taps // 2
        need = self._len + n
        if need > self._buf.shape[0]:
            nb = np.zeros(_next_pow2(need), dtype=np.float64)
            nb[: self._len] = self._buf[: self._len]
            self._buf = nb
        self._buf[self._len:need] = block
        self._len = need
        self.samples_in += n
        # outputs j with floor(q_j) + half <= len - 1
        limit = self._len - half  # q_j < limit
        q, step = self._q, self._step
        m = int(math.ceil((limit - q) / step)) if limit > q else 0
        if m > 0:
            qj = q + step * np.arange(m)
            # guard against rounding at the boundary
            while m > 0 and math.floor(qj[m - 1]) + half > self._len - 1:
                m -= 1
                qj = qj[:m]
        if m > 0:
            base = np.floor(qj)
            frac = (qj - base) * self.phases
            p = np.minimum(frac.astype(np.int64), self.phases - 1)
            a = (frac - p)[:, None]
            coef = self._coef[p] + a * self._dcoef[p]
            idx = base.astype(np.int64)[:, None] + self._toff[None, :]
            y = np.einsum("ij,ij->i", coef, self._buf[idx])
            self._q = q + step * m
        else:
            y = np.zeros(0, dtype=np.float64)
        # drop input no longer needed: keep from floor(q) - half + 1 on
        drop = int(math.floor(self._q)) - half + 1
        if drop > 0:
            keep = self._len - drop
            self._buf[:keep] = self._buf[drop:self._len].copy()
            self._len = keep
            self._q -= drop
        self.samples_out += m
        if block.dtype == np.int16:
            return np.clip(np.round(y), -32768, 32767).astype(np.int16)
        return y.astype(block.dtype, copy=False)


class ReferenceAligner:
    """Decides, from :class:`EchoDelayTracker` estimates, when to move the reference delay
    line and retune the :class:`DriftCompensator` (a pure policy: numbers in, decisions out).

    The echo canceller needs the reference to lead the echo by a small, stable amount:
    never lag (then no canceller works), and not lead by much of its filter (each ms of
    lead is a ms of echo tail it cannot cover). The tracker measures the lead the canceller
    actually gets (``delay_ms`` > 0: the echo lags the reference). The wanted lead is
    ``lead_ms`` plus half the spread of the recent estimates (a path whose delay wanders
    — USB audio, a busy bus — gets more margin, up to ``max_margin_ms``). When ``confirm``
    estimates in a row are more than ``tolerance_ms`` short of ``lead_ms``, or more than
    ``slack_ms`` beyond the wanted lead, the delay line moves by the median error (to the
    wanted lead), in whole samples,
    within ``[0, max_delay_ms]``; a reference that arrives *after* its echo (``delay_ms``
    < 0) is corrected at the first estimate.

    The dead band is lopsided on purpose. Every move is an echo-path change for the
    canceller: measured in the closed loop (car and kiosk rooms at +6/+10 dB), the reply
    after a move started with 0-4 dB of echo cancellation for about 400 ms, long enough for
    the near-end detector to pause the reply on its own echo. A lead a few ms short of the
    wanted one risks the reference lagging, so it is corrected; a lead beyond it only costs
    as many ms of the filter's tail (``frontend.filter_ms``, 200 ms by default), so up to
    ``slack_ms`` of it is kept rather than paid for with a move (with estimates spread by a
    few ms, the aligner used to follow them with a move after every reply).

    Args:
        sample_rate: Hz.
        lead_ms: wanted lead of the reference over the echo, ms (> 0).
        tolerance_ms: dead band below ``lead_ms``, ms (> 0).
        slack_ms: dead band above the wanted lead, ms (> 0; kept below the filter's tail).
        confirm: consecutive out-of-band estimates before a move.
        max_delay_ms: upper bound of the delay line, ms.
        drift_min_ppm: smallest drift worth compensating, ppm.
        max_margin_ms: cap of the spread margin added to ``lead_ms``, ms.

    Raises:
        ValueError: a bad argument (named).
    """

    def __init__(self, sample_rate: int = 16000, lead_ms: float = 10.0, tolerance_ms: float = 3.0,
                 confirm: int = 2, max_delay_ms: float = 500.0, drift_min_ppm: float = 2.0,
                 max_margin_ms: float = 40.0, slack_ms: float = 30.0) -> None:
        self.sample_rate = int(_positive("sample_rate", sample_rate))
        self.lead_ms = _positive("lead_ms", lead_ms)
        self.tolerance_ms = _positive("tolerance_ms", tolerance_ms)
        self.slack_ms = _positive("slack_ms", slack_ms)
        if isinstance(confirm, bool) or not isinstance(confirm, int) or confirm < 1:
            raise ValueError(f"confirm: must be an int >= 1, got {confirm!r}")
        self.confirm = confirm
        self.max_delay = int(round(_positive("max_delay_ms", max_delay_ms) * self.sample_rate / 1000))
        self.drift_min_ppm = _positive("drift_min_ppm", drift_min_ppm)
        self.max_margin_ms = _positive("max_margin_ms", max_margin_ms)
        self._errors: list[float] = []
        self._recent: list[float] = []  # estimates since the last move
        self.moves = 0

    @property
    def target_ms(self) -> float:
        """The lead currently aimed at, ms (``lead_ms`` + spread margin)."""
        r = self._recent
        margin = (max(r) - min(r)) / 2 if len(r) >= 2 else 0.0
        return self.lead_ms + min(margin, self.max_margin_ms)

    def on_delay(self, delay_ms: float, line_samples: int, urgent: bool = False) -> int | None:
        """A new echo-delay estimate (ms, as the canceller sees it) with the delay line at
        ``line_samples``. Returns the new delay-line length (samples), or None to keep it;
        below 0 when the echo leads the reference by more than the whole line (the caller
        has a floor: :meth:`voxbox.service.echopath.EchoPath._move_line`).

        ``urgent``: the first estimate after a gap in the audio (a playback underrun, a
        capture overrun), which moved the echo against the reference by an unknown amount:
        the spread of the estimates before it no longer applies, and an estimate out of
        the band moves the line at once, without ``confirm``."""
        if not math.isfinite(delay_ms):
            return None
        if urgent:
            self._recent = []
            self._errors.clear()
        self._recent = (self._recent + [delay_ms])[-8:]
        err = delay_ms - self.target_ms
        if delay_ms >= self.lead_ms - self.tolerance_ms and err <= self.slack_ms:
            self._errors.clear()
            return None
        if self._errors and (self._errors[-1] > 0) != (err > 0):
            self._errors.clear()
        self._errors.append(err)
        if len(self._errors) < self.confirm and delay_ms >= 0 and not urgent:
            return None
        move = float(np.median(self._errors))
        self._errors.clear()
        new = int(min(self.max_delay, line_samples + round(move * self.sample_rate / 1000)))
        # keep some memory of the spread across the move, as the new line will see it (a
        # longer line delays the reference: the echo lags it by that much less)
        shift_ms = (new - line_samples) * 1000 / self.sample_rate
        self._recent = [d - shift_ms for d in self._recent[-4:]]
        if new == line_samples:
            return None
        self.moves += 1
        return new

    def on_drift(self, drift_ppm: float, stderr_ppm: float, current_ppm: float) -> float | None:
        """A drift estimate (residual, ppm) with the compensator at ``current_ppm``. Returns
        the compensator's new ppm, or None. Estimates within ``drift_min_ppm`` or within
        3 standard errors of zero are ignored; the result stays within +-``DriftCompensator.MAX_PPM``."""
        if not (math.isfinite(drift_ppm) and math.isfinite(stderr_ppm)):
            return None
        if abs(drift_ppm) <= max(self.drift_min_ppm, 3 * stderr_ppm):
            return None
        lim = DriftCompensator.MAX_PPM
        return float(min(lim, max(-lim, current_ppm + drift_ppm)))
