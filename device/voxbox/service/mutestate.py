"""The microphone's mute, kept across restarts in the unit's state file (``{"muted": true}``).

A unit muted by its user must come back muted after a power cut, and a state file that a
power cut, a full disk or a person broke must never stop it (it starts unmuted, and says
why). Written atomically (:func:`voxbox.host.statefile.atomic_write`: temporary file,
fsync, rename, directory fsync); read with :func:`voxbox.host.statefile.read_json_state`,
the same reader as the volume's state file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from voxbox.host.statefile import atomic_write, read_json_state

log = logging.getLogger(__name__)

__all__ = ["save_muted", "load_muted"]


def save_muted(path: Path, muted: bool) -> bool:
    """Log the mute change and persist it in ``path``.

    Returns:
        True when saved. False when it cannot be saved (a full disk, a read-only or
        missing state directory): the temporary file is gone, the old file (if any) is
        untouched, and one error (``VOXBOX_EVENT=state_file``) names the file and says
        the change will not survive a restart. Never raises.
    """
    log.info("microphone %s", "muted" if muted else "unmuted",
             extra={"VOXBOX_EVENT": "mute", "VOXBOX_MUTED": int(muted)})
    try:
        atomic_write(path, (json.dumps({"muted": bool(muted)}) + "\n").encode("utf-8"))
    except OSError as exc:
        log.error("cannot save the mute state in %s: %s; the %s will not survive a restart",
                  path, exc, "mute" if muted else "unmute",
                  extra={"VOXBOX_EVENT": "state_file", "VOXBOX_MUTED": int(muted)})
        return False  # the caller shows it on the LED and in STATUS=
    return True


def load_muted(path: Path) -> bool:
    """Whether the microphone was muted at the last stop.

    Never raises. False without a word when the file does not exist; False with one
    warning (``VOXBOX_EVENT=state_file``) naming the file and the key when it cannot be
    read, is larger than 64 KiB, is not JSON (truncated, binary garbage), is not a JSON
    object, or its ``muted`` is missing or not ``true``/``false``.
    """
    why, value = read_json_state(path, "muted")
    if why == "":
        return False  # no file: first boot
    if why is None:
        if isinstance(value, bool):
            return value
        why = f"key 'muted' is not true or false (a {type(value).__name__})"
    elif why == "key 'muted' is missing":
        why += " (true or false is needed)"
    log.warning("ignoring state file %s: %s; starting unmuted", path, why,
                extra={"VOXBOX_EVENT": "state_file"})
    return False
