"""The loudspeaker model (voxbox.dsp.loudspeaker): the soft clipper, its identification
against a known linear path, and the front end with a clipping loudspeaker."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voxbox.dsp.frontend import CaptureFrontEnd, FrontEndSettings, run_frontend
from voxbox.dsp.loudspeaker import LoudspeakerModel, LoudspeakerSettings, soft_clip
from voxbox.dsp.speexdsp import EchoCanceller

from synth import room_ir, speechlike  # noqa: E402  (tests/ is on sys.path)

SR = 16000
F = 256


def test_soft_clip_shape() -> None:
    x = np.linspace(-1, 1, 2001)
    assert np.array_equal(soft_clip(x, math.inf, math.inf), x)
    for knee in (2.0, 8.0):
        y = soft_clip(x, 0.2, knee)
        assert np.all(np.abs(y) < 0.2)  # tends to the clip level
        assert np.allclose(y, -y[::-1])  # odd
        small = np.abs(x) < 0.005
        assert np.allclose(y[small], x[small], rtol=0.01)  # unity small-signal gain
    assert np.max(np.abs(soft_clip(x, 0.2, 8.0) - np.clip(x, -0.2, 0.2))) < 0.2 * 0.1  # near a hard clip


@pytest.mark.parametrize("field,value", [
    ("enabled", 1), ("clip_min", 0.0), ("clip_min", 1.0), ("clip_steps", 0), ("clip_steps", True),
    ("knees", ()), ("knees", (2.0, -1.0)), ("knees", [2.0]), ("window_ms", 0), ("interval_ms", float("nan")),
    ("margin_db", -1), ("energy_fraction", 1.5), ("min_level_dbfs", "loud"), ("confirm_rounds", 0),
    ("confirm_rounds", 1.5),
])
def test_settings_refuse_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"LoudspeakerSettings.{field}"):
        LoudspeakerSettings(**{field: value})


def _drive(model: LoudspeakerModel, x: np.ndarray, d: np.ndarray, h: np.ndarray) -> np.ndarray:
    out = np.zeros(F, dtype=np.int16)
    shaped = np.empty_like(x)
    for i in range(0, x.shape[0] - F + 1, F):
        model.process(x[i:i + F], d[i:i + F], out, lambda: h)
        shaped[i:i + F] = out
    return shaped


def _scene(clip: float | None, seconds: float = 8.0, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = int(seconds * SR)
    x = np.clip(speechlike(n, seed) * 12000, -32768, 32767).astype(np.int16)
    h = room_ir(seed + 1)[:3000]
    u = x / 32768.0 if clip is None else np.clip(x / 32768.0, -clip, clip)
    d = np.convolve(u, h)[:n] * 32768.0 + np.random.default_rng(seed).standard_normal(n) * 5
    return x, np.clip(d, -32768, 32767).astype(np.int16), h


@pytest.mark.parametrize("clip", [0.12, 0.2])
def test_a_clipping_loudspeaker_is_identified(clip: float) -> None:
    """With the true linear path as the canceller's filter, the model settles on a clip
    level within one grid step of the loudspeaker's, at the hard knee."""
    x, d, h = _scene(clip)
    m = LoudspeakerModel(F, h.shape[0], SR)
    _drive(m, x, d, h)
    step = (1.0 / m.settings.clip_min) ** (1 / (m.settings.clip_steps - 1))
    assert m.rounds >= 4
    assert m.knee == 8.0, m.candidates[m.current]
    assert clip / step <= m.clip <= clip * step, m.clip


def test_a_restored_model_is_replaced_only_after_rounds_in_a_row_find_better() -> None:
    """Leaving the identity takes one round; replacing a model restored at start (a wrong
    one here: clip 0.5 against a loudspeaker clipping at 0.12) takes ``confirm_rounds``
    rounds in a row that found a better one, and later changes one round again."""
    x, d, h = _scene(0.12)
    fresh = LoudspeakerModel(F, h.shape[0], SR)
    _drive(fresh, x[: SR * 2], d[: SR * 2], h)
    assert fresh.changes >= 1 and fresh.rounds <= 2  # from the identity: at the first round
    for rounds in (1, 2, 3):
        m = LoudspeakerModel(F, h.shape[0], SR, LoudspeakerSettings(confirm_rounds=rounds))
        assert m.restore(0.5, 8.0)
        restored = m.current
        seen = []
        out = np.zeros(F, dtype=np.int16)
        for i in range(0, x.shape[0] - F + 1, F):
            m.process(x[i:i + F], d[i:i + F], out, lambda: h)
            if m.rounds > len(seen):
                seen.append(m.current)
        assert seen[:rounds - 1] == [restored] * (rounds - 1)
        assert seen[rounds - 1] != restored and m.knee == 8.0 and m.clip < 0.2


def test_a_linear_loudspeaker_keeps_the_identity() -> None:
    x, d, h = _scene(None)
    m = LoudspeakerModel(F, h.shape[0], SR)
    shaped = _drive(m, x, d, h)
    assert m.rounds >= 4 and m.changes == 0 and math.isinf(m.clip)
    assert np.array_equal(shaped[: shaped.shape[0] // F * F], x[: shaped.shape[0] // F * F])


def test_silence_and_a_zero_filter_start_no_round() -> None:
    m = LoudspeakerModel(F, 3000, SR)
    z = np.zeros(SR * 3, dtype=np.int16)
    _drive(m, z, z, np.ones(3000))
    x, d, _ = _scene(0.2, seconds=3.0)
    _drive(m, x, d, np.zeros(3000))
    assert m.rounds == 0 and m.current == 0


def test_disabled_model_only_passes_the_reference() -> None:
    x, d, h = _scene(0.15, seconds=4.0)
    m = LoudspeakerModel(F, h.shape[0], SR, LoudspeakerSettings(enabled=False))
    shaped = _drive(m, x, d, h)
    assert m.rounds == 0 and np.array_equal(shaped[:F * 200], x[:F * 200])


def test_restore_picks_the_nearest_candidate_and_refuses_nonsense() -> None:
    m = LoudspeakerModel(F, 3000, SR)
    assert m.restore(0.21, 8.0) and m.knee == 8.0 and abs(math.log(m.clip / 0.21)) < 0.15
    assert m.restore(math.inf, math.inf) and m.current == 0
    m.restore(0.3, 2.0)
    before = m.current
    for bad in ((float("nan"), 2.0), (-1.0, 2.0), (0.2, 0.0), ("x", 2.0), (None, 2.0)):
        assert not m.restore(*bad)
        assert m.current == before


def test_echo_canceller_reports_its_impulse_response() -> None:
    rng = np.random.default_rng(0)
    n = SR * 4
    x = (rng.standard_normal(n) * 3000).astype(np.int16)
    h = np.zeros(400)
    h[100], h[130] = 0.5, -0.2
    d = np.convolve(x.astype(float), h)[:n].astype(np.int16)
    with EchoCanceller(F, 3200, SR) as ec:
        size = ec.impulse_response_size
        assert size >= 3200 and size % F == 0
        assert not np.any(ec.impulse_response())  # nothing learnt yet
        for i in range(0, n - F + 1, F):
            ec.cancel(d[i:i + F], x[i:i + F])
        ir = ec.impulse_response(np.zeros(size, dtype=np.int32))
        assert int(np.argmax(np.abs(ir))) == 100
        assert ir[130] / ir[100] == pytest.approx(-0.4, abs=0.05)
        with pytest.raises(ValueError, match="int32"):
            ec.impulse_response(np.zeros(size, dtype=np.int64))


def _erle_db(mic: np.ndarray, out: np.ndarray) -> float:
    a = slice(4 * SR, None)
    return 10 * math.log10(float(np.sum(mic[a].astype(float) ** 2)) / (float(np.sum(out[a].astype(float) ** 2)) + 1.0))


def test_front_end_cancels_a_clipping_loudspeakers_echo() -> None:
    """A loudspeaker clipping at 0.15 of full scale: with the model the front end removes
    much more of the echo than the linear canceller alone (both with the RES)."""
    x, d, _ = _scene(0.15, seconds=10.0, seed=5)
    with_model = run_frontend(CaptureFrontEnd(FrontEndSettings()), d, x, 160)
    without = run_frontend(CaptureFrontEnd(FrontEndSettings(loudspeaker=LoudspeakerSettings(enabled=False))), d, x, 160)
    gain = _erle_db(d, with_model) - _erle_db(d, without)
    assert gain >= 6.0, f"ERLE gain {gain:.1f} dB"
