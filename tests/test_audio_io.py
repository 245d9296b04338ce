"""Real-time ALSA loops (voxbox.audio.alsa) against the FIFO-backed file devices (voxbox.sim.rig).

ALSA re-reads ALSA_CONFIG_PATH at every PCM open, so each test points this process at its
own rig with ``rig.apply_env()`` (measured: changing the variable between opens works).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import alsaaudio  # noqa: E402
import numpy as np
import pytest

from probes import probe_children
from voxbox.audio.alsa import (  # noqa: E402
    AudioDeviceError,
    CaptureLoop,
    DeviceBlockedError,
    PlaybackLoop,
    list_devices,
    open_check,
    probe_open,
)
from voxbox.sim.rig import FileDeviceRig  # noqa: E402


@pytest.fixture
def rig(tmp_path, monkeypatch):
    r = FileDeviceRig(tmp_path / "rig")
    for k, v in r.env.items():
        monkeypatch.setenv(k, v)
    yield r
    r.close()


def _ramp(n: int, step: int = 7) -> np.ndarray:
    """A signal with no zero samples, so it is easy to find after leading silence."""
    return ((np.arange(n, dtype=np.int64) * step) % 30000 + 1).astype(np.int16)


class _Collector:
    def __init__(self, stall_at: int | None = None, stall_s: float = 0.0):
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.lock = threading.Lock()
        self.stall_at = stall_at
        self.stall_s = stall_s

    def __call__(self, frame: np.ndarray, t: float) -> None:
        assert frame.dtype == np.int16 and frame.shape == (160,)
        with self.lock:
            self.frames.append(frame)
            self.times.append(t)
            n = len(self.frames)
        if self.stall_at is not None and n == self.stall_at:
            time.sleep(self.stall_s)

    def samples(self) -> np.ndarray:
        with self.lock:
            return np.concatenate(self.frames) if self.frames else np.zeros(0, np.int16)


def test_devices_listed_and_open_check(rig):
    devs = list_devices()
    assert "voxbox_mic" in devs["capture"]
    assert "voxbox_speaker" in devs["playback"]
    feeder = rig.mic()  # holds the FIFO so the capture open cannot block
    spk = rig.speaker()  # opening the playback PCM opens the FIFO for writing: needs a reader
    info = open_check("voxbox_mic", "capture")
    assert info["rate"] == 16000 and info["period_size"] == 160
    info = open_check("voxbox_speaker", "playback")
    assert info["rate"] == 24000 and info["buffer_size"] == 960
    spk.close()
    feeder.close()


def test_missing_device_raises_clear_error(rig):
    with pytest.raises(AudioDeviceError) as ei:
        CaptureLoop("voxbox_no_such_mic", lambda f, t: None).start()
    msg = str(ei.value)
    assert "voxbox_no_such_mic" in msg and "capture" in msg
    assert "voxbox_mic" in ei.value.available  # lists what exists
    with pytest.raises(AudioDeviceError, match="voxbox_no_such_speaker"):
        open_check("voxbox_no_such_speaker", "playback")


def _blocking_and_late_devices(rig) -> dict[str, Path]:
    """Adds to the rig's ALSA configuration PCMs whose open blocks (a ``file`` plugin on a
    FIFO with no peer: opening a FIFO for reading waits for a writer, for writing waits
    for a reader) and a microphone whose device node is not there yet (``late.fifo``)."""
    d = rig.workdir
    paths = {"stuck_in": d / "stuck-in.fifo", "stuck_out": d / "stuck-out.fifo", "late": d / "late.fifo"}
    os.mkfifo(paths["stuck_in"])
    os.mkfifo(paths["stuck_out"])
    with open(rig.config_path, "a") as f:
        f.write(f'pcm.stuck_mic {{ type file; slave.pcm "null"; file "/dev/null"; infile "{paths["stuck_in"]}"; format "raw" }}\n'
                f'pcm.stuck_speaker {{ type file; slave.pcm "null"; file "{paths["stuck_out"]}"; format "raw" }}\n'
                f'pcm.late_mic {{ type file; slave.pcm "null"; file "/dev/null"; infile "{paths["late"]}"; format "raw" }}\n')
    return paths


@pytest.mark.parametrize("device,kind", [("stuck_mic", "capture"), ("stuck_speaker", "playback")])
def test_a_blocking_open_is_probed_in_a_child_and_never_freezes_this_process(rig, device, kind):
    """pyalsaaudio holds the GIL while an open blocks: in this process it would freeze
    every thread. The probe child blocks instead, is killed after the timeout, and the
    error says the open blocked; this process kept running meanwhile (a ticker thread
    ticked all along) and no child is left behind."""
    _blocking_and_late_devices(rig)
    ticks: list[float] = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.05)

    th = threading.Thread(target=ticker, daemon=True)
    th.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(DeviceBlockedError) as ei:
            probe_open(device, kind, 16000, 160, timeout_s=1.5)
    finally:
        stop.set()
        th.join()
    took = time.monotonic() - t0
    gaps = np.diff([t0] + ticks)
    print(f"{kind} probe of {device}: blocked, reported after {took:.2f} s; longest gap between "
          f"ticks of this process meanwhile {gaps.max() * 1000:.0f} ms")
    assert ei.value.reason == "blocked" and device in str(ei.value) and "1.5 s" in str(ei.value)
    assert 1.5 <= took < 4.0
    assert gaps.max() < 0.5  # this process never froze
    assert probe_children(device) == []


def test_missing_device_error_says_what_is_missing(rig):
    """ALSA's own message for the part that is missing comes with the error: an unknown
    PCM name, or a device file that is not there."""
    _blocking_and_late_devices(rig)
    with pytest.raises(AudioDeviceError) as ei:
        probe_open("voxbox_no_such_mic", "capture", 16000, 160)
    assert ei.value.reason == "missing" and "Unknown PCM voxbox_no_such_mic" in str(ei.value)
    with pytest.raises(AudioDeviceError) as ei:
        probe_open("late_mic", "capture", 16000, 160)
    assert ei.value.reason == "missing" and "late.fifo" in str(ei.value)


def test_loop_waits_for_a_device_that_appears_later(rig):
    """``wait_for_device``: start() returns although the device is missing; status()
    says why; once the device node appears the loop opens it within ``retry_s`` and
    frames flow."""
    paths = _blocking_and_late_devices(rig)
    feeder = rig.mic(tail="noise")
    col = _Collector()
    loop = CaptureLoop("late_mic", col, wait_for_device=True, retry_s=0.2)
    t0 = time.monotonic()
    loop.start()
    assert time.monotonic() - t0 < 0.5
    deadline = time.monotonic() + 5
    while loop.status().state != "waiting" and time.monotonic() < deadline:
        time.sleep(0.02)
    st = loop.status()
    assert st.state == "waiting" and st.error.reason == "missing" and "late_mic" in str(st.error)
    assert st.last_progress is None
    os.symlink(rig.mic_fifo, paths["late"])  # the device appears
    feeder.start()
    deadline = time.monotonic() + 5
    while loop.frames_delivered < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    st = loop.status()
    assert st.state == "open" and st.error is None and loop.frames_delivered >= 20
    assert st.last_progress is not None and time.monotonic() - st.last_progress < 0.5
    assert loop.open_failures >= 1
    assert loop.stop(timeout=1.0)
    assert loop.status().state == "stopped"
    feeder.close()


def test_loop_waiting_on_a_blocking_device_stops_promptly(rig):
    """A loop whose device open blocks stays stoppable: stop() kills the probe child."""
    _blocking_and_late_devices(rig)
    spk = PlaybackLoop("stuck_speaker", lambda: np.zeros(240, np.int16), wait_for_device=True,
                       open_timeout_s=30.0)
    spk.start()
    deadline = time.monotonic() + 5
    while not probe_children("stuck_speaker") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert spk.status().state == "probing" and probe_children("stuck_speaker")
    t = time.monotonic()
    assert spk.stop(timeout=2.0)
    print(f"stop() with a probe blocked in the open: {time.monotonic() - t:.2f} s")
    assert time.monotonic() - t < 2.0
    assert probe_children("stuck_speaker") == []


def test_capture_is_bit_exact_and_real_time(rig):
    sig = _ramp(24000)  # 1.5 s at 16 kHz
    feeder = rig.mic(sig, tail="silence")
    col = _Collector()
    loop = CaptureLoop(rig.MIC, col)
    loop.start()
    t0 = time.monotonic()
    feeder.start(record=True)
    assert feeder.wait_signal(5.0)
    time.sleep(0.1)
    wall = time.monotonic() - t0
    t = time.monotonic()
    assert loop.stop(timeout=1.0)
    assert time.monotonic() - t < 1.0
    feeder.close()

    got = col.samples()
    start = int(np.flatnonzero(got)[0])
    assert start % 160 == 0  # the signal starts on a frame boundary
    assert np.array_equal(got[start:start + len(sig)], sig)
    # paced by the feeder: about the signal duration, not instantaneous
    assert 1.5 <= wall < 2.2
    assert loop.xruns == 0 and loop.partial_reads == 0
    assert loop.frames_delivered == len(col.frames)
    # timestamps: frame holding signal sample 0 ≈ capture time of that sample
    k = start // 160
    assert abs(col.times[k] - feeder.t_start) < 0.03
    # frames of the signal arrive at the real-time rate
    span = col.times[k + 149] - col.times[k]
    assert abs(span - 149 * 0.010) < 0.05
    assert loop.last_frame_time == col.times[-1]


def test_playback_is_exact_through_speaker(rig):
    spk = rig.speaker()
    sig = _ramp(24000, step=11)  # 1 s at 24 kHz
    state = {"pos": 0, "t0": None}
    written: list[tuple[float, bool]] = []

    def source() -> np.ndarray:
        if state["t0"] is None:
            state["t0"] = time.monotonic()
        if time.monotonic() - state["t0"] < 0.2 or state["pos"] >= len(sig):
            return np.zeros(240, np.int16)
        p = state["pos"]
        state["pos"] += 240
        return sig[p:p + 240]

    def on_written(frame: np.ndarray, t: float) -> None:
        written.append((t, bool(frame.any())))

    loop = PlaybackLoop(rig.SPEAKER, source, on_written)
    loop.start()
    backlog = []  # written by the loop but not yet consumed by the speaker
    for _ in range(16):
        time.sleep(0.1)
        backlog.append(loop.samples_written - spk.received)
    t = time.monotonic()
    assert loop.stop(timeout=1.0)
    assert time.monotonic() - t < 1.0
    time.sleep(0.3)  # let the speaker drain what the plugin flushed on close
    spk.close()

    got = spk.samples
    start = int(np.flatnonzero(got)[0])
    assert np.array_equal(got[start:start + len(sig)], sig)
    # the device reported no underrun; this mono rig without slack does play silence when
    # a 10 ms tick finds the 85 ms pipe a period short, and the loop may infer those
    # (never more than the rig played)
    assert loop.xruns == loop.inferred.count
    assert loop.inferred.samples <= spk.underrun_samples
    # format "raw" writes exactly the PCM bytes: everything written arrives, nothing else
    assert len(got) == loop.samples_written
    # pacing: the loop is held to real time by the speaker pipe (about 1.6 s of audio
    # plus the plugin buffer and the pipe, not seconds of audio in 1.6 s)
    assert loop.samples_written < 24000 * 1.6 + rig.playback_buffer_samples + 2 * 240
    # write → speaker latency: between the plugin's held-back buffer and the nominal total
    first_write = next(t for t, nz in written if nz)
    lat = spk.first_nonsilent_time() - first_write
    assert -0.01 <= lat <= rig.playback_buffer_samples / 24000 + 0.03
    # the invariant the barge-in test relies on: the daemon's written count leads the
    # speaker's by at most the plugin buffer + the pipe (+ one period in flight)
    assert all(0 <= b <= rig.playback_buffer_samples + 240 for b in backlog), backlog
    assert loop.delay_samples() == 0  # null slave: avail() reports an empty buffer


def test_capture_stop_is_prompt_and_stall_is_absorbed(rig):
    """The file plugin cannot overrun: a stalled on_frame is absorbed by the mic pipe and,
    past its 128 ms, by the chunks the feeder holds (a silent loss would move a closed
    loop's echo; a card would report an overrun). No xrun is reported, no sample is lost,
    and frames keep coming after the stall."""
    feeder = rig.mic(tail="noise")
    col = _Collector(stall_at=20, stall_s=0.25)
    loop = CaptureLoop(rig.MIC, col)
    loop.start()
    feeder.start(record=True)
    time.sleep(0.8)
    n_mid = loop.frames_delivered
    time.sleep(0.3)
    t = time.monotonic()
    assert loop.stop(timeout=1.0)
    assert time.monotonic() - t < 1.0
    assert loop.frames_delivered > n_mid + 15  # still flowing after the stall
    assert feeder.dropped_chunks == 0 and feeder.held_max >= 5  # 250 ms > the pipe's 128 ms
    got = col.samples()
    sent = np.concatenate(feeder.written)
    assert np.array_equal(got, sent[:got.size])  # in order, nothing lost
    assert loop.xruns == 0
    feeder.close()


def test_mic_feeder_drops_when_nobody_reads(rig):
    """With no reader for longer than HOLD_MAX_S (the daemon not running), the feeder drops
    its chunks: a daemon that opens the PCM later finds the pipe's 128 ms, not a backlog."""
    from voxbox.sim.rig import HOLD_MAX_S

    feeder = rig.mic(tail="noise")
    feeder.start()
    time.sleep(HOLD_MAX_S + 0.4)
    assert feeder.dropped_chunks >= 20
    assert feeder.samples_written <= feeder.pipe_size // 2  # whole chunks: 12 of 320 bytes
    feeder.close()


# --- xrun recovery paths, with a scripted PCM (the null slave never xruns) -------------

class _FakeCapturePCM:
    """Scripted read() results in pyalsaaudio 0.11's conventions: (n, bytes); an overrun
    is (-EPIPE, b""), -EAGAIN in non-blocking mode is (0, b"")."""

    def __init__(self, script):
        self.script = list(script)
        self.closed = False

    def polldescriptors(self):
        return []

    def read(self):
        if self.script:
            item = self.script.pop(0)
        else:
            item = (0, b"")
            time.sleep(0.002)
        return item

    def close(self):
        self.closed = True


def test_capture_overrun_and_partial_reads_recover():
    x = _ramp(160 * 6)
    b = x.tobytes()

    def part(a, z):
        return (z - a, b[a * 2:z * 2])

    script = [
        part(0, 160),            # frame 0 whole
        part(160, 260), (0, b""), part(260, 320),  # frame 1 in two partial reads
        part(320, 400),          # half of frame 2 ...
        (-errno.EPIPE, b""),     # ... overrun: the partial frame is discarded
        part(480, 640),          # frame 3 whole (after recovery, same PCM)
        part(640, 700), part(700, 800),  # frame 4 partial
    ]
    pcm = _FakeCapturePCM(script)
    col = _Collector()
    kinds: list[str] = []
    loop = CaptureLoop("fake", col, pcm_factory=lambda: pcm, on_xrun=kinds.append)
    loop.start()
    deadline = time.monotonic() + 2
    while loop.frames_delivered < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.stop(timeout=1.0)
    assert loop.xruns == 1 and kinds == ["overrun"]
    got = col.samples()
    expect = np.concatenate([x[0:160], x[160:320], x[480:640], x[640:800]])
    assert np.array_equal(got, expect)
    assert loop.partial_reads == 5
    assert loop.reopens == 0 and pcm.closed


class _FakePlaybackPCM:
    def __init__(self, fail_at: set[int], error: str = "Broken pipe [fake]"):
        self.calls = 0
        self.fail_at = fail_at
        self.error = error
        self.data: list[bytes] = []
        self.dropped = 0
        self.closed = False

    def info(self):
        return {"buffer_size": 960}

    def avail(self):
        return 960 - 240

    def write(self, data):
        self.calls += 1
        if self.calls in self.fail_at:
            raise alsaaudio.ALSAAudioError(self.error)
        self.data.append(bytes(data))
        time.sleep(0.002)
        return len(data) // 2

    def drop(self):
        self.dropped += 1

    def state(self):
        return alsaaudio.PCM_STATE_RUNNING

    def close(self):
        self.closed = True


def test_playback_underrun_recovers_in_place():
    pcm = _FakePlaybackPCM(fail_at={3})
    counter = iter(range(10**6))

    def source():
        return np.full(240, next(counter) % 1000 + 1, np.int16)

    kinds: list[str] = []
    loop = PlaybackLoop("fake", source, None, pcm_factory=lambda: pcm, on_xrun=kinds.append)
    loop.start()
    time.sleep(0.1)
    loop.drop()
    time.sleep(0.05)
    assert loop.stop(timeout=1.0)
    assert loop.xruns == 1 and kinds == ["underrun"]
    assert loop.reopens == 0
    # the frame that hit the underrun was written again: no frame lost or duplicated
    vals = [np.frombuffer(d, np.int16)[0] for d in pcm.data]
    assert vals == list(range(1, len(vals) + 1))
    assert loop.drops == 1 and pcm.dropped >= 1
    assert loop.delay_samples() == 240


def test_playback_drop_on_rig_keeps_playing(rig):
    spk = rig.speaker()
    loop = PlaybackLoop(rig.SPEAKER, lambda: np.full(240, 1000, np.int16))
    loop.start()
    time.sleep(0.3)
    before = loop.samples_written
    loop.drop()
    time.sleep(0.3)
    assert loop.drops == 1 and loop.xruns == loop.inferred.count  # none reported by the device
    assert loop.samples_written > before + 240 * 20
    assert loop.stop(timeout=1.0)
    spk.close()
    assert spk.received > 0


def test_wide_rig_speaker_paces_writes_per_period_bit_exact(tmp_path):
    """``speaker_channels = 8``: the mono stream goes onto 8 channels before the FIFO, so
    the one-page pipe holds one 10 ms period and the blocking write paces the loop per
    period like a real card (not in 85 ms bursts); the speaker keeps channel 0 bit-exact."""
    r = FileDeviceRig(tmp_path / "rig", speaker_channels=8)
    r.apply_env()
    spk = r.speaker()
    x = (np.arange(240 * 150) % 20000 + 1).astype(np.int16)
    times = []
    try:
        pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, device=r.SPEAKER, channels=1, rate=24000,
                            format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=240, periods=4)
        for i in range(150):
            pcm.write(x[i * 240:(i + 1) * 240].tobytes())
            times.append(time.monotonic())
            if i % 10 == 5:
                time.sleep(0.018)  # a late writer: the 4-period pipe absorbs it
        pcm.close()
        deadline = time.monotonic() + 3
        while spk.received < x.size and time.monotonic() < deadline:
            time.sleep(0.01)
        gaps = np.diff(times[20:]) * 1000
        print(f"write gaps: median {np.median(gaps):.1f} ms, max {gaps.max():.1f} ms")
        assert np.median(gaps) > 8 and gaps.max() < 40       # per period, not 85 ms bursts
        rate = (len(times) - 21) / (times[-1] - times[20])
        print(f"writes per second: {rate:.1f}")
        assert 97 < rate < 103                                # late writes catch up
        assert spk.underrun_samples < 240 * 3
        assert sum(n for _, n in spk.underruns) <= spk.underrun_samples  # each gap, timed
        assert np.array_equal(spk.samples[:x.size], x)
    finally:
        r.close()
