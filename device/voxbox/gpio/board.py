"""The board's gpiozero adapters: the status LED drivers (one PWM LED, an RGB LED on three
PWM pins) that show :mod:`voxbox.gpio.led`'s patterns. gpiozero is imported when a driver
is built (tests use its ``MockFactory``; on a Pi its lgpio pin factory)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterator

from voxbox.gpio.led import ACK_S, RGB, Pattern, frame

log = logging.getLogger(__name__)

#: adapter frame period for animated patterns (gpiozero ``source_delay``)
FRAME_S = 0.02


class _PatternDriver:
    """Shared adapter logic: steady patterns are written once; animated ones (and an
    acknowledge flash) are fed to the gpiozero device's ``source`` from a generator that
    samples the pure core every :data:`FRAME_S` in gpiozero's own background thread, so
    the event loop never waits on the LED."""

    _rgb = False

    def __init__(self, device, clock: Callable[[], float] = time.monotonic):
        self._dev = device
        self._dev.source_delay = FRAME_S
        self._clock = clock
        self._lock = threading.Lock()
        self._t0 = clock()
        self._ack_t: float | None = None
        self.pattern: Pattern | None = None

    def _steady(self, pattern: Pattern) -> bool:
        p = (pattern.rgb or pattern) if self._rgb else pattern
        return p.kind == "steady"

    def _frames(self, pattern: Pattern, t0: float) -> Iterator[float | RGB]:
        steady = self._steady(pattern)
        while True:
            now = self._clock()
            ack = self._ack_t
            age = None if ack is None else now - ack
            yield frame(pattern, now - t0, rgb=self._rgb, ack_age=age)
            if steady and (age is None or age >= ACK_S):
                return  # the steady value is written; no thread left running

    def _start(self) -> None:
        pattern = self.pattern
        self._dev.source = None  # stops (joins) a running animation
        if pattern is None:
            return
        if self._steady(pattern) and self._ack_t is None:
            self._dev.value = frame(pattern, 0.0, rgb=self._rgb)
        else:
            self._dev.source = self._frames(pattern, self._t0)

    def show(self, pattern: Pattern) -> None:
        """Show ``pattern`` from its start (no-op if it is already showing)."""
        with self._lock:
            if pattern == self.pattern:
                return
            self.pattern = pattern
            self._t0 = self._clock()
            self._ack_t = None
            self._start()

    def acknowledge(self) -> None:
        """Overlay the short acknowledge flash (a tap was seen) on the current pattern."""
        with self._lock:
            self._ack_t = self._clock()
            if self.pattern is not None and self._steady(self.pattern):
                self._start()  # a short-lived animation for the flash, then steady again
            # an animation already running picks the flash up on its next frame

    def close(self) -> None:
        with self._lock:
            self._dev.source = None
            self._dev.close()


class GpioLed(_PatternDriver):
    """A single PWM LED (gpiozero ``PWMLED``) showing :class:`Pattern` brightness."""

    def __init__(self, pin: int, pin_factory=None, active_high: bool = True):
        from gpiozero import PWMLED

        super().__init__(PWMLED(pin, active_high=active_high, pin_factory=pin_factory))

    @property
    def value(self) -> float:
        return float(self._dev.value)


class GpioRgbLed(_PatternDriver):
    """An RGB LED on three PWM pins (gpiozero ``RGBLED``) showing :meth:`Pattern.color`.

    ``active_high``: True for a common-cathode LED (common leg to GND, a pin high lights
    its colour), False for common-anode (common leg to 3V3, a pin low lights it).
    """

    _rgb = True

    def __init__(self, red: int, green: int, blue: int, pin_factory=None,
                 active_high: bool = True):
        from gpiozero import RGBLED

        super().__init__(RGBLED(red, green, blue, active_high=active_high, pwm=True,
                                pin_factory=pin_factory))

    @property
    def value(self) -> RGB:
        r, g, b = self._dev.value
        return (float(r), float(g), float(b))


def build_board(g, loop, on_edge: Callable[[bool], None], mock_socket: str | None = None):
    """The unit's LED and button from the ``[gpio]`` settings ``g``: returns ``(led, button)``
    (a :class:`GpioLed` or :class:`GpioRgbLed`, and a gpiozero ``Button``), or
    ``(None, None)`` when ``gpio.enabled`` is false.

    Button edges reach ``on_edge(pressed)`` on ``loop`` (gpiozero calls from its own
    thread; ``bounce_time`` is off: :class:`voxbox.gpio.gestures.ButtonGestures` debounces).
    With ``gpio.pin_factory = "mock"`` (gpiozero's ``MockFactory`` with PWM pins) and
    ``mock_socket``, a datagram socket at that path takes ``press``/``release`` and drives
    the mock button pin: tests and the demo press the button of a unit running in another
    process.
    """
    if not g.enabled:
        return None, None
    factory = None
    if g.pin_factory == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        factory = MockFactory(pin_class=MockPWMPin)
    from gpiozero import Button

    if g.rgb_led is not None:
        led = GpioRgbLed(*g.rgb_led, pin_factory=factory, active_high=g.led_active_high)
    else:
        led = GpioLed(g.led, pin_factory=factory, active_high=g.led_active_high)
    button = Button(g.button, pull_up=g.button_active_low, bounce_time=None, pin_factory=factory)
    button.when_pressed = lambda: loop.call_soon_threadsafe(on_edge, True)
    button.when_released = lambda: loop.call_soon_threadsafe(on_edge, False)
    if factory is not None and mock_socket:
        import os
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            os.unlink(mock_socket)
        except FileNotFoundError:
            pass
        sock.bind(mock_socket)
        sock.setblocking(False)
        pin = factory.pin(g.button)

        def on_msg() -> None:
            msg = sock.recv(64).decode(errors="replace").strip()
            pressed_level = not g.button_active_low
            if msg == "press":
                pin.drive_high() if pressed_level else pin.drive_low()
            elif msg == "release":
                pin.drive_low() if pressed_level else pin.drive_high()

        loop.add_reader(sock.fileno(), on_msg)
        # the loop holds on_msg, and on_msg the socket: open as long as the unit runs
    return led, button
