"""The daemon's parts on their own, without the daemon: the audio path (what the capture
and playback threads do with a period), the echo path (the far-end reference and its
delay line) and the Realtime link's uplink queue, each driven with real numpy frames and
fake callbacks (the end-to-end tests run them together in the real daemon)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import math

import numpy as np
import pytest

from helpers import Loop
from voxbox.audio.jitter import JitterBuffer
from voxbox.config import parse_config
from voxbox.realtime.dialects import PCM_RATE
from voxbox.service.audiopath import UPLINK_BLOCK_MS, AudioCallbacks, AudioPath
from voxbox.service.echopath import MIN_REF_DELAY_PERIODS, EchoPath


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name):
        return lambda *a: self.calls.append((name, a))

    def names(self):
        return [c[0] for c in self.calls]


class Volume:
    def apply(self, frame):
        pass


def cfg(**sections):
    base = {"frontend": {"echo_cancel": False}, "wake": {"enabled": False}, "barge_in": {"mode": "service"}}
    base.update(sections)
    return parse_config(base)


def audio_path(c, rec: Recorder, echo=None):
    a = c.audio
    jitter = JitterBuffer(a.playback_rate, a.playback_rate * a.period_ms // 1000, a.jitter_prebuffer_ms)
    echo = echo or EchoPath(c, a.capture_rate * a.period_ms // 1000, _NOWHERE, SimpleNamespace(),
                            on_path_changed=lambda: rec.calls.append(("path_changed", ())))
    cb = AudioCallbacks(**{f: getattr(rec, f) for f in AudioCallbacks.__dataclass_fields__})
    p = AudioPath(c, jitter, Volume(), echo, cb, local_barge_in=False)
    p.build()
    p.start(Loop())
    echo.start(Loop())
    return p


_NOWHERE = None  # no echo state file: the echo path is not tracked with echo_cancel off


def test_uplink_blocks_only_while_open_and_never_while_muted():
    c = cfg()
    rec = Recorder()
    p = audio_path(c, rec)
    frame = (np.sin(np.arange(p.cap_period) / 3) * 8000).astype(np.int16)
    for k in range(10):
        p.on_capture_frame(frame, k * 0.01)
    assert "on_uplink_block" not in rec.names() and p.capture_frames == 10
    p.uplink_open = True
    for k in range(10, 30):  # 200 ms
        p.on_capture_frame(frame, k * 0.01)
    blocks = [a[0] for n, a in rec.calls if n == "on_uplink_block"]
    # 24 kHz PCM16 blocks of UPLINK_BLOCK_MS (the resampler holds a few samples back)
    assert len(blocks) >= 3 and all(len(b) >= PCM_RATE * UPLINK_BLOCK_MS // 1000 * 2 for b in blocks)
    n = len(blocks)
    p.muted = True
    for k in range(30, 60):
        p.on_capture_frame(frame, k * 0.01)
    assert len([1 for m, _ in rec.calls if m == "on_uplink_block"]) == n  # muted: nothing goes out
    assert p.last_nonsilent_t == pytest.approx(0.59)


def test_playback_reports_a_reply_start_and_its_end_and_mixes_a_cue():
    c = cfg()
    rec = Recorder()
    p = audio_path(c, rec)
    rate = c.audio.playback_rate
    p.jitter.push("item1", (np.ones(rate // 5) * 1000).astype(np.int16))  # 200 ms
    p.jitter.mark_complete()
    seen = []
    for k in range(60):
        out = p.playback_source()
        seen.append(int(np.abs(out).max()))
        p.playback_written(out, k * 0.01)
    assert rec.names().count("on_playback_started") == 1 and rec.names().count("on_playback_drained") == 1
    assert max(seen) == 1000 and seen[-1] == 0
    p.play_cue(np.full(p.play_period * 2, 500, dtype=np.int16))
    assert int(p.playback_source().max()) == 500 and p.cue is not None
    p.playback_source()
    assert p.cue is None  # played out


def test_echo_path_delays_the_reference_by_its_line_and_takes_back_dropped_audio():
    c = cfg()
    rec = Recorder()
    period = c.audio.capture_rate * c.audio.period_ms // 1000
    e = EchoPath(c, period, _NOWHERE, SimpleNamespace(), on_path_changed=lambda: rec.calls.append(("changed", ())))
    e.start(Loop())
    assert e.delay == e.floor == MIN_REF_DELAY_PERIODS * period  # reference_delay_ms 0 -> the floor
    ref = np.zeros(period, dtype=np.int16)
    # the playback rate differs from the capture rate: what is written is resampled
    play_period = c.audio.playback_rate * c.audio.period_ms // 1000
    marks = []
    for k in range(20):
        e.written(np.full(play_period, 100 * (k + 1), dtype=np.int16))
        e.read(ref)
        marks.append(int(np.median(ref)))
    # once the line is filled, the reference read is the one written MIN_REF_DELAY_PERIODS earlier
    assert marks[-1] == pytest.approx(100 * (20 - MIN_REF_DELAY_PERIODS), abs=100)
    before = e.ring.available
    e.dropped(play_period)  # a barge-in dropped one period the device held
    assert e.ring.available == before - period


def test_link_queue_keeps_audio_and_actions_in_order():
    from voxbox.realtime.client import LinkCallbacks, RealtimeLink
    from voxbox.realtime.link import LinkSupervisor

    c = parse_config({"realtime": {"url": "local"}})
    noop = lambda *a: None  # noqa: E731
    link = RealtimeLink(c, c.realtime, SimpleNamespace(value="k", source="test"), LinkSupervisor(),
                        LinkCallbacks(on_event=noop, on_ready=noop, on_closed=noop, on_lost=noop, on_fatal=noop,
                                      in_turn=lambda: True, audio_wanted=lambda: True, on_audio_sent=noop),
                        SimpleNamespace())

    async def fill():
        assert link.send_audio(b"\x00\x01") and link.send_action(lambda s: None) and link.send_audio(b"\x02")
        items = [link._uplink_q.get_nowait() for _ in range(3)]
        assert items[0] == b"\x00\x01" and callable(items[1]) and items[2] == b"\x02"
        link.send_audio(b"\x03")
        link.drain_uplink()
        assert link._uplink_q.empty()

    asyncio.run(fill())
    assert not link.ready and link.session is None


def test_loudspeaker_model_is_restored_and_its_changes_reported():
    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": False})
    rec = Recorder()
    p = audio_path(c, rec)
    ls = p.frontend.loudspeaker
    assert ls is not None and math.isinf(ls.clip)
    p.restore_loudspeaker(None)
    assert math.isinf(ls.clip)
    p.restore_loudspeaker((0.21, 8.0))
    assert ls.knee == 8.0 and abs(ls.clip - 0.21) < 0.03
    period = c.audio.capture_rate * c.audio.period_ms // 1000
    frame = np.zeros(period, dtype=np.int16)
    p.on_capture_frame(frame, 0.0)
    assert "on_loudspeaker" not in rec.names()
    p._reconverge_frames = 0
    ls.changes += 1  # the model settled on another saturation (capture thread)
    ls.current = 0
    p.on_capture_frame(frame, 0.01)
    (got,) = [a for n, a in rec.calls if n == "on_loudspeaker"]
    assert math.isinf(got[0])
    # a new model is chosen because it fits the filter as it is: no reconvergence hold
    # (which kept a user who interrupted just then waiting 1 s)
    assert p._reconverge_frames == 0


def test_a_cold_start_pauses_no_reply_until_the_line_is_measured():
    """A start without a measured delay line holds the near-end detector's pauses (and the
    low wake threshold) until the echo-delay tracker measured it, at most COLD_FAR_MS of
    far-end signal; then RECONVERGE_FAR_MS from the start at the earliest."""
    from voxbox.service.audiopath import COLD_FAR_MS, RECONVERGE_FAR_MS

    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": False})
    p = audio_path(c, Recorder())
    per_ms = c.audio.capture_rate / 1000 / p.frontend.frame_size
    p.echo_path_changed(cold=True)
    assert p._reconverge_frames == int(COLD_FAR_MS * per_ms)
    p._reconverge_frames -= int(300 * per_ms)  # 300 ms of far end went by
    p.line_measured()
    left = p._reconverge_frames
    assert abs(left - (RECONVERGE_FAR_MS - 300) * per_ms) <= 2  # the first second still holds
    p.line_measured()  # once only
    assert p._reconverge_frames == left
    p.echo_path_changed(cold=True)
    p.echo_path_changed()  # a resync of the ring before the line was measured: still cold
    assert p._reconverge_frames == int(COLD_FAR_MS * per_ms)
    p._reconverge_frames -= int(2500 * per_ms)
    p.line_measured()
    assert p._reconverge_frames == 0  # measured after 2.5 s: nothing more to wait for
    p.echo_path_changed()  # a warm change: one second, and a measurement changes nothing
    p.line_measured()
    assert p._reconverge_frames == int(RECONVERGE_FAR_MS * per_ms)


def test_echo_path_reports_its_first_measurement_once():
    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": True})
    period = c.audio.capture_rate * c.audio.period_ms // 1000
    seen = []
    e = EchoPath(c, period, _NOWHERE, SimpleNamespace(), on_path_changed=lambda: None,
                 on_measured=lambda: seen.append(1))
    e.tracker = SimpleNamespace(push=lambda ref, mic: SimpleNamespace(delay_ms=e.delay * 1000 / 16000 + 10,
                                                                    erl_db=6.0, confidence=50.0),
                                drift_ppm=0.0, drift_stderr_ppm=1.0)
    e.aligner = SimpleNamespace(on_delay=lambda d, line, urgent=False: None, on_drift=lambda *a: None)
    logged = []
    e._loop = SimpleNamespace(call_soon_threadsafe=lambda f, *a: logged.append(a))
    z = np.zeros(period, np.int16)
    for _ in range(3):
        e.track(z, z)
    assert seen == [1] and e.measured and len(logged) == 1  # one journal line


def test_echo_path_saves_the_loudspeaker_model_with_the_echo_path(tmp_path):
    import asyncio

    from voxbox.dsp.echostate import load_echo_state

    c = cfg(frontend={"echo_cancel": True})
    period = c.audio.capture_rate * c.audio.period_ms // 1000
    path = tmp_path / "echo.json"

    async def run():
        e = EchoPath(c, period, path, SimpleNamespace(), on_path_changed=lambda: None)
        e.start(asyncio.get_running_loop())
        e.note_loudspeaker(0.2, 8.0)
        await asyncio.sleep(0.2)  # the save runs off the loop
        await e.stop()
        return e

    asyncio.run(run())
    st = load_echo_state(path, EchoPath(c, period, path, SimpleNamespace(), on_path_changed=lambda: None).devices)
    assert st is not None and (st.loudspeaker_clip, st.loudspeaker_knee) == (0.2, 8.0)
    e = EchoPath(c, period, path, SimpleNamespace(), on_path_changed=lambda: None)
    e.restore()
    assert e.loudspeaker == (0.2, 8.0)


def test_a_device_gap_is_an_echo_path_change_and_the_next_estimate_moves_the_line_at_once():
    """A playback underrun (silence the reference does not hold) or a capture overrun
    (microphone samples lost) shifts the echo: the canceller and the near-end detector
    are told at once, the tracker starts a fresh window, and its first estimate moves the
    line without waiting for a pause of the far end or for a second estimate."""
    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": True})
    period = c.audio.capture_rate * c.audio.period_ms // 1000
    changed = []
    e = EchoPath(c, period, _NOWHERE, SimpleNamespace(set_echo_delay_ms=lambda v: None, set_erl_db=lambda v: None),
                 on_path_changed=lambda: changed.append(1))
    e._loop = Loop()
    resets, urgent_seen = [], []
    est = SimpleNamespace(delay_ms=80.0, erl_db=6.0, confidence=50.0)
    e.tracker = SimpleNamespace(push=lambda ref, mic: est, reset=lambda: resets.append(1),
                                drift_ppm=0.0, drift_stderr_ppm=1.0)
    real = e.aligner

    def on_delay(d, line, urgent=False):
        urgent_seen.append(urgent)
        return real.on_delay(d, line, urgent=urgent)

    e.aligner = SimpleNamespace(on_delay=on_delay, on_drift=lambda *a: None)
    loud = np.full(period, 3000, np.int16)  # the far end plays: a plain move would wait
    line = e.delay
    e.track(loud, loud)
    assert e.delay == line and urgent_seen == [False]  # one estimate out of band: kept
    e.device_gap()
    assert changed == [1]
    e.track(loud, loud)
    assert len(resets) == 2 and urgent_seen == [False, True]  # a fresh window; the move's reset
    assert e.delay == line + round((80.0 - 10.0) * 16)  # moved at once, to the wanted lead
    e.track(loud, loud)
    assert urgent_seen[-1] is False  # only the first estimate after the gap


def test_echo_path_reports_each_line_move_on_the_event_loop():
    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": True})
    period = c.audio.capture_rate * c.audio.period_ms // 1000
    moves = []
    e = EchoPath(c, period, _NOWHERE, SimpleNamespace(set_echo_delay_ms=lambda v: None, set_erl_db=lambda v: None),
                 on_path_changed=lambda: None, on_moved=lambda old, new: moves.append((old, new)))
    e._loop = Loop()
    est = SimpleNamespace(delay_ms=80.0, erl_db=6.0, confidence=50.0)
    e.tracker = SimpleNamespace(push=lambda ref, mic: est, reset=lambda: None, drift_ppm=0.0, drift_stderr_ppm=1.0)
    loud = np.full(period, 3000, np.int16)
    line_ms = e.delay * 1000 / c.audio.capture_rate
    e.device_gap()
    e.track(loud, loud)  # the first estimate after a gap moves the line at once
    assert moves == [(line_ms, line_ms + 70.0)]


def _daemon_stub(turn=0, state=None, active=False, cue=None, startup=True):
    from voxbox.conversation.machine import State

    played = []
    return played, SimpleNamespace(
        _startup_cue_again=False, conv=SimpleNamespace(turn=turn, state=state or State.IDLE),
        jitter=SimpleNamespace(active=active), audio=SimpleNamespace(cue=cue),
        _earcons={"startup": np.zeros(8, np.int16) if startup else None}, _play_earcon=played.append)


def test_a_line_move_before_the_first_turn_plays_the_startup_cue_once_more():
    """The start-up cue trained the canceller on the old line; a move before the first
    turn loses that, so the cue plays again -- once, only while nothing else happens."""
    from voxbox.conversation.machine import State
    from voxbox.service.daemon import Daemon

    played, d = _daemon_stub()
    Daemon._line_moved(d, 50.0, 20.0)
    Daemon._line_moved(d, 20.0, 35.0)
    assert played == ["startup"]
    for kw in ({"turn": 1}, {"state": State.LISTENING}, {"active": True}, {"cue": np.zeros(8, np.int16)},
               {"startup": False}):
        played, d = _daemon_stub(**kw)
        Daemon._line_moved(d, 50.0, 20.0)
        assert played == [], kw


def test_a_ring_skips_ahead_but_keeps_its_backlog():
    from voxbox.audio.ring import SampleRing

    r = SampleRing(1000)
    r.write(np.arange(500, dtype=np.int16))
    assert r.skip(300, keep=100) == 300 and r.available == 200
    assert r.skip(300, keep=100) == 100 and r.available == 100
    assert r.skip(50, keep=100) == 0
    out = np.zeros(10, np.int16)
    r.read_into(out)
    assert out[0] == 400  # the reader went on from where it skipped to


def test_an_echo_ahead_of_the_floor_skips_the_reference_by_what_the_microphone_lost():
    """The microphone lost 150 ms the reference still holds (a capture gap no device
    reported): the echo leads its reference by more than the line can give back. The
    ring then holds 150 ms more backlog than the line; the reader skips ahead by what
    is missing and keeps the floor's backlog. Without the backlog nothing is skipped."""
    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": True})
    rate = c.audio.capture_rate
    period = rate * c.audio.period_ms // 1000
    moves = []
    e = EchoPath(c, period, _NOWHERE, SimpleNamespace(set_echo_delay_ms=lambda v: None, set_erl_db=lambda v: None),
                 on_path_changed=lambda: None, on_moved=lambda old, new: moves.append((old, new)))
    loop = Loop()
    e._loop = loop
    e.delay = e.floor + 2 * period  # a 50 ms line
    out = np.zeros(period, np.int16)
    e.ring.write(np.zeros(e.delay + period, np.int16))
    e.read(out)  # the reader is placed: the line's backlog
    assert e.ring.available == e.delay
    e.ring.write(np.zeros(150 * rate // 1000, np.int16))  # the writer went on, the microphone lost 150 ms
    est = SimpleNamespace(delay_ms=-130.0, erl_db=6.0, confidence=50.0)  # 50 ms line - 180 ms
    e.tracker = SimpleNamespace(push=lambda ref, mic: est, reset=lambda: None, drift_ppm=0.0, drift_stderr_ppm=1.0)
    e.measured = True
    loud = np.full(period, 3000, np.int16)
    e.track(loud, loud)  # an echo ahead of its reference moves the line at once, to the floor
    assert e.delay == e.floor and e.ring.available == 3200 and moves == [(50.0, 30.0)]
    e.track(loud, loud)  # a second estimate as far ahead: the reference skips what is missing
    wanted = 140 * rate // 1000  # the lead of 10 ms, and the aligner's margin at most
    assert e.floor + period <= e.ring.available <= 3200 - wanted and moves[-1][1] <= 30.0 - 140.0
    left = e.ring.available
    est.delay_ms = -300.0  # no backlog beyond the line and a period: nothing more to skip
    e.track(loud, loud)
    e.track(loud, loud)
    assert e.ring.available >= e.floor + period and len(moves) <= 3
    assert e.ring.available == left or left > e.floor + period
    # one estimate ahead is not enough (a first window on a weak echo once gave -36.5 ms
    # with the real echo 70 ms behind): the next one, not ahead, skips nothing
    e.ring.write(np.zeros(100 * rate // 1000, np.int16))
    est.delay_ms = 12.0
    e.track(loud, loud)  # the echo behind its reference again
    avail = e.ring.available
    est.delay_ms = -36.5
    e.track(loud, loud)
    est.delay_ms = 12.0
    e.track(loud, loud)
    assert e.ring.available == avail
    # an echo a few ms ahead, twice in a row (the +10 dB closed loop re-measured -10 ms
    # seven times; CI, -2.2 ms twice): an echo ahead of its reference is not cancelled at
    # all, so the reference skips it and the lead
    est.delay_ms = -3.0
    e.track(loud, loud)
    assert e.ring.available == avail
    e.track(loud, loud)
    skipped = (avail - e.ring.available) * 1000 / rate
    # the lead, and the aligner's spread margin (at most 40 ms) after these wild estimates
    assert 3.0 + 10.0 <= skipped <= 3.0 + 10.0 + 40.0, skipped


def test_two_false_interruptions_within_ten_seconds_mean_the_echo_path_is_lost(monkeypatch):
    """Each false pause silences the reference, so the tracker, which needs half of a 2 s
    window of far end, may never measure again while the canceller does not cancel: a
    second rejected check within ECHO_LOST_S has the echo path measured afresh and the
    detector wait as at a cold start. A single one, or two far apart, change nothing."""
    from voxbox.duplex.interruption import Verdict
    from voxbox.service import controller as ctl

    clock = [100.0]
    monkeypatch.setattr(ctl.time, "monotonic", lambda: clock[0])
    calls = []
    stub = SimpleNamespace(
        audio=SimpleNamespace(tentative=True, echo_path_changed=lambda cold=False: calls.append(("hold", cold))),
        echo=SimpleNamespace(lost=lambda: calls.append(("lost",))),
        metrics=SimpleNamespace(on_barge_in_rejected=lambda: None),
        conv=SimpleNamespace(near_end_rejected=lambda now: []), _apply=lambda acts: None, _last_rejected=None)

    def reject(t):
        clock[0] = t
        stub.audio.tentative = True
        ctl.Controller._on_verdict(stub, Verdict.REJECTED, {}, 0, 48)

    reject(100.0)
    reject(100.0 + ctl.ECHO_LOST_S + 1)  # far apart: nothing
    assert calls == []
    reject(100.0 + ctl.ECHO_LOST_S + 5)  # 4 s after the last: lost
    assert calls == [("lost",), ("hold", True)]
    reject(100.0 + ctl.ECHO_LOST_S + 6)  # the count starts again after a loss
    assert len(calls) == 2


def test_a_line_move_retrains_the_canceller_off_the_capture_thread_and_it_takes_over():
    """The echo worker moves the line (EchoPath.line_shift); at the next period the
    capture thread re-pairs the front end's history and starts the retraining on its own
    thread; at a period after it is done the new canceller takes over. A device gap drops
    the history."""
    import time as _time

    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": False})
    rec = Recorder()
    p = audio_path(c, rec)
    period = p.cap_period
    rng = np.random.default_rng(5)
    for _ in range(150):  # 1.5 s of loud far end and its echo
        x = (rng.standard_normal(period) * 3000).astype(np.int16)
        p.echo.ring.write(x)
        p.on_capture_frame((x // 3).astype(np.int16), 0.0)
    old = p.frontend._ec
    jobs = []
    prepare = p.frontend.prepare_realign
    p.frontend.prepare_realign = lambda shift: jobs.append(prepare(shift)) or jobs[-1]
    p.echo.line_shift += 160  # the echo worker moved the line by 10 ms
    p.on_capture_frame(np.zeros(period, np.int16), 0.0)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.frames > 50
    deadline = _time.monotonic() + 10
    while not job.done and _time.monotonic() < deadline:
        _time.sleep(0.01)
    p.on_capture_frame(np.zeros(period, np.int16), 0.0)
    assert p._retraining is None and p.frontend._ec is not old and old.closed
    p.echo.gaps += 1  # a device gap: nothing before it re-pairs
    p.on_capture_frame(np.zeros(period, np.int16), 0.0)
    assert p.frontend._hist_n <= 1


def test_the_startup_cue_once_played_retrains_the_canceller_and_a_cut_cue_does_not():
    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": False})
    p = audio_path(c, Recorder())
    cue = np.full(p.play_period * 3, 1000, np.int16)
    p.play_cue(cue, retrain=True)
    p.play_cue(cue)  # another cue cut it: no retraining
    for _ in range(4):
        p.playback_source()
    assert p.cue is None and p._retrain_at == 0.0
    p.play_cue(cue, retrain=True)
    for _ in range(4):
        p.playback_source()
    due = p._retrain_at
    assert due > 0.0
    started = []
    retrain = p._retrain
    p._retrain = lambda shift: (started.append(shift), retrain(shift))
    p.on_capture_frame(np.zeros(p.cap_period, np.int16), due - 0.1)
    assert started == []  # its echo is still coming in
    p.on_capture_frame(np.zeros(p.cap_period, np.int16), due)
    assert started == [0] and p._retrain_at == 0.0


def test_no_retraining_after_the_startup_cue_when_the_user_spoke_over_it():
    """A question asked over the cue is double talk in the history: a fresh canceller
    trained on it learns the voice as echo, so the retraining is skipped."""
    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": False})
    p = audio_path(c, Recorder())
    cue = np.full(p.play_period * 3, 1000, np.int16)
    p.play_cue(cue, retrain=True)
    for _ in range(4):
        p.playback_source()
    due = p._retrain_at
    started = []
    p._retrain = lambda shift: started.append(shift)
    p.uplink_open = True  # the user's question
    p.on_capture_frame(np.zeros(p.cap_period, np.int16), due - 0.5)
    p.uplink_open = False
    p.on_capture_frame(np.zeros(p.cap_period, np.int16), due)
    assert started == [] and p._retrain_at == 0.0


def _far_end(p, seconds: float, t0: float = 10.0) -> float:
    """Feed ``seconds`` of a speech-like far end and its echo (a room's, behind the
    reference line by 10 ms) through the capture path; returns the time of the next period."""
    from synth import room_ir, speechlike

    period = p.cap_period
    n = int(seconds * 100) * period
    ref = (speechlike(n, 7) * 12000).astype(np.int16)
    lag = MIN_REF_DELAY_PERIODS * period + period
    mic = np.convolve(np.concatenate([np.zeros(lag), ref.astype(np.float64)]), room_ir(8))[:n]
    mic = np.clip(mic, -32768, 32767).astype(np.int16)
    t = t0
    for i in range(0, n, period):
        p.echo.ring.write(ref[i : i + period])
        p.on_capture_frame(mic[i : i + period], t)
        t += 0.01
    return t


def test_a_young_canceller_is_retrained_early_off_the_capture_thread():
    """2 s into its first far end the capture thread starts the early retraining (four
    passes) on its own thread, once, and the new canceller takes over."""
    import time as _time

    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": False})
    p = audio_path(c, Recorder())
    fe = p.frontend
    assert fe.young and not fe.early_retrain_inline
    jobs = []
    prepare = fe.prepare_early_retrain
    fe.prepare_early_retrain = lambda: jobs.append(prepare()) or jobs[-1]
    old = fe._ec
    t = _far_end(p, 2.3)
    assert len(jobs) == 1 and not fe.young
    job = jobs[0]
    assert job.passes == 4 and job.frames == 125
    deadline = _time.monotonic() + 10
    while not job.done and _time.monotonic() < deadline:
        _time.sleep(0.01)
    _far_end(p, 0.5, t)
    assert p._retraining is None and fe._ec is not old and old.closed and len(jobs) == 1


def test_no_early_retraining_while_the_near_end_detector_hears_the_user():
    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": False})
    p = audio_path(c, Recorder())
    started = []
    p._retrain = lambda shift, early=False: started.append((shift, early, p.last_capture_t))
    p._near_t = 11.0  # the user, 1 s into the far end
    t = _far_end(p, 2.5)
    assert started == [] and p.frontend.retrain_due
    _far_end(p, 1.0, t)  # the stand-in keeps the canceller young: it asks every period
    shift, early, when = started[0]
    assert (shift, early) == (0, True) and when == pytest.approx(13.01, abs=0.006)  # 2 s after the user


def test_a_device_gap_during_the_early_retraining_drops_it_and_the_canceller_stays():
    """A fault in the middle of the first reply (an xrun: the echo moved against the
    reference by an unknown amount) while the early retraining runs: the job is stale,
    its canceller is closed, the running one is kept, and the front end goes on."""
    import time as _time

    c = cfg(frontend={"echo_cancel": True, "track_echo_delay": False})
    p = audio_path(c, Recorder())
    fe = p.frontend
    jobs = []
    prepare = fe.prepare_early_retrain
    fe.prepare_early_retrain = lambda: jobs.append(prepare()) or jobs[-1]
    t = _far_end(p, 2.3)
    assert len(jobs) == 1
    job = jobs[0]
    deadline = _time.monotonic() + 10
    while not job.done and _time.monotonic() < deadline:
        _time.sleep(0.01)
    kept = fe._ec
    p.echo.gaps += 1  # the device gap, noticed before the job is adopted
    t = _far_end(p, 0.5, t)
    assert p._retraining is None and fe._ec is kept and not kept.closed
    assert job.canceller is None  # discarded: closed, not leaked
    assert not fe.young and len(jobs) == 1  # not retried: the canceller keeps learning as it is
