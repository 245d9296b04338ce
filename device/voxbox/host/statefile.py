"""Small state files written so that a power cut or a full disk never leaves a torn or
empty file: a temporary file in the same directory, flushed and fsynced, renamed over the
target, then the directory fsynced (the rename itself survives a power cut).

Adapter (file system only). Used for the echo path (:mod:`voxbox.dsp.echostate`) and the
volume (:mod:`voxbox.audio.volume`).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "read_json_state"]


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically: the parent directories are created if
    needed, ``data`` goes into a temporary file in the same directory (``.<name>.*.tmp``),
    which is fsynced, given ``mode`` (permission bits), renamed over ``path``
    (``os.replace``), then the directory is fsynced so the rename survives a power cut.

    On any failure before the rename (a full disk at the write or at the fsync, a failed
    chmod or rename, an interrupt) the temporary file is removed and the old ``path`` (if
    any) is left untouched. A failure of the final directory fsync leaves the new content
    in ``path`` (nothing to remove) but is still raised: the rename may not survive a
    power cut.

    Raises:
        OSError: the directory or the file cannot be written (``errno.ENOSPC`` for a full
            disk), renamed or synced; the caller reports it.
    """
    p = Path(os.fspath(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                if n <= 0:  # never for a regular file; do not spin
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: write returned {n}", tmp)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(p.parent)


def fsync_dir(directory: Path) -> None:
    """fsync a directory (makes a rename durable); a no-op where directories cannot be
    opened (not POSIX).

    Raises:
        OSError: the directory cannot be opened or synced (POSIX).
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (OSError, AttributeError):
        if os.name != "posix":
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def read_json_state(path: str | os.PathLike, key: str, limit: int = 64 * 1024) -> tuple[str | None, object]:
    """Read the JSON object in the state file ``path`` and the value of its ``key``.

    Returns ``(None, value)`` when the file holds a JSON object with ``key``;
    ``("", None)`` when the file does not exist; else ``(why, None)``, where ``why`` says
    what is wrong and names the key: unreadable, larger than ``limit`` bytes, not valid
    JSON (truncated, binary garbage), not a JSON object, or ``key`` missing. The caller
    checks the value's type and range. Never raises.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        return "", None
    except (OSError, ValueError) as exc:
        return f"cannot read it: {exc}", None
    if len(raw) > limit:
        return f"larger than {limit} bytes: not a state file", None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return f"not valid JSON: {exc}", None
    if not isinstance(data, dict):
        return f"not a JSON object with key '{key}' (a {type(data).__name__})", None
    if key not in data:
        return f"key '{key}' is missing", None
    return None, data[key]
