"""The controller: what the unit does about each event.

Session events (:class:`voxbox.realtime.client.RealtimeLink`), the audio threads' reports
(:class:`voxbox.service.audiopath.AudioPath`), the button's gestures and the timers go into
the conversation state machine (:class:`voxbox.conversation.machine.Conversation`), and its
actions come out as effects: a reply paused, resumed or truncated at the samples played
(``conversation.item.truncate``), a cue played, a question sent again into a new session,
the mute saved, the LED and ``STATUS=`` refreshed, a tool run, a turn record in the journal.

All of it runs on the event loop. :class:`voxbox.service.daemon.Daemon` builds the parts,
wires these methods to them as callbacks and runs the loop; this class holds no thread,
socket or device of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxbox import __version__
from voxbox.audio.playout import LatencyHistogram
from voxbox.conversation.machine import (
    UPLINK_STATES,
    Action,
    ClearInput,
    Earcon,
    EndPushToTalk,
    Interrupt,
    PauseReply,
    Prompt,
    ResendTurn,
    ResetWake,
    ResumeReply,
    SetMuted,
    StartPushToTalk,
    State,
)
from voxbox.gpio.gestures import Gesture
from voxbox.gpio.led import display_pattern
from voxbox.realtime.dialects import PCM_RATE
from voxbox.realtime.session import (
    AudioDelta,
    AudioDone,
    FunctionCallRequested,
    InputCommitted,
    RealtimeSession,
    ResponseDone,
    ResponseStarted,
    ServerError,
    SpeechStarted,
    SpeechStopped,
    TranscriptDone,
    UserTranscript,
)
from voxbox.service.audiopath import UPLINK_BLOCK_MS
from voxbox.service.mutestate import save_muted

log = logging.getLogger("voxbox.service.daemon")  # one story in the journal (LOGGER=)


def _fmt_stats(stats: dict[str, float]) -> str:
    """The near-end detector's statistics as one journal field: ``key=value ...``."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items())


TURN_AUDIO_MAX_S = 30.0
"""Longest question kept on the unit for a resend after a link loss (s)."""

UNDERRUN_LOG_MAX = 5
"""Underrun events logged per turn (all are counted in the turn record)."""

LONG_HOLD_TALK_S = 0.5
"""A long hold is a mute toggle unless the user spoke this long during the hold (s)."""

def _turn_detection_off(session: RealtimeSession) -> None:
    """Queued before a resent question's audio: the service's VAD must not commit it."""
    session.set_turn_detection(False)


#: two false interruptions (pauses the check rejected) this close, s, mean the echo path
#: is lost. Measured on the closed-loop rig: after the microphone lost 150 ms unreported,
#: the reply was paused every 1.4 s on its own echo, and the tracker, which needs half of
#: a 2 s window of far end, never measured again.
ECHO_LOST_S = 10.0


@dataclass
class TurnTimes:
    """Monotonic timestamps of one turn, for the journald ``turn`` record and the demo."""

    turn: int = 0
    wake: float | None = None
    wake_score: float | None = None
    first_audio_sent: float | None = None
    speech_started: float | None = None
    speech_stopped: float | None = None
    response_created: float | None = None
    first_reply_received: float | None = None
    first_reply_played: float | None = None
    playback_end: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def latencies_ms(self) -> dict[str, int]:
        def ms(a, b):
            return None if a is None or b is None else int(round((b - a) * 1000))

        out = {
            "VOXBOX_LATENCY_MS": ms(self.speech_stopped, self.first_reply_played),
            "VOXBOX_SERVICE_LATENCY_MS": ms(self.speech_stopped, self.first_reply_received),
            "VOXBOX_DEVICE_PLAYOUT_MS": ms(self.first_reply_received, self.first_reply_played),
            "VOXBOX_WAKE_TO_UPLINK_MS": ms(self.wake, self.first_audio_sent),
        }
        return {k: v for k, v in out.items() if v is not None}


class Controller:
    """The daemon's reactions (see the module docstring). :class:`voxbox.service.daemon.Daemon`
    derives from it and sets the parts it uses: ``cfg``, ``conv``, ``audio``, ``rt``,
    ``jitter``, ``playback``, ``echo``, ``turn_audio``, ``health``, ``metrics``, ``notifier``,
    ``volume``, ``led``, ``gestures``, ``link``, ``tools``, ``tool_runner``, ``history``."""

    # ------------------------------------------------------------------------ event loop
    def _queue_uplink(self, block: bytes) -> None:
        if not self.audio.uplink_open:
            return  # turn closed while the block was in flight: drop it
        self.turn_audio.feed(block)  # kept for a resend if the link goes now
        if not self._session_ready:
            return  # link down mid-turn: the block waits in turn_audio for the next session
        if self.conv.push_to_talk:
            self._ptt_samples += len(block) // 2
        if not self.rt.send_audio(block):
            log.warning("uplink queue full; dropping %d ms of audio", UPLINK_BLOCK_MS)

    def _on_near_end(self, t: float, stats: dict[str, float]) -> None:
        """The near-end detector heard the user over the reply: pause it, check the user
        with the speaker quiet (voxbox.duplex.interruption)."""
        if self.audio.tentative:
            # a second report queued before the first was handled: the check it started is
            # running; clearing the flag below would drop that check's verdict and leave the
            # reply paused for good
            return
        self.audio.tentative = True  # first: the capture thread must never see the state change alone
        acts = self.conv.near_end_speech(time.monotonic())
        if not acts:
            self.audio.tentative = False
            return
        log.info("near-end speech over the reply: paused to check (%s)", _fmt_stats(stats),
                 extra={"VOXBOX_EVENT": "near_end", "VOXBOX_T": round(t, 4),
                        "VOXBOX_DEBUG": _fmt_stats(stats)})
        self._onset_t = t
        self._apply(acts)
        self.audio.start_check()

    def _on_verdict(self, verdict, stats: dict[str, float], spoken: int, judged: int) -> None:
        """The interruption check's verdict on a paused reply."""
        from voxbox.duplex.interruption import Verdict

        if not self.audio.tentative:
            return  # the pause ended some other way meanwhile
        now = time.monotonic()
        log.info("interruption check: %s (%d of %d frames spoke with the speaker quiet; %s)", verdict,
                 spoken, judged, _fmt_stats(stats),
                 extra={"VOXBOX_EVENT": "barge_in_check", "VOXBOX_VERDICT": str(verdict),
                        "VOXBOX_DEBUG": _fmt_stats(stats)})
        self.audio.tentative = False
        if verdict is Verdict.CONFIRMED:
            # the service hears the user from before the onset the detector saw
            rate = self.cfg.audio.capture_rate
            back_ms = (now - self._onset_t) * 1000 + self.cfg.barge_in.preroll_ms
            self.audio.open_gate(int(back_ms * rate / 1000))
            self._apply(self.conv.near_end_confirmed(now))
        else:
            self.metrics.on_barge_in_rejected()
            last, self._last_rejected = self._last_rejected, now
            if last is not None and now - last <= ECHO_LOST_S:
                # two false interruptions this close: the canceller is not cancelling (an
                # echo-path jump nobody reported). Each pause silences the reference, so the
                # tracker would never see the 2 s of far end it measures on: the detector
                # waits, as at a cold start, until the echo path is measured afresh.
                log.warning("echo path lost: a second false interruption %.1f s after the last; "
                            "measuring it afresh", now - last, extra={"VOXBOX_EVENT": "echo_lost"})
                self._last_rejected = None
                self.echo.lost()
                self.audio.echo_path_changed(cold=True)
            self._apply(self.conv.near_end_rejected(now))

    def _log_gate(self, change, stats: dict[str, float], t: float) -> None:
        """A change of the uplink gate's decision, with the detector's statistics."""
        log.info("uplink gate %s -> %s%s", change.previous, change.state,
                 f" with {change.preroll_samples * 1000 // self.cfg.audio.capture_rate} ms pre-roll"
                 if change.preroll_samples else "",
                 extra={"VOXBOX_EVENT": "uplink_gate", "VOXBOX_GATE": str(change.state),
                        "VOXBOX_T": round(t, 4), "VOXBOX_DEBUG": _fmt_stats(stats)})

    def _on_wake(self, score: float, t: float) -> None:
        self.metrics.on_wake_word()
        log.info("wake word %s score %.3f", self.cfg.wake.model, score,
                 extra={"VOXBOX_EVENT": "wake", "VOXBOX_WAKE_SCORE": round(score, 4),
                        "VOXBOX_T": round(t, 4)})
        turn = self.conv.turn
        self._apply(self.conv.wake(time.monotonic()))
        if self.conv.turn != turn:
            self.turn.wake, self.turn.wake_score = t, score

    def _button_edge(self, pressed: bool) -> None:
        now = time.monotonic()
        log.debug("button %s", "pressed" if pressed else "released",
                  extra={"VOXBOX_EVENT": "button"})
        self._gestures(self.gestures.edge(pressed, now), now)

    def _gestures(self, gestures: list[Gesture], now: float) -> None:
        for g in gestures:
            log.info("button %s", g.value, extra={"VOXBOX_EVENT": "gesture", "VOXBOX_GESTURE": g.value})
            turn = self.conv.turn
            if g is Gesture.TAP:
                if self.led is not None:
                    self.led.acknowledge()
                self._apply(self.conv.tap(now))
            elif g is Gesture.HOLD_START:
                self._apply(self.conv.ptt_start(now))
            elif g is Gesture.HOLD_END:
                self._apply(self.conv.ptt_end(now))
            elif g is Gesture.LONG_HOLD:
                voiced_s = self.audio.ptt_voiced_frames * self.cfg.audio.period_ms / 1000
                if self.conv.push_to_talk and voiced_s >= LONG_HOLD_TALK_S:
                    # a long push-to-talk question, not a mute request
                    log.info("long hold while talking (%.1f s of voice): push-to-talk continues", voiced_s,
                             extra={"VOXBOX_EVENT": "gesture", "VOXBOX_GESTURE": "long_hold_ignored"})
                else:
                    self._apply(self.conv.toggle_mute(now))
            if self.conv.turn != turn:
                self.turn.wake = now

    def _on_playback_started(self, item_id: str, t: float, epoch: int) -> None:
        if epoch != self.jitter.epoch:
            return  # the last period pulled before a barge-in flush: not a new reply
        if self.turn.first_reply_played is None:
            self.turn.first_reply_played = t
        log.info("playing reply item %s", item_id,
                 extra={"VOXBOX_EVENT": "playback_start", "VOXBOX_ITEM_ID": item_id,
                        "VOXBOX_T": round(t, 4)})
        self._apply(self.conv.playback_started(time.monotonic()))

    def _on_underrun(self, item_id: str | None, t: float, epoch: int) -> None:
        """The jitter buffer ran dry while the reply's audio was still expected (a gap the
        user hears). Logged for the first ``UNDERRUN_LOG_MAX`` of a turn; the turn record
        counts all of them (``VOXBOX_JITTER_UNDERRUNS``)."""
        if epoch != self.jitter.epoch:
            return
        self.metrics.on_underrun()
        n = self.jitter.underruns - self._underruns_at_turn
        if n > UNDERRUN_LOG_MAX:
            return
        rate = self.cfg.audio.playback_rate
        at_ms = round(self.jitter.played.get(item_id, 0) * 1000 / rate) if item_id else 0
        log.info("reply audio ran dry %d ms into item %s (target %d ms)%s", at_ms, item_id,
                 self.jitter.target_ms, "; further underruns this turn not logged"
                 if n == UNDERRUN_LOG_MAX else "",
                 extra={"VOXBOX_EVENT": "underrun", "VOXBOX_ITEM_ID": item_id or "",
                        "VOXBOX_AT_MS": at_ms, "VOXBOX_JITTER_TARGET_MS": round(self.jitter.target_ms),
                        "VOXBOX_T": round(t, 4)})

    def _on_playback_drained(self, t: float) -> None:
        if self.conv.state is not State.SPEAKING:
            return
        self.turn.playback_end = t
        log.info("reply played out", extra={"VOXBOX_EVENT": "playback_end", "VOXBOX_T": round(t, 4)})
        if self.session is not None:
            self.session.close_played_items()
        self.jitter.forget_done()  # the per-item accounting of a played reply is not needed
        self._apply(self.conv.playback_drained(time.monotonic()))

    def _apply(self, actions: list[Action]) -> None:
        if self.conv.turn != self.turn.turn:
            if self.conv.turn > self.turn.turn and self.conv.state is State.LISTENING:
                self.turn_audio.begin()
            self.turn = TurnTimes(self.conv.turn)
            self._idle_audio_logged = self._overflow_logged = False
            self._underruns_at_turn = self.jitter.underruns
            self._added_at_turn = self.jitter.added_latency()
        state = self.conv.state
        if state is not self._turn_audio_state:
            self._turn_audio_state = state
            if state in (State.THINKING, State.SPEAKING):
                self.turn_audio.freeze()  # the question is complete
            elif state is not State.LISTENING and not self.conv.holding:
                self.turn_audio.clear()  # the turn is over: nothing of it is kept
        for a in actions:
            if isinstance(a, Interrupt):
                self._interrupt(a)
            elif isinstance(a, ResetWake):
                self.audio.reset_wake()
            elif isinstance(a, ClearInput) and self.session is not None:
                self.session.clear_input()
            elif isinstance(a, PauseReply):
                self._pause_reply()
            elif isinstance(a, ResumeReply):
                self.turn_audio.restore()  # the reply's question again, not the cough
                self.jitter.resume()
                log.info("false interruption: reply resumed", extra={"VOXBOX_EVENT": "barge_in_resumed"})
            elif isinstance(a, StartPushToTalk):
                self._ptt_samples = 0
                self.audio.ptt_voiced_frames = 0
                if self.session is not None:
                    self.session.set_turn_detection(False)
                    self.session.clear_input()
            elif isinstance(a, EndPushToTalk):
                self._end_push_to_talk()
            elif isinstance(a, SetMuted):
                self._save_muted(a.muted)
            elif isinstance(a, Earcon):
                self._play_earcon(a.name)
            elif isinstance(a, Prompt):
                self._play_prompt(a.name)
            elif isinstance(a, ResendTurn):
                self._resend_turn(a)
        if self.audio.tentative and not self.conv.interruption_pending:
            self.audio.cancel_check()  # the paused reply ended some other way (a tap, a drop)
        self._show_state()
        self._flush_session()

    def _resend_turn(self, a: ResendTurn) -> None:
        """The new session gets the held turn: the user's audio from the turn's beginning
        (with turn detection off while a complete question is committed, so the service's
        VAD cannot commit it a second time), then, for a complete question, the commit and
        one ``response.create`` (the push-to-talk path of :meth:`_uplink_sender`)."""
        session = self.session
        if session is None:
            return
        chunks = self.turn_audio.chunks()
        samples = self.turn_audio.samples
        if a.commit and samples < PCM_RATE // 10:
            log.warning("held turn has %d ms of audio: nothing to ask again", samples * 1000 // PCM_RATE,
                        extra={"VOXBOX_EVENT": "turn_resent", "VOXBOX_TURN": self.conv.turn})
            self._apply(self.conv.response_done(time.monotonic(), "empty"))
            return
        self.rt.drain_uplink()
        if a.commit or a.push_to_talk:  # through the queue: it must reach the service first
            self.rt.send_action(_turn_detection_off)
        for c in chunks:
            self.rt.send_audio(c)
        if a.commit or a.push_to_talk:
            self._ptt_samples = samples
        if a.commit:
            self.rt.send_action(self._commit_ptt)
        log.info("turn %d sent again into the new session: %d ms of the user's audio from its beginning%s",
                 self.conv.turn, samples * 1000 // PCM_RATE, ", committed, response asked for" if a.commit else "",
                 extra={"VOXBOX_EVENT": "turn_resent", "VOXBOX_TURN": self.conv.turn,
                        "VOXBOX_RESENT_MS": samples * 1000 // PCM_RATE, "VOXBOX_COMMIT": int(a.commit),
                        "VOXBOX_OVERFLOWED": int(self.turn_audio.overflowed)})

    def _pause_reply(self) -> None:
        """Tentative barge-in: silence the speaker now, keep the reply (see Conversation)."""
        unplayed = self.playback.delay_samples() if self.playback is not None else 0
        self.jitter.pause(unplayed)
        if self.playback is not None:
            self.playback.drop()
        log.info("reply paused: tentative barge-in", extra={"VOXBOX_EVENT": "barge_in_paused"})

    def _end_push_to_talk(self) -> None:
        """Release: commit after the audio already queued, then ask for the response."""
        if self.session is None:
            return
        if not self.rt.send_action(self._commit_ptt):
            log.warning("uplink queue full at push-to-talk release")

    def _save_muted(self, muted: bool) -> None:
        """Save the mute state (:func:`voxbox.service.mutestate.save_muted`); one that cannot be saved is shown on
        the LED (``state_not_saved``, for ``health.MUTE_WARNING_S`` s) and in ``STATUS=``
        until the next successful save (:class:`voxbox.service.health.HealthMonitor`)."""
        now = time.monotonic()
        if save_muted(self._state_path, muted):
            self.health.mute_saved(now)
        else:
            self.health.mute_not_saved(now, f"cannot write {self._state_path} (see the journal); the "
                                            f"{'mute' if muted else 'unmute'} will not survive a restart")

    def _play_earcon(self, name: str) -> None:
        cue = self._earcons.get(name)
        if cue is not None:
            log.debug("earcon %s", name, extra={"VOXBOX_EVENT": "earcon", "VOXBOX_EARCON": name})
            # the start-up cue is there to train the echo canceller: once it has played,
            # the canceller is retrained on it (AudioPath.play_cue)
            self.audio.play_cue(cue, retrain=name == "startup")

    def _play_prompt(self, name: str) -> None:
        """A spoken prompt rendered at build time (voxbox/prompts/*.wav, tools/make_prompts.py)."""
        cue = self._prompts.get(name)
        if cue is None:
            log.error("prompt %s unavailable (see the start-up log)", name, extra={"VOXBOX_EVENT": "prompt"})
            return
        log.info("prompt %s", name, extra={"VOXBOX_EVENT": "prompt", "VOXBOX_PROMPT": name})
        self.audio.play_cue(cue)

    def _interrupt(self, a: Interrupt) -> None:
        was_paused = self.jitter.paused
        played = self.jitter.flush()
        last = self.audio.last_pull.item_id
        if was_paused:
            last = None  # the pause already took back what the device held
        if self.playback is not None:
            # what the device still holds is discarded by drop(): it was never heard
            delay = self.playback.delay_samples()
            if delay and last in played:
                played[last] = max(0, played[last] - delay)
            self.playback.drop()
        self.audio.playing_item = None
        if self.session is None:
            return
        rate = self.cfg.audio.playback_rate
        played24 = {k: v * PCM_RATE // rate for k, v in played.items()}
        res = self.session.interrupt(played24, cancel=not a.by_server)
        self.metrics.on_barge_in(a.cause)
        self.stats["truncates"] += len(res.truncated)
        log.info("barge-in by %s: cancel=%s truncated=%s deleted=%s", a.cause, res.cancelled,
                 res.truncated, res.deleted,
                 extra={"VOXBOX_EVENT": "barge_in", "VOXBOX_CAUSE": a.cause,
                        "VOXBOX_TRUNCATE_MS": ",".join(f"{k}:{v}" for k, v in res.truncated.items())})

    def _show_state(self) -> None:
        state = self.conv.state
        # a held turn keeps streaming into turn_audio while the link is down. The link as
        # the conversation knows it (link_up/link_down), not the socket: on a loss the link
        # calls on_closed (here, the session already gone) before on_lost, whose link_down
        # holds the turn; an uplink closed in between let the capture thread drop its
        # partly filled 40 ms block and the period in hand, a hole in the question resent
        linked = self.conv.link is State.IDLE or self.conv.holding
        audio = self.audio  # what the capture thread reads (each a bool, written whole)
        audio.uplink_open = self.conv.uplink_open and linked
        audio.speaking = state is State.SPEAKING
        audio.muted = self.conv.muted
        audio.push_to_talk = self.conv.push_to_talk
        pattern = display_pattern(state, self.health.led_fault(time.monotonic()))
        if pattern.name != self._led_name:
            self._led_name = pattern.name
            if self.led is not None:
                self.led.show(pattern)
            log.info("led %s", pattern.name, extra={"VOXBOX_EVENT": "led", "VOXBOX_LED": pattern.name})
        self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        """``STATUS=``: the state, the session, the turn, then what is wrong with the unit
        (voxbox.service.health: a device missing, a deaf microphone, a mute not saved…)."""
        sid = self.session.session_id if self.session is not None and self.session.session_id else "-"
        text = f"{self.conv.state.value}; session {sid}; turn {self.conv.turn}"
        for fault in self.health.faults(time.monotonic()):
            text += f"; {fault.text}"
        return text

    # ------------------------------------------------------------------------ link
    @property
    def session(self) -> RealtimeSession | None:
        """The current Realtime session (:class:`voxbox.realtime.client.RealtimeLink`'s), or None."""
        return self.rt.session

    @property
    def _session_ready(self) -> bool:
        """The current session's configuration was acknowledged (``session.updated``)."""
        return self.rt.ready

    def _flush_session(self) -> None:
        self.rt.flush()

    # ------------------------------------------------------------------ the link's callbacks
    def _on_link_fatal(self, cause: str) -> None:
        """The service refused the unit (logged by the link)."""
        self._apply(self.conv.fatal(time.monotonic(), cause))

    def _on_link_lost(self, cause: str) -> None:
        """A failed attempt or a lost session (logged by the link)."""
        self._apply(self.conv.link_down(time.monotonic(), cause))

    def _on_link_ready(self) -> None:
        """``session.updated``: the new session carries the conversation so far."""
        self._replay_context()
        self._apply(self.conv.link_up(time.monotonic()))

    def _in_turn(self) -> bool:
        return self.conv.state in UPLINK_STATES

    def _audio_wanted(self) -> bool:
        return self.audio.uplink_open

    def _on_audio_sent(self, block: bytes) -> None:
        if self.turn.first_audio_sent is None:
            self.turn.first_audio_sent = time.monotonic()
            log.info("first audio sent to the service",
                     extra={"VOXBOX_EVENT": "uplink_start", "VOXBOX_TURN": self.conv.turn})
        self.stats["uplink_samples"] += len(block) // 2

    def _commit_ptt(self, session: RealtimeSession) -> None:
        """Queued behind the question's audio: commit and ask for the response (a
        push-to-talk release, a resent question); under 100 ms of audio nothing is sent."""
        if self._ptt_samples >= PCM_RATE // 10:  # commits under 100 ms are errors
            session.commit()
            session.create_response()
        else:
            log.info("push-to-talk too short (%d ms): nothing sent",
                     self._ptt_samples * 1000 // PCM_RATE, extra={"VOXBOX_EVENT": "ptt_short"})
            session.clear_input()
            self._apply(self.conv.response_done(time.monotonic(), "empty"))
        session.set_turn_detection(True)

    def _on_session_event(self, ev, t_open: float) -> None:
        now = time.monotonic()
        conv = self.conv
        if isinstance(ev, AudioDelta):
            if self.turn.first_reply_received is None:
                self.turn.first_reply_received = now
                log.info("first reply audio received", extra={"VOXBOX_EVENT": "reply_audio_start",
                                                              "VOXBOX_ITEM_ID": ev.item_id})
            if conv.state not in UPLINK_STATES or conv.muted:
                if not self._idle_audio_logged:  # once per turn
                    self._idle_audio_logged = True
                    log.warning("reply audio for item %s arrived while %s: dropped, never played",
                                ev.item_id, conv.state, extra={"VOXBOX_EVENT": "idle_audio", "VOXBOX_ITEM_ID": ev.item_id})
                return
            pcm = np.frombuffer(ev.pcm, dtype="<i2").astype(np.int16, copy=False)
            if self._reply_resampler is not None:
                pcm = self._reply_resampler.resample_chunk(pcm)
            dropped = self.jitter.push(ev.item_id, pcm)
            if dropped and not self._overflow_logged:
                self._overflow_logged = True
                log.warning("reply audio queued ahead of playback over %.0f s: the excess is dropped "
                            "(first %d ms of it from item %s)", self.jitter.max_queued_ms / 1000,
                            dropped * 1000 // self.cfg.audio.playback_rate, ev.item_id,
                            extra={"VOXBOX_EVENT": "reply_overflow", "VOXBOX_ITEM_ID": ev.item_id})
            return
        if isinstance(ev, SpeechStarted):
            self.turn.speech_started = now
            log.info("service heard speech start", extra={"VOXBOX_EVENT": "speech_started",
                                                           "VOXBOX_ITEM_ID": ev.item_id})
            self._apply(conv.speech_started(now, ev.audio_start_ms))
        elif isinstance(ev, (SpeechStopped, InputCommitted)):
            if self.turn.speech_stopped is None:
                self.turn.speech_stopped = now
                log.info("service heard end of speech", extra={"VOXBOX_EVENT": "speech_stopped",
                                                                "VOXBOX_ITEM_ID": ev.item_id})
            if isinstance(ev, SpeechStopped):
                self._apply(conv.speech_stopped(now, ev.audio_end_ms))
            elif not conv.interruption_pending:
                self._apply(conv.turn_committed(now))
        elif isinstance(ev, ResponseStarted):
            self.turn.response_created = now
            log.info("response %s started", ev.response_id, extra={"VOXBOX_EVENT": "response_start",
                                                                    "VOXBOX_RESPONSE_ID": ev.response_id})
            self._apply(conv.response_started(now))
        elif isinstance(ev, AudioDone):
            self.jitter.mark_complete()
        elif isinstance(ev, ResponseDone):
            self.jitter.mark_complete()
            log.info("response %s %s", ev.response_id, ev.status,
                     extra={"VOXBOX_EVENT": "response_done", "VOXBOX_STATUS": ev.status})
            self._apply(conv.response_done(now, ev.status, audio_queued=self.jitter.queued_samples > 0))
            if not self.jitter.active and self.conv.state is State.SPEAKING:
                self._apply(conv.playback_drained(now))
        elif isinstance(ev, FunctionCallRequested):
            asyncio.get_running_loop().create_task(self._run_tool(ev), name=f"tool {ev.name}")
        elif isinstance(ev, TranscriptDone):
            log.info("assistant: %s", ev.transcript, extra={"VOXBOX_EVENT": "assistant_transcript"})
            self._remember("assistant", ev.transcript)
        elif isinstance(ev, UserTranscript):
            log.info("user: %s", ev.transcript, extra={"VOXBOX_EVENT": "user_transcript"})
            self._remember("user", ev.transcript)
        elif isinstance(ev, ServerError):
            level = logging.ERROR if ev.fatal else logging.WARNING
            if ev.code == "response_cancel_not_active":
                level = logging.INFO
            log.log(level, "service error %s (type %s, in reply to %s%s): %s", ev.code or "(no code)",
                    ev.type or "(none)", ev.cause or "(no client event named)",
                    f" {ev.event_id}" if ev.event_id else "", ev.message or "(no message)",
                    extra={"VOXBOX_EVENT": "service_error", "VOXBOX_ERROR_CODE": ev.code,
                           "VOXBOX_CAUSE": ev.cause or ""})
            if ev.fatal:
                self._apply(conv.fatal(now, ev.code))

    async def _run_tool(self, call) -> None:
        """Run a tool call off the loop (ToolRunner: worker thread, timeout, error result)
        and answer it on the session that asked, if it is still the current one."""
        session = self.session
        self.stats["tool_calls"] += 1
        if self.tool_runner is None:
            from voxbox.conversation.tools import ToolResult

            result = ToolResult(call.call_id, json.dumps({"error": "tools are disabled on this unit"}), True, 0.0)
        else:
            result = await self.tool_runner.run(call.call_id, call.name, call.arguments)
        log.log(logging.WARNING if result.error else logging.INFO, "tool %s -> %s (%.0f ms)", call.name,
                result.output[:200], result.ms,
                extra={"VOXBOX_EVENT": "tool_call", "VOXBOX_TOOL": call.name, "VOXBOX_TOOL_ERROR": int(result.error),
                       "VOXBOX_TOOL_MS": round(result.ms, 1)})
        if session is None or session is not self.session:
            log.info("tool %s answered after its session ended; dropped", call.name,
                     extra={"VOXBOX_EVENT": "tool_call"})
            return
        session.function_output(call.call_id, result.output, respond=result.respond)
        self._flush_session()

    def _stop_conversation(self) -> None:
        self._apply(self.conv.end_conversation(time.monotonic(), "the model ended the conversation"))

    def _remember(self, role: str, text: str) -> None:
        """Keep the conversation as text for the next session (bounded by turns and chars)."""
        text = text.strip()
        if not text:
            return
        cc = self.cfg.conversation
        h = self.history
        h.append((role, text, self.conv.turn))
        while len(h) > 2 * cc.context_turns or sum(len(t) for _, t, _ in h) > cc.context_chars:
            h.popleft()

    def _replay_context(self) -> None:
        """A new session starts empty: give it the recent conversation as text items. The
        words of a turn held for a resend are left out: its audio is sent again instead."""
        if self.session is None or not self.history:
            return
        held = self.conv.turn if self.conv.holding else None
        items = [(role, text) for role, text, turn in self.history if turn != held]
        for role, text in items:
            self.session.add_text_item(role, text)
        log.info("context carried over: %d items", len(items),
                 extra={"VOXBOX_EVENT": "context_replay", "VOXBOX_ITEMS": len(items)})

    def _log_turn_end(self, old: State) -> None:
        t = self.turn
        self.metrics.on_turn()
        fields = {"VOXBOX_EVENT": "turn", "VOXBOX_TURN": t.turn,
                  "VOXBOX_SESSION_ID": self.session.session_id if self.session else ""}
        fields.update(t.latencies_ms())
        if t.wake_score is not None:
            fields["VOXBOX_WAKE_SCORE"] = round(t.wake_score, 4)
        fields["VOXBOX_JITTER_UNDERRUNS"] = self.jitter.underruns - self._underruns_at_turn
        fields["VOXBOX_JITTER_TARGET_MS"] = round(self.jitter.target_ms)
        fields.update(added_fields(self.jitter.added_latency() - self._added_at_turn))
        fields.update(self.echo.turn_fields())
        log.info("turn %d done: %s", t.turn,
                 " ".join(f"{k[7:].lower()}={v}" for k, v in fields.items() if "MS" in k), extra=fields)



class ToolContext:
    """What built-in tools may touch (voxbox.conversation.tools.ToolContext); called from worker threads."""

    def __init__(self, daemon: "Controller"):
        self._d = daemon

    def set_volume(self, percent: int) -> int:
        v = self._d.volume.set(percent)
        log.info("volume %d %%", v, extra={"VOXBOX_EVENT": "volume", "VOXBOX_VOLUME": v})
        return v

    def get_volume(self) -> int:
        return self._d.volume.get()

    def stop_conversation(self) -> None:
        self._d._loop.call_soon_threadsafe(self._d._stop_conversation)

    def device_status(self) -> dict[str, Any]:
        d = self._d
        return {"state": d.conv.state.value, "muted": d.conv.muted, "volume": d.volume.get(),
                "session_id": d.session.session_id if d.session is not None else None,
                "uptime_s": round(time.monotonic() - d.t_start), "version": __version__,
                "reconnects": d.rt.reconnects}

    def now(self):
        import datetime

        return datetime.datetime.now().astimezone()


def added_fields(h: LatencyHistogram) -> dict:
    """Journald fields for the jitter buffer's added latency over ``h`` (none if no audio)."""
    if not h.samples:
        return {}
    return {"VOXBOX_JITTER_ADDED_MS": round(h.mean_ms(), 1),
            "VOXBOX_JITTER_ADDED_P95_MS": round(h.quantile_ms(0.95))}


