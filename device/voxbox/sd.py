"""systemd integration: sd_notify (READY, WATCHDOG, STATUS) and logging.

Under systemd (stderr connected to the journal, ``$JOURNAL_STREAM``) records go to journald
with structured fields: every ``extra`` key that starts with ``VOXBOX_`` (and
``MESSAGE_ID``) becomes a journal field, e.g. ``VOXBOX_EVENT=turn``, ``VOXBOX_STATE``,
``VOXBOX_SESSION_ID``, ``VOXBOX_TURN``, ``VOXBOX_LATENCY_MS``. Elsewhere they go to stderr
as readable text (``key=value`` after the message), or one JSON object per line with
``log.format = "json"`` (what the end-to-end tests read).

Secrets registered with :func:`redact` are replaced by ``<redacted>`` in every record.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Mapping

from voxbox.journal_ids import message_id  # noqa: E402  (stable MESSAGE_ID per event kind)

_SECRETS: list[str] = []


def forget(secret: str) -> None:
    """Stop redacting ``secret`` (a short-lived token that expired)."""
    try:
        _SECRETS.remove(secret)
    except ValueError:
        pass


def redact(secret: str) -> None:
    """Never let ``secret`` reach a log record (defence in depth)."""
    if secret and secret not in _SECRETS:
        _SECRETS.append(secret)


def scrub(text: str) -> str:
    """``text`` with every secret registered with :func:`redact` replaced by ``<redacted>``."""
    for s in _SECRETS:
        if s in text:
            text = text.replace(s, "<redacted>")
    return text


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k.startswith("VOXBOX_") or k == "MESSAGE_ID"}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k[7:].lower()}={v}" for k, v in _fields(record).items()
                          if k not in ("VOXBOX_EVENT",))
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        line = f"{ts}.{int(record.msecs):03d} {record.levelname:<7} {record.name.removeprefix('voxbox.')}: {msg}"
        if fields:
            line += f"  [{fields}]"
        return scrub(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "mono": round(time.monotonic(), 4),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in _fields(record).items():
            out[k] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(out))


class JournalHandler(logging.Handler):
    """Sends records to journald with VOXBOX_* fields (systemd-python's ``journal.send``)."""

    _PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                 logging.CRITICAL: 2}

    def __init__(self) -> None:
        super().__init__()
        from systemd import journal

        self._send = journal.send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = scrub(record.getMessage())
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            fields = {k: scrub(str(v)) for k, v in _fields(record).items()}
            if "MESSAGE_ID" not in fields and (mid := message_id(fields.get("VOXBOX_EVENT"))):
                fields["MESSAGE_ID"] = mid
            self._send(msg, PRIORITY=str(self._PRIORITY.get(record.levelno, 6)),
                       SYSLOG_IDENTIFIER="voxbox", LOGGER=record.name, **fields)
        except Exception:
            self.handleError(record)


DEFAULT_STATE_DIR = "/var/lib/voxbox"


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The unit's state directory: the first entry of ``$STATE_DIRECTORY`` (systemd
    ``StateDirectory=``, colon-separated when several), else ``/var/lib/voxbox``."""
    env = os.environ if environ is None else environ
    return Path(env.get("STATE_DIRECTORY", "").split(":")[0] or DEFAULT_STATE_DIR)


def under_journal() -> bool:
    """True when stderr is connected to journald (``$JOURNAL_STREAM`` matches it)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(fmt: str = "auto", level: str = "info") -> str:
    """Configure the root logger. Returns the format chosen (text, json or journal)."""
    if fmt == "auto":
        fmt = "journal" if under_journal() else "text"
    handler: logging.Handler
    if fmt == "journal":
        try:
            handler = JournalHandler()
        except ImportError:
            fmt = "text"
    if fmt != "journal":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return fmt


class Notifier:
    """``sd_notify`` over ``$NOTIFY_SOCKET`` (a no-op outside systemd)."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_usec = int(usec) if usec and (not pid or pid == str(os.getpid())) else 0
        self._notify = None
        if self.enabled:
            from systemd import daemon

            self._notify = daemon.notify
        self.last_status = ""

    @property
    def watchdog_interval_s(self) -> float:
        """How often to send ``WATCHDOG=1``: half of ``WatchdogSec=`` (0 when off)."""
        return self.watchdog_usec / 2e6

    def send(self, *lines: str) -> None:
        if self._notify is not None:
            self._notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self.last_status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        if status != self.last_status:
            self.last_status = status
            self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")
