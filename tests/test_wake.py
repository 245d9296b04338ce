"""voxbox.wake.detector: real openWakeWord (tflite via ai-edge-litert) on real espeak-ng speech."""

from __future__ import annotations

import resource
import shutil
import time

import numpy as np
import pytest

from voxbox.audio import speech
from voxbox.wake import detector as wake
from voxbox.wake.detector import Detection, PlaybackAwareWake, WakeModelError, WakeWordDetector, find_model

FRAME = 160  # the daemon's 10 ms capture period
SR = 16_000

# espeak-ng renders the speech (./dev installs it; a missing one fails, it does not skip)

WAKE_VOICES = ["en-us", "en-gb", "en-us+f3"]

# Ordinary assistant-ish speech without the wake word, in several voices.
OTHER_SPEECH = [
    ("en-us", "Good morning. The kitchen lights are on and the oven timer has ten minutes left."),
    ("en-gb", "Please remind me to call the dentist on Thursday afternoon, before the school run."),
    ("en-us+f3", "I think it will rain later, so bring an umbrella and close the windows upstairs."),
    ("en-gb-x-rp", "Could you play some quiet music in the living room while I finish reading?"),
    ("en-us", "The train to the city leaves at half past eight, and the next one is at nine."),
    ("en-gb", "Add milk, eggs, bread, coffee and a bag of apples to the shopping list, thanks."),
    ("en-us+m3", "Turn the heating down a little, it is getting warm in here this evening."),
    ("en-us", "My brother Charles is visiting next week, so we need to tidy the spare room."),
]


def pad(x: np.ndarray, lead_s: float = 1.0, tail_s: float = 1.0) -> np.ndarray:
    return np.concatenate(
        [np.zeros(int(lead_s * SR), np.int16), x, np.zeros(int(tail_s * SR), np.int16)]
    )


def feed(det: WakeWordDetector, x: np.ndarray, frame: int = FRAME, t0: float = 0.0) -> list[Detection]:
    out = []
    for i in range(0, x.size, frame):
        d = det.process(x[i : i + frame], t0 + i / SR)
        if d is not None:
            out.append(d)
    return out


@pytest.fixture(scope="module")
def hey_jarvis() -> dict[str, np.ndarray]:
    return {v: speech.render_speech("Hey Jarvis", voice=v) for v in WAKE_VOICES}


@pytest.fixture(scope="module")
def other_speech() -> np.ndarray:
    gap = np.zeros(int(0.4 * SR), np.int16)
    parts = []
    for voice, text in OTHER_SPEECH:
        parts += [speech.render_speech(text, voice=voice), gap]
    x = np.concatenate(parts).astype(np.float64)
    x += speech.pink_noise(x.size, -45.0, seed=1)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


# ------------------------------------------------------------------ find_model


def test_builtin_models_resolve_to_the_packaged_data():
    for name in wake.BUILTIN_MODELS:
        p = find_model(name)
        assert p.is_file() and p.suffix == ".tflite"
        assert "pyopen_wakeword" in p.parts
        assert p.stem == wake.BUILTIN_MODELS[name]


def test_no_ml_runtime_but_litert_is_imported():
    """The detector imports LiteRT's interpreter and numpy only: no openWakeWord package,
    onnxruntime, scipy, scikit-learn or pyopen-wakeword's own runtime."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from voxbox.wake.detector import WakeWordDetector; "
            "d = WakeWordDetector('hey_jarvis'); d.process(np.zeros(1280, np.int16), 0.0); "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('openwakeword', 'onnxruntime', 'scipy', 'sklearn', 'pyopen_wakeword', 'tflite_runtime', 'tensorflow'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_bad_custom_models_are_refused_by_name(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model")
    with pytest.raises(WakeModelError, match="junk.tflite"):
        WakeWordDetector(str(junk))
    # a tflite model that is not a wake-word head (the embedding model)
    emb = wake._models_dir() / "embedding_model.tflite"
    with pytest.raises(WakeModelError, match=r"not an openWakeWord wake-word head"):
        WakeWordDetector(str(emb))
    onnx = tmp_path / "computer.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(WakeModelError, match="convert the model to .tflite"):
        WakeWordDetector(str(onnx))


def test_unknown_model_raises_listing_builtins():
    with pytest.raises(WakeModelError) as ei:
        find_model("hey_computer")
    msg = str(ei.value)
    assert "hey_computer" in msg
    for name in ("hey_jarvis", "alexa", "ok_nabu", "hey_mycroft", "hey_rhasspy"):
        assert name in msg
    assert isinstance(ei.value, ValueError)
    with pytest.raises(WakeModelError):
        WakeWordDetector("hey_computer")


# ------------------------------------------------------------------- detection


@pytest.mark.parametrize("voice", WAKE_VOICES)
def test_hey_jarvis_detected(hey_jarvis, voice):
    det = WakeWordDetector()
    x = pad(hey_jarvis[voice])
    dets = feed(det, x)
    print(f"\n{voice}: peak {det.peak_score:.4f} detections {[(d.t, round(d.score, 3)) for d in dets]}")
    assert len(dets) == 1
    d = dets[0]
    assert d.model == "hey_jarvis"
    assert d.score >= 0.5 and det.peak_score >= d.score
    speech_end = 1.0 + hey_jarvis[voice].size / SR
    assert 1.0 < d.t < speech_end + 1.0
    # Detection times fall on 80 ms chunk boundaries.
    assert d.t * SR % wake.CHUNK_SAMPLES == pytest.approx(0.0, abs=1e-6)


def test_ordinary_speech_does_not_trigger(other_speech):
    assert other_speech.size / SR >= 20.0
    det = WakeWordDetector()
    dets = feed(det, other_speech)
    print(f"\n{other_speech.size / SR:.1f} s of other speech: peak {det.peak_score:.4f}")
    assert dets == []
    assert det.peak_score < 0.5


def test_demo_utterance_triggers_once_after_wake_word():
    x, seg = speech.demo_utterance()
    assert seg["wake_start"] == pytest.approx(0.5)
    assert seg["wake_start"] < seg["wake_end"] < seg["question_start"] < seg["question_end"]
    assert seg["question_start"] - seg["wake_end"] == pytest.approx(0.6)
    assert x.size / SR == pytest.approx(seg["question_end"] + 1.5)
    det = WakeWordDetector()
    dets = feed(det, x)
    print(f"\ndemo: segments {seg} detections {dets} peak {det.peak_score:.4f}")
    assert len(dets) == 1
    assert seg["wake_end"] - 0.2 <= dets[0].t <= seg["wake_end"] + 1.0


def test_demo_utterance_is_deterministic():
    a, sa = speech.demo_utterance(seed=3)
    b, sb = speech.demo_utterance(seed=3)
    c, _ = speech.demo_utterance(seed=4)
    assert sa == sb and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.int16


def test_frame_length_does_not_matter(hey_jarvis):
    x = pad(hey_jarvis["en-us"], lead_s=2.5)
    results = []
    for frame in (160, 997, 1280, 4000):
        np.random.seed(0)  # openWakeWord seeds its feature buffer from np.random
        det = WakeWordDetector()
        dets = feed(det, x, frame=frame)
        assert len(dets) == 1
        results.append((dets[0].t, det.peak_score))
    ts = [t for t, _ in results]
    assert max(ts) - min(ts) < 1e-6, results
    assert max(p for _, p in results) - min(p for _, p in results) < 1e-3


def test_refractory(hey_jarvis):
    hj = hey_jarvis["en-gb"]
    # One utterance stays above threshold for several 80 ms chunks.
    det0 = WakeWordDetector(refractory_s=0.0)
    many = feed(det0, pad(hj))
    assert len(many) >= 2
    assert np.all(np.diff([d.t for d in many]) > 0)
    # ... which the default refractory time folds into one detection.
    assert len(feed(WakeWordDetector(), pad(hj))) == 1

    # Two utterances back to back (onsets ~1.5 s apart): a 3 s refractory time
    # keeps one detection, 0.5 s lets the second through; with the default 1.5 s,
    # utterances 2.5 s apart are two detections.
    def two(gap_s: float) -> np.ndarray:
        return pad(np.concatenate([hj, np.zeros(int(gap_s * SR), np.int16), hj]))

    long_ = feed(WakeWordDetector(refractory_s=3.0), two(0.3))
    short = feed(WakeWordDetector(refractory_s=0.5), two(0.3))
    far = feed(WakeWordDetector(), two(2.5))
    print(f"\nrefractory 3.0: {[d.t for d in long_]} 0.5: {[d.t for d in short]} "
          f"1.5 (2.5 s apart): {[d.t for d in far]}")
    assert len(long_) == 1
    assert len(short) >= 2 and np.all(np.diff([d.t for d in short]) >= 0.5 - 1e-9)
    assert len(far) == 2 and far[1].t - far[0].t >= 1.5


def test_reset_clears_stale_audio(hey_jarvis):
    x = pad(hey_jarvis["en-us"])
    silence = np.zeros(2 * SR, np.int16)

    def until_detection(det):
        for i in range(0, x.size, FRAME):
            d = det.process(x[i : i + FRAME], i / SR)
            if d is not None:
                return d
        raise AssertionError("no detection")

    # Without reset the buffered wake word keeps scoring (refractory off to see it).
    det = WakeWordDetector(refractory_s=0.0)
    d = until_detection(det)
    assert feed(det, silence, t0=d.t) != []

    det = WakeWordDetector(refractory_s=0.0)
    d = until_detection(det)
    det.reset()
    assert det.peak_score == 0.0 and det.last_score == 0.0
    assert feed(det, silence, t0=d.t) == []
    assert det.peak_score < 0.5
    # And it still detects afterwards.
    assert feed(det, x, t0=d.t + 2.0)


def test_custom_model_path(tmp_path, hey_jarvis):
    custom = tmp_path / "my_wake.tflite"
    shutil.copyfile(find_model("hey_jarvis"), custom)
    assert find_model(str(custom)) == custom
    det = WakeWordDetector(str(custom), threshold=0.6)
    dets = feed(det, pad(hey_jarvis["en-gb"]))
    assert len(dets) == 1 and dets[0].model == "my_wake"
    assert dets[0].score >= 0.6

    not_a_model = tmp_path / "model.bin"
    not_a_model.write_bytes(b"x")
    with pytest.raises(WakeModelError):
        find_model(str(not_a_model))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        WakeWordDetector(threshold=0.0)
    with pytest.raises(ValueError):
        WakeWordDetector(refractory_s=-1.0)
    det = WakeWordDetector()
    with pytest.raises(TypeError):
        det.process(np.zeros(160, np.float32), 0.0)


# ------------------------------------------------------------ playback-aware wake


def feed2(det: PlaybackAwareWake, x: np.ndarray, ref: np.ndarray, frame: int = FRAME, t0: float = 0.0,
          playing=None) -> list[Detection]:
    out = []
    for i in range(0, x.size, frame):
        d = det.process(x[i : i + frame], ref[i : i + frame], t0 + i / SR, playing)
        if d is not None:
            out.append(d)
    return out


def echo_of(ref: np.ndarray, delay_s: float = 0.06, gain: float = 0.5) -> np.ndarray:
    """A crude echo: the reference delayed and attenuated, plus a little noise."""
    d = int(delay_s * SR)
    e = np.concatenate([np.zeros(d), ref[: ref.size - d].astype(np.float64) * gain])
    e += np.random.default_rng(5).standard_normal(e.size) * 30
    return np.clip(np.round(e), -32768, 32767).astype(np.int16)


def test_playback_aware_gates_own_reply(hey_jarvis):
    """The unit itself saying the wake word (reference and its echo) does not wake it."""
    reply = pad(np.concatenate([hey_jarvis["en-us+f3"], np.zeros(SR, np.int16), hey_jarvis["en-gb"]]))
    mic = echo_of(reply)
    plain = WakeWordDetector()
    assert feed(plain, mic) != []  # the echo alone wakes a plain detector
    det = PlaybackAwareWake()
    assert feed2(det, mic, reply) == []
    assert det.gated >= 1


def test_playback_aware_hears_user_over_other_reply(hey_jarvis, other_speech):
    """The user's wake word while the unit plays ordinary speech is detected."""
    user = pad(hey_jarvis["en-us"], lead_s=3.0)
    reply = other_speech[: user.size]
    mic = np.clip(echo_of(reply, gain=0.1).astype(np.int32) + user, -32768, 32767).astype(np.int16)
    det = PlaybackAwareWake()
    dets = feed2(det, mic, reply)
    assert len(dets) == 1 and det.gated == 0
    assert 3.0 < dets[0].t < 3.0 + hey_jarvis["en-us"].size / SR + 1.0 + det.gate_after_s
    # The detection is returned gate_after_s after its chunk ended, at most.
    assert dets[0].model == "hey_jarvis"


def test_playback_threshold_applies_while_playing(hey_jarvis):
    """A wake word scoring between the two thresholds wakes the unit only while it plays."""
    x = pad(hey_jarvis["en-gb"])
    peak = WakeWordDetector()
    feed(peak, x)
    lo = max(0.05, peak.peak_score - 0.05)  # below the peak: detects
    silent = np.zeros_like(x)
    assert feed2(PlaybackAwareWake(threshold=1.0, threshold_playback=lo), x, silent) == []
    assert feed2(PlaybackAwareWake(threshold=1.0, threshold_playback=lo), x, silent, playing=True) != []
    # playing=None: derived from the reference level (a quiet hum counts as playing)
    hum = (np.sin(np.arange(x.size) * 2 * np.pi * 200 / SR) * 300).astype(np.int16)
    det = PlaybackAwareWake(threshold=1.0, threshold_playback=lo)
    assert feed2(det, x, hum) != [] and det.playing


def test_playback_threshold_needs_the_near_end_detector(hey_jarvis):
    """With ``near_end_window_s`` a detection while the unit plays needs the caller's
    near-end speech detector to have heard the user within that long (the reply's own
    residual can score like a wake word; the user's wake word is near-end speech)."""
    x = pad(hey_jarvis["en-gb"])
    peak = WakeWordDetector()
    feed(peak, x)
    lo = max(0.05, peak.peak_score - 0.05)
    silent = np.zeros_like(x)
    det = PlaybackAwareWake(threshold=1.0, threshold_playback=lo, near_end_window_s=1.5)
    assert feed2(det, x, silent, playing=True) == []  # nobody said the user speaks
    det = PlaybackAwareWake(threshold=1.0, threshold_playback=lo, near_end_window_s=1.5)
    det.near_end(0.0)  # before the word (pad's 1 s lead): too old by the time it scores
    assert feed2(det, x, silent, playing=True) == []
    det = PlaybackAwareWake(threshold=1.0, threshold_playback=lo, near_end_window_s=1.5)
    hits = []
    for i in range(0, x.size, FRAME):
        t = i / SR
        det.near_end(t)  # the detector hears the user throughout
        d = det.process(x[i : i + FRAME], silent[i : i + FRAME], t, True)
        if d is not None:
            hits.append(d)
    assert len(hits) == 1
    det.reset()  # forgets the near-end word too
    assert feed2(det, x, silent, t0=20.0, playing=True) == []
    # while playing, the one-chunk threshold asks the near-end detector too; not playing,
    # neither does
    assert feed2(PlaybackAwareWake(threshold=lo, near_end_window_s=1.5), x, silent, playing=True) == []
    assert feed2(PlaybackAwareWake(threshold=lo, near_end_window_s=1.5), x, silent, playing=False) != []
    with pytest.raises(ValueError, match="near_end_window_s"):
        PlaybackAwareWake(near_end_window_s=-1.0)


def test_near_end_speech_from_before_the_reply_does_not_vouch_for_a_score_on_it(hey_jarvis):
    """The user's words before a reply (the wake word that barged in on the last one)
    are recent, but the reply that answers them plays after them: a score on that reply
    needs near-end speech heard while it plays."""
    x = pad(hey_jarvis["en-gb"])  # the word starts 1 s in and scores about 0.8 s later
    peak = WakeWordDetector()
    feed(peak, x)
    lo = max(0.05, peak.peak_score - 0.05)
    silent = np.zeros_like(x)

    def run(near_until: float, play_from: float) -> list:
        det = PlaybackAwareWake(threshold=1.0, threshold_playback=lo, near_end_window_s=1.5)
        hits = []
        for i in range(0, x.size, FRAME):
            t = i / SR
            if t < near_until:
                det.near_end(t)
            d = det.process(x[i : i + FRAME], silent[i : i + FRAME], t, t >= play_from)
            if d is not None:
                hits.append(d)
        return hits

    # heard until 0.8 s while a reply played from 0.3 s: the word (scoring about 2.1 s in,
    # within 1.5 s of it) wakes the unit
    assert len(run(near_until=0.8, play_from=0.3)) == 1
    # the same, but the reply began at 0.85 s, after the near-end word: no
    assert run(near_until=0.8, play_from=0.85) == []


def test_playback_threshold_waits_for_warmup():
    """Right after construction/reset openWakeWord scores ~0.3 on plain noise for about a
    second; the lower threshold must not apply then."""
    noise = np.round(np.random.default_rng(5).standard_normal(2 * SR) * 30).astype(np.int16)
    ref = np.zeros_like(noise)
    np.random.seed(0)
    assert feed2(PlaybackAwareWake(warmup_s=0.0), noise, ref, playing=True) != []  # the artefact
    np.random.seed(0)
    det = PlaybackAwareWake()
    assert feed2(det, noise, ref, playing=True) == []
    det.reset()
    assert feed2(det, noise, ref, t0=5.0, playing=True) == []


def test_playback_aware_frame_length_and_reset(hey_jarvis):
    x = pad(hey_jarvis["en-us"], lead_s=2.5)
    ref = np.zeros_like(x)
    ts = []
    for frame in (160, 997, 1280):
        np.random.seed(0)
        dets = feed2(PlaybackAwareWake(), x, ref, frame=frame)
        assert len(dets) == 1
        ts.append(dets[0].t)
    assert max(ts) - min(ts) < 1e-6
    det = PlaybackAwareWake(refractory_s=0.0)
    feed2(det, x[: int(3.3 * SR)], ref[: int(3.3 * SR)])
    det.reset()
    assert det.last_score == 0.0 and det.last_ref_score == 0.0
    assert feed2(det, np.zeros(2 * SR, np.int16), np.zeros(2 * SR, np.int16), t0=10.0) == []
    with pytest.raises(ValueError):
        det.process(np.zeros(160, np.int16), np.zeros(80, np.int16), 0.0)
    with pytest.raises(ValueError):
        PlaybackAwareWake(threshold_playback=0.0)
    with pytest.raises(ValueError):
        PlaybackAwareWake(gate_after_s=-1.0)


# ------------------------------------------------------------------- benchmark


@pytest.mark.benchmark
def test_benchmark_cpu_per_audio_second(other_speech):
    x, _ = speech.demo_utterance()
    audio = np.concatenate([other_speech, x])
    reps = int(np.ceil(60 * SR / audio.size))
    audio = np.tile(audio, reps)[: 60 * SR]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    det = WakeWordDetector()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    c0, w0 = time.process_time(), time.perf_counter()
    dets = feed(det, audio)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    peak = det.peak_score
    c0 = time.perf_counter()
    det.reset()
    reset_s = time.perf_counter() - c0
    print(
        f"\n60 s audio in 10 ms frames: {cpu / 60:.4f} CPU s per audio s "
        f"(wall {wall / 60:.4f}); {det.chunks} chunks, {len(dets)} detections, "
        f"peak {peak:.4f}; reset {reset_s * 1000:.1f} ms; "
        f"max RSS {rss0:.0f} -> {rss1:.0f} MiB at construction"
    )


# ------------------------------------------------------------------- speech


def test_render_speech_caches_and_reports_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    x = speech.render_speech("testing one two", voice="en-gb", rate_wpm=170)
    assert x.dtype == np.int16 and 0.5 < x.size / SR < 3.0
    assert np.abs(x).max() > 3000
    cached = list((tmp_path / "voxbox" / "speech").glob("*.wav"))
    assert len(cached) == 1
    assert np.array_equal(speech.render_speech("testing one two", voice="en-gb", rate_wpm=170), x)
    with pytest.raises(speech.SpeechError, match="nosuchvoice"):
        speech.render_speech("hello", voice="nosuchvoice")
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(speech.SpeechError, match="espeak-ng.*apt-get install espeak-ng"):
        speech.render_speech("testing one two", voice="en-gb", rate_wpm=170)
