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
class Transition:
    t: float
    old: State
    new: State
    cause: str
    turn: int


@dataclass
class Conversation:
    """Args:
    listen_timeout_s: listening with no speech heard this long returns to idle.
    follow_up_s: after a reply, keep listening this long without a wake word (0: off).
    thinking_timeout_s: no reply audio this long after the turn ended returns to idle.
    """

    listen_timeout_s: float = 8.0
    follow_up_s: float = 6.0
    thinking_timeout_s: float = 20.0
    state: State = State.OFFLINE
    turn: int = 0
    transitions: list[Transition] = field(default_factory=list)
    _since: float = 0.0
    _user_speaking: bool = False
    _response_done: bool = True
    _playing: bool = False

    @property
    def uplink_open(self) -> bool:
        return self.state in UPLINK_STATES

    def _go(self, t: float, new: State, cause: str) -> None:
        if new is self.state:
            return
        if new is State.LISTENING:
            self.turn += 1  # every time the user gets the floor is a new turn
        tr = Transition(t, self.state, new, cause, self.turn)
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

    # ---- link ----------------------------------------------------------------------------
    def link_up(self, t: float) -> list[Action]:
        if self.state in (State.OFFLINE, State.ERROR):
            self._go(t, State.IDLE, "session ready")
        return []

    def link_down(self, t: float, cause: str) -> list[Action]:
        actions: list[Action] = []
        if self.state is State.SPEAKING or self._playing:
            actions.append(Interrupt("link lost", by_server=True))
        self._playing = False
        self._response_done = True
        if self.state is not State.ERROR:
            self._go(t, State.OFFLINE, cause)
        return actions

    def fatal(self, t: float, cause: str) -> list[Action]:
        self._playing = False
        self._go(t, State.ERROR, cause)
        return []

    # ---- user ----------------------------------------------------------------------------
    def wake(self, t: float) -> list[Action]:
        """The wake word was detected."""
        if self.state in (State.IDLE, State.FOLLOW_UP):
            self._go(t, State.LISTENING, "wake word")
            return [ResetWake()]
        if self.state in (State.SPEAKING, State.THINKING):
            return self._barge_in(t, "wake word", by_server=False) + [ResetWake()]
        return [ResetWake()]

    def tap(self, t: float) -> list[Action]:
        """A button tap: start listening, or interrupt a reply."""
        if self.state in (State.IDLE, State.FOLLOW_UP):
            self._go(t, State.LISTENING, "button tap")
            return [ResetWake()]
        if self.state in (State.SPEAKING, State.THINKING):
            return self._barge_in(t, "button tap", by_server=False)
        if self.state is State.LISTENING:
            self._go(t, State.IDLE, "button tap (cancel)")
            return [ClearInput(), ResetWake()]
        return []

    def _barge_in(self, t: float, cause: str, by_server: bool) -> list[Action]:
        self._playing = False
        self._response_done = True
        self._go(t, State.LISTENING, f"barge-in by {cause}")
        return [Interrupt(cause, by_server)]

    # ---- service -------------------------------------------------------------------------
    def speech_started(self, t: float) -> list[Action]:
        """``input_audio_buffer.speech_started``."""
        if self.state is State.LISTENING:
            self._user_speaking = True
            return []
        if self.state is State.FOLLOW_UP:
            self._go(t, State.LISTENING, "follow-up speech")
            self._user_speaking = True
            return []
        if self.state in (State.SPEAKING, State.THINKING):
            acts = self._barge_in(t, "user speech", by_server=True)
            self._user_speaking = True
            return acts
        return []

    def speech_stopped(self, t: float) -> list[Action]:
        """``input_audio_buffer.speech_stopped`` / ``committed``: the user's turn ended."""
        if self.state is State.LISTENING:
            self._response_done = False
            self._go(t, State.THINKING, "end of speech")
        return []

    def turn_committed(self, t: float) -> list[Action]:
        """Push-to-talk or client commit: the same as the end of speech."""
        return self.speech_stopped(t)

    def response_started(self, t: float) -> list[Action]:
        self._response_done = False
        if self.state is State.LISTENING and not self._user_speaking:
            self._go(t, State.THINKING, "response started")
        return []

    def playback_started(self, t: float) -> list[Action]:
        """The first reply sample of a response was written to the speaker."""
        self._playing = True
        if self.state in (State.THINKING, State.LISTENING, State.FOLLOW_UP):
            self._go(t, State.SPEAKING, "reply audio")
        return []

    def response_done(self, t: float, status: str) -> list[Action]:
        self._response_done = True
        if self.state is State.THINKING and not self._playing:
            self._end_reply(t, f"response {status} without audio")
        elif self.state is State.SPEAKING and not self._playing:
            self._end_reply(t, "reply finished")
        return []

    def playback_drained(self, t: float) -> list[Action]:
        """The jitter buffer played out everything queued."""
        self._playing = False
        if self.state is State.SPEAKING and self._response_done:
            self._end_reply(t, "reply finished")
        return []

    def _end_reply(self, t: float, cause: str) -> None:
        if self.follow_up_s > 0:
            self._go(t, State.FOLLOW_UP, cause)
        else:
            self._go(t, State.IDLE, cause)

    # ---- time ----------------------------------------------------------------------------
    def tick(self, t: float) -> list[Action]:
        """Advance timeouts; call at least every 100 ms."""
        age = t - self._since
        if self.state is State.LISTENING and not self._user_speaking and age >= self.listen_timeout_s:
            self._go(t, State.IDLE, "nothing heard")
            return [ClearInput()]
        if self.state is State.FOLLOW_UP and age >= self.follow_up_s:
            self._go(t, State.IDLE, "follow-up window closed")
            return [ClearInput()]
        if self.state is State.THINKING and age >= self.thinking_timeout_s:
            self._go(t, State.IDLE, "no reply from the service")
            return []
        return []
