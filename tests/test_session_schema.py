"""Per-event validation of server events (voxbox.realtime.events): a malformed event becomes one
InvalidEvent naming its first bad field, never an exception, and changes no session state."""
import base64
import copy
import json

import pytest
from pydantic import BaseModel

from helpers import realtime_config as rt
from voxbox.realtime import events as schema
from voxbox.realtime.dialects import _BETA_TO_GA
from voxbox.realtime.session import (
    _HANDLERS,
    AudioDelta,
    AudioDone,
    FunctionCallRequested,
    InputCommitted,
    InvalidEvent,
    ProtocolError,
    RealtimeSession,
    ResponseDone,
    ResponseStarted,
    ServerError,
    SessionCreated,
    SessionReady,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    TranscriptDone,
    UserTranscript,
)

DIALECTS = ("openai-ga", "openai-beta", "azure-voicelive")
_GA_TO_BETA = {ga: beta for beta, ga in _BETA_TO_GA.items()}
PCM = b"\x01\x00\x02\x00" * 240
B64 = base64.b64encode(PCM).decode()


def wire_type(dialect: str, ga_type: str) -> str:
    """The event type a server of ``dialect`` sends for the GA type ``ga_type``."""
    return ga_type if dialect == "openai-ga" else _GA_TO_BETA.get(ga_type, ga_type)


def send(s: RealtimeSession, event: dict) -> list:
    return s.receive(json.dumps(event))


# ---- valid examples, one per handled event type (GA names), and the fields read ---------------
VALID = {
    "session.created": {"type": "session.created", "event_id": "ev_1",
                        "session": {"id": "sess_9", "object": "realtime.session", "expires_at": 1_900_000_000}},
    "session.updated": {"type": "session.updated", "event_id": "ev_2", "session": {"id": "sess_9"}},
    "input_audio_buffer.speech_started": {"type": "input_audio_buffer.speech_started", "event_id": "ev_3",
                                          "item_id": "u2", "audio_start_ms": 120},
    "input_audio_buffer.speech_stopped": {"type": "input_audio_buffer.speech_stopped", "event_id": "ev_4",
                                          "item_id": "u2", "audio_end_ms": 980},
    "input_audio_buffer.committed": {"type": "input_audio_buffer.committed", "event_id": "ev_5",
                                     "item_id": "u2", "previous_item_id": None},
    "response.created": {"type": "response.created", "event_id": "ev_6",
                         "response": {"id": "r2", "object": "realtime.response", "status": "in_progress"}},
    "response.output_audio.delta": {"type": "response.output_audio.delta", "event_id": "ev_7",
                                    "response_id": "r1", "item_id": "a2", "output_index": 0,
                                    "content_index": 0, "delta": B64},
    "response.output_audio.done": {"type": "response.output_audio.done", "event_id": "ev_8",
                                   "response_id": "r1", "item_id": "a1", "output_index": 0, "content_index": 0},
    "response.output_audio_transcript.delta": {"type": "response.output_audio_transcript.delta",
                                               "event_id": "ev_9", "response_id": "r1", "item_id": "a1",
                                               "output_index": 0, "content_index": 0, "delta": "Hel"},
    "response.output_audio_transcript.done": {"type": "response.output_audio_transcript.done",
                                              "event_id": "ev_10", "response_id": "r1", "item_id": "a1",
                                              "output_index": 0, "content_index": 0, "transcript": "Hello"},
    "conversation.item.input_audio_transcription.completed": {
        "type": "conversation.item.input_audio_transcription.completed", "event_id": "ev_11",
        "item_id": "u1", "content_index": 0, "transcript": "hi there",
        "usage": {"type": "duration", "seconds": 1.2}},
    "response.output_item.done": {"type": "response.output_item.done", "event_id": "ev_12",
                                  "response_id": "r1", "output_index": 1,
                                  "item": {"id": "fc1", "object": "realtime.item", "type": "function_call",
                                           "status": "completed", "call_id": "call_1", "name": "get_time",
                                           "arguments": "{}"}},
    "response.done": {"type": "response.done", "event_id": "ev_13",
                      "response": {"id": "r1", "status": "cancelled", "output": [], "usage": None}},
    "error": {"type": "error", "event_id": "ev_14",
              "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "bad",
                        "param": None, "event_id": "t_1"}},
}

# path -> (JSON type the field must have, required?, lenient?). Lenient fields are read
# however they come (never an InvalidEvent).
STR, INT, OBJ, B64STR, ANY = "str", "int", "obj", "b64", "any"
FIELDS = {
    "session.created": {"session": (OBJ, False, False), "session.id": (STR, False, False),
                        "session.expires_at": (ANY, False, True)},
    "session.updated": {"session": (OBJ, False, False), "session.id": (STR, False, False)},
    "input_audio_buffer.speech_started": {"item_id": (STR, False, False),
                                          "audio_start_ms": (INT, False, False)},
    "input_audio_buffer.speech_stopped": {"item_id": (STR, False, False), "audio_end_ms": (INT, False, False)},
    "input_audio_buffer.committed": {"item_id": (STR, False, False)},
    "response.created": {"response": (OBJ, False, False), "response.id": (STR, False, False)},
    "response.output_audio.delta": {"item_id": (STR, True, False), "delta": (B64STR, True, False),
                                    "response_id": (STR, False, False)},
    "response.output_audio.done": {"item_id": (STR, True, False), "response_id": (STR, False, False)},
    "response.output_audio_transcript.delta": {"delta": (STR, True, False), "item_id": (STR, False, False)},
    "response.output_audio_transcript.done": {"transcript": (STR, True, False), "item_id": (STR, False, False)},
    "conversation.item.input_audio_transcription.completed": {"transcript": (STR, True, False),
                                                              "item_id": (STR, False, False)},
    "response.output_item.done": {"item": (OBJ, False, False), "item.type": (STR, False, False),
                                  "item.status": (STR, False, False), "item.call_id": (STR, True, False),
                                  "item.name": (STR, True, False), "item.arguments": (STR, False, False),
                                  "response_id": (STR, False, False)},
    "response.done": {"response": (OBJ, False, False), "response.id": (STR, False, False),
                      "response.status": (STR, False, False)},
    "error": {"error": (OBJ, False, False), "error.code": (ANY, False, True), "error.type": (ANY, False, True),
              "error.message": (ANY, False, True), "error.event_id": (ANY, False, True)},
}

REMOVED = object()
REPLACEMENTS = [1, 1.5, "x", {}, [], None, True, REMOVED]


def _json_type(value) -> str | None:
    if isinstance(value, bool) or value is None or value is REMOVED:
        return None
    if isinstance(value, int):
        return INT
    if isinstance(value, str):
        return STR
    if isinstance(value, dict):
        return OBJ
    return None  # float, list


def _replaced(event: dict, path: str, value) -> dict:
    event = copy.deepcopy(event)
    *parents, leaf = path.split(".")
    obj = event
    for p in parents:
        obj = obj[p]
    if value is REMOVED:
        del obj[leaf]
    else:
        obj[leaf] = value
    return event


def _primed(dialect: str) -> RealtimeSession:
    """A session in the middle of a turn: created, ready, response r1 active with audio
    item a1 received, a call of an earlier response waiting for its response.done."""
    s = RealtimeSession(rt(dialect=dialect), prefix="t")
    s.start()
    for ev in (VALID["session.created"], VALID["session.updated"],
               {"type": "response.created", "response": {"id": "r0"}},
               {"type": "response.output_item.done", "response_id": "r0",
                "item": {"type": "function_call", "call_id": "call_0", "name": "f", "arguments": "{}"}},
               {"type": "response.created", "response": {"id": "r1"}},
               {"type": "response.output_audio.delta", "response_id": "r1", "item_id": "a1", "delta": B64}):
        out = send(s, dict(ev, type=wire_type(dialect, ev["type"])))
        assert out and not any(isinstance(e, InvalidEvent) for e in out)
    s.data_to_send()
    return s


def _state(s: RealtimeSession):
    return (s.session_id, s.ready, s.response_id, copy.deepcopy(s.items), copy.deepcopy(s._calls),
            set(s._done_responses), set(s._respond_after), s.data_to_send())


def test_every_handled_type_has_a_model_a_handler_and_an_example():
    assert set(schema.SERVER_EVENT_MODELS) == set(VALID) == set(FIELDS) == set(_HANDLERS)
    for kind, model in schema.SERVER_EVENT_MODELS.items():
        assert issubclass(model, BaseModel) and model.__pydantic_complete__, kind  # built at import
        assert hasattr(RealtimeSession, _HANDLERS[kind]), kind


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_example_is_accepted(dialect, kind):
    s = _primed(dialect)
    out = send(s, dict(VALID[kind], type=wire_type(dialect, kind)))
    assert not any(isinstance(e, InvalidEvent) for e in out), out


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind, path", [(k, p) for k in sorted(FIELDS) for p in FIELDS[k]])
def test_fuzz_field_types(dialect, kind, path):
    """Each field read, replaced by each JSON type (and removed): receive never raises; it
    gives normal events or exactly one InvalidEvent naming that field, and then the state is
    unchanged. Wrong types are always invalid (lenient fields never); missing/null only for
    required fields."""
    ftype, required, lenient = FIELDS[kind][path]
    etype = wire_type(dialect, kind)
    for value in REPLACEMENTS:
        s = _primed(dialect)
        before = _state(s)
        event = _replaced(dict(VALID[kind], type=etype), path, value)
        out = send(s, event)  # must not raise
        assert isinstance(out, list)
        invalid = [e for e in out if isinstance(e, InvalidEvent)]
        what = f"{etype} {path}={value!r}"
        if invalid:
            assert out == invalid and len(out) == 1, what
            (inv,) = out
            assert inv.type == etype and inv.field == path, (what, inv)
            assert 0 < len(inv.detail) <= 120, (what, inv)
            assert _state(s) == before, what
        missing = value is None or value is REMOVED
        if lenient:
            expect_invalid = False
        elif missing:
            expect_invalid = required
        elif ftype == B64STR:
            expect_invalid = True  # not a string, or "x": not base64
        else:
            expect_invalid = _json_type(value) != ftype
        assert bool(invalid) == expect_invalid, (what, out)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_fuzz_unknown_and_odd_fields_are_ignored(kind):
    s = _primed("openai-ga")
    ref = send(_primed("openai-ga"), VALID[kind])
    odd = dict(VALID[kind], future_field={"x": [1, 2]}, model_config=1, __class__="x", model_extra=None,
               __pydantic_extra__=3, __dict__=4)
    for key in ("session", "response", "item", "error"):
        if isinstance(odd.get(key), dict):
            odd[key] = dict(odd[key], model_fields=1, __init__=2, __pydantic_fields_set__=3, extra_thing=[])
    assert send(s, odd) == ref


def test_detail_never_contains_the_value():
    s = _primed("openai-ga")
    big = "Z" * 5000
    for event in ({"type": "input_audio_buffer.speech_started", "item_id": "u", "audio_start_ms": big},
                  {"type": "response.output_audio.delta", "item_id": "a1", "delta": big + "!"},
                  {"type": "response.output_audio.delta", "item_id": {"k": big}, "delta": B64},
                  {"type": "response.output_item.done", "item": {"type": "function_call", "call_id": [big],
                                                                 "name": "f"}}):
        (inv,) = send(s, event)
        assert isinstance(inv, InvalidEvent) and "ZZZ" not in inv.detail and len(inv.detail) <= 120


def test_non_finite_and_float_numbers_are_invalid_not_exceptions():
    s = _primed("openai-ga")
    for raw in ('{"type": "input_audio_buffer.speech_started", "item_id": "u", "audio_start_ms": NaN}',
                '{"type": "input_audio_buffer.speech_stopped", "item_id": "u", "audio_end_ms": Infinity}',
                '{"type": "input_audio_buffer.speech_stopped", "item_id": "u", "audio_end_ms": 10.0}'):
        (inv,) = s.receive(raw)
        assert isinstance(inv, InvalidEvent) and inv.field in ("audio_start_ms", "audio_end_ms")


def test_audio_delta_bad_base64_and_odd_byte_count():
    s = _primed("openai-ga")
    before = _state(s)
    for bad in ("x", "AAA", "AA==AA==", "é===", "A" * 4801 + "!"):
        (inv,) = send(s, {"type": "response.output_audio.delta", "response_id": "r1", "item_id": "a1",
                          "delta": bad})
        assert inv == InvalidEvent("response.output_audio.delta", "delta", inv.detail), bad
        assert inv.detail.startswith("invalid base64")
    assert _state(s) == before
    # an odd byte count is not an error: the last byte is dropped (as before)
    odd = base64.b64encode(b"\x01\x00\x02").decode()
    for dialect, etype in (("openai-ga", "response.output_audio.delta"), ("openai-beta", "response.audio.delta")):
        s = _primed(dialect)
        n = s.items["a1"].received_samples
        (d,) = send(s, {"type": etype, "item_id": "a1", "delta": odd})
        assert d == AudioDelta("r1", "a1", b"\x01\x00") and s.items["a1"].received_samples == n + 1


def test_audio_delta_validation_keeps_the_base64_string():
    ev = dict(VALID["response.output_audio.delta"])
    assert schema.ResponseAudioDeltaEvent.model_validate(ev).delta is ev["delta"]


def test_function_call_without_call_id_or_name_is_invalid_not_protocol_error():
    s = _primed("openai-ga")
    before = _state(s)
    base = {"type": "response.output_item.done", "response_id": "r1"}
    fc = {"type": "function_call", "name": "f", "call_id": "c", "arguments": "{}"}
    cases = [({k: v for k, v in fc.items() if k != "call_id"}, "item.call_id"),
             (dict(fc, call_id=""), "item.call_id"),
             ({k: v for k, v in fc.items() if k != "name"}, "item.name"),
             (dict(fc, call_id=None), "item.call_id"),
             (dict(fc, arguments={"a": 1}), "item.arguments")]
    for item, path in cases:
        (inv,) = send(s, dict(base, item=item))
        assert isinstance(inv, InvalidEvent) and inv.field == path and inv.type == "response.output_item.done"
    assert _state(s) == before
    # not a function call, or a call cut by a cancel: nothing (as before)
    assert send(s, dict(base, item={"type": "message", "role": "assistant", "content": []})) == []
    assert send(s, dict(base, item=dict(fc, status="incomplete"))) == []
    assert send(s, dict(base, item=None)) == [] and send(s, base) == []


@pytest.mark.parametrize("event", [{"type": "error"}, {"type": "error", "error": None},
                                   {"type": "error", "error": {}}])
def test_error_with_every_field_missing_is_a_server_error(event):
    s = _primed("openai-ga")
    assert send(s, event) == [ServerError("", "", "", None, None, False)]


def test_error_fields_are_read_leniently():
    s = _primed("openai-ga")
    (err,) = send(s, {"type": "error", "error": {"code": 429, "type": None, "message": {"m": 1},
                                                 "event_id": 7}})
    assert err == ServerError("429", "", "", None, None, False)
    (err,) = send(s, {"type": "error", "error": {"code": "invalid_api_key", "type": ["x"], "message": True,
                                                 "event_id": "t_1"}})
    assert err == ServerError("invalid_api_key", "", "", "t_1", "session.update", True)
    for bad in (1, "session expired", [], True, 1.5):
        assert send(s, {"type": "error", "error": bad}) == [
            InvalidEvent("error", "error", "Input should be a valid dictionary or instance of ErrorDetails")]


def test_cancel_not_active_error_still_clears_the_response():
    s = _primed("openai-ga")
    assert s.response_id == "r1"
    (err,) = send(s, {"type": "error", "error": {"code": "response_cancel_not_active", "message": "none"}})
    assert err.code == "response_cancel_not_active" and s.response_id is None


@pytest.mark.parametrize("value, expected", [
    (1_900_000_000, 1_900_000_000), (1, 1), (0, None), (-5, None), ("1900000000", None),
    (1.9e9, None), (True, None), (None, None), ({}, None), (REMOVED, None)])
def test_session_created_expires_at(value, expected):
    s = RealtimeSession(rt())
    event = _replaced(VALID["session.created"], "session.expires_at", value)
    assert send(s, event) == [SessionCreated("sess_9", expected)]
    assert s.session_id == "sess_9"


def test_session_created_positional_construction_still_works():
    assert SessionCreated("s") == SessionCreated("s", None) == SessionCreated(session_id="s")
    assert SessionCreated("s").expires_at is None
    s = RealtimeSession(rt(dialect="azure-voicelive"))
    assert send(s, {"type": "session.created"}) == [SessionCreated("")]


def test_protocol_errors_and_unknown_types_unchanged():
    s = _primed("openai-ga")
    for bad in ("not json", "[1,2]", '{"type": 1}', '{"no": "type"}', "null", b"\xff\xfe", "[" * 100_000):
        with pytest.raises(ProtocolError):
            s.receive(bad)
    assert send(s, {"type": "some.new.event", "item_id": 1}) == []
    assert send(s, {"type": "response.output_text.delta", "delta": 5}) == []
    # beta names are not GA types: a GA server's "response.audio.delta" is unknown, not invalid
    assert send(s, {"type": "response.audio.delta", "item_id": 1, "delta": 2}) == []


# ---- valid events of all three dialects: the same application events as before ---------------
def _turn(dialect: str) -> list[dict]:
    def t(ga: str) -> str:
        return wire_type(dialect, ga)

    audio = base64.b64encode(b"\x01\x00" * 480).decode()
    session = {"id": "sess_1", "expires_at": 1_800_000_000}
    if dialect == "azure-voicelive":
        session["voice"] = {"name": "en-US-Ava:DragonHDLatestNeural", "type": "azure-standard"}
    return [
        {"type": "session.created", "event_id": "e1", "session": session},
        {"type": "session.updated", "event_id": "e2", "session": {"id": "sess_1", "object": "realtime.session"}},
        {"type": "session.updated", "event_id": "e2b", "session": {"id": "sess_1"}},
        {"type": "input_audio_buffer.speech_started", "event_id": "e3", "item_id": "u1", "audio_start_ms": 300},
        {"type": "input_audio_buffer.speech_stopped", "event_id": "e4", "item_id": "u1", "audio_end_ms": 1500},
        {"type": "input_audio_buffer.committed", "event_id": "e5", "item_id": "u1", "previous_item_id": None},
        {"type": t("conversation.item.added"), "event_id": "e6", "item": {"id": "u1", "type": "message"}},
        {"type": "response.created", "event_id": "e7", "response": {"id": "r1", "status": "in_progress"}},
        {"type": "response.output_item.added", "event_id": "e8", "response_id": "r1", "item": {"id": "a1"}},
        {"type": t("response.output_audio_transcript.delta"), "event_id": "e9", "response_id": "r1",
         "item_id": "a1", "output_index": 0, "content_index": 0, "delta": "Hi"},
        {"type": t("response.output_audio.delta"), "event_id": "e10", "response_id": "r1", "item_id": "a1",
         "output_index": 0, "content_index": 0, "delta": audio},
        {"type": t("response.output_audio.delta"), "event_id": "e11", "item_id": "a1", "delta": audio},
        {"type": t("response.output_audio.done"), "event_id": "e12", "response_id": "r1", "item_id": "a1"},
        {"type": t("response.output_audio_transcript.done"), "event_id": "e13", "response_id": "r1",
         "item_id": "a1", "transcript": "Hi."},
        {"type": "conversation.item.input_audio_transcription.completed", "event_id": "e14", "item_id": "u1",
         "content_index": 0, "transcript": "hello"},
        {"type": "response.output_item.done", "event_id": "e15", "response_id": "r1", "output_index": 1,
         "item": {"id": "fc", "type": "function_call", "status": "completed", "call_id": "c1",
                  "name": "get_time", "arguments": '{"tz":"UTC"}'}},
        {"type": "response.output_item.done", "event_id": "e16", "response_id": "r1",
         "item": {"id": "fc2", "type": "function_call", "status": "incomplete", "call_id": "c2", "name": "x"}},
        {"type": "response.done", "event_id": "e17", "response": {"id": "r1", "status": "completed"}},
        {"type": "response.created", "event_id": "e18", "response": {}},
        {"type": "response.done", "event_id": "e19", "response": {"id": None}},
        {"type": "rate_limits.updated", "event_id": "e20", "rate_limits": []},
        {"type": "error", "event_id": "e21", "error": {"type": "invalid_request_error", "code": "invalid_value",
                                                      "message": "bad", "param": None, "event_id": "t_1"}},
        {"type": "error", "event_id": "e22", "error": {"type": "invalid_request_error",
                                                      "code": "session_expired", "message": "expired"}},
    ]


def _expected(dialect: str) -> list:
    pcm = b"\x01\x00" * 480
    return [
        [SessionCreated("sess_1", 1_800_000_000)],
        [SessionReady("sess_1")],
        [],
        [SpeechStarted("u1", 300)],
        [SpeechStopped("u1", 1500)],
        [InputCommitted("u1")],
        [],
        [ResponseStarted("r1")],
        [],
        [TranscriptDelta("a1", "Hi")],
        [AudioDelta("r1", "a1", pcm)],
        [AudioDelta("r1", "a1", pcm)],
        [AudioDone("r1", "a1")],
        [TranscriptDone("a1", "Hi.")],
        [UserTranscript("u1", "hello")],
        [FunctionCallRequested("c1", "get_time", '{"tz":"UTC"}', "r1")],
        [],
        [ResponseDone("r1", "completed")],
        [ResponseStarted("")],
        [ResponseDone("", "completed")],
        [],
        [ServerError("invalid_value", "invalid_request_error", "bad", "t_1", "session.update", False)],
        [ServerError("session_expired", "invalid_request_error", "expired", None, None, False)],
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_valid_turn_gives_the_same_events_in_every_dialect(dialect):
    s = RealtimeSession(rt(dialect=dialect), prefix="t")
    s.start()
    s.data_to_send()
    got = [send(s, ev) for ev in _turn(dialect)]
    assert got == _expected(dialect)
    assert s.items["a1"].received_samples == 960 and s.items["a1"].done
    assert s.response_id is None and s._calls == {"r1": {"c1"}}
    s.function_output("c1", '{"time": "12:00"}')
    assert [json.loads(m)["type"] for m in s.data_to_send()] == ["conversation.item.create", "response.create"]
