"""Echo-path state kept across restarts: the measured echo delay, clock drift and echo
return loss, so the first reply after boot starts from what the last run learnt.

Core module (standard library only; no clocks except the default ``saved_at``, no
threads): the daemon saves an :class:`EchoState` in its state directory whenever the
echo-delay tracker moves the reference delay line or retunes the drift compensator (and
at stop), and loads it at start to seed the delay line and the drift compensator. The
Speex echo canceller's adaptive filter itself cannot be saved (its state is opaque); a
start-up earcon played through the normal playback path trains it instead (see
:mod:`voxbox.audio.earcon`, cue ``startup``).

File format (JSON object, one line, UTF-8)::

    {"version": 1, "reference_delay_ms": 42.0, "echo_delay_ms": 10.2, "drift_ppm": -35.5,
     "erl_db": 8.1, "saved_at": 1733390000.0, "devices": "capture=hw:1 playback=hw:1",
     "loudspeaker_clip": 0.21, "loudspeaker_knee": 8.0}

The two ``loudspeaker_*`` keys (the identified loudspeaker saturation,
:mod:`voxbox.dsp.loudspeaker`) are optional: absent or null is a linear loudspeaker (or
none identified yet), and files written before they existed load as that.

:func:`load_echo_state` never raises: a missing file is simply ``None`` (first boot); a
file that cannot be read or parsed, a missing or mistyped key, a value out of range
(delays outside 0..500 ms, drift beyond +-1000 ppm, ERL outside -40..80 dB, a
loudspeaker clip level outside 0.001..1 or knee outside 0.5..64, NaN or infinity, e.g.
``1e999``) or a state measured on other sound devices is ``None`` too,
with one log line on the ``voxbox.dsp.echostate`` logger naming the file and the key.
:func:`save_echo_state` writes atomically (temporary file in the same directory, fsync,
rename, directory fsync) and raises :class:`OSError` for the caller to log.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from voxbox.host.statefile import atomic_write

__all__ = ["CLIP_RANGE", "KNEE_RANGE", "ERL_RANGE_DB", "MAX_DELAY_MS", "MAX_DRIFT_PPM", "VERSION", "EchoState", "load_echo_state",
           "save_echo_state"]

log = logging.getLogger("voxbox.dsp.echostate")

#: file format version written by :func:`save_echo_state`
VERSION = 1
#: delays (reference delay line, echo delay) are accepted in 0..MAX_DELAY_MS ms (the
#: reference aligner's and ``frontend.reference_delay_ms``'s bound)
MAX_DELAY_MS = 500.0
#: drift accepted in +-MAX_DRIFT_PPM ppm (``DriftCompensator.MAX_PPM``)
MAX_DRIFT_PPM = 1000.0
#: echo return loss accepted in this range, dB
ERL_RANGE_DB = (-40.0, 80.0)
#: loudspeaker clip level (fraction of full scale) and knee accepted in these ranges
CLIP_RANGE = (0.001, 1.0)
KNEE_RANGE = (0.5, 64.0)
#: a state file larger than this is not an echo state (bytes)
_MAX_FILE_BYTES = 64 * 1024


def _number(value: object) -> float | None:
    """``value`` as a float when it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        v = float(value)
    except OverflowError:  # a huge int
        return None
    return v if math.isfinite(v) else None


def _check(name: str, value: object, lo: float, hi: float, unit: str, optional: bool = False) -> str | None:
    """Why ``value`` is not acceptable for field ``name`` (None = fine)."""
    if value is None:
        return None if optional else f"{name} is missing (a number in {lo:g}..{hi:g} {unit} is needed)"
    v = _number(value)
    if v is None:
        what = "not a finite number" if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else f"not a number ({type(value).__name__})"
        return f"{name} is {what}: {value!r}"
    if not lo <= v <= hi:
        return f"{name} = {v:g} {unit} is outside {lo:g}..{hi:g} {unit}"
    return None


@dataclass(frozen=True)
class EchoState:
    """The echo path as last measured on this unit.

    Attributes:
        reference_delay_ms: the far-end reference delay line the daemon used (the
            ``_ref_delay`` samples at the capture rate, in ms), 0..500 ms.
        echo_delay_ms: the lead of the reference over its echo that the echo canceller
            saw *with that delay line*, ms (0..500), or None when not measured.
        drift_ppm: the drift compensator's setting, ppm (microphone clock relative to
            the playback clock, ``(f_mic / f_play - 1) * 1e6``), within +-1000 ppm.
        erl_db: echo return loss, dB (played level minus the coherent echo level;
            -40..80), or None when not measured.
        saved_at: when the state was measured, Unix time in seconds (>= 0).
        devices: the sound devices it was measured on (capture and playback device
            names, plus anything else that changes the echo path's buffering); a state
            for other devices is not reused.
        loudspeaker_clip, loudspeaker_knee: the identified loudspeaker saturation
            (:class:`voxbox.dsp.loudspeaker.LoudspeakerModel` ``clip``, 0.001..1 of full
            scale, and ``knee``, 0.5..64), both None for a linear loudspeaker.

    Raises:
        ValueError: a value of the wrong type or out of range; the message names the
            field. Use :meth:`from_measurement` to build one from raw tracker figures.
    """

    reference_delay_ms: float
    echo_delay_ms: float | None
    drift_ppm: float
    erl_db: float | None
    saved_at: float
    devices: str
    loudspeaker_clip: float | None = None
    loudspeaker_knee: float | None = None

    def __post_init__(self) -> None:
        why = _problem(self.__dict__)
        if why is not None:
            raise ValueError(f"EchoState: {why}")

    @classmethod
    def from_measurement(cls, reference_delay_ms: float, echo_delay_ms: float | None, drift_ppm: float,
                         erl_db: float | None, devices: str, saved_at: float | None = None,
                         loudspeaker: tuple[float, float] | None = None) -> EchoState:
        """An :class:`EchoState` from the tracker's raw figures: an optional measurement
        (``echo_delay_ms``, ``erl_db``) that is NaN, infinite or out of range becomes
        None instead of an error; ``saved_at`` defaults to now (``time.time()``, s);
        ``loudspeaker`` is ``(clip, knee)``, None (or an infinite clip, the identity)
        for a linear loudspeaker, and an unusable pair is dropped too.

        Raises:
            ValueError: ``reference_delay_ms``, ``drift_ppm`` or ``devices`` unusable (named).
        """
        if _check("echo_delay_ms", echo_delay_ms, 0.0, MAX_DELAY_MS, "ms", optional=True):
            echo_delay_ms = None
        if _check("erl_db", erl_db, *ERL_RANGE_DB, "dB", optional=True):
            erl_db = None

        def num(v):  # ints become floats; anything else goes to the validation as it is
            return float(v) if _number(v) is not None else v

        clip = knee = None
        if loudspeaker is not None:
            c, k = loudspeaker
            if not (_check("loudspeaker_clip", c, *CLIP_RANGE, "")
                    or _check("loudspeaker_knee", k, *KNEE_RANGE, "")):
                clip, knee = float(c), float(k)
        return cls(reference_delay_ms=num(reference_delay_ms),
                   echo_delay_ms=None if echo_delay_ms is None else num(echo_delay_ms),
                   drift_ppm=num(drift_ppm), erl_db=None if erl_db is None else num(erl_db),
                   saved_at=time.time() if saved_at is None else saved_at, devices=devices,
                   loudspeaker_clip=clip, loudspeaker_knee=knee)

    def to_json(self) -> str:
        """The file's content (one JSON object and a newline; strict JSON, no NaN)."""
        d = {"version": VERSION, "reference_delay_ms": self.reference_delay_ms,
             "echo_delay_ms": self.echo_delay_ms, "drift_ppm": self.drift_ppm, "erl_db": self.erl_db,
             "saved_at": self.saved_at, "devices": self.devices,
             "loudspeaker_clip": self.loudspeaker_clip, "loudspeaker_knee": self.loudspeaker_knee}
        return json.dumps(d, allow_nan=False, sort_keys=False) + "\n"


def _problem(d: dict) -> str | None:
    """The first reason the mapping ``d`` is not a valid echo state, or None."""
    for why in (
        _check("reference_delay_ms", d.get("reference_delay_ms"), 0.0, MAX_DELAY_MS, "ms"),
        _check("echo_delay_ms", d.get("echo_delay_ms"), 0.0, MAX_DELAY_MS, "ms", optional=True),
        _check("drift_ppm", d.get("drift_ppm"), -MAX_DRIFT_PPM, MAX_DRIFT_PPM, "ppm"),
        _check("erl_db", d.get("erl_db"), *ERL_RANGE_DB, "dB", optional=True),
        _check("saved_at", d.get("saved_at"), 0.0, 1e11, "s"),
        _check("loudspeaker_clip", d.get("loudspeaker_clip"), *CLIP_RANGE, "of full scale", optional=True),
        _check("loudspeaker_knee", d.get("loudspeaker_knee"), *KNEE_RANGE, "", optional=True),
    ):
        if why is not None:
            return why
    devices = d.get("devices")
    if not isinstance(devices, str):
        return f"devices is not a string: {devices!r}"
    if (d.get("loudspeaker_clip") is None) != (d.get("loudspeaker_knee") is None):
        return "loudspeaker_clip and loudspeaker_knee must be given together"
    return None


def load_echo_state(path: str | os.PathLike, devices: str) -> EchoState | None:
    """The echo state saved in ``path`` if it is valid and was measured on ``devices``.

    Never raises. Returns None when the file does not exist (first boot, silently), and
    when it cannot be read, is not a JSON object of this format (``version`` 1), has a
    missing, mistyped, non-finite or out-of-range value, or names other devices; those
    cases log one line on the ``voxbox.dsp.echostate`` logger naming the file and the key
    (the daemon then starts cold, as without the file, and overwrites it at the next save).

    Args:
        path: the state file (e.g. ``$STATE_DIRECTORY/echo.json``).
        devices: the current sound devices, the same string the daemon saves with.
    """
    p = Path(os.fspath(path))
    try:
        with open(p, "rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return _reject(p, f"cannot read it: {exc}")
    if len(raw) > _MAX_FILE_BYTES:
        return _reject(p, f"larger than {_MAX_FILE_BYTES} bytes: not an echo state")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return _reject(p, f"not valid JSON: {exc}")
    if not isinstance(data, dict):
        return _reject(p, f"not a JSON object (a {type(data).__name__})")
    version = data.get("version")
    if isinstance(version, bool) or version != VERSION:
        return _reject(p, f"version is {version!r}, expected {VERSION}")
    why = _problem(data)
    if why is not None:
        return _reject(p, why)
    if data["devices"] != devices:
        log.info("echo state %s not used: measured on other sound devices (devices %r, now %r); "
                 "the echo path is measured again", p, data["devices"], devices,
                 extra={"VOXBOX_EVENT": "echo_state"})
        return None
    def opt(key: str) -> float | None:
        return None if data.get(key) is None else float(data[key])

    try:
        return EchoState(reference_delay_ms=float(data["reference_delay_ms"]), echo_delay_ms=opt("echo_delay_ms"),
                         drift_ppm=float(data["drift_ppm"]), erl_db=opt("erl_db"),
                         saved_at=float(data["saved_at"]), devices=data["devices"],
                         loudspeaker_clip=opt("loudspeaker_clip"), loudspeaker_knee=opt("loudspeaker_knee"))
    except ValueError as exc:  # _problem() passed, so not expected; never raise anyway
        return _reject(p, str(exc))


def _reject(path: Path, why: str) -> None:
    """Log why the file at ``path`` is not used (the caller returns None)."""
    log.warning("ignoring echo state file %s: %s; starting with an unmeasured echo path", path, why,
                extra={"VOXBOX_EVENT": "echo_state"})


def save_echo_state(path: str | os.PathLike, state: EchoState) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same directory
    (created with the parent directories if needed), flushed and fsynced, renamed over
    ``path`` (``os.replace``), then the directory fsynced so the rename survives a power
    cut. On any failure the temporary file is removed and the old ``path`` (if any) is
    left untouched.

    Raises:
        OSError: the directory or file cannot be written (the caller logs it).
    """
    atomic_write(path, state.to_json().encode("utf-8"))
