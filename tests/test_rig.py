"""``voxbox.sim.rig``: the speaker end of the ALSA file-device rig (no ALSA needed)."""

from __future__ import annotations

import os
import time

import numpy as np

from voxbox.sim.rig import FileDeviceRig


def test_speaker_snapshot_pairs_every_sample_with_its_block_time(tmp_path):
    rig = FileDeviceRig(tmp_path)
    try:
        spk = rig.speaker()
        s0, t0 = spk.snapshot()
        assert s0.dtype == np.int16 and s0.size == 0 and t0.size == 0
        x = (np.arange(4800) % 1000 + 1).astype("<i2")         # 200 ms at 24 kHz, no zeros
        fd = os.open(rig.speaker_fifo, os.O_WRONLY)
        try:
            for i in range(0, x.size, 480):                      # 20 ms writes, paced
                os.write(fd, x[i:i + 480].tobytes())
                time.sleep(0.02)
            deadline = time.monotonic() + 3.0
            while spk.received < x.size and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            os.close(fd)
        samples, times = spk.snapshot()
        assert samples.size == times.size == spk.received == x.size
        assert np.array_equal(samples, x)                       # bit-exact, in order
        assert np.all(np.diff(times) >= 0) and times.dtype == np.float64
        # one time per consumed block, as many samples as the block had
        blocks = np.unique(times)
        assert 2 <= blocks.size <= x.size // 240 + 5
        assert np.array_equal(spk.times, times) and np.array_equal(spk.samples, samples)
    finally:
        rig.close()


def test_closed_loop_echo_has_no_holes_when_the_speaker_carries_a_shortfall(tmp_path):
    """With slack periods the speaker reads a shortfall at its next tick; the microphone
    waits for it instead of mixing an echo with holes (a chopped echo, which no linear
    canceller can follow: the closed-loop rig once lost 40 % of a reply's echo this way)."""
    import threading

    rig = FileDeviceRig(tmp_path)
    try:
        spk = rig.speaker(slack_periods=2)
        mic = rig.mic(None, tail="silence", echo_from=spk, echo_gain_db=0.0, echo_delay_ms=20.0)
        mic.start(record=True)
        n = rig.playback_rate // 100  # one 10 ms period at the playback rate
        tone = (np.sin(np.arange(rig.playback_rate) * 2 * np.pi * 440 / rig.playback_rate) * 8000).astype("<i2")
        stop = threading.Event()

        def writer() -> None:  # two periods every 20 ms: the speaker is a period short half the time
            fd = os.open(rig.speaker_fifo, os.O_WRONLY)
            try:
                k, i = 0, 0
                t0 = time.monotonic()
                while not stop.is_set():
                    os.write(fd, np.tile(tone, 2)[k * n:(k + 2) * n].tobytes())
                    k = (k + 2) % (rig.playback_rate // n)
                    i += 1
                    time.sleep(max(0.0, t0 + 0.02 * i - time.monotonic()))
            finally:
                os.close(fd)

        w = threading.Thread(target=writer, daemon=True)
        w.start()
        time.sleep(1.5)
        stop.set()
        w.join(2)
        echo = np.concatenate(mic.written).astype(np.float64)
        # the steady part: from 0.4 s after the tone's echo began to 0.2 s before the end
        on = np.flatnonzero(np.abs(echo) > 1000)
        assert on.size, "no echo reached the microphone"
        steady = echo[on[0] + rig.capture_rate * 4 // 10: echo.size - rig.capture_rate // 5]
        blocks = steady[: steady.size // 16 * 16].reshape(-1, 16)  # 1 ms
        quiet = np.mean(np.sqrt(np.mean(blocks ** 2, axis=1)) < 100)
        assert quiet < 0.01, f"{quiet:.1%} of the echo's 1 ms blocks are missing"
        assert mic.echo_short_chunks == 0
    finally:
        rig.close()


def test_tape_records_across_blocks_and_joins_what_was_recorded():
    """The speaker's recording: appended in 10 ms ticks into fixed blocks, read back as
    one array (the rig's own threads must not wait on a join of 60,000 small arrays)."""
    from voxbox.sim.rig import _Tape

    t = _Tape(np.int16, block=7)
    x = np.arange(40, dtype=np.int16)
    for a, b in ((0, 3), (3, 10), (10, 11), (11, 40)):
        t.append(x[a:b])
    blocks, n = t.refs()
    assert n == 40 and len(blocks) == 6
    np.testing.assert_array_equal(_Tape.join(blocks, n, np.int16), x)
    times = _Tape(np.float64, block=4)
    times.fill(1.5, 3)
    times.fill(2.5, 6)
    tb, m = times.refs()
    np.testing.assert_array_equal(_Tape.join(tb, m, np.float64), [1.5] * 3 + [2.5] * 6)
    assert _Tape.join([], 0, np.int16).size == 0
    one, k = _Tape(np.int16, block=100), 5
    one.append(x[:k])
    got = _Tape.join(*one.refs(), np.int16)
    got[0] = 99  # a copy: the recording is not changed through it
    assert _Tape.join(*one.refs(), np.int16)[0] == 0
