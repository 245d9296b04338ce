"""Capture front end: [high-pass] → Speex echo canceller (fed the reference through the
identified loudspeaker nonlinearity, :mod:`voxbox.dsp.loudspeaker`) → Speex
preprocessor → residual echo suppressor (voxbox's own, :mod:`voxbox.dsp.res`).

Core module: ``CaptureFrontEnd.process(mic, ref) -> cleaned`` is a pure function of the
sample stream (no clock, no I/O, no randomness), so the same input stream gives a
bit-identical output stream, whether it comes from the daemon or from an offline tool.

Re-framing: callers hand blocks of any size ``n`` (10 ms = 160 samples at 16 kHz on
the device) but Speex runs on ``frame_size`` samples (256 = 16 ms by default: it beats
160 by about 1.5 dB ERLE in the team's measured front-end notes, and is a power of two for the
FFT). Input is collected into preallocated frame buffers; each full frame goes through
the optional microphone high-pass (2nd-order Butterworth, ``highpass_hz``, filter state
carried across frames), the echo canceller and, in place, the preprocessor (linked to
the echo state, denoise on), then the residual echo suppressor (``residual_echo``; it
reads the canceller's output, the microphone and the reference of the same frame), and
lands in a preallocated output ring.

Latency (fixed, in samples; ``latency_samples``) = re-framing + preprocessor + RES:
- re-framing: the output ring is primed with ``frame_size - 1`` zeros, the smallest
  fixed delay that lets every call return exactly ``n`` samples for any block size;
- the Speex preprocessor's overlap-add analysis delays its output by exactly one frame
  (``frame_size``; measured, libspeexdsp 1.2.1). The echo canceller and the high-pass
  add none (beyond the high-pass's own phase response);
- the residual echo suppressor's overlap-add adds one more frame (``frame_size``) when on.
So output sample ``k`` is cleaned input sample ``k - (3 * frame_size - 1)`` (767 samples,
47.9 ms at the defaults; ``2 * frame_size - 1`` = 511 samples with ``residual_echo`` off). Because the delay does not depend on the block size, the
output stream is independent of how the input stream is cut into blocks: an offline
tool feeding whole files and the daemon feeding 10 ms blocks get identical samples.

Wake tap (optional second output, ``CaptureFrontEnd(settings, wake_tap="aec"|"pp")``):
``process`` also sets ``self.wake_tap`` to a new int16 array of the same ``n`` samples
holding the signal *before* the residual echo suppressor -- the echo canceller's output
(``"aec"``) or the preprocessor's output (``"pp"``) -- delayed to the same
``latency_samples`` as the main output, so both streams are sample-aligned. The RES
is tuned for the uplink (it removes everything that looks like echo, which in double
talk includes part of the user's wake word); the wake-word detector does better on the
tap. The tap never changes the main output (it only copies frames), and it is
block-size independent and deterministic like the main output. ``None`` (default):
no tap, ``wake_tap`` stays ``None``.

Frame observer (optional, ``front_end.observer = callable``): called once per Speex frame,
inside :meth:`CaptureFrontEnd.process`, with ``(frame, ratio_db, far)``: the cleaned frame
(int16 ``(frame_size,)``, a buffer reused on the next frame: copy what you keep; with
the residual echo suppressor's two tracks, its detection stream
:attr:`voxbox.dsp.res.ResidualEchoSuppressor.detect_out`, not the uplink), the
residual echo suppressor's double-talk statistic of that frame (residual power over the
estimated residual echo, dB, 300-4000 Hz; ``nan`` with ``residual_echo`` off) and whether
the frame's reference held far-end signal. The barge-in detector
(:mod:`voxbox.duplex.nearend`) reads it: the cleaned frame reaches it ``frame_size - 1``
samples before it leaves the output ring.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from voxbox.dsp.loudspeaker import LoudspeakerModel, LoudspeakerSettings
from voxbox.dsp.res import DETECTION, ResidualEchoSuppressor, ResSettings
from voxbox.dsp.retraining import (
    EARLY_RETRAIN_DT_MAX,
    EARLY_RETRAIN_DT_SHARE,
    EARLY_RETRAIN_FAR_SHARE,
    EARLY_RETRAIN_MAX_FAR_S,
    EARLY_RETRAIN_PASSES,
    REALIGN_HISTORY_MS,
    REALIGN_PASSES,
    Retraining,
)
from voxbox.dsp.speexdsp import EchoCanceller, NativeState, Preprocessor

if TYPE_CHECKING:
    from voxbox.config import Config

__all__ = ["FrontEndSettings", "CaptureFrontEnd", "frontend_settings", "build_frontend", "run_frontend",
           "REALIGN_HISTORY_MS", "REALIGN_PASSES", "EARLY_RETRAIN_PASSES", "EARLY_RETRAIN_FAR_SHARE",
           "EARLY_RETRAIN_DT_MAX", "EARLY_RETRAIN_DT_SHARE", "EARLY_RETRAIN_MAX_FAR_S", "Retraining"]

Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True)
class FrontEndSettings:
    """Capture front end tuning (defaults measured on simulated rooms at 16 kHz).

    Attributes:
        frame_size: Speex frame in samples (256 = 16 ms at 16 kHz; 256/320 beat 160 by
            about 1.5 dB ERLE and 256 is FFT friendly).
        filter_ms: echo tail covered by the adaptive filter, ms (100 ms is too short for
            a kiosk-sized room; 300 ms converges slower).
        noise_suppress_db: maximum noise attenuation, dB (<= 0).
        echo_suppress_db: maximum residual echo attenuation, dB (<= 0).
        echo_suppress_active_db: the same while the near end talks, dB (<= 0; -2 rather
            than Speex's -6 keeps the user's level in double talk, with voxbox's
            suppressor after it: chosen with ``ResSettings.floor_db`` on the room family's
            tuning half, figures in :class:`voxbox.dsp.res.ResSettings`).
        agc: automatic gain control on/off.
        sample_rate: Hz.
        residual_echo: run voxbox's residual echo suppressor after the preprocessor
            (+ about 6 dB ERLE in single talk and after an echo-path change; costs
            one frame of latency).
        res: its tuning (:class:`voxbox.dsp.res.ResSettings`): the main track, whose
            output is the uplink.
        res_detect: the tuning of its detection track, the stream the near-end
            (barge-in) detector listens to (default :data:`voxbox.dsp.res.DETECTION`:
            without the leakage floor and the double-talk hold, as validated in the
            closed loop; equal to ``res``: one track).
        highpass_hz: microphone high-pass corner in Hz before the echo canceller
            (2nd-order Butterworth), 0 = off (default: the canceller's DC notch and the
            preprocessor already handle rumble when the canceller is on; measured
            no ERLE change at 100 Hz).
        loudspeaker: the loudspeaker model's tuning
            (:class:`voxbox.dsp.loudspeaker.LoudspeakerSettings`; ``enabled=False``: the
            canceller gets the raw reference).
        early_retrain: retrain a young canceller once on its first 2 s of far end,
            ``EARLY_RETRAIN_PASSES`` times over (:meth:`CaptureFrontEnd.prepare_early_retrain`).
            The room family's double-talk file has its user 4 s into the first far end
            after a cold start; there, before it, the linear filter gave 12-16 dB, and
            its output with the user in it had a DT STOI 0.02-0.06 below the same user
            over a filter that kept learning. Chosen on the tuning half
            (``tests/benchmarks/test_frontend_family_bench.py``; objective of its search,
            median / worst decile): passes 2 / 3 / 4 / 5: +1.27 / +1.51 / +1.62 / +1.69,
            worst goal margin 0.40 / 0.78 / 0.80 / 0.60 (objective units); 4 taken. With
            it, ``ResSettings.overdrive_st`` 10 and ``floor_db`` -25 dB (see there). Tuning
            half, the defaults before -> now: ERLE 40.7 / 34.4 -> 44.1 / 37.3 dB, after an
            echo-path change 23.2 / 18.5 -> 26.7 / 20.9 dB, DT STOI 0.917 / 0.909 -> 0.936 /
            0.918, near-end attenuation -1.55 / -1.98 -> -1.3 / -1.6 dB. Reporting half
            (not tuned on): ERLE 41.0 / 38.4 -> 44.9 / 42.3 dB, after a change 26.7 / 22.7
            -> 30.2 / 24.7 dB, DT STOI 0.921 / 0.898 -> 0.928 / 0.901, near-end attenuation
            -1.35 / -1.96 -> -1.24 / -1.97 dB. CPU: one retraining, 4 x 125 Speex frames,
            once per start, off the capture thread in the daemon.

    Raises:
        ValueError: a non-positive size/rate/filter, a positive dB value, a non-bool
            switch, ``res`` not a ``ResSettings``, ``loudspeaker`` not a ``LoudspeakerSettings``, or ``highpass_hz`` outside
            ``[0, sample_rate / 2)``; the message names the field.
    """

    frame_size: int = 256
    filter_ms: int = 200
    noise_suppress_db: int = -25
    echo_suppress_db: int = -60
    echo_suppress_active_db: int = -2
    agc: bool = False
    sample_rate: int = 16000
    residual_echo: bool = True
    res: ResSettings = ResSettings()
    res_detect: ResSettings = DETECTION
    highpass_hz: int = 0
    loudspeaker: LoudspeakerSettings = LoudspeakerSettings()
    early_retrain: bool = True

    def __post_init__(self) -> None:
        for name in ("frame_size", "filter_ms", "sample_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"FrontEndSettings.{name} must be a positive int, got {v!r}")
        for name in ("noise_suppress_db", "echo_suppress_db", "echo_suppress_active_db"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v > 0:
                raise ValueError(f"FrontEndSettings.{name} must be an int <= 0 (dB), got {v!r}")
        for name in ("agc", "residual_echo", "early_retrain"):
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ValueError(f"FrontEndSettings.{name} must be a bool, got {v!r}")
        for name in ("res", "res_detect"):
            if not isinstance(getattr(self, name), ResSettings):
                raise ValueError(f"FrontEndSettings.{name} must be a ResSettings, got {getattr(self, name)!r}")
        if not isinstance(self.loudspeaker, LoudspeakerSettings):
            raise ValueError(f"FrontEndSettings.loudspeaker must be a LoudspeakerSettings, got {self.loudspeaker!r}")
        v = self.highpass_hz
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.sample_rate // 2:
            raise ValueError(
                f"FrontEndSettings.highpass_hz must be an int in [0, {self.sample_rate // 2}) Hz (0 = off), got {v!r}"
            )

    @property
    def filter_length(self) -> int:
        """Adaptive filter length in samples (``filter_ms`` at ``sample_rate``)."""
        return self.filter_ms * self.sample_rate // 1000


class CaptureFrontEnd(NativeState):
    """Echo-cancelled, denoised capture for one mono microphone.

    Args:
        settings: tuning; defaults to ``FrontEndSettings()``.

    Raises:
        ValueError: invalid settings.
        voxbox.dsp.speexdsp.SpeexDSPError: libspeexdsp missing (Debian ``libspeexdsp1``).

    Not thread-safe: call from one thread (the capture loop) at a time.
    """

    WAKE_TAPS = ("aec", "pp")

    def __init__(self, settings: FrontEndSettings | None = None, wake_tap: str | None = None) -> None:
        if wake_tap is not None and wake_tap not in self.WAKE_TAPS:
            raise ValueError(f"wake_tap must be None, 'aec' or 'pp', got {wake_tap!r}")
        self._ec: EchoCanceller | None = None
        self._pp: Preprocessor | None = None
        self.settings = settings if settings is not None else FrontEndSettings()
        f = self.settings.frame_size
        self.frame_size: int = f
        #: Re-framing delay in samples (output ring primed with this many zeros).
        self.reframe_latency_samples: int = f - 1
        #: Total fixed delay of the output relative to the input, in samples:
        #: re-framing (frame_size - 1) + preprocessor overlap-add (frame_size)
        #: + residual echo suppressor overlap-add (frame_size, when on).
        self.latency_samples: int = 2 * f - 1 + (f if self.settings.residual_echo else 0)
        # Frame assembly buffers (mic, ref) and Speex output frame.
        self._mic = np.zeros(f, dtype=np.int16)
        self._ref = np.zeros(f, dtype=np.int16)
        self._frame = np.zeros(f, dtype=np.int16)
        self._mic_addr = self._mic.ctypes.data
        self._ref_addr = self._ref.ctypes.data
        self._frame_addr = self._frame.ctypes.data
        # Output ring: holds at most (frame_size - 1) + frame_size samples; row 0 the
        # output, row 1 (with a wake tap) the tapped signal at the same positions.
        self._ring = np.zeros((2 if wake_tap is not None else 1, 2 * f), dtype=np.int16)
        self._push = np.zeros((self._ring.shape[0], f), dtype=np.int16)  # the frame(s) entering
        s = self.settings
        self._res = ResidualEchoSuppressor(f, s.sample_rate, s.res, s.res_detect) if s.residual_echo else None
        # the reference as the loudspeaker plays it (its identified nonlinearity), for the
        # canceller and the RES; None = the raw reference
        self.loudspeaker: LoudspeakerModel | None = None
        self._shaped = np.zeros(f, dtype=np.int16)
        self._shaped_addr = self._shaped.ctypes.data
        self._e = np.zeros(f)  # echo canceller output (float copy for the RES)
        self._det = np.zeros(f, dtype=np.int16)  # the RES's detection stream, for the observer
        if s.highpass_hz > 0:
            from scipy.signal import butter

            self._sos = butter(2, s.highpass_hz, btype="highpass", fs=s.sample_rate, output="sos")
        else:
            self._sos = None
        self._hp_in = np.zeros(f)
        # Wake tap: the tapped frame waits ``_tap_delay`` frames so that it leaves at the
        # main output's latency (natural latency: f - 1 for the AEC output, 2f - 1 for the
        # preprocessor's); then it goes through row 1 of the ring.
        self.wake_tap_mode: str | None = wake_tap
        #: The latest block's wake-tap samples (int16, same length and latency as the
        #: main output), or ``None`` without a tap.
        self.wake_tap: Int16Array | None = None
        #: per-frame observer ``(frame, ratio_db, far) -> None`` (see the module docstring)
        self.observer = None
        self.frame_mic_power = 0.0
        if wake_tap is not None:
            natural = f - 1 if wake_tap == "aec" else 2 * f - 1
            self._tap_delay = (self.latency_samples - natural) // f
            self._tap_hist = np.zeros((self._tap_delay + 1, f), dtype=np.int16)
        # the canceller's input (microphone after the high-pass, raw reference), one Speex
        # frame a row, for realign(): a ring of REALIGN_HISTORY_MS
        rows = -(-REALIGN_HISTORY_MS * self.settings.sample_rate // (1000 * f))
        self._hist_mic = np.zeros((rows, f), dtype=np.int16)
        self._hist_ref = np.zeros((rows, f), dtype=np.int16)
        self._rt_out = np.zeros(f, dtype=np.int16)  # adopt()'s scratch frames
        self._rt_mic = np.zeros(f, dtype=np.int16)
        self._rt_ref = np.zeros(f, dtype=np.int16)
        self._rt_f = np.zeros(f)
        self._rt_y = np.zeros(f)
        self._rt_mic_addr, self._rt_ref_addr = self._rt_mic.ctypes.data, self._rt_ref.ctypes.data
        self._rt_out_addr = self._rt_out.ctypes.data
        self._generation = 0  # bumped by each prepare_realign, forget_history, reset
        # per history row: the reference held far-end signal; for the early retraining
        self._hist_far = np.zeros(rows, dtype=bool)
        self._hist_dt = np.zeros(rows, dtype=bool)  # ... and the user, by the RES's measure
        self._far_need = int(np.ceil(EARLY_RETRAIN_FAR_SHARE * rows))
        self._dt_allow = int(EARLY_RETRAIN_DT_SHARE * rows)
        self._far_max = int(EARLY_RETRAIN_MAX_FAR_S * self.settings.sample_rate / f)
        #: run the early retraining inside :meth:`process`, at the frame it is due (offline
        #: tools, the benches); False: the caller runs it (:attr:`retrain_due`; the daemon,
        #: off its capture thread) or a recording's steps are replayed
        self.early_retrain_inline: bool = True
        self._open_states()
        self._clear_buffers()

    # -- native states ---------------------------------------------------------------
    def _open_states(self) -> None:
        s = self.settings
        ec = EchoCanceller(s.frame_size, s.filter_length, s.sample_rate)
        try:
            pp = Preprocessor(s.frame_size, s.sample_rate)
        except BaseException:
            ec.close()
            raise
        try:
            pp.denoise = True
            pp.noise_suppress = s.noise_suppress_db
            pp.echo_suppress = s.echo_suppress_db
            pp.echo_suppress_active = s.echo_suppress_active_db
            pp.agc = s.agc  # VAD stays at the library default (off)
            pp.link_echo(ec)
        except BaseException:
            pp.close()
            ec.close()
            raise
        self._ec, self._pp = ec, pp
        if s.loudspeaker.enabled:
            self._ir = np.zeros(ec.impulse_response_size, dtype=np.int32)
            if self.loudspeaker is None:
                self.loudspeaker = LoudspeakerModel(s.frame_size, self._ir.shape[0], s.sample_rate, s.loudspeaker)

    def _impulse_response(self) -> np.ndarray:
        ec = self._ec
        assert ec is not None
        return ec.impulse_response(self._ir)

    def _close_states(self) -> None:
        pp, ec = self._pp, self._ec
        self._pp = self._ec = None
        if pp is not None:
            pp.close()
        if ec is not None:
            ec.close()

    def _clear_buffers(self) -> None:
        if self._res is not None:
            self._res.reset()
        if self.loudspeaker is not None:
            self.loudspeaker.reset()
        self._zi = np.zeros((self._sos.shape[0], 2)) if self._sos is not None else None
        self._fill = 0  # samples collected in _mic/_ref
        self._ring[:] = 0
        if self.wake_tap_mode is not None:
            self._tap_hist[:] = 0
            self._tap_idx = 0
            self.wake_tap = None
        self._rd = 0  # ring read index
        self._count = self.reframe_latency_samples  # samples in the ring (primed zeros)
        self.frames_processed = 0  # Speex frames run
        self.samples_processed = 0  # samples accepted by process()
        self._hist_n = 0  # rows of the history held
        self._hist_i = 0  # the next row written
        self._hist_written = 0  # rows written since start (adopt's catch-up)
        self._generation = getattr(self, "_generation", 0) + 1
        self._forget_early_flags()
        self._far_total = 0  # frames with far end since the canceller started
        #: the canceller is young: it has heard no more than ``EARLY_RETRAIN_MAX_FAR_S`` of
        #: far end, and no early retraining has been prepared since it started
        self.young = self.settings.early_retrain

    # -- lifecycle -------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._ec is None

    def reset(self) -> None:
        """Forget all adaptation and buffered audio: afterwards the object behaves
        bit-identically to a freshly constructed one (native states are recreated).

        Raises:
            ValueError: the front end is closed.
        """
        if self.closed:
            raise ValueError("CaptureFrontEnd is closed")
        self._close_states()
        self._open_states()
        self._clear_buffers()

    def realign(self, shift: int) -> int:
        """The far-end reference moved against the microphone by ``shift`` samples (the
        daemon's reference delay line grew by ``shift``; negative: it shrank): from the
        next sample on, ``ref`` of :meth:`process` is the old stream delayed by ``shift``.

        An adaptive filter that learned the echo on the old alignment is wrong by
        ``shift`` on the new one, and Speex gives no way to shift it. So a new echo
        canceller is trained on the last ``REALIGN_HISTORY_MS`` of this one's input (the
        high-passed microphone, and the reference re-paired at the new alignment, shaped
        by the loudspeaker model's current saturation), ``REALIGN_PASSES`` times, and
        takes the old one's place; nothing else (preprocessor, residual echo
        suppressor, output ring) changes. The history then holds the re-paired frames.

        This is :meth:`prepare_realign`, :meth:`Retraining.run` and :meth:`adopt` in one
        call, on the caller's thread; the daemon runs the middle one off its capture
        thread. Measured offline on the room family's reporting half
        (``tests/benchmarks/test_realign_bench.py``: the start-up cue on a line 20-60 ms
        off either way, the line moved, then a reply; the canceller's output over the
        reply's first second, median over 12 rooms): the filter kept 0.7-5.2 dB;
        retrained (at the move and after the cue, as the daemon does) 24.9-26.0 dB; the
        cue heard once on the right line 21.6 dB.

        Returns the frames trained on (0: no history; the canceller starts afresh).

        Raises:
            ValueError: the front end is closed.
        """
        return self._retrain_here(self.prepare_realign(shift))

    @property
    def retrain_due(self) -> bool:
        """The canceller is :attr:`young` and its history is ready for an early retraining
        (:meth:`prepare_early_retrain`): it holds ``REALIGN_HISTORY_MS``, at least
        ``EARLY_RETRAIN_FAR_SHARE`` of it with far-end signal, and the residual echo suppressor saw
        double talk (its measure above ``EARLY_RETRAIN_DT_MAX``) in no more than
        ``EARLY_RETRAIN_DT_SHARE`` of them."""
        return (self.young and self._hist_n == self._hist_far.shape[0] and self._far_count >= self._far_need
                and self._dt_count <= self._dt_allow)

    def prepare_early_retrain(self) -> "Retraining":
        """Capture thread: the retraining of a young canceller on its history as it is
        (no shift), ``EARLY_RETRAIN_PASSES`` times; hand it to :meth:`adopt` like a
        realignment's. The canceller is no longer :attr:`young` (even if the job is
        dropped later); :meth:`reset` makes it young again.

        Why: a Speex canceller learns slowly from its first seconds of far end (measured
        in the room family's double-talk files, 2-4 s after a cold start: 12-16 dB from
        the linear filter), and adapts little while the user talks, so a user who talks
        over the first reply is heard through the echo of a half-learned filter. The same
        2 s learned four times over gives the filter of a much longer far end. Figures
        in :class:`FrontEndSettings`.

        Raises:
            ValueError: the front end is closed.
        """
        self.young = False
        return self.prepare_realign(0, passes=EARLY_RETRAIN_PASSES)

    def early_retrain(self) -> int:
        """:meth:`prepare_early_retrain`, :meth:`Retraining.run` and :meth:`adopt` in one
        call, on the caller's thread (what :meth:`process` does when
        :attr:`early_retrain_inline`). Returns the frames trained on.

        Raises:
            ValueError: the front end is closed.
        """
        return self._retrain_here(self.prepare_early_retrain())

    def prepare_realign(self, shift: int, passes: int = REALIGN_PASSES) -> "Retraining":
        """Capture thread, at the move: re-pair the history and the frame being assembled
        at the new alignment (see :meth:`realign`) and return the retraining to run
        (:meth:`Retraining.run`, any thread), then hand to :meth:`adopt`. A later
        ``prepare_realign``, :meth:`forget_history` or :meth:`reset` makes an earlier
        retraining stale (``adopt`` drops it).

        Raises:
            ValueError: the front end is closed.
        """
        if self._ec is None:
            raise ValueError("CaptureFrontEnd is closed")
        f = self.frame_size
        rows = self._hist_mic.shape[0]
        h = self._hist_n
        idx = (self._hist_i - h + np.arange(h)) % rows  # oldest first
        mic = self._hist_mic[idx].reshape(-1)
        ref = self._hist_ref[idx].reshape(-1)
        n, s = mic.shape[0], int(shift)
        # the frame being assembled re-pairs too (a frame of half old, half new pairing
        # costs about 10 dB of cancellation over the next 200 ms); what the new line
        # wants of a shorter line's reference there is still ahead: silence in its place
        fill = self._fill
        if fill:
            stream = np.concatenate([ref, self._ref[:fill]])
            j = n + np.arange(fill) - s
            ok = (j >= 0) & (j < n + fill)
            self._ref[:fill] = np.where(ok, stream[np.clip(j, 0, n + fill - 1)], 0)
        nf = (n - abs(s)) // f if abs(s) < n else 0
        # ref_new(t) = ref_old(t - s): whole frames ending at the newest pair
        m = mic[n - nf * f :] if s >= 0 else mic[n + s - nf * f : n + s]
        r = ref[n - s - nf * f : n - s] if s >= 0 else ref[n - nf * f :]
        m, r = np.ascontiguousarray(m), np.ascontiguousarray(r)
        self._hist_mic[:nf] = m.reshape(nf, f)
        self._hist_ref[:nf] = r.reshape(nf, f)
        self._hist_n = nf
        self._hist_i = nf % rows
        self._generation += 1
        self._forget_early_flags()  # the early retraining waits for a history of its own
        ls = self.loudspeaker
        shaped = r
        if nf and ls is not None:  # once per move: the whole history, on arrays of its own
            shaped = np.empty_like(r)
            ls.shape(r * (1.0 / 32768.0), shaped, np.empty(r.shape[0]))
        st = self.settings
        return Retraining(st.frame_size, st.filter_length, st.sample_rate, m, shaped, nf,
                          self._generation, self._hist_written, passes)

    def adopt(self, job: "Retraining") -> int:
        """Capture thread: the retrained canceller takes the old one's place, after it
        has run the frames that came since :meth:`prepare_realign` (kept in the history:
        at most ``REALIGN_HISTORY_MS``). Returns those frames, or -1 when ``job`` is
        stale or did not run (its canceller is closed; nothing changes).

        Raises:
            ValueError: the front end is closed.
        """
        ec_old, pp = self._ec, self._pp
        if ec_old is None or pp is None:
            raise ValueError("CaptureFrontEnd is closed")
        ec = job.canceller
        since = self._hist_written - job.written
        rows = self._hist_mic.shape[0]
        if ec is None or job.generation != self._generation or since > self._hist_n or since > rows:
            job.discard()
            return -1
        job.canceller = None
        ls = self.loudspeaker
        xf, rt_ref, rt_mic = self._rt_f, self._rt_ref, self._rt_mic
        for k in range(since, 0, -1):  # oldest first, in preallocated frames (capture thread)
            i = (self._hist_i - k) % rows
            if ls is not None:
                np.multiply(self._hist_ref[i], 1.0 / 32768.0, out=xf)
                ls.shape(xf, rt_ref, self._rt_y)
            else:
                rt_ref[:] = self._hist_ref[i]
            rt_mic[:] = self._hist_mic[i]
            ec._cancel_addr(self._rt_mic_addr, self._rt_ref_addr, self._rt_out_addr)
        pp.link_echo(ec)
        self._ec = ec
        ec_old.close()
        return since

    def _forget_early_flags(self) -> None:
        """The history's far-end and double-talk flags (and their counts) start afresh."""
        self._hist_far[:] = False
        self._far_count = 0  # rows of _hist_far set
        self._hist_dt[:] = False
        self._dt_count = 0  # rows of _hist_dt set

    def _retrain_here(self, job: Retraining) -> int:
        """Run a prepared retraining on the caller's thread and adopt it; returns its frames."""
        job.run()
        self.adopt(job)
        return job.frames

    def forget_history(self) -> None:
        """Drop the input kept for :meth:`realign`: the echo moved against the reference
        by an unknown amount (a device gap), so what came before cannot be re-paired. A
        retraining prepared before is stale."""
        self._hist_n = self._hist_i = 0
        self._generation += 1
        self._forget_early_flags()

    def close(self) -> None:
        """Free the native states (idempotent)."""
        self._close_states()

    # -- processing ------------------------------------------------------------------
    def process(self, mic: Int16Array, ref: Int16Array) -> Int16Array:
        """Clean one block of microphone audio.

        Args:
            mic: microphone block, int16, shape ``(n,)`` (any ``n >= 0``; 160 on the device).
            ref: far-end reference for the same instants, int16, shape ``(n,)``.

        Returns:
            A new int16 array of shape ``(n,)``: the cleaned stream delayed by
            ``latency_samples`` (zeros until the first cleaned sample arrives).

        Raises:
            ValueError: wrong type, dtype, dimensions, or ``mic``/``ref`` shapes differ
                (the message names the expected and the given shape); or closed.
        """
        ec, pp = self._ec, self._pp
        if ec is None or pp is None:
            raise ValueError("CaptureFrontEnd is closed")
        for name, a in (("mic", mic), ("ref", ref)):
            if not isinstance(a, np.ndarray):
                raise ValueError(f"{name}: expected numpy.ndarray of int16 with shape (n,), got {type(a).__name__}")
            if a.dtype != np.int16:
                raise ValueError(f"{name}: expected dtype int16, got {a.dtype}")
            if a.ndim != 1:
                raise ValueError(f"{name}: expected shape (n,), got {a.shape}")
        n = mic.shape[0]
        if ref.shape != (n,):
            raise ValueError(f"ref: expected shape ({n},) like mic, got {ref.shape}")

        f = self.frame_size
        ring, mbuf, rbuf, frame, push = self._ring, self._mic, self._ref, self._frame, self._push
        size = ring.shape[1]
        out = np.empty((ring.shape[0], n), dtype=np.int16)  # row 1: the wake tap
        tap_mode = self.wake_tap_mode
        if tap_mode is not None:
            tap_hist = self._tap_hist
        pos = 0
        while pos < n:
            k = min(f - self._fill, n - pos)
            fill = self._fill
            mbuf[fill : fill + k] = mic[pos : pos + k]
            rbuf[fill : fill + k] = ref[pos : pos + k]
            self._fill = fill = fill + k
            if fill == f:
                if self._sos is not None:
                    self._highpass(mbuf)
                hi = self._hist_i
                self._hist_mic[hi] = mbuf
                self._hist_ref[hi] = rbuf
                far = bool(rbuf.any())
                self._far_count += int(far) - int(self._hist_far[hi])
                self._hist_far[hi] = far
                if far and self.young:
                    self._far_total += 1
                    if self._far_total > self._far_max:  # it learned without one
                        self.young = False
                self._hist_i = (hi + 1) % self._hist_mic.shape[0]
                self._hist_n = min(self._hist_n + 1, self._hist_mic.shape[0])
                self._hist_written += 1
                ls = self.loudspeaker
                if ls is not None:
                    ls.process(rbuf, mbuf, self._shaped, self._impulse_response)
                    ref_used, ref_addr = self._shaped, self._shaped_addr
                else:
                    ref_used, ref_addr = rbuf, self._ref_addr
                ec._cancel_addr(self._mic_addr, ref_addr, self._frame_addr)
                res = self._res
                if res is not None:
                    self._e[:] = frame
                if tap_mode == "aec":
                    tap_hist[self._tap_idx] = frame
                pp._run_addr(self._frame_addr)
                if tap_mode == "pp":
                    tap_hist[self._tap_idx] = frame
                if res is not None:
                    y = res.process_frame(frame, self._e, mbuf, ref_used)
                    dt = res.last_dt > EARLY_RETRAIN_DT_MAX
                    self._dt_count += int(dt) - int(self._hist_dt[hi])
                    self._hist_dt[hi] = dt
                    np.rint(y, out=y)
                    np.clip(y, -32768, 32767, out=y)
                    frame[:] = y
                self._fill = 0
                self.frames_processed += 1
                if self.early_retrain_inline and self.young and self.retrain_due:
                    self.early_retrain()
                    ec = self._ec
                obs = self.observer
                if obs is not None:
                    #: the frame's microphone power (mean square, int16 units), for the observer
                    self.frame_mic_power = float(np.dot(mbuf, mbuf.astype(np.float64))) / f
                    if res is not None:
                        if res.dual:
                            d = res.detect_out  # the track's own buffer, rewritten next hop
                            np.rint(d, out=d)
                            np.clip(d, -32768, 32767, out=d)
                            det = self._det
                            det[:] = d
                            obs(det, res.last_ratio_db, res.last_far)
                        else:
                            obs(frame, res.last_ratio_db, res.last_far)
                    else:
                        obs(frame, float("nan"), bool(rbuf.any()))
                push[0] = frame
                if tap_mode is not None:
                    d = self._tap_delay
                    push[1] = tap_hist[(self._tap_idx - d) % (d + 1)]
                    self._tap_idx = (self._tap_idx + 1) % (d + 1)
                # push the frame(s) into the ring (at most two slices)
                wr = (self._rd + self._count) % size
                first = min(f, size - wr)
                ring[:, wr : wr + first] = push[:, :first]
                if first < f:
                    ring[:, : f - first] = push[:, first:]
                self._count += f
            # pop k samples; invariant before a chunk: count == (frame_size - 1) - fill,
            # so count >= k here and the ring never holds more than 2 * frame_size - 1
            rd = self._rd
            first = min(k, size - rd)
            out[:, pos : pos + first] = ring[:, rd : rd + first]
            if first < k:
                out[:, pos + first : pos + k] = ring[:, : k - first]
            self._rd = (rd + k) % size
            self._count -= k
            pos += k
        self.samples_processed += n
        if tap_mode is not None:
            self.wake_tap = out[1]
        return out[0]

    def _highpass(self, mbuf: Int16Array) -> None:
        """High-pass the assembled microphone frame in place (carried filter state)."""
        from scipy.signal import sosfilt

        x = self._hp_in
        x[:] = mbuf
        y, self._zi = sosfilt(self._sos, x, zi=self._zi)
        np.rint(y, out=y)
        np.clip(y, -32768, 32767, out=y)
        mbuf[:] = y

    def __repr__(self) -> str:
        return f"CaptureFrontEnd({self.settings!r}{', closed' if self.closed else ''})"


# ------------------------------------------------------------------ from the configuration
def frontend_settings(cfg: Config) -> FrontEndSettings:
    """The :class:`FrontEndSettings` for ``cfg``: every ``[frontend]`` key
    whose name is a settings field is passed through, plus ``audio.capture_rate`` and
    ``frontend.loudspeaker_model`` (the loudspeaker model on or off)."""
    names = {f.name for f in dataclasses.fields(FrontEndSettings)}
    kw = {k: v for k, v in cfg.frontend.model_dump().items() if k in names}
    kw["sample_rate"] = cfg.audio.capture_rate
    kw["loudspeaker"] = LoudspeakerSettings(enabled=cfg.frontend.loudspeaker_model)
    return FrontEndSettings(**kw)


def build_frontend(cfg: Config, wake_tap: str | None = None) -> CaptureFrontEnd | None:
    """The capture front end exactly as the daemon runs it, or None when
    ``frontend.echo_cancel`` is false. ``wake_tap`` (the daemon: ``"aec"``) adds the
    wake-word tap output; it does not change the main output."""
    if not cfg.frontend.echo_cancel:
        return None
    return CaptureFrontEnd(frontend_settings(cfg), wake_tap=wake_tap)


def run_frontend(frontend, mic: np.ndarray, ref: np.ndarray, block: int, events=None) -> np.ndarray:
    """Stream ``mic``/``ref`` (int16, same shape ``(n,)``) through ``frontend`` in
    ``block``-sample blocks, as the capture thread does; return the output, shape ``(n,)``
    (delayed by ``frontend.latency_samples``, like the daemon's). ``frontend`` None = passthrough.

    ``events``: None (default): the front end takes its own steps (its early retraining
    inline, at the frame it is due). Otherwise the steps of a recording
    (:class:`voxbox.dsp.recorder.Recording`, ``(sample, kind, value)``, oldest first), and
    only those, each taken before the block that starts at or after its sample:
    ``realign`` (prepare a retraining at a shift of ``value`` samples), ``early`` (prepare
    the early retraining), ``adopt`` (run the latest prepared one and hand it over),
    ``forget``.

    Raises:
        ValueError: an unknown event kind (named).
    """
    if frontend is None:
        return mic.copy()
    out = np.empty_like(mic)
    if events is not None:
        frontend.early_retrain_inline = False
    todo = sorted(((int(t), i, k, int(v)) for i, (t, k, v) in enumerate(events or ())))
    for t, _, k, _v in todo:
        if k not in ("realign", "early", "adopt", "forget"):
            raise ValueError(f"front-end event {k!r} at sample {t}: expected realign, early, adopt or forget")
    e, job = 0, None
    for i in range(0, mic.shape[0], block):
        while e < len(todo) and todo[e][0] <= i:
            _, _, kind, value = todo[e]
            e += 1
            if kind == "realign":
                job = frontend.prepare_realign(value)
            elif kind == "early":
                job = frontend.prepare_early_retrain()
            elif kind == "forget":
                frontend.forget_history()
            elif job is not None:
                job.run()
                frontend.adopt(job)
                job = None
        out[i : i + block] = frontend.process(mic[i : i + block], ref[i : i + block])
    return out
