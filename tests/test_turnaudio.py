"""The turn's local audio buffer (resend after a link loss)."""
import pytest

from voxbox.realtime.turnaudio import TurnAudio


def blk(i: int, ms: int = 40) -> bytes:
    return bytes([i % 256]) * (24 * ms * 2)


def test_preroll_begins_the_question_and_freeze_stops_it():
    a = TurnAudio(24000, max_s=30, preroll_s=0.1)
    for i in range(10):
        a.feed(blk(i))  # follow-up window: only the last 100 ms are kept
    a.begin()
    assert a.recording and a.samples == 2 * 960  # two 40 ms blocks fit in 100 ms
    a.feed(blk(20))
    a.freeze()
    a.feed(blk(21))  # after the commit: not the question
    assert a.frozen and a.samples == 3 * 960
    assert b"".join(a.chunks()) == blk(8) + blk(9) + blk(20)
    a.clear()
    assert a.samples == 0 and not a.frozen and a.chunks() == []


def test_bounded_and_chunked():
    a = TurnAudio(24000, max_s=1.0, preroll_s=0)
    a.begin()
    for i in range(100):
        a.feed(blk(i))
    assert a.overflowed and a.samples == 24000  # 25 blocks of 40 ms: the newest second
    chunks = a.chunks(max_ms=200)
    assert len(chunks) == 5 and all(len(c) == 9600 for c in chunks)
    assert chunks[-1].endswith(blk(99))


def test_bad_arguments_named():
    with pytest.raises(ValueError, match="TurnAudio"):
        TurnAudio(24000, max_s=0)


def test_a_false_interruption_gives_the_question_back():
    a = TurnAudio(24000, max_s=30, preroll_s=0)
    a.begin()
    a.feed(blk(1))
    a.freeze()  # the question; its reply plays
    a.begin()  # the service heard speech over the reply: a new turn, tentatively
    a.feed(blk(2))
    a.restore()  # ... a cough: the reply resumes
    assert a.frozen and not a.recording and b"".join(a.chunks()) == blk(1)
    a.clear()
    a.restore()  # nothing set aside any more
    assert a.samples == 0
