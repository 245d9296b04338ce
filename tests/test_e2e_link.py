"""The link end to end: session rollover with context carried over, offline prompt, no
audio captured offline sent later, fatal auth retried slowly (real daemon, local server)."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import pytest

import synth
from helpers import tap_turn
from voxbox.sim.harness import DaemonHarness

pytestmark = pytest.mark.e2e


speech = partial(synth.speech, seed=3)  # this file's noise seed


def test_rollover_between_turns_carries_the_conversation_over(tmp_path):
    cfg = {"realtime": {"session_rollover_s": 4.0, "transcription_model": "gpt-4o-mini-transcribe"},
           "conversation": {"follow_up_s": 0}}
    q1 = speech("What will the weather be like today?")
    q2 = speech("And what about tomorrow?")
    with DaemonHarness(tmp_path, echo_db=-30, config=cfg) as h:
        h.start()
        tap_turn(h, q1)
        h.wait_state("idle", timeout=10)
        roll = h.wait_event("rollover", timeout=20)
        h.wait_event("context_replay", timeout=10, after=roll["mono"])
        rec = h.server.record
        assert len(rec.connections()) == 2
        first, second = rec.connection(0), rec.connection(1)
        said = [e for e in first.server_events if e["type"] in (
            "response.output_audio_transcript.done", "conversation.item.input_audio_transcription.completed")]
        assert said, "no transcripts in the first session"
        tap_turn(h, q2)
        second = h.server.record.connection(1)
        items = [e["item"] for e in second.client_events if e["type"] == "conversation.item.create"]
        texts = [p["text"] for it in items for p in it["content"]]
        # the second session got the first session's words before its first response
        assert any("parrot transcript" in t for t in texts) and any(t.startswith("You said") for t in texts)
        first_resp = next(i for i, e in enumerate(second.client_events)
                          if e["type"] == "input_audio_buffer.append")
        last_item = max(i for i, e in enumerate(second.client_events) if e["type"] == "conversation.item.create")
        assert last_item < first_resp
        # no item id from the old session was ever sent on the new one
        old_ids = {e.get("item_id") for e in first.server_events if e.get("item_id")}
        old_ids |= {e["item"]["id"] for e in first.server_events if isinstance(e.get("item"), dict) and "id" in e["item"]}
        sent = " ".join(str(e) for e in second.client_events)
        assert not any(i in sent for i in old_ids)
        assert h.events("link_down") == []  # a rollover is not an outage: the LED never said offline
        print(f"rollover after {roll['mono'] - h.events('session_ready')[0]['mono']:.1f} s; carried {len(items)} items")


def test_offline_prompt_and_nothing_captured_offline_is_sent_later(tmp_path):
    q = speech("Hello, are you there?")
    with DaemonHarness(tmp_path, echo_db=None, config={"realtime": {"reconnect_initial_s": 0.3,
                                                                     "reconnect_max_s": 1.0}}) as h:
        h.start()
        port = h.server.port
        h.server.stop()
        h.wait_state("offline", timeout=10)
        up_before = h.server.record.uplink_samples_total
        t0 = time.monotonic()
        h.press()
        h.mic.play(q)
        p = h.wait_event("prompt", timeout=5, after=t0)
        assert p["VOXBOX_PROMPT"] == "offline"
        time.sleep(q.size / 16000 + 0.5)
        # the prompt reached the speaker, sample for sample
        from pathlib import Path

        import voxbox
        from voxbox.audio.earcon import load_earcon

        cue = load_earcon(str(Path(voxbox.__file__).parent / "prompts" / "offline.wav"), 24000)
        head = cue[np.flatnonzero(cue)[0]:][:480]
        win = np.lib.stride_tricks.sliding_window_view(h.speaker.samples, head.size)
        assert (win == head).all(axis=1).any(), "offline prompt not at the speaker"
        # the service comes back on the same port: the unit reconnects; nothing from offline is sent
        from voxbox.parrot.server import ServerThread

        h.server = ServerThread(api_key=h.api_key, port=port)
        h.server.start()
        t_up = time.monotonic()
        back = h.wait_event("reconnected", timeout=15, after=t_up - 0.5)
        time.sleep(1.5)
        assert h.server.record.uplink_samples_total == 0 and up_before == 0
        print(f"reconnect: session ready {back['VOXBOX_RECONNECT_MS']} ms after the link was lost; "
              f"{(back['mono'] - t_up) * 1000:.0f} ms after the server came back")
        assert back["mono"] - t_up < 1.5


def test_fatal_auth_is_not_retried_fast(tmp_path):
    cfg = {"realtime": {"reconnect_initial_s": 0.1, "reconnect_max_s": 0.5, "fatal_retry_s": 30}}
    with DaemonHarness(tmp_path, echo_db=None, api_key="sk-wrong-key-000", config=cfg) as h:
        h.server_options = {}
        h.start_server()
        h.server.stop()
        from voxbox.parrot.server import ServerThread

        h.server = ServerThread(api_key="sk-the-right-key")
        h.server.start()
        h.start(wait_ready=False)
        fatal = h.wait_event("link_fatal", timeout=30)
        h.wait_state("error", timeout=5)
        time.sleep(5.0)
        n = len(h.server.record.connections())
        print(f"fatal: {fatal['VOXBOX_CAUSE']}; {n} connection attempt(s) in 5 s (backoff cap 0.5 s)")
        assert n == 1
        assert len(h.events("link_fatal")) == 1


def test_token_broker_mode_end_to_end(tmp_path):
    """The unit holds only its per-unit secret: before each session it gets a short-lived
    token from the fleet broker; the Realtime server accepts exactly the broker's tokens;
    a reconnect reuses the cached token; a refused unit secret is fatal and retried slowly."""
    from brokerserver import BrokerServer
    from voxbox.parrot.server import ServerThread

    broker = BrokerServer({"VX-0001": "unit-secret-0123456789"}, ttl_s=600)
    broker.start()
    try:
        cfg = {"broker": {"url": broker.url, "unit_id": "VX-0001"},
               "realtime": {"url": "ws://127.0.0.1:1/v1/realtime"}}  # replaced below
        h = DaemonHarness(tmp_path, echo_db=None, config=cfg)
        h.server = ServerThread(accept_key=broker.accept)
        h.server.start()
        h.extra_config["realtime"] = {"url": h.server_url()}
        with h:
            h.start(env={"VOXBOX_API_KEY": "", "VOXBOX_UNIT_SECRET": "unit-secret-0123456789"})
            assert broker.count == 1 and len(h.server.record.connections()) == 1
            token = broker.issued[0]
            h.server.drop_all_connections()
            h.wait_event("reconnected", timeout=15)
            assert broker.count == 1  # the cached token is still valid: no new request
            text = "\n".join(h.stderr_text)
            assert token not in text and "unit-secret-0123456789" not in text
            print(f"broker mode: {broker.count} token request(s) for {len(h.server.record.connections())} sessions")
    finally:
        broker.stop()
