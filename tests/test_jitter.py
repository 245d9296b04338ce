"""Jitter buffer core: prebuffer, exact per-item accounting, underrun, flush; the plain
(``stretch=False``) behaviour first, then time-stretching (expand/accelerate)."""
import tracemalloc
from collections import deque

import numpy as np
import pytest

from voxbox.audio import jitter
from voxbox.audio.jitter import MAX_ITEMS, MIN_CHUNK_MS, SEG_KEEP, JitterBuffer


def pull(jb, n=240):
    out = np.empty(n, dtype=np.int16)
    return jb.pull(out), out


def test_prebuffer_then_exact_accounting():
    jb = JitterBuffer(prebuffer_ms=60, stretch=False)
    jb.push("a", np.arange(1, 1001, dtype=np.int16))  # 1000 samples < 1440 prebuffer
    r, out = pull(jb)
    assert r.samples == 0 and not out.any()
    jb.push("a", np.ones(1000, dtype=np.int16))
    got = []
    for _ in range(10):
        r, out = pull(jb)
        got.append(out[:r.samples].copy())
    data = np.concatenate(got)
    assert data.size == 2000 - 0 or data.size <= 2000
    assert jb.played["a"] == data.size
    assert np.array_equal(data[:1000], np.arange(1, 1001, dtype=np.int16))


def test_complete_plays_below_prebuffer_and_drains():
    jb = JitterBuffer(prebuffer_ms=60, stretch=False)
    jb.push("a", np.ones(300, dtype=np.int16))
    jb.mark_complete()
    r1, _ = pull(jb)
    r2, out = pull(jb)
    assert (r1.samples, r2.samples) == (240, 60)
    assert r2.drained and not r2.underrun
    assert jb.played == {"a": 300} and not jb.active


def test_underrun_counts_and_fades():
    jb = JitterBuffer(prebuffer_ms=10, stretch=False)
    jb.push("a", np.full(300, 10000, dtype=np.int16))
    pull(jb)
    r, out = pull(jb)
    assert r.underrun and jb.underruns == 1
    assert out[59] < 10000 and out[0] == 10000  # faded tail, no click
    assert jb.played["a"] == 300


def test_flush_drops_everything_and_reports_played():
    jb = JitterBuffer(prebuffer_ms=0, stretch=False)
    jb.push("a", np.ones(2400, dtype=np.int16))
    pull(jb)
    pull(jb)
    played = jb.flush()
    assert played == {"a": 480}
    r, out = pull(jb)
    assert r.samples == 0 and not out.any() and jb.queued_samples == 0


def test_two_items_accounted_separately():
    jb = JitterBuffer(prebuffer_ms=0, stretch=False)
    jb.push("a", np.ones(100, dtype=np.int16))
    jb.push("b", np.ones(500, dtype=np.int16))
    r, _ = pull(jb)
    assert jb.played == {"a": 100, "b": 140} and r.item_id == "b"


# ---- adaptive target, fades, accounting under a fake clock -------------------------------
RATE, PERIOD = 24000, 240


def play_reply(jb, t0, sizes, arrivals, item="r", value=1000, tick=0.01):
    """Drive one reply through ``jb`` on a fake 10 ms playback clock starting at ``t0``.

    Chunk ``i`` (``sizes[i]`` samples of ``value``) is pushed with its exact arrival time
    ``t0 + arrivals[i]`` before the first pull at or after it; ``mark_complete`` follows
    the last chunk. Returns (outputs, results, t_end)."""
    outs, results = [], []
    i, t = 0, t0
    while i < len(sizes) or jb.active:
        while i < len(sizes) and t0 + arrivals[i] <= t:
            jb.push(item, np.full(sizes[i], value, dtype=np.int16), t=t0 + arrivals[i])
            i += 1
            if i == len(sizes):
                jb.mark_complete()
        out = np.empty(PERIOD, dtype=np.int16)
        results.append(jb.pull(out))
        outs.append(out)
        t += tick
    return outs, results, t


def calm_reply(rng, n=20, speed=3.0):
    sizes = rng.integers(50, 251, n) * RATE // 1000
    send = np.concatenate([[0.0], np.cumsum(sizes[:-1]) / RATE / speed])
    return sizes, send + 0.030  # constant network delay


def jittery_reply(rng, n=20, speed=3.0):
    sizes, send = calm_reply(rng, n, speed)
    arr = send + rng.lognormal(np.log(0.05), 0.8, n)
    arr[1] += 0.3  # a spike early in the reply, when the buffer is still shallow
    return sizes, np.maximum.accumulate(arr)  # in-order delivery (TCP)


def test_target_grows_under_jitter_and_shrinks_when_calm():
    rng = np.random.default_rng(1)
    jb = JitterBuffer(prebuffer_ms=60, min_ms=20, max_ms=600, stretch=False)
    t = 0.0
    for _ in range(3):
        _, _, t = play_reply(jb, t, *calm_reply(rng))
        t += 2.0
    assert jb.target_ms == 20  # bursts faster than real time: stays at the minimum
    calm_underruns = jb.underruns
    for _ in range(4):
        _, _, t = play_reply(jb, t, *jittery_reply(rng))
        t += 2.0
    grown = jb.target_ms
    assert grown >= 100, grown
    assert calm_underruns == 0
    # deeper target: later jittery replies underrun less than a fixed 20 ms buffer would
    fixed = JitterBuffer(prebuffer_ms=20, min_ms=20, max_ms=20, stretch=False)
    u0 = jb.underruns
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    ta = tb = t
    for _ in range(6):
        _, _, ta = play_reply(jb, ta, *jittery_reply(rng_a))
        _, _, tb = play_reply(fixed, tb, *jittery_reply(rng_b))
        ta, tb = ta + 2.0, tb + 2.0
    assert jb.underruns - u0 < fixed.underruns
    shrinking = []
    for _ in range(15):
        _, _, t = play_reply(jb, t, *calm_reply(rng))
        t += 2.0
        shrinking.append(jb.target_ms)
    assert shrinking == sorted(shrinking, reverse=True) and shrinking[-1] == 20, shrinking


def test_target_bounded_by_min_and_max():
    rng = np.random.default_rng(2)
    jb = JitterBuffer(prebuffer_ms=60, min_ms=40, max_ms=200, stretch=False)
    sizes, _ = calm_reply(rng)
    stalled = np.concatenate([[0.0], np.full(len(sizes) - 1, 3.0)])  # 3 s outage after chunk 0
    _, _, t = play_reply(jb, 0.0, sizes, stalled)
    assert jb.target_ms == 200 and jb.underruns == 1
    for _ in range(15):
        _, _, t = play_reply(jb, t + 1.0, *calm_reply(rng))
    assert jb.target_ms == 40
    fixed = JitterBuffer(prebuffer_ms=60, min_ms=60, max_ms=60, stretch=False)
    play_reply(fixed, 0.0, sizes, stalled)
    assert fixed.target_ms == 60


def test_first_observation_replaces_initial_prebuffer():
    jb = JitterBuffer(prebuffer_ms=300, min_ms=20, max_ms=600, stretch=False)
    assert jb.target_ms == 300
    play_reply(jb, 0.0, [2400] * 5, [0.0, 0.03, 0.06, 0.09, 0.12])
    assert jb.target_ms == 20 and jb.observations == 1


def test_requirement_of_a_late_chunk():
    # real-time-paced sender, second chunk 200 ms late: the segment needed the first chunk
    # (100 ms) buffered; the target follows (rounded up to 5 ms) as soon as the late chunk
    # arrives, and playback rebuffers to it.
    jb = JitterBuffer(prebuffer_ms=20, min_ms=20, max_ms=600, stretch=False)
    outs, res, _ = play_reply(jb, 0.0, [2400, 2400, 2400], [0.0, 0.3, 0.31])
    assert jb.underruns == 1 and jb.observations == 2  # the stalled segment, the resumed one
    assert jb.target_ms == 105
    resumed = next(i for i, r in enumerate(res) if i > 10 and r.samples)
    assert res[10].underrun and resumed >= 31  # waited for the third chunk, not just the 2nd
    assert jb.played == {"r": 7200}


def _jumps(outs):
    return np.abs(np.diff(np.concatenate(outs).astype(np.int32)))


def test_underrun_at_period_boundary_fades_out_without_click():
    a, f = 20000, 96
    jb = JitterBuffer(prebuffer_ms=0, fade_samples=f, stretch=False)
    jb.push("a", np.full(480, a, dtype=np.int16), t=0.0)  # ends exactly on a period
    outs = [pull(jb)[1] for _ in range(2)]
    r, out = pull(jb)
    outs.append(out)
    assert r.underrun and r.samples == 0 and jb.underruns == 1
    assert out[0] > a * 0.95 and not out[f:].any()  # held last sample ramped to zero
    assert _jumps(outs).max() <= 2 * a / f  # the fixed buffer stepped by 20000 here
    assert jb.played == {"a": 480}


def test_underrun_mid_period_fades_out_without_click():
    a, f = 20000, 96
    for n in (250, 300, 440):  # runs dry 10, 60 (< fade) and 200 (> fade) into a period
        jb = JitterBuffer(prebuffer_ms=0, fade_samples=f, stretch=False)
        jb.push("a", np.full(n, a, dtype=np.int16), t=0.0)
        outs = [pull(jb)[1] for _ in range(2)]
        assert jb.underruns == 1 and jb.played == {"a": n}
        assert _jumps(outs).max() <= 2 * a / f, n
        assert outs[1][n - 240 - 1] < a and not outs[1][max(n - 240, f):].any()


def test_resume_after_underrun_fades_in_fresh_start_does_not():
    a, f = 20000, 96
    jb = JitterBuffer(prebuffer_ms=0, fade_samples=f, min_ms=0, max_ms=600, stretch=False)
    jb.push("a", np.full(480, a, dtype=np.int16), t=0.0)
    r, out = pull(jb)
    assert out[0] == a  # fresh start: untouched
    outs = [out, pull(jb)[1], pull(jb)[1], pull(jb)[1]]  # underrun, then silence
    jb.push("a", np.full(2400, a, dtype=np.int16), t=0.5)
    for _ in range(3):
        r, out = pull(jb)
        outs.append(out)
    resumed = outs[4]
    assert r.samples == 240 and jb.underruns == 1
    assert 0 < resumed[0] <= a / f + 1 and resumed[f - 1] == a  # ramp up over f samples
    assert np.all(np.diff(resumed[:f].astype(np.int32)) >= 0)
    assert _jumps(outs).max() <= 2 * a / f
    assert jb.played == {"a": 480 + 720}


def ref_add(d, item, k):
    """The buffer's per-item accounting: at most MAX_ITEMS items, oldest inserted out first."""
    if item in d:
        d[item] += k
    else:
        d[item] = k
        if len(d) > MAX_ITEMS:
            del d[next(iter(d))]


def test_exact_accounting_across_underruns_and_flushes():
    """Random pushes, pulls, completes and flushes: played per item equals a reference
    model exactly (which forgets the oldest items beyond MAX_ITEMS, as the buffer does:
    the run has more), and (without fades) so does every sample handed out."""
    for fade in (1, 96):
        rng = np.random.default_rng(3)
        jb = JitterBuffer(prebuffer_ms=40, fade_samples=fade, min_ms=20, max_ms=300, stretch=False)
        ref: list[tuple[str, np.ndarray]] = []  # reference queue
        ref_played: dict[str, int] = {}
        t, item_no = 0.0, 0
        for step in range(3000):
            t += 0.01
            u = rng.random()
            if u < 0.3:
                item = f"i{item_no}"
                pcm = rng.integers(-30000, 30000, int(rng.integers(1, 6000))).astype(np.int16)
                jb.push(item, pcm, t=t)
                ref.append((item, pcm))
                if rng.random() < 0.1:
                    item_no += 1
            elif u < 0.32:
                jb.mark_complete()
            elif u < 0.335:
                epoch = jb.epoch
                assert jb.flush() == ref_played
                assert jb.epoch == epoch + 1 and jb.queued_samples == 0
                ref.clear()
                item_no += 1
            r, out = pull(jb)
            assert r.epoch == jb.epoch
            got = out[:r.samples]
            want = []
            need = r.samples
            while need:
                item, pcm = ref[0]
                k = min(need, pcm.size)
                want.append(pcm[:k])
                ref_add(ref_played, item, k)
                need -= k
                if k == pcm.size:
                    ref.pop(0)
                else:
                    ref[0] = (item, pcm[k:])
            if fade == 1 and want:
                assert np.array_equal(got, np.concatenate(want))
            assert jb.played == ref_played
            assert jb.queued_samples == sum(p.size for _, p in ref)
        assert jb.underruns >= 3 and jb.epoch > 10
        assert item_no > 2 * MAX_ITEMS and len(jb.received) == MAX_ITEMS


@pytest.mark.parametrize("stretch", [False, True])
def test_pause_takes_back_unplayed_samples_and_resume_plays_them_in_order(stretch):
    jb = JitterBuffer(rate=24000, period=240, prebuffer_ms=0, stretch=stretch)
    audio = np.arange(1, 24001, dtype=np.int16)  # 1 s, every sample distinct
    jb.push("a", audio, t=0.0)
    jb.mark_complete()
    out = np.zeros(240, np.int16)
    got = []
    for _ in range(10):
        jb.pull(out)
        got.append(out.copy())
    assert jb.played["a"] == 2400
    played = jb.pause(unplayed=960)  # the device still held 4 periods
    assert played["a"] == 1440 and jb.paused
    r = jb.pull(out)
    assert r.samples == 0 and not out.any() and not r.underrun
    jb.resume()
    rest = []
    while True:
        r = jb.pull(out)
        if r.samples == 0:
            break
        rest.append(out[:r.samples].copy())
        if r.drained:
            break
    rest = np.concatenate(rest)
    # after the fade-in, the stream continues exactly at the first unplayed sample
    assert np.array_equal(rest[240:], audio[1440 + 240:])
    assert jb.played["a"] == 24000


def test_flush_while_paused_reports_played_without_the_take_back():
    jb = JitterBuffer(rate=24000, period=240, prebuffer_ms=0, stretch=False)
    jb.push("a", np.ones(4800, np.int16), t=0.0)
    out = np.zeros(240, np.int16)
    for _ in range(5):
        jb.pull(out)
    jb.pause(unplayed=480)
    assert jb.flush() == {"a": 720} and not jb.paused


# ---- time-stretching (WSOLA expand / accelerate) -----------------------------------------
def voiced(n, seed=0, amp=8000.0):
    """Speech-like voiced signal: harmonics of a pitch gliding 110-230 Hz, syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    f0 = 170 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    ph = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sin(k * ph) / k for k in range(1, 6))
    env = 0.3 + 0.7 * np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)) ** 2
    return (amp / 1.5 * x * env).astype(np.int16)


def drive(jb, audio, chunk_ms, arrivals, item="a", timed=True):
    """Push ``audio`` in chunks of ``chunk_ms`` arriving at ``arrivals`` (s); pull on a 10 ms
    clock (passing it to pull when ``timed``) until drained. Returns (outputs, results)."""
    c = RATE * chunk_ms // 1000
    chunks = [audio[i:i + c] for i in range(0, audio.size, c)]
    outs, res, i, k = [], [], 0, 0
    while i < len(chunks) or jb.active:
        t = k * 0.01
        while i < len(chunks) and arrivals[i] <= t:
            jb.push(item, chunks[i], t=float(arrivals[i]))
            i += 1
            if i == len(chunks):
                jb.mark_complete()
        out = np.empty(PERIOD, dtype=np.int16)
        res.append(jb.pull(out, t=t) if timed else jb.pull(out))
        outs.append(out)
        k += 1
    return outs, res


def gappy_arrivals(n_chunks, chunk_ms, gap_ms, every, speed=1.0):
    t, arr = 0.0, []
    for k in range(n_chunks):
        arr.append(t)
        t += chunk_ms / 1000 / speed
        if (k + 1) % every == 0:
            t += gap_ms / 1000
    return np.array(arr)


def test_expand_bridges_a_short_gap_the_plain_buffer_underruns_on():
    audio = voiced(RATE * 2)
    arr = gappy_arrivals(20, 100, 25, 5)  # real-time paced, a 25 ms gap every 0.5 s
    plain = JitterBuffer(RATE, PERIOD, 0, min_ms=0, max_ms=0, stretch=False)
    drive(plain, audio, 100, arr)
    jb = JitterBuffer(RATE, PERIOD, 0, min_ms=0, max_ms=0)
    outs, res = drive(jb, audio, 100, arr)
    assert plain.underruns >= 3 and jb.underruns == 0 and jb.expands > 0
    assert jb.played == {"a": audio.size} == plain.played
    # every period is whole audio until the last one: stretching never shortens a pull
    assert all(r.device == PERIOD for r in res if r.samples and not r.drained)
    assert sum(r.samples for r in res) == audio.size


def late_start_arrivals(n_chunks, chunk_ms=25):
    """Four chunks paced in real time (a buffer with a 100 ms start waits ~75 ms behind the
    earliest player), then the rest at 3x real time."""
    d = chunk_ms / 1000
    return np.array([k * d if k < 4 else 4 * d + (k - 4) * d / 3 for k in range(n_chunks)])


def feed(jb, audio, arr, pulls, c=RATE * 25 // 1000):
    """Push ``audio`` in chunks of ``c`` at ``arr``; ``pulls`` timed pulls. Returns results
    and our lag behind the earliest player after each pull (source samples)."""
    out = np.empty(PERIOD, dtype=np.int16)
    res, lags, i = [], [], 0
    for k in range(pulls):
        t = k * 0.01
        while i < len(arr) and arr[i] <= t:
            jb.push("a", audio[i * c:(i + 1) * c], t=float(arr[i]))
            i += 1
        res.append(jb.pull(out, t=t))
        lags.append(jb._e_pos - jb._r_pos)
    return res, lags


def test_accelerate_catches_up_and_never_overshoots_the_earliest_player():
    audio = voiced(RATE * 3, seed=1)
    arr = late_start_arrivals(120)
    jb = JitterBuffer(RATE, PERIOD, 100, min_ms=100, max_ms=100, start_ms=100,
                      expand_target_ms=60)  # accelerate alone: no expand below the target
    outs, res = drive(jb, audio, 25, arr)
    assert jb.accelerates > 0 and jb.underruns == 0 and jb.expands == 0
    accel = [r for r in res if r.samples > r.device]
    assert accel and all(r.device == PERIOD and r.samples <= PERIOD * 1.5 for r in accel)
    assert jb.played == {"a": audio.size}
    jb = JitterBuffer(RATE, PERIOD, 100, min_ms=100, max_ms=100, start_ms=100,
                      expand_target_ms=60)
    _, lags = feed(jb, audio, arr, 200)
    assert max(lags) > 0.06 * RATE  # the late start: ~75 ms behind
    assert lags[-1] < 0.0025 * RATE  # caught up (to within the shortest pitch lag)
    assert min(lags) > -PERIOD  # never more than the pull granularity ahead


@pytest.mark.parametrize("quiet_dbfs, accelerates", [(-30.0, True), (-40.8, False)])
def test_accelerate_on_quiet_aperiodic_audio_below_quiet_dbfs(quiet_dbfs, accelerates):
    """Breath-level noise (-35 dBFS RMS, no pitch) is accelerated below the -30 dBFS
    default; with the old -40.8 dBFS threshold it was neither periodic nor quiet."""
    rms = 32768 * 10 ** (-35 / 20)
    audio = np.random.default_rng(3).normal(0, rms, RATE * 3).astype(np.int16)
    jb = JitterBuffer(RATE, PERIOD, 100, min_ms=100, max_ms=100, start_ms=100,
                      expand_target_ms=60, quiet_dbfs=quiet_dbfs)
    _, lags = feed(jb, audio, late_start_arrivals(120), 200)
    assert max(lags) > 0.06 * RATE
    assert (jb.accelerates > 0) is accelerates
    assert (lags[-1] < 0.0025 * RATE) is accelerates


@pytest.mark.parametrize("kw", [dict(accelerate_corr=0), dict(accelerate_corr=1.1),
                                dict(quiet_dbfs=3.0), dict(min_ms=80, max_ms=60),
                                dict(max_queued_ms=0), dict(max_queued_ms=-1.0),
                                dict(max_queued_ms=float("nan"))])
def test_bad_parameters_raise_naming_them(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        JitterBuffer(RATE, PERIOD, 60, **kw)


def test_exact_accounting_under_stretching_with_pauses_and_flushes():
    """Random pushes (gappy and bursty), pulls, pauses with take-back, resumes, completes
    and flushes, stretching on: each pull moves ``played`` by exactly its ``samples``
    (source samples consumed), a pause moves it back by exactly what it re-queued,
    played + queued == received in total (until a flush drops the queue; the per-item
    dicts forget the oldest items beyond MAX_ITEMS), and every whole pull is one period of
    device audio."""
    rng = np.random.default_rng(5)
    jb = JitterBuffer(RATE, PERIOD, 20, min_ms=0, max_ms=200)
    src = voiced(RATE * 60, seed=2)
    pos, t, item_no, dropped = 0, 0.0, 0, 0
    total_played = total_received = 0
    for _ in range(6000):
        t += 0.01
        u = rng.random()
        if u < 0.25:
            n = int(rng.integers(240, 4000))
            assert jb.push(f"i{item_no}", src[pos:pos + n], t=t) == 0
            total_received += n
            pos = (pos + n) % (src.size - 4000)
            if rng.random() < 0.05:
                item_no += 1
        elif u < 0.27:
            jb.mark_complete()
        elif u < 0.28 and not jb.paused:
            q, p = jb.queued_samples, sum(jb.played.values())
            after = jb.pause(unplayed=int(rng.integers(0, 2000)))
            assert jb.queued_samples - q == p - sum(after.values()) >= 0
            total_played -= jb.queued_samples - q
            if rng.random() < 0.5:
                jb.resume()
        elif u < 0.29 and jb.paused:
            jb.resume()
        elif u < 0.295:
            dropped += jb.queued_samples
            played = jb.flush()
            assert played == jb.played and jb.queued_samples == 0
            item_no += 1
        before = dict(jb.played)
        out = np.empty(PERIOD, dtype=np.int16)
        r = jb.pull(out, t=t)
        assert r.device == PERIOD or r.underrun or r.drained or r.samples == 0
        delta = {k: v - before.get(k, 0) for k, v in jb.played.items() if v != before.get(k, 0)}
        assert sum(delta.values()) == r.samples and all(v > 0 for v in delta.values())
        assert r.item_id in delta if r.samples else r.item_id is None
        total_played += r.samples
        assert total_played + jb.queued_samples + dropped == total_received
        assert all(0 <= v <= jb.received.get(k, v) for k, v in jb.played.items())
        assert len(jb.played) <= MAX_ITEMS and len(jb.received) <= MAX_ITEMS
    assert jb.expands > 10 and jb.accelerates > 10 and jb.underruns > 0
    assert item_no > MAX_ITEMS and jb.dropped == 0


def test_take_back_maps_device_samples_to_source_samples():
    """A pause's take-back of stretched periods gives back exactly the source samples
    those periods consumed; the resumed stream continues at ``played``."""
    audio = voiced(RATE * 3, seed=3)
    arr = late_start_arrivals(120)
    jb = JitterBuffer(RATE, PERIOD, 100, min_ms=100, max_ms=100, start_ms=100)
    res, _ = feed(jb, audio, arr, 30)
    assert jb.accelerates > 0
    out = np.empty(PERIOD, dtype=np.int16)
    for m in (4, 3):  # whole periods handed out (some of them stretched)
        assert any(r.samples != r.device for r in res[-m:])
        before = jb.played["a"]
        back = sum(r.samples for r in res[-m:])
        played = jb.pause(unplayed=m * PERIOD)
        assert played["a"] == before - back
        assert jb.queued_samples == jb.received["a"] - played["a"]
        jb.resume()
        jb._e_pos += 2000  # behind again: accelerate on re-playing the taken-back audio
        res = [jb.pull(out) for _ in range(6)]
    jb.stretch = False  # plain from here, to compare sample by sample
    played = jb.pause(unplayed=0)["a"]
    jb.resume()
    rest = []
    for _ in range(20):
        r = jb.pull(out)
        rest.append(out[:r.samples].copy())
    rest = np.concatenate(rest)
    f = 96
    assert np.array_equal(rest[f:], audio[played + f:played + rest.size])
    # partial take-back: linear within a stretched period, total exact
    jb2 = JitterBuffer(RATE, PERIOD, 100, min_ms=100, max_ms=100, start_ms=100)
    feed(jb2, audio, arr, 30)
    p0 = jb2.played["a"]
    p1 = jb2.pause(unplayed=100)["a"]
    assert 0 < p0 - p1 <= 100 / (1 - 0.5) and p1 + jb2.queued_samples == jb2.received["a"]


def test_no_clicks_at_stretch_boundaries_and_deterministic():
    a = voiced(RATE * 4, seed=4)
    arr = gappy_arrivals(40, 100, 30, 4, speed=1.5)
    runs = []
    for _ in range(2):
        jb = JitterBuffer(RATE, PERIOD, 0, min_ms=0, max_ms=0, start_ms=0)
        outs, res = drive(jb, a, 100, arr)
        runs.append(np.concatenate(outs))
        assert jb.expands > 0 and jb.underruns == 0
    assert np.array_equal(runs[0], runs[1])  # deterministic
    y = runs[0].astype(np.int32)
    src_jump = np.abs(np.diff(a.astype(np.int32))).max()
    assert np.abs(np.diff(y)).max() <= 1.5 * src_jump


def test_stretch_off_is_the_plain_buffer():
    audio = voiced(RATE * 2, seed=6)
    arr = gappy_arrivals(20, 100, 25, 5)
    a = JitterBuffer(RATE, PERIOD, 0, stretch=False)
    oa, ra = drive(a, audio, 100, arr)
    b = JitterBuffer(RATE, PERIOD, 0, stretch=False)
    ob, rb = drive(b, audio, 100, arr, timed=False)
    assert all(r.samples == r.device for r in ra)
    assert np.array_equal(np.concatenate(oa), np.concatenate(ob))
    assert a.expands == a.accelerates == 0


def test_expand_starts_below_the_learned_target_up_to_its_cap():
    """Expand begins while less than max(expand_ms, min(target, expand_target_ms)) is
    queued: with a 100 ms target, 90 ms queued and more audio expected, the buffer
    stretches at once; with the threshold pinned at 60 ms it plays on unstretched; a
    200 ms target (raised by outages) still expands only below the 100 ms cap."""
    audio = voiced(RATE // 1000 * 90, seed=3)
    out = np.empty(PERIOD, np.int16)
    for target, cap, expands in ((100, 100, True), (100, 60, False), (200, 100, True)):
        jb = JitterBuffer(RATE, PERIOD, target, min_ms=target, max_ms=target,
                          expand_target_ms=cap)
        jb.push("a", audio, t=0.0)  # 90 ms queued, not complete
        r = jb.pull(out, t=0.0)
        assert (jb.expands > 0) is expands, (target, cap)
        assert (r.device > r.samples) is expands
    jb = JitterBuffer(RATE, PERIOD, 200, min_ms=200, max_ms=200, expand_target_ms=100)
    jb.push("a", voiced(RATE // 1000 * 150, seed=4), t=0.0)  # 150 ms: above the cap
    jb.pull(out, t=0.0)
    assert jb.expands == 0


def _earliest(arrivals, sizes, rate=24000):
    """g[i] = max(arrival[i], g[i-1] + 1/rate) per source sample of one response."""
    arr = np.repeat(arrivals, sizes)
    media = np.arange(arr.size) / rate
    return np.maximum.accumulate(arr - media) + media


@pytest.mark.parametrize("stretch", [False, True])
def test_added_latency_is_pull_time_minus_earliest_playout(stretch):
    """The buffer's own added-latency figure equals, per pull, its time minus the
    earliest possible playout of the first source sample it hands out, weighted by the
    source samples handed out (computed here from the arrival trace)."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(1200, 6000, 40)  # 50-250 ms chunks
    gaps = sizes / 24000 / rng.uniform(0.6, 3.0, sizes.size)  # sometimes slower than real time
    gaps[[7, 20]] += 0.4  # two outages: rebuffering
    arrivals = 0.013 + np.concatenate([[0], np.cumsum(gaps[:-1])])
    g = _earliest(arrivals, sizes)
    jb = JitterBuffer(stretch=stretch, prebuffer_ms=60)
    out = np.empty(240, dtype=np.int16)
    pcm = (3000 * np.sin(np.arange(6000) * 2 * np.pi / 96)).astype(np.int16)
    i, k, pos, num, den = 0, 0, 0, 0.0, 0
    while i < sizes.size or jb.active:
        t = k * 0.01
        while i < sizes.size and arrivals[i] <= t:
            jb.push("a", pcm[:sizes[i]], t=float(arrivals[i]))
            i += 1
        if i == sizes.size:
            jb.mark_complete()
        r = jb.pull(out, t=t)
        if r.samples:
            num += (t - g[pos]) * 1000 * r.samples
            den += r.samples
            pos += r.samples
        k += 1
    assert pos == sizes.sum() == jb.added.samples
    assert jb.added.mean_ms() == pytest.approx(num / den, abs=1e-6)
    assert jb.added.mean_ms() > 0
    h = jb.added_latency()
    assert h.quantile_ms(0.95) >= h.mean_ms()
    assert (h - h).samples == 0 and (h - h).mean_ms() is None


@pytest.mark.parametrize("stretch", [False, True])
def test_added_latency_on_the_pull_grid(stretch):
    """Without ``t`` (the daemon) the clock is the pull count and the reference is the
    earliest player on the same pulls: a period per pull of what had arrived by then."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(1200, 3000, 60)  # 50-125 ms chunks about as fast as real time
    pulls_before = rng.choice([0, 3, 6, 9, 12, 20], sizes.size)
    pulls_before[[9, 25]] = 40  # outages
    g = np.zeros(int(sizes.sum()))  # per source sample: the pull (fractional) it was playable
    jb = JitterBuffer(stretch=stretch, prebuffer_ms=200)  # above most chunks: it waits
    out = np.empty(240, dtype=np.int16)
    pcm = (3000 * np.sin(np.arange(6000) * 2 * np.pi / 96)).astype(np.int16)
    k = avail = e = pos = 0
    num = den = 0.0
    i = 0
    while i < sizes.size or jb.active:
        for _ in range(pulls_before[i] if i < sizes.size else 1):
            k += 1
            take = min(240, avail - e)
            g[e:e + take] = k + np.arange(take) / 240
            e += take
            r = jb.pull(out)
            if r.samples:
                num += (k - g[pos]) * 10 * r.samples
                den += r.samples
                pos += r.samples
        if i < sizes.size:
            jb.push("a", pcm[:sizes[i]])
            avail += int(sizes[i])
            i += 1
            if i == sizes.size:
                jb.mark_complete()
    assert pos == sizes.sum() == jb.added.samples
    assert jb.added.mean_ms() == pytest.approx(num / den, abs=1e-6)
    assert jb.added.mean_ms() > 1


@pytest.mark.parametrize("paced", [True, False])
def test_added_latency_restarts_at_a_resume(paced):
    """A pause is not added latency: the earliest player restarts with the first pull
    after the resume, at our position, and what follows is measured as before (a reply
    paused by a false barge-in still gets its turn figures)."""
    jb = JitterBuffer(stretch=False, prebuffer_ms=20)
    jb.push("a", np.ones(2400, dtype=np.int16), t=0.0)
    out = np.empty(240, dtype=np.int16)
    jb.pull(out, t=0.0 if paced else None)
    assert jb.added.samples == 240 and jb.added.mean_ms() == 0
    if paced:
        jb.pull(out, t=0.05)  # sample 240 was playable at 0.01 s
        assert jb.added.samples == 480 and jb.added.mean_ms() == pytest.approx(20, abs=1e-9)
    else:
        jb.pull(out)
        assert jb.added.samples == 480 and jb.added.mean_ms() == 0
    before = jb.added_latency()
    jb.pause(0)
    for k in range(40):  # 0.4 s paused: the buffer hands out nothing
        jb.pull(out, t=0.06 + k * 0.01 if paced else None)
    jb.resume()
    for k in range(3):
        jb.pull(out, t=0.5 + k * 0.01 if paced else None)
    after = jb.added_latency() - before
    assert after.samples == 720 and after.mean_ms() == pytest.approx(0, abs=1e-9)
    # a late pull after the resume counts again (20 ms late on a paced clock)
    jb.pull(out, t=0.55 if paced else None)
    after = jb.added_latency() - before
    assert after.samples == 960 and after.mean_ms() == pytest.approx(5 if paced else 0, abs=1e-9)


def test_a_resume_neither_chases_the_pause_nor_counts_it():
    """A 6 s reply arriving at twice real time, paused 1 s (a tentative barge-in taking
    back 40 ms) while audio keeps arriving, then resumed: the resumed audio is not
    accelerated to catch up with the pause (it used to be: the earliest player ran on
    through the pause) and its added latency, measured from the resume, is 0."""
    jb = JitterBuffer(stretch=True)
    out = np.empty(240, dtype=np.int16)
    pcm = (3000 * np.sin(np.arange(2400) * 0.3)).astype(np.int16)
    arrivals = [0.05 * i for i in range(60)]
    i, before, accel = 0, None, None
    for k in range(800):
        t = k * 0.01
        while i < len(arrivals) and arrivals[i] <= t:
            jb.push("a", pcm, t=arrivals[i])
            i += 1
        if i == len(arrivals):
            jb.mark_complete()
        if k == 100:
            jb.pause(960)
            before = jb.added_latency()
        if k == 200:
            jb.resume()
            accel = jb.accelerates
        jb.pull(out, t=t)
    after = jb.added_latency() - before
    assert jb.accelerates == accel
    assert jb.played["a"] == 60 * 2400  # all of it played
    assert after.samples > 100_000 and after.mean_ms() == pytest.approx(0, abs=1e-6)


def test_latency_histogram_quantile_and_clamping():
    from voxbox.audio.jitter import LatencyHistogram
    h = LatencyHistogram(max_ms=100)
    assert h.mean_ms() is None and h.quantile_ms(0.5) is None
    h.add(-2.0, 10)   # counts in the first bin, mean keeps the sign
    h.add(4.5, 80)
    h.add(500.0, 10)  # beyond max_ms: last bin
    assert h.samples == 100
    assert h.mean_ms() == pytest.approx((-20 + 360 + 5000) / 100)
    assert h.quantile_ms(0.05) == 1 and h.quantile_ms(0.5) == 5 and h.quantile_ms(0.95) == 101



def test_pull_clock_ignores_late_wakeups_and_follows_the_device():
    from voxbox.audio.playout import PullClock
    step = 0.01
    # a card: a pull per period; every 10th wakes 18 ms late and the next catches up
    c = PullClock(24000, 240)
    now = 5.0 + np.arange(600) * step
    now[5::10] += 0.018
    now[6::10] += 0.002
    t = np.array([c.next(x) for x in now])
    assert np.all(t <= now + 1e-9)
    assert np.allclose(np.diff(t), step, atol=1e-4)  # the device's time, not the wake-ups
    # the device starved 200 ms (it played silence): the clock follows at 1 ms/s
    c = PullClock(24000, 240)
    t0 = [c.next(5.0 + k * step) for k in range(100)]
    t1 = [c.next(5.0 + 0.2 + k * step) for k in range(100, 300)]
    assert t1[0] - t0[-1] == pytest.approx(step + 1e-5, abs=1e-6) and t1[-1] <= 5.0 + 0.2 + 299 * step
    # a device that took 3 periods at once (the rig's speaker thread woke 20 ms late):
    # the two early pulls move the clock by 0.2 ms each, not by 20 and 10 ms
    c = PullClock(24000, 240)
    now = 5.0 + np.arange(300) * step
    now[150], now[151] = now[152] - 0.0001, now[152] - 0.00005
    t = np.array([c.next(x) for x in now])
    assert np.abs(t - (5.0 + np.arange(300) * step)).max() < 0.0005
    # it settles from the start-up fill (8 periods at once) onto the pulls on time
    c = PullClock(24000, 240)
    now = np.concatenate([np.full(8, 5.0), 5.01 + np.arange(1000) * step])
    t = np.array([c.next(x) for x in now])
    assert abs((t - now)[-1]) < 1e-6
    # a device 100 ppm slow (pulls come later and later): followed, never ahead of now
    c = PullClock(24000, 240)
    now = np.arange(100_000) * step * (1 + 1e-4)
    t = np.array([c.next(x) for x in now])
    assert np.all(t <= now + 1e-9) and (now - t)[-1] < 0.002


def test_a_late_pull_counts_its_arrivals_on_the_paced_clock():
    """A pull due at 1.000 s (paced ``t``) that runs at 1.006 s hands out audio that
    arrived at 1.004 s: on the paced clock it arrived at 0.998 s, so it is not played
    'before it arrived', and the next periods follow at the device's pace."""
    jb = JitterBuffer(stretch=False, prebuffer_ms=20)
    jb.push("a", np.ones(4800, dtype=np.int16), t=1.004)
    out = np.empty(240, dtype=np.int16)
    jb.pull(out, t=1.000, now=1.006)
    jb.pull(out, t=1.010, now=1.0101)
    assert jb.added.samples == 480
    assert jb.added.mean_ms() == pytest.approx(2.0, abs=1e-6)  # 1.000 - 0.998


# ---- bounds: a misbehaving server -------------------------------------------------------
def ramp_chunk(k, n=RATE):
    """Chunk ``k`` of a long test signal: sample ``i`` of the stream is ``i`` mod 2^16 as
    int16 (every sample of a 65536-sample stretch distinct, so any loss or shift shows)."""
    return ((np.arange(k * n, (k + 1) * n) % 65536) - 32768).astype(np.int16)


def test_thirty_minutes_in_four_seconds_queues_sixty_seconds_and_plays_them_intact():
    jb = JitterBuffer(RATE, PERIOD, stretch=False)
    cap = 60 * RATE
    rets = [jb.push("r", ramp_chunk(k), t=k * 4 / 1800) for k in range(1800)]
    assert rets == [0] * 60 + [RATE] * 1740  # the first 60 s fit, every later chunk whole out
    assert jb.queued_samples == cap and jb.dropped == sum(rets) == 1740 * RATE
    assert jb.received == {"r": cap}
    # the dropped chunks left no trace in the per-push structures
    assert len(jb._chunks) == len(jb._arrivals) == jb._seg_n == 60
    assert jb._seg_total == cap
    jb.mark_complete()
    outs, r = [], None
    for _ in range(cap // PERIOD + 1):
        r, out = pull(jb)
        outs.append(out[:r.samples].copy())
    assert r.drained and not jb.active and jb.underruns == 0
    got = np.concatenate(outs)
    assert np.array_equal(got, np.concatenate([ramp_chunk(k) for k in range(60)]))
    assert jb.played == {"r": cap}
    # room again once played out
    assert jb.push("s", ramp_chunk(0, 480), t=5.0) == 0 and jb.dropped == 1740 * RATE


def test_a_chunk_that_fits_partly_keeps_its_head():
    jb = JitterBuffer(RATE, PERIOD, stretch=False, prebuffer_ms=20, max_queued_ms=1000)
    a, b = ramp_chunk(0, 16800), ramp_chunk(1, 16800)  # 700 ms each, the cap is 1 s
    assert jb.push("a", a, t=0.0) == 0
    assert jb.push("b", b, t=0.01) == 2 * 16800 - RATE
    assert jb.queued_samples == RATE and jb.received == {"a": 16800, "b": RATE - 16800}
    assert jb._chunks[-1][1].base is None  # the kept head is a copy: the tail can be freed
    assert jb.push("c", a, t=0.02) == 16800 and "c" not in jb.received
    outs = []
    for _ in range(RATE // PERIOD):
        r, out = pull(jb)
        outs.append(out[:r.samples].copy())
    assert np.array_equal(np.concatenate(outs), np.concatenate([a, b[:RATE - 16800]]))
    assert jb.played == {"a": 16800, "b": RATE - 16800}
    assert jb.dropped == 16800 + 2 * 16800 - RATE


@pytest.mark.parametrize("stretch", [False, True])
def test_playback_starts_at_a_cap_below_the_start_depth(stretch):
    # 40 ms: the start depth (60 ms) could never be queued
    jb = JitterBuffer(RATE, PERIOD, max_queued_ms=40, stretch=stretch)
    assert jb.push("a", ramp_chunk(0, 2400), t=0.0) == 2400 - 960
    r, _ = pull(jb)
    assert r.device == PERIOD and 0 < r.samples == 960 - jb.queued_samples


def test_many_tiny_chunks_are_bounded_by_count():
    jb = JitterBuffer(RATE, PERIOD, max_queued_ms=1000)
    one = np.ones(1, dtype=np.int16)
    limit = max(64, int(1000 / MIN_CHUNK_MS))
    rets = [jb.push("a", one, t=0.0) for _ in range(limit + 500)]
    assert sum(rets) == 500 == jb.dropped and len(jb._chunks) == limit


def test_hundred_thousand_items_keep_bounded_accounting_and_memory():
    """100,000 distinct item ids of 10 ms each at 2x real time (two pushes per pull) into
    a 5 s buffer: the per-item dicts keep MAX_ITEMS items, the totals add up, and the
    memory the buffer holds does not grow with the number of items."""
    jb = JitterBuffer(RATE, PERIOD, max_queued_ms=5000)
    pcm = voiced(PERIOD, seed=4)  # one array for every push: only the buffer's memory counts
    out = np.empty(PERIOD, dtype=np.int16)
    n_items, played = 100_000, 0
    names = [f"item-{k:06d}" for k in range(n_items)]  # made before tracing
    accepted = deque(maxlen=MAX_ITEMS)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        mid = peak_growth = 0
        for k in range(0, n_items, 2):
            for j, dt in ((k, 0.0), (k + 1, 0.001)):
                if jb.push(names[j], pcm, t=k * 0.005 + dt) == 0:
                    accepted.append(names[j])
            played += jb.pull(out, t=k * 0.005 + 0.002).samples
            if k == 20_000:
                mid = tracemalloc.get_traced_memory()[0]
            if k % 1000 == 0:
                peak_growth = max(peak_growth, tracemalloc.get_traced_memory()[0] - base)
        end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(jb.played) <= MAX_ITEMS and len(jb.received) <= MAX_ITEMS
    assert jb.queued_samples <= 5 * RATE and jb.dropped > 0
    assert played + jb.queued_samples + jb.dropped == n_items * PERIOD
    assert list(jb.received) == list(accepted)  # the newest queued, in push order
    # a full 5 s queue of 10 ms chunks (the audio is one shared array): measured 0.09 MiB,
    # no growth from 20,000 to 100,000 items. Without the bounds: 10.5 MiB, +8.9 MiB.
    assert peak_growth < 5 * 2 ** 20, peak_growth
    assert end - mid < 2 ** 20, (mid - base, end - base)


def test_a_flood_without_pulls_bounds_every_per_push_structure():
    jb = JitterBuffer(RATE, PERIOD)  # 60 s
    pcm = np.ones(PERIOD, dtype=np.int16)
    for k in range(100_000):
        jb.push(f"i{k}", pcm, t=k * 4e-5)
    n = 60 * RATE // PERIOD
    assert jb.queued_samples == 60 * RATE and jb.dropped == (100_000 - n) * PERIOD
    assert len(jb._chunks) == len(jb._arrivals) == n
    assert jb._seg_n == SEG_KEEP and jb._seg_total == 60 * RATE  # (see the next tests)
    assert len(jb.received) == MAX_ITEMS and not jb.played
    pull(jb)
    assert not jb._arrivals and len(jb._g_runs) <= 1 and len(jb._ready) <= 1


def _long_segment(jb, n_chunks, late_at, late):
    """A real-time paced sender of 10 ms chunks (a 20 ms cushion), one chunk ``late`` s
    late at ``late_at`` (the buffer underruns, the late chunk's requirement closes the
    segment), then complete and drain. Returns the segments' observations (ms)."""
    obs = []
    close = jb._close_segment

    def spy():
        close()
        obs.append(jb.last_requirement_ms)
    jb._close_segment = spy
    pcm = np.ones(PERIOD, dtype=np.int16)
    out = np.empty(PERIOD, dtype=np.int16)
    k, i, delay = 0, 0, 0.0
    while i < n_chunks or jb.active:
        t = k * 0.01
        while i < n_chunks:
            if i == late_at:
                delay = late
            if i * 0.01 + delay > t:
                break
            jb.push("r", pcm, t=t)
            i += 1
            if i == n_chunks:
                jb.mark_complete()
        jb.pull(out, t=t)
        k += 1
    return obs


def test_a_long_segment_stores_a_bounded_head_with_the_same_target(monkeypatch):
    """A 60 s segment stores SEG_KEEP arrivals, not 6,000; its requirements (a late chunk
    after the bound included) and so the target are those of the unbounded store."""
    unbounded = JitterBuffer(RATE, PERIOD, min_ms=0, max_ms=600)
    with monkeypatch.context() as m:
        m.setattr(jitter, "SEG_KEEP", 10 ** 9)
        want = _long_segment(unbounded, 8000, 6000, 0.25)
    assert unbounded._seg_cap >= 6000
    jb = JitterBuffer(RATE, PERIOD, min_ms=0, max_ms=600)
    got = _long_segment(jb, 8000, 6000, 0.25)
    assert jb._seg_cap == SEG_KEEP and jb.underruns == unbounded.underruns == 1
    assert got == want and len(got) == 2 and got[0] > 250
    assert jb.target_ms == unbounded.target_ms > 250


def test_a_requirement_beyond_the_stored_head_is_above_max_ms(monkeypatch):
    """With a head of 60 chunks (600 ms, max_ms) a chunk 1 s late needs more than the head
    covers: recorded as just above max_ms instead of ~1 s, the same (maximum) target."""
    unbounded = JitterBuffer(RATE, PERIOD, min_ms=0, max_ms=600)
    want = _long_segment(unbounded, 300, 200, 1.0)
    jb = JitterBuffer(RATE, PERIOD, min_ms=0, max_ms=600)
    with monkeypatch.context() as m:
        m.setattr(jitter, "SEG_KEEP", 8)
        got = _long_segment(jb, 300, 200, 1.0)
        assert jb._seg_cap == 1024 and jb.observations == 2
    assert want[0] > 1000 and 600 < got[0] < 601 and got[1:] == want[1:]
    assert jb.target_ms == unbounded.target_ms == 600
def test_forget_done_keeps_queued_and_history_items_only():
    jb = JitterBuffer(RATE, PERIOD, stretch=False, prebuffer_ms=20)  # history 300 ms
    for k in range(5):
        jb.push(f"old{k}", ramp_chunk(k, 2400), t=0.0)
    jb.push("a", ramp_chunk(5, RATE), t=0.0)
    jb.push("b", ramp_chunk(6, RATE), t=0.0)
    for _ in range((5 * 2400 + RATE + RATE // 2) // PERIOD):  # half of b played
        pull(jb)
    jb.forget_done()
    assert jb.played == {"b": RATE // 2} and jb.received == {"b": RATE}
    # b still queued; c's tail is only in the history after it played out
    jb.push("c", ramp_chunk(7, 9600), t=1.0)
    jb.mark_complete()
    r = None
    while jb.active:
        r, _ = pull(jb)
    assert r.drained and jb.played == {"b": RATE, "c": 9600}
    jb.forget_done()  # b left the 300 ms history (all c now): gone
    assert jb.played == {"c": 9600} and jb.received == {"c": 9600}
    # the item in the history keeps exact accounting: a take-back after it played out
    assert jb.pause(unplayed=PERIOD) == {"c": 9600 - PERIOD}
    assert jb.queued_samples == PERIOD
    jb.flush()
    jb.forget_done()
    assert jb.played == {} and jb.received == {}


def test_played_and_received_forget_the_oldest_item_first():
    jb = JitterBuffer(RATE, PERIOD, stretch=False, prebuffer_ms=0)
    pcm = np.ones(PERIOD, dtype=np.int16)
    for k in range(MAX_ITEMS + 10):
        jb.push(f"i{k}", pcm, t=k * 0.01)
        pull(jb)
    names = [f"i{k}" for k in range(10, MAX_ITEMS + 10)]
    assert list(jb.played) == names and list(jb.received) == names
    assert set(jb.played.values()) == set(jb.received.values()) == {PERIOD}
