"""Residual echo suppressor (RES): a double-talk aware spectral post-filter in numpy.

Core module, pure: :meth:`ResidualEchoSuppressor.process_frame` is a deterministic
function of the frame stream (no clock, no randomness, no I/O).

Runs after the linear echo canceller (and after the Speex preprocessor in
:class:`voxbox.dsp.frontend.CaptureFrontEnd`). Per hop of ``frame_size`` samples it gets

- ``e``: the linear canceller's output, ``mic``: the microphone and ``ref``: the far-end
  reference for the same instants (the echo estimate is ``y_hat = mic - e``), and
- ``z``: the signal to clean (the preprocessor's output, which lags ``e`` by exactly one
  hop), and returns ``z`` with the residual echo suppressed, delayed by one more hop.

Method (STFT, sqrt-Hann window of ``2 * frame_size`` samples, hop ``frame_size``):

1. Residual echo power per bin ``R = L * |Y_hat|^2`` with tail ``R = max(R, decay * R_prev)``
   (slow decay in far-end single talk, faster while the near end talks).
   The leakage ``L`` (per band) is the regression coefficient of the residual power
   ``|E|^2`` on the echo-estimate power ``|Y_hat|^2`` (covariance / variance of their
   fluctuations, recursively averaged). Near-end speech and noise are uncorrelated with
   ``|Y_hat|^2`` and do not bias it in the mean, but over a finite window they do push it
   up, so the regression is updated at full rate only in frames the double-talk detector
   (step 2, run on the leakage of the previous hop) calls echo-only, and at
   ``1 - leak_gate`` of it in certain double talk (never fully frozen, so a leakage that
   starts low or lags an echo-path change cannot lock the detector in "double talk"). It catches
   what the linear filter cannot: misadjustment, loudspeaker distortion, the tail beyond
   the filter, and the misfit right after an echo-path change.
   The leakage is held under a floor (``leak_floor_ms``, ``leak_floor_db``): the minimum,
   over the last ``leak_floor_ms``, of the band ratio ``|E|^2 / |Y_hat|^2`` (every
   pause of the near end shows the echo-only ratio), plus ``leak_floor_db``. Without it
   a long double talk drove the regression up (the user's syllables fluctuate with the
   far end's by chance: measured -16 -> -4 dB in a car), the detector then called the
   user echo (``od`` back at ``overdrive_st``) and the near end lost 4 dB. A residual
   coherent with the reference (an echo-path change: the share ``q`` below) lifts the
   floor in proportion, and a fully coherent one empties it, so a real rise of the
   leakage is followed at once.
   In double talk the regression is a poor echo estimate: it is a slope of fluctuations,
   so the residual's steady part (the reverberant tail beyond the canceller, its
   misadjustment) is not in it, and the near end's chance correlations drive it to 0 at
   times. Measured in the family's double talk (6 rooms): the estimate 7.5-43 dB (median) under the
   true residual, where it was 8-13 dB over it in far-end single talk. So a *late
   residual model* takes over as double talk becomes certain (``late_ms`` > 0):
   ``R_late = m * S`` with ``S`` the per-bin echo estimate ``|Y_hat|^2`` averaged over
   ``late_ms`` and ``m`` per band the ratio of means of ``|E|^2`` to ``S`` over the hops
   the detector calls echo-only (``late_gate``; averaged over ``late_avg_ms``; a hop more
   than ``late_clip_db`` over the current ratio is clipped, a near-end burst the detector
   missed), and ``R = (1 - dt) * R + dt * R_late``. In double talk the gain is then
   softened to ``G ** (1 - (1 - dt_gain_exp) * dt)``, so the user keeps their level.
   Plus a fast term for moments the leakage lags (canceller bursts, echo-path change):
   ``R = max(R, coh * |E|^2)`` with ``coh`` the short-term (40 ms, 5-bin) coherence of
   ``E`` with the reference ``X`` at lags 0..2 hops, bias-corrected; the reference never
   contains near-end speech, so near-end speech does not raise it. It backs off when
   the double-talk detector says the near end dominates.
2. Double-talk detector: the 300-4000 Hz ratio of ``|E|^2`` to the leakage estimate
   (near end present -> the residual is well above the estimated echo). A residual that
   jumped but is mostly coherent with the reference (``dt_coh``) is misadjustment -- an
   echo-path change, a cold start -- not the user, and does not count as double talk:
   before this, the first 0.5 s after a path change was taken for the user and left
   almost unsuppressed (measured 1-6 dB ERLE in the family's linear rooms). The
   coherence takes each lag's phase step per bin out before smoothing across bins
   (``coh_align``), so it does not depend on the echo's delay inside the window. The overdrive
   moves from ``overdrive_st`` (single talk) to ``overdrive`` (double talk) with it.
   A double talk the detector saw is held for ``dt_hold_ms`` (decaying), so the soft
   ends of the user's words, below the detector's threshold, keep the mild overdrive;
   the hold is scaled down like the detector by a coherent residual.
   Gain ``G = max(floor, 1 - overdrive * R / |E|^2)``, smoothed across frequency (3
   bins; against musical noise) and optionally over time; it is 1 wherever the near
   end dominates the residual, and exactly 1 without a far end.
3. ``G`` (computed on the ``e`` window of the previous hop, which lines up with the
   current ``z`` window) is applied to ``z``'s spectrum; overlap-add resynthesis.

Shapes: every frame is ``(frame_size,)`` samples (int16 or float); spectra have
``frame_size + 1`` bins of ``sample_rate / (2 * frame_size)`` Hz.
Latency: exactly ``frame_size`` samples (``latency_samples``) on top of ``z``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import numpy.typing as npt

__all__ = ["ResSettings", "ResidualEchoSuppressor"]

FloatArray = npt.NDArray[np.float64]

#: share of the residual coherent with the reference (300-4000 Hz, power weighted) below
#: which the double-talk detector is trusted as it is, and above which (with ``dt_coh``
#: 1) it is overruled: near-end speech measures 0-0.1 here, misadjusted echo 0.4-0.8
COH_FRAC_LO, COH_FRAC_HI = 0.15, 0.4


@dataclass(frozen=True)
class ResSettings:
    """Residual echo suppressor tuning. The defaults were chosen on the tuning half of the
    randomized room family (``tests/benchmarks/roomfamily.py``, seeds 0-11, with the
    loudspeaker model on), by the coordinate search of ``test_frontend_family_bench``;
    ``leak_floor_ms``, ``leak_floor_db`` and ``dt_hold_ms`` were chosen after it on the
    same half from a grid (floor window 1-5 s, margin 3-10 dB, hold 100-1000 ms), on the
    search's objective (-3.41 -> -2.26): double-talk STOI median / worst decile 0.897 /
    0.881 -> 0.908 / 0.896, near-end attenuation -1.9 / -2.6 -> -1.4 / -1.9 dB, for
    0.6 / 0.8 dB of single-talk ERLE and 0.6 / 1.1 dB of ERLE after an echo-path change.
    The late residual model (``late_*``, ``dt_gain_exp``) was chosen after it on the same
    half, as the variant of 16 (``late_ms`` 50/100, averaged or peak-held ``S``,
    ``dt_gain_exp`` 0.5/0.7, ``coh_dt`` 0.5/1) with the best objective: DT STOI 0.908 /
    0.896 -> 0.915 / 0.904, near-end attenuation -1.4 / -1.9 -> -1.5 / -2.0 dB, ERLE
    unchanged, ERLE after a change -0.3 / -0.9 dB. On the reporting half (not tuned on):
    DT STOI 0.917 / 0.890 -> 0.921 / 0.896, every room up (0.002-0.009), ERLE, ERLE after
    a change and near-end attenuation within 0.1 dB.
    ``floor_db`` (-15 -> -20 dB) was chosen after it with the preprocessor's
    ``echo_suppress_active_db`` (-6 -> -2 dB, :class:`voxbox.dsp.frontend.FrontEndSettings`),
    on the same half, from a grid (floor -15 to -21 dB, active suppression -6 to 0 dB, with
    ``overdrive_st`` 2.5-4 and ``dt_gain_exp`` 0.4-0.7): of the variants that raised the
    double-talk STOI worst decile, the best by the objective (-2.64 -> -1.13). A deeper
    floor in single talk pays for a milder Speex suppression in double talk: ERLE 40.2 /
    34.1 -> 40.7 / 34.4 dB, ERLE after a change 21.9 / 17.5 -> 23.2 / 18.5 dB, DT STOI
    0.915 / 0.904 -> 0.917 / 0.909, near-end attenuation -1.55 / -2.00 -> -1.55 / -1.98 dB.
    On the reporting half: ERLE 40.5 / 37.3 -> 41.0 / 38.4 dB, after a change 23.4 / 21.1
    -> 26.7 / 22.7 dB, DT STOI 0.921 / 0.896 -> 0.921 / 0.898, near-end attenuation -1.35
    / -1.93 -> -1.35 / -1.96 dB. The detection track keeps -15 dB (:data:`DETECTION`).
    ``overdrive_st`` (4 -> 10) and ``floor_db`` (-20 -> -25 dB) were chosen after it, with
    the canceller's early retraining on (:meth:`voxbox.dsp.frontend.CaptureFrontEnd.prepare_early_retrain`),
    on the same half, from a grid (``overdrive_st`` 6-14, ``floor_db`` -20 to -35 dB,
    Speex's echo suppression -60/-20/0 dB): of the variants with the preprocessor's
    echo suppression as it was (so the detection track hears what it did in the closed
    loop), the one whose worst goal margin (worst decile, in the objective's units:
    1 dB ERLE, 0.01 STOI, 0.5 dB near-end attenuation) is largest; the objective was flat
    (+1.47 to +1.57) over ``overdrive_st`` 9-14. The early retraining leaves the
    double-talk STOI room for a stronger suppressor in far-end single talk. Figures in
    :class:`voxbox.dsp.frontend.FrontEndSettings`. The detection track keeps 4
    (:data:`DETECTION`).

    Attributes:
        floor_db: lowest gain, dB (<= 0).
        overdrive: residual echo over-estimation factor while the near end talks (>= 1).
        leak_tau_ms: averaging time of the leakage regression, ms (> 0).
        tail_decay_db: tail of the residual estimate: dB per hop it may decay in far-end
            single talk (> 0).
        release_ms: gain rise time constant, ms (>= 0; 0 = instant).
        bands: number of leakage bands, log spaced (>= 1).
        spread: 0..1, mix of the band-average echo-estimate power into the per-bin
            one (0 = per bin; measured: spreading costs double talk, no ERLE gain).
        coh_tau_ms: averaging time of the residual/reference coherence, ms (> 0).
        coh_bias: coherence below this counts as none (0 <= x < 1; removes the
            estimator's bias for unrelated signals).
        coh_weight: weight of the coherent residual term (>= 0; 0 = off).
        coh_lags: reference lags (hops) searched for coherence (>= 1).
        coh_dt: 0..1, how much the coherent term backs off in double talk (1 = off
            while the near end clearly dominates).
        overdrive_st: over-estimation factor in far-end single talk (>= 1).
        dt_lo_db, dt_hi_db: residual-to-estimated-echo ratio (dB, 300-4000 Hz) at which
            double talk starts / is certain; the overdrive moves between the two
            factors over this range (``dt_hi_db > dt_lo_db``).
        leak_gate: 0..1 (< 1), how much the leakage regression slows down in double
            talk (its update rate is scaled by ``1 - leak_gate * dt``; 0 = always full
            rate; 1 would freeze it and can lock the detector, so it is excluded).
        tail_decay_dt_db: tail decay, dB per hop, in certain double talk (> 0; the decay
            moves from ``tail_decay_db`` to this with the double-talk measure).
        dt_coh: 0..1, how far a residual that is mostly coherent with the reference
            (``COH_FRAC_LO``..``COH_FRAC_HI`` of it) overrules the double-talk detector
            (1: fully; a residual jump that is linear in the far end is an echo-path
            change, not the user; 0 = off).
        coh_align: take each lag's phase step per bin (the echo's delay inside the
            analysis window) out of the cross-spectrum before smoothing it across bins,
            so the coherence does not depend on where in the window the echo falls.
        leak_floor_ms: window of the leakage floor, ms (>= 0; 0 = no floor): the
            leakage may not exceed the lowest band residual-to-echo-estimate ratio
            seen in this window by more than ``leak_floor_db``.
        leak_floor_db: margin of the leakage over its floor, dB (>= 0).
        dt_hold_ms: decay time of the double-talk hold, ms (>= 0; 0 = no hold).
        late_ms: averaging time of the late residual model's echo estimate ``S``, ms
            (>= 0; 0 = no late model).
        late_avg_ms: averaging time of its band ratio ``m``, ms (> 0).
        late_gate: ``m`` learns in hops whose double-talk measure is at most this (0..1).
        late_clip_db: a hop's residual over ``m * S`` by more than this is clipped
            before it is averaged in, dB (>= 0).
        dt_gain_exp: exponent of the gain in certain double talk (0 < x <= 1; 1 = off).
    """

    floor_db: float = -25.0
    overdrive: float = 1.0
    leak_tau_ms: float = 500.0
    tail_decay_db: float = 0.5
    release_ms: float = 0.0
    bands: int = 24
    spread: float = 0.0
    coh_tau_ms: float = 40.0
    coh_bias: float = 0.2
    coh_weight: float = 1.0
    coh_lags: int = 3
    coh_dt: float = 0.5
    overdrive_st: float = 10.0
    dt_lo_db: float = 6.0
    dt_hi_db: float = 12.0
    leak_gate: float = 0.5
    tail_decay_dt_db: float = 3.0
    dt_coh: float = 1.0
    coh_align: bool = True
    leak_floor_ms: float = 3000.0
    leak_floor_db: float = 6.0
    dt_hold_ms: float = 250.0
    late_ms: float = 50.0
    late_avg_ms: float = 1000.0
    late_gate: float = 0.2
    late_clip_db: float = 3.0
    dt_gain_exp: float = 0.5

    def __post_init__(self) -> None:
        checks = {
            "floor_db": lambda v: v <= 0,
            "overdrive": lambda v: v >= 1,
            "leak_tau_ms": lambda v: v > 0,
            "tail_decay_db": lambda v: v > 0,
            "release_ms": lambda v: v >= 0,
            "overdrive_st": lambda v: v >= 1,
            "spread": lambda v: 0 <= v <= 1,
            "coh_tau_ms": lambda v: v > 0,
            "coh_bias": lambda v: 0 <= v < 1,
            "coh_weight": lambda v: v >= 0,
            "coh_dt": lambda v: 0 <= v <= 1,
            "dt_lo_db": lambda v: True,
            "dt_hi_db": lambda v: v > self.dt_lo_db,
            "leak_gate": lambda v: 0 <= v < 1,
            "tail_decay_dt_db": lambda v: v > 0,
            "dt_coh": lambda v: 0 <= v <= 1,
            "leak_floor_ms": lambda v: v >= 0,
            "leak_floor_db": lambda v: v >= 0,
            "dt_hold_ms": lambda v: v >= 0,
            "late_ms": lambda v: v >= 0,
            "late_avg_ms": lambda v: v > 0,
            "late_gate": lambda v: 0 <= v <= 1,
            "late_clip_db": lambda v: v >= 0,
            "dt_gain_exp": lambda v: 0 < v <= 1,
        }
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "coh_align":
                if not isinstance(v, bool):
                    raise ValueError(f"ResSettings.{f.name} must be a bool, got {v!r}")
                continue
            if f.name in ("bands", "coh_lags"):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"ResSettings.{f.name} must be an int >= 1, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or not checks[f.name](v):
                raise ValueError(f"ResSettings.{f.name} out of range, got {v!r}")


#: the detection track's default tuning: the suppressor as validated in the closed loop
#: before the leakage floor, the double-talk hold, the late residual model and the deeper
#: gain floor (the near-end detector and the barge-in statistic listen to it)
DETECTION = ResSettings(floor_db=-15.0, overdrive_st=4.0, leak_floor_ms=0.0, dt_hold_ms=0.0, late_ms=0.0,
                        dt_gain_exp=1.0)

#: settings of the shared analysis (spectra, bands, coherence): a detection track must
#: agree with the main one on these
SHARED_FIELDS = ("bands", "spread", "coh_tau_ms", "coh_bias", "coh_lags", "coh_align")


class _Track:
    """One leakage regression, double-talk detector and gain with its own state: the
    suppressor's main (uplink) track or its detection track. Fed the shared analysis of
    each hop by :meth:`ResidualEchoSuppressor.process_frame`."""

    def __init__(self, owner: "ResidualEchoSuppressor", s: ResSettings) -> None:
        self.s = s
        self.owner = owner
        hop_s = owner.frame_size / owner.sample_rate
        self.a_leak = float(np.exp(-hop_s / (s.leak_tau_ms / 1000)))
        self.a_rel = float(np.exp(-hop_s / (s.release_ms / 1000))) if s.release_ms > 0 else 0.0
        self.decay = float(10 ** (-s.tail_decay_db / 10))
        self.floor = float(10 ** (s.floor_db / 20))
        self.a_hold = float(np.exp(-hop_s / (s.dt_hold_ms / 1000))) if s.dt_hold_ms > 0 else 0.0
        self.floor_margin = float(10 ** (s.leak_floor_db / 10))
        #: hops in the leakage floor's window (0 = no floor)
        self.floor_hops = int(round(s.leak_floor_ms / 1000 / hop_s)) if s.leak_floor_ms > 0 else 0
        self.late_decay = float(np.exp(-hop_s / (s.late_ms / 1000))) if s.late_ms > 0 else 0.0
        self.a_late = float(np.exp(-hop_s / (s.late_avg_ms / 1000)))
        self.late_clip = float(10 ** (s.late_clip_db / 10))
        self.reset()

    def reset(self) -> None:
        o = self.owner
        h, k, nb = o.frame_size, o._k, o._nb
        self.ola = np.zeros(h)
        self.gain_prev = np.ones(k)  # gain for the z window of the next hop
        self.gain_smooth = np.ones(k)
        self.r_prev = np.zeros(k)
        self.me = np.zeros(nb)
        self.my = np.zeros(nb)
        self.cov = np.zeros(nb)
        self.var = np.zeros(nb)
        self.leak = np.zeros(nb)
        self.out = np.zeros(h)
        self.hold = 0.0  # the double-talk hold (0..1)
        self.late_s = np.zeros(k)
        self.late_num = np.zeros(nb)
        self.late_den = np.zeros(nb)
        # the leakage floor's window: the band ratio |E|^2 / |Y_hat|^2 per hop (inf
        # without a far end), a ring of floor_hops rows
        self.ratios = np.full((max(self.floor_hops, 1), nb), np.inf)
        self.ratio_i = 0
        self.dt = 0.0
        self.ratio_db = float("-inf")

    def step(self, pe, py_eff, be, by, coh, coh_frac: float, far: bool, Z) -> FloatArray:
        """One hop of this track: updates its state, returns its output hop (a
        preallocated ``(frame_size,)`` float64 buffer)."""
        s, o = self.s, self.owner
        band = o._band
        if s.coh_weight <= 0:
            coh = None
        # -- double-talk detector (leakage of the previous hop) ---------------------------
        # near-end presence: residual power over the estimated residual echo (dB),
        # speech band; single talk -> strong overdrive, double talk -> mild; the estimate
        # includes its tail (decaying at ``tail_decay_db`` per hop)
        k0, k1 = o._k_lo, o._k_hi
        r = self.decay * self.r_prev[k0:k1]
        if far:
            r = np.maximum(self.leak[band[k0:k1]] * py_eff[k0:k1], r)
        ratio = 10 * np.log10((pe[k0:k1].sum() + 1e-3) / (r.sum() + 1e-3))
        c = min(max((ratio - s.dt_lo_db) / (s.dt_hi_db - s.dt_lo_db), 0.0), 1.0)
        q = 0.0  # share of the residual that is coherent with the reference, 0..1
        if coh is not None and s.dt_coh > 0:
            # a residual that jumped but is mostly linear in the far end is misadjustment
            # (an echo-path change, a cold start), not the user: the user is not coherent
            # with the reference
            q = min(max((coh_frac - COH_FRAC_LO) / (COH_FRAC_HI - COH_FRAC_LO), 0.0), 1.0)
            c *= 1.0 - s.dt_coh * q

        # -- leakage regression per band, slowed down in double talk ----------------------
        a = 1.0 - (1.0 - self.a_leak) * (1.0 - s.leak_gate * c)
        self.me = me = a * self.me + (1 - a) * be
        self.my = my = a * self.my + (1 - a) * by
        de, dy = be - me, by - my
        self.cov = cov = a * self.cov + (1 - a) * de * dy
        self.var = var = a * self.var + (1 - a) * dy * dy
        leak = np.maximum(cov, 0.0) / (var + 1e-3)
        leak = np.minimum(leak, 1.0)
        if self.floor_hops:
            # the leakage floor (module doc): a coherent residual lifts it, a fully
            # coherent one (an echo-path change) empties its window
            ratios = self.ratios
            if q >= 1.0:
                ratios.fill(np.inf)
            if far:
                np.divide(be, by + 1e-3, out=ratios[self.ratio_i])
            else:
                ratios[self.ratio_i] = np.inf
            self.ratio_i = (self.ratio_i + 1) % ratios.shape[0]
            capped = np.minimum(leak, self.floor_margin * ratios.min(axis=0))
            leak = q * leak + (1.0 - q) * capped
        self.leak = leak

        r = leak[band] * py_eff if far else np.zeros_like(py_eff)
        decay = 10 ** (-(s.tail_decay_db + (s.tail_decay_dt_db - s.tail_decay_db) * c) / 10)
        r = np.maximum(r, decay * self.r_prev, out=self.r_prev)  # state updated in place
        if self.a_hold > 0:
            # hold the double talk the detector saw; a coherent residual scales it down
            self.hold = max(c, self.hold * self.a_hold)
            c = max(c, self.hold * (1.0 - s.dt_coh * q))
        od = s.overdrive_st + (s.overdrive - s.overdrive_st) * c
        self.dt = c
        self.ratio_db = float(ratio)
        if self.late_decay > 0:
            # the late residual model (module doc, step 1): a smoothed echo estimate
            # times the band ratio of means learned where the far end talks alone; it
            # takes over from the leakage estimate as double talk becomes certain
            ls = self.late_s
            if far:
                ls *= self.late_decay
                ls += (1.0 - self.late_decay) * py_eff
            else:
                ls *= self.late_decay
            if far and c <= s.late_gate:
                bs = o._pool @ ls
                if self.late_den.any():
                    # a near-end burst the detector missed: clipped, not averaged in
                    bu = np.minimum(be, self.late_clip * self.late_num / (self.late_den + 1e-3) * bs)
                else:
                    bu = be
                al = self.a_late
                self.late_num = al * self.late_num + (1 - al) * bu
                self.late_den = al * self.late_den + (1 - al) * bs
            if c > 0 and self.late_den.any():
                m = self.late_num / (self.late_den + 1e-3)
                r = (1.0 - c) * r + c * m[band] * ls
        if coh is not None:
            r = np.maximum(r, s.coh_weight * (1 - s.coh_dt * c) * coh * pe)
        # -- gain -------------------------------------------------------------------------
        g = 1.0 - od * r / (pe + 1e-3)
        g = np.maximum(g, self.floor)
        if s.dt_gain_exp < 1 and c > 0:
            g = g ** (1.0 - (1.0 - s.dt_gain_exp) * c)
        # frequency smoothing (3 bins)
        g[1:-1] = 0.25 * g[:-2] + 0.5 * g[1:-1] + 0.25 * g[2:]
        if self.a_rel > 0:
            gs = self.gain_smooth
            up = g > gs
            g = np.where(up, self.a_rel * gs + (1 - self.a_rel) * g, g)
        self.gain_smooth[:] = g

        # -- apply the previous hop's gain to z, overlap-add ---------------------------------
        h = o.frame_size
        y = np.fft.irfft(Z * self.gain_prev, o._n) * o._win
        self.gain_prev[:] = g
        out = self.out
        np.add(self.ola, y[:h], out=out)
        self.ola[:] = y[h:]
        return out


class ResidualEchoSuppressor:
    """Double-talk aware residual echo suppression on whole frames (see module doc).

    Args:
        frame_size: hop in samples (the echo canceller's frame).
        sample_rate: Hz.
        settings: tuning of the main output (the uplink); defaults to ``ResSettings()``.
        detection: tuning of the detection track (:attr:`detect_out`,
            :attr:`last_ratio_db`); defaults to :data:`DETECTION`. ``None`` or equal
            to ``settings``: one track, ``detect_out`` is the main output. Its fields
            of the shared analysis (:data:`SHARED_FIELDS`) are taken from ``settings``.
    """

    def __init__(self, frame_size: int, sample_rate: int, settings: ResSettings | None = None,
                 detection: ResSettings | None = DETECTION) -> None:
        self.settings = s = settings if settings is not None else ResSettings()
        if detection is not None:
            # one analysis serves both tracks: its settings are the main track's
            detection = replace(detection, **{name: getattr(s, name) for name in SHARED_FIELDS})
            if detection == s:
                detection = None
        self.detection = detection
        self.frame_size = h = int(frame_size)
        self.sample_rate = int(sample_rate)
        self.latency_samples = h
        n = 2 * h
        k = h + 1
        self._n, self._k = n, k
        self._win = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n))  # periodic sqrt-Hann
        hop_s = h / self.sample_rate
        self._a_coh = float(np.exp(-hop_s / (s.coh_tau_ms / 1000)))
        # band pooling matrices (triangular-ish, log spaced above 500 Hz)
        nb = min(s.bands, k)
        edges = np.unique(np.round(np.geomspace(1, k - 1, nb + 1)).astype(int))
        edges[0] = 0
        edges[-1] = k
        band = np.zeros(k, dtype=np.intp)
        for b in range(edges.shape[0] - 1):
            band[edges[b] : edges[b + 1]] = b
        self._band = band
        self._nb = int(band.max()) + 1
        hz = self.sample_rate / n
        self._k_lo, self._k_hi = int(300 / hz), int(4000 / hz)
        self._pool = np.zeros((self._nb, k))
        self._pool[band, np.arange(k)] = 1.0
        self._bw = self._pool.sum(axis=1)
        # coh_align: the per-bin exponents of the phase step (complex, as np.power takes
        # them) and the per-hop buffers of the alignment (no allocation per hop)
        L = s.coh_lags
        self._bins = np.arange(k).astype(np.complex128)
        self._step_prod = np.empty((L, self._k_hi - self._k_lo - 1), dtype=np.complex128)
        self._step = np.empty(L, dtype=np.complex128)
        self._step_abs = np.empty(L)
        self._rot = np.empty((L, k), dtype=np.complex128)
        self._main = _Track(self, s)
        self._det = _Track(self, detection) if detection is not None else self._main
        self._need_coh = s.coh_weight > 0 or (detection is not None and detection.coh_weight > 0)
        self.reset()

    def reset(self) -> None:
        """Forget all state (behaves like a fresh object)."""
        n, k = self._n, self._k
        self._buf = np.zeros((4, n))  # rows: e, mic, ref, z (time-domain analysis windows)
        self._main.reset()
        if self._det is not self._main:
            self._det.reset()
        L = self.settings.coh_lags
        self._xh = np.zeros((L, k), dtype=np.complex128)
        self._sex = np.zeros((L, k), dtype=np.complex128)
        self._see = np.zeros(k)
        self._sxx = np.zeros((L, k))
        self.frames = 0
        self.last_dt = 0.0
        self.last_ratio_db = float("-inf")
        self.last_far = False
        self.last_coh_frac = 0.0

    @property
    def dual(self) -> bool:
        """Two tracks: the detection stream (:attr:`detect_out`) is computed apart."""
        return self._det is not self._main

    @property
    def detect_out(self) -> FloatArray:
        """The detection stream's latest hop (float64 ``(frame_size,)``, overwritten on the
        next call): ``z`` suppressed by the detection track; the main output itself when
        :attr:`dual` is false."""
        return self._det.out

    @property
    def _leak(self) -> FloatArray:
        """The main track's band leakage (linear power ratio), for tests and diagnostics."""
        return self._main.leak

    @staticmethod
    def _fsmooth(x):
        """5-bin moving average across frequency (last axis; mirrored edges)."""
        p = np.concatenate([x[..., 1:3][..., ::-1], x, x[..., -3:-1][..., ::-1]], axis=-1)
        return (p[..., :-4] + p[..., 1:-3] + p[..., 2:-2] + p[..., 3:-1] + p[..., 4:]) / 5

    def process_frame(self, z: npt.ArrayLike, e: npt.ArrayLike, mic: npt.ArrayLike, ref: npt.ArrayLike) -> FloatArray:
        """One hop. ``e``, ``mic``, ``ref``: the newest ``frame_size`` samples; ``z``: the
        signal to clean, lagging ``e`` by ``frame_size``. Returns ``frame_size`` float64
        samples of cleaned ``z`` (the main track), delayed by a further ``frame_size`` (a
        preallocated buffer, overwritten on the next call); the detection track's hop is
        in :attr:`detect_out`."""
        h = self.frame_size
        buf = self._buf
        buf[:, :h] = buf[:, h:]
        buf[0, h:] = e
        buf[1, h:] = mic
        buf[2, h:] = ref
        buf[3, h:] = z
        spec = np.fft.rfft(buf * self._win, axis=1)
        E, D, Z = spec[0], spec[1], spec[3]
        Y = D - E
        pe = E.real**2 + E.imag**2
        py = Y.real**2 + Y.imag**2

        s = self.settings
        pool = self._pool
        be, by = pool @ pe, pool @ py
        if s.spread > 0:
            pyb = (by / self._bw)[self._band]
            py_eff = (1 - s.spread) * py + s.spread * pyb
        else:
            py_eff = py
        # no far end in the window: y_hat is only the canceller's DC-notch residue of
        # the microphone (near end, rumble), not echo
        far = bool(np.any(buf[2]))

        coh = None
        if self._need_coh:
            # short-term coherence of E with the reference X at lags 0..L-1 hops (the
            # reference leads its echo): the part of E that is linear in the far end
            X = spec[2]
            xh = self._xh
            xh[1:] = xh[:-1]
            xh[0] = X
            a = self._a_coh
            self._sex *= a
            self._sex += (1 - a) * (E * np.conj(xh))
            self._see = a * self._see + (1 - a) * pe
            self._sxx *= a
            self._sxx += (1 - a) * (xh.real**2 + xh.imag**2)
            sex = self._sex
            if s.coh_align:
                # the echo's delay within the window turns the cross-spectrum's phase by
                # a constant step per bin (2 rad per bin for a 10 ms lead); smoothing across
                # bins would cancel it, so each lag's step (measured in the speech band) is
                # taken out first
                k0, k1 = self._k_lo, self._k_hi
                prod, step, mag, rot = self._step_prod, self._step, self._step_abs, self._rot
                np.conjugate(sex[:, k0:k1 - 1], out=prod)
                np.multiply(sex[:, k0 + 1:k1], prod, out=prod)
                np.sum(prod, axis=1, out=step)
                np.abs(step, out=mag)
                mag += 1e-30
                step /= mag
                np.conjugate(step, out=step)
                np.power(step[:, None], self._bins, out=rot)
                sex = np.multiply(sex, rot, out=rot)
            sex, see, sxx = self._fsmooth(sex), self._fsmooth(self._see), self._fsmooth(self._sxx)
            coh = (sex.real**2 + sex.imag**2) / (see * sxx + 1e-3)
            coh = coh.max(axis=0)
            b = s.coh_bias
            coh = np.clip((coh - b) / (1 - b), 0.0, 1.0)
            self.last_coh = coh
            # how much of the residual is (linearly) the far end: residual echo after an
            # echo-path change or in a cold start is coherent with the reference, the
            # near-end talker is not (300-4000 Hz, power weighted, 0..1)
            k0, k1 = self._k_lo, self._k_hi
            pb = pe[k0:k1]
            self.last_coh_frac = float(np.dot(pb, coh[k0:k1]) / (pb.sum() + 1e-3))
        coh_frac = self.last_coh_frac
        out = self._main.step(pe, py_eff, be, by, coh, coh_frac, far, Z)
        det = self._det
        if det is not self._main:
            det.step(pe, py_eff, be, by, coh, coh_frac, far, Z)
        #: the main track's double-talk measure of this hop (0..1)
        self.last_dt = self._main.dt
        #: the double-talk statistic of this hop for the barge-in detector (the detection
        #: track's): residual power over the estimated residual echo, dB, 300-4000 Hz
        #: (high: the near end talks), with the echo estimate's tail decaying at
        #: ``tail_decay_db`` per hop
        self.last_ratio_db = det.ratio_db
        #: the hop's analysis window held far-end signal
        self.last_far = far
        self.frames += 1
        return out
