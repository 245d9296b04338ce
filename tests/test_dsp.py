"""``voxbox dsp`` and the daemon's capture recorder: field recordings replay through exactly
the daemon's front end."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from synth import speechlike
from voxbox.audio.speech import demo_utterance
from voxbox.audio.wavfile import write_wav
from voxbox.dsp.recorder import CaptureRecorder
from voxbox.field.replay import DspError, read_wav
from voxbox.sim.harness import DaemonHarness

REPO = Path(__file__).resolve().parents[1]


def voxbox(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voxbox", *args], capture_output=True, text=True,
                          timeout=120, **kw)


# -- recorder core ---------------------------------------------------------------------------
def test_recorder_keeps_the_last_n_seconds_in_order():
    rec = CaptureRecorder(0.05, 1000)  # 50 samples
    blocks = [np.arange(i * 7, i * 7 + 7, dtype=np.int16) for i in range(5)]  # 35 samples
    for b in blocks:
        rec.write(b, -b, b * 2)
    snap = rec.snapshot()
    assert snap.from_start and snap.start_sample == 0 and snap.samples.shape == (35, 3)
    assert np.array_equal(snap.channel("mic"), np.arange(35))
    assert np.array_equal(snap.channel("ref"), -np.arange(35))
    for i in range(5, 12):  # 84 samples in all: wraps
        b = np.arange(i * 7, i * 7 + 7, dtype=np.int16)
        rec.write(b, -b, b * 2)
    snap = rec.snapshot()
    assert not snap.from_start and snap.start_sample == 34
    assert np.array_equal(snap.channel("mic"), np.arange(34, 84))
    assert np.array_equal(snap.channel("out"), 2 * np.arange(34, 84))
    big = np.arange(1000, 1120, dtype=np.int16)  # one block longer than the ring
    rec.write(big, big, big)
    snap = rec.snapshot()
    assert np.array_equal(snap.channel("mic"), big[-50:]) and snap.start_sample == 84 + 70
    with pytest.raises(KeyError, match="'left'.*mic, ref, out"):
        snap.channel("left")
    with pytest.raises(ValueError, match="seconds"):
        CaptureRecorder(0, 16000)


# -- the command line ------------------------------------------------------------------------
def test_dsp_rejects_bad_input_naming_it(tmp_path):
    ok = tmp_path / "ok.wav"
    write_wav(ok, np.zeros(1600, np.int16), 16000)
    wrong_rate = tmp_path / "rate.wav"
    write_wav(wrong_rate, np.zeros(1600, np.int16), 48000)
    with pytest.raises(DspError, match=r"--ref .*rate\.wav: expected 16000 Hz .*got 48000 Hz"):
        read_wav(wrong_rate, 16000, "--ref")
    with pytest.raises(DspError, match=r"--mic .*nope\.wav: not found"):
        read_wav(tmp_path / "nope.wav", 16000, "--mic")
    p = voxbox("dsp", "--mic", str(ok), "--ref", str(wrong_rate), "--out", str(tmp_path / "o.wav"))
    assert p.returncode == 2 and "--ref" in p.stderr and "48000 Hz" in p.stderr
    p = voxbox("dsp", "--mic", str(ok), "--ref", str(ok), "--out", str(tmp_path / "o.wav"),
               "--set", "filter_mz=300")
    assert p.returncode == 78 and "frontend.filter_mz: unknown key" in p.stderr
    p = voxbox("dsp", "--mic", str(ok), "--ref", str(ok), "--out", str(tmp_path / "o.wav"),
               "--set", "frame_size=300")
    assert p.returncode == 78 and "frontend.frame_size" in p.stderr and "256" in p.stderr
    assert not (tmp_path / "o.wav").exists()
    from voxbox.field.replay import read_events

    bad = tmp_path / "bad.json"
    bad.write_text('{"events": [[160, "shift", 3]]}')
    with pytest.raises(DspError, match=r"--events .*bad\.json: unknown event kind 'shift'"):
        read_events(bad)
    bad.write_text('{"samples": 3}')
    with pytest.raises(DspError, match=r"--events .*bad\.json: expected an 'events' list"):
        read_events(bad)
    p = voxbox("dsp", "--mic", str(ok), "--ref", str(ok), "--out", str(tmp_path / "o.wav"), "--events", str(bad))
    assert p.returncode == 2 and "--events" in p.stderr


def test_recorder_notes_the_front_ends_steps_at_their_samples_and_replay_takes_them():
    """A retraining noted in the recording replays at the same sample: the output with the
    events equals the daemon-like run that took the steps there, and differs without them."""
    from voxbox.dsp.frontend import CaptureFrontEnd, run_frontend
    from voxbox.dsp.recorder import CaptureRecorder

    rng = np.random.default_rng(4)
    n = 16000 * 4
    x = (rng.standard_normal(n) * 3000).astype(np.int16)
    mic = (np.convolve(x, [0, 0, 0.3, 0.1])[:n] + rng.standard_normal(n) * 20).astype(np.int16)
    rec = CaptureRecorder(10.0, 16000)
    fe = CaptureFrontEnd()
    fe.early_retrain_inline = False  # as the daemon: it takes the early retraining itself
    job, early_at = None, None
    for i in range(0, n, 160):
        if job is None and fe.retrain_due:
            job, early_at = fe.prepare_early_retrain(), i
            rec.note("early")
        if early_at is not None and i == early_at + 480:
            job.run()
            fe.adopt(job)
            rec.note("adopt")
            job = None
        if i == 16000 * 3:
            job = fe.prepare_realign(32)
            rec.note("realign", 32)
        if i == 16000 * 3 + 800:
            job.run()
            fe.adopt(job)
            rec.note("adopt")
        out = fe.process(mic[i : i + 160], x[i : i + 160])
        rec.write(mic[i : i + 160], x[i : i + 160], out)
    r = rec.snapshot()
    assert early_at is not None and 32000 <= early_at <= 36000
    assert r.events == ((early_at, "early", 0), (early_at + 480, "adopt", 0), (48000, "realign", 32), (48800, "adopt", 0))
    with pytest.raises(ValueError, match="recorder event"):
        rec.note("reset")
    replay = run_frontend(CaptureFrontEnd(), r.channel("mic"), r.channel("ref"), 160, r.events)
    assert np.array_equal(replay, r.channel("out"))
    assert not np.array_equal(run_frontend(CaptureFrontEnd(), r.channel("mic"), r.channel("ref"), 160),
                              r.channel("out"))


def test_dsp_cancels_a_synthetic_echo_and_applies_overrides(tmp_path):
    rng = np.random.default_rng(3)
    far = speechlike(8 * 16000, 3) * 10000
    h = np.zeros(400)
    h[[40, 90, 200]] = [0.5, -0.2, 0.08]
    echo = np.convolve(far, h)[: far.size]
    mic = np.clip(echo + rng.normal(0, 30, far.size), -32768, 32767).astype(np.int16)
    write_wav(tmp_path / "mic.wav", mic, 16000)
    write_wav(tmp_path / "ref.wav", np.clip(far, -32768, 32767).astype(np.int16), 16000)
    p = voxbox("dsp", "--mic", str(tmp_path / "mic.wav"), "--ref", str(tmp_path / "ref.wav"),
               "--out", str(tmp_path / "out.wav"), "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["erle_db"] > 15, s
    out = read_wav(tmp_path / "out.wav", 16000, "--out")
    assert out.shape == mic.shape
    p = voxbox("dsp", "--mic", str(tmp_path / "mic.wav"), "--ref", str(tmp_path / "ref.wav"),
               "--out", str(tmp_path / "out2.wav"), "--json", "--set", "filter_ms=100",
               "--set", "frontend.noise_suppress_db=-10")
    assert p.returncode == 0, p.stderr
    s2 = json.loads(p.stdout)
    assert s2["settings"]["filter_ms"] == 100 and s2["settings"]["noise_suppress_db"] == -10
    print(f"synthetic echo: {s['erle_db']} dB with defaults, {s2['erle_db']} dB with the overrides")
    assert s["loudspeaker"] is None  # a linear echo path: no saturation identified


def test_dsp_names_the_loudspeaker_saturation_it_identified(tmp_path):
    far = np.clip(speechlike(8 * 16000, 4) * 14000, -32768, 32767)
    h = np.zeros(400)
    h[[40, 90, 200]] = [0.5, -0.2, 0.08]
    echo = np.convolve(np.clip(far, -0.15 * 32768, 0.15 * 32768), h)[: far.size]  # clips at 0.15
    mic = np.clip(echo + np.random.default_rng(4).normal(0, 30, far.size), -32768, 32767).astype(np.int16)
    write_wav(tmp_path / "mic.wav", mic, 16000)
    write_wav(tmp_path / "ref.wav", far.astype(np.int16), 16000)
    p = voxbox("dsp", "--mic", str(tmp_path / "mic.wav"), "--ref", str(tmp_path / "ref.wav"),
               "--out", str(tmp_path / "out.wav"), "--json")
    assert p.returncode == 0, p.stderr
    ls = json.loads(p.stdout)["loudspeaker"]
    assert ls is not None and ls["knee"] == 8.0 and 0.11 < ls["clip"] < 0.2, ls
    p = voxbox("dsp", "--mic", str(tmp_path / "mic.wav"), "--ref", str(tmp_path / "ref.wav"),
               "--out", str(tmp_path / "out.wav"))
    assert p.returncode == 0 and "loudspeaker saturating at 0.1" in p.stdout, p.stdout


# -- daemon recording replays bit for bit ----------------------------------------------------
@pytest.mark.e2e
def test_daemon_recording_replays_bit_for_bit_through_voxbox_dsp(tmp_path):
    """The daemon records mic/ref/out during a real wake-word turn with its reply echoed
    back into the microphone; ``voxbox dsp`` on the recorded mic and ref with the daemon's
    config file and the recording's events (the canceller's retrainings at the line's
    moves) reproduces the recorded output exactly."""
    sig, _ = demo_utterance()
    state = tmp_path / "state"
    with DaemonHarness(tmp_path / "h", echo_db=-26, config={"frontend": {"record_s": 120}}) as h:
        h.start(env={"STATE_DIRECTORY": str(state)})
        h.mic.play(sig)
        h.wait_event("wake", timeout=15)
        end = h.wait_event("playback_end", timeout=40)
        time.sleep(0.5)
        h.proc.send_signal(signal.SIGUSR1)
        rec = h.wait_event("recording", timeout=10, after=end["mono"])
        base = Path(rec["VOXBOX_PATH"])
        assert rec["VOXBOX_FROM_START"] == 1
        config = h.config_path
        assert h.stop_daemon() == 0
    meta = json.loads(Path(f"{base}.json").read_text())
    assert meta["from_start"] and meta["start_sample"] == 0
    mic = read_wav(Path(f"{base}-mic.wav"), 16000, "mic")
    ref = read_wav(Path(f"{base}-ref.wav"), 16000, "ref")
    out = read_wav(Path(f"{base}-out.wav"), 16000, "out")
    assert mic.shape == ref.shape == out.shape and mic.shape[0] > 5 * 16000
    assert np.abs(ref).max() > 1000, "the reply never reached the reference"
    p = voxbox("dsp", "--mic", f"{base}-mic.wav", "--ref", f"{base}-ref.wav", "--out",
               str(tmp_path / "replay.wav"), "--config", str(config), "--events", f"{base}.json", "--json")
    assert p.returncode == 0, p.stderr
    replay = read_wav(tmp_path / "replay.wav", 16000, "replay")
    diff = np.flatnonzero(replay != out)
    print(f"recorded {mic.shape[0] / 16000:.2f} s; replay differs in {diff.size} samples; "
          f"voxbox dsp: {p.stdout.strip()}")
    assert diff.size == 0, f"first difference at sample {diff[0]}"
    # a different setting changes the output: the comparison is not vacuous
    p = voxbox("dsp", "--mic", f"{base}-mic.wav", "--ref", f"{base}-ref.wav", "--out",
               str(tmp_path / "other.wav"), "--config", str(config), "--set", "filter_ms=100")
    assert p.returncode == 0, p.stderr
    assert not np.array_equal(read_wav(tmp_path / "other.wav", 16000, "other"), out)


@pytest.mark.e2e
def test_recording_request_without_a_ring_is_logged_not_fatal(tmp_path):
    with DaemonHarness(tmp_path) as h:
        h.start()
        t = time.monotonic()
        h.proc.send_signal(signal.SIGUSR1)
        r = h.wait_event("recording", timeout=10, after=t - 1)
        assert "record_s is 0" in r["msg"]
        assert h.proc.poll() is None
        assert h.stop_daemon() == 0
