import numpy as np

from voxbox.ring import SampleRing


def test_fifo_wrap_and_shortfall():
    r = SampleRing(10)
    r.write(np.arange(1, 8, dtype=np.int16))
    out = np.empty(5, dtype=np.int16)
    assert r.read_into(out) == 5 and list(out) == [1, 2, 3, 4, 5]
    r.write(np.arange(8, 14, dtype=np.int16))
    out = np.empty(10, dtype=np.int16)
    assert r.read_into(out) == 8 and list(out) == [6, 7, 8, 9, 10, 11, 12, 13, 0, 0]
    assert r.shortfalls == 1


def test_overflow_drops_oldest_and_backlog_resync():
    r = SampleRing(8)
    r.write(np.arange(12, dtype=np.int16))
    out = np.empty(4, dtype=np.int16)
    r.read_into(out)
    assert list(out) == [4, 5, 6, 7] and r.overflows == 1
    r.write(np.arange(100, 104, dtype=np.int16))
    r.read_into(out, max_backlog=0)
    assert list(out) == [100, 101, 102, 103] and r.resyncs == 1
