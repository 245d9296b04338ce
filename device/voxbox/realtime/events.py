"""Schemas of the server events :class:`voxbox.realtime.session.RealtimeSession` acts on.

One pydantic model per event type the session handles, keyed by its GA name in
:data:`SERVER_EVENT_MODELS` (beta and Voice Live names are renamed first by
:func:`voxbox.realtime.dialects.canonical_event_type`). The session validates each such event
before touching any state; an event that does not validate becomes an ``InvalidEvent``
naming the first offending field instead of an exception (see ``RealtimeSession.receive``).

What is validated, and how (the SDK types cited per model are the sources, checked with
openai 3.63.0 and azure-ai-voicelive 1.3.1: ``openai.types.realtime`` for GA,
``openai.types.beta.realtime`` for beta, ``azure.ai.voicelive.models`` for Voice Live):

- Only the fields the session reads are declared. Every other field is accepted whatever
  it holds (``extra="allow"``: servers add fields; realtime-device-notes.md "Ignore unknown
  server event types and unknown fields").
- Declared fields are strict (``strict=True``): a string must be a JSON string, an integer a
  JSON integer (not a float, a string, or a boolean), an object a JSON object. Nothing is
  coerced, except in the ``error`` event (:class:`ErrorDetails`).
- **Required** (missing or null is invalid) are only the fields that carry what the event
  exists to deliver, without which the session cannot act on it: the audio and its item of
  an audio delta, the item of an audio done, the text of the transcript events, the call id
  and name of a function call. Each is required by all three SDKs too.
- Everything else read is **optional**: missing or null means the default the session has
  always used (an SDK ``Optional`` field, or a field whose absence the session can make up
  for: the response of an audio delta is the active response, a speech start without
  ``audio_start_ms`` is still a barge-in). A present, non-null value of the wrong type is
  invalid all the same.

The models are built once, at import; validation keeps strings as they are (no copy of
an audio delta's base64 text).
"""

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

__all__ = [
    "DETAIL_MAX", "SERVER_EVENT_MODELS", "ConversationItemInputAudioTranscriptionCompletedEvent",
    "ErrorDetails",
    "ErrorEvent", "FunctionCallItem", "InputAudioBufferCommittedEvent",
    "InputAudioBufferSpeechStartedEvent", "InputAudioBufferSpeechStoppedEvent", "OutputItem",
    "ResponseAudioDeltaEvent", "ResponseAudioDoneEvent", "ResponseAudioTranscriptDeltaEvent",
    "ResponseAudioTranscriptDoneEvent", "ResponseCreatedEvent", "ResponseDoneEvent",
    "ResponseInfo", "ResponseOutputItemDoneEvent", "SessionCreatedEvent", "SessionInfo",
    "SessionUpdatedEvent", "first_error",
]

#: longest ``detail`` of an invalid event
DETAIL_MAX = 120


class _Strict(BaseModel):
    """Strict types for the declared fields, anything in the others; input values are
    never part of a validation error's text (``hide_input_in_errors``)."""

    model_config = ConfigDict(extra="allow", strict=True, hide_input_in_errors=True)


# ---- session.created / session.updated --------------------------------------------------
class SessionInfo(_Strict):
    """The ``session`` object of ``session.created`` / ``session.updated``.

    - ``id``: optional string. GA ``RealtimeSessionCreateResponse.id`` (the GA event types
      type ``session`` as ``RealtimeSessionCreateRequest``, which has no ``id``; servers send
      it), beta ``Session.id: Optional[str]``, Voice Live ``ResponseSession.id: Optional[str]``.
    - ``expires_at``: not validated (any value): read only when it is a positive integer
      (epoch seconds). GA ``RealtimeSessionCreateResponse.expires_at: Optional[int]``, Voice
      Live ``ResponseSession.expires_at`` (optional unix timestamp); not in the beta ``Session``.
    """

    id: str | None = None
    expires_at: Any = None


class SessionCreatedEvent(_Strict):
    """``session.created``: ``session`` optional object (GA/beta ``SessionCreatedEvent``,
    Voice Live ``ServerEventSessionCreated``; required there, but nothing the session does
    depends on it: the id defaults to "")."""

    session: SessionInfo | None = None


class SessionUpdatedEvent(_Strict):
    """``session.updated``: as :class:`SessionCreatedEvent` (GA/beta ``SessionUpdatedEvent``,
    Voice Live ``ServerEventSessionUpdated``)."""

    session: SessionInfo | None = None


# ---- input audio buffer -----------------------------------------------------------------
class InputAudioBufferSpeechStartedEvent(_Strict):
    """``input_audio_buffer.speech_started``: ``item_id`` string and ``audio_start_ms``
    integer, both optional ("" and 0 when missing: the event itself is the barge-in signal).
    GA/beta ``InputAudioBufferSpeechStartedEvent``, Voice Live
    ``ServerEventInputAudioBufferSpeechStarted`` (both fields required there)."""

    item_id: str | None = None
    audio_start_ms: int | None = None


class InputAudioBufferSpeechStoppedEvent(_Strict):
    """``input_audio_buffer.speech_stopped``: ``item_id`` string and ``audio_end_ms``
    integer, both optional ("" and 0). GA/beta ``InputAudioBufferSpeechStoppedEvent``, Voice
    Live ``ServerEventInputAudioBufferSpeechStopped``."""

    item_id: str | None = None
    audio_end_ms: int | None = None


class InputAudioBufferCommittedEvent(_Strict):
    """``input_audio_buffer.committed``: ``item_id`` optional string (""). GA/beta
    ``InputAudioBufferCommittedEvent``, Voice Live ``ServerEventInputAudioBufferCommitted``."""

    item_id: str | None = None


# ---- responses ----------------------------------------------------------------------------
class ResponseInfo(_Strict):
    """The ``response`` object of ``response.created`` / ``response.done``: ``id`` and
    ``status`` optional strings. GA/beta ``RealtimeResponse`` (``id: Optional[str]``,
    ``status: Optional[Literal[completed, cancelled, failed, incomplete, in_progress]]``),
    Voice Live ``Response`` (``status: Optional[str | ResponseStatus]``, an open enum: any
    string is accepted)."""

    id: str | None = None
    status: str | None = None


class ResponseCreatedEvent(_Strict):
    """``response.created``: ``response`` optional object (GA/beta ``ResponseCreatedEvent``,
    Voice Live ``ServerEventResponseCreated``). A missing id still starts a response ("")."""

    response: ResponseInfo | None = None


class ResponseDoneEvent(_Strict):
    """``response.done``: ``response`` optional object; missing id is the active response,
    missing status is ``completed`` (GA/beta ``ResponseDoneEvent``, Voice Live
    ``ServerEventResponseDone``)."""

    response: ResponseInfo | None = None


class ResponseAudioDeltaEvent(_Strict):
    """``response.output_audio.delta`` (beta ``response.audio.delta``).

    - ``item_id``: required string (the audio is accounted per item for truncation).
    - ``delta``: required string, base64 PCM16 (decoded by the session: bad base64 is
      invalid, an odd byte count is not).
    - ``response_id``: optional string (the active response when missing).

    GA ``ResponseAudioDeltaEvent``, beta ``ResponseAudioDeltaEvent``, Voice Live
    ``ServerEventResponseAudioDelta`` (all three fields required there).
    """

    item_id: str
    delta: str
    response_id: str | None = None


class ResponseAudioDoneEvent(_Strict):
    """``response.output_audio.done`` (beta ``response.audio.done``): ``item_id`` required
    string (the item marked done), ``response_id`` optional string (""). GA/beta
    ``ResponseAudioDoneEvent``, Voice Live ``ServerEventResponseAudioDone``."""

    item_id: str
    response_id: str | None = None


class ResponseAudioTranscriptDeltaEvent(_Strict):
    """``response.output_audio_transcript.delta`` (beta ``response.audio_transcript.delta``):
    ``delta`` required string, ``item_id`` optional string (""). GA/beta
    ``ResponseAudioTranscriptDeltaEvent``, Voice Live ``ServerEventResponseAudioTranscriptDelta``."""

    delta: str
    item_id: str | None = None


class ResponseAudioTranscriptDoneEvent(_Strict):
    """``response.output_audio_transcript.done`` (beta ``response.audio_transcript.done``):
    ``transcript`` required string, ``item_id`` optional string (""). GA/beta
    ``ResponseAudioTranscriptDoneEvent``, Voice Live ``ServerEventResponseAudioTranscriptDone``."""

    transcript: str
    item_id: str | None = None


class ConversationItemInputAudioTranscriptionCompletedEvent(_Strict):
    """``conversation.item.input_audio_transcription.completed``: ``transcript`` required
    string, ``item_id`` optional string (""). GA/beta
    ``ConversationItemInputAudioTranscriptionCompletedEvent``, Voice Live
    ``ServerEventConversationItemInputAudioTranscriptionCompleted``."""

    transcript: str
    item_id: str | None = None


# ---- output items (tool calls) --------------------------------------------------------------
class OutputItem(_Strict):
    """The ``item`` of ``response.output_item.done``: ``type`` and ``status`` optional
    strings; the rest is kept (``model_extra``) and, for a ``function_call``, validated by
    :class:`FunctionCallItem`. GA ``ConversationItem`` (a union discriminated by ``type``),
    beta ``ConversationItem`` (``type``, ``status`` optional), Voice Live ``ResponseItem``."""

    type: str | None = None
    status: str | None = None


class FunctionCallItem(_Strict):
    """A ``function_call`` item (its fields other than ``type``/``status``):

    - ``call_id``: required non-empty string (the answer is tied to it). Voice Live
      ``ResponseFunctionCallItem.call_id: str``; optional in GA
      ``RealtimeConversationItemFunctionCall`` and beta ``ConversationItem``, but a call
      without one cannot be answered.
    - ``name``: required string. GA ``RealtimeConversationItemFunctionCall.name: str``, Voice
      Live ``ResponseFunctionCallItem.name: str`` (optional in beta ``ConversationItem``).
    - ``arguments``: optional string ("": GA and Voice Live require it, beta does not).
    """

    call_id: Annotated[str, Field(min_length=1)]
    name: str
    arguments: str | None = None


class ResponseOutputItemDoneEvent(_Strict):
    """``response.output_item.done``: ``item`` optional object (only function calls are
    acted on), ``response_id`` optional string (the active response). GA/beta
    ``ResponseOutputItemDoneEvent``, Voice Live ``ServerEventResponseOutputItemDone``
    (``item: Optional[ResponseItem]``)."""

    item: OutputItem | None = None
    response_id: str | None = None


# ---- error ---------------------------------------------------------------------------------
def _text(value: Any) -> str:
    """An error field as text: strings as they are, numbers written out, anything else ""."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ""


def _event_id(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class ErrorDetails(_Strict):
    """The ``error`` object of an ``error`` event. Never invalid: an error must always reach
    the application (fatal codes, ``session_expired``), so its fields are read leniently:
    ``code``, ``type`` and ``message`` become "" when missing, null or not a string (numbers
    are written out), ``event_id`` None unless a non-empty string. GA ``RealtimeError``
    (``message``, ``type`` required; ``code``, ``event_id`` optional), beta
    ``ErrorEvent.Error`` (same), Voice Live ``ServerEventErrorDetails`` (same)."""

    code: Annotated[str, BeforeValidator(_text)] = ""
    type: Annotated[str, BeforeValidator(_text)] = ""
    message: Annotated[str, BeforeValidator(_text)] = ""
    event_id: Annotated[str | None, BeforeValidator(_event_id)] = None


class ErrorEvent(_Strict):
    """``error``: ``error`` optional object (missing or null is an error with every field
    ""); invalid only when it is not an object. GA ``RealtimeErrorEvent``, beta
    ``ErrorEvent``, Voice Live ``ServerEventError``."""

    error: ErrorDetails | None = None


#: GA event type -> model, for every server event type the session acts on
SERVER_EVENT_MODELS: dict[str, type[BaseModel]] = {
    "session.created": SessionCreatedEvent,
    "session.updated": SessionUpdatedEvent,
    "input_audio_buffer.speech_started": InputAudioBufferSpeechStartedEvent,
    "input_audio_buffer.speech_stopped": InputAudioBufferSpeechStoppedEvent,
    "input_audio_buffer.committed": InputAudioBufferCommittedEvent,
    "response.created": ResponseCreatedEvent,
    "response.output_audio.delta": ResponseAudioDeltaEvent,
    "response.output_audio.done": ResponseAudioDoneEvent,
    "response.output_audio_transcript.delta": ResponseAudioTranscriptDeltaEvent,
    "response.output_audio_transcript.done": ResponseAudioTranscriptDoneEvent,
    "conversation.item.input_audio_transcription.completed":
        ConversationItemInputAudioTranscriptionCompletedEvent,
    "response.output_item.done": ResponseOutputItemDoneEvent,
    "response.done": ResponseDoneEvent,
    "error": ErrorEvent,
}


def first_error(exc: ValidationError, prefix: str = "") -> tuple[str, str]:
    """``(field, detail)`` of the first error of ``exc``: the dotted path of the offending
    field (``response.status``), after ``prefix`` (``"item."``), and pydantic's message
    (never the value) cut to :data:`DETAIL_MAX` characters."""
    err = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    path = ".".join(str(part) for part in err["loc"])
    return prefix + path if path else prefix.rstrip("."), err["msg"][:DETAIL_MAX]
