"""Where ``voxbox report`` reads from: commands (:func:`run_command`, :class:`CmdResult`)
and the unit's journal (:func:`journalctl_source`, :func:`file_source`), normalised to one
JSON object per line with a summary (:func:`normalise_journal`). An item that cannot be
collected raises :class:`Unavailable`, whose message the manifest records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from voxbox.errors import FieldToolError

JOURNAL_UNITS = ("voxbox.service", "voxbox-firstboot.service")
TRANSCRIPT_EVENTS = ("user_transcript", "assistant_transcript")


class Unavailable(FieldToolError):
    """An item could not be collected; the message is the reason recorded in the manifest."""


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# --------------------------------------------------------------------------- commands
@dataclass
class CmdResult:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str


Runner = Callable[[list[str]], CmdResult]


def run_command(argv: list[str], timeout: float = 20.0) -> CmdResult:
    """Run a command; :class:`Unavailable` when it is not installed or times out."""
    if shutil.which(argv[0]) is None:
        raise Unavailable(f"{argv[0]} is not installed")
    env = dict(os.environ, SYSTEMD_PAGER="cat", PAGER="cat", SYSTEMD_COLORS="0", LC_ALL="C.UTF-8")
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{' '.join(argv)} did not finish in {timeout:.0f} s") from None
    except OSError as exc:
        raise Unavailable(f"cannot run {argv[0]}: {exc.strerror}") from None
    return CmdResult(argv, p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"))


# --------------------------------------------------------------------------- journal
@dataclass
class JournalText:
    text: str
    source: str
    note: str = ""


JournalSource = Callable[[str], "JournalText | str"]


def journalctl_source(run: Runner | None = None, units: Iterable[str] = JOURNAL_UNITS,
                      journald_dir: Path = Path("/run/systemd/journal")) -> JournalSource:
    """The unit's journal via ``journalctl -o json``; :class:`Unavailable` without one."""

    def source(since: str) -> JournalText:
        argv = ["journalctl", *(f"--unit={u}" for u in units), "-o", "json", "--no-pager", "--since", since]
        res = (run or run_command)(argv)
        cmd = " ".join(argv)
        if res.rc != 0:
            raise Unavailable(f"{cmd} exited {res.rc}: {res.stderr.strip()[:500]}")
        note = res.stderr.strip()[:500]
        if not res.stdout.strip():
            if not journald_dir.exists():
                raise Unavailable(f"journald is not running ({journald_dir} missing) and "
                                  "journalctl found no entries")
            note = (note + "; " if note else "") + f"no entries since {since!r}"
        return JournalText(res.stdout, cmd, note)

    return source


def file_source(path: Path) -> JournalSource:
    """A JSON-lines journal export read from a file (``--since`` is not applied)."""

    def source(since: str) -> JournalText:
        try:
            return JournalText(path.read_text(encoding="utf-8", errors="replace"), f"file {path}",
                               "read from a file; --since not applied")
        except OSError as exc:
            raise Unavailable(f"cannot read journal file {path}: {exc.strerror}") from None

    return source


def _field_text(v: Any) -> Any:
    """journalctl -o json writes binary / non-UTF-8 fields as arrays of byte values and
    repeated fields as arrays: turn them into strings so scrubbing sees the text."""
    if isinstance(v, list):
        if v and all(isinstance(x, int) for x in v):
            return bytes(x & 0xFF for x in v).decode("utf-8", "backslashreplace")
        return [_field_text(x) for x in v]
    return v


def normalise_journal(text: str, drop_transcripts: bool = False) -> tuple[str, dict[str, Any]]:
    """One JSON object per line with text fields; a summary (records, events, time span)."""
    lines: list[str] = []
    events: dict[str, int] = {}
    first = last = None
    bad = 0
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            bad += 1
            lines.append(raw)
            continue
        if not isinstance(rec, dict):
            lines.append(raw)
            continue
        rec = {k: _field_text(v) for k, v in rec.items()}
        ev = rec.get("VOXBOX_EVENT")
        if isinstance(ev, str):
            events[ev] = events.get(ev, 0) + 1
            if drop_transcripts and ev in TRANSCRIPT_EVENTS:
                rec["MESSAGE"] = "<transcript removed>"
        ts = rec.get("__REALTIME_TIMESTAMP")
        if isinstance(ts, str) and ts.isdigit():
            first = ts if first is None else first
            last = ts
        lines.append(json.dumps(rec, ensure_ascii=False))
    span = [_iso(int(t) / 1e6) if t else None for t in (first, last)]
    summary = {"records": len(lines), "events": dict(sorted(events.items())), "first": span[0], "last": span[1]}
    if bad:
        summary["lines_not_json"] = bad
    return "".join(line + "\n" for line in lines), summary
