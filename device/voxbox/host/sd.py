"""systemd integration: sd_notify (READY, WATCHDOG, STATUS) and logging.

Under systemd (stderr connected to the journal, ``$JOURNAL_STREAM``) records go to journald
with structured fields: every ``extra`` key that starts with ``VOXBOX_`` (and
``MESSAGE_ID``) becomes a journal field, e.g. ``VOXBOX_EVENT=turn``, ``VOXBOX_STATE``,
``VOXBOX_SESSION_ID``, ``VOXBOX_TURN``, ``VOXBOX_LATENCY_MS``. Elsewhere they go to stderr
as readable text (``key=value`` after the message), or one JSON object per line with
``log.format = "json"`` (what the end-to-end tests read).

Secrets registered with :func:`redact` are replaced by ``<redacted>`` in every record, in
every form :func:`secret_forms` lists (raw, base64, URL-encoded, JSON- and repr-escaped),
in the message, the exception text and every field value, before the record is
serialized (so JSON escaping cannot hide a secret that holds ``\r\n`` or ``"``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Mapping

from voxbox.host.journal_ids import message_id  # noqa: E402  (stable MESSAGE_ID per event kind)

REDACTED = "<redacted>"
MIN_B64_CORE = 8
"""Shortest base64 fragment (of a secret embedded in a larger encoded blob) scrubbed."""

_SECRETS: dict[str, tuple[str, ...]] = {}
"""Registered secrets, each with its precomputed forms (copy-on-write: never mutated)."""
_FORMS: tuple[str, ...] = ()
"""Every form of every registered secret, longest first (what :func:`scrub` replaces)."""
_LOCK = threading.Lock()


def _b64_cores(data: bytes) -> set[str]:
    """The base64 characters that depend on ``data`` alone, at each of the three byte
    alignments, standard and URL-safe alphabets: whatever surrounds the secret in an
    encoded blob (``user:key`` in HTTP Basic), one of these appears in it. Fragments
    shorter than :data:`MIN_B64_CORE` are left out (they would match ordinary text)."""
    out: set[str] = set()
    n = len(data)
    for o in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            s = enc(b"\0" * o + data).decode("ascii")
            core = s[-(-8 * o // 6):(8 * (o + n)) // 6]
            if len(core) >= MIN_B64_CORE:
                out.add(core)
    return out


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def secret_forms(secret: str) -> list[str]:
    """Every form of ``secret`` that :func:`scrub` (and ``voxbox report``) removes,
    longest first:

    - raw;
    - JSON-escaped (ASCII and UTF-8, with and without ``\\/``) and ``repr``-escaped
      (of the text and of its UTF-8 bytes), without the quotes;
    - URL-encoded (percent-encoding with upper- and lower-case hex, ``/`` kept or not,
      ``+`` for spaces);
    - base64 of the UTF-8 bytes, standard and URL-safe alphabets, with and without
      padding, and the fragments that appear when the secret is encoded inside a larger
      blob (:func:`_b64_cores`).

    An empty ``secret`` has no forms."""
    if not secret:
        return []
    raw = secret.encode("utf-8", "surrogatepass")
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             repr(secret)[1:-1], repr(raw)[2:-1]}
    forms |= {f.replace("/", "\\/") for f in list(forms) if "/" in f}
    for q in (urllib.parse.quote(raw, safe=""), urllib.parse.quote(raw),
              urllib.parse.quote_plus(raw, safe="")):
        forms |= {q, _lower_hex(q)}
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        full = enc(raw).decode("ascii")
        forms |= {full, full.rstrip("=")}
    forms |= _b64_cores(raw)
    return sorted((f for f in forms if f), key=lambda f: (-len(f), f))


def _rebuild(secrets: dict[str, tuple[str, ...]]) -> None:
    global _SECRETS, _FORMS
    forms = {f for fs in secrets.values() for f in fs}
    _FORMS = tuple(sorted(forms, key=lambda f: (-len(f), f)))
    _SECRETS = secrets


def forget(secret: str) -> None:
    """Stop redacting ``secret`` and its forms (a short-lived token that expired).
    Forgetting a secret that is not registered does nothing."""
    with _LOCK:
        if secret in _SECRETS:
            _rebuild({k: v for k, v in _SECRETS.items() if k != secret})


def redact(secret: str) -> None:
    """Never let ``secret``, in any of its :func:`secret_forms`, reach a log record
    (defence in depth). The forms are computed here, once, so that :func:`scrub` costs
    one substring search per form. An empty ``secret`` is ignored."""
    if not secret or secret in _SECRETS:
        return
    forms = tuple(secret_forms(secret))
    with _LOCK:
        if secret not in _SECRETS:
            _rebuild({**_SECRETS, secret: forms})


def scrub(text: str) -> str:
    """``text`` with every form of every secret registered with :func:`redact` replaced by
    ``<redacted>`` (longest forms first)."""
    for f in _FORMS:  # one snapshot: redact/forget replace the tuple, never change it
        if f in text:
            text = text.replace(f, REDACTED)
    return text


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k.startswith("VOXBOX_") or k == "MESSAGE_ID"}


def _scrubbed(value: object) -> object:
    """A field value for a log line: numbers, booleans and None as they are, anything
    else as scrubbed text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub(value if isinstance(value, str) else str(value))


class TextFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL logger: message  [key=value ...]``, every part scrubbed."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k[7:].lower()}={_scrubbed(v)}" for k, v in _fields(record).items()
                          if k not in ("VOXBOX_EVENT",))
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        line = (f"{ts}.{int(record.msecs):03d} {record.levelname:<7} "
                f"{record.name.removeprefix('voxbox.')}: {scrub(msg)}")
        if fields:
            line += f"  [{fields}]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``mono``, ``level``, ``logger``, ``msg``, the
    ``VOXBOX_*`` fields and ``exception``. The message, the exception text and every field
    value are scrubbed before serialization."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "mono": round(time.monotonic(), 4),
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for k, v in _fields(record).items():
            out[k] = _scrubbed(v)
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out)


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
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            msg = scrub(msg)
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
