"""The far-end reference path: what the speaker played, delayed to meet its echo.

Three threads use it, each through its own methods:

- playback thread: :meth:`EchoPath.written` (a period handed to the device: resampled to
  the capture rate, drift-compensated, into the reference ring) and :meth:`EchoPath.dropped`
  (a barge-in dropped periods the device held: the ring takes them back);
- capture thread: :meth:`EchoPath.read` (the reference period for this microphone period,
  read ``delay`` samples behind the ring's head, :meth:`voxbox.audio.ring.SampleRing.read_delayed`)
  and :meth:`EchoPath.observe` (the pair queued for the echo worker);
- echo worker thread (:meth:`EchoPath.start`): the echo-delay tracker (GCC-PHAT over 2 s
  windows once a second, :class:`voxbox.dsp.align.EchoDelayTracker`), whose estimates the
  :class:`voxbox.dsp.align.ReferenceAligner` turns into moves of the delay line and
  retunes of the drift compensator.

Every change of the echo path it makes (a move, a resync of the ring, a cold start) is
reported through ``on_path_changed`` (any thread): the canceller reconverges, and the
near-end detector must not take its residual for a talker. The measured delay, drift and
ERL are persisted (:mod:`voxbox.dsp.echostate`, ``$STATE_DIRECTORY/echo.json``) at most
once a minute and at stop, and restored at start so the first reply after boot has them.
The audio threads read the two results (the line, an int; the drift, a float) without a lock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import soxr

from voxbox.audio.ring import FrameQueue, SampleRing

log = logging.getLogger(__name__)

__all__ = ["EchoPath", "MIN_REF_DELAY_PERIODS", "REF_MOVE_QUIET_PERIODS"]

MIN_REF_DELAY_PERIODS = 3
"""Shortest far-end reference delay line, in capture periods: the two audio threads wake
at different times, and a shorter backlog starves the reference."""

REF_MOVE_QUIET_PERIODS = 30
"""A move of the reference delay line that is not urgent (the reference still leads its
echo) waits until the reference has been silent this many capture periods (300 ms)."""

SAVE_EVERY_S = 60.0
"""The echo state is written at most this often (s), and at stop."""


#: the echo must lead its reference by more than this, ms, in two estimates in a row,
#: before the reference skips ahead of the line's floor (EchoPath._move_line). Any lead
#: counts: an echo ahead of its reference is not cancelled at all (the closed loop at
#: +10 dB re-measured an echo 10 ms ahead seven times and paused 10 replies while a 20 ms
#: threshold held the skip back). A single estimate may be wrong (a first window on a weak
#: echo gave -36.5 ms with the real echo 70 ms behind), hence two; a skip keeps the line's
#: backlog and a period for the writer's bursts.
SKIP_MIN_MS = 0.0


class EchoPath:
    """Args:
        cfg: the validated configuration (``audio``, ``frontend``).
        cap_period: capture period, samples.
        state_path: the echo state file (``echo.json``).
        metrics: :class:`voxbox.host.metrics.UnitMetrics` (echo delay, ERL).
        on_path_changed: called (from any thread) when the echo path the canceller sees
            changed: a line move, a resync, a cold start.
        on_measured: called once (echo worker thread) when the tracker's first estimate
            since start has set or confirmed the line.
        on_moved: called on the event loop after each move of the line by the tracker,
            with the line before and after (ms).
    """

    def __init__(self, cfg, cap_period: int, state_path: Path, metrics,
                 on_path_changed: Callable[[], None],
                 on_measured: Callable[[], None] | None = None,
                 on_moved: Callable[[float, float], None] | None = None) -> None:
        a = cfg.audio
        self.cfg = cfg
        self.cap_period = cap_period
        self.metrics = metrics
        self.on_path_changed = on_path_changed
        self.on_measured = on_measured
        self.on_moved = on_moved
        #: the tracker gave an estimate since start
        self.measured = False
        self.state_path = state_path
        self.devices = (f"capture={a.capture_device} playback={a.playback_device} "
                        f"rate={a.playback_rate} period_ms={a.period_ms} periods={a.periods}")
        self.state = None  # the EchoState restored or last saved
        #: the identified loudspeaker saturation ``(clip, knee)`` to save with the echo
        #: path (None: linear or not identified); set by :meth:`note_loudspeaker`
        self.loudspeaker: tuple[float, float] | None = None
        self._loudspeaker_changed = False
        self._saving = False
        self._saved_at = 0.0
        self.ring = SampleRing(a.capture_rate)  # 1 s
        self.floor = MIN_REF_DELAY_PERIODS * cap_period
        #: the sum of the line's moves since start as the canceller sees them (samples; a
        #: skip counts as a shorter line): written by the echo worker just before ``delay``,
        #: read by the capture thread, which retrains the canceller on each change
        #: (:meth:`voxbox.dsp.frontend.CaptureFrontEnd.realign`)
        self.line_shift = 0
        #: echo-path changes of unknown size since start (device gaps, resyncs of the ring):
        #: the capture thread then drops the canceller's history (nothing before it re-pairs)
        self.gaps = 0
        #: the delay line, samples (written by the echo worker and at start; read by the capture thread)
        self.delay = max(self.floor, a.capture_rate * cfg.frontend.reference_delay_ms // 1000)
        self._resyncs_seen = 0
        self._quiet = 0  # echo worker: periods since the reference last held signal
        self._gap = False  # a device gap was reported (audio thread -> echo worker)
        self._after_gap = False  # echo worker: the next estimate is the first after a gap
        self._pending_move: tuple[int, float, float] | None = None  # a line move waiting for a pause
        self._ahead = False  # echo worker: the last estimate wanted a skip ahead of the floor
        self.tracker = None
        self._queue: FrameQueue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.aligner = None
        #: the drift the compensator aims at, ppm (published by the echo worker)
        self.drift_target_ppm = 0.0
        self._drift_comp = None  # used by the playback thread only
        if cfg.frontend.echo_cancel and cfg.frontend.track_echo_delay:
            from voxbox.dsp.align import DriftCompensator, EchoDelayTracker, ReferenceAligner

            self.tracker = EchoDelayTracker(a.capture_rate)
            # 1 s of (reference, microphone) periods for the echo worker thread
            self._queue = FrameQueue(a.capture_rate // cap_period, cap_period)
            self.aligner = ReferenceAligner(a.capture_rate, lead_ms=cfg.frontend.reference_lead_ms)
            if cfg.frontend.drift_compensation:
                self._drift_comp = DriftCompensator(0.0)
        # float, not int16: soxr's int16 output carries +-1 of dither after the signal, and a
        # reference that is never exactly silent keeps the far end "active" for ever
        self._resampler = (None if a.playback_rate == a.capture_rate else
                           soxr.ResampleStream(a.playback_rate, a.capture_rate, 1, dtype="float32"))
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ start, stop
    def restore(self) -> None:
        """At start: read the echo state measured on these devices (if any) and take its drift."""
        if self.tracker is None:
            return
        from voxbox.dsp.echostate import load_echo_state

        self.state = load_echo_state(self.state_path, self.devices)
        if self.state is not None and self._drift_comp is not None:
            self.drift_target_ppm = self.state.drift_ppm
        if self.state is not None and self.state.loudspeaker_clip is not None:
            self.loudspeaker = (self.state.loudspeaker_clip, self.state.loudspeaker_knee)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the echo worker thread (when the delay is tracked); journal lines and
        saves go through ``loop``."""
        self._loop = loop
        if self._queue is not None:
            self._thread = threading.Thread(target=self._worker, name="echo-delay", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Stop the worker; save the echo state if the line moved since start."""
        self._stop.set()
        if self.tracker is not None and (self._loudspeaker_changed
                                         or (self.aligner is not None and self.aligner.moves)):
            await self._save(None, None, force=True)
        self._resampler = None  # free the native resampler stream now, not at interpreter exit

    def init_line(self, playback_delay: int, playback_rate: int) -> None:
        """Start the delay line: from the restored echo state, else from what ALSA reports:
        the playback ring's fill ``playback_delay`` (samples at ``playback_rate``: written,
        not yet played) plus one capture period (a frame is read a period after its first
        sample), plus ``frontend.reference_delay_ms`` for buffering ALSA cannot see (USB,
        Bluetooth, a rig's pipes). The echo-delay tracker then refines it."""
        a = self.cfg.audio
        st = self.state
        if st is not None:
            line = max(self.floor, round(st.reference_delay_ms * a.capture_rate / 1000))
            self.delay = line
            log.info("reference delay line %.1f ms, drift %+.1f ppm: restored from %s (measured on these "
                     "devices; echo return loss %s dB)", line * 1000 / a.capture_rate, st.drift_ppm,
                     self.state_path, "?" if st.erl_db is None else f"{st.erl_db:.1f}",
                     extra={"VOXBOX_EVENT": "echo_delay", "VOXBOX_REFERENCE_DELAY_MS":
                            round(line * 1000 / a.capture_rate, 2), "VOXBOX_RESTORED": 1})
            return
        play16 = playback_delay * a.capture_rate // playback_rate
        extra = a.capture_rate * self.cfg.frontend.reference_delay_ms // 1000
        line = max(self.floor, play16 + self.cap_period + extra)
        self.delay = line
        log.info("reference delay line %.1f ms = ALSA playback delay %.1f ms + capture period %.1f ms "
                 "+ reference_delay_ms %d", line * 1000 / a.capture_rate, play16 * 1000 / a.capture_rate,
                 self.cap_period * 1000 / a.capture_rate, self.cfg.frontend.reference_delay_ms,
                 extra={"VOXBOX_EVENT": "echo_delay", "VOXBOX_REFERENCE_DELAY_MS": round(line * 1000 / a.capture_rate, 2)})

    def turn_fields(self) -> dict:
        """Journal fields for a turn record: the latest estimate on the current line."""
        est = self.tracker.last if self.tracker is not None else None
        if est is None:  # one attribute, replaced whole by the echo worker
            return {}
        return {"VOXBOX_ECHO_DELAY_MS": round(est.delay_ms, 2), "VOXBOX_ERL_DB": round(est.erl_db, 1),
                "VOXBOX_DRIFT_PPM": round(self.drift_target_ppm, 1)}

    # ------------------------------------------------------------------ playback thread
    def written(self, frame: np.ndarray) -> None:
        """Playback thread: ``frame`` (int16, playback rate) went to the device."""
        if self._resampler is None:
            ref = frame
        else:
            y = self._resampler.resample_chunk(frame.astype(np.float32))
            np.rint(y, out=y)
            np.clip(y, -32768, 32767, out=y)
            ref = y.astype(np.int16)
        comp = self._drift_comp
        if comp is not None:
            if comp.ppm != self.drift_target_ppm:
                comp.set_ppm(self.drift_target_ppm)
            ref = comp.process(ref)
        self.ring.write(ref)

    def device_gap(self) -> None:
        """Playback or capture thread: the device lost time (a playback underrun played
        silence the reference does not hold; a capture overrun lost microphone samples),
        so the echo moved against the reference by an unknown amount, up to the length of
        the gap. The canceller and the near-end detector treat it as an echo-path change
        (``on_path_changed``), and the tracker measures afresh: its next estimate comes
        from a window after the gap and moves the line at once, without waiting for
        confirmation or for a pause of the far end."""
        if self.tracker is not None:
            self._gap = True
        self.gaps += 1
        self.on_path_changed()

    def lost(self) -> None:
        """Event loop: the canceller is not cancelling (false interruptions in a row):
        the tracker measures afresh, and its next estimate moves the line at once and is
        reported again through ``on_measured`` (which ends the detector's wait)."""
        if self.tracker is not None:
            self._gap = True
            self.measured = False

    def dropped(self, frames: int) -> None:
        """Playback thread: a barge-in dropped ``frames`` (playback rate) the device held,
        never played: the reference forgets them, so it keeps pairing with what the
        microphone hears."""
        a = self.cfg.audio
        self.ring.unwrite(frames * a.capture_rate // a.playback_rate)

    # ------------------------------------------------------------------ capture thread
    def read(self, out: np.ndarray) -> None:
        """Capture thread: the reference period for the microphone period just read, into
        ``out`` (int16, ``cap_period``). A resync of the ring is an echo-path change."""
        ring = self.ring
        backlog = ring.available
        ring.read_delayed(out, self.delay)
        if ring.resyncs != self._resyncs_seen:
            self._resyncs_seen = ring.resyncs
            self.gaps += 1
            self.on_path_changed()
            self._loop.call_soon_threadsafe(self._log_resync, backlog, self.delay, ring.resyncs)

    def observe(self, ref: np.ndarray, mic: np.ndarray) -> None:
        """Capture thread: queue the pair for the echo worker (never analysed on this thread)."""
        if self._queue is not None:
            self._queue.put(ref, mic)

    def _log_resync(self, backlog: int, line: int, count: int) -> None:
        """The reference delay line slipped: the echo path moved for the canceller."""
        rate = self.cfg.audio.capture_rate
        log.debug("reference delay line resynced (%d so far): backlog %.1f ms against the line's %.1f ms",
                  count, backlog * 1000 / rate, line * 1000 / rate,
                  extra={"VOXBOX_EVENT": "reference_resync", "VOXBOX_COUNT": count})

    # ------------------------------------------------------------------ echo worker
    def _worker(self) -> None:
        """Echo-delay worker thread: drains the periods the capture thread queued and runs
        the tracker (milliseconds of FFTs that must not delay the capture loop)."""
        pair = np.zeros((2, self.cap_period), dtype=np.int16)
        while not self._stop.wait(0.05):
            while self._queue.get_into(pair):
                self.track(pair[0], pair[1])

    def track(self, ref: np.ndarray, mic: np.ndarray) -> None:
        """Echo worker: feed the echo-delay tracker; move the reference delay line and
        retune the drift compensator when the aligner says so (see voxbox.dsp.align)."""
        tr = self.tracker
        if self._gap:  # a device gap: measure from here (the window before it is stale)
            self._gap = False
            self._after_gap = True
            self._pending_move = None
            tr.reset()
        # a move of the line is an echo-path change for the canceller: one that is not
        # urgent waits for a pause of the far end (between replies), where it costs nothing
        self._quiet = self._quiet + 1 if not ref.any() else 0
        pending = self._pending_move
        if pending is not None and self._quiet >= REF_MOVE_QUIET_PERIODS:
            self._pending_move = None
            self._move_line(*pending)
        est = tr.push(ref, mic)
        if est is None:
            return
        # until the first estimate the near-end detector pauses no reply at a cold start
        # (AudioPath.line_measured)
        if not self.measured:
            self.measured = True
            self._loop.call_soon_threadsafe(self._log_measured, est.delay_ms, est.erl_db, est.confidence,
                                            self.delay)
            if self.on_measured is not None:
                self.on_measured()
        urgent, self._after_gap = self._after_gap, False
        new = self.aligner.on_delay(est.delay_ms, self.delay, urgent=urgent)
        # a skip ahead of the floor needs two estimates in a row that want one (a first
        # window on a weak echo once gave -36.5 ms with the real echo 70 ms behind)
        ahead = new is not None and new < self.floor and est.delay_ms < -SKIP_MIN_MS
        skip, self._ahead = ahead and self._ahead, ahead
        if new is not None and new != self.delay:  # below the floor: see _move_line
            if est.delay_ms >= 0 and self._quiet < REF_MOVE_QUIET_PERIODS and not urgent:
                self._pending_move = (new, est.delay_ms, est.erl_db)  # the reference leads: wait
            else:
                self._pending_move = None
                self._move_line(new, est.delay_ms, est.erl_db, skip=skip)
            return
        if self._drift_comp is not None:
            ppm = self.aligner.on_drift(tr.drift_ppm, tr.drift_stderr_ppm, self.drift_target_ppm)
            if ppm is not None:
                self.drift_target_ppm = ppm
                tr.reset_drift()
                self._loop.call_soon_threadsafe(self._log_drift, ppm)

    def _move_line(self, new: int, delay_ms: float, erl_db: float, skip: bool = False) -> None:
        """Echo worker: set the reference delay line to ``new`` samples.

        A line below the floor (the echo leads the reference by more than the line can
        give back) means the microphone lost samples the reference still holds: a capture
        gap no device reported (an overrun a driver hid, or the test rig's dropped chunks,
        measured there as a 177-190 ms jump ahead after a stalled capture thread, with the
        canceller then unable to cancel anything). The ring then holds that much more
        backlog than the line: with ``skip`` (two estimates in a row wanted it), the reader
        skips ahead by what is missing, keeping the floor's backlog, so the pairing catches
        up with the microphone."""
        old = self.delay
        skipped = 0
        if new < self.floor:
            if skip:  # the echo ahead of the floor, twice in a row
                # the move to the floor advances the reader by old - floor at the next
                # read; a period more stays for a writer's bursts
                skipped = self.ring.skip(self.floor - new, keep=old + self.cap_period)
            new = self.floor
        if new == old and not skipped:
            return
        self.line_shift += new - skipped - old
        self.delay = new
        self.on_path_changed()
        self.tracker.reset()  # turn records show only estimates on the current line
        self._loop.call_soon_threadsafe(self._log_alignment, delay_ms, old, new, erl_db, skipped)

    # ------------------------------------------------------------------ event loop
    def _log_alignment(self, delay_ms: float, old: int, new: int, erl_db: float, skipped: int = 0) -> None:
        self.metrics.set_echo_delay_ms(delay_ms)
        self.metrics.set_erl_db(erl_db)
        rate = self.cfg.audio.capture_rate
        skip = (f"; the reference skipped {skipped * 1000 / rate:.1f} ms ahead (the microphone lost "
                f"that much: a capture gap no device reported)" if skipped else "")
        log.info("echo delay %.1f ms (reference lead wanted %.1f ms): reference delay %.1f -> %.1f ms%s; "
                 "echo return loss %.1f dB", delay_ms, self.cfg.frontend.reference_lead_ms,
                 old * 1000 / rate, new * 1000 / rate, skip, erl_db,
                 extra={"VOXBOX_EVENT": "echo_delay", "VOXBOX_ECHO_DELAY_MS": round(delay_ms, 2),
                        "VOXBOX_REFERENCE_DELAY_MS": round(new * 1000 / rate, 2),
                        "VOXBOX_REFERENCE_SKIPPED_MS": round(skipped * 1000 / rate, 2),
                        "VOXBOX_ERL_DB": round(erl_db, 1)})
        # the lead the canceller sees on the new line (a skip shortens the pairing like the line)
        self._loop.create_task(self._save(delay_ms - (new - skipped - old) * 1000 / rate, erl_db))
        if self.on_moved is not None:
            self.on_moved(old * 1000 / rate, (new - skipped) * 1000 / rate)

    def _log_measured(self, delay_ms: float, erl_db: float, confidence: float, line: int) -> None:
        rate = self.cfg.audio.capture_rate
        log.info("echo path measured: the echo lags the reference by %.1f ms on the %.1f ms line "
                 "(confidence %.0f, echo return loss %.1f dB)", delay_ms, line * 1000 / rate,
                 confidence, erl_db,
                 extra={"VOXBOX_EVENT": "echo_measured", "VOXBOX_ECHO_DELAY_MS": round(delay_ms, 2),
                        "VOXBOX_REFERENCE_DELAY_MS": round(line * 1000 / rate, 2),
                        "VOXBOX_ERL_DB": round(erl_db, 1)})

    def note_loudspeaker(self, clip: float, knee: float) -> None:
        """Event loop: the loudspeaker model settled on ``(clip, knee)`` (an infinite
        clip: linear); saved with the echo path (at most once a minute, and at stop)."""
        self.loudspeaker = None if math.isinf(clip) else (clip, knee)
        self._loudspeaker_changed = True
        if self.tracker is not None and self._loop is not None:
            self._loop.create_task(self._save(None, None))

    def _log_drift(self, ppm: float) -> None:
        log.info("clock drift between capture and playback: compensating %+.1f ppm", ppm,
                 extra={"VOXBOX_EVENT": "clock_drift", "VOXBOX_DRIFT_PPM": round(ppm, 1)})
        last = self.tracker.last if self.tracker is not None else None
        self._loop.create_task(self._save(getattr(last, "delay_ms", None), getattr(last, "erl_db", None)))

    async def _save(self, echo_ms: float | None, erl_db: float | None, force: bool = False) -> None:
        """Persist the echo path (reference delay, drift, ERL) for the next start: at most
        once a minute (and at stop), written off the event loop (an fsync on an SD card)."""
        now = time.monotonic()
        if self._saving or (not force and now - self._saved_at < SAVE_EVERY_S):
            return
        from voxbox.dsp.echostate import EchoState, save_echo_state

        rate = self.cfg.audio.capture_rate
        prev = self.state
        if echo_ms is None and prev is not None:
            echo_ms, erl_db = prev.echo_delay_ms, erl_db if erl_db is not None else prev.erl_db
        self._saving = True
        try:
            st = EchoState.from_measurement(self.delay * 1000 / rate, echo_ms, self.drift_target_ppm,
                                            erl_db, self.devices, loudspeaker=self.loudspeaker)
            await asyncio.to_thread(save_echo_state, self.state_path, st)
            self.state = st
            self._saved_at = now
        except (OSError, ValueError) as exc:
            log.error("cannot save the echo path in %s: %s", self.state_path, exc,
                      extra={"VOXBOX_EVENT": "state_file"})
        finally:
            self._saving = False
