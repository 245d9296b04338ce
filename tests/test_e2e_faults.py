"""Every fault of the local server against the real daemon: the unit recovers, tells the
user the truth, and never needs a reboot (issue: a link that never strands the user)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from helpers import tap_turn
from synth import speech
from voxbox.sim.harness import DaemonHarness

pytestmark = pytest.mark.e2e


def question() -> np.ndarray:
    return speech("Tell me something interesting about lighthouses and the sea.")


def test_drop_mid_reply_reconnects_and_asks_again(tmp_path):
    with DaemonHarness(tmp_path, echo_db=-30) as h:
        h.start()
        tap_turn(h, question(), until="playback_start")
        time.sleep(0.3)
        t_drop = time.monotonic()
        h.server.faults.drop_connections()
        back = h.wait_event("reconnected", timeout=10, after=t_drop)
        resent = h.wait_event("turn_resent", timeout=5, after=t_drop)
        assert resent["VOXBOX_COMMIT"] == 1
        h.wait_event("playback_end", timeout=40, after=resent["mono"])
        assert not [p for p in h.events("prompt") if p["mono"] >= t_drop]  # a blip: nothing said
        rt = h.server.record.reconnect_time(t_drop)
        print(f"drop mid-reply: session.created {rt * 1000:.0f} ms after the drop; unit ready "
              f"{(back['mono'] - t_drop) * 1000:.0f} ms after; question asked again")
        assert back["mono"] - t_drop < 1.5
        # and the next turn works
        tap_turn(h, question())
        assert h.proc.poll() is None


def test_a_long_outage_mid_reply_loses_the_turn_and_says_so_at_once(tmp_path):
    with DaemonHarness(tmp_path, echo_db=-30) as h:
        h.start()
        tap_turn(h, question(), until="playback_start")
        port = h.server.port
        t_drop = time.monotonic()
        h.server.stop()  # the service is gone for longer than conversation.resume_turn_s (5 s)
        prompt = h.wait_event("prompt", timeout=10, after=t_drop)
        assert prompt["VOXBOX_PROMPT"] == "session_lost"
        print(f"outage: 'lost the connection' said {prompt['mono'] - t_drop:.1f} s after the link went")
        assert 4.5 < prompt["mono"] - t_drop < 7.0
        h.wait_state("offline", timeout=2, after=t_drop)
        h.start_server(port)
        h.wait_event("reconnected", timeout=15, after=prompt["mono"])
        assert [p["VOXBOX_PROMPT"] for p in h.events("prompt") if p["mono"] >= t_drop] == ["session_lost"]
        assert h.events("turn_resent") == []
        tap_turn(h, question())


def test_audio_jitter_bursts_and_gaps_still_play_the_whole_reply(tmp_path):
    opts = {"audio_jitter": {"jitter_s": 0.05, "burst": 8, "gap_s": 0.25, "seed": 3}}
    cfg = {"audio": {"jitter_stretch": True}}  # the product default: expand bridges short gaps
    with DaemonHarness(tmp_path, echo_db=-30, server_options=opts, config=cfg) as h:
        h.start()
        tap_turn(h, question())
        conn = h.server.record.connection(-1)
        items = [e for e in conn.server_events if e["type"] == "response.output_item.added"]
        audio = h.server.record.item_audio(items[-1]["item"]["id"])
        played = h.speaker.samples
        ref = np.frombuffer(audio, dtype="<i2")
        # every reply sample reached the speaker (fades on underruns scale, never drop)
        assert played.size > ref.size
        faults = [f for f in h.server.record.faults if f["kind"] in ("audio_delay", "audio_gap")]
        assert faults
        # the turn record tells the field what the link did to the reply
        h.wait_event("turn", timeout=10)
        turn = [r for r in h.logs if r.get("VOXBOX_EVENT") == "turn"][-1]
        assert turn["VOXBOX_JITTER_UNDERRUNS"] >= 0 and 20 <= turn["VOXBOX_JITTER_TARGET_MS"] <= 600
        # ... and what the buffer cost in latency (a gap bridged or rebuffered is behind
        # the earliest possible playout from then on, until accelerate catches up)
        # (a little below 0 is accelerate: compressed audio plays ahead of a non-stretching
        # player; a mean above the p95 is a heavy tail: a few samples waited long). Measured
        # means: -2.8..+1.9 ms with the machine idle, down to -8.3 ms with four busy loops
        # on two CPUs beside the rig (the rig's speaker thread then takes periods in bursts,
        # which the paced clock reads early); the figure's accuracy is the jitter
        # benchmark's to check, this test that the record carries it. It is there even when
        # a false barge-in paused the reply (measuring restarts at the resume; seen under
        # that load).
        assert turn["VOXBOX_JITTER_ADDED_MS"] >= -30 and turn["VOXBOX_JITTER_ADDED_P95_MS"] >= 0
        print(f"turn record: jitter underruns {turn['VOXBOX_JITTER_UNDERRUNS']}, "
              f"target {turn['VOXBOX_JITTER_TARGET_MS']} ms, added {turn['VOXBOX_JITTER_ADDED_MS']} ms "
              f"(p95 {turn['VOXBOX_JITTER_ADDED_P95_MS']}), {len(faults)} audio faults")
        # the stop record sums up the reply audio since start
        assert h.stop_daemon() == 0
        stop = h.events("stop")[-1]
        assert stop["VOXBOX_REPLY_S"] == pytest.approx(ref.size / 24000, abs=0.05)
        assert stop["VOXBOX_JITTER_UNDERRUNS"] == turn["VOXBOX_JITTER_UNDERRUNS"]
        assert stop["VOXBOX_JITTER_ADDED_MS"] == turn["VOXBOX_JITTER_ADDED_MS"]


def test_stall_during_a_turn_replaces_the_socket(tmp_path):
    cfg = {"realtime": {"stall_s": 2.0}}
    with DaemonHarness(tmp_path, echo_db=-30, config=cfg) as h:
        h.start()
        t0 = time.monotonic()
        h.press()
        h.wait_state("listening", timeout=5, after=t0)
        h.server.faults.stall()  # nothing more from the service: no events, no pongs
        h.mic.play(question())
        ev = h.wait_event("stall", timeout=30, after=t0)
        h.server.faults.release()
        back = h.wait_event("reconnected", timeout=15, after=ev["mono"])
        print(f"stall detected: {ev['msg']}; session ready again {(back['mono'] - ev['mono']) * 1000:.0f} ms later")
        assert len(h.server.record.connections()) >= 2


@pytest.mark.parametrize("mode", ["http-401", "http-403"])
def test_rejected_auth_goes_to_error_and_retries_slowly(tmp_path, mode):
    cfg = {"realtime": {"reconnect_initial_s": 0.1, "reconnect_max_s": 0.5, "fatal_retry_s": 30}}
    with DaemonHarness(tmp_path, echo_db=None, config=cfg, server_options={"reject_auth": mode}) as h:
        h.start(wait_ready=False)
        fatal = h.wait_event("link_fatal", timeout=30)
        h.wait_state("error", timeout=5)
        time.sleep(4.0)
        n = len([f for f in h.server.record.faults if f["kind"] == "reject_auth"])
        assert n == 1, n
        assert mode[-3:] in fatal["VOXBOX_CAUSE"]
        t0 = time.monotonic()
        h.press()
        assert h.wait_event("prompt", timeout=5, after=t0)["VOXBOX_PROMPT"] == "error"


def test_session_expired_mid_reply_recovers_and_asks_again(tmp_path):
    with DaemonHarness(tmp_path, echo_db=-30) as h:
        h.start()
        tap_turn(h, question(), until="playback_start")
        t_exp = time.monotonic()
        h.server.faults.expire_sessions()
        back = h.wait_event("reconnected", timeout=10, after=t_exp)
        h.wait_event("turn_resent", timeout=5, after=t_exp)
        h.wait_event("playback_end", timeout=40, after=back["mono"])
        assert not [p for p in h.events("prompt") if p["mono"] >= t_exp]
        downs = [r for r in h.events("link_down") if r["mono"] >= t_exp]
        assert "1001" in downs[0]["VOXBOX_CAUSE"] or "session_expired" in downs[0]["VOXBOX_CAUSE"]
        print(f"session expired mid-reply: new session ready {(back['mono'] - t_exp) * 1000:.0f} ms later")
        assert back["mono"] - t_exp < 1.5


def test_malformed_unknown_and_oversized_messages_do_not_break_the_turn(tmp_path):
    # 3 MiB of PCM in one delta (about 4 MiB of JSON, over websockets' default 1 MiB limit):
    # 65 s of audio, so the test interrupts it once it plays
    opts = {"unknown_fields": {"x_future_field": {"a": 1}}, "unknown_event_every": 5,
            "oversized_audio_delta_bytes": 3 * 1024 * 1024}
    with DaemonHarness(tmp_path, echo_db=-30, server_options=opts) as h:
        h.start()
        h.server.faults.send_malformed_json()
        start = tap_turn(h, question(), until="playback_start", timeout=60)
        time.sleep(1.0)
        h.press()
        h.wait_event("barge_in", timeout=10, after=start["mono"])
        assert any(r.get("VOXBOX_EVENT") == "protocol" for r in h.logs)
        assert h.events("link_down") == []  # nothing of this is worth a reconnect
        assert h.proc.poll() is None
