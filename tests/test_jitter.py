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
