"""Sans-I/O Realtime session: server events in, client events out.

:class:`RealtimeSession` knows the protocol (``shared/reference/realtime-device-notes.md``)
and nothing about sockets, threads or clocks: the link adapter feeds it each received
message with :meth:`RealtimeSession.receive` and sends whatever
:meth:`RealtimeSession.data_to_send` returns, in the manner of the ``websockets``
library's own sans-I/O protocol objects.

It tracks what a device client must track itself over WebSocket: whether a response is
active (so ``response.cancel`` is only sent when one is), the assistant audio items and how
much audio each carried (so a truncate never goes past the received audio), and an
``event_id`` on every client event so that ``error`` events can be tied to their cause.

Every server event it acts on is validated first against its schema in
:mod:`voxbox.realtime.events`: one malformed event (a number where a string belongs, a missing audio
``delta``, bad base64) becomes an :class:`InvalidEvent` and changes nothing; it never raises
and never ends the session.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from voxbox.config import Realtime
from voxbox.errors import ProtocolError  # noqa: F401 (re-exported)
from voxbox.realtime import events as schema
from voxbox.realtime.dialects import (
    PCM_RATE,
    canonical_event_type,
    session_config,
    uses_ga_names,
)

log = logging.getLogger(__name__)

# Error codes after which retrying the same request is pointless until someone acts
# (realtime-device-notes.md, "Sessions, limits and faults").
FATAL_ERROR_CODES = frozenset(
    {"invalid_api_key", "insufficient_quota", "invalid_model", "beta_api_shape_disabled",
     "model_not_found", "unauthorized", "forbidden"}
)
#: WebSocket close codes that are fatal (a wrong key or a refused API shape): no fast retry
FATAL_CLOSE_CODES = frozenset({3000, 4000})


# ---- events handed to the application ---------------------------------------------------
@dataclass(frozen=True)
class SessionEvent:
    """Base class of what :meth:`RealtimeSession.receive` returns."""


@dataclass(frozen=True)
class SessionCreated(SessionEvent):
    """``session.created``. ``expires_at``: when the service will end the session (epoch
    seconds, ``session.expires_at``), None when the server did not say (absent, not an
    integer, or not positive)."""

    session_id: str
    expires_at: int | None = None


@dataclass(frozen=True)
class SessionReady(SessionEvent):
    """``session.updated`` acknowledged the configuration sent at connect."""

    session_id: str


@dataclass(frozen=True)
class SpeechStarted(SessionEvent):
    """``input_audio_buffer.speech_started`` (server VAD heard the user start)."""

    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped(SessionEvent):
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class InputCommitted(SessionEvent):
    item_id: str


@dataclass(frozen=True)
class ResponseStarted(SessionEvent):
    response_id: str


@dataclass(frozen=True)
class AudioDelta(SessionEvent):
    """Reply audio: PCM16 little-endian mono at 24 kHz (``response.output_audio.delta``)."""

    response_id: str
    item_id: str
    pcm: bytes


@dataclass(frozen=True)
class AudioDone(SessionEvent):
    response_id: str
    item_id: str


@dataclass(frozen=True)
class TranscriptDelta(SessionEvent):
    item_id: str
    delta: str


@dataclass(frozen=True)
class TranscriptDone(SessionEvent):
    item_id: str
    transcript: str


@dataclass(frozen=True)
class UserTranscript(SessionEvent):
    """``conversation.item.input_audio_transcription.completed``: the user's words."""

    item_id: str
    transcript: str


@dataclass(frozen=True)
class FunctionCallRequested(SessionEvent):
    """The model called a tool: a completed ``function_call`` item in
    ``response.output_item.done`` (same shape in GA, beta and Voice Live). ``arguments``
    is the JSON text the model produced (not yet validated)."""

    call_id: str
    name: str
    arguments: str
    response_id: str


@dataclass(frozen=True)
class ResponseDone(SessionEvent):
    response_id: str
    status: str


@dataclass(frozen=True)
class ServerError(SessionEvent):
    """An ``error`` event. ``cause`` is the type of the client event it refers to, if known."""

    code: str
    type: str
    message: str
    event_id: str | None = None
    cause: str | None = None
    fatal: bool = False


@dataclass(frozen=True)
class InvalidEvent(SessionEvent):
    """A server event of a type the session acts on whose fields do not validate against
    its schema (:mod:`voxbox.realtime.events`): a value of the wrong type, a required field missing or
    null, bad base64 audio. The event was not acted on: the session's state is unchanged
    and the session stays usable.

    Attributes:
        type: the event type as received (the beta name in the beta dialects).
        field: dotted path of the first offending field (``item_id``, ``response.status``,
            ``item.call_id``).
        detail: why, in a few words (pydantic's message, at most 120 characters; never the
            field's value).
    """

    type: str
    field: str
    detail: str


@dataclass
class _Item:
    response_id: str
    received_samples: int = 0
    done: bool = False
    closed: bool = False  # truncated or deleted: never referenced again


@dataclass
class Interruption:
    """What :meth:`RealtimeSession.interrupt` sent (for logs and tests)."""

    cancelled: bool = False
    truncated: dict[str, int] = field(default_factory=dict)  # item_id -> audio_end_ms
    deleted: list[str] = field(default_factory=list)


class RealtimeSession:
    """One Realtime session (one WebSocket connection).

    Args:
        rt: the ``[realtime]`` configuration (dialect, instructions, voice, turn detection).
        tools: function tools declared in ``session.update``.
        prefix: prefix for client ``event_id`` values (unique per connection).
    """

    def __init__(self, rt: Realtime, tools: list[dict[str, Any]] | None = None, prefix: str = "vx"):
        self.rt = rt
        self.dialect = rt.dialect
        self.tools = tools or []
        self._prefix = prefix
        self._seq = 0
        self._out: list[str] = []
        self._sent_types: OrderedDict[str, str] = OrderedDict()
        self.session_id: str | None = None
        self.ready = False
        self.response_id: str | None = None
        self.items: OrderedDict[str, _Item] = OrderedDict()
        self._interrupted: OrderedDict[str, None] = OrderedDict()  # response ids (bounded)
        self.audio_samples_sent = 0
        self.push_to_talk = rt.turn_detection.type == "none"
        # tool calls: response id -> call ids not answered yet; answered responses waiting
        # for their response.done before the single response.create
        self._calls: dict[str, set[str]] = {}
        self._respond_after: set[str] = set()
        self._done_responses: set[str] = set()

    # ---- outgoing ----------------------------------------------------------------------
    def _send(self, event: dict[str, Any]) -> str:
        self._seq += 1
        event_id = f"{self._prefix}_{self._seq}"
        event = {"event_id": event_id, **event}
        self._sent_types[event_id] = event["type"]
        while len(self._sent_types) > 512:
            self._sent_types.popitem(last=False)
        self._out.append(json.dumps(event, separators=(",", ":")))
        return event_id

    def data_to_send(self) -> list[str]:
        """Client events (JSON text) to send, oldest first; clears the queue."""
        out, self._out = self._out, []
        return out

    def start(self, *, turn_detection: bool = True) -> None:
        """Queue ``session.update`` with the configured session (sent first on connect)."""
        self.push_to_talk = not turn_detection or self.rt.turn_detection.type == "none"
        self._send({
            "type": "session.update",
            "session": session_config(self.rt, self.tools, turn_detection=turn_detection),
        })

    def set_turn_detection(self, enabled: bool) -> None:
        """Queue a ``session.update`` that switches server turn detection off (push-to-talk
        hold: ``turn_detection: null``) or back to the configured one. Only the turn
        detection is sent; the rest of the session is unchanged (realtime-device-notes.md,
        "Turn handling")."""
        full = session_config(self.rt, self.tools, turn_detection=enabled)
        if "audio" in full:  # GA shape
            session: dict[str, Any] = {"type": "realtime", "audio": {"input": {
                "turn_detection": full["audio"]["input"]["turn_detection"]}}}
        else:
            session = {"turn_detection": full["turn_detection"]}
        self.push_to_talk = not enabled or self.rt.turn_detection.type == "none"
        self._send({"type": "session.update", "session": session})

    def add_text_item(self, role: str, text: str) -> None:
        """Queue ``conversation.item.create`` with a text message (context carried over
        from an earlier session: a new session starts with an empty conversation,
        realtime-device-notes.md "Sessions, limits and faults"). ``role`` is ``user`` or
        ``assistant``; the content type is ``input_text`` for the user and
        ``output_text`` (GA) / ``text`` (beta, Voice Live) for the assistant. No item id
        is sent: the server assigns new ones, so nothing from the old session is reused.

        Raises:
            ValueError: ``role`` is not user or assistant.
        """
        if role == "user":
            part = {"type": "input_text", "text": text}
        elif role == "assistant":
            part = {"type": "output_text" if uses_ga_names(self.dialect) else "text", "text": text}
        else:
            raise ValueError(f"add_text_item: role must be 'user' or 'assistant', got {role!r}")
        self._send({"type": "conversation.item.create",
                    "item": {"type": "message", "role": role, "content": [part]}})

    def append_audio(self, pcm: bytes) -> None:
        """Queue ``input_audio_buffer.append`` with PCM16 24 kHz mono audio (bytes)."""
        if len(pcm) % 2:
            raise ValueError(f"input audio must be whole 16-bit samples, got {len(pcm)} bytes")
        self.audio_samples_sent += len(pcm) // 2
        self._send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})

    def commit(self) -> None:
        """Queue ``input_audio_buffer.commit`` (push-to-talk end of turn)."""
        self._send({"type": "input_audio_buffer.commit"})

    def clear_input(self) -> None:
        self._send({"type": "input_audio_buffer.clear"})

    def create_response(self) -> None:
        """Queue ``response.create`` unless a response is already active."""
        if self.response_id is None:
            self._send({"type": "response.create"})

    def interrupt(self, played_samples: dict[str, int], *, cancel: bool = True) -> Interruption:
        """Barge-in: cancel the active response and truncate what was not heard.

        Args:
            played_samples: per assistant item, samples (24 kHz) actually written to the
                speaker. Items not named here count as not played at all.
            cancel: send ``response.cancel`` if a response is active (False when the server
                cancels by itself, i.e. its VAD heard speech with ``interrupt_response``).

        Every open assistant audio item gets ``conversation.item.truncate`` with
        ``audio_end_ms`` = played ms (clamped to the audio received), or
        ``conversation.item.delete`` when nothing of it was heard (some servers reject a
        truncate at 0 ms). Items played in full are left alone.
        """
        result = Interruption()
        # audio of an interrupted response is never played, whatever item it names
        # (a server may keep streaming new items of it until its response.done)
        for rid in {self.response_id, *(i.response_id for i in self.items.values() if not i.closed)}:
            if rid:
                self._interrupted[rid] = None
        while len(self._interrupted) > 16:
            self._interrupted.popitem(last=False)
        if cancel and self.response_id is not None:
            self._send({"type": "response.cancel"})
            result.cancelled = True
        for item_id, item in self.items.items():
            if item.closed:
                continue
            played = min(played_samples.get(item_id, 0), item.received_samples)
            if item.done and played >= item.received_samples:
                continue  # heard in full
            item.closed = True
            if played <= 0:
                self._send({"type": "conversation.item.delete", "item_id": item_id})
                result.deleted.append(item_id)
            else:
                ms = played * 1000 // PCM_RATE
                self._send({"type": "conversation.item.truncate", "item_id": item_id,
                            "content_index": 0, "audio_end_ms": ms})
                result.truncated[item_id] = ms
        return result

    def function_output(self, call_id: str, output: str, *, respond: bool = True) -> None:
        """Answer a :class:`FunctionCallRequested`: queue ``conversation.item.create``
        with a ``function_call_output`` item at once, and one ``response.create`` once every
        call of that response is answered *and* its ``response.done`` has arrived (sending
        it earlier is rejected with ``conversation_already_has_active_response``).
        ``respond=False`` (e.g. the user ended the conversation) sends no
        ``response.create`` for this call."""
        self._send({"type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": call_id, "output": output}})
        for rid, pending in list(self._calls.items()):
            if call_id in pending:
                pending.discard(call_id)
                if respond:
                    self._respond_after.add(rid)
                self._maybe_respond(rid)

    def _maybe_respond(self, rid: str) -> None:
        if self._calls.get(rid) or rid not in self._done_responses:
            return
        self._calls.pop(rid, None)
        self._done_responses.discard(rid)
        if rid in self._respond_after:
            self._respond_after.discard(rid)
            self.create_response()

    def close_played_items(self) -> None:
        """Mark every assistant item as finished (its audio was played out in full)."""
        for item in self.items.values():
            item.closed = True

    # ---- incoming ----------------------------------------------------------------------
    def receive(self, message: str | bytes) -> list[SessionEvent]:
        """Handle one server message; returns the application events it produced.

        Unknown event types and unknown fields are ignored (servers add them). An event of
        a known type whose fields do not validate (:mod:`voxbox.realtime.events`) gives
        ``[InvalidEvent(...)]`` and changes no state.

        Raises:
            ProtocolError: the message is not a JSON object with a string ``type``.
        """
        try:
            event = json.loads(message)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ProtocolError(f"server message is not JSON: {str(exc)[:120]}") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise ProtocolError("server message has no string 'type'")
        etype = event["type"]
        kind = canonical_event_type(self.dialect, etype)
        model = schema.SERVER_EVENT_MODELS.get(kind)
        if model is None:
            return []
        try:
            ev = model.model_validate(event)
        except ValidationError as exc:
            return [_invalid(etype, *schema.first_error(exc))]
        return getattr(self, _HANDLERS[kind])(ev, etype)

    def _on_session_created(self, ev: schema.SessionCreatedEvent, etype: str) -> list[SessionEvent]:
        session = ev.session or schema.SessionInfo()
        expires = session.expires_at
        if isinstance(expires, bool) or not isinstance(expires, int) or expires <= 0:
            expires = None
        self.session_id = session.id or ""
        return [SessionCreated(self.session_id, expires)]

    def _on_session_updated(self, ev: schema.SessionUpdatedEvent, etype: str) -> list[SessionEvent]:
        sid = ev.session.id if ev.session is not None else None
        if sid:
            self.session_id = sid
        if self.ready:
            return []
        self.ready = True
        return [SessionReady(self.session_id or "")]

    def _on_input_audio_buffer_speech_started(self, ev: schema.InputAudioBufferSpeechStartedEvent,
                                              etype: str) -> list[SessionEvent]:
        return [SpeechStarted(ev.item_id or "", ev.audio_start_ms or 0)]

    def _on_input_audio_buffer_speech_stopped(self, ev: schema.InputAudioBufferSpeechStoppedEvent,
                                              etype: str) -> list[SessionEvent]:
        return [SpeechStopped(ev.item_id or "", ev.audio_end_ms or 0)]

    def _on_input_audio_buffer_committed(self, ev: schema.InputAudioBufferCommittedEvent,
                                         etype: str) -> list[SessionEvent]:
        return [InputCommitted(ev.item_id or "")]

    def _on_response_created(self, ev: schema.ResponseCreatedEvent, etype: str) -> list[SessionEvent]:
        rid = (ev.response.id if ev.response is not None else None) or ""
        self.response_id = rid
        return [ResponseStarted(rid)]

    def _on_response_output_audio_delta(self, ev: schema.ResponseAudioDeltaEvent,
                                        etype: str) -> list[SessionEvent]:
        item_id = ev.item_id
        rid = ev.response_id or self.response_id or ""
        if rid in self._interrupted:
            return []  # audio of a response we interrupted: never play it
        try:
            pcm = base64.b64decode(ev.delta, validate=True)
        except (binascii.Error, ValueError) as exc:
            return [_invalid(etype, "delta", f"invalid base64: {exc}")]
        if len(pcm) % 2:
            pcm = pcm[:-1]
        item = self.items.get(item_id)
        if item is None:
            item = self.items[item_id] = _Item(rid)
            while len(self.items) > 64:
                self.items.popitem(last=False)
        if item.closed:
            return []  # audio for an item we already truncated/deleted: never play it
        item.received_samples += len(pcm) // 2
        return [AudioDelta(rid, item_id, pcm)]

    def _on_response_output_audio_done(self, ev: schema.ResponseAudioDoneEvent,
                                       etype: str) -> list[SessionEvent]:
        item = self.items.get(ev.item_id)
        if item is not None:
            item.done = True
        return [AudioDone(ev.response_id or "", ev.item_id)]

    def _on_response_output_audio_transcript_delta(self, ev: schema.ResponseAudioTranscriptDeltaEvent,
                                                   etype: str) -> list[SessionEvent]:
        return [TranscriptDelta(ev.item_id or "", ev.delta)]

    def _on_response_output_audio_transcript_done(self, ev: schema.ResponseAudioTranscriptDoneEvent,
                                                  etype: str) -> list[SessionEvent]:
        return [TranscriptDone(ev.item_id or "", ev.transcript)]

    def _on_conversation_item_input_audio_transcription_completed(
            self, ev: schema.ConversationItemInputAudioTranscriptionCompletedEvent,
            etype: str) -> list[SessionEvent]:
        return [UserTranscript(ev.item_id or "", ev.transcript)]

    def _on_response_output_item_done(self, ev: schema.ResponseOutputItemDoneEvent,
                                      etype: str) -> list[SessionEvent]:
        item = ev.item
        if item is None or item.type != "function_call":
            return []
        try:
            call = schema.FunctionCallItem.model_validate(item.model_extra or {})
        except ValidationError as exc:
            return [_invalid(etype, *schema.first_error(exc, "item."))]
        if item.status not in (None, "completed"):
            return []  # a call cut by a cancel must not run
        rid = ev.response_id or self.response_id or ""
        self._calls.setdefault(rid, set()).add(call.call_id)
        return [FunctionCallRequested(call.call_id, call.name, call.arguments or "", rid)]

    def _on_response_done(self, ev: schema.ResponseDoneEvent, etype: str) -> list[SessionEvent]:
        resp = ev.response or schema.ResponseInfo()
        rid = resp.id or self.response_id or ""
        status = resp.status or "completed"
        if self.response_id == rid or not rid:
            self.response_id = None
        for item in self.items.values():
            if item.response_id == rid:
                item.done = True
        if rid in self._calls:
            self._done_responses.add(rid)
            self._maybe_respond(rid)
        return [ResponseDone(rid, status)]

    def _on_error(self, ev: schema.ErrorEvent, etype: str) -> list[SessionEvent]:
        err = ev.error or schema.ErrorDetails()
        cause = self._sent_types.get(err.event_id) if err.event_id else None
        if err.code == "response_cancel_not_active":
            self.response_id = None
        fatal = err.code in FATAL_ERROR_CODES
        return [ServerError(err.code, err.type, err.message, err.event_id, cause, fatal)]


def _invalid(etype: str, path: str, detail: str) -> InvalidEvent:
    log.debug("invalid server event %s: %s: %s", etype, path, detail)
    return InvalidEvent(etype, path, detail[:schema.DETAIL_MAX])


#: GA event type -> name of the RealtimeSession method that acts on it
_HANDLERS = {kind: "_on_" + kind.replace(".", "_") for kind in schema.SERVER_EVENT_MODELS}
