"""Status LED: one pattern per attention state (core) and a gpiozero adapter.

Patterns for a single (PWM) LED, each distinct at a glance (documented in
``hardware/README.md``):

| state | pattern |
|---|---|
| idle | dim steady glow (8 %) — the unit is alive |
| listening | full on |
| thinking | fast blink, 5 Hz |
| speaking | slow breathing, 0.6 s up / 0.6 s down |
| follow_up | half brightness steady |
| offline | short flash every 2 s |
| error | blink 1 Hz, full |
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from voxbox.conversation import State

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pattern:
    name: str
    kind: str  # "steady", "blink", "pulse"
    level: float = 1.0  # steady brightness 0..1
    on_s: float = 0.0
    off_s: float = 0.0
    fade_s: float = 0.0

    def brightness(self, t: float) -> float:
        """Brightness (0..1) at ``t`` seconds into the pattern."""
        if self.kind == "steady":
            return self.level
        if self.kind == "blink":
            return 1.0 if (t % (self.on_s + self.off_s)) < self.on_s else 0.0
        period = 2 * self.fade_s
        phase = t % period
        return phase / self.fade_s if phase < self.fade_s else (period - phase) / self.fade_s


PATTERNS: dict[State, Pattern] = {
    State.IDLE: Pattern("idle", "steady", level=0.08),
    State.LISTENING: Pattern("listening", "steady", level=1.0),
    State.THINKING: Pattern("thinking", "blink", on_s=0.1, off_s=0.1),
    State.SPEAKING: Pattern("speaking", "pulse", fade_s=0.6),
    State.FOLLOW_UP: Pattern("follow_up", "steady", level=0.5),
    State.OFFLINE: Pattern("offline", "blink", on_s=0.1, off_s=1.9),
    State.ERROR: Pattern("error", "blink", on_s=0.5, off_s=0.5),
}


def pattern_for(state: State) -> Pattern:
    return PATTERNS[state]


class GpioLed:
    """Drives a gpiozero ``PWMLED`` with a :class:`Pattern` (gpiozero runs blink/pulse in
    its own background thread, so the event loop never waits on the LED)."""

    def __init__(self, pin: int, pin_factory=None):
        from gpiozero import PWMLED

        self._led = PWMLED(pin, pin_factory=pin_factory)
        self.pattern: Pattern | None = None

    def show(self, pattern: Pattern) -> None:
        if pattern == self.pattern:
            return
        self.pattern = pattern
        led = self._led
        if pattern.kind == "steady":
            led.value = pattern.level
        elif pattern.kind == "blink":
            led.blink(on_time=pattern.on_s, off_time=pattern.off_s, background=True)
        else:
            led.pulse(fade_in_time=pattern.fade_s, fade_out_time=pattern.fade_s, background=True)

    @property
    def value(self) -> float:
        return float(self._led.value)

    def close(self) -> None:
        self._led.close()
