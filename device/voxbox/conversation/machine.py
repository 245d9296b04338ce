"""The attention state machine: the single source of what the unit is doing.

A pure core: every input is a method call with a timestamp (seconds, monotonic), every
output is a state change (with its cause) and a list of :class:`Action` for the daemon.
The LED, ``STATUS=`` and the journald state field all read :attr:`Conversation.state`.

States (see ``docs/states.md``):

- ``idle``: waiting for the wake word or a tap; no audio leaves the unit.
- ``listening``: the user has the floor; audio streams to the service.
- ``thinking``: the service committed the user's turn; waiting for the reply.
- ``speaking``: reply audio is playing.
- ``follow_up``: the reply ended; still listening, without a wake word, for a while.
- ``offline``: the service cannot be reached; audio does not stream.
- ``error``: the service refused the unit (auth, quota): needs attention.
- ``muted``: the microphone is muted (long hold); no capture frame reaches the wake word
  or the network; survives a restart.
- ``unprovisioned``: the unit has no credential yet; it waits for provisioning.

Audio streams to the service (:attr:`Conversation.uplink_open`) only in listening,
thinking, speaking and follow-up, i.e. only after a wake word or a tap.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class State(str, enum.Enum):
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    FOLLOW_UP = "follow_up"
    OFFLINE = "offline"
    ERROR = "error"
    MUTED = "muted"
    UNPROVISIONED = "unprovisioned"

    def __str__(self) -> str:
        return self.value


UPLINK_STATES = frozenset({State.LISTENING, State.THINKING, State.SPEAKING, State.FOLLOW_UP})


@dataclass(frozen=True)
class Action:
    """Something the daemon must do because of a transition."""


@dataclass(frozen=True)
class Interrupt(Action):
    """Barge-in: stop playback now, drop the queue, truncate what was not heard.

    ``by_server`` is True when the service's VAD heard the user (it cancels the response
    itself), False for a local tap or wake word (the client sends ``response.cancel``).
    """

    cause: str
    by_server: bool


@dataclass(frozen=True)
class ResetWake(Action):
    """Clear the wake-word detector's history (new conversation, stale audio)."""


@dataclass(frozen=True)
class ClearInput(Action):
    """Discard audio the service has buffered but not committed (turn abandoned)."""


@dataclass(frozen=True)
class PauseReply(Action):
    """Tentative barge-in (the service heard speech during the reply): stop the speaker
    now but keep the reply queued, until the interruption is confirmed
    (:class:`Interrupt`) or found false (:class:`ResumeReply`)."""


@dataclass(frozen=True)
class ResumeReply(Action):
    """False interruption: play the rest of the paused reply."""


@dataclass(frozen=True)
class StartPushToTalk(Action):
    """Hold: turn detection off, clear the input buffer, stream while held."""


@dataclass(frozen=True)
class EndPushToTalk(Action):
    """Release: commit the input buffer and ask for a response; turn detection back on."""


@dataclass(frozen=True)
class SetMuted(Action):
    """Mute or unmute the microphone (persist it)."""

    muted: bool


@dataclass(frozen=True)
class Earcon(Action):
    """Play a short cue: ``wake`` (the unit listens), ``end`` (it stopped listening),
    ``error``, ``mute``, ``unmute``."""

    name: str


@dataclass(frozen=True)
class Prompt(Action):
    """Play a short spoken prompt rendered ahead of time (``voxbox/prompts/<name>.wav``):
    ``offline`` (the service cannot be reached), ``error`` (it refused the unit),
    ``session_lost`` (the session ended mid-turn and the turn could not be carried over)."""

    name: str


@dataclass(frozen=True)
class ResendTurn(Action):
    """A turn cut by a link loss is carried into the new session: send the user's audio of
    the turn again from its beginning (the daemon keeps it locally from the wake word or
    tap on), then, with ``commit``, commit it and ask for a response (the question was
    complete: the service had committed it, or its reply was cut); ``push_to_talk``: the
    user still holds the button (turn detection stays off)."""

    commit: bool
    push_to_talk: bool = False


@dataclass(frozen=True)
class Transition:
    t: float
    old: State
    new: State
    cause: str
    turn: int


LINK_STATES = frozenset({State.OFFLINE, State.IDLE, State.ERROR, State.UNPROVISIONED})


@dataclass
class Conversation:
    """Args:
    listen_timeout_s: listening with no speech heard this long returns to idle.
    follow_up_s: after a reply, keep listening this long without a wake word (0: off).
    thinking_timeout_s: no reply audio this long after the turn ended returns to idle.
    resume_false_interruptions: when the service hears speech during a reply
        (``input_audio_buffer.speech_started``), pause the reply instead of dropping it;
        if the speech turns out shorter than ``min_interruption_ms`` (a cough, a door, an
        echo burst: ``speech_stopped.audio_end_ms - speech_started.audio_start_ms``), play
        the rest of the reply; otherwise (or after ``listen_timeout_s`` of talking, or a
        new response) the interruption is confirmed and the reply truncated where it was
        paused. False: every interruption is final at once.
    min_interruption_ms: shortest speech that confirms an interruption, ms.
    barge_in_on_speech: the service's speech detection interrupts a reply (the session's
        ``turn_detection.interrupt_response``); False leaves barge-in to the wake word and
        the button.
    local_barge_in: the device's own near-end detector decides barge-in during a reply
        (:meth:`near_end_speech`; ``barge_in.mode = "local"``): the service's speech
        events during a reply are ignored (its VAD may hear the echo), and speech the
        service hears while the unit thinks cancels the pending response from the client
        (the service's ``interrupt_response`` is off).
    resume_turn_s: a turn cut by a link loss (a drop, a stall, the session's expiry) is
        held this long for the next session (:class:`ResendTurn` at :meth:`link_up`); the
        unit stays in the turn's state meanwhile. Past it, the turn is lost and the user
        hears ``Prompt("session_lost")`` at once. 0: every loss mid-turn loses the turn.
    """

    listen_timeout_s: float = 8.0
    follow_up_s: float = 6.0
    thinking_timeout_s: float = 20.0
    resume_false_interruptions: bool = True
    min_interruption_ms: int = 300
    barge_in_on_speech: bool = True
    resume_turn_s: float = 5.0
    local_barge_in: bool = False
    state: State = State.OFFLINE
    turn: int = 0
    transitions: list[Transition] = field(default_factory=list)
    #: what the link says (offline, idle = up, error, unprovisioned), kept while muted
    link: State = State.OFFLINE
    muted: bool = False
    push_to_talk: bool = False
    _since: float = 0.0
    _user_speaking: bool = False
    _response_done: bool = True
    _playing: bool = False
    _paused_at: float | None = None  # tentative barge-in pending since
    _turn_lost: bool = False  # the link went down during a turn (told at the next link_up)
    _speech_start_ms: int | None = None
    _close_after_reply: bool = False
    _held_since: float | None = None  # a turn cut by a link loss waits for the next session

    @property
    def holding(self) -> bool:
        """A turn cut by a link loss is held for the next session (see ``resume_turn_s``)."""
        return self._held_since is not None

    @property
    def uplink_open(self) -> bool:
        return self.state in UPLINK_STATES

    @property
    def interruption_pending(self) -> bool:
        """A reply is paused by a tentative barge-in."""
        return self._paused_at is not None

    def _go(self, t: float, new: State, cause: str) -> list[Action]:
        """Change state; returns the earcons the transition calls for."""
        if new is self.state:
            return []
        old = self.state
        if new is State.LISTENING:
            self.turn += 1  # every time the user gets the floor is a new turn
        tr = Transition(t, old, new, cause, self.turn)
        self.transitions.append(tr)
        if len(self.transitions) > 256:
            del self.transitions[:128]
        log.info("state %s -> %s (%s)", tr.old, tr.new, cause,
                 extra={"VOXBOX_EVENT": "state", "VOXBOX_STATE": str(new),
                        "VOXBOX_PREVIOUS_STATE": str(tr.old), "VOXBOX_CAUSE": cause,
                        "VOXBOX_TURN": self.turn})
        self.state = new
        self._since = t
        if new is State.LISTENING:
            self._user_speaking = False
        if new is not State.LISTENING:
            self.push_to_talk = False
        cues: list[Action] = []
        if new is State.LISTENING and old in (State.IDLE, State.FOLLOW_UP) and "speech" not in cause:
            cues.append(Earcon("wake"))
        elif old is State.LISTENING and new in (State.THINKING, State.IDLE):
            cues.append(Earcon("end"))
        elif new is State.ERROR:
            cues.append(Earcon("error"))
        return cues

    def _rest(self) -> State:
        """Where the unit goes when nothing is happening: idle if the link is up."""
        return self.link

    # ---- link ----------------------------------------------------------------------------
    def link_up(self, t: float) -> list[Action]:
        """A session is ready. A turn held since a link loss goes on in it
        (:class:`ResendTurn`). If the link went down during a turn that could not be held
        (resume off, or the outage outlasted ``resume_turn_s`` and the user was already
        told), nothing more is said; with resume off the user is told now in one short
        sentence (``Prompt("session_lost")``)."""
        self.link = State.IDLE
        actions: list[Action] = []
        if self._held_since is not None:
            self._held_since = None
            self._since = t  # the turn's timeouts run from now
            if not self.push_to_talk:
                self._user_speaking = False  # the new session's VAD will say so again
            commit = self.state is State.THINKING
            log.info("link back: the %s turn goes on in the new session", self.state,
                     extra={"VOXBOX_EVENT": "turn_resumed", "VOXBOX_TURN": self.turn})
            return [ResendTurn(commit=commit, push_to_talk=self.push_to_talk)]
        if self.state in (State.OFFLINE, State.ERROR, State.UNPROVISIONED):
            actions = self._go(t, State.IDLE, "session ready")
        if self._turn_lost:
            self._turn_lost = False
            actions.append(Prompt("session_lost"))
        return actions

    def link_down(self, t: float, cause: str) -> list[Action]:
        """The session ended (a drop, a stall, ``session_expired``/close 1001, a refusal).

        A reply whose audio has all arrived (``response.done``) plays on. A turn in
        progress is held for the next session (``resume_turn_s``): the question being
        asked keeps streaming into the daemon's local buffer; a committed question, or one
        whose reply was cut, is asked again (:class:`ResendTurn` at :meth:`link_up`)."""
        if self.link is not State.ERROR:
            self.link = State.OFFLINE
        in_turn = self.state in (State.LISTENING, State.THINKING, State.SPEAKING) or self.interruption_pending
        if self.muted or self.state is State.ERROR:
            in_turn = False
        if in_turn and self.state is State.SPEAKING and self._response_done and self._paused_at is None:
            return []  # the whole reply is here: let it play out, reconnect meanwhile
        if in_turn and self.resume_turn_s > 0:
            actions: list[Action] = []
            if self._playing or self._paused_at is not None or self.state is State.SPEAKING:
                actions.append(Interrupt("link lost", by_server=True))
            if self._paused_at is not None:
                self._paused_at = None  # the paused reply is gone: the user has the floor
            self._playing = False
            if self.state is State.SPEAKING:  # the reply was cut: it will be asked for again
                self._response_done = False
                actions += self._go(t, State.THINKING, f"{cause}; the reply will be asked for again")
            if self._held_since is None:
                self._held_since = t
                log.info("link lost during the %s turn: holding it %.1f s for the next session",
                         self.state, self.resume_turn_s,
                         extra={"VOXBOX_EVENT": "turn_held", "VOXBOX_TURN": self.turn, "VOXBOX_CAUSE": cause})
            return actions
        if in_turn:
            self._turn_lost = True  # until the next link_up (later failed attempts keep it)
        actions = []
        if self.state is State.SPEAKING or self._playing or self._paused_at is not None:
            actions.append(Interrupt("link lost", by_server=True))
        self._playing = False
        self._response_done = True
        self._paused_at = None
        if not self.muted and self.state is not State.ERROR:
            actions += self._go(t, State.OFFLINE, cause)
        return actions

    def _drop_held(self, t: float, cause: str) -> list[Action]:
        """The held turn's outage lasted too long: the turn is lost; say so now."""
        self._held_since = None
        self._playing = False
        self._response_done = True
        acts = self._go(t, self.link, cause)
        return acts + [ClearInput(), Prompt("session_lost")]

    def fatal(self, t: float, cause: str) -> list[Action]:
        self._held_since = None
        self._playing = False
        self._paused_at = None
        self.link = State.ERROR
        if self.muted:
            return []
        return self._go(t, State.ERROR, cause)

    def unprovisioned(self, t: float, cause: str) -> list[Action]:
        """No credential: the unit waits for provisioning (leaves on :meth:`link_up`)."""
        self.link = State.UNPROVISIONED
        if self.muted:
            return []
        return self._go(t, State.UNPROVISIONED, cause)

    # ---- user ----------------------------------------------------------------------------
    def wake(self, t: float) -> list[Action]:
        """The wake word was detected (never while muted: no frame reaches the detector)."""
        if self.state in (State.IDLE, State.FOLLOW_UP):
            return self._go(t, State.LISTENING, "wake word") + [ResetWake()]
        if self.state in (State.SPEAKING, State.THINKING) or self._paused_at is not None:
            return self._barge_in(t, "wake word", by_server=False) + [ResetWake()]
        return [ResetWake()] + self._unavailable()

    def _unavailable(self) -> list[Action]:
        """The user asked for attention but the service is out of reach: say so."""
        if self.state is State.OFFLINE:
            return [Prompt("offline")]
        if self.state is State.ERROR:
            return [Prompt("error")]
        if self.state is State.UNPROVISIONED:
            return [Earcon("error")]
        return []

    def tap(self, t: float) -> list[Action]:
        """A button tap: start listening, or interrupt a reply."""
        if self.state in (State.IDLE, State.FOLLOW_UP):
            return self._go(t, State.LISTENING, "button tap") + [ResetWake()]
        if self.state in (State.SPEAKING, State.THINKING) or self._paused_at is not None:
            return self._barge_in(t, "button tap", by_server=False)
        if self.state is State.LISTENING:
            self._held_since = None
            return self._go(t, self._rest(), "button tap (cancel)") + [ClearInput(), ResetWake()]
        if self.state is State.MUTED:
            return [Earcon("mute")]
        return self._unavailable()

    def ptt_start(self, t: float) -> list[Action]:
        """Hold (push-to-talk) began: the user has the floor until release, whatever the
        state (a reply is interrupted); turn detection goes off for the turn."""
        if self.state is State.MUTED:
            return [Earcon("mute")]
        if self.state in (State.OFFLINE, State.ERROR, State.UNPROVISIONED):
            return self._unavailable()
        acts: list[Action] = []
        if self.state in (State.SPEAKING, State.THINKING) or self._paused_at is not None:
            acts += self._barge_in(t, "push-to-talk", by_server=False)
        elif self.state is not State.LISTENING:
            acts += self._go(t, State.LISTENING, "push-to-talk")
        self.push_to_talk = True
        self._user_speaking = True  # no listen timeout while held
        return acts + [ResetWake(), StartPushToTalk()]

    def ptt_end(self, t: float) -> list[Action]:
        """Release after a hold: the turn is committed by the client."""
        if not self.push_to_talk or self.state is not State.LISTENING:
            self.push_to_talk = False
            return []
        self._response_done = False
        acts = self._go(t, State.THINKING, "push-to-talk released")
        return acts + [EndPushToTalk()]

    def toggle_mute(self, t: float) -> list[Action]:
        """Long hold: mute (dropping any turn in progress) or unmute."""
        if not self.muted:
            acts: list[Action] = []
            if self.state in (State.SPEAKING, State.THINKING) or self._paused_at is not None:
                acts.append(Interrupt("microphone muted", by_server=False))
            if self.state in UPLINK_STATES:
                acts.append(ClearInput())
            self._playing = False
            self._paused_at = None
            self._held_since = None
            self.muted = True
            acts += self._go(t, State.MUTED, "microphone muted")
            return acts + [SetMuted(True), Earcon("mute")]
        return self.set_unmuted(t, "microphone unmuted")

    def restore_muted(self, t: float) -> list[Action]:
        """At start: the unit was muted when it stopped (state file)."""
        self.muted = True
        return self._go(t, State.MUTED, "muted at last shutdown")

    def set_unmuted(self, t: float, cause: str) -> list[Action]:
        if not self.muted:
            return []
        self.muted = False
        return self._go(t, self._rest(), cause) + [SetMuted(False), Earcon("unmute"), ResetWake()]

    def _barge_in(self, t: float, cause: str, by_server: bool) -> list[Action]:
        self._playing = False
        self._response_done = True
        self._paused_at = None
        return self._go(t, State.LISTENING, f"barge-in by {cause}") + [Interrupt(cause, by_server)]

    # ---- service -------------------------------------------------------------------------
    def speech_started(self, t: float, audio_start_ms: int | None = None) -> list[Action]:
        """``input_audio_buffer.speech_started``."""
        self._speech_start_ms = audio_start_ms
        if self.state is State.LISTENING:
            self._user_speaking = True
            return []
        if self.state is State.FOLLOW_UP:
            acts = self._go(t, State.LISTENING, "follow-up speech")
            self._user_speaking = True
            return acts
        if self.local_barge_in and self.state is State.THINKING and not self.push_to_talk:
            # the user goes on talking before the reply plays: the service keeps its
            # response (interrupt_response off), so the client cancels it
            acts = self._barge_in(t, "user speech", by_server=False)
            self._user_speaking = True
            return acts
        if self.state in (State.SPEAKING, State.THINKING) and (self.local_barge_in or not self.barge_in_on_speech):
            return []  # during a reply the device's own detector decides (or nothing does)
        if self.state is State.SPEAKING and self.resume_false_interruptions:
            # tentative: pause, keep the reply until the service confirms a user turn
            self._paused_at = t
            acts = self._go(t, State.LISTENING, "barge-in by user speech")
            self._user_speaking = True
            return acts + [PauseReply()]
        if self.state in (State.SPEAKING, State.THINKING):
            acts = self._barge_in(t, "user speech", by_server=True)
            self._user_speaking = True
            return acts
        return []

    def near_end_speech(self, t: float) -> list[Action]:
        """The device's near-end detector heard the user over the reply (local barge-in,
        first stage): pause the reply now (the speaker goes quiet, the reply is kept) and
        listen; :meth:`near_end_confirmed` or :meth:`near_end_rejected` follows once the
        microphone has been heard without the echo. Only while a reply plays and
        ``local_barge_in`` is on; otherwise nothing."""
        if not self.local_barge_in or self.push_to_talk or self.state is not State.SPEAKING \
                or self._paused_at is not None:
            return []
        self._paused_at = t
        acts = self._go(t, State.LISTENING, "barge-in by near-end speech")
        return acts + [PauseReply()]

    def near_end_confirmed(self, t: float) -> list[Action]:
        """Second stage: with the speaker quiet the user is still talking: the barge-in is
        final (truncate at what was played, the client cancels the response)."""
        if self._paused_at is None:
            return []
        self._paused_at = None
        self._playing = False
        self._response_done = True
        log.info("interruption confirmed (the user talks with the speaker quiet)",
                 extra={"VOXBOX_EVENT": "barge_in_confirmed"})
        return [Interrupt("near-end speech", by_server=False)]

    def near_end_rejected(self, t: float) -> list[Action]:
        """Second stage: with the speaker quiet nobody talks: it was the echo; the reply
        resumes where it paused."""
        if self._paused_at is None:
            return []
        return self._resume(t, "no speech once the speaker was quiet")

    def _confirm(self, t: float, why: str) -> list[Action]:
        self._paused_at = None
        self._playing = False
        self._response_done = True
        log.info("interruption confirmed (%s)", why, extra={"VOXBOX_EVENT": "barge_in_confirmed"})
        return [Interrupt("user speech", by_server=True)]

    def _resume(self, t: float, why: str) -> list[Action]:
        self._paused_at = None
        self._playing = True
        self._user_speaking = False
        self.turn -= 1  # the false interruption was not a turn
        acts = self._go(t, State.SPEAKING, f"false interruption ({why}): reply resumed")
        return [ResumeReply()] + [a for a in acts if not isinstance(a, Earcon)]

    def speech_stopped(self, t: float, audio_end_ms: int | None = None) -> list[Action]:
        """``input_audio_buffer.speech_stopped`` / ``committed``: the user's turn ended."""
        acts: list[Action] = []
        if self._paused_at is not None:
            start = self._speech_start_ms
            if audio_end_ms is not None and start is not None and \
                    audio_end_ms - start < self.min_interruption_ms:
                return self._resume(t, f"{audio_end_ms - start} ms of speech")
            acts += self._confirm(t, "end of speech")
        if self.state is State.LISTENING and not self.push_to_talk:
            self._response_done = False
            acts += self._go(t, State.THINKING, "end of speech")
        return acts

    def turn_committed(self, t: float) -> list[Action]:
        """Client commit: the same as the end of speech."""
        return self.speech_stopped(t)

    def response_started(self, t: float) -> list[Action]:
        acts: list[Action] = []
        if self._paused_at is not None:
            acts += self._confirm(t, "new response")
        self._response_done = False
        if self.state is State.LISTENING and not self._user_speaking and not self.push_to_talk:
            acts += self._go(t, State.THINKING, "response started")
        return acts

    def playback_started(self, t: float) -> list[Action]:
        """The first reply sample of a response was written to the speaker."""
        self._playing = True
        if self.state in (State.THINKING, State.LISTENING, State.FOLLOW_UP) and not self.push_to_talk \
                and self._paused_at is None:
            return self._go(t, State.SPEAKING, "reply audio")
        return []

    def response_done(self, t: float, status: str, audio_queued: bool = False) -> list[Action]:
        """``response.done``. ``audio_queued``: reply audio is buffered but not playing yet
        (a large chunk, the prebuffer): the reply is still to come."""
        self._response_done = True
        if self._paused_at is not None:
            return []  # the paused reply's response may end (cancelled): decided later
        if self.state is State.THINKING and not self._playing and not audio_queued:
            return self._end_reply(t, f"response {status} without audio")
        if self.state is State.SPEAKING and not self._playing:
            return self._end_reply(t, "reply finished")
        return []

    def playback_drained(self, t: float) -> list[Action]:
        """The jitter buffer played out everything queued."""
        self._playing = False
        if self.state is State.SPEAKING and self._response_done:
            return self._end_reply(t, "reply finished")
        return []

    def end_conversation(self, t: float, cause: str) -> list[Action]:
        """The model ended the conversation (``stop_conversation`` tool): let the reply
        play out, then go idle with no follow-up window."""
        self._close_after_reply = True
        if self.state in (State.LISTENING, State.FOLLOW_UP):
            self._close_after_reply = False
            return self._go(t, State.IDLE, cause) + [ClearInput()]
        return []

    def _end_reply(self, t: float, cause: str) -> list[Action]:
        if self.link is not State.IDLE:  # the reply played out while the link was down
            self._close_after_reply = False
            return self._go(t, self.link, cause + "; link down")
        if self._close_after_reply:
            self._close_after_reply = False
            return self._go(t, State.IDLE, cause + "; conversation ended") + [ClearInput()]
        if self.follow_up_s > 0:
            return self._go(t, State.FOLLOW_UP, cause)
        return self._go(t, State.IDLE, cause)

    # ---- time ----------------------------------------------------------------------------
    def tick(self, t: float) -> list[Action]:
        """Advance timeouts; call at least every 100 ms."""
        age = t - self._since
        if self._held_since is not None:
            if t - self._held_since >= self.resume_turn_s:
                return self._drop_held(t, f"link down for {t - self._held_since:.1f} s: turn lost")
            return []  # the turn's own timeouts wait for the next session
        if self._paused_at is not None and t - self._paused_at >= self.listen_timeout_s:
            return self._confirm(t, "the user kept talking")
        if self.state is State.LISTENING and not self._user_speaking and age >= self.listen_timeout_s:
            return self._go(t, State.IDLE, "nothing heard") + [ClearInput()]
        if self.state is State.FOLLOW_UP and age >= self.follow_up_s:
            return self._go(t, State.IDLE, "follow-up window closed") + [ClearInput()]
        if self.state is State.THINKING and age >= self.thinking_timeout_s:
            return self._go(t, State.IDLE, "no reply from the service")
        return []
