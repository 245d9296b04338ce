"""Status LED: one pattern per attention state (a pure core; the gpiozero adapters that
show it are in :mod:`voxbox.gpio.board`).

The core is pure: :func:`pattern_for` maps a :class:`~voxbox.conversation.machine.State` to a
:class:`Pattern`, whose :meth:`Pattern.brightness` (single LED, 0..1) and
:meth:`Pattern.color` (RGB LED, ``(r, g, b)`` each 0..1) are functions of the time since
the pattern started. The adapters (:class:`voxbox.gpio.board.GpioLed` for one PWM LED,
:class:`voxbox.gpio.board.GpioRgbLed` for an RGB LED on three PWM pins) only sample those functions. Documented in
``hardware/README.md`` (LED section):

| state | single LED | RGB LED |
|---|---|---|
| idle | dim steady glow (8 %) | dim white, steady (8 %) |
| listening | full on | blue, full on |
| thinking | fast blink, 5 Hz | blue, fast blink 5 Hz |
| speaking | breathing, 0.6 s up / 0.6 s down | cyan, breathing |
| follow_up | on, with a short dip every 1.5 s | blue, on with a short dip every 1.5 s |
| offline | short flash every 2 s | purple, short flash every 2 s |
| error | blink 1 Hz, full | red, blink 1 Hz |
| muted | double flash every 2 s | red, steady |
| unprovisioned | ramp: fades up over 1.5 s, dark 0.5 s | amber, slow blink (1 s on / 1 s off) |

A tap can be acknowledged with a short flash over any pattern (:func:`frame` with
``ack_age``; :meth:`voxbox.gpio.board.GpioLed.acknowledge`): 80 ms full (white), then 70 ms dark.

Faults of the unit itself (:mod:`voxbox.service.health`) have patterns of their own
(:data:`FAULT_PATTERNS`), shown instead of the state's outside a turn
(:func:`display_pattern`):

| fault | single LED | RGB LED |
|---|---|---|
| audio_device (a sound device missing, blocked or stuck) | three flashes every 2 s | red, three flashes every 2 s |
| deaf_microphone (only digital silence) | slow blink, 1 s full / 1 s at 8 % | red, breathing (1 s up / 1 s down) |
| state_not_saved (a mute could not be saved; 10 s) | four quick flashes every second | amber, four quick flashes every second |
"""

from __future__ import annotations

from dataclasses import dataclass

from voxbox.conversation.machine import State

RGB = tuple[float, float, float]

WHITE: RGB = (1.0, 1.0, 1.0)
BLUE: RGB = (0.0, 0.0, 1.0)
CYAN: RGB = (0.0, 0.8, 1.0)
PURPLE: RGB = (0.6, 0.0, 1.0)
RED: RGB = (1.0, 0.0, 0.0)
AMBER: RGB = (1.0, 0.35, 0.0)

#: the acknowledge flash: full for ACK_ON_S, dark until ACK_S, then the pattern again
ACK_ON_S = 0.08
ACK_S = 0.15

KINDS = ("steady", "blink", "pulse", "flashes", "ramp")


@dataclass(frozen=True)
class Pattern:
    """A light pattern as a function of time.

    Kinds (``t`` is seconds since the pattern started):

    - ``steady``: ``level`` all the time.
    - ``blink``: ``level`` for ``on_s``, then ``low`` for ``off_s``, repeat.
    - ``pulse``: triangle breathing 0 → 1 over ``fade_s``, 1 → 0 over ``fade_s``.
    - ``flashes``: ``count`` flashes of ``on_s`` at ``level`` separated by ``off_s``,
      the whole group repeating every ``period_s``.
    - ``ramp``: 0 → ``level`` linearly over ``fade_s``, then dark for ``off_s``.

    ``tint`` colours the RGB version; ``rgb`` replaces the RGB version outright (its own
    kind, timing and colour) where one LED and an RGB LED should differ (muted: double
    flash on one LED, steady red on RGB). ``offset_s`` starts the cycle part-way through,
    so a slow pattern visibly changes within a second of being shown.
    """

    name: str
    kind: str  # see KINDS
    level: float = 1.0  # steady brightness; the "on" level of blink / flashes / ramp
    on_s: float = 0.0
    off_s: float = 0.0
    fade_s: float = 0.0
    low: float = 0.0  # the "off" level of blink
    count: int = 1  # flashes per group
    period_s: float = 0.0  # flashes: group period
    offset_s: float = 0.0  # start this far into the cycle (the first change comes sooner)
    tint: RGB = WHITE  # RGB colour at full brightness
    rgb: Pattern | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"pattern {self.name!r}: unknown kind {self.kind!r}")
        if self.kind in ("blink", "flashes") and self.on_s + self.off_s <= 0:
            raise ValueError(f"pattern {self.name!r}: on_s + off_s must be > 0")
        if self.kind in ("pulse", "ramp") and self.fade_s <= 0:
            raise ValueError(f"pattern {self.name!r}: fade_s must be > 0")
        if self.kind == "flashes" and self.period_s < self.count * (self.on_s + self.off_s):
            raise ValueError(f"pattern {self.name!r}: period_s shorter than the flashes")

    def brightness(self, t: float) -> float:
        """Single-LED brightness (0..1) at ``t`` seconds into the pattern."""
        k = self.kind
        t += self.offset_s
        if k == "steady":
            return self.level
        if k == "blink":
            return self.level if (t % (self.on_s + self.off_s)) < self.on_s else self.low
        if k == "pulse":
            period = 2 * self.fade_s
            phase = t % period
            return phase / self.fade_s if phase < self.fade_s else (period - phase) / self.fade_s
        if k == "flashes":
            phase = t % self.period_s
            slot = self.on_s + self.off_s
            if phase < self.count * slot and (phase % slot) < self.on_s:
                return self.level
            return 0.0
        # ramp
        phase = t % (self.fade_s + self.off_s)
        return self.level * phase / self.fade_s if phase < self.fade_s else 0.0

    def color(self, t: float) -> RGB:
        """RGB LED colour ``(r, g, b)``, each 0..1, at ``t`` seconds into the pattern."""
        if self.rgb is not None:
            return self.rgb.color(t)
        b = self.brightness(t)
        r, g, bl = self.tint
        return (r * b, g * b, bl * b)



PATTERNS: dict[State, Pattern] = {
    State.IDLE: Pattern("idle", "steady", level=0.08),
    State.LISTENING: Pattern("listening", "steady", level=1.0, tint=BLUE),
    State.THINKING: Pattern("thinking", "blink", on_s=0.1, off_s=0.1, tint=BLUE),
    State.SPEAKING: Pattern("speaking", "pulse", fade_s=0.6, tint=CYAN),
    State.FOLLOW_UP: Pattern("follow_up", "blink", on_s=1.35, off_s=0.15, low=0.1, offset_s=0.85,
                             tint=BLUE),
    State.OFFLINE: Pattern("offline", "blink", on_s=0.1, off_s=1.9, tint=PURPLE),
    State.ERROR: Pattern("error", "blink", on_s=0.5, off_s=0.5, tint=RED),
    State.MUTED: Pattern("muted", "flashes", on_s=0.1, off_s=0.15, count=2, period_s=2.0,
                         rgb=Pattern("muted", "steady", level=1.0, tint=RED)),
    State.UNPROVISIONED: Pattern("unprovisioned", "ramp", fade_s=1.5, off_s=0.5,
                                 rgb=Pattern("unprovisioned", "blink", on_s=1.0, off_s=1.0,
                                             offset_s=0.5, tint=AMBER)),
}


FAULT_PATTERNS: dict[str, Pattern] = {
    "audio_device": Pattern("audio_device", "flashes", on_s=0.1, off_s=0.15, count=3, period_s=2.0,
                            tint=RED),
    "deaf_microphone": Pattern("deaf_microphone", "blink", on_s=1.0, off_s=1.0, low=0.08,
                               rgb=Pattern("deaf_microphone", "pulse", fade_s=1.0, tint=RED)),
    "state_not_saved": Pattern("state_not_saved", "flashes", on_s=0.05, off_s=0.1, count=4, period_s=1.0,
                               tint=AMBER),
}
"""Patterns of the unit's own faults (names from :mod:`voxbox.service.health`)."""

#: states in which a turn is on: the LED follows the turn even with a fault
TURN_STATES = frozenset({State.LISTENING, State.THINKING, State.SPEAKING})


def pattern_for(state: State) -> Pattern:
    return PATTERNS[State(state)]


def display_pattern(state: State, fault: str | None) -> Pattern:
    """What the LED shows: the fault's pattern (:data:`FAULT_PATTERNS`) when there is one,
    except during a turn (listening, thinking, speaking: the user pressed or spoke, and
    sees the turn go on); otherwise the state's. Raises KeyError for an unknown fault."""
    if fault is None or State(state) in TURN_STATES:
        return pattern_for(state)
    return FAULT_PATTERNS[fault]


def frame(pattern: Pattern, t: float, *, rgb: bool = False,
          ack_age: float | None = None) -> float | RGB:
    """What the LED shows ``t`` s into ``pattern``, with an acknowledge flash overlaid
    when a tap was ``ack_age`` s ago (0 <= ack_age < ACK_S)."""
    if ack_age is not None and 0.0 <= ack_age < ACK_S:
        on = ack_age < ACK_ON_S
        if rgb:
            return WHITE if on else (0.0, 0.0, 0.0)
        return 1.0 if on else 0.0
    return pattern.color(t) if rgb else pattern.brightness(t)
