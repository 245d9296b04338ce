"""The health core (voxbox.service.health) on a fake clock: devices missing and back, deaf
microphone, stuck loops and the watchdog, an unsaved mute."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from voxbox.service.health import AUDIO_DEVICE, DEAF_MICROPHONE, STATE_NOT_SAVED, HealthMonitor


@dataclass
class St:
    """A loop status as voxbox.audio.alsa.LoopStatus has it."""

    state: str
    since: float
    last_progress: float | None = None
    error: object = None


class Err(Exception):
    """As voxbox.audio.alsa.AudioDeviceError: the whole text, ALSA's words (detail), a reason."""

    def __init__(self, text: str, reason: str = "missing", detail: str | None = None):
        super().__init__(text)
        self.reason = reason
        self.detail = text if detail is None else detail


MIC, SPK = "plughw:CARD=usbmic,DEV=0", "voxbox_speaker"


def monitor(**kw) -> HealthMonitor:
    return HealthMonitor(MIC, SPK, **kw)


def ok(now: float, since: float = 0.0) -> St:
    return St("open", since, now)


def events(reports):
    return [(r.event, r.fields.get("VOXBOX_DEVICE_STATE", r.fields.get("VOXBOX_DEAF"))) for r in reports]


def test_capture_missing_at_start_is_reported_once_a_minute_and_never_withholds_the_watchdog():
    h = monitor()
    missing = St("waiting", 0.5, None, Err(f"cannot open ALSA capture device {MIC!r}: No such device "
                                           f"[{MIC}]; available capture PCMs: null",
                                           detail=f"No such device [{MIC}]"))
    logged = []
    t = 0.0
    while t <= 185.0:
        logged += [(t, r) for r in h.update(t, missing if t >= 0.5 else St("probing", 0.0), ok(t), None)]
        assert h.watchdog_cause is None  # the loop waits for the device: nothing is stuck
        t = round(t + 0.5, 1)
    times = [t for t, r in logged]
    assert times == [0.5, 60.5, 120.5, 180.5]  # once at first, then once a minute
    first, *rest = [r for _, r in logged]
    assert first.level == logging.ERROR and first.event == "audio_device"
    assert MIC in first.message and "not available at start" in first.message
    assert first.fields == {"VOXBOX_EVENT": "audio_device", "VOXBOX_DEVICE": MIC, "VOXBOX_DEVICE_KIND": "capture",
                            "VOXBOX_DEVICE_STATE": "missing", "VOXBOX_CAUSE": str(missing.error)}
    assert all(r.level == logging.WARNING and "still missing" in r.message for r in rest)
    assert [f.text for f in h.faults(t)] == [  # STATUS=: ALSA's words, not the list of PCMs
        f"capture device {MIC!r} missing: waiting for it (No such device [{MIC}])"]
    assert h.faults(t)[0].name == AUDIO_DEVICE
    assert h.led_fault(t) == AUDIO_DEVICE
    # the card appears: one line, the fault is gone
    reps = h.update(190.0, St("open", 189.0, 190.0), ok(190.0), 190.0)
    assert events(reps) == [("audio_device", "open")] and reps[0].fields["VOXBOX_DOWN_S"] == 189.5
    assert h.faults(190.0) == [] and h.led_fault(190.0) is None


def test_a_changed_reason_is_logged_at_once_and_a_lost_device_says_lost():
    h = monitor()
    assert h.update(0.0, ok(0.0), ok(0.0), 0.0) == []
    reps = h.update(1.0, ok(1.0), St("waiting", 1.0, 0.9, Err("No such device")), 1.0)
    assert events(reps) == [("audio_device", "missing")] and "(lost)" in reps[0].message
    assert SPK in reps[0].message
    reps = h.update(5.0, ok(5.0), St("waiting", 5.0, 0.9, Err("did not return within 5 s", "blocked")), 5.0)
    assert events(reps) == [("audio_device", "blocked")] and "still blocked" in reps[0].message
    assert "playback device 'voxbox_speaker' blocked" in h.faults(5.0)[0].text
    # probing again between tries: still down, no new line, still no watchdog cause
    assert h.update(7.0, ok(7.0), St("probing", 7.0, 0.9), 7.0) == [] and h.watchdog_cause is None
    assert h.led_fault(7.0) == AUDIO_DEVICE


def test_playback_that_completes_no_write_withholds_the_watchdog():
    h = monitor(stall_s=2.0)
    t = 10.0
    assert h.update(t, ok(t), St("open", 0.0, t), t) == []
    # the playback thread's last write completed at t = 10; capture keeps going
    reps = []
    for k in range(1, 9):
        now = t + k * 0.5
        reps += [(now, r) for r in h.update(now, ok(now), St("open", 0.0, t), now)]
    (when, r), = reps
    assert when == 12.5 and r.event == "watchdog_withheld" and r.level == logging.ERROR
    assert "playback device 'voxbox_speaker' completed no write for 2.5 s" in r.fields["VOXBOX_CAUSE"]
    assert h.watchdog_cause == r.fields["VOXBOX_CAUSE"]
    assert h.faults(14.0)[0].text.startswith("watchdog withheld: playback device")
    reps = h.update(15.0, ok(15.0), St("open", 0.0, 15.0), 15.0)
    assert events(reps) == [("watchdog_resumed", None)] and h.watchdog_cause is None


def test_capture_that_delivers_no_frame_withholds_the_watchdog_but_a_fresh_open_does_not():
    h = monitor(stall_s=2.0)
    # just opened, no frame yet: measured from the open
    assert h.update(1.5, St("open", 0.0, None), ok(1.5), None) == [] and h.watchdog_cause is None
    reps = h.update(2.5, St("open", 0.0, None), ok(2.5), None)
    assert "capture device" in reps[0].fields["VOXBOX_CAUSE"] and "no frame for 2.5 s" in reps[0].message


def test_stuck_opens_and_a_dead_loop_withhold_the_watchdog():
    h = monitor(stall_s=2.0, probe_timeout_s=5.0)
    assert h.update(6.0, St("probing", 0.0), ok(6.0), None) == []  # the probe is bounded by its timeout
    reps = h.update(7.5, St("probing", 0.0), ok(7.5), None)
    assert "probe of capture device" in h.watchdog_cause and reps[0].event == "watchdog_withheld"
    h = monitor(stall_s=2.0)
    h.update(1.0, ok(1.0), St("opening", 0.0), 1.0)
    assert h.watchdog_cause is None
    h.update(2.5, ok(2.5), St("opening", 0.0), 2.5)
    assert "opening playback device" in h.watchdog_cause
    h = monitor()
    h.update(1.0, St("stopped", 0.5, 0.4), ok(1.0), 0.4)
    assert h.watchdog_cause == "the capture loop stopped"


def test_deaf_microphone_is_reported_not_restarted():
    """Frames keep coming, all zeros: reported at deaf_after_s, reminded once a minute,
    ended when sound comes back; the watchdog is fed throughout."""
    h = monitor(deaf_after_s=20.0)
    logged = []
    t = 0.0
    while t <= 150.0:
        last_sound = min(t, 5.0)  # sound until t = 5, then digital silence
        logged += [(t, r) for r in h.update(t, ok(t), ok(t), last_sound)]
        assert h.watchdog_cause is None
        t = round(t + 0.5, 1)
    assert [(w, r.event, r.fields["VOXBOX_DEAF"]) for w, r in logged] == [
        (25.5, "deaf_microphone", 1), (85.5, "deaf_microphone", 1), (145.5, "deaf_microphone", 1)]
    first = logged[0][1]
    assert first.level == logging.WARNING and MIC in first.message and "mute switch" in first.message
    assert first.fields["VOXBOX_SILENT_S"] == 20.5
    assert h.deaf and h.led_fault(t) == DEAF_MICROPHONE
    assert [f.name for f in h.faults(t)] == [DEAF_MICROPHONE] and MIC in h.faults(t)[0].text
    reps = h.update(151.0, ok(151.0), ok(151.0), 150.8)  # sound again
    assert events(reps) == [("deaf_microphone", 0)] and "hears sound again" in reps[0].message
    assert reps[0].level == logging.INFO and reps[0].fields["VOXBOX_SILENT_S"] == 145.8
    assert not h.deaf and h.faults(151.0) == []


def test_deafness_counts_from_the_open_and_can_be_off():
    h = monitor(deaf_after_s=20.0)
    assert h.update(19.0, ok(19.0, since=0.0), ok(19.0), None) == []
    assert events(h.update(20.5, ok(20.5, since=0.0), ok(20.5), None)) == [("deaf_microphone", 1)]
    # the device goes away while deaf: the deaf stretch ends with it, the device line follows
    reps = h.update(30.0, St("waiting", 30.0, 29.0, Err("No such device")), ok(30.0), None)
    assert events(reps) == [("audio_device", "missing"), ("deaf_microphone", 0)]
    h = monitor(deaf_after_s=0.0)
    assert h.update(1000.0, ok(1000.0), ok(1000.0), None) == [] and not h.deaf


def test_unsaved_mute_shows_for_a_while_on_the_led_and_in_status_until_saved():
    h = monitor()
    h.update(0.0, ok(0.0), ok(0.0), 0.0)
    h.mute_not_saved(100.0, "cannot write /var/lib/voxbox/state.json: No space left on device")
    assert h.led_fault(100.0) == STATE_NOT_SAVED and h.led_fault(109.9) == STATE_NOT_SAVED
    assert h.led_fault(110.0) is None  # the LED goes back to the state after 10 s ...
    assert [f.text for f in h.faults(500.0)] == [  # ... STATUS= keeps saying it
        "mute not saved: cannot write /var/lib/voxbox/state.json: No space left on device"]
    h.mute_saved(501.0)
    assert h.faults(501.0) == [] and h.led_fault(501.0) is None
    # a device fault outranks it on the LED
    h.mute_not_saved(600.0, "x")
    h.update(600.0, St("waiting", 600.0, 599.0, Err("No such device")), ok(600.0), 599.0)
    assert h.led_fault(600.0) == AUDIO_DEVICE
    assert [f.name for f in h.faults(600.0)] == [AUDIO_DEVICE, STATE_NOT_SAVED]


def test_stall_threshold_fits_the_units_watchdog():
    """A stall (STALL_S) plus one check (the daemon's HEALTH_TICK_S) fits between two
    pings (half of WatchdogSec=): a stuck loop always costs the next ping, so systemd
    restarts the unit within about WatchdogSec of the stall; and the threshold is many
    10 ms periods long, so scheduling hiccups are not stalls."""
    import re
    from pathlib import Path

    from voxbox.service.daemon import HEALTH_TICK_S
    from voxbox.service.health import STALL_S

    unit = (Path(__file__).resolve().parents[1] / "systemd" / "voxbox.service").read_text()
    watchdog_sec = float(re.search(r"^WatchdogSec=(\d+)\s*$", unit, re.M).group(1))
    print(f"WatchdogSec={watchdog_sec:g}: ping every {watchdog_sec / 2:g} s; stall {STALL_S:g} s + check "
          f"{HEALTH_TICK_S:g} s")
    assert STALL_S + HEALTH_TICK_S < watchdog_sec / 2
    assert STALL_S >= 100 * 0.010
