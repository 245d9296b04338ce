"""``voxbox report``: one archive for support, with no secret in it.

    voxbox report [--out FILE.tar.gz] [--since "2 days ago"] [--config PATH] [--no-transcripts]

Run it as root on the unit (``sudo voxbox report``): the journal and the credentials are
readable by root only, and the credentials are needed to scrub the archive. It writes a
gzip-compressed tar (mode 0600) and prints its path. Layout (under one top directory
``voxbox-report-<host>-<UTC time>/``)::

    README.txt                 what is in here, what was unavailable and why
    manifest.json              machine-readable: included members, unavailable items, redaction
    journal.jsonl              journalctl -u voxbox.service -u voxbox-firstboot.service -o json --since ...
    config.toml                the configuration, parsed, secret-looking keys -> "<redacted>"
    identity.toml              /etc/voxbox/identity.toml (serial, fleet, site), redacted likewise
    versions.json              voxbox, Python, packages, libspeexdsp, kernel (uname), OS release
    os-release                 /etc/os-release
    selftest.json              $STATE_DIRECTORY/selftest.json (/var/lib/voxbox/selftest.json)
    etc-voxbox.txt             listing of /etc/voxbox (names, modes, sizes; never credential contents)
    commands/*.txt             systemctl status/show/cat, aplay -l, arecord -l, dpkg-query
    alsa/asound.conf, alsa/conf.d/*, alsa/cards.txt

Secrets: every API key the unit knows (:func:`voxbox.host.credentials.load_api_key`, every file
in ``$CREDENTIALS_DIRECTORY`` and ``/etc/voxbox/credentials/``, ``LoadCredential=`` /
``SetCredential=`` / ``Environment=`` of the unit, secret-looking environment variables) is
replaced by ``<redacted>`` in every member, together with its base64 (standard and URL-safe,
at any byte alignment), URL-encoded and JSON-escaped forms; ``NAME=value`` assignments and
``Authorization:``/``api-key:`` headers with secret-looking names are redacted whatever the
value. A value found in a secret's place in the collected text (a header, a ``Bearer``
token, a secret-looking ``NAME=value`` or config key) is added to the known secrets, so its
encoded forms go too. The finished archive is then read back and searched for every one of
those forms; if one is found the archive is deleted and the command fails.

The manifest's ``redaction.verified`` is true only when every place a secret is kept (key
files, credential directories, the unit) could be read, so that search had every secret in
hand; otherwise ``redaction.verification`` says "not verified: " and what could not be
checked and why (e.g. ``key file /etc/voxbox/credentials/voxbox-api-key unreadable:
Permission denied``), README.txt says so, and the command prints it.

Tests and offline use: ``$VOXBOX_REPORT_JOURNAL`` names a JSON-lines file read instead of
``journalctl`` (``build_report`` takes any ``journal_source`` callable).
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import ctypes.util
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from voxbox import __version__
from voxbox.config import DEFAULT_CONFIG_PATH
from voxbox.errors import FieldToolError, ReportError  # noqa: F401 (ReportError re-exported)
from voxbox.field.selftest import STATE_FILE as SELFTEST_STATE_FILE
from voxbox.host import sd

REDACTED = "<redacted>"
DEFAULT_SINCE = "2 days ago"
UNIT = "voxbox.service"
JOURNAL_UNITS = ("voxbox.service", "voxbox-firstboot.service")
JOURNAL_FILE_ENV = "VOXBOX_REPORT_JOURNAL"
"""A JSON-lines file used instead of ``journalctl`` (tests, a journal exported elsewhere)."""
MIN_SECRET_LEN = 4
"""Shorter credential values are not scrubbed (they would match ordinary text); noted."""
MAX_FILE_BYTES = 1 << 20
"""Files larger than this are not copied into the archive (noted as unavailable)."""
TRANSCRIPT_EVENTS = ("user_transcript", "assistant_transcript")
_FALLBACK_PACKAGES = ("voxbox", "numpy", "websockets", "soxr", "pydantic", "pyalsaaudio",
                      "gpiozero", "systemd-python", "ai-edge-litert", "pyopen-wakeword", "tomli-w",
                      "tqdm", "jsonschema", "lgpio")
_DEV_EXTRAS = frozenset({"test", "bench", "dev", "docs", "lint"})
SYSTEM_PACKAGES = ("lgpio",)
"""Distributions the unit uses from the system's site-packages, not declared by voxbox:
Raspberry Pi OS's python3-lgpio (gpiozero's pin factory, hardware/README.md)."""


def _runtime_packages(dist: str = "voxbox") -> tuple[str, ...]:
    """``dist`` and its runtime requirements from the installed metadata
    (``importlib.metadata.requires``): names only (no versions, extras or markers), every
    extra except the development ones (:data:`_DEV_EXTRAS`), then :data:`SYSTEM_PACKAGES`.
    Platform markers are ignored (a package missing here is reported as ``null``).
    Falls back to a literal list when the metadata is missing."""
    try:
        reqs = importlib.metadata.requires(dist)
    except importlib.metadata.PackageNotFoundError:
        reqs = None
    if reqs is None:
        return _FALLBACK_PACKAGES
    names = [dist]
    for req in reqs:
        spec, _, marker = req.partition(";")
        extra = re.search(r"""\bextra\s*==\s*["']([^"']+)["']""", marker)
        if extra and extra.group(1).lower() in _DEV_EXTRAS:
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if m and m.group(1).lower() not in (n.lower() for n in names):
            names.append(m.group(1))
    names += [p for p in SYSTEM_PACKAGES if p.lower() not in (n.lower() for n in names)]
    return tuple(names)


PACKAGES = _runtime_packages()
"""The distributions whose versions go into ``versions.json``."""
SHOW_PROPERTIES = ("Id,LoadState,ActiveState,SubState,Result,NRestarts,ExecMainCode,ExecMainStatus,"
                   "ExecMainStartTimestamp,StateChangeTimestamp,ActiveEnterTimestamp,WatchdogUSec,"
                   "WatchdogTimestamp,StatusText,InvocationID,FragmentPath,DropInPaths,UnitFileState")

_SECRET_WORDS = {"key", "apikey", "token", "secret", "secrets", "password", "passwd", "passphrase",
                 "pwd", "credential", "credentials", "privatekey"}
_SECRET_PARTS = ("api_key", "apikey", "api-key", "password", "passwd", "secret", "token", "credential")
_NOT_SECRET = {"loadcredential", "loadcredentialencrypted", "importcredential", "credentials_directory",
               "journal_stream"}


class Unavailable(FieldToolError):
    """An item could not be collected; the message is the reason recorded in the manifest."""


# --------------------------------------------------------------------------- secrets
def looks_secret(name: str) -> bool:
    """True for a key / variable / header name that looks like it holds a secret
    (``api_key``, ``token``, ``OPENAI_API_KEY``, ``password``, ``SetCredential`` …).
    ``realtime.auth`` (a mode, not a secret) and ``LoadCredential`` (a path) are not."""
    low = name.strip().strip('"\'').lower()
    if not low or low in _NOT_SECRET:
        return False
    if any(part in low for part in _SECRET_PARTS):
        return True
    return any(seg in _SECRET_WORDS for seg in re.split(r"[_.\-\s]+", low))


def redact_tree(value: Any, secret: bool = False) -> Any:
    """A parsed TOML/JSON tree with every value under a secret-looking key replaced."""
    if isinstance(value, dict):
        return {k: redact_tree(v, secret or looks_secret(str(k))) for k, v in value.items()}
    if secret:
        return REDACTED
    if isinstance(value, list):
        return [redact_tree(v) for v in value]
    return value


secret_forms = sd.secret_forms
"""Every form of a secret scrubbed and searched for, longest first: the same forms the
daemon's log redaction removes (:func:`voxbox.host.sd.secret_forms`)."""

MIN_SEEN_LEN = 12
"""A value seen in a secret's place (see :func:`seen_secrets`) is taken for a secret only
when it is this long and holds both a letter and a digit (``token=none`` is not one)."""


@dataclass
class Secrets:
    """What the report knows about the unit's secrets.

    Attributes:
        values: every secret value known (scrubbed, with its forms, from every member).
        sources: where they came from (credential names, files, variables; never values).
        notes: remarks for the manifest (values too short to scrub, a refused key).
        unchecked: what could not be read, and why (a key file, a credential directory,
            the unit): while this is not empty the archive cannot be *verified* free of
            secrets, because the search did not have every secret in hand.
    """

    values: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)

    def add(self, value: str | None, source: str) -> None:
        for v in _candidate_values(value):
            if len(v) < MIN_SECRET_LEN:
                self.notes.append(f"a value from {source} is shorter than {MIN_SECRET_LEN} characters: not scrubbed")
                continue
            if v not in self.values:
                self.values.append(v)
            if source not in self.sources:
                self.sources.append(source)

    def add_seen(self, value: str, source: str) -> None:
        """Add ``value``, found in a secret's place in collected text, when it looks like a
        secret (:data:`MIN_SEEN_LEN`, a letter and a digit)."""
        v = value.strip()
        if (len(v) >= MIN_SEEN_LEN and REDACTED not in v and any(c.isdigit() for c in v)
                and any(c.isalpha() for c in v)):
            self.add(v, source)

    def cannot_read(self, what: str, path: Path | str, reason: str) -> None:
        """Record that ``what`` (e.g. "key file") at ``path`` could not be read."""
        self.unchecked.setdefault(str(path), f"{what} {path} unreadable: {reason}")

    def add_file(self, path: Path, source: str | None = None) -> None:
        """Add the value(s) in the file at ``path`` (none when it does not exist; an
        unreadable file is recorded in :attr:`unchecked`)."""
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            self.cannot_read("key file", path, exc.strerror or str(exc))
            return
        if not stat.S_ISREG(st.st_mode):
            return
        try:
            with path.open("rb") as f:
                data = f.read(65536)
        except OSError as exc:
            self.cannot_read("key file", path, exc.strerror or str(exc))
            return
        self.add(data.decode("utf-8", errors="replace"), source or f"file:{path}")

    def forms(self) -> list[str]:
        out: set[str] = set()
        for v in self.values:
            out.update(secret_forms(v))
        return sorted(out, key=len, reverse=True)


def _candidate_values(value: str | None) -> list[str]:
    if not value:
        return []
    out = []
    whole = value.strip()
    if whole:
        out.append(whole)
    for line in value.splitlines():
        line = line.strip()
        if line and line != whole:
            out.append(line)
    return out


_UNIT_LINE = re.compile(r"^\s*(LoadCredential|LoadCredentialEncrypted|SetCredential|SetCredentialEncrypted|"
                        r"Environment|EnvironmentFile)\s*=\s*(.*)$", re.M)


def gather_secrets(environ: Mapping[str, str], credential_dirs: Iterable[Path],
                   unit_text: str = "") -> Secrets:
    """Every secret the unit knows, from the credential loader, credential directories, the
    unit (``systemctl cat``) and secret-looking environment variables."""
    from voxbox.host.credentials import CredentialError, CredentialUnreadable, load_api_key

    s = Secrets()
    try:
        key = load_api_key(dict(environ), required=False)
        s.add(key.value, key.source or "api key")
    except CredentialUnreadable as exc:
        s.cannot_read("key file", exc.path, exc.reason)
    except CredentialError as exc:  # a malformed key is still read below, from its file
        s.notes.append(f"credential loader: {exc}")
    for d in credential_dirs:
        try:
            entries = sorted(d.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            s.unchecked.setdefault(str(d), f"credential directory {d} cannot be listed: "
                                           f"{exc.strerror or exc} (run the report as root)")
            continue
        for f in entries:
            s.add_file(f)
    for name, value in environ.items():
        if looks_secret(name):
            s.add(value, f"env:{name}")
    for m in _UNIT_LINE.finditer(unit_text):
        directive, rest = m.group(1), m.group(2).strip()
        if directive.startswith("SetCredential"):
            s.add(rest.partition(":")[2], f"unit:{directive}")
        elif directive.startswith("LoadCredential"):
            path = rest.partition(":")[2] or rest
            if path.startswith("/"):
                s.add_file(Path(path), f"unit:{directive}")
        elif directive == "Environment":
            for assignment in re.findall(r'"[^"]*"|\S+', rest):
                n, _, v = assignment.strip('"').partition("=")
                if looks_secret(n):
                    s.add(v, f"unit:Environment={n}")
        elif directive == "EnvironmentFile":
            p = Path(rest.lstrip("-"))
            try:
                text = p.read_text(errors="replace")
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                text = ""
            except OSError as exc:
                s.cannot_read("environment file", p, exc.strerror or str(exc))
                text = ""
            for line in text.splitlines():
                n, _, v = line.strip().partition("=")
                if looks_secret(n.removeprefix("export ").strip()):
                    s.add(v.strip().strip("'\""), f"unit:EnvironmentFile={p}")
    return s


_ASSIGN = re.compile(r"(?<![A-Za-z0-9_.\-])([A-Za-z_][A-Za-z0-9_.\-]*)=([^\s\"'\\,;]*)")
_HEADER = re.compile(r"(?i)(?<![\w-])(authorization|proxy-authorization|api-key|x-api-key|ocp-apim-subscription-key)"
                     r"(\\?[\"']?[ \t]*[:=][ \t]*\\?[\"']?)((?:bearer|basic|token)[ \t]+)?([^\s\"'\\,;]+)")


def _redact_assignments(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        if value and looks_secret(name):
            return f"{name}={REDACTED}"
        if "=" in value:
            return f"{name}={_redact_assignments(value)}"
        return m.group(0)

    return _ASSIGN.sub(sub, text)


def scrub_text(text: str, forms: list[str]) -> tuple[str, int]:
    """Replace every known secret form, secret-looking assignments and auth headers.
    Returns the text and the number of replacements."""
    count = 0
    for f in forms:
        if f in text:
            count += text.count(f)
            text = text.replace(f, REDACTED)
    before = text
    text = _HEADER.sub(lambda m: m.group(1) + m.group(2) + (m.group(3) or "") + REDACTED
                       if m.group(4) != REDACTED else m.group(0), text)
    text = _redact_assignments(text)
    if text != before:
        count += 1
    return text, count


_BEARER = re.compile(r"(?i)(?<![\w-])bearer[ \t]+([A-Za-z0-9._~+/=\-]+)")
_JSON_PAIR = re.compile(r'"([A-Za-z_][A-Za-z0-9_.\-]*)"\s*:\s*"((?:[^"\\]|\\.)*)"')


def seen_secrets(text: str) -> list[str]:
    """Values that sit in a secret's place in ``text``: the value of an ``Authorization:``
    / ``api-key:`` header (the password inside a ``Basic`` one), a ``Bearer`` token, a
    ``NAME=value`` or ``"name": "value"`` pair with a secret-looking name. The report adds
    them to the secrets it knows (:meth:`Secrets.add_seen`), so their other forms (base64,
    URL, JSON) are scrubbed too, even when the credential file itself was unreadable."""
    out: list[str] = []
    for m in _HEADER.finditer(text):
        value = m.group(4)
        out.append(value)
        if (m.group(3) or "").lower().startswith("basic"):
            try:
                decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=False).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue
            out.append(decoded.partition(":")[2])
    out += [m.group(1) for m in _BEARER.finditer(text)]
    out += [m.group(2) for m in _ASSIGN.finditer(text) if looks_secret(m.group(1))]
    for m in _JSON_PAIR.finditer(text):
        if looks_secret(m.group(1)):
            try:
                out.append(json.loads(f'"{m.group(2)}"'))
            except ValueError:
                out.append(m.group(2))
    return [v for v in out if v and v != REDACTED]


def _tree_secrets(value: Any, secret: bool = False) -> list[str]:
    """The string values under secret-looking keys of a parsed TOML/JSON tree."""
    if isinstance(value, dict):
        return [v for k, x in value.items() for v in _tree_secrets(x, secret or looks_secret(str(k)))]
    if isinstance(value, list):
        return [v for x in value for v in _tree_secrets(x, secret)]
    return [value] if secret and isinstance(value, str) else []


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


# --------------------------------------------------------------------------- collection
@dataclass
class Paths:
    """Where things are on a unit (overridable for tests)."""

    etc_dir: Path = Path("/etc/voxbox")
    state_dir: Path | None = None  # default: $STATE_DIRECTORY, else /var/lib/voxbox
    os_release: tuple[Path, ...] = (Path("/etc/os-release"), Path("/usr/lib/os-release"))
    asound_conf: Path = Path("/etc/asound.conf")
    alsa_conf_d: Path = Path("/etc/alsa/conf.d")
    asound_cards: Path = Path("/proc/asound/cards")
    journald_dir: Path = Path("/run/systemd/journal")


@dataclass
class _Bundle:
    members: dict[str, str] = field(default_factory=dict)
    included: list[dict[str, Any]] = field(default_factory=list)
    unavailable: list[dict[str, str]] = field(default_factory=list)
    #: (value, member) pairs under secret-looking keys of the parsed TOML files, which the
    #: members hold redacted: added to the known secrets so their other forms go too
    seen: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, text: str, source: str, note: str = "") -> None:
        self.members[name] = text
        entry: dict[str, Any] = {"member": name, "source": source}
        if note:
            entry["note"] = note
        self.included.append(entry)

    def missing(self, item: str, source: str, reason: str) -> None:
        self.unavailable.append({"item": item, "source": source, "reason": reason})


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _read_text(path: Path) -> str:
    """File text; :class:`Unavailable` naming why not."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise Unavailable("not present") from None
    except OSError as exc:
        raise Unavailable(f"cannot stat: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Unavailable("not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise Unavailable(f"{st.st_size} bytes, over the {MAX_FILE_BYTES} byte limit")
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise Unavailable(f"cannot read: {exc.strerror}") from None


def _add_file(b: _Bundle, name: str, path: Path, item: str | None = None) -> str | None:
    try:
        text = _read_text(path)
    except Unavailable as exc:
        b.missing(item or name, str(path), str(exc))
        return None
    b.add(name, text, str(path))
    return text


_TOML_LINE = re.compile(r"^(\s*)([A-Za-z0-9_\-.\"']+)(\s*=\s*)(.*)$")


def redact_toml_text(text: str) -> str:
    """Line-wise fallback for a TOML file that does not parse."""
    out = []
    for line in text.splitlines():
        m = _TOML_LINE.match(line)
        if m and looks_secret(m.group(2).split(".")[-1]):
            line = f'{m.group(1)}{m.group(2)}{m.group(3)}"{REDACTED}"'
        out.append(line)
    return "\n".join(out) + "\n"


def _add_toml(b: _Bundle, name: str, path: Path, item: str) -> None:
    try:
        text = _read_text(path)
    except Unavailable as exc:
        b.missing(item, str(path), str(exc))
        return
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        for line in text.splitlines():
            m = _TOML_LINE.match(line)
            if m and looks_secret(m.group(2).split(".")[-1]):
                b.seen.append((m.group(4).strip().strip("\"'"), name))
        b.add(name, redact_toml_text(text), str(path),
              f"does not parse ({exc}); copied with secret-looking lines redacted")
        return
    import tomli_w

    b.seen += [(v, name) for v in _tree_secrets(data)]

    header = f"# {path}, parsed; values under secret-looking keys replaced by {REDACTED!r}\n"
    b.add(name, header + tomli_w.dumps(redact_tree(data)), str(path), "parsed and redacted")


def _add_command(b: _Bundle, run: Runner, name: str, argv: list[str], ok_codes: tuple[int, ...] = (0,)) -> str:
    cmd = " ".join(argv)
    try:
        res = run(argv)
    except Unavailable as exc:
        b.missing(name, cmd, str(exc))
        return ""
    err = " / ".join(line.strip() for line in res.stderr.splitlines() if line.strip())
    if res.rc not in ok_codes and not res.stdout.strip():
        b.missing(name, cmd, f"exit {res.rc}: {err[:500] or 'no output'}")
        return ""
    note = f"exit {res.rc}" + (f"; stderr: {err[:300]}" if err else "")
    b.add(name, res.stdout, cmd, note)
    return res.stdout


def _libspeexdsp() -> dict[str, Any]:
    out: dict[str, Any] = {"soname": ctypes.util.find_library("speexdsp")}
    name = out["soname"] or "libspeexdsp.so.1"
    try:
        ctypes.CDLL(name)
    except OSError as exc:
        out["error"] = str(exc)
        return out
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                if "libspeexdsp" in line:
                    out["path"] = os.path.realpath(line.split()[-1])  # e.g. libspeexdsp.so.1.5.2
                    break
    except OSError:
        pass
    return out


def _os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() and not k.startswith("#"):
            out[k.strip()] = v.strip().strip('"')
    return out


def _versions(os_release_text: str | None) -> dict[str, Any]:
    pkgs: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            pkgs[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            pkgs[p] = None
    u = os.uname()
    return {
        "voxbox": __version__,
        "python": sys.version,
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": u.machine,
        "uname": {"sysname": u.sysname, "nodename": u.nodename, "release": u.release,
                  "version": u.version, "machine": u.machine},
        "packages": pkgs,
        "libspeexdsp": _libspeexdsp(),
        "os_release": _os_release(os_release_text) if os_release_text else None,
    }


def _listing(root: Path) -> str:
    """Names, modes, owners and sizes under ``root`` (never contents)."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: lines.append(f"! {e}")):
        dirnames.sort()
        for name in [dirpath, *(os.path.join(dirpath, f) for f in sorted(filenames))]:
            try:
                st = os.lstat(name)
            except OSError as exc:
                lines.append(f"! {name}: {exc.strerror}")
                continue
            lines.append(f"{stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid} {st.st_size:>8} "
                         f"{_iso(st.st_mtime)} {name}")
    return "\n".join(lines) + "\n"


def _readme(manifest: dict[str, Any]) -> str:
    lines = [f"voxbox report from {manifest['host']} at {manifest['created']} (voxbox {manifest['voxbox']})",
             f"journal since: {manifest['since']}", "", "included:"]
    lines += [f"  {e['member']:<28} {e['source']}" + (f"  ({e['note']})" if e.get("note") else "")
              for e in manifest["included"]]
    lines += ["", "unavailable:"]
    lines += [f"  {e['item']:<28} {e['source']}: {e['reason']}" for e in manifest["unavailable"]] or ["  (nothing)"]
    red = manifest["redaction"]
    lines += ["", f"secrets: {red['known_secrets']} known values (and their encoded forms) "
              f"replaced by {REDACTED}; the archive was searched for them after writing.",
              red["verification"]]
    return "\n".join(lines) + "\n"


def build_report(out: Path | str, *, since: str = DEFAULT_SINCE, config_path: Path | str = DEFAULT_CONFIG_PATH,
                 journal_source: JournalSource | None = None, run: Runner | None = None,
                 environ: Mapping[str, str] | None = None, paths: Paths | None = None,
                 drop_transcripts: bool = False, now: float | None = None) -> dict[str, Any]:
    """Collect, scrub, write ``out`` (a .tar.gz, mode 0600) and verify it. Returns the manifest.

    Raises:
        ReportError: the archive cannot be written, or a secret was found in it (deleted).
    """
    env = os.environ if environ is None else environ
    paths = paths or Paths()
    run = run or run_command
    now = time.time() if now is None else now
    out = Path(out)
    state_dir = paths.state_dir or sd.state_dir(env)
    host = socket.gethostname()
    b = _Bundle()

    # the journal
    source = journal_source
    if source is None:
        jf = env.get(JOURNAL_FILE_ENV)
        source = file_source(Path(jf)) if jf else journalctl_source(run, journald_dir=paths.journald_dir)
    journal_summary: dict[str, Any] | None = None
    try:
        got = source(since)
        jt = got if isinstance(got, JournalText) else JournalText(str(got), "journal source")
        text, journal_summary = normalise_journal(jt.text, drop_transcripts)
        note = "; ".join(x for x in (jt.note, "transcripts removed" if drop_transcripts else "") if x)
        b.add("journal.jsonl", text, jt.source, note)
    except Unavailable as exc:
        b.missing("journal", f"journal of {', '.join(JOURNAL_UNITS)} since {since!r}", str(exc))

    # configuration and identity (parsed, redacted)
    _add_toml(b, "config.toml", Path(config_path), "config")
    _add_toml(b, "identity.toml", paths.etc_dir / "identity.toml", "identity")
    if paths.etc_dir.is_dir():
        b.add("etc-voxbox.txt", _listing(paths.etc_dir), f"listing of {paths.etc_dir}", "names and modes only")
    else:
        b.missing("etc-voxbox.txt", str(paths.etc_dir), "not present")

    # the unit
    _add_command(b, run, "commands/systemctl-status.txt",
                 ["systemctl", "status", *JOURNAL_UNITS, "--no-pager", "--full", "--lines=30"], ok_codes=(0, 3))
    _add_command(b, run, "commands/systemctl-show.txt", ["systemctl", "show", UNIT, "-p", SHOW_PROPERTIES])
    unit_text = _add_command(b, run, "commands/systemctl-cat.txt", ["systemctl", "cat", "--no-pager", UNIT])

    # versions and the system
    os_text = None
    for p in paths.os_release:
        try:
            os_text = _read_text(p)
        except Unavailable:
            continue
        b.add("os-release", os_text, str(p))
        break
    else:
        b.missing("os-release", " ".join(map(str, paths.os_release)), "not present")
    b.add("versions.json", json.dumps(_versions(os_text), indent=1) + "\n", "importlib.metadata, ctypes, uname")
    _add_command(b, run, "commands/aplay-l.txt", ["aplay", "-l"])
    _add_command(b, run, "commands/arecord-l.txt", ["arecord", "-l"])
    _add_command(b, run, "commands/dpkg-query.txt",
                 ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "libspeexdsp*", "libasound2*", "systemd",
                  "raspberrypi-kernel*", "linux-image-*"], ok_codes=(0, 1))

    # self-test and ALSA
    _add_file(b, "selftest.json", state_dir / SELFTEST_STATE_FILE, "selftest")
    _add_file(b, "alsa/asound.conf", paths.asound_conf)
    if paths.alsa_conf_d.is_dir():
        for f in sorted(paths.alsa_conf_d.iterdir()):
            if f.suffix == ".conf" and not f.is_symlink():  # symlinks point at packaged defaults
                _add_file(b, f"alsa/conf.d/{f.name}", f)
    _add_file(b, "alsa/cards.txt", paths.asound_cards)

    # secrets: gather, scrub every member
    cred_dirs = [Path(d) for d in (env.get("CREDENTIALS_DIRECTORY"),) if d] + [paths.etc_dir / "credentials"]
    secrets = gather_secrets(env, cred_dirs, unit_text)
    unit_missing = next((e["reason"] for e in b.unavailable if e["item"] == "commands/systemctl-cat.txt"), None)
    if unit_missing is not None:
        secrets.unchecked.setdefault(f"unit {UNIT}", f"unit {UNIT} could not be read (systemctl cat: {unit_missing}): "
                                                     "its LoadCredential=/SetCredential=/Environment= secrets are unknown")
    # secrets the collected text itself gives away (a header, a NAME=value, a config key):
    # known now, so their encoded forms are scrubbed too
    for value, name in b.seen:
        secrets.add_seen(value, f"seen in {name}")
    for name, text in b.members.items():
        for value in seen_secrets(text):
            secrets.add_seen(value, f"seen in {name}")
    forms = secrets.forms()
    replacements = 0
    for name, text in list(b.members.items()):
        b.members[name], n = scrub_text(text, forms)
        replacements += n

    manifest: dict[str, Any] = {
        "voxbox_report": 1,
        "created": _iso(now),
        "host": host,
        "voxbox": __version__,
        "since": since,
        "config": str(config_path),
        "state_directory": str(state_dir),
        "included": [dict(e, bytes=len(b.members[e["member"]].encode("utf-8"))) for e in b.included],
        "unavailable": b.unavailable,
        "journal": journal_summary,
        "redaction": {
            "replacement": REDACTED,
            "known_secrets": len(secrets.values),
            "secret_sources": secrets.sources,
            "notes": secrets.notes,
            "replacements": replacements,
            **_verification(secrets),
        },
    }
    manifest_text, _ = scrub_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", forms)
    members = {"README.txt": scrub_text(_readme(manifest), forms)[0], "manifest.json": manifest_text, **b.members}
    _write(out, members, f"voxbox-report-{host}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}", now)
    leaks = find_secrets(out, forms)
    if leaks:
        out.unlink(missing_ok=True)
        raise ReportError(f"a secret survived scrubbing in {', '.join(sorted(leaks))}; archive deleted")
    return manifest


def _verification(secrets: Secrets) -> dict[str, Any]:
    """The manifest's verdict: ``verified`` is True only when every place a secret is kept
    was read, so the search after writing had every secret in hand; otherwise
    ``verification`` says "not verified: " and ``unchecked`` lists what could not be
    checked and why."""
    unchecked = list(secrets.unchecked.values())
    if unchecked:
        return {"verified": False, "unchecked": unchecked,
                "verification": ("not verified: " + "; ".join(unchecked) + ". Known secrets and "
                                 "secret-looking patterns were scrubbed, but a secret that could not "
                                 "be read may remain in an encoded form")}
    if not secrets.values:
        nothing = ("no secret was found on this unit (no API key, credential file or secret-looking "
                   "variable): there was nothing to search for")
        return {"verified": False, "unchecked": [nothing], "verification": f"not verified: {nothing}"}
    return {"verified": True, "unchecked": [],
            "verification": "verified: after writing, every member was searched for every known secret and "
                            "its base64 / URL / JSON forms; the command fails and deletes the archive otherwise"}


def _write(out: Path, members: dict[str, str], top: str, now: float) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
            dirs: set[str] = set()
            for name, text in members.items():
                parts = name.split("/")[:-1]
                for i in range(len(parts) + 1):
                    d = "/".join([top, *parts[:i]])
                    if d not in dirs:
                        dirs.add(d)
                        info = tarfile.TarInfo(d)
                        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(now)
                        tar.addfile(info)
                data = text.encode("utf-8", errors="surrogateescape")
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mode, info.mtime = len(data), 0o644, int(now)
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"cannot write {out}: {exc.strerror or exc}") from None


def find_secrets(archive: Path, forms: list[str]) -> set[str]:
    """Members of ``archive`` whose bytes contain any of ``forms``."""
    needles = [f.encode("utf-8") for f in forms]
    hits = set()
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            if not m.isfile():
                continue
            data = tar.extractfile(m).read()  # type: ignore[union-attr]
            if any(n in data for n in needles):
                hits.add(m.name)
    return hits


# --------------------------------------------------------------------------- command line
def cmd_report(args: argparse.Namespace) -> int:
    host = socket.gethostname()
    out = args.out or Path(f"voxbox-report-{host}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar.gz")
    try:
        manifest = build_report(out, since=args.since, config_path=args.config,
                                drop_transcripts=args.no_transcripts)
    except ReportError as exc:
        print(f"voxbox report: {exc}", file=sys.stderr)
        return 1
    for e in manifest["unavailable"]:
        print(f"voxbox report: no {e['item']}: {e['reason']}", file=sys.stderr)
    for note in manifest["redaction"]["notes"]:
        print(f"voxbox report: {note}", file=sys.stderr)
    if not manifest["redaction"]["verified"]:
        print(f"voxbox report: {manifest['redaction']['verification']}", file=sys.stderr)
    print(out)
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write a support archive (journal, redacted config, versions, self-test)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, metavar="FILE.tar.gz",
                   help="archive to write (default ./voxbox-report-<host>-<UTC time>.tar.gz)")
    p.add_argument("--since", default=DEFAULT_SINCE,
                   help=f"journal start, as journalctl --since takes it (default {DEFAULT_SINCE!r})")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                   help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--no-transcripts", action="store_true",
                   help="replace the text of user/assistant transcript records in the journal")
    p.set_defaults(func=cmd_report)
    return p
