"""Earcons: the packaged WAVs, how they were made, loading, resampling, configuration."""
import importlib.util
import wave
from pathlib import Path

import numpy as np
import pytest

from helpers import write_raw_wav
from voxbox.audio.earcon import CUES, EARCON_RATE, NAMES, EarconError, EarconSet, load_earcon

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "device" / "voxbox" / "earcons"


def make_earcons():
    spec = importlib.util.spec_from_file_location("make_earcons", ROOT / "tools" / "make_earcons.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dominant_hz(x, rate=EARCON_RATE):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8192))
    return np.fft.rfftfreq(8192, 1 / rate)[np.argmax(spec)]


# ---- the packaged files -----------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_packaged_wav_format(name):
    with wave.open(str(PACKAGE_DIR / f"{name}.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)


def test_committed_wavs_are_what_the_tool_makes():
    """Deterministic generator; 1 LSB of slack for libm differences across machines."""
    made = make_earcons().synthesize()
    assert set(made) == set(NAMES)
    for name, x in made.items():
        committed = load_earcon(name)
        assert committed.shape == x.shape, name
        assert np.max(np.abs(committed.astype(int) - x.astype(int))) <= 1, name


@pytest.mark.parametrize("name,lo_ms,hi_ms", [("wake", 100, 140), ("end", 80, 120),
                                               ("error", 220, 280), ("mute", 100, 200),
                                               ("unmute", 100, 200)])
def test_length_level_and_no_clicks(name, lo_ms, hi_ms):
    x = load_earcon(name).astype(np.float64)
    assert lo_ms <= len(x) / EARCON_RATE * 1000 <= hi_ms
    peak_dbfs = 20 * np.log10(np.max(np.abs(x)) / 32767)
    assert -12.5 <= peak_dbfs <= -11.5
    # soft edges (attack/release ≥ 5 ms): silent at both ends, first/last 1 ms far below the peak
    edge = int(0.001 * EARCON_RATE)
    assert x[0] == 0 and x[-1] == 0
    assert np.max(np.abs(x[:edge])) < 0.15 * np.max(np.abs(x))
    assert np.max(np.abs(x[-edge:])) < 0.15 * np.max(np.abs(x))
    # no step anywhere: no sample-to-sample jump above what a 4 kHz tone at full peak makes
    assert np.max(np.abs(np.diff(x))) <= 2 * np.pi * 4000 / EARCON_RATE * np.max(np.abs(x))
    assert not np.any(np.abs(np.mean(x)) > 0.01 * np.max(np.abs(x)))  # no DC


def test_wake_rises_end_falls():
    for name, direction in [("wake", +1), ("end", -1), ("unmute", +1), ("mute", -1)]:
        x = load_earcon(name).astype(np.float64)
        first, second = dominant_hz(x[: len(x) // 2]), dominant_hz(x[len(x) // 2:])
        assert np.sign(second - first) == direction, (name, first, second)


def test_error_is_a_low_double_buzz():
    x = load_earcon("error").astype(np.float64)
    env = np.convolve(np.abs(x), np.ones(240) / 240, mode="same")  # 10 ms smoothing
    loud = env > 0.2 * env.max()
    bursts = np.count_nonzero(np.diff(loud.astype(int)) == 1) + int(loud[0])
    assert bursts == 2
    assert dominant_hz(x) < 300


# ---- loading ----------------------------------------------------------------------------
def test_load_by_name_is_int16_at_the_rate():
    x = load_earcon("wake")
    assert x.dtype == np.int16 and x.ndim == 1 and len(x) == int(0.120 * 24000)


def test_resampled_to_the_playback_rate():
    x24 = load_earcon("wake", 24000)
    x48 = load_earcon("wake", 48000)
    assert x48.dtype == np.int16
    assert abs(len(x48) - 2 * len(x24)) <= 2
    assert abs(dominant_hz(x48[: len(x48) // 2].astype(float), 48000) - 660) < 20


def test_user_wav_path_resampled_and_downmixed(tmp_path):
    t = np.arange(1600) / 16000
    tone = (0.25 * np.sin(2 * np.pi * 1000 * t) * 32767).astype("<i2")
    stereo = np.stack([tone, tone], axis=1)
    p = write_raw_wav(tmp_path / "ding.wav", stereo, 16000, channels=2)
    x = load_earcon(p, 24000)
    assert x.dtype == np.int16 and abs(len(x) - 2400) <= 2
    assert abs(dominant_hz(x.astype(float)) - 1000) < 10
    assert 0.2 * 32767 < np.max(np.abs(x)) < 0.3 * 32767
    assert np.array_equal(load_earcon(str(p), 24000), x)  # str path too


@pytest.mark.parametrize("width,dtype,scale", [(1, "u1", None), (3, None, None), (4, "<i4", 2 ** 31)])
def test_other_pcm_widths(tmp_path, width, dtype, scale):
    v = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(2400) / 24000)
    if width == 1:
        raw = np.round(v * 127 + 128).astype("u1")
    elif width == 3:
        i = np.round(v * 2 ** 23).astype("<i4")
        raw = i.view("u1").reshape(-1, 4)[:, :3].copy()
    else:
        raw = np.round(v * scale).astype(dtype)
    x = load_earcon(write_raw_wav(tmp_path / f"w{width}.wav", raw, 24000, width=width))
    assert np.max(np.abs(x / 32768.0 - v)) < 0.01


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(EarconError, match="nope.wav.*not found"):
        load_earcon(tmp_path / "nope.wav")


def test_bad_file_names_the_file(tmp_path):
    p = tmp_path / "junk.wav"
    p.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(EarconError, match="junk.wav"):
        load_earcon(p)


def test_empty_and_too_long_files(tmp_path):
    with pytest.raises(EarconError, match="empty.wav: no audio"):
        load_earcon(write_raw_wav(tmp_path / "empty.wav", np.zeros(0, "<i2"), 24000))
    with pytest.raises(EarconError, match="long.wav: 6.0 s long"):
        load_earcon(write_raw_wav(tmp_path / "long.wav", np.zeros(6 * 8000, "<i2"), 8000))


def test_unknown_name():
    with pytest.raises(EarconError, match="'ding': not a packaged earcon"):
        load_earcon("ding")


# ---- the configured set -----------------------------------------------------------------
def test_default_set_plays_every_packaged_cue():
    s = EarconSet()
    for cue in CUES:
        assert np.array_equal(s.get(cue), load_earcon(cue))


def test_set_from_config(tmp_path):
    user = write_raw_wav(tmp_path / "ding.wav", np.full(480, 1000, "<i2"), 48000)
    s = EarconSet.from_config({"wake": "end", "end": str(user), "error": "off", "mute": "OFF"},
                              rate=24000)
    assert np.array_equal(s.get("wake"), load_earcon("end"))
    assert len(s.get("end")) == 240
    assert s.get("error") is None and s.get("mute") is None
    assert s.get("unmute") is not None
    with pytest.raises(KeyError, match="unknown earcon cue 'beep'"):
        s.get("beep")


def test_set_errors_name_the_cue_and_file(tmp_path):
    with pytest.raises(EarconError, match=r"earcons\.end: .*missing\.wav: not found"):
        EarconSet({"end": str(tmp_path / "missing.wav")})
    with pytest.raises(EarconError, match="unknown cue.*'wakeup'"):
        EarconSet({"wakeup": "wake"})


def test_packaged_spoken_prompts_load_at_the_playback_rate():
    import importlib.util
    from pathlib import Path

    from voxbox.audio.earcon import PROMPT_NAMES, load_prompts
    prompts = load_prompts(24000)
    assert set(prompts) == set(PROMPT_NAMES)
    assert all(p.dtype == np.int16 and p.size > 24000 and np.abs(p).max() > 1000 for p in prompts.values())
    # the build tool renders exactly these
    spec = importlib.util.spec_from_file_location(
        "make_prompts", Path(__file__).resolve().parents[1] / "tools" / "make_prompts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert set(mod.PROMPTS) == set(PROMPT_NAMES)


# ---- the start-up cue (trains the echo canceller at boot) -------------------------------
def test_startup_cue_length_level_and_soft_edges():
    x = load_earcon("startup").astype(np.float64)
    assert 1400 <= len(x) / EARCON_RATE * 1000 <= 1600
    peak = np.max(np.abs(x))
    assert -12.5 <= 20 * np.log10(peak / 32767) <= -11.5
    assert x[0] == 0 and x[-1] == 0
    edge = int(0.001 * EARCON_RATE)
    assert np.max(np.abs(x[:edge])) < 0.15 * peak and np.max(np.abs(x[-edge:])) < 0.15 * peak
    # band-limited below 8 kHz (Bernstein: |x'| <= 2 pi f_max max|x|) and no DC
    assert np.max(np.abs(np.diff(x))) <= 2 * np.pi * 8000 / EARCON_RATE * peak
    assert abs(np.mean(x)) < 0.01 * peak
    # loud for most of its length (it has to excite the echo path), quiet at the end
    env = np.sqrt(np.convolve(x * x, np.ones(2400) / 2400, mode="same"))  # 100 ms RMS
    rms = 20 * np.log10(np.sqrt(np.mean(x * x)) / 32767)
    assert -30 <= rms <= -20
    assert np.mean(env > 0.25 * env.max()) > 0.6


def test_startup_cue_is_broadband():
    """Energy in every octave the 16 kHz capture sees (250 Hz-8 kHz), none far below the
    strongest: the echo canceller's filter adapts per frequency band."""
    x = load_earcon("startup").astype(np.float64)
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / EARCON_RATE)
    bands = [np.sum(p[(f >= lo) & (f < 2 * lo)]) for lo in (250, 500, 1000, 2000, 4000)]
    db = 10 * np.log10(np.asarray(bands) / max(bands))
    assert np.all(db > -10), db
    assert np.sum(p[f > 8000]) < 0.02 * np.sum(p)  # little above the capture's Nyquist


def test_startup_cue_has_the_chime_notes():
    """The rising C-major-9 arpeggio stands out of the whoosh: each note's fundamental is
    a spectral peak well above the noise around it, and they enter in rising order."""
    x = load_earcon("startup").astype(np.float64)
    n = 1 << 16
    p = np.abs(np.fft.rfft(x * np.hanning(len(x)), n)) ** 2
    f = np.fft.rfftfreq(n, 1 / EARCON_RATE)
    for note in (523.25, 659.26, 783.99, 1174.66):
        k = int(round(note / f[1]))
        peak = p[k - 3:k + 4].max()
        around = np.median(np.concatenate([p[k - 120:k - 20], p[k + 20:k + 120]]))
        assert 10 * np.log10(peak / around) > 10, note
    onsets = []
    for note in (523.25, 659.26, 783.99, 1174.66):
        t = np.arange(len(x)) / EARCON_RATE
        # the note's envelope by quadrature demodulation, 20 ms smoothing
        z = x * np.exp(-2j * np.pi * note * t)
        env = np.abs(np.convolve(z, np.ones(480) / 480, mode="same"))
        onsets.append(int(np.argmax(env > 0.5 * env.max())))
    assert onsets == sorted(onsets) and len(set(onsets)) == 4, onsets


def test_startup_cue_default_and_old_configs():
    """A configuration written before the cue existed (no ``startup`` key) stays valid and
    gets the packaged cue; ``"off"`` turns it off."""
    old = {"wake": "wake", "end": "end", "error": "error", "mute": "mute", "unmute": "unmute"}
    s = EarconSet(old)
    assert np.array_equal(s.get("startup"), load_earcon("startup"))
    assert EarconSet({**old, "startup": "off"}).get("startup") is None
    assert "startup" in CUES and "startup" in NAMES
