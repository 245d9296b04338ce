"""``voxbox provision``: per-unit bundles for a fleet, to drop on each SD card's boot partition.

Inputs
======

A **fleet file** (TOML)::

    [fleet]
    name = "acme-lobbies"                 # required; [A-Za-z0-9._-]
    description = "Lobby kiosks, phase 1"  # optional

    # Defaults for every unit: the same tables as config.toml ([realtime], [audio], ...)
    [realtime]
    url = "wss://api.openai.com/v1/realtime"
    [audio]
    capture_device = "plughw:CARD=seeed2micvoicec,DEV=0"

    # Where each unit's secrets come from. One table per systemd credential name; each
    # becomes credentials/<name> (mode 0600) in the bundle. voxbox-api-key is the one the
    # daemon reads (required unless realtime.url = "local").
    [secrets.voxbox-api-key]
    source = "column"                     # a column of the units CSV...
    column = "api_key"
    # source = "file"                     # ...or a file per serial (relative to the fleet file)
    # path = "keys/{serial}.key"
    # source = "generate"                 # ...or secrets.token_urlsafe(bytes), e.g. for a broker
    # bytes = 32

A **units CSV** (UTF-8, a BOM is fine), one row per unit. Columns:

- ``serial`` (required, unique, ``[A-Za-z0-9][A-Za-z0-9._-]*``: it names the bundle
  directory), ``name``, ``site``;
- overrides in ``section.key`` form (``audio.capture_device``,
  ``realtime.turn_detection.type``); an empty cell keeps the fleet default. Values of
  string-typed keys are taken verbatim; other values are read as TOML (``17``, ``true``,
  ``0.6``);
- the columns named by ``source = "column"`` secret policies;
- columns whose name starts with ``#`` are ignored (notes). Any other column is an error,
  so that a misspelt override column cannot silently do nothing.

Output
======

Per unit, ``<out>/<serial>/voxbox/`` — copy that ``voxbox`` directory to the root of the
card's boot partition (``/boot/firmware/voxbox`` on the running Pi), where
``voxbox-firstboot.service`` (:mod:`voxbox.field.firstboot`) installs it into ``/etc/voxbox``::

    config.toml                  0644  fleet defaults + unit overrides, validated
    credentials/<name>           0600  one per [secrets.<name>] policy (directory 0700)
    identity.toml                0644  serial, name, site, fleet, provisioned_at,
                                       provisioned_by, [bundle] checksum and files

``[bundle] checksum`` is ``sha256:`` of the lines ``<sha256 of file>  <relative path>``
(sorted by path) over every bundle file except ``identity.toml``; first boot re-computes it
and refuses a corrupt bundle. (FAT keeps no modes: first boot sets them again.)

Secrets generated with ``source = "generate"`` are also recorded in
``<out>/generated-secrets.csv`` (mode 0600; serial, credential, value) so they can be
registered with the backend; delete it afterwards. Re-provisioning a unit whose bundle is
still in ``<out>`` reuses its generated secret (delete the bundle to rotate it).

All units are validated before anything is written; if any unit is bad nothing is written
(``--keep-going`` writes the good ones). Each bundle is assembled in a temporary directory
and renamed into place, so a unit is never half written.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as _dt
import hashlib
import io
import os
import re
import secrets as _secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from voxbox import __version__
from voxbox.config import ConfigError, key_annotation, parse_config, read_toml, set_key
from voxbox.errors import ProvisionError  # noqa: F401 (re-exported)
from voxbox.host.credentials import CREDENTIAL_NAME


def toml_dumps(data: dict, header: str = "") -> str:
    """TOML text (tomli-w) under a ``# header`` comment line."""
    head = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    return head + tomli_w.dumps(data)

BUNDLE_DIR = "voxbox"
IDENTITY = "identity.toml"
CONFIG = "config.toml"
CREDENTIALS = "credentials"
GENERATED_MANIFEST = "generated-secrets.csv"
RESERVED_COLUMNS = ("serial", "name", "site")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------- fleet file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetMeta(_Strict):
    name: Annotated[str, Field(pattern=SAFE_NAME.pattern)]
    description: str = ""


class SecretPolicy(_Strict):
    source: Literal["column", "file", "generate"]
    column: str = ""
    path: str = ""
    bytes: Annotated[int, Field(ge=16, le=256)] = 32

    @model_validator(mode="after")
    def _needs(self) -> "SecretPolicy":
        if self.source == "column" and not self.column:
            raise ValueError("source = 'column' needs column = '<CSV column>'")
        if self.source == "file" and not self.path:
            raise ValueError("source = 'file' needs path = '<file, may contain {serial}>'")
        if self.source == "column" and (self.column in RESERVED_COLUMNS or "." in self.column):
            raise ValueError(f"column {self.column!r} is reserved (serial, name, site, section.key)")
        return self

    def describe(self) -> str:
        if self.source == "column":
            return f"from CSV column {self.column}"
        if self.source == "file":
            return f"from file {self.path}"
        return f"generated, token_urlsafe({self.bytes})"


@dataclass(frozen=True)
class Fleet:
    path: Path
    name: str
    description: str
    defaults: dict[str, Any]
    secrets: dict[str, SecretPolicy]


def load_fleet(path: Path | str) -> Fleet:
    """Read and check the fleet file (its defaults are validated as a config).

    Raises:
        ProvisionError: naming the file and every bad key.
    """
    path = Path(path)
    data = read_toml(path, "fleet file", ProvisionError)
    problems: list[str] = []
    meta_raw = data.pop("fleet", None)
    secrets_raw = data.pop("secrets", {})
    meta = None
    if not isinstance(meta_raw, dict):
        problems.append("[fleet]: missing table (needs at least name = \"...\")")
    else:
        try:
            meta = FleetMeta.model_validate(meta_raw)
        except ValidationError as exc:
            problems += [_describe("fleet", e) for e in exc.errors(include_url=False)]
    policies: dict[str, SecretPolicy] = {}
    if not isinstance(secrets_raw, dict):
        problems.append("secrets: must be a table of [secrets.<credential-name>] tables")
        secrets_raw = {}
    for cname, raw in secrets_raw.items():
        if not SAFE_NAME.match(cname):
            problems.append(f"secrets.{cname}: not a valid credential name ([A-Za-z0-9._-])")
            continue
        if not isinstance(raw, dict):
            problems.append(f"secrets.{cname}: must be a table")
            continue
        try:
            policies[cname] = SecretPolicy.model_validate(raw)
        except ValidationError as exc:
            problems += [_describe(f"secrets.{cname}", e) for e in exc.errors(include_url=False)]
    columns = [p.column for p in policies.values() if p.source == "column"]
    for c in sorted({c for c in columns if columns.count(c) > 1}):
        problems.append(f"secrets: column {c!r} is used by more than one secret")
    try:
        parse_config(data, "defaults")
    except ConfigError as exc:
        problems += [line.strip() for line in str(exc).splitlines()[1:]]
    if problems:
        raise ProvisionError(f"{path}: invalid fleet file:\n  " + "\n  ".join(problems))
    assert meta is not None
    return Fleet(path, meta.name, meta.description, data, policies)


def _describe(prefix: str, err: dict[str, Any]) -> str:
    key = ".".join([prefix, *(str(p) for p in err["loc"])])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{key}: {msg}" + ("" if err["type"].startswith("value_error") else f" (got {err.get('input')!r})")


# --------------------------------------------------------------------------- units CSV


@dataclass(frozen=True)
class Unit:
    line: int
    serial: str
    name: str
    site: str
    overrides: dict[str, str]  # "section.key" -> raw cell (non-empty)
    cells: dict[str, str]

    def where(self, csv_name: str) -> str:
        return f"{csv_name} line {self.line}, serial {self.serial}"


def read_units(csv_path: Path | str, fleet: Fleet) -> list[Unit]:
    """Read and check the units CSV (header, serials; values are checked per unit later).

    Raises:
        ProvisionError: naming the file, line and column.
    """
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ProvisionError(f"{csv_path}: units CSV not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"{csv_path}: cannot read units CSV: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ProvisionError(f"{csv_path}: empty file (expected a header with serial, name, site)") from None
    problems: list[str] = []
    if "serial" not in header:
        problems.append("header: no 'serial' column")
    secret_columns = {p.column for p in fleet.secrets.values() if p.source == "column"}
    for c in sorted(secret_columns - set(header)):
        problems.append(f"header: no column {c!r} (named by a [secrets] policy)")
    for i, col in enumerate(header):
        if header.index(col) != i:
            problems.append(f"header: column {col!r} appears twice")
        elif col.startswith("#") or col in RESERVED_COLUMNS or col in secret_columns:
            continue
        elif "." in col:
            if key_annotation(col) is None:
                problems.append(f"column {col!r}: not a configuration key")
        else:
            problems.append(f"column {col!r}: unknown column (expected serial, name, site, "
                            "section.key overrides, or a [secrets] column)")
    if problems:
        raise ProvisionError(f"{csv_path}: bad header:\n  " + "\n  ".join(problems))
    units: list[Unit] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) > len(header):
            problems.append(f"line {line}: {len(row)} cells but {len(header)} columns")
            continue
        cells = {h: (row[i] if i < len(row) else "") for i, h in enumerate(header)}
        serial = cells.get("serial", "").strip()
        if not SAFE_NAME.match(serial):
            problems.append(f"line {line}: serial {serial!r} is empty or not [A-Za-z0-9._-]")
            continue
        if serial in seen:
            problems.append(f"line {line}: serial {serial} already on line {seen[serial]}")
            continue
        seen[serial] = line
        ctrl = [c for c in ("name", "site") if any(ord(ch) < 32 or ord(ch) == 127 for ch in cells.get(c, ""))]
        if ctrl:
            problems.append(f"line {line}, serial {serial}: {', '.join(ctrl)} contains control characters")
            continue
        overrides = {h: v.strip() for h, v in cells.items() if "." in h and not h.startswith("#")
                     and h not in secret_columns and v.strip()}
        units.append(Unit(line, serial, cells.get("name", "").strip(), cells.get("site", "").strip(),
                          overrides, cells))
    if problems:
        raise ProvisionError(f"{csv_path}: bad rows:\n  " + "\n  ".join(problems))
    return units


# --------------------------------------------------------------------------- bundles


@dataclass(frozen=True)
class BundleFile:
    relpath: str
    content: bytes = field(repr=False)
    mode: int
    secret: bool = False
    note: str = ""


@dataclass
class Bundle:
    unit: Unit
    files: list[BundleFile]
    checksum: str
    generated: dict[str, str] = field(default_factory=dict, repr=False)


def bundle_checksum(files: dict[str, bytes]) -> str:
    """``sha256:`` over ``<sha256>  <relpath>`` lines, sorted by path (identity.toml excluded)."""
    lines = "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n"
                    for rel, data in sorted(files.items()) if rel != IDENTITY)
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def unit_config(fleet: Fleet, unit: Unit, csv_name: str) -> dict[str, Any]:
    """Fleet defaults with the unit's overrides, validated.

    Raises:
        ProvisionError: naming the CSV line, the serial and each bad key.
    """
    data = copy.deepcopy(fleet.defaults)
    for key, raw in unit.overrides.items():
        set_key(data, key, raw)
    try:
        parse_config(data)
    except ConfigError as exc:
        lines = []
        for line in str(exc).splitlines()[1:]:
            line = line.strip()
            key = line.split(":", 1)[0]
            origin = "CSV column" if key in unit.overrides else "fleet default"
            lines.append(f"{line}  [{origin} {key}]" if key_annotation(key) else line)
        raise ProvisionError(f"{unit.where(csv_name)}: invalid configuration:\n  " + "\n  ".join(lines)) from None
    return data


def _unit_secret(fleet: Fleet, unit: Unit, cname: str, policy: SecretPolicy, out: Path | None,
                 csv_name: str) -> tuple[str, bool]:
    """(value, generated now)."""
    where = f"{unit.where(csv_name)}: secret {cname}"
    if policy.source == "column":
        value = unit.cells.get(policy.column, "").strip()
        if not value:
            raise ProvisionError(f"{where}: CSV column {policy.column} is empty")
        return value, False
    if policy.source == "file":
        path = Path(policy.path.replace("{serial}", unit.serial))
        if not path.is_absolute():
            path = fleet.path.parent / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ProvisionError(f"{where}: file {path} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProvisionError(f"{where}: cannot read {path}: {exc}") from None
        if not value:
            raise ProvisionError(f"{where}: file {path} is empty")
        return value, False
    if out is not None:  # reuse the secret of a bundle already provisioned
        existing = out / unit.serial / BUNDLE_DIR / CREDENTIALS / cname
        try:
            value = existing.read_text(encoding="utf-8").strip()
            if value:
                return value, False
        except (OSError, UnicodeDecodeError):
            pass
    return _secrets.token_urlsafe(policy.bytes), True


def plan_unit(fleet: Fleet, unit: Unit, out: Path | None, csv_name: str = "units.csv",
              now: _dt.datetime | None = None) -> Bundle:
    """Everything one unit's bundle will contain, in memory. Writes nothing.

    Raises:
        ProvisionError: naming the CSV line, the serial and the bad key or secret.
    """
    data = unit_config(fleet, unit, csv_name)
    cfg_url = parse_config(data).realtime.url
    if cfg_url != "local" and CREDENTIAL_NAME not in fleet.secrets:
        raise ProvisionError(
            f"{unit.where(csv_name)}: realtime.url is {cfg_url!r} but the fleet file has no "
            f"[secrets.{CREDENTIAL_NAME}] policy: the unit would have no API key")
    header = (f"Voxbox configuration for unit {unit.serial} ({unit.name or 'unnamed'}, "
              f"site {unit.site or '-'}), fleet {fleet.name}.\n"
              f"Generated by voxbox provision {__version__}; re-provision rather than edit.")
    files: dict[str, BundleFile] = {
        CONFIG: BundleFile(CONFIG, toml_dumps(data, header).encode(), 0o644,
                           note=f"{len(unit.overrides)} override(s)"),
    }
    generated: dict[str, str] = {}
    for cname, policy in sorted(fleet.secrets.items()):
        value, new = _unit_secret(fleet, unit, cname, policy, out, csv_name)
        if policy.source == "generate":
            generated[cname] = value
        rel = f"{CREDENTIALS}/{cname}"
        note = policy.describe() + (", reused from existing bundle" if policy.source == "generate" and not new else "")
        files[rel] = BundleFile(rel, value.encode(), 0o600, secret=True, note=note)
    checksum = bundle_checksum({rel: f.content for rel, f in files.items()})
    now = now or _dt.datetime.now(_dt.timezone.utc)
    identity = {
        "serial": unit.serial,
        "name": unit.name,
        "site": unit.site,
        "fleet": fleet.name,
        "provisioned_at": now.replace(microsecond=0),
        "provisioned_by": f"voxbox {__version__}",
        "bundle": {"checksum": checksum, "files": sorted(files)},
    }
    files[IDENTITY] = BundleFile(IDENTITY, toml_dumps(identity, "Voxbox unit identity").encode(), 0o644)
    return Bundle(unit, list(files.values()), checksum, generated)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # not subject to the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bundle(bundle: Bundle, out: Path) -> Path:
    """Write ``<out>/<serial>/voxbox/`` atomically (temp dir, then rename). Returns it."""
    out.mkdir(parents=True, exist_ok=True)
    serial = bundle.unit.serial
    tmp = Path(tempfile.mkdtemp(prefix=f".{serial}.", suffix=".tmp", dir=out))
    try:
        os.chmod(tmp, 0o755)
        root = tmp / BUNDLE_DIR
        root.mkdir(mode=0o755)
        os.chmod(root, 0o755)
        for f in bundle.files:
            path = root / f.relpath
            if not path.parent.exists():
                path.parent.mkdir(parents=True)
                os.chmod(path.parent, 0o700 if f.secret else 0o755)
            _write_file(path, f.content, f.mode)
        target = out / serial
        old = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{serial}.", suffix=".old", dir=out))
            os.rename(target, old / "b")
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old)
        return target / BUNDLE_DIR
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_manifest(out: Path, bundles: list[Bundle]) -> Path | None:
    rows = {(b.unit.serial, c): v for b in bundles for c, v in b.generated.items()}
    if not rows:
        return None
    path = out / GENERATED_MANIFEST
    merged: dict[tuple[str, str], str] = {}
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                merged[(r["serial"], r["credential"])] = r["value"]
    merged.update(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["serial", "credential", "value"])
    for (serial, cname), value in sorted(merged.items()):
        w.writerow([serial, cname, value])
    tmp = path.with_name(f".{GENERATED_MANIFEST}.tmp")
    tmp.unlink(missing_ok=True)
    _write_file(tmp, buf.getvalue().encode(), 0o600)
    os.replace(tmp, path)
    return path


def _progress(items: list[Bundle], enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with openwakeword; provisioning works without it
        return items
    return tqdm(items, desc="provision", unit="unit", file=sys.stderr,
                disable=None if enabled else True)


def _fmt_size(n: int) -> str:
    return f"{n} B" if n < 10_000 else f"{n / 1024:.1f} KiB"


def describe_bundle(bundle: Bundle, out: Path) -> str:
    """What would be written for ``bundle``: paths, modes, sizes. Never a secret's value."""
    u = bundle.unit
    lines = [f"{out / u.serial / BUNDLE_DIR}/  (serial {u.serial}, name {u.name or '-'}, "
             f"site {u.site or '-'}, checksum {bundle.checksum[:19]}…)"]
    for f in bundle.files:
        extra = f"  [secret {f.note}; value redacted]" if f.secret else (f"  [{f.note}]" if f.note else "")
        lines.append(f"  {f.mode:04o}  {_fmt_size(len(f.content)):>9}  {f.relpath}{extra}")
    return "\n".join(lines)


def provision(fleet_path: Path | str, csv_path: Path | str, out: Path | str, *,
              only: list[str] | None = None, dry_run: bool = False, keep_going: bool = False,
              progress: bool = True, stdout=None, stderr=None) -> int:
    """Plan every unit, then (unless ``dry_run``) write the bundles. Returns an exit code:
    0 done, 1 errors (named on ``stderr``)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    out = Path(out)
    csv_path = Path(csv_path)
    try:
        fleet = load_fleet(fleet_path)
        units = read_units(csv_path, fleet)
    except ProvisionError as exc:
        print(f"voxbox provision: {exc}", file=stderr)
        return 1
    if only:
        known = {u.serial for u in units}
        missing = [s for s in only if s not in known]
        if missing:
            print(f"voxbox provision: --only: serial(s) not in {csv_path}: {', '.join(missing)}", file=stderr)
            return 1
        units = [u for u in units if u.serial in set(only)]
    bundles: list[Bundle] = []
    errors: list[str] = []
    now = _dt.datetime.now(_dt.timezone.utc)
    for unit in units:
        try:
            bundles.append(plan_unit(fleet, unit, out, csv_path.name, now))
        except ProvisionError as exc:
            errors.append(str(exc))
    for e in errors:
        print(f"voxbox provision: {e}", file=stderr)
    if errors and not keep_going:
        print(f"voxbox provision: {len(errors)} of {len(units)} unit(s) have errors; nothing written"
              + ("" if dry_run else " (--keep-going writes the valid units)"), file=stderr)
        return 1
    if dry_run:
        print(f"dry run: fleet {fleet.name}, {len(bundles)} unit(s), nothing written", file=stdout)
        for b in bundles:
            print(describe_bundle(b, out), file=stdout)
        if any(b.generated for b in bundles):
            print(f"{out / GENERATED_MANIFEST}  0600  (generated secrets, values redacted)", file=stdout)
        return 1 if errors else 0
    if not out.exists():
        out.mkdir(parents=True, mode=0o700)
        os.chmod(out, 0o700)
    for b in _progress(bundles, progress):
        write_bundle(b, out)
    manifest = _write_manifest(out, bundles)
    print(f"provisioned {len(bundles)} unit(s) of fleet {fleet.name} into {out}/<serial>/{BUNDLE_DIR}/"
          f"; copy that directory to the root of each card's boot partition", file=stdout)
    if manifest:
        print(f"generated secrets recorded in {manifest} (mode 0600): register them, then delete it",
              file=stdout)
    return 1 if errors else 0


# --------------------------------------------------------------------------- CLI


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``provision`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "provision", help="build per-unit SD-card bundles for a fleet",
        description="Build <out>/<serial>/voxbox/ (config.toml, credentials/, identity.toml) for "
                    "every unit of UNITS_CSV, from the fleet defaults and secret policies in FLEET.")
    p.add_argument("fleet", metavar="FLEET", type=Path, help="fleet file (TOML)")
    p.add_argument("units", metavar="UNITS_CSV", type=Path, help="units CSV (serial, name, site, section.key...)")
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("out/provision"),
                   help="output directory (default out/provision)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be written (paths, modes, sizes; secrets redacted), write nothing")
    p.add_argument("--only", metavar="SERIAL", nargs="+", action="extend", default=None,
                   help="provision only these serials (repeatable; put it after FLEET and UNITS_CSV)")
    p.add_argument("--keep-going", action="store_true",
                   help="write the valid units even when others have errors (exit status still 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_provision)
    return p


def cmd_provision(args: argparse.Namespace) -> int:
    return provision(args.fleet, args.units, args.out, only=args.only, dry_run=args.dry_run,
                     keep_going=args.keep_going, progress=not args.no_progress)
