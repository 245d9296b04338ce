"""Secrets in ``voxbox report``: which names look secret (:func:`looks_secret`), the
secrets a unit knows (:class:`Secrets`, :func:`gather_secrets`: the credential loader,
credential directories, the unit's ``LoadCredential=`` / ``SetCredential=`` /
``Environment=``, secret-looking environment variables), the values that sit in a
secret's place in collected text (:func:`seen_secrets`), and the scrubbing of text and
parsed trees (:func:`scrub_text`, :func:`redact_tree`). How the report uses them is
described in :mod:`voxbox.field.report`."""

from __future__ import annotations

import base64
import json
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from voxbox.host import sd

REDACTED = "<redacted>"
MIN_SECRET_LEN = 4
"""Shorter credential values are not scrubbed (they would match ordinary text); noted."""

_SECRET_WORDS = {"key", "apikey", "token", "secret", "secrets", "password", "passwd", "passphrase",
                 "pwd", "credential", "credentials", "privatekey"}
_SECRET_PARTS = ("api_key", "apikey", "api-key", "password", "passwd", "secret", "token", "credential")
_NOT_SECRET = {"loadcredential", "loadcredentialencrypted", "importcredential", "credentials_directory",
               "journal_stream"}


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
