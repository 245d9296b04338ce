"""Jitter buffer core: prebuffer, exact per-item accounting, underrun, flush."""
import numpy as np

from voxbox.jitter import JitterBuffer


def pull(jb, n=240):
    out = np.empty(n, dtype=np.int16)
    return jb.pull(out), out


def test_prebuffer_then_exact_accounting():
    jb = JitterBuffer(prebuffer_ms=60)
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
    jb = JitterBuffer(prebuffer_ms=60)
    jb.push("a", np.ones(300, dtype=np.int16))
    jb.mark_complete()
    r1, _ = pull(jb)
    r2, out = pull(jb)
    assert (r1.samples, r2.samples) == (240, 60)
    assert r2.drained and not r2.underrun
    assert jb.played == {"a": 300} and not jb.active


def test_underrun_counts_and_fades():
    jb = JitterBuffer(prebuffer_ms=10)
    jb.push("a", np.full(300, 10000, dtype=np.int16))
    pull(jb)
    r, out = pull(jb)
    assert r.underrun and jb.underruns == 1
    assert out[59] < 10000 and out[0] == 10000  # faded tail, no click
    assert jb.played["a"] == 300


def test_flush_drops_everything_and_reports_played():
    jb = JitterBuffer(prebuffer_ms=0)
    jb.push("a", np.ones(2400, dtype=np.int16))
    pull(jb)
    pull(jb)
    played = jb.flush()
    assert played == {"a": 480}
    r, out = pull(jb)
    assert r.samples == 0 and not out.any() and jb.queued_samples == 0


def test_two_items_accounted_separately():
    jb = JitterBuffer(prebuffer_ms=0)
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
    jb = JitterBuffer(prebuffer_ms=60, min_ms=20, max_ms=600)
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
    fixed = JitterBuffer(prebuffer_ms=20, min_ms=20, max_ms=20)
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
    jb = JitterBuffer(prebuffer_ms=60, min_ms=40, max_ms=200)
    sizes, _ = calm_reply(rng)
    stalled = np.concatenate([[0.0], np.full(len(sizes) - 1, 3.0)])  # 3 s outage after chunk 0
    _, _, t = play_reply(jb, 0.0, sizes, stalled)
    assert jb.target_ms == 200 and jb.underruns == 1
    for _ in range(15):
        _, _, t = play_reply(jb, t + 1.0, *calm_reply(rng))
    assert jb.target_ms == 40
    fixed = JitterBuffer(prebuffer_ms=60, min_ms=60, max_ms=60)
    play_reply(fixed, 0.0, sizes, stalled)
    assert fixed.target_ms == 60


def test_first_observation_replaces_initial_prebuffer():
    jb = JitterBuffer(prebuffer_ms=300, min_ms=20, max_ms=600)
    assert jb.target_ms == 300
    play_reply(jb, 0.0, [2400] * 5, [0.0, 0.03, 0.06, 0.09, 0.12])
    assert jb.target_ms == 20 and jb.observations == 1


def test_requirement_of_a_late_chunk():
    # real-time-paced sender, second chunk 200 ms late: the segment needed the first chunk
    # (100 ms) buffered; the target follows (rounded up to 5 ms) as soon as the late chunk
    # arrives, and playback rebuffers to it.
    jb = JitterBuffer(prebuffer_ms=20, min_ms=20, max_ms=600)
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
    jb = JitterBuffer(prebuffer_ms=0, fade_samples=f)
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
        jb = JitterBuffer(prebuffer_ms=0, fade_samples=f)
        jb.push("a", np.full(n, a, dtype=np.int16), t=0.0)
        outs = [pull(jb)[1] for _ in range(2)]
        assert jb.underruns == 1 and jb.played == {"a": n}
        assert _jumps(outs).max() <= 2 * a / f, n
        assert outs[1][n - 240 - 1] < a and not outs[1][max(n - 240, f):].any()


def test_resume_after_underrun_fades_in_fresh_start_does_not():
    a, f = 20000, 96
    jb = JitterBuffer(prebuffer_ms=0, fade_samples=f, min_ms=0, max_ms=600)
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


def test_exact_accounting_across_underruns_and_flushes():
    """Random pushes, pulls, completes and flushes: played per item equals a reference
    model exactly, and (without fades) so does every sample handed out."""
    for fade in (1, 96):
        rng = np.random.default_rng(3)
        jb = JitterBuffer(prebuffer_ms=40, fade_samples=fade, min_ms=20, max_ms=300)
        ref: list[tuple[str, np.ndarray]] = []  # reference queue
        ref_played: dict[str, int] = {}
        t, nxt, item_no = 0.0, 0, 0
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
                ref_played[item] = ref_played.get(item, 0) + k
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


def test_pause_takes_back_unplayed_samples_and_resume_plays_them_in_order():
    jb = JitterBuffer(rate=24000, period=240, prebuffer_ms=0)
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
    jb = JitterBuffer(rate=24000, period=240, prebuffer_ms=0)
    jb.push("a", np.ones(4800, np.int16), t=0.0)
    out = np.zeros(240, np.int16)
    for _ in range(5):
        jb.pull(out)
    jb.pause(unplayed=480)
    assert jb.flush() == {"a": 720} and not jb.paused
