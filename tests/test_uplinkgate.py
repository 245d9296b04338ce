"""The uplink gate core (voxbox.duplex.uplinkgate): comfort noise for echo, pre-roll for the user."""

import numpy as np
import pytest

from voxbox.duplex.uplinkgate import GateState, UplinkGate

N, RATE = 160, 16000


def periods(k: int, start: int = 0) -> list[np.ndarray]:
    """k distinct periods: period i holds the value start + i + 1 (never 0)."""
    return [np.full(N, start + i + 1, dtype=np.int16) for i in range(k)]


def test_outside_playback_the_uplink_is_unchanged():
    g = UplinkGate(N, RATE)
    for x in periods(20):
        out, change = g.process(x, far=False, near=False, noise_floor_dbfs=-60.0)
        assert out is x and change is None
    assert g.state is GateState.OPEN and g.gated_periods == 0


def test_echo_only_periods_become_comfort_noise_at_the_floor():
    g = UplinkGate(N, RATE, seed=1)
    loud = np.full(N, 3000, dtype=np.int16)
    out, change = g.process(loud, far=True, near=False, noise_floor_dbfs=-60.0)
    assert change.state is GateState.GATED and change.previous is GateState.OPEN
    outs = [out] + [g.process(loud, far=True, near=False, noise_floor_dbfs=-60.0)[0] for _ in range(99)]
    y = np.concatenate(outs).astype(np.float64)
    rms_db = 10 * np.log10(np.mean(y ** 2) / 32768.0 ** 2)
    assert abs(rms_db - -60.0) < 1.0
    assert g.gated_periods == 100
    # an unknown floor: digital silence
    out, _ = g.process(loud, far=True, near=False, noise_floor_dbfs=float("-inf"))
    assert not out.any()


def test_the_gate_holds_for_the_echo_tail_then_opens():
    g = UplinkGate(N, RATE, tail_ms=100)  # 10 periods
    g.process(periods(1)[0], far=True, near=False)
    states = []
    for x in periods(12):
        out, _ = g.process(x, far=False, near=False)
        states.append(g.state)
    assert states[:10] == [GateState.GATED] * 10
    assert states[10:] == [GateState.OPEN] * 2


def test_the_user_opens_the_gate_with_the_pre_roll_of_what_was_replaced():
    g = UplinkGate(N, RATE, preroll_ms=300)  # 30 periods
    xs = periods(50)
    for x in xs[:40]:
        g.process(x, far=True, near=False, noise_floor_dbfs=-70.0)
    out, change = g.process(xs[40], far=True, near=True)
    assert change.state is GateState.NEAR_END and change.previous is GateState.GATED
    assert change.preroll_samples == 30 * N
    np.testing.assert_array_equal(out, np.concatenate(xs[10:41]))  # 300 ms before, then now
    # while the user talks the audio passes as is
    out, change = g.process(xs[41], far=True, near=True)
    assert out is xs[41] and change is None


def test_pre_roll_never_repeats_audio_that_went_out_before_the_gate_closed():
    g = UplinkGate(N, RATE, preroll_ms=300)
    xs = periods(40)
    for x in xs[:30]:
        g.process(x, far=False, near=False)  # sent as is
    for x in xs[30:35]:
        g.process(x, far=True, near=False)  # 5 periods replaced
    out, change = g.process(xs[35], far=True, near=True)
    assert change.preroll_samples == 5 * N
    np.testing.assert_array_equal(out, np.concatenate(xs[30:36]))


def test_reset_forgets_the_far_end_and_the_pre_roll():
    g = UplinkGate(N, RATE)
    for x in periods(5):
        g.process(x, far=True, near=False)
    g.reset()
    x = periods(1)[0]
    out, change = g.process(x, far=False, near=False)
    assert out is x and g.state is GateState.OPEN


@pytest.mark.parametrize("kw, name", [
    (dict(period=0, rate=RATE), "period"), (dict(period=N, rate=-1), "rate"),
    (dict(period=N, rate=RATE, preroll_ms=5000), "preroll_ms"),
    (dict(period=N, rate=RATE, tail_ms=-1), "tail_ms"),
])
def test_bad_arguments_are_named(kw, name):
    with pytest.raises(ValueError, match=name):
        UplinkGate(**kw)


def test_bad_period_is_named():
    g = UplinkGate(N, RATE)
    with pytest.raises(ValueError, match="clean"):
        g.process(np.zeros(N, dtype=np.float32), far=True, near=False)


def test_open_after_a_checked_barge_in_reaches_back_to_the_onset():
    g = UplinkGate(N, RATE, preroll_ms=300, max_preroll_ms=1000)
    xs = periods(120)
    for x in xs[:100]:
        g.process(x, far=True, near=False, noise_floor_dbfs=-70.0)  # the reply, then the check
    g.open(70 * N)  # 700 ms: from the user's onset, before the pause and the check
    out, change = g.process(xs[100], far=False, near=False)
    assert change.state is GateState.OPEN and change.preroll_samples == 70 * N
    np.testing.assert_array_equal(out, np.concatenate(xs[30:101]))
    out, change = g.process(xs[101], far=False, near=False)
    assert out is xs[101] and change is None and g.state is GateState.OPEN
