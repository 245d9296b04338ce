"""Button gestures with their own debounce (a pure core).

Feed raw edges (:meth:`ButtonGestures.edge`) and call :meth:`ButtonGestures.tick` at least
every 10 ms; both return the gestures recognised. A level must stay stable for
``debounce_s`` before it counts, so contact bounce and a 5 ms glitch are not presses
(gpiozero's ``bounce_time`` is not applied by its mock pins, so debounce lives here where
it is tested).

Gestures, measured from the debounced press:

- ``TAP``: released before ``hold_s``;
- ``HOLD_START`` at ``hold_s`` while still held, ``HOLD_END`` at release (push-to-talk);
- ``LONG_HOLD`` at ``long_hold_s`` while still held (microphone mute toggle); the release
  that follows produces nothing more.
"""

from __future__ import annotations

import enum


class Gesture(str, enum.Enum):
    TAP = "tap"
    HOLD_START = "hold_start"
    HOLD_END = "hold_end"
    LONG_HOLD = "long_hold"


class ButtonGestures:
    """Args:
    debounce_s: time a level must be stable to count (s).
    hold_s: press length from which a press is a hold, not a tap (s).
    long_hold_s: press length that toggles mute (s).
    """

    def __init__(self, debounce_s: float = 0.02, hold_s: float = 0.6, long_hold_s: float = 5.0):
        if not 0 <= debounce_s < hold_s < long_hold_s:
            raise ValueError(
                f"button timings must satisfy 0 <= debounce ({debounce_s}) < hold ({hold_s}) "
                f"< long hold ({long_hold_s})")
        self.debounce_s = debounce_s
        self.hold_s = hold_s
        self.long_hold_s = long_hold_s
        self._raw = False
        self._raw_since = 0.0
        self.pressed = False  # debounced level
        self._pressed_at = 0.0
        self._holding = False
        self._long = False

    def edge(self, pressed: bool, t: float) -> list[Gesture]:
        """A raw level change from the GPIO layer (may bounce)."""
        out = self.tick(t)
        if pressed != self._raw:
            self._raw = pressed
            self._raw_since = t
        return out + self.tick(t)

    def tick(self, t: float) -> list[Gesture]:
        out: list[Gesture] = []
        if self._raw != self.pressed and t - self._raw_since >= self.debounce_s:
            self.pressed = self._raw
            at = self._raw_since
            if self.pressed:
                self._pressed_at = at
                self._holding = self._long = False
            else:
                if self._long:
                    pass
                elif self._holding:
                    out.append(Gesture.HOLD_END)
                else:
                    out.append(Gesture.TAP)
                self._holding = self._long = False
        if self.pressed:
            held = t - self._pressed_at
            if not self._holding and not self._long and held >= self.hold_s:
                self._holding = True
                out.append(Gesture.HOLD_START)
            if not self._long and held >= self.long_hold_s:
                self._long = True
                if self._holding:
                    self._holding = False
                out.append(Gesture.LONG_HOLD)
        return out
