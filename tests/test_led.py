"""Status LED: the pure pattern core, and the gpiozero adapters on mock PWM pins."""
import itertools
import time

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from voxbox.conversation.machine import State
from voxbox.gpio.board import GpioLed, GpioRgbLed
from voxbox.gpio.led import (
    ACK_ON_S,
    ACK_S,
    AMBER,
    FAULT_PATTERNS,
    PATTERNS,
    RED,
    Pattern,
    display_pattern,
    frame,
    pattern_for,
)
from voxbox.service.health import AUDIO_DEVICE, DEAF_MICROPHONE, STATE_NOT_SAVED

STEP = 0.02
WINDOW = 4.0
TIMES = [i * STEP for i in range(int(WINDOW / STEP))]


def _pattern(state_or_fault):
    return FAULT_PATTERNS[state_or_fault] if state_or_fault in FAULT_PATTERNS else pattern_for(state_or_fault)


def mono_trace(state):
    p = _pattern(state)
    return tuple(round(p.brightness(t), 3) for t in TIMES)


def rgb_trace(state):
    p = _pattern(state)
    return tuple(tuple(round(c, 3) for c in p.color(t)) for t in TIMES)


#: every light the unit shows: the states and the unit's own faults
LIGHTS = list(State) + list(FAULT_PATTERNS)


# ---- core -------------------------------------------------------------------------------
def test_every_state_has_a_pattern_named_after_it():
    assert set(PATTERNS) == set(State)
    for s in State:
        assert pattern_for(s).name == s.value
        assert pattern_for(s.value) is pattern_for(s)  # the string value works too


@pytest.mark.parametrize("state", list(State))
def test_values_are_in_range(state):
    p = pattern_for(state)
    for t in TIMES:
        assert 0.0 <= p.brightness(t) <= 1.0
        assert len(p.color(t)) == 3 and all(0.0 <= c <= 1.0 for c in p.color(t))


@pytest.mark.parametrize("trace", [mono_trace, rgb_trace], ids=["single", "rgb"])
def test_no_two_states_share_a_trace(trace):
    traces = {s: trace(s) for s in LIGHTS}
    for a, b in itertools.combinations(LIGHTS, 2):
        assert traces[a] != traces[b], f"{a} and {b} look the same"


def signature(trace):
    """Phase-free summary a person sees at a glance: the levels shown (and how long), and
    how often the light goes from dark(er) to bright(er)."""
    levels = tuple(sorted(trace))
    flat = [sum(v) if isinstance(v, tuple) else v for v in trace]
    rises = sum(1 for x, y in zip(flat, flat[1:]) if y - x > 0.3)
    return levels, rises


@pytest.mark.parametrize("trace", [mono_trace, rgb_trace], ids=["single", "rgb"])
def test_states_are_distinct_at_a_glance(trace):
    """Stronger than "traces differ": no two states are the same light shifted in time,
    and every pair differs by a visible amount somewhere (≥ 0.3 of full scale)."""
    sigs = {s: signature(trace(s)) for s in LIGHTS}
    for a, b in itertools.combinations(LIGHTS, 2):
        assert sigs[a] != sigs[b], f"{a} and {b} differ only in phase"
        ta, tb = trace(a), trace(b)
        gap = max(max(abs(x - y) for x, y in zip(u if isinstance(u, tuple) else (u,),
                                                  v if isinstance(v, tuple) else (v,)))
                  for u, v in zip(ta, tb))
        assert gap >= 0.3, f"{a} and {b} differ by at most {gap}"


def test_muted_single_led_is_a_double_flash_every_2s():
    tr = mono_trace(State.MUTED)[:100]  # one 2 s period
    rises = [i for i in range(1, 100) if tr[i] > tr[i - 1]] + ([0] if tr[0] else [])
    assert len(rises) == 2 and set(tr) == {0.0, 1.0}
    assert mono_trace(State.MUTED)[100:200] == tr


def test_rgb_muted_is_steady_red_and_unprovisioned_blinks_amber():
    assert set(rgb_trace(State.MUTED)) == {RED}
    assert set(rgb_trace(State.UNPROVISIONED)) == {AMBER, (0.0, 0.0, 0.0)}


def test_fault_patterns_cover_the_health_faults_and_stay_in_range():
    assert set(FAULT_PATTERNS) == {AUDIO_DEVICE, DEAF_MICROPHONE, STATE_NOT_SAVED}
    for name, p in FAULT_PATTERNS.items():
        assert p.name == name
        for t in TIMES:
            assert 0.0 <= p.brightness(t) <= 1.0
            assert all(0.0 <= c <= 1.0 for c in p.color(t))
    # on the RGB LED a sound-device fault is red, like the other microphone faults
    assert {c for c in rgb_trace(AUDIO_DEVICE)} == {RED, (0.0, 0.0, 0.0)}
    assert set(rgb_trace(STATE_NOT_SAVED)) == {AMBER, (0.0, 0.0, 0.0)}


def test_a_fault_shows_outside_a_turn_and_the_turn_shows_during_one():
    for s in State:
        shown = display_pattern(s, AUDIO_DEVICE)
        if s in (State.LISTENING, State.THINKING, State.SPEAKING):
            assert shown is pattern_for(s)
        else:
            assert shown is FAULT_PATTERNS[AUDIO_DEVICE]
        assert display_pattern(s, None) is pattern_for(s)
    with pytest.raises(KeyError):
        display_pattern(State.IDLE, "no_such_fault")


def test_acknowledge_overlay():
    idle = pattern_for(State.IDLE)
    assert frame(idle, 1.0, ack_age=0.0) == 1.0
    assert frame(idle, 1.0, ack_age=ACK_ON_S + 0.01) == 0.0
    assert frame(idle, 1.0, ack_age=ACK_S) == idle.brightness(1.0)
    assert frame(idle, 1.0, ack_age=None) == 0.08
    assert frame(idle, 1.0, rgb=True, ack_age=0.01) == (1.0, 1.0, 1.0)
    assert frame(idle, 1.0, rgb=True) == (0.08, 0.08, 0.08)


def test_bad_patterns_are_rejected():
    with pytest.raises(ValueError, match="kind"):
        Pattern("x", "strobe")
    with pytest.raises(ValueError, match="fade_s"):
        Pattern("x", "pulse")
    with pytest.raises(ValueError, match="period_s"):
        Pattern("x", "flashes", on_s=0.5, off_s=0.5, count=3, period_s=2.0)


# ---- adapters on gpiozero's mock pins ---------------------------------------------------
@pytest.fixture
def factory():
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()


def changes_within(read, limit_s=1.0):
    """True when ``read()`` returns a different value within ``limit_s``."""
    first = read()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if read() != first:
            return True
        time.sleep(0.005)
    return False


def test_gpio_led_steady_states_set_the_pin(factory):
    led = GpioLed(12, pin_factory=factory)
    try:
        pin = factory.pin(12)
        for state, want in [(State.IDLE, 0.08), (State.LISTENING, 1.0)]:
            led.show(pattern_for(state))
            assert pin.state == pytest.approx(want)
            assert led.value == pytest.approx(want)
    finally:
        led.close()


@pytest.mark.parametrize("state", [State.THINKING, State.SPEAKING, State.OFFLINE, State.ERROR,
                                   State.MUTED, State.UNPROVISIONED, State.FOLLOW_UP])
def test_gpio_led_animated_states_change_the_pin(factory, state):
    led = GpioLed(12, pin_factory=factory)
    try:
        led.show(pattern_for(state))
        assert changes_within(lambda: factory.pin(12).state)
    finally:
        led.close()


def test_gpio_led_switches_from_animation_to_steady(factory):
    led = GpioLed(12, pin_factory=factory)
    try:
        led.show(pattern_for(State.THINKING))
        led.show(pattern_for(State.LISTENING))  # stops the animation thread first
        assert factory.pin(12).state == 1.0
        time.sleep(0.05)
        assert factory.pin(12).state == 1.0  # nothing left running to overwrite it
        led.show(pattern_for(State.LISTENING))  # same pattern again: no-op
        assert led.pattern is pattern_for(State.LISTENING)
    finally:
        led.close()


def test_gpio_led_acknowledge_flashes_then_returns_to_steady(factory):
    led = GpioLed(12, pin_factory=factory)
    try:
        led.show(pattern_for(State.IDLE))
        seen = set()
        led.acknowledge()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            seen.add(round(factory.pin(12).state, 3))
            if 1.0 in seen and factory.pin(12).state == pytest.approx(0.08):
                break
            time.sleep(0.002)
        assert 1.0 in seen
        assert factory.pin(12).state == pytest.approx(0.08)
    finally:
        led.close()


def test_gpio_led_active_low(factory):
    led = GpioLed(12, pin_factory=factory, active_high=False)
    try:
        led.show(pattern_for(State.IDLE))
        assert factory.pin(12).state == pytest.approx(0.92)
    finally:
        led.close()


def rgb_pins(factory):
    return tuple(factory.pin(n) for n in (5, 6, 13))


@pytest.mark.parametrize("active_high", [True, False], ids=["common-cathode", "common-anode"])
def test_gpio_rgb_led_steady_states_set_the_pins(factory, active_high):
    led = GpioRgbLed(5, 6, 13, pin_factory=factory, active_high=active_high)

    def pins():
        s = tuple(p.state for p in rgb_pins(factory))
        return s if active_high else tuple(1 - x for x in s)

    try:
        for state, want in [(State.MUTED, (1, 0, 0)), (State.LISTENING, (0, 0, 1)),
                            (State.IDLE, (0.08, 0.08, 0.08))]:
            led.show(pattern_for(state))
            assert pins() == pytest.approx(want)
            assert led.value == pytest.approx(want)
    finally:
        led.close()


@pytest.mark.parametrize("state", [State.THINKING, State.SPEAKING, State.OFFLINE, State.ERROR,
                                   State.UNPROVISIONED, State.FOLLOW_UP])
def test_gpio_rgb_led_animated_states_change_the_pins(factory, state):
    led = GpioRgbLed(5, 6, 13, pin_factory=factory)
    try:
        led.show(pattern_for(state))
        assert changes_within(lambda: tuple(p.state for p in rgb_pins(factory)))
    finally:
        led.close()


def test_gpio_rgb_unprovisioned_lights_amber(factory):
    led = GpioRgbLed(5, 6, 13, pin_factory=factory)
    try:
        led.show(pattern_for(State.UNPROVISIONED))
        seen = set()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and AMBER not in seen:
            seen.add(tuple(round(p.state, 3) for p in rgb_pins(factory)))
            time.sleep(0.005)
        assert AMBER in seen
    finally:
        led.close()
