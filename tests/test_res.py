"""Tests for the residual echo suppressor (voxbox.dsp.res): echo suppression, near-end
transparency, latency, determinism, settings validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from synth import power, room_ir, speechlike  # tests/ is on sys.path
from voxbox.dsp.res import ResidualEchoSuppressor, ResSettings

SR = 16000  # Hz
H = 256  # hop, samples


def run(res: ResidualEchoSuppressor, z: np.ndarray, e: np.ndarray, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Feed whole hops; ``z`` is given aligned with ``e`` and delayed by one hop here,
    as the preprocessor does. Returns the output aligned to the input (2 hops removed)."""
    n = (len(e) // H) * H
    zd = np.concatenate([np.zeros(H), z])[:n]
    out = np.concatenate([res.process_frame(zd[i : i + H], e[i : i + H], mic[i : i + H], ref[i : i + H]).copy()
                          for i in range(0, n, H)])
    return out[2 * H :]


def echo_residual(seconds: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ref, mic, e): a far end, its echo at the mic, and a linear-canceller residual
    (echo 20 dB down through a different, short path: misadjustment)."""
    n = SR * seconds
    ref = speechlike(n, seed) * 12000
    echo = np.convolve(ref, room_ir(seed + 1))[:n]
    e = 0.1 * np.convolve(ref, room_ir(seed + 2, tail_ms=20.0))[:n]
    return ref, echo, e


def test_suppresses_pure_echo_residual() -> None:
    ref, mic, e = echo_residual(8, seed=1)
    res = ResidualEchoSuppressor(H, SR)
    out = run(res, e, e, mic, ref)
    s = slice(3 * SR, len(out))
    gain_db = 10 * np.log10(power(out[s]) / power(e[s]))
    print(f"residual echo suppression {gain_db:.1f} dB")
    assert gain_db < ResSettings().floor_db + 1.0  # down to the floor


def test_near_end_only_is_untouched() -> None:
    """No far end: the gain stays 1 and overlap-add reconstructs z exactly (delayed)."""
    near = speechlike(SR * 3, seed=2) * 8000
    zero = np.zeros_like(near)
    res = ResidualEchoSuppressor(H, SR)
    out = run(res, near, near, near, zero)
    m = len(out) - H
    assert np.allclose(out[H:m], near[H:m], atol=1e-6)
    assert abs(10 * np.log10(power(out[H:m]) / power(near[H:m]))) < 0.01


def test_double_talk_keeps_near_end() -> None:
    """A near-end talker 15 dB above the residual echo loses < 1 dB (after convergence)."""
    ref, mic, e = echo_residual(10, seed=3)
    near = np.zeros_like(ref)
    near[5 * SR :] = speechlike(5 * SR, seed=4) * 12000
    near *= np.sqrt(power(e) / power(near[5 * SR :]) * 10**1.5)
    res = ResidualEchoSuppressor(H, SR)
    out = run(res, e + near, e + near, mic + near, ref)
    s = slice(6 * SR, len(out) - H)
    g = float(np.dot(out[s], near[s]) / np.dot(near[s], near[s]))
    print(f"double-talk coherent near-end gain {20 * np.log10(g):.2f} dB")
    assert 20 * np.log10(g) > -1.0


def test_deterministic_and_reset() -> None:
    ref, mic, e = echo_residual(3, seed=5)
    a = ResidualEchoSuppressor(H, SR)
    first = run(a, e, e, mic, ref)
    a.reset()
    assert np.array_equal(first, run(a, e, e, mic, ref))
    assert np.array_equal(first, run(ResidualEchoSuppressor(H, SR), e, e, mic, ref))


def test_latency_is_one_hop() -> None:
    assert ResidualEchoSuppressor(H, SR).latency_samples == H
    assert ResidualEchoSuppressor(160, SR).latency_samples == 160


@pytest.mark.parametrize(
    "field, value",
    [("floor_db", 3.0), ("overdrive", 0.5), ("overdrive_st", 0.0), ("leak_tau_ms", 0.0),
     ("tail_decay_db", -1.0), ("release_ms", -5.0), ("bands", 0), ("bands", 2.5),
     ("coh_bias", 1.0), ("coh_lags", 0), ("coh_dt", 2.0), ("dt_hi_db", -10.0), ("floor_db", float("nan")),
     ("overdrive", True), ("leak_gate", 1.0), ("leak_gate", -0.1), ("tail_decay_dt_db", 0.0),
     ("dt_coh", -0.1), ("dt_coh", 1.5), ("coh_align", 1)],
)
def test_settings_validation_names_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ResSettings(**{field: value})


def test_settings_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ResSettings().floor_db = -10.0  # type: ignore[misc]


def _path_change(dt_coh: float) -> float:
    """Suppression (dB) of the residual in the 0.5 s after an echo-path change: the
    canceller's residual jumps from 30 dB down to the whole echo of a new path."""
    n = SR * 8
    ref = speechlike(n, 6) * 12000
    old = np.convolve(ref, room_ir(7))[:n]
    c = 5 * SR
    mic = old.copy()
    mic[c:] = np.convolve(ref, room_ir(8))[:n][c:]  # the device moved: a new echo path
    e = mic - 0.97 * old  # the canceller still models the old path
    res = ResidualEchoSuppressor(H, SR, ResSettings(dt_coh=dt_coh, coh_align=True))
    out = run(res, e, e, mic, ref)
    s = slice(c, c + SR // 2)
    return float(10 * np.log10(power(out[s]) / power(e[s])))


def test_a_residual_coherent_with_the_reference_is_echo_not_double_talk() -> None:
    """After an echo-path change the residual is linear in the far end: with ``dt_coh``
    the double-talk detector does not take it for the user, and it is suppressed."""
    off, on = _path_change(0.0), _path_change(1.0)
    print(f"first 0.5 s after the change: {off:.1f} dB without, {on:.1f} dB with dt_coh")
    assert on < off - 5.0 and on < -6.0


def test_double_talk_keeps_near_end_with_dt_coh() -> None:
    """The near end is not coherent with the reference: ``dt_coh`` leaves it alone."""
    ref, mic, e = echo_residual(10, seed=3)
    near = np.zeros_like(ref)
    near[5 * SR :] = speechlike(5 * SR, seed=4) * 12000
    near *= np.sqrt(power(e) / power(near[5 * SR :]) * 10**1.5)
    out = run(ResidualEchoSuppressor(H, SR, ResSettings(dt_coh=1.0)), e + near, e + near, mic + near, ref)
    s = slice(6 * SR, len(out) - H)
    g = float(np.dot(out[s], near[s]) / np.dot(near[s], near[s]))
    assert 20 * np.log10(g) > -1.0
