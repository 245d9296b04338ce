"""Output volume: a percentage persisted across restarts, applied by ALSA or in software.

:class:`Volume` keeps one number, the volume in percent (0..100), in
``<state_dir>/volume.json`` (``{"percent": 40}``; the daemon passes
``$STATE_DIRECTORY``, ``/var/lib/voxbox`` outside systemd; written atomically by
:func:`voxbox.host.statefile.atomic_write`). A state file that cannot be used (unreadable,
truncated, not a JSON object, ``percent`` missing, not a number, NaN, ``1e999``, outside
0..100) is never fatal: one warning names the file and the key, and the defaults are used
as if there were no file. It applies the volume in one of two ways:

* ``backend == "alsa"``: through a playback mixer control of pyalsaaudio
  (``alsaaudio.Mixer(control, device=mixer_device)``, e.g. control ``"PCM"`` on
  ``"default"``; config ``audio.mixer`` / ``audio.mixer_device``), all channels, in
  pyalsaaudio's percent units (linear in the control's raw range). :attr:`Volume.gain` stays
  1.0.
* ``backend == "software"`` (no mixer configured, or the control cannot be opened): the
  playback thread calls :meth:`Volume.apply` on every frame it writes; :attr:`Volume.gain`
  is ``(percent / 100) ** 3``, a cubic taper close to perceived loudness (50 % ≈ -18 dB,
  10 % = -60 dB, 0 = silence). Apply it *before* the frame is tapped as the echo canceller's
  far-end reference, so the reference is what the speaker plays.

A mixer that cannot be opened is not fatal: the error names the control and the device, is
kept in :attr:`Volume.mixer_error`, logged, and the software gain takes over. A mixer that
fails later (USB card unplugged) is reopened once, then the software gain takes over too.

Threads: :meth:`get`, :meth:`set` and :meth:`change` may be called from any thread (a tool
worker thread); :attr:`gain` is a plain float read by the playback thread without a lock
(a float attribute read is atomic).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from voxbox.errors import VolumeError  # noqa: F401 (re-exported)

try:  # pragma: no cover - import guard
    import alsaaudio
except ImportError:  # pragma: no cover
    alsaaudio = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

STATE_FILE = "volume.json"
DEFAULT_PERCENT = 50
#: a state file larger than this is not a volume state (bytes)
_MAX_FILE_BYTES = 4096


def percent_to_gain(percent: int) -> float:
    """Software gain (linear amplitude factor, 0..1) for a volume in percent (cubic taper)."""
    p = max(0, min(100, int(percent))) / 100.0
    return p * p * p


def open_mixer(control: str, device: str = "default", *, alsa: Any = None) -> Any:
    """Open a playback mixer control with pyalsaaudio.

    Raises:
        VolumeError: pyalsaaudio missing, no such device or control (the message lists the
            controls the device has, when it can be listed), or a control without playback
            volume.
    """
    alsa = alsa if alsa is not None else alsaaudio
    if alsa is None:
        raise VolumeError(control, device, "pyalsaaudio (module alsaaudio) is not installed")
    try:
        mixer = alsa.Mixer(control=control, device=device)
    except alsa.ALSAAudioError as exc:
        try:
            available = ", ".join(alsa.mixers(device=device)) or "none"
        except Exception:  # noqa: BLE001 - the device itself is missing
            available = "device cannot be opened"
        raise VolumeError(control, device, f"{exc} (controls: {available})") from None
    try:
        caps = set(mixer.volumecap())
    except alsa.ALSAAudioError as exc:
        raise VolumeError(control, device, f"cannot read its capabilities: {exc}") from None
    if not caps & {"Volume", "Joined Volume", "Playback Volume", "Joined Playback Volume"}:
        _close(mixer)
        raise VolumeError(control, device, f"has no playback volume (capabilities: {sorted(caps)})")
    return mixer


def _close(mixer: Any) -> None:
    try:
        mixer.close()
    except Exception:  # noqa: BLE001
        pass


class Volume:
    """The output volume.

    Args:
        state_dir: directory of ``volume.json`` (created on first save); None = not persisted.
        mixer: ALSA mixer control name (``"PCM"``, ``"Master"``, ``"Speaker"``…); None or ""
            = software gain.
        mixer_device: ALSA control device for the mixer (``"default"``, ``"hw:CARD=Device"``).
        default_percent: the volume when nothing is persisted (with a mixer: the mixer's
            current value is used instead, when it can be read).
        alsa: replaces the ``alsaaudio`` module (tests).
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None, *, mixer: str | None = None,
                 mixer_device: str = "default", default_percent: int = DEFAULT_PERCENT,
                 alsa: Any = None):
        self._scratch: np.ndarray | None = None  # playback-thread scaling buffer
        self.path = Path(state_dir) / STATE_FILE if state_dir is not None else None
        self.control = mixer or None
        self.mixer_device = mixer_device
        self._alsa = alsa if alsa is not None else alsaaudio
        self._lock = threading.Lock()
        self._mixer: Any = None
        self.mixer_error: str | None = None
        #: linear factor the playback thread applies (1.0 while the ALSA mixer does the work)
        self.gain = 1.0
        if self.control:
            try:
                self._mixer = open_mixer(self.control, mixer_device, alsa=self._alsa)
            except VolumeError as exc:
                self._fallback(exc, "cannot open the mixer")
        saved = self._load()
        if saved is None and self._mixer is not None:
            saved = self._read_mixer()
        self._percent = _clamp(saved if saved is not None else default_percent)
        self._apply(self._percent)

    # ---- public ------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """``"alsa"`` or ``"software"``."""
        return "alsa" if self._mixer is not None else "software"

    def get(self) -> int:
        """The volume, 0..100 %."""
        return self._percent

    def set(self, percent: int | float) -> int:
        """Set the volume (clamped to 0..100 %), apply and persist it; returns the volume."""
        with self._lock:
            p = _clamp(percent)
            self._percent = p
            self._apply(p)
            self._save(p)
            return p

    def change(self, delta: int | float) -> int:
        """Relative change in percentage points; returns the new volume."""
        with self._lock:
            base = self._percent
        return self.set(base + delta)

    def apply(self, frame: np.ndarray) -> None:
        """Scale one int16 frame in place by :attr:`gain`, with clipping (playback thread).

        A no-op at gain 1.0 (the ALSA backend, or 100 % in software). ``frame`` must be a
        writable ``numpy.int16`` array (any shape).
        """
        g = self.gain
        if g == 1.0:
            return
        if frame.dtype != np.int16:
            raise ValueError(f"Volume.apply: frame dtype must be int16, got {frame.dtype}")
        if not frame.flags.writeable:
            raise ValueError("Volume.apply: frame is read-only")
        if g <= 0.0:
            frame.fill(0)
            return
        scaled = self._scratch
        if scaled is None or scaled.shape != frame.shape:  # once per frame size
            scaled = self._scratch = np.empty(frame.shape, dtype=np.float32)
        np.multiply(frame, np.float32(g), out=scaled)
        np.clip(scaled, -32768.0, 32767.0, out=scaled)
        np.rint(scaled, out=scaled)
        np.copyto(frame, scaled, casting="unsafe")

    def close(self) -> None:
        with self._lock:
            if self._mixer is not None:
                _close(self._mixer)

    def status(self) -> dict[str, Any]:
        """For ``device_status``: ``{"percent", "backend", "mixer", "mixer_device", "mixer_error"}``."""
        return {"percent": self._percent, "backend": self.backend, "mixer": self.control,
                "mixer_device": self.mixer_device, "mixer_error": self.mixer_error}

    # ---- internals ---------------------------------------------------------------------
    def _fallback(self, exc: VolumeError, what: str) -> None:
        self.mixer_error = str(exc)
        log.warning("%s: %s; using software volume", what, exc,
                    extra={"VOXBOX_MIXER": exc.control, "VOXBOX_MIXER_DEVICE": exc.device})
        if self._mixer is not None:
            _close(self._mixer)
        self._mixer = None

    def _read_mixer(self) -> int | None:
        try:
            levels = self._mixer.getvolume()
            return int(round(sum(levels) / len(levels))) if levels else None
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot read mixer control %r on %r: %s", self.control, self.mixer_device, exc)
            return None

    def _apply(self, percent: int) -> None:
        if self._mixer is not None:
            for attempt in (1, 2):
                try:
                    self._mixer.setvolume(percent)
                    self.gain = 1.0
                    return
                except Exception as exc:  # noqa: BLE001 - ALSAAudioError, or a dead handle
                    err = VolumeError(self.control or "", self.mixer_device, f"cannot set volume: {exc}")
                    if attempt == 1:  # reopen once: the card may have come back
                        _close(self._mixer)
                        try:
                            self._mixer = open_mixer(self.control or "", self.mixer_device, alsa=self._alsa)
                            continue
                        except VolumeError as exc2:
                            err = exc2
                    self._mixer = None
                    self._fallback(err, "mixer failed")
                    break
        self.gain = percent_to_gain(percent)

    def _load(self) -> int | None:
        """The persisted volume (0..100 %), or None when there is none to use.

        Never raises. None without a word when the file does not exist; None with one
        warning naming the file and the key when it cannot be read, is not a JSON object,
        or its ``percent`` is missing, not a number (a bool, a string...), not finite
        (NaN, ``1e999``) or outside 0..100. The caller then uses the defaults (the mixer's
        current level, else ``default_percent``) and the next :meth:`set` overwrites the file.
        """
        if self.path is None:
            return None
        from voxbox.host.statefile import read_json_state

        why, value = read_json_state(self.path, "percent", limit=_MAX_FILE_BYTES)
        if why == "":
            return None  # no file yet
        if why is None:
            why, percent = _check_percent(value)
            if why is None:
                return percent
        elif why == "key 'percent' is missing":
            why += " (a number in 0..100 is needed)"
        log.warning("ignoring volume state file %s: %s; using the default volume", self.path, why,
                    extra={"VOXBOX_EVENT": "state_file"})
        return None

    def _save(self, percent: int) -> None:
        if self.path is None:
            return
        from voxbox.host.statefile import atomic_write

        try:
            atomic_write(self.path, json.dumps({"percent": percent}).encode())
        except OSError as exc:
            log.warning("cannot save the volume to %s: %s", self.path, exc)


def _check_percent(value: Any) -> tuple[str | None, int | None]:
    """``(None, percent)`` for a good ``percent`` of ``volume.json``, else ``(why, None)``
    where ``why`` names the key at fault. Never raises."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"key 'percent' is not a number ({type(value).__name__}): {_short(value)}", None
    try:
        v = float(value)
    except OverflowError:  # an int too large for a float
        v = math.inf
    if not math.isfinite(v):
        return f"key 'percent' is not a finite number: {_short(value)}", None
    if not 0.0 <= v <= 100.0:
        return f"key 'percent' = {v:g} is outside 0..100", None
    return None, _clamp(v)


def _short(value: Any) -> str:
    """``repr(value)`` cut to 40 characters (a state file may hold anything)."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than int -> str allows
        return "<a very large integer>"
    return text if len(text) <= 40 else text[:37] + "..."


def _clamp(percent: int | float) -> int:
    return max(0, min(100, int(round(percent))))
