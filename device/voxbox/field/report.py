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
import ctypes
import ctypes.util
import importlib.metadata
import io
import json
import os
import platform
import re
import socket
import stat
import sys
import tarfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from voxbox import __version__
from voxbox.config import DEFAULT_CONFIG_PATH
from voxbox.errors import ReportError  # noqa: F401 (ReportError re-exported)
from voxbox.field.journal import (
    JOURNAL_UNITS,
    CmdResult,  # noqa: F401 (re-exported)
    JournalSource,
    JournalText,
    Runner,
    Unavailable,
    _iso,
    file_source,
    journalctl_source,
    normalise_journal,
    run_command,
)
from voxbox.field.redact import (
    REDACTED,
    Secrets,
    _tree_secrets,
    gather_secrets,
    looks_secret,
    redact_tree,
    scrub_text,
    secret_forms,  # noqa: F401 (re-exported)
    seen_secrets,
)
from voxbox.field.selftest import STATE_FILE as SELFTEST_STATE_FILE
from voxbox.host import sd

DEFAULT_SINCE = "2 days ago"
UNIT = "voxbox.service"
JOURNAL_FILE_ENV = "VOXBOX_REPORT_JOURNAL"
"""A JSON-lines file used instead of ``journalctl`` (tests, a journal exported elsewhere)."""
MAX_FILE_BYTES = 1 << 20
"""Files larger than this are not copied into the archive (noted as unavailable)."""
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
