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


def test_frame_queue_hands_frames_over_in_order_and_drops_when_full():
    import numpy as np

    from voxbox.ring import FrameQueue

    q = FrameQueue(slots=3, width=4)
    out = np.zeros((2, 4), np.int16)
    assert not q.get_into(out)
    for k in range(4):
        a = np.full(4, k, np.int16)
        assert q.put(a, -a) == (k < 3)
    assert q.dropped == 1
    got = []
    while q.get_into(out):
        got.append((int(out[0, 0]), int(out[1, 0])))
    assert got == [(0, 0), (1, -1), (2, -2)]
