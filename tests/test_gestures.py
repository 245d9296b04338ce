"""Button gestures with debounce, on a fake clock."""
import pytest

from voxbox.gpio.gestures import ButtonGestures, Gesture


def run(g, edges, until, step=0.001):
    """edges: list of (t, pressed). Ticks every ms. Returns [(t, gesture)]."""
    out, t, i = [], 0.0, 0
    edges = sorted(edges)
    while t <= until:
        while i < len(edges) and edges[i][0] <= t:
            out += [(round(t, 3), x) for x in g.edge(edges[i][1], edges[i][0])]
            i += 1
        out += [(round(t, 3), x) for x in g.tick(t)]
        t += step
    return out


def test_tap():
    out = run(ButtonGestures(), [(0.1, True), (0.3, False)], 1.0)
    assert [x for _, x in out] == [Gesture.TAP]


def test_5ms_glitch_is_not_a_tap():
    assert run(ButtonGestures(debounce_s=0.02), [(0.1, True), (0.105, False)], 1.0) == []


def test_bouncy_press_is_one_tap():
    edges = [(0.100, True), (0.101, False), (0.102, True), (0.1035, False), (0.104, True),
             (0.250, False), (0.2505, True), (0.251, False)]
    out = run(ButtonGestures(), edges, 1.0)
    assert [x for _, x in out] == [Gesture.TAP]


def test_hold_and_release():
    out = run(ButtonGestures(hold_s=0.6), [(0.1, True), (2.0, False)], 3.0)
    assert [x for _, x in out] == [Gesture.HOLD_START, Gesture.HOLD_END]
    assert out[0][0] == pytest.approx(0.7, abs=0.002)


def test_long_hold_toggles_once():
    out = run(ButtonGestures(hold_s=0.6, long_hold_s=5.0), [(0.0, True), (7.0, False)], 8.0)
    assert [x for _, x in out] == [Gesture.HOLD_START, Gesture.LONG_HOLD]


def test_bad_timings():
    with pytest.raises(ValueError, match="debounce"):
        ButtonGestures(debounce_s=0.7, hold_s=0.6)
