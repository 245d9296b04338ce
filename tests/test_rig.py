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
