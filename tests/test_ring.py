import numpy as np

from voxbox.audio.ring import SampleRing


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

    from voxbox.audio.ring import FrameQueue

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


def test_read_delayed_keeps_the_pairing_through_a_bursty_writer():
    """A count delay line: bursts of the writer never move which reference sample pairs
    with which capture period; a change of the line moves it by exactly the change."""
    from voxbox.audio.ring import SampleRing

    ring = SampleRing(16000)
    n, line = 160, 800
    src = np.arange(1, 100001, dtype=np.int64) % 30000
    written = 0

    def write(k):
        nonlocal written
        ring.write(src[written:written + k].astype(np.int16))
        written += k

    write(2000)
    out = np.zeros(n, np.int16)
    ring.read_delayed(out, line)
    first = int(out[0])  # the sample index (value) the reader started at
    assert written - (first - 1) - n == line
    pos = first - 1 + n
    rng = np.random.default_rng(0)
    for i in range(300):
        write(int(rng.choice([0, 160, 320])))  # bursts and gaps, 160 per period on average
        while written - pos < n + 1:
            write(160)
        ring.read_delayed(out, line)
        np.testing.assert_array_equal(out, src[pos:pos + n].astype(np.int16))
        pos += n
    assert ring.resyncs == 0
    # the line grows by 100 samples: the reader steps back exactly 100 samples
    ring.read_delayed(out, line + 100)
    np.testing.assert_array_equal(out, src[pos - 100:pos - 100 + n].astype(np.int16))


def test_read_delayed_places_the_reader_again_after_a_stalled_writer():
    from voxbox.audio.ring import SampleRing

    ring = SampleRing(16000)
    out = np.zeros(160, np.int16)
    ring.write(np.ones(1000, np.int16))
    ring.read_delayed(out, 320)
    assert out.all() and ring.available == 320
    ring.read_delayed(out, 320)
    assert ring.available == 160
    ring.read_delayed(out, 320)
    ring.read_delayed(out, 320)  # the writer stalled: what is left, then zeros
    assert ring.shortfalls == 1 and ring.resyncs == 1 and not out[-1]
    ring.write(np.full(2000, 7, np.int16))
    ring.read_delayed(out, 320)  # placed 320 behind the writer again
    assert (out == 7).all() and ring.available == 320


def test_unwrite_takes_back_only_unread_samples():
    from voxbox.audio.ring import SampleRing

    ring = SampleRing(1000)
    ring.write(np.arange(1, 101, dtype=np.int16))
    out = np.zeros(10, np.int16)
    ring.read_into(out)
    assert ring.unwrite(30) == 30 and ring.available == 60
    assert ring.unwrite(500) == 60 and ring.available == 0
