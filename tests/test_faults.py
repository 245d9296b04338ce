"""Fault injection of the local Realtime server (``LocalServerConfig`` options and
``FaultControls``), asserted as a raw websockets client sees it: close codes, missing close
frames, error events, HTTP statuses, timing."""
from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from helpers import run
from voxbox.parrot.server import (
    INSUFFICIENT_QUOTA,
    AudioJitter,
    LocalRealtimeServer,
    LocalServerConfig,
    ServerThread,
)

AUTH = {"Authorization": "Bearer sk-test"}
AUDIO_DELTA = "response.output_audio.delta"
# A fast parrot with many small chunks: the reply's 0.6 s tone in 12 chunks of 50 ms,
# produced at 50x real time so the wire timing is the fault's, not the pacing's.
FAST = dict(chunk_ms_min=50, chunk_ms_max=50, pace_min=50.0, pace_max=50.0, response_latency_s=0.01)


async def open_client(server: LocalRealtimeServer, **kw):
    kw.setdefault("max_size", None)
    return await connect(server.url, additional_headers=AUTH, **kw)


async def recv(ws, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until(ws, type_: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        ev = await recv(ws, max(0.01, deadline - time.monotonic()))
        if ev["type"] == type_:
            return ev


async def started(**cfg):
    server = LocalRealtimeServer(LocalServerConfig(**cfg))
    await server.start()
    ws = await open_client(server)
    created = await until(ws, "session.created")
    return server, ws, created


async def audio_arrivals(ws, timeout: float = 10.0) -> tuple[list[float], list[dict]]:
    """Send response.create; arrival times (monotonic) of the audio deltas until response.done."""
    await ws.send(json.dumps({"type": "response.create"}))
    times, events = [], []
    deadline = time.monotonic() + timeout
    while True:
        ev = await recv(ws, max(0.01, deadline - time.monotonic()))
        events.append(ev)
        if ev["type"] == AUDIO_DELTA:
            times.append(time.monotonic())
        if ev["type"] == "response.done":
            return times, events


async def closed_exc(ws, timeout: float = 5.0) -> ConnectionClosed:
    """Read until the connection ends; the ConnectionClosed it ends with."""
    with pytest.raises(ConnectionClosed) as exc:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return exc.value


# ---------------------------------------------------------------------------------------
# 1. drop the TCP connection
# ---------------------------------------------------------------------------------------
def test_drop_connections_aborts_without_close_frame_and_records_reconnect_time():
    async def go():
        server = LocalRealtimeServer()
        await server.start()
        a, b = await open_client(server), await open_client(server)
        sid_a = (await until(a, "session.created"))["session"]["id"]
        await until(b, "session.created")
        assert server.faults.drop_connections() == 2
        for ws in (a, b):
            exc = await closed_exc(ws)
            assert exc.rcvd is None                       # no close frame: TCP abort
        drops = [f for f in server.record.faults if f["kind"] == "drop"]
        assert sorted(f["connection"] for f in drops) == [0, 1]
        t_drop = drops[0]["t"]
        assert server.record.reconnect_time(t_drop) is None
        await asyncio.sleep(0.1)
        c = await open_client(server)
        created = await until(c, "session.created")
        assert created["session"]["id"] != sid_a          # a new, empty session
        gap = server.record.reconnect_time(t_drop)
        assert gap is not None and 0.1 <= gap < 2.0
        recs = server.record.connections()
        assert recs[0].aborted and recs[0].t_closed is not None and recs[0].closed_at is not None
        assert recs[2].t_open > recs[0].t_closed
        assert recs[2].session_created_t() - t_drop == pytest.approx(gap)
        await c.close()
        await server.stop()
    run(go())


def test_drop_after_n_events_runtime_scopes():
    async def go():
        server, ws, _ = await started(**FAST)
        server.faults.drop_after_events(3)                # 3 more events on this connection
        await ws.send(json.dumps({"type": "response.create"}))
        got = []
        with pytest.raises(ConnectionClosed) as exc:
            while True:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        assert exc.value.rcvd is None
        assert [e["type"] for e in got] == ["response.created", "response.output_item.added",
                                            "conversation.item.added"]
        (drop,) = [f for f in server.record.faults if f["kind"] == "drop"]
        assert drop["after_events"] == 4 and drop["connection"] == 0   # session.created + 3
        # scope "next": the next connection is dropped right after session.created
        server.faults.drop_after_events(1, scope="next")
        c = await open_client(server)
        assert (await recv(c))["type"] == "session.created"
        assert (await closed_exc(c)).rcvd is None
        # and the one after that is not
        d = await open_client(server)
        await until(d, "session.created")
        await d.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        await until(d, "session.updated")
        await d.close()
        await server.stop()
    run(go())


def test_drop_after_events_option_applies_to_every_connection():
    async def go():
        server = LocalRealtimeServer(drop_after_events=2)
        await server.start()
        for _ in range(2):
            ws = await open_client(server)
            await until(ws, "session.created")
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
            await until(ws, "session.updated")
            assert (await closed_exc(ws)).rcvd is None
        drops = [f for f in server.record.faults if f["kind"] == "drop"]
        assert [(f["connection"], f["after_events"]) for f in drops] == [(0, 2), (1, 2)]
        server.faults.clear_drops()
        ws = await open_client(server)
        await until(ws, "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        await until(ws, "session.updated")
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        await until(ws, "session.updated")
        await ws.close()
        await server.stop()
    run(go())


# ---------------------------------------------------------------------------------------
# 2. audio delay / jitter / burst then gap
# ---------------------------------------------------------------------------------------
def test_audio_fixed_delay_spaces_every_chunk():
    async def go():
        server, ws, _ = await started(**FAST)
        base, _ = await audio_arrivals(ws)
        assert len(base) == 12 and statistics.median(b - a for a, b in zip(base, base[1:])) < 0.03
        server.faults.set_audio_jitter(delay_s=0.1)
        times, events = await audio_arrivals(ws)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert len(times) == 12 and min(gaps) >= 0.09
        delays = [f for f in server.record.faults if f["kind"] == "audio_delay"]
        assert len(delays) == 12 and all(f["seconds"] == pytest.approx(0.1) for f in delays)
        assert events[-1]["response"]["status"] == "completed"   # in order, nothing lost
        server.faults.clear_audio_jitter()
        await ws.close()
        await server.stop()
    run(go())


def test_audio_jitter_distributions_are_seeded():
    def draws(j: AudioJitter, n: int = 2000) -> list[float]:
        server = LocalRealtimeServer(audio_jitter=j)             # not started: no loop needed
        return [server.faults._jitter_delay() for _ in range(n)]

    for dist in ("uniform", "exponential", "normal"):
        a = draws(AudioJitter(delay_s=0.01, jitter_s=0.05, dist=dist, seed=3))
        assert a == draws(AudioJitter(delay_s=0.01, jitter_s=0.05, dist=dist, seed=3))
        assert a != draws(AudioJitter(delay_s=0.01, jitter_s=0.05, dist=dist, seed=4))
        assert min(a) >= 0.01
    uni = draws(AudioJitter(jitter_s=0.05, dist="uniform"))
    assert max(uni) <= 0.05 and statistics.mean(uni) == pytest.approx(0.025, rel=0.1)
    exp = draws(AudioJitter(jitter_s=0.05, dist="exponential"))
    assert statistics.mean(exp) == pytest.approx(0.05, rel=0.15)
    # runtime set_audio_jitter reseeds: same sequence as the option
    server = LocalRealtimeServer()
    server.faults.set_audio_jitter(jitter_s=0.05, dist="normal", seed=3)
    assert [server.faults._jitter_delay() for _ in range(2000)] == draws(
        AudioJitter(jitter_s=0.05, dist="normal", seed=3))
    with pytest.raises(ValueError):
        AudioJitter(dist="pareto")


def test_audio_jitter_gap_and_draw_are_what_the_sender_uses():
    j = AudioJitter(delay_s=0.01, jitter_s=0.05, dist="exponential", burst=3, gap_s=0.2, seed=9)
    assert [j.gap_before(n) for n in range(8)] == [0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 0.2, 0.0]
    assert AudioJitter(burst=3).gap_before(3) == 0.0 and AudioJitter(gap_s=1.0).gap_before(3) == 0.0
    server = LocalRealtimeServer(audio_jitter=j)             # not started: no loop needed
    rng = np.random.default_rng(9)
    assert [server.faults._jitter_delay() for _ in range(50)] == [j.draw(rng) for _ in range(50)]
    assert AudioJitter(delay_s=0.2).draw(np.random.default_rng(0)) == 0.2    # no jitter: no draw


def test_audio_burst_then_gap():
    async def go():
        server, ws, _ = await started(audio_jitter={"burst": 4, "gap_s": 0.4}, **FAST)
        times, _ = await audio_arrivals(ws)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert len(times) == 12
        assert gaps[3] >= 0.35 and gaps[7] >= 0.35                 # held after chunks 4 and 8
        assert statistics.median(g for i, g in enumerate(gaps) if i not in (3, 7)) < 0.05   # backlog: a burst
        held = [f for f in server.record.faults if f["kind"] == "audio_gap"]
        assert [f["after_chunks"] for f in held] == [4, 8]
        await ws.close()
        await server.stop()
    run(go())


# ---------------------------------------------------------------------------------------
# 3. stall
# ---------------------------------------------------------------------------------------
def test_stall_without_pongs_trips_the_client_ping_timeout():
    async def go():
        server = LocalRealtimeServer()
        await server.start()
        ws = await open_client(server, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.3)
        await until(ws, "session.created")
        # control: while the server answers pings the keepalive client stays up
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 1.0)
        assert server.faults.stall() == 1                          # until released
        t0 = time.monotonic()
        exc = await closed_exc(ws, timeout=5)
        elapsed = time.monotonic() - t0
        assert exc.sent is not None and exc.sent.code == 1011      # "keepalive ping timeout"
        assert exc.rcvd is None                                    # the server said nothing
        assert 0.25 <= elapsed < 2.0
        kinds = [f["kind"] for f in server.record.faults]
        assert kinds[0] == "stall"
        await server.stop()
    run(go())


def test_timed_stall_holds_events_and_pongs_then_resumes():
    async def go():
        server, ws, _ = await started(ping_interval=None, **FAST)
        ws_pings = await open_client(server, ping_interval=None)
        await until(ws_pings, "session.created")
        server.faults.stall(0.6)
        t0 = time.monotonic()
        pong = await ws.ping()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(pong), 0.4)      # no pong while stalled
        await ws.send(json.dumps({"type": "response.create"}))
        first = await recv(ws, 3)
        assert first["type"] == "response.created"
        assert time.monotonic() - t0 >= 0.55
        await asyncio.wait_for(pong, 1)                            # answered after the stall
        await until(ws, "response.done")
        rel = [f for f in server.record.faults if f["kind"] == "release"]
        assert len(rel) == 2 and all(f["why"] == "timer" for f in rel)
        await ws.close()
        await ws_pings.close()
        await server.stop()
    run(go())


def test_stall_after_events_option_and_release_from_another_thread():
    from websockets.sync.client import connect as sync_connect

    with ServerThread(api_key=None, stall_after_events=1, stall_s=None) as st:
        with sync_connect(st.url, additional_headers=AUTH, max_size=None) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
            ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
            with pytest.raises(TimeoutError):
                ws.recv(timeout=0.5)                               # stalled after 1 event
            assert st.faults.release() == 1
            assert json.loads(ws.recv(timeout=5))["type"] == "session.updated"
        assert [f["kind"] for f in st.record.faults] == ["stall", "release"]


# ---------------------------------------------------------------------------------------
# 4. auth and quota rejections
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,status,code", [
    ("http-401", 401, "invalid_api_key"),
    ("http-403", 403, "permission_denied"),
    ("http-429", 429, "insufficient_quota"),
])
def test_reject_auth_http_status_before_upgrade(mode, status, code):
    async def go():
        server = LocalRealtimeServer(reject_auth=mode)
        await server.start()
        with pytest.raises(InvalidStatus) as exc:
            await open_client(server)
        resp = exc.value.response
        assert resp.status_code == status
        assert resp.headers["Content-Type"] == "application/json"
        assert json.loads(resp.body)["error"]["code"] == code
        assert server.record.connections() == []                   # never upgraded
        server.faults.accept_auth()
        ws = await open_client(server)
        await until(ws, "session.created")
        await ws.close()
        rejects = [f for f in server.record.faults if f["kind"] == "reject_auth"]
        assert [f["mode"] for f in rejects] == [mode]
        await server.stop()
    run(go())


def test_reject_auth_invalid_api_key_close_3000_for_count_handshakes():
    async def go():
        server = LocalRealtimeServer()
        await server.start()
        server.faults.reject_auth("invalid_api_key", count=2)
        for _ in range(2):
            ws = await open_client(server)
            err = await recv(ws)
            assert err["type"] == "error" and err["error"]["code"] == "invalid_api_key"
            exc = await closed_exc(ws)
            assert exc.rcvd is not None and exc.rcvd.code == 3000
        ws = await open_client(server)                             # count used up
        await until(ws, "session.created")
        await ws.close()
        rejects = [f for f in server.record.faults if f["kind"] == "reject_auth"]
        assert len(rejects) == 2 and rejects[0]["t"] <= rejects[1]["t"]
        assert [c.close_code for c in server.record.connections()[:2]] == [3000, 3000]
        await server.stop()
    run(go())


def test_insufficient_quota_fails_each_response_in_band():
    async def go():
        server, ws, _ = await started(reject_auth="insufficient_quota", **FAST)
        await ws.send(json.dumps({"type": "response.create"}))
        assert (await recv(ws))["type"] == "response.created"
        done = await recv(ws)
        assert done["type"] == "response.done"
        r = done["response"]
        assert r["status"] == "failed" and r["output"] == []
        assert r["status_details"]["error"]["code"] == "insufficient_quota"
        assert r["status_details"]["error"]["type"] == INSUFFICIENT_QUOTA["type"]
        import openai.types.realtime as openai_rt
        openai_rt.ResponseDoneEvent.model_validate(done)
        # the session stays open
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        await until(ws, "session.updated")
        await ws.close()
        await server.stop()
    run(go())


# ---------------------------------------------------------------------------------------
# 5. session expiry
# ---------------------------------------------------------------------------------------
def test_expire_sessions_on_demand_and_after_delay():
    async def go():
        server, ws, _ = await started()
        assert server.faults.expire_sessions() == 1
        err = await until(ws, "error")
        assert err["error"]["code"] == "session_expired"
        exc = await closed_exc(ws)
        assert exc.rcvd is not None and exc.rcvd.code == 1001
        ws2 = await open_client(server)
        await until(ws2, "session.created")
        t0 = time.monotonic()
        server.faults.expire_sessions(after_s=0.4)
        err = await until(ws2, "error")
        assert err["error"]["code"] == "session_expired" and time.monotonic() - t0 >= 0.35
        assert (await closed_exc(ws2)).rcvd.code == 1001
        assert [f["kind"] for f in server.record.faults] == ["expire", "expire"]
        await server.stop()
    run(go())


def test_max_session_duration_set_at_runtime_for_new_sessions():
    async def go():
        server = LocalRealtimeServer()
        await server.start()
        server.faults.set_max_session_s(0.5)
        ws = await open_client(server)
        created = await until(ws, "session.created")
        t0 = time.monotonic()
        assert created["session"]["expires_at"] <= time.time() + 1
        err = await until(ws, "error", timeout=3)
        assert err["error"]["code"] == "session_expired"
        assert err["error"]["message"].endswith("0.5 seconds.")
        assert 0.4 <= time.monotonic() - t0 < 1.5
        assert (await closed_exc(ws)).rcvd.code == 1001
        await server.stop()
    run(go())


def test_fault_settings_read_once_and_owned_by_the_fault_controls():
    """The config's fault options seed ``server.faults``; from then on the connections read
    the fault settings there only (a config replaced afterwards changes nothing), and the
    runtime setters never touch ``server.config``."""
    async def go():
        cfg = LocalServerConfig(max_session_s=0.4, malformed_json_after_events=1, stall_after_events=50,
                                stall_s=0.1, oversized_audio_delta_bytes=4096, unknown_event_every=1000)
        server = LocalRealtimeServer(cfg)
        f = server.faults
        assert (f.max_session_s, f.malformed_json_after_events, f.stall_after_events, f.stall_s,
                f.oversized_audio_delta_bytes, f.unknown_every) == (0.4, 1, 50, 0.1, 4096, 1000)
        server.config = LocalServerConfig()       # not read by connections: faults stay armed
        await server.start()
        ws = await open_client(server)
        created = await until(ws, "session.created")
        assert created["session"]["expires_at"] <= time.time() + 1
        with pytest.raises(json.JSONDecodeError):                  # malformed_json_after_events=1
            json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (await until(ws, "error", timeout=3))["error"]["code"] == "session_expired"
        # set_max_session_s(None): the dialect's default, whatever the config said
        f.set_max_session_s(None)
        assert f.max_session_s is None and server.config.max_session_s is None
        server.config = cfg
        ws2 = await open_client(server)
        created2 = await until(ws2, "session.created")
        assert created2["session"]["expires_at"] >= time.time() + 3000   # GA: 60 min
        f.set_max_session_s(0.5)
        assert server.config is cfg and cfg.max_session_s == 0.4
        await ws2.close()
        await server.stop()
    run(go())


# ---------------------------------------------------------------------------------------
# 6. malformed JSON, unknown event types, unknown fields
# ---------------------------------------------------------------------------------------
def test_malformed_json_frame_then_session_continues():
    async def go():
        server, ws, _ = await started(malformed_json_after_events=1)
        raw = await asyncio.wait_for(ws.recv(), 5)                 # right after session.created
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
        assert server.faults.send_malformed_json("{]") == 1
        assert await asyncio.wait_for(ws.recv(), 5) == "{]"
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        await until(ws, "session.updated")
        assert [f["kind"] for f in server.record.faults] == ["malformed_json", "malformed_json"]
        await ws.close()
        await server.stop()
    run(go())


def test_unknown_event_types_and_unknown_fields():
    async def go():
        server, ws, _ = await started()
        assert server.faults.send_unknown_event("response.future_thing", payload={"x": 1}) == 1
        ev = await recv(ws)
        assert ev["type"] == "response.future_thing" and ev["payload"] == {"x": 1}
        assert ev["event_id"].startswith("event_")
        server.faults.set_unknown_fields({"x_new_field": {"nested": True}})
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        upd = await until(ws, "session.updated")
        assert upd["x_new_field"] == {"nested": True}
        assert upd["session"]["x_new_field"] == {"nested": True}
        assert upd["session"]["type"] == "realtime"                # known fields untouched
        # the SDK still parses the event (servers add fields; clients must ignore them)
        import openai.types.realtime as openai_rt
        openai_rt.SessionUpdatedEvent.model_validate(upd)
        server.faults.set_unknown_fields(None)
        server.faults.set_unknown_events(1)                        # one after every event
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        a, b = await recv(ws), await recv(ws)
        assert (a["type"], b["type"]) == ("session.updated", "x_local.unknown_event")
        assert "x_new_field" not in a
        await ws.close()
        await server.stop()
    run(go())


# ---------------------------------------------------------------------------------------
# 7. oversized messages
# ---------------------------------------------------------------------------------------
def test_oversized_audio_delta_3mib_in_one_event():
    async def go():
        server, ws, _ = await started(**FAST)
        server.faults.oversize_next_audio_delta(3 * 1024 * 1024)
        await ws.send(json.dumps({"type": "response.create"}))
        deltas = []
        while True:
            ev = await recv(ws, 10)
            if ev["type"] == AUDIO_DELTA:
                deltas.append(base64.b64decode(ev["delta"]))
            if ev["type"] == "response.done":
                break
        assert len(deltas[0]) == 3 * 1024 * 1024                   # one event, 4 MiB of base64
        assert len(deltas) == 1                                    # the whole reply fit in it
        item_id = ev["response"]["output"][0]["id"]
        assert server.record.item_audio(item_id) == deltas[0]
        (f,) = [f for f in server.record.faults if f["kind"] == "oversized_audio_delta"]
        assert f["bytes"] == 3 * 1024 * 1024
        await ws.close()
        await server.stop()
    run(go())


def test_oversized_audio_delta_option_trips_a_default_size_client():
    async def go():
        server = LocalRealtimeServer(oversized_audio_delta_bytes=3 * 1024 * 1024, **FAST)
        await server.start()
        ws = await open_client(server, max_size=2 ** 20)           # websockets' default 1 MiB
        await until(ws, "session.created")
        await ws.send(json.dumps({"type": "response.create"}))
        exc = await closed_exc(ws, timeout=10)
        assert exc.sent is not None and exc.sent.code == 1009      # message too big
        await server.stop()
    run(go())
