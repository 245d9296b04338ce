"""Sans-I/O session core and the per-dialect mapping."""
import base64
import json

import pytest

from helpers import realtime_config as rt
from voxbox.realtime.dialects import auth_headers, build_url, canonical_event_type, session_config
from voxbox.realtime.session import (
    AudioDelta,
    ProtocolError,
    RealtimeSession,
    ResponseDone,
    ResponseStarted,
    ServerError,
    SessionReady,
    SpeechStarted,
)


def test_urls_per_dialect():
    assert build_url(rt()) == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    vl = rt(dialect="azure-voicelive", url="wss://r.services.ai.azure.com/voice-live/realtime",
            model="gpt-realtime")
    assert build_url(vl) == ("wss://r.services.ai.azure.com/voice-live/realtime?"
                             "api-version=2025-10-01&model=gpt-realtime")
    az = rt(dialect="openai-beta", url="wss://r.openai.azure.com/openai/realtime", deployment="dep")
    assert build_url(az) == ("wss://r.openai.azure.com/openai/realtime?"
                             "api-version=2025-04-01-preview&deployment=dep")
    kept = rt(url="wss://x.example/v1/realtime?model=mine")
    assert build_url(kept) == "wss://x.example/v1/realtime?model=mine"


def test_auth_headers():
    assert auth_headers(rt(), "k") == {"Authorization": "Bearer k"}
    assert auth_headers(rt(dialect="openai-beta"), "k") == {
        "Authorization": "Bearer k", "OpenAI-Beta": "realtime=v1"}
    az = rt(dialect="openai-beta", url="wss://r.openai.azure.com/openai/realtime")
    assert auth_headers(az, "k") == {"api-key": "k"}  # no beta header on Azure
    vl = rt(dialect="azure-voicelive", url="wss://r.services.ai.azure.com/voice-live/realtime")
    assert auth_headers(vl, "k") == {"api-key": "k"}


def test_session_shapes():
    ga = session_config(rt(voice="marin"))
    assert ga["type"] == "realtime"
    assert ga["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert ga["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert ga["audio"]["output"]["voice"] == "marin"
    beta = session_config(rt(dialect="openai-beta", voice="alloy"))
    assert beta["input_audio_format"] == "pcm16" and beta["voice"] == "alloy"
    assert beta["turn_detection"]["silence_duration_ms"] == 500
    vl = session_config(rt(dialect="azure-voicelive", voice="en-US-Ava:DragonHDLatestNeural"))
    assert vl["voice"] == {"name": "en-US-Ava:DragonHDLatestNeural", "type": "azure-standard"}
    assert vl["input_audio_sampling_rate"] == 24000
    ptt = session_config(rt(), turn_detection=False)
    assert ptt["audio"]["input"]["turn_detection"] is None


def test_beta_names_are_canonicalised():
    assert canonical_event_type("openai-beta", "response.audio.delta") == "response.output_audio.delta"
    assert canonical_event_type("azure-voicelive", "conversation.item.created") == "conversation.item.added"
    assert canonical_event_type("openai-ga", "response.audio.delta") == "response.audio.delta"


def ev(**kw):
    return json.dumps(kw)


def test_event_ids_and_session_update():
    s = RealtimeSession(rt(), prefix="t")
    s.start()
    s.append_audio(b"\x00\x00" * 960)
    msgs = [json.loads(m) for m in s.data_to_send()]
    assert [m["type"] for m in msgs] == ["session.update", "input_audio_buffer.append"]
    assert [m["event_id"] for m in msgs] == ["t_1", "t_2"]
    assert s.data_to_send() == []
    with pytest.raises(ValueError):
        s.append_audio(b"\x00")


def test_turn_and_audio_accounting_beta():
    s = RealtimeSession(rt(dialect="openai-beta"))
    out = s.receive(ev(type="session.updated", session={"id": "sess_1"}))
    assert out == [SessionReady("sess_1")]
    assert s.receive(ev(type="input_audio_buffer.speech_started", item_id="u1", audio_start_ms=10)) == [
        SpeechStarted("u1", 10)]
    assert s.receive(ev(type="response.created", response={"id": "r1"})) == [ResponseStarted("r1")]
    pcm = b"\x01\x00" * 2400
    (d,) = s.receive(ev(type="response.audio.delta", response_id="r1", item_id="a1",
                        delta=base64.b64encode(pcm).decode(), future_field=1))
    assert isinstance(d, AudioDelta) and d.pcm == pcm
    assert s.items["a1"].received_samples == 2400
    assert s.receive(ev(type="response.done", response={"id": "r1", "status": "completed"})) == [
        ResponseDone("r1", "completed")]
    assert s.response_id is None


def test_unknown_events_ignored_and_garbage_rejected():
    s = RealtimeSession(rt())
    assert s.receive(ev(type="some.new.event", x=1)) == []
    assert s.receive(ev(type="rate_limits.updated", rate_limits=[])) == []
    with pytest.raises(ProtocolError):
        s.receive("not json")
    with pytest.raises(ProtocolError):
        s.receive("[1,2]")


def test_error_event_links_cause_and_fatal():
    s = RealtimeSession(rt(), prefix="e")
    s.start()
    s.data_to_send()
    (err,) = s.receive(ev(type="error", error={"type": "invalid_request_error", "code": "invalid_value",
                                               "message": "bad", "event_id": "e_1"}))
    assert err == ServerError("invalid_value", "invalid_request_error", "bad", "e_1", "session.update", False)
    (fatal,) = s.receive(ev(type="error", error={"code": "invalid_api_key", "message": "no"}))
    assert fatal.fatal


def _playing_session():
    s = RealtimeSession(rt())
    s.receive(ev(type="response.created", response={"id": "r1"}))
    s.receive(ev(type="response.output_audio.delta", response_id="r1", item_id="a1",
                 delta=base64.b64encode(b"\x00\x01" * 24000).decode()))
    s.data_to_send()
    return s


def test_interrupt_truncates_played_ms_and_cancels_active_response():
    s = _playing_session()
    res = s.interrupt({"a1": 12000})
    msgs = [json.loads(m) for m in s.data_to_send()]
    assert [m["type"] for m in msgs] == ["response.cancel", "conversation.item.truncate"]
    assert msgs[1]["audio_end_ms"] == 500 and msgs[1]["item_id"] == "a1" and msgs[1]["content_index"] == 0
    assert res.truncated == {"a1": 500}
    # the item is closed: late deltas for it are dropped, no second truncate
    assert s.receive(ev(type="response.output_audio.delta", response_id="r1", item_id="a1",
                        delta=base64.b64encode(b"\x00\x01" * 10).decode())) == []
    s.interrupt({"a1": 24000})
    assert s.data_to_send() == [json.dumps({"event_id": s.data_to_send.__self__._prefix + "_3",
                                            "type": "response.cancel"}, separators=(",", ":"))]


def test_an_interrupted_response_plays_no_new_item_either():
    s = _playing_session()
    s.interrupt({"a1": 100})
    # the service goes on streaming the cancelled response under a new item id: dropped
    assert s.receive(ev(type="response.output_audio.delta", response_id="r1", item_id="a2",
                        delta=base64.b64encode(b"\x00\x01" * 10).decode())) == []
    assert "a2" not in s.items
    s.receive(ev(type="response.done", response={"id": "r1", "status": "cancelled"}))
    s.receive(ev(type="response.created", response={"id": "r2"}))
    (d,) = s.receive(ev(type="response.output_audio.delta", response_id="r2", item_id="b1",
                        delta=base64.b64encode(b"\x00\x01" * 10).decode()))
    assert d.item_id == "b1"  # the next response plays


def test_interrupt_never_truncates_past_received_and_deletes_unheard():
    s = _playing_session()
    s.receive(ev(type="response.done", response={"id": "r1", "status": "cancelled"}))
    res = s.interrupt({"a1": 10 ** 9}, cancel=True)
    assert not res.cancelled  # nothing active
    assert res.truncated == {} or res.truncated == {"a1": 1000}
    s2 = _playing_session()
    res2 = s2.interrupt({}, cancel=False)
    msgs = [json.loads(m) for m in s2.data_to_send()]
    assert [m["type"] for m in msgs] == ["conversation.item.delete"] and res2.deleted == ["a1"]


@pytest.mark.parametrize("dialect, part_type", [("openai-ga", "output_text"), ("openai-beta", "text"),
                                                ("azure-voicelive", "text")])
def test_add_text_item_content_types_per_dialect(dialect, part_type):
    s = RealtimeSession(rt(dialect=dialect))
    s.add_text_item("user", "hello")
    s.add_text_item("assistant", "hi there")
    user, assistant = (json.loads(m) for m in s.data_to_send())
    assert user["type"] == assistant["type"] == "conversation.item.create"
    assert user["item"]["content"] == [{"type": "input_text", "text": "hello"}]
    assert assistant["item"] == {"type": "message", "role": "assistant",
                                 "content": [{"type": part_type, "text": "hi there"}]}
    with pytest.raises(ValueError, match="role"):
        s.add_text_item("system", "x")
