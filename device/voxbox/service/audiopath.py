"""The audio path: what the capture and playback threads do with each period.

Capture thread (:meth:`AudioPath.on_capture_frame`, one 10 ms period of int16 samples at
the capture rate): the far-end reference for the period (:class:`voxbox.service.echopath.EchoPath`)
-> the front end (echo canceller, preprocessor, residual echo suppressor;
:mod:`voxbox.dsp.frontend`), whose frames also feed the near-end detector and the
interruption check (:mod:`voxbox.duplex`) -> the uplink gate (comfort noise while the unit
speaks) -> the recorder -> the wake word -> (while the uplink is open) resampled to 24 kHz
and handed to the event loop in ``UPLINK_BLOCK_MS`` blocks.

A move of the far-end reference delay line (:attr:`EchoPath.line_shift` changed) is met
at the next period: the front end re-pairs its recent input at the new line, a
short-lived thread (``echo-retrain``) trains a new echo canceller on it, and that
canceller takes over at the first period after it is done
(:meth:`voxbox.dsp.frontend.CaptureFrontEnd.realign`); a device gap drops that history.

Playback thread (:meth:`AudioPath.playback_source` / :meth:`AudioPath.playback_written`):
jitter buffer -> volume -> earcon mixed over it -> the device; what was written goes into
the reference (:meth:`EchoPath.written`), and reply starts, ends and underruns are reported.

Data flows one way. The threads never wait on the event loop or the network: what they
report goes through ``loop.call_soon_threadsafe`` to :class:`AudioCallbacks`; what the event
loop decides reaches them as plain attributes (``uplink_open``, ``speaking``, ``muted``,
``push_to_talk``, ``tentative``) and one-shot requests (:meth:`AudioPath.reset_wake`,
:meth:`AudioPath.start_check`, :meth:`AudioPath.open_gate`), each one int, bool or object
written whole (no lock). Nothing on this path allocates per sample: numpy on whole frames
into preallocated buffers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import soxr

from voxbox.audio.jitter import JitterBuffer
from voxbox.audio.playout import PullClock, PullResult
from voxbox.realtime.dialects import PCM_RATE

log = logging.getLogger(__name__)

__all__ = ["AudioPath", "AudioCallbacks", "UPLINK_BLOCK_MS", "RECONVERGE_FAR_MS", "COLD_FAR_MS", "VOICE_POWER",
           "RETRAIN_TAIL_S"]

UPLINK_BLOCK_MS = 40
"""Uplink audio is sent in blocks of this many ms (one ``input_audio_buffer.append`` each)."""

#: after an echo-path change the daemon made itself (a move of the reference delay line,
#: a resync of it) the near-end detector pauses no reply during this much far-end signal
#: (ms): the canceller is reconverging, and its residual looks like a talker to the
#: detector and, with an echo estimate not yet caught up, to the check. Measured in the
#: closed loop (t06, +6 dB): replies after a move began with 0-4 dB of echo cancellation for
#: about 400 ms, and were paused, and cut, on their own echo at 250-350 ms.
RECONVERGE_FAR_MS = 1000.0

#: at a cold start (no echo state saved on these devices) the near-end detector pauses no
#: reply until the echo-delay tracker has measured the line (and ``RECONVERGE_FAR_MS`` from
#: the start at the earliest), at most during this much far-end signal (ms; the start-up
#: cue is 1.5 s of it). A canceller that never heard the loudspeaker leaves most of the
#: echo for its first second or two of speech: in the closed loop (car, +6 dB, no start-up
#: cue) the first reply after a fresh start was paused on its own echo 1.1-2.6 s into it,
#: before the tracker's first estimate (2 s windows, half of them far-end) 3.2 s into it.
#: Kept short: the user may interrupt the first reply too (2.5 s into it in the e2e test).
COLD_FAR_MS = 2500.0

#: the echo canceller is retrained on the start-up cue this long after its last sample
#: went to the device (s): the device's buffer and the room's tail (:meth:`AudioPath.play_cue`)
RETRAIN_TAIL_S = 0.3

VOICE_POWER = (32768 * 10 ** (-40 / 20)) ** 2
"""Mean power of a capture period counted as voice during a hold (-40 dBFS RMS)."""


@dataclass
class AudioCallbacks:
    """What the audio threads report, called on the event loop.

    Attributes:
        on_wake: the wake word (score 0..1, monotonic time of the chunk that crossed, s).
        on_uplink_block: a block of uplink audio (PCM16 mono 24 kHz bytes, ``UPLINK_BLOCK_MS``).
        on_near_end: the near-end detector heard the user over the reply (time s, statistics).
        on_verdict: the interruption check's verdict (verdict, statistics, frames that
            spoke, frames judged).
        on_gate_change: the uplink gate's decision changed (change, statistics, time s).
        on_playback_started: a reply item's first period went to the device (item id,
            time s, jitter-buffer epoch).
        on_playback_drained: the reply played out (time s).
        on_underrun: the jitter buffer ran dry mid-reply (item id or None, time s, epoch).
        on_loudspeaker: the loudspeaker model settled on a new saturation (clip level,
            fraction of full scale, ``inf`` = linear; knee; its last round's scores:
            ``(best index, best dB, previous dB)`` of unexplained microphone power).
    """

    on_wake: Callable[[float, float], None]
    on_uplink_block: Callable[[bytes], None]
    on_near_end: Callable[[float, dict], None]
    on_verdict: Callable[[Any, dict, int, int], None]
    on_gate_change: Callable[[Any, dict, float], None]
    on_playback_started: Callable[[str, float, int], None]
    on_playback_drained: Callable[[float], None]
    on_underrun: Callable[[str | None, float, int], None]
    on_loudspeaker: Callable[[float, float, Any], None] = lambda clip, knee, last: None


class AudioPath:
    """Args:
        cfg: the validated configuration.
        jitter: the reply's jitter buffer (the event loop pushes, the playback thread pulls).
        volume: :class:`voxbox.audio.volume.Volume` (software gain applied per period).
        echo: the far-end reference path.
        callbacks: :class:`AudioCallbacks`.
        local_barge_in: the device decides barge-in (near-end detector and check).
    """

    def __init__(self, cfg, jitter: JitterBuffer, volume, echo, callbacks: AudioCallbacks,
                 local_barge_in: bool) -> None:
        a = cfg.audio
        self.cfg = cfg
        self.cap_period = a.capture_rate * a.period_ms // 1000
        self.play_period = a.playback_rate * a.period_ms // 1000
        self.jitter = jitter
        self.volume = volume
        self.echo = echo
        self.cb = callbacks
        self.local_barge_in = local_barge_in
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ls_changes = 0  # loudspeaker model changes reported
        # the parts (build())
        self.frontend = None
        self.near_end = None  # voxbox.duplex.nearend.NearEndDetector (local barge-in)
        self.gate = None  # voxbox.duplex.uplinkgate.UplinkGate
        self.check = None  # voxbox.duplex.interruption.InterruptionCheck (the second stage)
        self.recorder = None
        self.wake = None
        self._wake_aware = cfg.wake.enabled and cfg.wake.playback_aware
        # written by the event loop, read by the capture thread
        self.uplink_open = False
        self.speaking = False  # the conversation is in SPEAKING
        self.muted = False
        self.push_to_talk = False
        self.tentative = False  # a reply is paused on the detector's word, being checked
        self._wake_reset = False
        self._check_start = False
        self._gate_open: int | None = None  # open the gate with this much pre-roll (samples)
        #: far-end front-end frames left during which the detector pauses no reply (the
        #: canceller reconverges after an echo-path change; written by the echo worker and
        #: the capture thread, an int: no lock)
        self._reconverge_frames = 0
        self._cold = False  # a cold start waits for the echo-delay tracker (echo_path_changed)
        self._line_shift_seen = 0  # capture thread: EchoPath.line_shift at the last realign
        self._gaps_seen = 0  # capture thread: EchoPath.gaps when the history was last dropped
        #: capture thread: the canceller being retrained at a moved line (its own thread)
        self._retraining = None
        self._retrain_cue = False  # retrain once the cue playing has played out (event loop)
        self._retrain_at = 0.0  # capture thread retrains at this monotonic time (playback thread)
        self._uplink_t = -1e9  # capture thread: the last period with the uplink open (monotonic s)
        self._near_t = -1e9  # capture thread: the last period the near-end detector heard the user
        self._history_s = 2.0  # the front end's history for a retraining, s (build())
        # capture-thread state
        self._ref_frame = np.zeros(self.cap_period, dtype=np.int16)
        self._cap_f32 = np.zeros(self.cap_period, dtype=np.float32)  # voice-level scratch
        self._erle_f32 = np.zeros(self.cap_period, dtype=np.float32)  # ERLE scratch
        #: microphone and cleaned energy summed over far-end periods (read and reset by the
        #: metrics writer: a race costs one period of 10 ms in a sum)
        self.erle_mic = self.erle_out = 0.0
        self._fe_far = False  # the latest front-end frame's reference held far-end signal
        self._near = False  # the detector's latest decision
        self._near_held = False  # it rose while the canceller settled: reported once settled
        self._up_resampler: soxr.ResampleStream | None = None
        self._up_samples = 0
        self._up_block = PCM_RATE * UPLINK_BLOCK_MS // 1000
        #: the uplink block being filled (24 kHz int16); room for a block and 1 s more, so a
        #: period's resampled audio always fits (a block goes out once it holds 40 ms)
        self._up_buf = np.zeros(self._up_block + PCM_RATE, dtype=np.int16)
        self.capture_frames = 0
        self.last_capture_t = 0.0
        self.last_nonsilent_t = 0.0
        self.ptt_voiced_frames = 0  # capture periods above VOICE_POWER during a hold
        # playback-thread state
        self._pull_clock = PullClock(a.playback_rate, self.play_period)
        self._play_buf = np.zeros(self.play_period, dtype=np.int16)
        self._mix_i32 = np.zeros(self.play_period, dtype=np.int32)  # earcon mixing scratch
        self.last_pull = PullResult(None, 0, False, False, 0)
        self.playing_item: str | None = None
        self.cue: np.ndarray | None = None  # the earcon or prompt mixed over what plays
        self._cue_pos = 0

    # ------------------------------------------------------------------ set-up
    def build(self) -> None:
        """Build the front end, the barge-in stages, the recorder and the wake word from
        the configuration (may raise :class:`voxbox.errors.WakeModelError`)."""
        cfg = self.cfg
        from voxbox.dsp.frontend import build_frontend

        # the same builder as `voxbox dsp`; the wake-word tap does not change the uplink output
        self.frontend = build_frontend(cfg, wake_tap="aec" if cfg.wake.enabled and cfg.wake.playback_aware else None)
        from voxbox.dsp.frontend import REALIGN_HISTORY_MS

        self._history_s = REALIGN_HISTORY_MS / 1000
        if self.frontend is not None:
            # the early retraining runs on its own thread here, not inside process()
            self.frontend.early_retrain_inline = False
        if self.frontend is not None and self.local_barge_in:
            from voxbox.duplex.interruption import InterruptionCheck
            from voxbox.duplex.nearend import BargeInSettings, NearEndDetector, SileroVad

            # the first stage only pauses the reply (the check with the speaker quiet decides),
            # so it is more sensitive than the detector's stand-alone defaults: a short
            # "Stop." in double talk reaches Silero 0.5-0.7, rarely 0.8
            self.near_end = NearEndDetector(
                BargeInSettings(frame_size=self.frontend.frame_size, sample_rate=cfg.audio.capture_rate,
                                vad_min=0.5, onset_fill=0.75),
                vad=SileroVad(cfg.audio.capture_rate))
            self.frontend.observer = self._on_frontend_frame
            self.check = InterruptionCheck(1000 * self.frontend.frame_size / cfg.audio.capture_rate)
            if cfg.barge_in.uplink_gate:
                from voxbox.duplex.uplinkgate import UplinkGate

                self.gate = UplinkGate(self.cap_period, cfg.audio.capture_rate,
                                       preroll_ms=cfg.barge_in.preroll_ms, tail_ms=cfg.barge_in.tail_ms,
                                       max_preroll_ms=cfg.barge_in.preroll_ms + 1200)
        if cfg.frontend.record_s > 0:
            from voxbox.dsp.recorder import CaptureRecorder

            self.recorder = CaptureRecorder(cfg.frontend.record_s, cfg.audio.capture_rate)
        if cfg.wake.enabled:
            from voxbox.wake.detector import PlaybackAwareWake, WakeWordDetector

            if cfg.wake.playback_aware:
                # the near-end detector corroborates the playback threshold (when there is one)
                near_s = cfg.wake.playback_near_end_s if self.near_end is not None else 0.0
                self.wake = PlaybackAwareWake(cfg.wake.model, cfg.wake.threshold,
                                              threshold_playback=cfg.wake.threshold_playback,
                                              refractory_s=cfg.wake.refractory_s,
                                              near_end_window_s=near_s or None)
            else:
                self.wake = WakeWordDetector(cfg.wake.model, cfg.wake.threshold, cfg.wake.refractory_s)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reports go to ``loop`` from now on."""
        self._loop = loop

    def close(self) -> None:
        """Free the native resampler stream now rather than at interpreter exit."""
        self._up_resampler = None

    # ------------------------------------------------------------------ event loop's requests
    def _far_frames(self, ms: float) -> int:
        return int(ms * self.cfg.audio.capture_rate / 1000 / self.frontend.frame_size)

    def echo_path_changed(self, cold: bool = False) -> None:
        """The echo path the canceller sees changed (any thread): the near-end detector
        pauses no reply, and the wake word keeps its strict threshold, for the next
        ``RECONVERGE_FAR_MS`` of far-end signal. ``cold``: a start with the delay line
        not measured on these devices: until :meth:`line_measured`, up to
        ``COLD_FAR_MS`` (a warm change meanwhile does not shorten it)."""
        if self.frontend is not None:
            n = self._far_frames(COLD_FAR_MS if cold else RECONVERGE_FAR_MS)
            if self._cold and not cold:  # a resync or a move before the line was measured
                n = max(n, self._reconverge_frames)
            self._cold = self._cold or cold
            self._reconverge_frames = n

    def line_measured(self) -> None:
        """The echo-delay tracker measured the delay line (any thread): a cold start's
        wait ends, ``RECONVERGE_FAR_MS`` after the start at the earliest."""
        if self.frontend is not None and self._cold:
            self._cold = False
            used = self._far_frames(COLD_FAR_MS) - self._reconverge_frames
            self._reconverge_frames = max(0, min(self._reconverge_frames,
                                                 self._far_frames(RECONVERGE_FAR_MS) - used))

    def reset_wake(self) -> None:
        """The wake-word detector starts afresh at the next period."""
        self._wake_reset = True

    def start_check(self) -> None:
        """The reply is paused: the interruption check starts at the next front-end frame."""
        self._check_start = True

    def cancel_check(self) -> None:
        """The paused reply ended some other way (a tap, a drop): no verdict wanted."""
        self.tentative = False
        if self.check is not None:
            self.check.cancel()

    def open_gate(self, preroll: int) -> None:
        """A confirmed barge-in: the uplink gate opens with ``preroll`` samples of the
        user's audio from before now (capture rate)."""
        self._gate_open = preroll

    def play_cue(self, cue: np.ndarray, retrain: bool = False) -> None:
        """Mix ``cue`` (int16, playback rate) over what plays, from its start.

        ``retrain``: when it has played out (and ``RETRAIN_TAIL_S`` of its echo), the echo
        canceller is retrained on it, ``REALIGN_PASSES`` times over, as at a move of the
        line (:meth:`voxbox.dsp.frontend.CaptureFrontEnd.realign` with no shift): a cue
        heard once leaves the canceller short of what the same cue, heard again, gives.
        Measured offline on the room family's reporting half
        (``tests/benchmarks/test_realign_bench.py``; the canceller's output over the first
        reply's first second, median / worst decile over 12 rooms): the cue heard once
        21.6 / 19.1 dB, retrained after it 26.0 / 21.9 dB. A cue cut short by another
        trains nothing more, nor one the user spoke over (the uplink open within the
        history's 2 s)."""
        self._retrain_cue = retrain
        self._cue_pos = 0
        self.cue = cue

    def take_erle_sums(self) -> tuple[float, float]:
        """Microphone and cleaned energy over the far-end periods since the last call."""
        mic, out = self.erle_mic, self.erle_out
        if mic > 0 and out > 0:
            self.erle_mic = self.erle_out = 0.0
        return mic, out

    def restore_loudspeaker(self, saved: tuple[float, float] | None) -> None:
        """At start, before the capture thread runs: start the loudspeaker model from
        the saturation saved with the echo path (``(clip, knee)``; None: nothing saved)."""
        ls = self.frontend.loudspeaker if self.frontend is not None else None
        if ls is not None and saved is not None and ls.restore(*saved):
            log.info("loudspeaker model restored: clip at %.3f of full scale, knee %g", ls.clip, ls.knee,
                     extra={"VOXBOX_EVENT": "loudspeaker_model"})

    def _log_realign(self, shift: int, frames: int, early: bool = False) -> None:
        """Event loop: the capture thread started retraining the canceller."""
        rate = self.cfg.audio.capture_rate
        f = self.frontend.frame_size if self.frontend is not None else 0
        why = (f"at the new reference line (moved {shift * 1000 / rate:+.1f} ms)" if shift
               else "on its first far end, four times over (a young canceller)" if early
               else "after the start-up cue")
        log.info("echo canceller retrained on the last %.2f s of its input %s; it takes over within a few "
                 "periods", frames * f / rate, why,
                 extra={"VOXBOX_EVENT": "echo_realign", "VOXBOX_SHIFT_MS": round(shift * 1000 / rate, 2),
                        "VOXBOX_RETRAINED_S": round(frames * f / rate, 3)})

    def _log_realign_skipped(self) -> None:
        log.info("echo canceller not retrained after the start-up cue: the user spoke over it",
                 extra={"VOXBOX_EVENT": "echo_realign", "VOXBOX_SHIFT_MS": 0.0, "VOXBOX_RETRAINED_S": 0.0})

    # ------------------------------------------------------------------ capture thread
    def _retrain(self, shift: int, early: bool = False) -> None:
        """Capture thread: re-pair the front end's history at a line moved by ``shift``
        samples (0: as it is) and train a new canceller on it on its own thread; a
        retraining still running is stale from now on (adopt drops it). ``early``: the
        early retraining of a young canceller (``CaptureFrontEnd.prepare_early_retrain``)."""
        if early:
            job = self.frontend.prepare_early_retrain()
        else:
            job = self.frontend.prepare_realign(shift)
        if self.recorder is not None:
            self.recorder.note("early" if early else "realign", shift)
        self._retraining = job
        threading.Thread(target=job.run, name="echo-retrain", daemon=True).start()
        self._loop.call_soon_threadsafe(self._log_realign, shift, job.frames, early)

    def on_capture_frame(self, frame: np.ndarray, t: float) -> None:
        """Capture thread: one 10 ms period of 16 kHz int16 microphone samples."""
        self.capture_frames += 1
        self.last_capture_t = t
        if frame.any():
            self.last_nonsilent_t = t
        ref = self._ref_frame
        fe, echo = self.frontend, self.echo
        if self.uplink_open:
            self._uplink_t = t
        if fe is not None:
            shift = echo.line_shift - self._line_shift_seen
            if shift:  # the line moved: a canceller retrained on its recent input at the new line
                self._line_shift_seen += shift
                self._retrain(shift)
            elif self._retrain_at and t >= self._retrain_at:  # the start-up cue has played
                self._retrain_at = 0.0
                # not over the user: a fresh canceller trained on double talk (a question
                # asked over the cue) learns the voice as echo; the closed loop at +6 dB
                # missed the wake word in the first reply in 2 of the 10 boots where it did
                if t - self._uplink_t > self._history_s:
                    self._retrain(0)
                else:
                    self._loop.call_soon_threadsafe(self._log_realign_skipped)
            elif fe.retrain_due and self._retraining is None and t - self._near_t > self._history_s:
                # a young canceller, 2 s of far end behind it and no user in them (the front
                # end's own double-talk measure, and the near-end detector): learned 4 times
                self._retrain(0, early=True)
            if echo.gaps != self._gaps_seen:  # a device gap: what came before does not re-pair
                self._gaps_seen = echo.gaps
                fe.forget_history()
                if self.recorder is not None:
                    self.recorder.note("forget")
            job = self._retraining
            if job is not None and job.done:  # it takes over, after the frames since the move
                self._retraining = None
                fe.adopt(job)
                if self.recorder is not None:  # a recording replays it at this sample
                    self.recorder.note("adopt")
        echo.read(ref)
        clean = self.frontend.process(frame, ref) if self.frontend is not None else frame
        ls = self.frontend.loudspeaker if self.frontend is not None else None
        if ls is not None and ls.changes != self._ls_changes:
            # a new loudspeaker model is reported, but it holds nothing back: it is chosen
            # because it explains the microphone better with the filter as it is, and the
            # canceller does not lose its grip (measured offline, default front end, the
            # nine nonlinear tuning rooms: 21-65 dB ERLE per 100 ms over the 900 ms after
            # each of 13 changes, 18-59 dB before them; a line move leaves 0-4 dB for
            # ~400 ms). The RECONVERGE_FAR_MS hold it used to start delayed a user who
            # interrupted the first reply after a cold start by 1 s whenever the model
            # settled just then (e2e car loop: speaker quiet 1,100 ms instead of 260-280 ms)
            self._ls_changes = ls.changes
            self._loop.call_soon_threadsafe(self.cb.on_loudspeaker, ls.clip, ls.knee, ls.last_round)
        if self._fe_far and self.frontend is not None:  # ERLE over far-end periods (metrics)
            f = self._erle_f32
            np.copyto(f, frame)
            self.erle_mic += float(np.dot(f, f))
            np.copyto(f, clean)
            self.erle_out += float(np.dot(f, f))
        gate = self.gate
        if gate is not None:
            req = self._gate_open
            if req is not None:
                self._gate_open = None
                gate.open(req)
            # while a paused reply is checked the service hears nothing (the gate stays
            # closed); a confirmed barge-in opens it with the user's audio from the onset
            # during a reply only a confirmed barge-in opens it (open()); elsewhere (a cue
            # playing while the user has the floor) the detector's word passes the user
            tentative = self.tentative
            near = self._near and not tentative and not self.speaking
            up, change = gate.process(clean, self._fe_far or tentative, near or self.push_to_talk,
                                      self.near_end.noise_floor_dbfs)
            if change is not None:
                self._loop.call_soon_threadsafe(self.cb.on_gate_change, change, self.near_end_stats(), t)
        else:
            up = clean
        self.echo.observe(ref, frame)
        if self.recorder is not None:
            self.recorder.write(frame, ref, clean)
        if self.muted:
            return  # the frame was captured (watchdog) but goes nowhere
        wake = self.wake
        if wake is not None:
            if self._wake_reset:
                self._wake_reset = False
                wake.reset()
            if self._wake_aware:
                wake.strict = self._reconverge_frames > 0  # reconverging: no low playback threshold
                if self._near:
                    wake.near_end(t)
                fe = self.frontend
                # the canceller's output before the residual suppressor, which would also eat
                # the user's wake word in double talk (the path the wake bench measures)
                tap = fe.wake_tap if fe is not None and fe.wake_tap is not None else clean
                det = wake.process(tap, ref, t)
            else:
                det = wake.process(clean, t)
            if det is not None:
                self._loop.call_soon_threadsafe(self.cb.on_wake, det.score, det.t)
        if self.push_to_talk:
            # float32 dot product over the whole period, in a preallocated buffer
            f = self._cap_f32
            np.copyto(f, clean)
            if float(np.dot(f, f)) > VOICE_POWER * f.shape[0]:
                self.ptt_voiced_frames += 1
        if self.uplink_open:
            if self._up_resampler is None:
                self._up_resampler = soxr.ResampleStream(self.cfg.audio.capture_rate, PCM_RATE, 1,
                                                         dtype="int16")
            up = self._up_resampler.resample_chunk(up)
            n, m = self._up_samples, up.shape[0]
            if n + m > self._up_buf.shape[0]:  # more than 1 s in one period: not at any period size
                self._up_buf = np.concatenate([self._up_buf[:n], np.zeros(m, np.int16)])
            self._up_buf[n:n + m] = up
            self._up_samples = n = n + m
            if n >= self._up_block:
                block = self._up_buf[:n].tobytes()  # the one copy the event loop needs
                self._up_samples = 0
                self._loop.call_soon_threadsafe(self.cb.on_uplink_block, block)
        elif self._up_resampler is not None:
            self._up_resampler = None
            self._up_samples = 0

    def _on_frontend_frame(self, frame: np.ndarray, ratio_db: float, far: bool) -> None:
        """Capture thread, once per front-end frame (16 ms): the near-end detector."""
        self._fe_far = far
        d = self.near_end
        near = d.push(frame, ratio_db, far)
        settling = self._reconverge_frames > 0
        if settling and far:
            self._reconverge_frames -= 1
        # an onset while the canceller settles is held, not lost: the user who started
        # talking then (or residual echo that ran into the user's words) still pauses the
        # reply once it has settled, if the detector still hears near-end speech
        rose = near and not self._near
        if rose and settling:
            self._near_held = True
        elif not near:
            self._near_held = False
        if near and (rose or self._near_held) and self.speaking and not self.tentative and not settling:
            self._near_held = False
            self._loop.call_soon_threadsafe(self.cb.on_near_end, time.monotonic(), self.near_end_stats())
        self._near = near
        if near or self.tentative:
            self._near_t = self.last_capture_t
        check = self.check
        if self._check_start:
            self._check_start = False
            check.start()
        if check.active:
            verdict = check.push(d.vad_prob, d.level_dbfs, d.noise_floor_dbfs, far, ratio_db)
            if verdict is not None:
                self._loop.call_soon_threadsafe(self.cb.on_verdict, verdict, self.near_end_stats(),
                                                check.spoken, check.judged)

    def near_end_stats(self) -> dict[str, float]:
        """Capture thread: the near-end detector's latest statistics, for the journal."""
        d = self.near_end
        return {"vad": d.vad_prob, "ratio_db": d.ratio_db, "level_dbfs": d.level_dbfs,
                "floor_dbfs": d.noise_floor_dbfs}

    # ------------------------------------------------------------------ playback thread
    def playback_source(self) -> np.ndarray:
        """Playback thread: the next period to write (int16, playback rate)."""
        # the pull time: a card paces the loop (a write returns when a period fits), so
        # this is when the period enters the device, a constant depth before it plays;
        # the jitter buffer's accelerate and its added latency are measured from it
        # (paced: a late wake-up and the catch-up pulls after it are not the device's time)
        now = time.monotonic()
        self.last_pull = self.jitter.pull(self._play_buf, self._pull_clock.next(now), now)
        self.volume.apply(self._play_buf)
        cue = self.cue
        if cue is not None:  # mix the earcon over whatever plays (whole-frame numpy)
            buf = self._play_buf
            k = min(buf.shape[0], cue.shape[0] - self._cue_pos)
            mixed = self._mix_i32[:k]
            np.add(buf[:k], cue[self._cue_pos:self._cue_pos + k], out=mixed, dtype=np.int32)
            np.clip(mixed, -32768, 32767, out=mixed)
            buf[:k] = mixed
            self._cue_pos += k
            if self._cue_pos >= cue.shape[0]:
                self.cue = None
                if self._retrain_cue:  # the capture thread retrains once its echo has come in
                    self._retrain_cue = False
                    self._retrain_at = time.monotonic() + RETRAIN_TAIL_S
        return self._play_buf

    def playback_written(self, frame: np.ndarray, t: float) -> None:
        """Playback thread: ``frame`` went to the device at ``t`` (monotonic s)."""
        self.echo.written(frame)
        res = self.last_pull
        if res.item_id is not None and res.item_id != self.playing_item:
            self.playing_item = res.item_id
            self._loop.call_soon_threadsafe(self.cb.on_playback_started, res.item_id, t, res.epoch)
        if res.drained or res.underrun:
            if res.drained:
                self.playing_item = None
                self._loop.call_soon_threadsafe(self.cb.on_playback_drained, t)
            else:
                self._loop.call_soon_threadsafe(self.cb.on_underrun, self.playing_item, t, res.epoch)
