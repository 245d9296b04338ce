"""Full duplex in a car, end to end: the real daemon hears its own reply through a car
cabin (loudspeaker 15 cm from the microphone, mild loudspeaker distortion), 6 dB louder
than the user, and the local server's VAD hears speech at any level (Silero).

The unit must not answer its own voice (one question, one complete reply, one response),
and the user must still be able to interrupt it."""

from __future__ import annotations

import time

import closedloop as cl
import numpy as np
import pytest

from voxbox.audio.speech import render_speech
from voxbox.sim.harness import DaemonHarness, HarnessError

pytestmark = pytest.mark.e2e

USER_DBFS = -30.0
ECHO_DB = 6.0
REPLY = ("Sure. Tomorrow will start cloudy with light rain in the morning, clearing by the afternoon, "
         "with a high of eighteen degrees and a light breeze from the west.", "en-us+f3")


def user(text: str, voice: str = "en-gb") -> np.ndarray:
    x = render_speech(text, voice)
    return (x * 10 ** ((USER_DBFS - cl.active_rms_db(x)) / 20)).astype(np.int16)


def car_loop(tmp_path) -> tuple[DaemonHarness, np.ndarray]:
    reply16 = render_speech(*REPLY)
    room = cl.CAR
    gain = cl.echo_gain_db(reply16, room, USER_DBFS, ECHO_DB)
    h = DaemonHarness(tmp_path, echo_db=gain, echo_delay_ms=room.delay_ms, echo_rir=cl.room_ir(room),
                      echo_nonlinearity=cl.loudspeaker(room.drive), mic_noise_dbfs=-65.0, speaker_slack_periods=2,
                      server_options={"reply_audio": [cl.to24k(reply16)], "pace_min": 2.0, "pace_max": 2.0},
                      # the harness gives the reference 40 ms with 2 slack periods (the rig then
                      # buffers ~50 ms that ALSA does not report): it leads the echo, as a
                      # unit's default of 0 does on a real card. (80 ms, for the default pipe,
                      # made it lag by ~20 ms: the first reply was paused 12-22 times.)
                      config={"gpio": {"hold_ms": 3000}, "conversation": {"follow_up_s": 0.0}})
    return h, cl.to24k(reply16)


def responses(h: DaemonHarness, t0: float) -> int:
    return sum(1 for c in h.server.record.connections() for e in c.server_events
               if e["type"] == "response.created" and e["t"] >= t0)


TIMELINE = ("echo_measured", "echo_delay", "echo_lost", "loudspeaker_model", "near_end", "barge_in_check", "wake", "barge_in",
            "playback_start")


def timeline(h: DaemonHarness, t0: float) -> str:
    """The events that explain a pause or a self-trigger, from ``t0`` (s after it, with the
    journal fields that matter): printed with each reply, so a failure in CI explains itself."""
    out = []
    for r in list(h.logs):
        if r.get("VOXBOX_EVENT") in TIMELINE and r.get("mono", 0) >= t0:
            fields = {k[7:].lower(): v for k, v in r.items()
                      if k.startswith("VOXBOX_") and k not in ("VOXBOX_EVENT", "VOXBOX_T")}
            out.append((r["mono"], f"  {r['mono'] - t0:+7.2f} s {r['VOXBOX_EVENT']} {fields}"))
    # the rig's speaker underruns: device gaps the daemon cannot see on this rig (a card
    # reports them as xruns), which move the echo against its reference
    rate = h.speaker.rate
    out += [(t, f"  {t - t0:+7.2f} s RIG SPEAKER UNDERRUN {n * 1000 / rate:.0f} ms")
            for t, n in list(h.speaker.underruns) if t >= t0]
    # and the microphone samples it dropped (a reader gone for HOLD_MAX_S; lose()), a
    # line per burst
    bursts: list[list[float]] = []
    for t, n in list(h.mic.drops):
        if t >= t0:
            if bursts and t - bursts[-1][1] < 0.05:
                bursts[-1][1:] = [t, bursts[-1][2] + n]
            else:
                bursts.append([t, t, n])
    out += [(t, f"  {t - t0:+7.2f} s RIG MICROPHONE LOST {n * 1000 / h.mic.rate:.0f} ms")
            for t, _, n in bursts]
    return "\n".join(line for _, line in sorted(out, key=lambda x: x[0]))


class RigGap(Exception):
    """The rig lost time the daemon could not see (a speaker underrun: the daemon's playback
    stalled past the pipe and the slack; a microphone loss: its capture stalled past
    ``HOLD_MAX_S``) before the run's first wrong local decision. A card reports both as
    xruns, on which the daemon holds the detector and measures the echo path afresh; the
    ``file`` plugin cannot. The run is void."""


def rig_gaps(h: DaemonHarness, t0: float, t1: float) -> list[str]:
    """The rig's device gaps between ``t0`` and ``t1`` (monotonic s), described."""
    out = [f"speaker underrun {n * 1000 / h.speaker.rate:.0f} ms at +{t - t0:.2f} s"
           for t, n in list(h.speaker.underruns) if t0 <= t <= t1]
    lost = [(t, n) for t, n in list(h.mic.drops) if t0 <= t <= t1]
    if lost:
        out.append(f"microphone lost {sum(n for _, n in lost) * 1000 / h.mic.rate:.0f} ms "
                   f"from +{lost[0][0] - t0:.2f} s")
    return out


def void_if_rig_gap(h: DaemonHarness, t0: float) -> None:
    """Raise :class:`RigGap` if the rig had a device gap between ``t0`` and the first
    near-end decision after it (or now, without one): called when a run failed its checks."""
    near = [r["mono"] for r in h.events("near_end") if r["mono"] >= t0]
    gaps = rig_gaps(h, t0, near[0] if near else time.monotonic())
    if gaps:
        raise RigGap("; ".join(gaps[-3:]))


#: runs of a test before it fails on void runs alone
RUNS = 3


def once_more_after_a_rig_gap(run, tmp_path) -> None:
    """``run(workdir)``; a run made void by a rig gap (:class:`RigGap`) is run again with a
    fresh daemon, ``RUNS`` runs in all; a run that fails without a rig gap fails the test,
    and so do ``RUNS`` void runs. A void run never passes the test. Measured in CI: a
    loaded host stalled the daemon (speaker underruns of 20-56 ms, several per reply), and
    two runs in a row failed after one."""
    voids = []
    for k in range(RUNS):
        try:
            run(tmp_path / f"run{k + 1}")
            return
        except RigGap as exc:
            voids.append(str(exc))
            print(f"run {k + 1} void: {exc}" + ("; running again" if k + 1 < RUNS else ""))
    pytest.fail(f"{RUNS} runs void: the rig could not keep real time ({' | '.join(voids)})")


def ask(h: DaemonHarness, q: np.ndarray) -> tuple[float, dict]:
    t0 = time.monotonic()
    h.press(0.05)
    h.wait_state("listening", timeout=5, after=t0)
    h.mic.play(q)
    return t0, h.wait_event("playback_start", timeout=30, after=t0)


def test_car_at_plus_6_db_one_question_one_complete_reply(tmp_path):
    once_more_after_a_rig_gap(one_question_one_reply, tmp_path)


def one_question_one_reply(tmp_path):
    q = user("What will the weather be like tomorrow?")
    h, reply24 = car_loop(tmp_path)
    with h:
        h.start()
        for k in range(2):  # the first reply after start, then a warm one
            t0, start = ask(h, q)
            end = h.wait_event("playback_end", timeout=40, after=start["mono"])
            h.wait_for(lambda: h.states()[-1] == "idle", 15, "idle")
            time.sleep(1.0)
            barges = [r for r in h.events("barge_in") if r["mono"] >= t0]
            pauses = [r for r in h.events("barge_in_check") if r["mono"] >= t0]
            n = responses(h, t0)
            item = start["VOXBOX_ITEM_ID"]
            sent = h.server.record.connection(-1).item_audio.get(item, b"")
            print(f"reply {k + 1}: {len(sent) / 48000:.1f} s sent, played for {end['mono'] - start['mono']:.1f} s; "
                  f"barge-ins {[b.get('VOXBOX_CAUSE') for b in barges]}, pauses checked {len(pauses)} "
                  f"({[p.get('VOXBOX_VERDICT') for p in pauses]}), responses {n}")
            print(timeline(h, h.logs[0]["mono"] if k == 0 else t0))
            if barges or n != 1 or len(pauses) > 3:
                void_if_rig_gap(h, t0)
            assert not barges, barges
            assert n == 1, f"{n} responses to one question: the unit answered its own voice"
            assert len(sent) / 2 == reply24.size  # the whole reply went out, nothing truncated
            assert not h.server.record.connection(-1).truncates
            # a pause the check rejects costs the listener about a second of silence: a few
            # at most (before the rig's reference lead was fixed, 12-22 in the first reply
            # stretched 9.7 s of reply over 21-32 s)
            assert len(pauses) <= 3 and end["mono"] - start["mono"] < len(sent) / 48000 + 4.0, pauses


def test_car_at_plus_6_db_the_user_interrupts(tmp_path):
    once_more_after_a_rig_gap(user_interrupts, tmp_path)


def user_interrupts(tmp_path):
    q = user("What will the weather be like tomorrow?")
    stop = user("Stop. What about the weekend instead?", "en-us+m1")
    h, reply24 = car_loop(tmp_path)
    with h:
        h.start()
        t0, start = ask(h, q)
        time.sleep(2.5)
        h.mic.play(stop)
        time.sleep(0.05)
        onset = h.mic.t_start + 0.05
        try:
            barge = h.wait_event("barge_in", timeout=5, after=onset - 0.5)
        except HarnessError:
            print(timeline(h, h.logs[0]["mono"]))
            gaps = rig_gaps(h, start["mono"], time.monotonic())
            if gaps:
                raise RigGap("; ".join(gaps[-3:])) from None
            raise
        assert barge["VOXBOX_CAUSE"] == "near-end speech"
        pause = next(r for r in h.events("near_end") if r["mono"] >= onset - 0.5)
        samples, times = h.speaker.snapshot()
        loud = np.nonzero((times >= onset) & (times <= pause["mono"] + 0.5) & (samples != 0))[0]
        quiet_ms = ((times[loud[-1]] if loud.size else onset) - onset) * 1000
        trunc = h.wait_for(lambda: h.server.record.connection(-1).truncates, 5, "truncate at the server")
        # the user's words reached the service and were answered
        h.wait_event("speech_started", timeout=5, after=barge["mono"])
        nxt = h.wait_event("playback_start", timeout=20, after=barge["mono"])
        print(f"interruption: paused {(pause['mono'] - onset) * 1000:.0f} ms after the onset, speaker quiet "
              f"{quiet_ms:.0f} ms after it, confirmed {(barge['mono'] - onset) * 1000:.0f} ms after it; "
              f"truncate {trunc[-1]}; next reply {nxt['VOXBOX_ITEM_ID']}")
        print(f"(user onset at {onset - h.logs[0]['mono']:+.2f} s)")
        print(timeline(h, h.logs[0]["mono"]))
        assert trunc[-1]["item_id"] == start["VOXBOX_ITEM_ID"]
        assert 1000 < trunc[-1]["audio_end_ms"] < reply24.size / 24
        # stopped while the user was still talking (the benchmark measures how fast: it
        # is not asserted here, a loaded CI machine is no place for a timing)
        assert quiet_ms < stop.size / 16


def test_car_at_plus_6_db_a_link_drop_mid_reply_asks_again_and_the_new_reply_plays_whole(tmp_path):
    """The link drops while the reply plays into the car (the echo 6 dB above the user):
    the unit reconnects, asks the held question again, and the new reply plays whole with
    one response; neither the echo of the cut reply nor that of the new one is taken for
    the user (no barge-in, no second response)."""
    once_more_after_a_rig_gap(link_drop_mid_reply, tmp_path)


def link_drop_mid_reply(tmp_path):
    q = user("What will the weather be like tomorrow?")
    h, reply24 = car_loop(tmp_path)
    with h:
        h.start()
        t0, start = ask(h, q)
        time.sleep(1.5)  # mid-sentence
        t_drop = time.monotonic()
        h.server.faults.drop_connections()
        h.wait_event("reconnected", timeout=10, after=t_drop)
        resent = h.wait_event("turn_resent", timeout=5, after=t_drop)
        assert resent["VOXBOX_COMMIT"] == 1
        again = h.wait_event("playback_start", timeout=20, after=resent["mono"])
        end = h.wait_event("playback_end", timeout=40, after=again["mono"])
        h.wait_for(lambda: h.states()[-1] == "idle", 15, "idle")
        time.sleep(1.0)
        barges = [r for r in h.events("barge_in") if r["mono"] >= t_drop]
        pauses = [r for r in h.events("barge_in_check") if r["mono"] >= t_drop]
        conn = h.server.record.connection(-1)
        sent = conn.item_audio.get(again["VOXBOX_ITEM_ID"], b"")
        n = responses(h, resent["mono"])
        print(f"link drop {t_drop - start['mono']:.1f} s into the reply: asked again "
              f"{(resent['mono'] - t_drop) * 1000:.0f} ms after the drop; the new reply played for "
              f"{end['mono'] - again['mono']:.1f} s; barge-ins {[b.get('VOXBOX_CAUSE') for b in barges]}, "
              f"pauses checked {len(pauses)}, responses {n}")
        print(timeline(h, t0))
        if barges or n != 1 or len(pauses) > 3:
            void_if_rig_gap(h, t_drop)
        assert not barges, barges
        assert n == 1, f"{n} responses to one question asked again"
        assert len(sent) / 2 == reply24.size and not conn.truncates
        assert not [p for p in h.events("prompt") if p["mono"] >= t_drop]  # a blip: nothing said
        assert len(pauses) <= 3, pauses


@pytest.mark.benchmark  # on demand: the faulted reply itself is not yet recovered in 2 of 5 runs
def test_car_at_plus_6_db_a_capture_gap_mid_reply_is_caught_up(tmp_path):
    """The microphone loses 150 ms mid-reply and no device says so (an overrun a driver
    hid; on this rig a stalled capture thread did it, and the echo then led its reference
    by 131 ms on the line's floor: nothing was cancelled again and the unit answered
    itself for the rest of the run). The echo-delay tracker measures the echo ahead of
    the floor; the reference skips ahead by what the microphone lost, and the next reply
    is cancelled like any other."""
    q = user("What will the weather be like tomorrow?")
    h, reply24 = car_loop(tmp_path)
    with h:
        h.start()
        t0, start = ask(h, q)  # the first reply: the canceller learns the car
        try:
            h.wait_event("playback_end", timeout=40, after=start["mono"])
        finally:
            print(timeline(h, h.logs[0]["mono"]))
        h.wait_for(lambda: h.states()[-1] == "idle", 15, "idle")
        time.sleep(1.0)
        t1, start = ask(h, q)
        time.sleep(max(0.0, start["mono"] + 2.0 - time.monotonic()))
        t_gap = time.monotonic()
        h.mic.lose(0.150)
        try:
            h.wait_event("playback_end", timeout=60, after=start["mono"])
            h.wait_for(lambda: h.states()[-1] == "idle", 15, "idle")
            time.sleep(1.0)
        finally:
            print(timeline(h, t1))
        skips = [r for r in h.events("echo_delay") if r["mono"] >= t_gap]
        assert skips and max(r.get("VOXBOX_REFERENCE_SKIPPED_MS", 0) for r in skips) >= 100, skips
        print(f"reply 2: responses {responses(h, t1)}, barge-ins "
              f"{[b.get('VOXBOX_CAUSE') for b in h.events('barge_in') if b['mono'] >= t1]}")
        t2, start = ask(h, q)  # after the catch-up: cancelled like the first
        end = h.wait_event("playback_end", timeout=40, after=start["mono"])
        h.wait_for(lambda: h.states()[-1] == "idle", 15, "idle")
        time.sleep(1.0)
        print(timeline(h, t2))
        barges = [r for r in h.events("barge_in") if r["mono"] >= t2]
        pauses = [r for r in h.events("barge_in_check") if r["mono"] >= t2]
        assert not barges, barges
        assert responses(h, t2) == 1
        assert len(pauses) <= 1, pauses
        sent = h.server.record.connection(-1).item_audio.get(start["VOXBOX_ITEM_ID"], b"")
        assert len(sent) / 2 == reply24.size and end["mono"] - start["mono"] < len(sent) / 48000 + 2.0
