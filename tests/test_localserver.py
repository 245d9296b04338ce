# Test dependencies (add to the `test` extra in pyproject.toml): openai, azure-ai-voicelive
# (server events are validated against openai.types.realtime (GA),
# openai.types.beta.realtime (beta) and azure.ai.voicelive.models (Voice Live)).
"""Local Realtime server: event order, errors and faults per dialect, over real sockets."""
from __future__ import annotations

import asyncio
import base64
import json
import time
import typing

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from helpers import run
from voxbox.parrot.server import (
    DIALECTS,
    EnergyVad,
    LocalRealtimeServer,
    LocalServerConfig,
    ServerRecord,
    ServerThread,
    SessionCore,
    SpeechVad,
    classify_request,
    speak_24k,
    threshold_to_probability,
)

RATE = 24_000

# ---------------------------------------------------------------------------------------
# official SDK validation
# ---------------------------------------------------------------------------------------
import azure.ai.voicelive.models as vl_models  # noqa: E402  (test dependencies: the SDK types)
import openai.types.beta.realtime as openai_beta_rt  # noqa: E402
import openai.types.realtime as openai_rt  # noqa: E402


def _type_map(union) -> dict[str, type]:
    out = {}
    args = typing.get_args(union)
    if args and typing.get_origin(union) is typing.Annotated:
        args = typing.get_args(args[0])
    for cls in args:
        lit = cls.model_fields["type"].annotation
        for v in typing.get_args(lit):
            out[v] = cls
    return out


GA_TYPES = _type_map(openai_rt.RealtimeServerEvent)
BETA_TYPES = _type_map(openai_beta_rt.RealtimeServerEvent)


def _azure_optional(ann) -> bool:
    if isinstance(ann, str):
        return ann.startswith("Optional[") or "None" in ann
    return type(None) in typing.get_args(ann)


# The Voice Live SDK reuses its request content part for server items: `audio` is required
# on RequestAudioContentPart, but servers echo user audio items as
# {"type": "input_audio", "transcript": ...} without the audio (as the OpenAI types allow).
AZURE_EXEMPT = {("RequestAudioContentPart", "audio")}


def _check_azure_model(model, where: str) -> None:
    from azure.ai.voicelive._utils.model_base import Model

    anns: dict = {}
    for klass in reversed(type(model).__mro__):
        anns.update(getattr(klass, "__annotations__", {}))
    for attr in type(model)._attr_to_rest_field:
        value = getattr(model, attr)          # forces deserialisation (base64, enums, dates)
        if value is None and (type(model).__name__, attr) not in AZURE_EXEMPT:
            assert _azure_optional(anns.get(attr, "Optional")), f"{where}.{attr} is required"
        elif isinstance(value, Model):
            _check_azure_model(value, f"{where}.{attr}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, Model):
                    _check_azure_model(v, f"{where}.{attr}[{i}]")


def validate_event(dialect: str, ev: dict) -> None:
    """Validate one server event against the official SDK types of its dialect."""
    if dialect == "voice-live":
        obj = vl_models.ServerEvent._deserialize(ev, [])
        assert type(obj) is not vl_models.ServerEvent, f"Voice Live SDK has no event {ev['type']}"
        _check_azure_model(obj, ev["type"])
        return
    table = GA_TYPES if DIALECTS[dialect].ga_names else BETA_TYPES
    cls = table.get(ev["type"])
    assert cls is not None, f"{dialect}: SDK has no server event {ev['type']!r}"
    cls.model_validate(ev)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def tone(seconds: float, freq: float = 440.0, amp: float = 0.3, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(rate * seconds), np.int16)


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode()


HEADERS = {
    "openai-ga": {"Authorization": "Bearer sk-test"},
    "openai-beta": {"Authorization": "Bearer sk-test", "OpenAI-Beta": "realtime=v1"},
    "azure-ga": {"api-key": "sk-test"},
    "azure-preview": {"api-key": "sk-test"},
    "voice-live": {"api-key": "sk-test"},
}


def names(dialect: str) -> dict[str, str]:
    ga = DIALECTS[dialect].ga_names
    return {
        "audio.delta": "response.output_audio.delta" if ga else "response.audio.delta",
        "audio.done": "response.output_audio.done" if ga else "response.audio.done",
        "tr.delta": "response.output_audio_transcript.delta" if ga else "response.audio_transcript.delta",
        "tr.done": "response.output_audio_transcript.done" if ga else "response.audio_transcript.done",
    }


class Client:
    def __init__(self, ws, dialect: str) -> None:
        self.ws, self.dialect = ws, dialect
        self.events: list[dict] = []
        self._n = 0

    @classmethod
    async def open(cls, server: LocalRealtimeServer, dialect: str, headers: dict | None = None) -> "Client":
        ws = await connect(server.url_for(dialect), additional_headers=HEADERS[dialect] if headers is None else headers, max_size=None)
        return cls(ws, dialect)

    async def send(self, ev: dict) -> str:
        self._n += 1
        ev = {"event_id": f"evt_client_{self._n}", **ev}
        await self.ws.send(json.dumps(ev))
        return ev["event_id"]

    async def recv(self, timeout: float = 5.0) -> dict:
        ev = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        assert ev["event_id"].startswith("event_")
        validate_event(self.dialect, ev)
        self.events.append(ev)
        return ev

    async def until(self, type_: str, timeout: float = 5.0, pred=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            ev = await self.recv(max(0.01, deadline - time.monotonic()))
            if ev["type"] == type_ and (pred is None or pred(ev)):
                return ev

    async def quiet(self, seconds: float = 0.3) -> list[dict]:
        """Collect everything that arrives within ``seconds``."""
        got = []
        try:
            while True:
                got.append(await self.recv(seconds))
        except asyncio.TimeoutError:
            return got

    async def append(self, pcm: np.ndarray, chunk_ms: int = 20, rate: int = RATE) -> None:
        step = rate * chunk_ms // 1000
        for i in range(0, len(pcm), step):
            await self.send({"type": "input_audio_buffer.append", "audio": b64(pcm[i:i + step])})

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def close(self) -> None:
        await self.ws.close()


async def started(dialect: str = "openai-ga", **cfg):
    server = LocalRealtimeServer(LocalServerConfig(**cfg))
    await server.start()
    client = await Client.open(server, dialect)
    created = await client.until("session.created")
    return server, client, created


def ptt_update(dialect: str, transcription: bool = False) -> dict:
    if DIALECTS[dialect].ga_names:
        inp: dict = {"turn_detection": None}
        if transcription:
            inp["transcription"] = {"model": "gpt-4o-mini-transcribe"}
        return {"type": "session.update", "session": {"type": "realtime", "audio": {"input": inp}}}
    s: dict = {"turn_detection": None}
    if transcription:
        s["input_audio_transcription"] = {"model": "whisper-1" if dialect != "voice-live" else "azure-speech"}
    return {"type": "session.update", "session": s}


def order_ok(types: list[str], expected: list[str]) -> bool:
    """``expected`` occurs in ``types`` as a subsequence."""
    it = iter(types)
    return all(any(t == e for t in it) for e in expected)


# ---------------------------------------------------------------------------------------
# pure cores
# ---------------------------------------------------------------------------------------
def test_classify_request_table():
    h = {"authorization": "Bearer k"}
    assert classify_request("/v1/realtime?model=gpt-realtime", h).dialect.name == "openai-ga"
    assert classify_request("/v1/realtime?model=m", {**h, "openai-beta": "realtime=v1"}).dialect.name == "openai-beta"
    assert classify_request("/openai/v1/realtime?model=d", {"api-key": "k"}).dialect.name == "azure-ga"
    d = classify_request("/openai/realtime?api-version=2025-04-01-preview&deployment=dep", {"api-key": "k"})
    assert d.dialect.name == "azure-preview" and d.model == "dep" and d.auth == "api-key"
    assert classify_request("/voice-live/realtime?api-version=2025-10-01&model=gpt-realtime", h).dialect.name == "voice-live"
    assert classify_request("/openai/realtime?deployment=dep", {}).http_status == 400
    assert classify_request("/nope", {}).http_status == 404
    bad = classify_request("/v1/realtime?model=m", {"authorization": "Bearer wrong"}, expected_key="k")
    assert bad.fatal[1] == "invalid_api_key" and bad.fatal[3] == 3000
    ok = classify_request("/openai/v1/realtime?model=m", {"api-key": "k"}, expected_key="k")
    assert ok.fatal is None
    beta_on_ga = classify_request("/openai/v1/realtime?model=m", {"api-key": "k", "openai-beta": "realtime=v1"})
    assert beta_on_ga.fatal[1] == "beta_api_shape_disabled" and beta_on_ga.fatal[3] == 4000
    ga_only = classify_request("/v1/realtime?model=m", {**h, "openai-beta": "realtime=v1"}, openai_beta_allowed=False)
    assert ga_only.fatal[3] == 4000


def test_classify_request_accept_key_predicate():
    seen: list = []

    def accept(key):
        seen.append(key)
        return key == "ek_good"

    path = "/v1/realtime?model=m"
    assert classify_request(path, {"authorization": "Bearer ek_good"}, accept_key=accept).fatal is None
    bad = classify_request(path, {"authorization": "Bearer ek_other"}, accept_key=accept)
    assert bad.fatal[1] == "invalid_api_key" and bad.fatal[3] == 3000
    assert classify_request("/openai/v1/realtime?model=m", {"api-key": "ek_good"}, accept_key=accept).fatal is None
    assert classify_request(path, {}, accept_key=accept).fatal[1] == "invalid_api_key"
    assert seen == ["ek_good", "ek_other", "ek_good", None]       # the presented key, None if none
    # with an expected key too, both must pass
    assert classify_request(path, {"authorization": "Bearer ek_good"}, expected_key="k",
                            accept_key=accept).fatal[1] == "invalid_api_key"
    assert classify_request("/nope", {}, accept_key=accept).http_status == 404


def test_accept_key_option_at_the_handshake():
    from websockets.sync.client import connect as sync_connect

    def first(ws):
        return json.loads(ws.recv(timeout=5))

    with ServerThread(accept_key=lambda k: k == "ek_1") as st:
        with sync_connect(st.url, additional_headers={"Authorization": "Bearer ek_1"}) as ws:
            assert first(ws)["type"] == "session.created"
        with sync_connect(st.url, additional_headers={"Authorization": "Bearer ek_2"}) as ws:
            ev = first(ws)
            assert ev["type"] == "error" and ev["error"]["code"] == "invalid_api_key"


def test_reconnect_time_is_the_first_session_created_after_a_time():
    rec = ServerRecord()
    a = rec._open("openai-ga", "/v1/realtime", "bearer")
    a.server_events.append({"type": "session.created", "t": a.t_open + 0.01})
    since = time.monotonic()
    assert rec.reconnect_time(since) is None
    b = rec._open("openai-ga", "/v1/realtime", "bearer")
    assert rec.reconnect_time(since) is None                   # open, no session.created yet
    b.server_events += [{"type": "x", "t": b.t_open}, {"type": "session.created", "t": since + 0.25}]
    c = rec._open("openai-ga", "/v1/realtime", "bearer")
    c.server_events.append({"type": "session.created", "t": since + 0.5})
    assert rec.reconnect_time(since) == pytest.approx(0.25)
    assert rec.connection(1).session_created_t() == since + 0.25


def test_speak_24k_is_espeak_at_the_output_rate():
    from voxbox.audio.speech import render_speech

    x = speak_24k("Hello there.")
    src = render_speech("Hello there.")
    assert x.dtype == np.int16 and abs(x.size - src.size * 3 // 2) <= 2
    assert np.max(np.abs(x.astype(np.int32))) > 1000


def test_energy_vad_honours_prefix_and_silence():
    vad = EnergyVad(RATE, threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    pcm = np.concatenate([silence(1.0), tone(1.0), silence(1.0)])
    events = []
    for i in range(0, len(pcm), 480):
        events += vad.feed(pcm[i:i + 480])
    assert [k for k, _ in events] == ["start", "stop"]
    start_ms = events[0][1] * 1000 // RATE
    stop_ms = events[1][1] * 1000 // RATE
    assert start_ms == 700                   # onset 1000 ms - prefix 300 ms
    assert stop_ms == 2500                   # last voiced 2000 ms + silence 500 ms


# ---------------------------------------------------------------------------------------
# speech VAD (Silero): speech at any level starts a turn, noise and silence do not
# ---------------------------------------------------------------------------------------
UTTERANCE = "What will the weather be like tomorrow?"
VAD_TOLERANCE_MS = 100


def speech_clip(dbfs: float, rate: int = RATE, lead_s: float = 0.8, tail_s: float = 1.0,
                text: str = UTTERANCE) -> tuple[np.ndarray, int, int]:
    """espeak-ng speech with its active part (first to last sample above 1 % of the peak)
    at ``dbfs`` RMS, between ``lead_s`` and ``tail_s`` of digital silence. Returns
    (int16 samples, onset, offset) with onset/offset as sample indices of the clip."""
    from voxbox.audio.speech import render_speech

    x = (speak_24k(text) if rate == RATE else render_speech(text)).astype(np.float64)
    a = np.abs(x)
    idx = np.flatnonzero(a > 0.01 * a.max())
    on, off = int(idx[0]), int(idx[-1]) + 1
    x = x[on:off] * (32768.0 * 10 ** (dbfs / 20) / np.sqrt(np.mean(x[on:off] ** 2)))
    lead = int(lead_s * rate)
    pcm = np.concatenate([np.zeros(lead), x, np.zeros(int(tail_s * rate))])
    return np.clip(np.round(pcm), -32768, 32767).astype(np.int16), lead, lead + len(x)


def feed_all(vad, pcm: np.ndarray, chunk: int = 480) -> list[tuple[str, int]]:
    events = []
    for i in range(0, len(pcm), chunk):
        events += vad.feed(pcm[i:i + chunk])
    return events


def ms(samples: int, rate: int = RATE) -> float:
    return samples * 1000 / rate


@pytest.mark.parametrize("dbfs", [-20, -35, -50])     # -50: residual echo of the assistant's voice
def test_speech_vad_hears_speech_at_any_level(dbfs):
    pcm, onset, offset = speech_clip(dbfs)
    vad = SpeechVad(RATE, threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    events = feed_all(vad, pcm)
    assert [k for k, _ in events] == ["start", "stop"], events
    (_, start), (_, stop) = events
    # start = onset - prefix padding, stop = last voiced sample + silence (EnergyVad's semantics)
    assert abs(ms(start + vad.prefix - onset)) <= VAD_TOLERANCE_MS, (ms(start), ms(onset))
    assert abs(ms(stop - vad.silence - offset)) <= VAD_TOLERANCE_MS, (ms(stop), ms(offset))
    assert not vad.speaking and vad.pos == len(pcm)


def test_speech_vad_at_16k_prefix_padding_and_session_timeline():
    """Voice Live's 16 kHz input (no resampling); a VAD built mid-session (``pos``) reports
    session-timeline positions; prefix padding and silence as configured."""
    pcm, onset, offset = speech_clip(-30, rate=16000)
    vad = SpeechVad(16000, prefix_padding_ms=100, silence_duration_ms=800)
    vad.pos = base = 123_456
    events = feed_all(vad, pcm, chunk=320)
    assert [k for k, _ in events] == ["start", "stop"], events
    (_, start), (_, stop) = events
    assert start - base >= 0 and abs(ms(start - base + 1600 - onset, 16000)) <= VAD_TOLERANCE_MS
    assert abs(ms(stop - base - 12800 - offset, 16000)) <= VAD_TOLERANCE_MS
    assert vad.pos == base + len(pcm)


def test_speech_vad_ignores_noise_tones_and_silence():
    from voxbox.audio.speech import pink_noise

    n = 4 * RATE
    rng = np.random.default_rng(7)
    cases = {
        "white -30 dBFS": rng.standard_normal(n) * 32768 * 10 ** (-30 / 20),
        "pink -30 dBFS": pink_noise(n, -30.0, seed=5, rate=RATE),
        "silence": np.zeros(n),
        "dither": rng.integers(-1, 2, n).astype(np.float64),
        # not speech to a speech VAD (tests that send tones as "speech" use vad="energy")
        "tone -20 dBFS": tone(4.0, amp=0.1 * 2 ** 0.5).astype(np.float64),
    }
    for name, x in cases.items():
        vad = SpeechVad(RATE)
        assert feed_all(vad, np.clip(np.round(x), -32768, 32767).astype(np.int16)) == [], name


def test_speech_vad_threshold_hysteresis_and_skip_to():
    assert threshold_to_probability(0.5) == 0.5 and threshold_to_probability(0.8) == 0.8
    assert threshold_to_probability(0.0) == 0.05 and threshold_to_probability(1.0) == 0.95
    vad = SpeechVad(RATE, threshold=0.7)
    assert vad.start_p == 0.7 and vad.stop_p == pytest.approx(0.55)
    assert vad.frame == 768 and vad.min_frames == 2            # 32 ms chunks; 60 ms -> 2 chunks
    # a commit/clear while speaking (skip_to) forgets the turn; speech that goes on after
    # it starts a new one no earlier than the skip point
    pcm, onset, _ = speech_clip(-30)
    mid = onset + RATE // 2
    first = feed_all(vad, pcm[:mid])
    assert [k for k, _ in first] == ["start"] and vad.speaking
    vad.skip_to(mid)
    assert not vad.speaking
    rest = feed_all(vad, pcm[mid:])
    assert [k for k, _ in rest] == ["start", "stop"], rest
    assert mid - vad.prefix <= rest[0][1] <= mid + RATE // 10


def test_vad_option_selects_the_detector():
    td = {"type": "session.update", "session": {"turn_detection": {"type": "azure_semantic_vad"}}}
    for dialect in ("openai-ga", "voice-live"):
        assert isinstance(SessionCore(DIALECTS[dialect]).vad, SpeechVad)            # the default
        assert isinstance(SessionCore(DIALECTS[dialect], config=LocalServerConfig(vad="energy")).vad, EnergyVad)
    core = SessionCore(DIALECTS["voice-live"])
    core.handle_event(td)
    assert isinstance(core.vad, SpeechVad)
    core = SessionCore(DIALECTS["openai-beta"])
    core.handle_event({"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad"}}})
    assert isinstance(core.vad, SpeechVad) and core.vad.silence == 600 * RATE // 1000
    assert isinstance(LocalRealtimeServer(vad="energy").config.vad, str)
    with pytest.raises(ValueError):
        LocalServerConfig(vad="loud")


def test_speech_vad_turn_and_quiet_barge_in_over_the_wire():
    """Default server: a -20 dBFS utterance is a turn (positions within 100 ms of the
    speech's onset - prefix and offset + silence); speech at -50 dBFS while the reply streams (the
    assistant's residual echo) is speech too: speech_started, the response is cancelled."""
    async def go():
        server, c, _ = await started("openai-ga", pace_min=1.0, pace_max=1.0)
        pcm, onset, offset = speech_clip(-20, lead_s=0.5, tail_s=0.8)
        await c.append(pcm)
        started_ev = await c.until("input_audio_buffer.speech_started", timeout=10)
        stopped_ev = await c.until("input_audio_buffer.speech_stopped", timeout=10)
        assert abs(started_ev["audio_start_ms"] + 300 - ms(onset)) <= VAD_TOLERANCE_MS
        assert abs(stopped_ev["audio_end_ms"] - 500 - ms(offset)) <= VAD_TOLERANCE_MS
        committed = await c.until("input_audio_buffer.committed")
        assert committed["item_id"] == started_ev["item_id"]
        created = await c.until("response.created", timeout=10)
        rid = created["response"]["id"]
        await c.until(names("openai-ga")["audio.delta"])
        echo, e_on, _ = speech_clip(-50, lead_s=0.2, tail_s=0.3)
        await c.append(echo)
        barge = await c.until("input_audio_buffer.speech_started", timeout=10)
        assert abs(barge["audio_start_ms"] + 300 - ms(len(pcm) + e_on)) <= VAD_TOLERANCE_MS
        done = await c.until("response.done", pred=lambda e: e["response"]["id"] == rid)
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        await c.close()
        await server.stop()
    run(go())


def test_core_pacing_is_deterministic_with_a_seed():
    def chunks(seed):
        core = SessionCore(DIALECTS["openai-beta"], config=LocalServerConfig(seed=seed))
        core.handle_event({"type": "session.update", "session": {"turn_detection": None}})
        core.handle_event({"type": "input_audio_buffer.append", "audio": b64(tone(2.0))})
        core.handle_event({"type": "input_audio_buffer.commit"})
        core.handle_event({"type": "response.create"})
        return core.active.chunks, core.active.pace

    assert chunks(5) == chunks(5) and chunks(5) != chunks(6)
    sizes, pace = chunks(5)
    assert sum(sizes) == 2 * RATE and all(2.0 <= p <= 4.0 for p in pace)


def test_core_scripted_reply_audio_in_turn():
    """``reply_audio``: replies to audio input speak the clips in turn, not the input."""
    clips = [np.full(RATE // 2, 100, np.int16), np.full(RATE, 200, np.int16)]
    core = SessionCore(DIALECTS["openai-beta"], config=LocalServerConfig(seed=1, reply_audio=clips))
    core.handle_event({"type": "session.update", "session": {"turn_detection": None}})
    got = []
    for _ in range(3):
        core.handle_event({"type": "input_audio_buffer.append", "audio": b64(tone(2.0))})
        core.handle_event({"type": "input_audio_buffer.commit"})
        core.handle_event({"type": "response.create"})
        got.append((core.active.audio, sum(core.active.chunks)))
        core.handle_event({"type": "response.cancel"})
    assert [(a.size, n) for a, n in got] == [(RATE // 2, RATE // 2), (RATE, RATE), (RATE // 2, RATE // 2)]
    assert got[1][0][0] == 200


def test_core_truncate_and_response_state_without_sockets():
    core = SessionCore(DIALECTS["openai-ga"], config=LocalServerConfig(seed=1))
    core.open_events()
    core.handle_event({"type": "session.update", "session": {"type": "realtime",
                                                             "audio": {"input": {"turn_detection": None}}}})
    core.handle_event({"type": "input_audio_buffer.append", "audio": b64(tone(0.5))})
    out = core.handle_event({"type": "input_audio_buffer.commit"})
    assert [e["type"] for e in out] == ["input_audio_buffer.committed", "conversation.item.added",
                                        "conversation.item.done"]
    out = core.handle_event({"type": "response.create", "event_id": "c1"})
    assert out[0]["type"] == "response.created"
    err = core.handle_event({"type": "response.create", "event_id": "c2"})[0]
    assert err["error"]["code"] == "conversation_already_has_active_response" and err["error"]["event_id"] == "c2"
    evs = core.step_response() + core.step_response()      # item events + two audio chunks
    item_id = core.active.item_id
    sent = core.active.samples_sent * 1000 // RATE
    bad = core.handle_event({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                             "audio_end_ms": sent + 1})[0]
    assert bad["error"]["code"] == "invalid_value" and bad["error"]["param"] == "audio_end_ms"
    ok = core.handle_event({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                            "audio_end_ms": sent})[0]
    assert ok["type"] == "conversation.item.truncated"
    done = core.handle_event({"type": "response.cancel"})
    assert done[-2]["type"] == "response.done" and done[-2]["response"]["status"] == "cancelled"
    assert done[-2]["response"]["status_details"]["reason"] == "client_cancelled"
    assert core.handle_event({"type": "response.cancel"})[0]["error"]["code"] == "response_cancel_not_active"
    assert any(e["type"] == "response.output_audio.delta" for e in evs)


# ---------------------------------------------------------------------------------------
# full server-VAD turn, every dialect
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_server_vad_turn_event_order(dialect):
    async def go():
        server, c, created = await started(dialect, seed=3, vad="energy")   # a tone as "speech"
        s = created["session"]
        assert s["id"].startswith("sess_")
        if DIALECTS[dialect].ga_names:
            assert s["type"] == "realtime"
            assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
            assert s["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        else:
            assert s["input_audio_format"] == "pcm16" and s["turn_detection"]["type"] == "server_vad"
            assert "voice" in s
        if dialect == "voice-live":
            assert s["voice"]["type"] == "azure-standard"
        t0 = time.monotonic()
        await c.append(np.concatenate([silence(0.5), tone(1.0), silence(1.0)]))
        done = await c.until("response.done", timeout=10)
        elapsed = time.monotonic() - t0
        n = names(dialect)
        types = c.types()
        user_item = ["conversation.item.added", "conversation.item.done"] if DIALECTS[dialect].ga_names \
            else ["conversation.item.created"]
        asst_item = ["conversation.item.added"] if DIALECTS[dialect].ga_names else ["conversation.item.created"]
        expected = ["session.created", "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                    "input_audio_buffer.committed", *user_item, "response.created", "response.output_item.added",
                    *asst_item, "response.content_part.added", n["tr.delta"], n["audio.delta"], n["audio.done"],
                    n["tr.done"], "response.content_part.done", "response.output_item.done", "response.done"]
        assert order_ok(types, expected), types
        if dialect == "azure-preview":
            assert types[1] == "conversation.created"
        started_ev = next(e for e in c.events if e["type"] == "input_audio_buffer.speech_started")
        stopped_ev = next(e for e in c.events if e["type"] == "input_audio_buffer.speech_stopped")
        committed = next(e for e in c.events if e["type"] == "input_audio_buffer.committed")
        assert started_ev["audio_start_ms"] == 200            # onset 500 ms - prefix 300 ms
        default_silence = 200 if dialect == "azure-preview" else 500
        assert stopped_ev["audio_end_ms"] == 1500 + default_silence
        assert started_ev["item_id"] == stopped_ev["item_id"] == committed["item_id"]
        # parrot: the reply audio is the committed utterance, sent in chunks of varying size
        deltas = [e for e in c.events if e["type"] == n["audio.delta"]]
        sizes = [len(base64.b64decode(e["delta"])) // 2 for e in deltas]
        utter = stopped_ev["audio_end_ms"] - started_ev["audio_start_ms"]
        assert sum(sizes) == utter * RATE // 1000
        assert len(set(sizes)) > 2 and min(sizes[:-1]) >= 50 * 24 and max(sizes) <= 250 * 24
        assert elapsed < 0.5 + (utter / 1000) / 2 + 1.0           # faster than real time (2-4x)
        tr = next(e for e in c.events if e["type"] == n["tr.done"])["transcript"]
        assert tr == "".join(e["delta"] for e in c.events if e["type"] == n["tr.delta"])
        assert tr.startswith("You said:")
        assert done["response"]["status"] == "completed" and done["response"]["usage"]["total_tokens"] > 0
        ids = [e["event_id"] for e in c.events]
        assert len(ids) == len(set(ids))
        rest = await c.quiet(0.2)
        if DIALECTS[dialect].sends_rate_limits:
            assert "rate_limits.updated" in [e["type"] for e in rest]
        rec = server.record.connection(0)
        assert rec.dialect == dialect
        assert rec.uplink_samples == int(2.5 * RATE) == server.record.uplink_samples_total
        assert rec.server_types() == c.types()
        assert rec.client_types()[0] == "input_audio_buffer.append" and "audio" not in rec.client_events[0]
        assert all("delta" not in e for e in rec.server_events if e["type"] == n["audio.delta"])
        await c.close()
        await server.stop()
    run(go())


def test_voice_live_16k_input_and_azure_fields():
    async def go():
        server, c, _ = await started("voice-live", vad="energy")          # a tone as "speech"
        await c.send({"type": "session.update", "session": {
            "input_audio_sampling_rate": 16000,
            "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
            "input_audio_echo_cancellation": {"type": "server_echo_cancellation"},
            "voice": {"name": "en-US-Ava:DragonHDLatestNeural", "type": "azure-standard"},
            "turn_detection": {"type": "azure_semantic_vad", "silence_duration_ms": 400},
            "input_audio_transcription": {"model": "azure-speech"}}})
        upd = await c.until("session.updated")
        assert upd["session"]["turn_detection"]["type"] == "azure_semantic_vad"
        await c.append(np.concatenate([silence(0.3, 16000), tone(0.6, rate=16000), silence(0.6, 16000)]), rate=16000)
        await c.until("response.done", timeout=10)
        await c.quiet(0.2)
        assert "conversation.item.input_audio_transcription.completed" in c.types()
        samples = sum(len(base64.b64decode(e["delta"])) // 2 for e in c.events if e["type"] == "response.audio.delta")
        assert samples == (600 + 400 + 300) * 24                 # (speech + silence + prefix) at 24 kHz
        await c.close()
        await server.stop()
    run(go())


# ---------------------------------------------------------------------------------------
# push-to-talk
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["openai-ga", "openai-beta", "voice-live"])
def test_push_to_talk_commit_and_response_create(dialect):
    async def go():
        server, c, _ = await started(dialect)
        await c.send(ptt_update(dialect, transcription=True))
        upd = await c.until("session.updated")
        td = upd["session"]["audio"]["input"]["turn_detection"] if DIALECTS[dialect].ga_names \
            else upd["session"]["turn_detection"]
        assert td is None
        await c.append(np.concatenate([tone(0.8), silence(1.0)]))
        assert not [e for e in await c.quiet(0.2) if e["type"].startswith("input_audio_buffer.speech")]
        await c.send({"type": "input_audio_buffer.commit"})
        committed = await c.until("input_audio_buffer.committed")
        await c.send({"type": "response.create"})
        await c.until("response.done", timeout=10)
        await c.quiet(0.2)
        tr = next(e for e in c.events if e["type"] == "conversation.item.input_audio_transcription.completed")
        assert tr["item_id"] == committed["item_id"] and "1.8 s" in tr["transcript"]
        n = names(dialect)
        samples = sum(len(base64.b64decode(e["delta"])) // 2 for e in c.events if e["type"] == n["audio.delta"])
        assert samples == int(1.8 * RATE)
        await c.close()
        await server.stop()
    run(go())


def test_commit_empty_error_keeps_session():
    async def go():
        server, c, _ = await started("openai-ga")
        await c.send(ptt_update("openai-ga"))
        await c.until("session.updated")
        await c.append(tone(0.05))
        eid = await c.send({"type": "input_audio_buffer.commit"})
        err = await c.until("error")
        assert err["error"]["code"] == "input_audio_buffer_commit_empty"
        assert err["error"]["type"] == "invalid_request_error" and err["error"]["event_id"] == eid
        await c.send({"type": "input_audio_buffer.clear"})
        await c.until("input_audio_buffer.cleared")
        await c.append(tone(0.2))
        await c.send({"type": "input_audio_buffer.commit"})
        await c.until("input_audio_buffer.committed")
        await c.close()
        await server.stop()
    run(go())


# ---------------------------------------------------------------------------------------
# truncation, cancel, barge-in
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["openai-ga", "openai-beta"])
def test_truncate_validation(dialect):
    async def go():
        server, c, _ = await started(dialect)
        await c.send(ptt_update(dialect))
        await c.until("session.updated")
        await c.append(tone(1.0))
        await c.send({"type": "input_audio_buffer.commit"})
        user = await c.until("input_audio_buffer.committed")
        await c.send({"type": "response.create"})
        done = await c.until("response.done", timeout=10)
        item_id = done["response"]["output"][0]["id"]
        # past the end of the audio sent for the item
        eid = await c.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                            "audio_end_ms": 1500})
        err = await c.until("error")
        assert err["error"]["code"] == "invalid_value" and err["error"]["param"] == "audio_end_ms"
        assert err["error"]["event_id"] == eid and "1000ms" in err["error"]["message"]
        # not an assistant audio item; unknown item
        await c.send({"type": "conversation.item.truncate", "item_id": user["item_id"], "content_index": 0,
                      "audio_end_ms": 10})
        assert (await c.until("error"))["error"]["code"] == "invalid_value"
        await c.send({"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0,
                      "audio_end_ms": 10})
        assert (await c.until("error"))["error"]["param"] == "item_id"
        # ok
        await c.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                      "audio_end_ms": 640})
        tr = await c.until("conversation.item.truncated")
        assert tr["item_id"] == item_id and tr["audio_end_ms"] == 640 and tr["content_index"] == 0
        await c.send({"type": "conversation.item.retrieve", "item_id": item_id})
        got = await c.until("conversation.item.retrieved")
        assert got["item"]["content"][0]["transcript"] == ""
        # delete
        await c.send({"type": "conversation.item.delete", "item_id": item_id})
        assert (await c.until("conversation.item.deleted"))["item_id"] == item_id
        trunc = server.record.truncates
        assert [t["audio_end_ms"] for t in trunc] == [1500, 10, 10, 640]
        await c.close()
        await server.stop()
    run(go())


@pytest.mark.parametrize("dialect", ["openai-ga", "voice-live"])
def test_barge_in_cancels_response(dialect):
    async def go():
        # slow pacing so that the response is still streaming when the user speaks again
        server, c, _ = await started(dialect, pace_min=1.0, pace_max=1.0, vad="energy")  # tones
        await c.append(np.concatenate([silence(0.3), tone(2.0), silence(0.7)]))
        created = await c.until("response.created", timeout=10)
        rid = created["response"]["id"]
        n = names(dialect)
        await c.until(n["audio.delta"])
        await c.append(np.concatenate([silence(0.1), tone(0.3)]))
        done = await c.until("response.done", pred=lambda e: e["response"]["id"] == rid)
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        types = c.types()
        i_started = max(i for i, t in enumerate(types) if t == "input_audio_buffer.speech_started")
        i_done = types.index("response.done")
        assert i_started < i_done
        after = [e for e in c.events[i_done + 1:] + await c.quiet(0.3)
                 if e.get("response_id") == rid and e["type"] == n["audio.delta"]]
        assert after == []
        item_done = next(e for e in c.events if e["type"] == "response.output_item.done")
        assert item_done["item"]["status"] == "incomplete"
        await c.close()
        await server.stop()
    run(go())


def test_response_cancel_and_active_response_errors():
    async def go():
        server, c, _ = await started("openai-beta", pace_min=1.0, pace_max=1.0)
        eid = await c.send({"type": "response.cancel"})
        err = await c.until("error")
        assert err["error"]["code"] == "response_cancel_not_active" and err["error"]["event_id"] == eid
        await c.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]}})
        await c.until("conversation.item.created")
        await c.send({"type": "response.create"})
        await c.until("response.created")
        await c.send({"type": "response.create"})
        err = await c.until("error")
        assert err["error"]["code"] == "conversation_already_has_active_response"
        await c.until("response.audio.delta")
        await c.send({"type": "response.cancel"})
        done = await c.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        tr_done = next(e for e in c.events if e["type"] == "response.audio_transcript.done")
        assert "You said: hello there".startswith(tr_done["transcript"])
        await c.close()
        await server.stop()
    run(go())


def test_item_create_function_call_output_and_text_response():
    async def go():
        server, c, _ = await started("openai-ga")
        # a function_call_output must answer a function_call item of the conversation
        await c.send({"type": "conversation.item.create", "item": {
            "type": "function_call", "call_id": "call_1", "name": "ping", "arguments": "{}"}})
        await c.until("conversation.item.done")
        await c.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": "call_1", "output": "{\"ok\": true}"}})
        added = await c.until("conversation.item.added")
        await c.until("conversation.item.done")
        assert added["item"]["type"] == "function_call_output"
        await c.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})
        await c.until("conversation.item.done")
        await c.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = await c.until("response.done")
        assert done["response"]["output"][0]["content"][0] == {"type": "output_text", "text": "You said: hi"}
        assert "response.output_text.delta" in c.types()
        await c.send({"type": "response.create", "response": {"modalities": ["text"]}})
        err = await c.until("error")
        assert err["error"]["code"] == "unknown_parameter" and err["error"]["param"] == "response.modalities"
        await c.close()
        await server.stop()
    run(go())


# ---------------------------------------------------------------------------------------
# handshake faults
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect,headers", [
    ("openai-ga", {"Authorization": "Bearer wrong"}),
    ("azure-preview", {"api-key": "wrong"}),
    ("voice-live", {}),
])
def test_auth_failure_error_then_close_3000(dialect, headers):
    async def go():
        server = LocalRealtimeServer(api_key="sk-test")
        await server.start()
        c = await Client.open(server, dialect, headers)
        err = await c.recv()
        assert err["type"] == "error" and err["error"]["code"] == "invalid_api_key"
        assert err["error"]["type"] == "invalid_request_error"
        with pytest.raises(ConnectionClosed) as exc:
            await c.recv()
        assert exc.value.rcvd.code == 3000
        ok = await Client.open(server, dialect)        # right key, either header style
        assert (await ok.recv())["type"] == "session.created"
        await ok.close()
        await server.stop()
    run(go())


def test_beta_header_on_ga_only_path_closes_4000():
    async def go():
        server = LocalRealtimeServer()
        await server.start()
        c = await Client.open(server, "azure-ga", {"api-key": "k", "OpenAI-Beta": "realtime=v1"})
        err = await c.recv()
        assert err["error"]["code"] == "beta_api_shape_disabled"
        with pytest.raises(ConnectionClosed) as exc:
            await c.recv()
        assert exc.value.rcvd.code == 4000
        await server.stop()
    run(go())


def test_http_rejections_before_upgrade():
    async def go():
        server = LocalRealtimeServer()
        await server.start()
        base = server.url.split("/v1/")[0]
        with pytest.raises(InvalidStatus) as exc:
            await connect(base + "/nope")
        assert exc.value.response.status_code == 404
        with pytest.raises(InvalidStatus) as exc:
            await connect(base + "/openai/realtime?deployment=x")
        assert exc.value.response.status_code == 400
        await server.stop()
    run(go())


# ---------------------------------------------------------------------------------------
# non-fatal errors keep the session
# ---------------------------------------------------------------------------------------
def test_invalid_json_and_unknown_event_keep_session():
    async def go():
        server, c, _ = await started("openai-ga")
        await c.ws.send("{not json")
        err = await c.until("error")
        assert err["error"]["code"] == "invalid_json" and err["error"]["type"] == "invalid_request_error"
        eid = await c.send({"type": "input_audio_buffer.frobnicate"})
        err = await c.until("error")
        assert err["error"]["code"] == "invalid_value" and err["error"]["param"] == "type"
        assert err["error"]["event_id"] == eid
        await c.send({"type": "session.update", "session": {"type": "realtime", "instructions": "be brief"}})
        upd = await c.until("session.updated")
        assert upd["session"]["instructions"] == "be brief"
        rec = server.record.connection(0)
        assert rec.client_events[0].get("invalid_json") is True
        await c.close()
        await server.stop()
    run(go())


@pytest.mark.parametrize("dialect,session,code,param", [
    ("openai-ga", {"instructions": "x"}, "missing_required_parameter", "session.type"),
    ("openai-ga", {"type": "realtime", "modalities": ["audio"]}, "unknown_parameter", "session.modalities"),
    ("openai-ga", {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}},
     "invalid_value", "session.audio.input.turn_detection.threshold"),
    ("openai-ga", {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     "invalid_value", "session.audio.output.format.rate"),
    ("openai-ga", {"type": "realtime", "audio": None}, "invalid_value", "session.audio"),
    ("openai-beta", {"input_audio_format": "pcm32"}, "invalid_value", "session.input_audio_format"),
    ("openai-beta", {"audio": {}}, "unknown_parameter", "session.audio"),
    ("openai-beta", {"turn_detection": {"type": "azure_semantic_vad"}}, "invalid_value", "session.turn_detection.type"),
    ("voice-live", {"input_audio_sampling_rate": 44100}, "invalid_value", "session.input_audio_sampling_rate"),
])
def test_session_update_invalid_values(dialect, session, code, param):
    async def go():
        server, c, created = await started(dialect)
        eid = await c.send({"type": "session.update", "session": session})
        err = await c.until("error")
        assert (err["error"]["code"], err["error"]["param"], err["error"]["event_id"]) == (code, param, eid)
        # the session is unchanged and still open
        await c.send(ptt_update(dialect))
        upd = await c.until("session.updated")
        assert upd["session"]["id"] == created["session"]["id"]
        await c.close()
        await server.stop()
    run(go())


def test_voice_cannot_change_after_audio_output():
    async def go():
        server, c, _ = await started("openai-beta")
        await c.send({"type": "session.update", "session": {"voice": "verse"}})
        assert (await c.until("session.updated"))["session"]["voice"] == "verse"
        await c.send({"type": "response.create"})
        await c.until("response.done")
        await c.send({"type": "session.update", "session": {"voice": "alloy"}})
        err = await c.until("error")
        assert err["error"]["code"] == "invalid_value" and err["error"]["param"] == "session.voice"
        await c.close()
        await server.stop()
    run(go())


# ---------------------------------------------------------------------------------------
# limits and faults
# ---------------------------------------------------------------------------------------
def test_session_expiry_error_then_close_1001():
    async def go():
        server, c, created = await started("openai-ga", max_session_s=0.5)
        assert created["session"]["expires_at"] <= time.time() + 1
        err = await c.until("error", timeout=3)
        assert err["error"]["code"] == "session_expired"
        with pytest.raises(ConnectionClosed) as exc:
            await c.recv()
        assert exc.value.rcvd.code == 1001
        assert server.record.connection(0).close_code == 1001
        await server.stop()
    run(go())


def test_large_append_accepted():
    async def go():
        server, c, _ = await started("openai-ga")
        await c.send(ptt_update("openai-ga"))
        await c.until("session.updated")
        n = 15 * 1024 * 1024 // 2                         # 15 MiB of PCM16
        pcm = (np.arange(n) % 200 - 100).astype(np.int16)
        await c.send({"type": "input_audio_buffer.append", "audio": b64(pcm)})
        await c.send({"type": "input_audio_buffer.commit"})
        await c.until("input_audio_buffer.committed", timeout=10)
        assert server.record.connection(0).uplink_samples == n
        await c.close()
        await server.stop()
    run(go())


def test_drop_all_connections_then_reconnect():
    async def go():
        server, c, created = await started("openai-ga")
        assert server.drop_all_connections() == 1
        with pytest.raises(ConnectionClosed) as exc:
            await c.recv()
        assert exc.value.rcvd is None                       # no close frame
        c2 = await Client.open(server, "openai-ga")
        created2 = await c2.until("session.created")
        assert created2["session"]["id"] != created["session"]["id"]
        recs = server.record.connections()
        assert recs[0].aborted and not recs[1].aborted and len(recs) == 2
        await c2.close()
        await server.stop()
    run(go())


def test_server_thread_sync_use():
    from websockets.sync.client import connect as sync_connect

    with ServerThread(LocalServerConfig(seed=7)) as st:
        assert st.url.endswith("/v1/realtime?model=gpt-realtime")
        with sync_connect(st.url, additional_headers={"Authorization": "Bearer x"}, max_size=None) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(silence(0.1))}))
            assert st.record.wait_for(lambda cs: cs and cs[0].uplink_samples == 2400, timeout=5)
            t = threading_drop(st)
            assert t == 1
        assert st.record.wait_for(lambda cs: cs[0].closed, timeout=5)


def threading_drop(st: ServerThread) -> int:
    return st.drop_all_connections()


def test_handshake_decisions_do_not_outlive_their_connections():
    """A decision is taken by the handler; an upgrade the websockets layer rejects after
    process_request (here: no Upgrade headers) leaves none behind once it is gone."""
    import gc

    async def go():
        server, c, _ = await started("openai-ga")
        assert len(server._decisions) == 0 and len(server._live) == 1
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET /v1/realtime?model=m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.split()[1] in (b"400", b"426")
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
        for _ in range(50):
            gc.collect()
            if len(server._decisions) == 0:
                break
            await asyncio.sleep(0.02)
        assert len(server._decisions) == 0
        assert len(server.record.connections()) == 1              # the handler never ran
        await c.close()
        await server.stop()
    run(go())


# ---------------------------------------------------------------------------------------
# scripted function calls (LocalServerConfig.tool_calls)
# ---------------------------------------------------------------------------------------
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Current weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}
WEATHER_ARGS = {"city": "Paris", "unit": "celsius"}
WEATHER_OUTPUT = "It is twenty one degrees and sunny in Paris"


def tools_update(dialect: str, tools: list[dict], ptt: bool = True) -> dict:
    ev = ptt_update(dialect) if ptt else {"type": "session.update", "session": (
        {"type": "realtime"} if DIALECTS[dialect].ga_names else {})}
    ev["session"]["tools"] = tools
    return ev


def item_event(dialect: str) -> str:
    return "conversation.item.added" if DIALECTS[dialect].ga_names else "conversation.item.created"


async def user_turn_ptt(c: Client) -> None:
    await c.append(tone(0.5))
    await c.send({"type": "input_audio_buffer.commit"})
    await c.until("input_audio_buffer.committed")
    await c.send({"type": "response.create"})


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_scripted_function_call_then_spoken_output(dialect):
    async def go():
        server, c, _ = await started(dialect, seed=2, tool_calls=[{"name": "get_weather", "arguments": WEATHER_ARGS}])
        await c.send(tools_update(dialect, [WEATHER_TOOL]))
        upd = await c.until("session.updated")
        assert upd["session"]["tools"][0]["name"] == "get_weather"
        await user_turn_ptt(c)
        created = await c.until("response.created")
        rid = created["response"]["id"]
        done = await c.until("response.done")
        assert done["response"]["id"] == rid
        window = c.events[c.events.index(created):c.events.index(done) + 1]
        types = [e["type"] for e in window]
        n_delta = types.count("response.function_call_arguments.delta")
        assert n_delta >= 1
        expected = (["response.created", "response.output_item.added", item_event(dialect)]
                    + ["response.function_call_arguments.delta"] * n_delta
                    + ["response.function_call_arguments.done", "response.output_item.done"]
                    + (["conversation.item.done"] if DIALECTS[dialect].ga_names else [])
                    + ["response.done"])
        assert types == expected
        added = window[1]["item"]
        assert added["type"] == "function_call" and added["status"] == "in_progress"
        assert added["name"] == "get_weather" and added["arguments"] == ""
        call_id = added["call_id"]
        assert call_id.startswith("call_")
        assert window[2]["item"]["type"] == "function_call" and window[2]["item"]["call_id"] == call_id
        args_text = json.dumps(WEATHER_ARGS)
        deltas = [e for e in window if e["type"] == "response.function_call_arguments.delta"]
        assert "".join(e["delta"] for e in deltas) == args_text
        assert all(e["call_id"] == call_id and e["item_id"] == added["id"] and e["response_id"] == rid
                   for e in deltas)
        args_done = window[3 + n_delta]
        assert args_done["arguments"] == args_text and args_done["call_id"] == call_id
        # GA and Voice Live carry the name; the beta event type has no name field
        if DIALECTS[dialect].ga_names or DIALECTS[dialect].voice_live:
            assert args_done["name"] == "get_weather"
        else:
            assert "name" not in args_done
            assert "name" not in openai_beta_rt.ResponseFunctionCallArgumentsDoneEvent.model_fields
        item_done = window[4 + n_delta]["item"]
        assert item_done["status"] == "completed" and item_done["arguments"] == args_text
        assert json.loads(item_done["arguments"]) == WEATHER_ARGS
        assert done["response"]["status"] == "completed"
        assert [(o["type"], o["call_id"], o["status"]) for o in done["response"]["output"]] == \
            [("function_call", call_id, "completed")]
        assert not [e for e in window if "audio" in e["type"]]
        assert server.record.function_calls[0]["status"] == "called"
        assert server.record.function_calls[0]["call_id"] == call_id

        # the client's answer, then a response that speaks it
        eid = await c.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": WEATHER_OUTPUT}})
        out_item = await c.until(item_event(dialect))
        assert out_item["item"]["type"] == "function_call_output" and out_item["item"]["call_id"] == call_id
        assert out_item["previous_item_id"] == added["id"]
        outs = server.record.function_outputs
        assert [(o["call_id"], o["output"], o["event_id"]) for o in outs] == [(call_id, WEATHER_OUTPUT, eid)]
        assert isinstance(outs[0]["t"], float)
        await c.send({"type": "response.create"})
        spoken = await c.until("response.done", timeout=15)
        assert spoken["response"]["status"] == "completed"
        msg = spoken["response"]["output"][0]
        assert msg["type"] == "message" and msg["role"] == "assistant"
        n = names(dialect)
        tr_done = [e for e in c.events if e["type"] == n["tr.done"]][-1]
        assert WEATHER_OUTPUT in tr_done["transcript"]
        pcm = server.record.item_audio(msg["id"])
        # espeak-ng speech of the output at 24 kHz, not the user's 0.5 s tone played back
        from voxbox.audio.speech import render_speech
        expect = len(render_speech(WEATHER_OUTPUT)) * RATE // 16_000
        assert abs(len(pcm) // 2 - expect) <= 2 and len(pcm) // 2 > RATE
        await c.close()
        await server.stop()
    run(go())


@pytest.mark.parametrize("dialect", ["openai-ga", "openai-beta", "voice-live"])
def test_function_call_output_with_unknown_call_id_is_an_error(dialect):
    async def go():
        server, c, _ = await started(dialect)
        eid = await c.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": "call_nope", "output": "42"}})
        err = await c.until("error")
        assert err["error"]["code"] == "invalid_value" and err["error"]["param"] == "item.call_id"
        assert err["error"]["event_id"] == eid and "call_nope" in err["error"]["message"]
        # the session goes on; nothing was recorded or added
        await c.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})
        await c.until(item_event(dialect))
        assert server.record.function_outputs == []
        await c.close()
        await server.stop()
    run(go())


@pytest.mark.parametrize("dialect", ["openai-ga", "openai-beta"])
def test_response_create_during_function_call_is_rejected(dialect):
    async def go():
        server, c, _ = await started(dialect, response_latency_s=0.5,
                                     tool_calls=[{"name": "get_weather", "arguments": WEATHER_ARGS}])
        await c.send(tools_update(dialect, [WEATHER_TOOL]))
        await c.until("session.updated")
        await user_turn_ptt(c)
        await c.until("response.created")
        eid = await c.send({"type": "response.create"})
        err = await c.until("error")
        assert err["error"]["code"] == "conversation_already_has_active_response"
        assert err["error"]["event_id"] == eid
        done = await c.until("response.done")
        assert c.events.index(err) < c.events.index(done)
        assert done["response"]["output"][0]["type"] == "function_call"
        await c.close()
        await server.stop()
    run(go())


def test_scripted_calls_need_declared_tools_and_skip_unknown_names():
    """Server VAD turns: no tools -> parrot, script untouched; an undeclared name is skipped
    (consumed, parrot reply); the next entry is called."""
    async def go():
        script = [{"name": "set_timer", "arguments": {"minutes": 5}},
                  {"name": "get_weather", "arguments": '{"city": "Oslo"}', "call_id": "call_fixed"}]
        server, c, _ = await started("openai-ga", tool_calls=script, vad="energy")   # a tone as "speech"
        turn = np.concatenate([silence(0.3), tone(0.6), silence(0.7)])
        n = names("openai-ga")

        async def vad_turn() -> dict:
            await c.append(turn)
            return await c.until("response.done", timeout=10)

        done = await vad_turn()
        assert done["response"]["output"][0]["type"] == "message"
        assert server.record.function_calls == []
        await c.send(tools_update("openai-ga", [WEATHER_TOOL], ptt=False))
        await c.until("session.updated")
        done = await vad_turn()                       # set_timer is not declared: skipped
        assert done["response"]["output"][0]["type"] == "message"
        assert n["audio.delta"] in c.types()
        calls = server.record.function_calls
        assert [(f["name"], f["status"]) for f in calls] == [("set_timer", "skipped")]
        done = await vad_turn()                       # server VAD commit -> the scripted call
        out = done["response"]["output"]
        assert [(o["type"], o["name"], o["call_id"], o["arguments"]) for o in out] == \
            [("function_call", "get_weather", "call_fixed", '{"city": "Oslo"}')]
        assert [f["status"] for f in server.record.function_calls] == ["skipped", "called"]
        done = await vad_turn()                       # script exhausted: parrot again
        assert done["response"]["output"][0]["type"] == "message"
        await c.close()
        await server.stop()
    run(go())


def test_core_cancelled_function_call_and_option_shape():
    core = SessionCore(DIALECTS["voice-live"], config=LocalServerConfig(
        seed=1, tool_calls=[{"name": "get_weather", "arguments": WEATHER_ARGS}]))
    core.handle_event({"type": "session.update", "session": {"turn_detection": None, "tools": [WEATHER_TOOL]}})
    core.handle_event({"type": "input_audio_buffer.append", "audio": b64(tone(0.5))})
    core.handle_event({"type": "input_audio_buffer.commit"})
    evs = core.handle_event({"type": "response.create"})
    evs += core.step_response()                     # item events + first delta
    evs += core.handle_event({"type": "response.cancel"})
    for e in evs:
        validate_event("voice-live", e)
    types = [e["type"] for e in evs]
    assert types == ["response.created", "response.output_item.added", "conversation.item.created",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.done"]
    first = evs[3]["delta"]
    assert evs[4]["arguments"] == first and evs[5]["item"]["status"] == "incomplete"
    assert evs[6]["response"]["status"] == "cancelled"
    assert core.tool_script.remaining == 0
    # the option through ServerThread(**options) (DaemonHarness server_options)
    st = ServerThread(api_key="k", tool_calls=[{"name": "f"}, {"name": "g", "arguments": "{}"}])
    assert st.server.tool_script.remaining == 2
    with pytest.raises(ValueError):
        LocalRealtimeServer(tool_calls=[{"arguments": {}}])
