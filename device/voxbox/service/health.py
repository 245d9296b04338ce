"""Unit health: a pure core that judges the audio devices (and a mute that could not be
saved), fed with what the audio loops report and a clock (``time.monotonic()`` seconds).

The daemon calls :meth:`HealthMonitor.update` a few times a second with each loop's
:class:`voxbox.audio.alsa.LoopStatus` (any object with ``state``, ``since``,
``last_progress`` and ``error``) and the time of the last capture frame that was not
digital silence. The core decides three things:

- **The watchdog** (:attr:`HealthMonitor.watchdog_cause`, None = feed it): fed only while
  capture *and* playback make progress: a frame delivered (capture) and a write
  completed (playback; the playback loop always writes, silence when idle) within
  ``stall_s``. A loop stuck in ALSA or in its own callbacks, an in-process open that
  does not return, or a loop thread that died withholds it, and systemd restarts the
  unit. A device that is missing, busy or blocked does *not*: the loop keeps trying it
  (``retry_s``) in a child process, the unit keeps running (link, button), and a restart
  would not bring a card back.
- **What is wrong**, for the LED and ``STATUS=`` (:meth:`HealthMonitor.faults`,
  :meth:`HealthMonitor.led_fault`): a device that cannot be opened, the watchdog
  withheld, a deaf microphone (the capture device delivers frames, all digital zeros, for
  ``deaf_after_s``: a hardware mute switch, a dead ADC), a mute that could not be saved.
- **What to log** (:class:`Report`, returned by :meth:`HealthMonitor.update`):
  ``audio_device`` when a device becomes unusable, a reminder at most every
  ``remind_s`` while it stays so (and at once when the reason changes), and when it opens
  again; ``deaf_microphone`` when the silence starts, a reminder at most every
  ``remind_s``, and when sound comes back; ``watchdog_withheld``/``watchdog_resumed``.

``STALL_S`` = 3 s, against the unit's ``WatchdogSec=10`` (``WATCHDOG=1`` every 5 s):

- long enough: 300 periods of 10 ms; a loaded Pi delays a period by tens, at worst
  hundreds of ms, and a reopen after a device error is not a stall (the loop is then
  ``waiting``);
- short enough: the stall plus one check (0.5 s) is under the 5 s between pings, so a
  stall always costs the next ping and systemd restarts the unit within about
  ``WatchdogSec`` (10-10.5 s) of the moment the loop stopped, where the capture-only
  watchdog fed a unit whose playback was stuck for as long as it liked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

STALL_S = 3.0
"""A loop that delivered no frame / completed no write for this long is stuck (s)."""

REMIND_S = 60.0
"""A problem that lasts is logged again at most this often (s)."""

MUTE_WARNING_S = 10.0
"""The LED shows a mute that could not be saved for this long (s); ``STATUS=`` says it
until the next successful save."""

KINDS = ("capture", "playback")

#: LED fault pattern names (voxbox.gpio.led.FAULT_PATTERNS), most urgent first
AUDIO_DEVICE = "audio_device"
DEAF_MICROPHONE = "deaf_microphone"
STATE_NOT_SAVED = "state_not_saved"


@dataclass(frozen=True)
class Report:
    """One journal line: ``level`` (``logging`` level), ``message``, and its fields
    (``VOXBOX_EVENT`` and the other ``VOXBOX_*`` fields, for ``extra=``)."""

    level: int
    message: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def event(self) -> str:
        return self.fields["VOXBOX_EVENT"]


@dataclass(frozen=True)
class Fault:
    """Something wrong now: ``name`` is its LED pattern (``AUDIO_DEVICE``…), ``text`` its
    words for ``STATUS=`` (names the device; no running numbers, so STATUS= changes only
    when the fault does)."""

    name: str
    text: str


@dataclass
class _Device:
    kind: str
    name: str
    down_since: float | None = None  # the device could not be opened since (s)
    reason: str = ""  # AudioDeviceError.reason of the last failure
    error: str = ""  # its text
    detail: str = ""  # ALSA's words alone (no list of PCMs)
    reminded_at: float = 0.0
    ever_open: bool = False


class HealthMonitor:
    """The core. Args:

    capture_device, playback_device: the configured ALSA names (for the words).
    stall_s: progress a running loop must show (s), see the module notes.
    deaf_after_s: digital silence this long is a deaf microphone (s; 0 = never).
    remind_s: reminder interval of lasting problems (s).
    probe_timeout_s: the loops' open timeout in the probe child (s): a loop ``probing``
        longer than this plus ``stall_s`` is stuck around its probe.
    mute_warning_s: how long the LED shows an unsaved mute (s).

    Never raises on odd input: a missing status (None) is a loop not started yet.
    """

    def __init__(self, capture_device: str, playback_device: str, *, stall_s: float = STALL_S,
                 deaf_after_s: float = 20.0, remind_s: float = REMIND_S, probe_timeout_s: float = 5.0,
                 mute_warning_s: float = MUTE_WARNING_S):
        self.stall_s = stall_s
        self.deaf_after_s = deaf_after_s
        self.remind_s = remind_s
        self.probe_timeout_s = probe_timeout_s
        self.mute_warning_s = mute_warning_s
        self._dev = {"capture": _Device("capture", capture_device), "playback": _Device("playback", playback_device)}
        self.watchdog_cause: str | None = None
        """Why the watchdog is withheld now (the words of the moment it started), or None."""
        self._deaf_since: float | None = None  # the last sound (or the open) before the deaf stretch
        self._deaf_reminded = 0.0
        self._mute_error: str | None = None
        self._mute_warn_until = 0.0

    # ------------------------------------------------------------------ inputs
    def update(self, now: float, capture, playback, last_sound: float | None) -> list[Report]:
        """Judge the devices at ``now`` (s). ``capture``/``playback``: each loop's status
        (None before it exists); ``last_sound``: capture time (s) of the last frame that
        was not all zeros (None: none yet). Returns the journal lines to write."""
        out: list[Report] = []
        for kind, st in (("capture", capture), ("playback", playback)):
            if st is not None:
                self._device(now, self._dev[kind], st, out)
        self._deafness(now, capture, last_sound, out)
        self._watchdog(now, capture, playback, out)
        return out

    def mute_not_saved(self, now: float, text: str) -> None:
        """A mute change could not be saved (``text`` names the file and the error)."""
        self._mute_error = text
        self._mute_warn_until = now + self.mute_warning_s

    def mute_saved(self, now: float) -> None:
        """A mute change was saved: the earlier failure no longer matters."""
        self._mute_error = None
        self._mute_warn_until = 0.0

    # ------------------------------------------------------------------ outputs
    def faults(self, now: float) -> list[Fault]:
        """Everything wrong at ``now``, most urgent first (for ``STATUS=``)."""
        out: list[Fault] = []
        if self.watchdog_cause is not None:
            out.append(Fault(AUDIO_DEVICE, f"watchdog withheld: {self.watchdog_cause}"))
        for d in self._dev.values():
            if d.down_since is not None:
                out.append(Fault(AUDIO_DEVICE, f"{d.kind} device {d.name!r} {d.reason}: waiting for it "
                                               f"({d.detail})"))
        if self._deaf_since is not None:
            out.append(Fault(DEAF_MICROPHONE, f"deaf microphone: capture device {self._dev['capture'].name!r} "
                                              "delivers only digital silence (mute switch? dead ADC?)"))
        if self._mute_error is not None:
            out.append(Fault(STATE_NOT_SAVED, f"mute not saved: {self._mute_error}"))
        return out

    def led_fault(self, now: float) -> str | None:
        """The LED fault pattern to show at ``now``, or None (the state's own pattern).
        An unsaved mute shows for ``mute_warning_s`` only."""
        for f in self.faults(now):
            if f.name != STATE_NOT_SAVED or now < self._mute_warn_until:
                return f.name
        return None

    @property
    def deaf(self) -> bool:
        return self._deaf_since is not None

    # ------------------------------------------------------------------ judging
    def _device(self, now: float, d: _Device, st, out: list[Report]) -> None:
        if st.state == "open":
            if d.down_since is not None:
                down = now - d.down_since
                out.append(Report(logging.INFO, f"{d.kind} device {d.name!r} open after {down:.0f} s {d.reason}",
                                  {"VOXBOX_EVENT": "audio_device", "VOXBOX_DEVICE": d.name,
                                   "VOXBOX_DEVICE_KIND": d.kind, "VOXBOX_DEVICE_STATE": "open",
                                   "VOXBOX_DOWN_S": round(down, 1)}))
                d.down_since = None
            d.ever_open = True
            return
        err = st.error
        if st.state != "waiting" or err is None:
            return  # probing / opening: judged by the watchdog (bounded), not a fault yet
        reason = getattr(err, "reason", "unusable")
        text = str(err)
        d.detail = getattr(err, "detail", text)  # ALSA's words alone, for STATUS=
        fields = {"VOXBOX_EVENT": "audio_device", "VOXBOX_DEVICE": d.name, "VOXBOX_DEVICE_KIND": d.kind,
                  "VOXBOX_DEVICE_STATE": reason, "VOXBOX_CAUSE": text}
        if d.down_since is None:
            d.down_since, d.reason, d.error, d.reminded_at = now, reason, text, now
            what = "lost" if d.ever_open else "not available at start"
            out.append(Report(logging.ERROR, f"{d.kind} device {d.name!r} {reason} ({what}): {text}; the unit "
                                             "keeps running and opens it as soon as it can", fields))
        elif reason != d.reason or now - d.reminded_at >= self.remind_s:
            d.reason, d.error, d.reminded_at = reason, text, now
            down = now - d.down_since
            out.append(Report(logging.WARNING, f"{d.kind} device {d.name!r} still {reason} after {down:.0f} s: {text}",
                              {**fields, "VOXBOX_DOWN_S": round(down, 1)}))

    def _deafness(self, now: float, capture, last_sound: float | None, out: list[Report]) -> None:
        name = self._dev["capture"].name
        flowing = (capture is not None and capture.state == "open"
                   and now - max(capture.last_progress or capture.since, capture.since) <= self.stall_s)
        if self._deaf_since is not None:
            heard = last_sound is not None and last_sound > self._deaf_since and flowing
            if heard or capture is None or capture.state != "open":
                silent = (last_sound if heard else now) - self._deaf_since
                why = "hears sound again" if heard else "closed"
                out.append(Report(logging.INFO, f"capture device {name!r} {why} after {silent:.0f} s of digital silence",
                                  {"VOXBOX_EVENT": "deaf_microphone", "VOXBOX_DEVICE": name, "VOXBOX_DEAF": 0,
                                   "VOXBOX_SILENT_S": round(silent, 1)}))
                self._deaf_since = None
            elif now - self._deaf_reminded >= self.remind_s:
                self._deaf_reminded = now
                silent = now - self._deaf_since
                out.append(Report(logging.WARNING, f"capture device {name!r} still delivers only digital silence, "
                                                   f"for {silent:.0f} s",
                                  {"VOXBOX_EVENT": "deaf_microphone", "VOXBOX_DEVICE": name, "VOXBOX_DEAF": 1,
                                   "VOXBOX_SILENT_S": round(silent, 1)}))
            return
        if self.deaf_after_s <= 0 or not flowing:
            return
        quiet_since = max(last_sound or capture.since, capture.since)
        if now - quiet_since > self.deaf_after_s:
            self._deaf_since = quiet_since
            self._deaf_reminded = now
            out.append(Report(logging.WARNING, f"deaf microphone: capture device {name!r} has delivered only digital "
                                               f"silence for {now - quiet_since:.0f} s (a hardware mute switch, or a "
                                               "dead microphone or ADC); the unit keeps running",
                              {"VOXBOX_EVENT": "deaf_microphone", "VOXBOX_DEVICE": name, "VOXBOX_DEAF": 1,
                               "VOXBOX_SILENT_S": round(now - quiet_since, 1)}))

    def _stuck(self, now: float, kind: str, st) -> str | None:
        if st is None:
            return None
        name = self._dev[kind].name
        age = now - st.since
        if st.state == "open":
            idle = now - max(st.last_progress or st.since, st.since)
            if idle > self.stall_s:
                if kind == "capture":
                    return f"capture device {name!r} delivered no frame for {idle:.1f} s"
                return f"playback device {name!r} completed no write for {idle:.1f} s (playback is stuck)"
        elif st.state == "opening" and age > self.stall_s:
            return f"opening {kind} device {name!r} has not returned for {age:.1f} s"
        elif st.state == "probing" and age > self.probe_timeout_s + self.stall_s:
            return f"the open probe of {kind} device {name!r} has not returned for {age:.1f} s"
        elif st.state == "stopped":
            return f"the {kind} loop stopped"
        return None

    def _watchdog(self, now: float, capture, playback, out: list[Report]) -> None:
        cause = self._stuck(now, "capture", capture) or self._stuck(now, "playback", playback)
        if cause is not None and self.watchdog_cause is None:
            self.watchdog_cause = cause
            out.append(Report(logging.ERROR, f"{cause}: withholding the watchdog",
                              {"VOXBOX_EVENT": "watchdog_withheld", "VOXBOX_CAUSE": cause}))
        elif cause is None and self.watchdog_cause is not None:
            self.watchdog_cause = None
            out.append(Report(logging.INFO, "audio healthy again: watchdog resumed",
                              {"VOXBOX_EVENT": "watchdog_resumed"}))
