"""First boot: install the provisioning bundle from the boot partition into ``/etc/voxbox``.

``voxbox-firstboot.service`` (a oneshot with ``ConditionPathExists=/boot/firmware/voxbox``,
ordered before ``voxbox.service``) runs ``python -m voxbox.field.firstboot``, which:

1. reads ``<boot>/voxbox/identity.toml`` (written by ``voxbox provision``) and re-computes
   the bundle checksum over the files it lists; a corrupt or edited bundle is refused and
   left in place (the unit fails, nothing is installed);
2. validates ``config.toml`` with :func:`voxbox.config.parse_config` (refused likewise);
3. installs, each file atomically (temporary file, ``fsync``, rename):

   - ``/etc/voxbox/config.toml``                   0644 root:voxbox (root:root without a
     ``voxbox`` group)
   - ``/etc/voxbox/credentials/``                  0700 root:root
   - ``/etc/voxbox/credentials/voxbox-api-key``    0600 root:root (systemd's
     ``LoadCredential=`` reads it as root and hands a copy to the daemon)
   - ``/etc/voxbox/identity.toml``                 0644 root:root, the bundle's identity plus
     ``[firstboot] installed_at`` and ``source``;
4. overwrites each secret on the boot partition with random bytes, ``fsync``\\ s, unlinks it,
   then removes the rest of the bundle (so the condition is false on the next boot);
5. logs one record, ``VOXBOX_EVENT=firstboot`` with ``VOXBOX_RESULT`` (installed,
   nothing-to-do or failed), ``VOXBOX_SERIAL``, ``VOXBOX_FLEET``, ``VOXBOX_SITE``,
   ``VOXBOX_CHECKSUM``, ``VOXBOX_INSTALLED`` and ``VOXBOX_WIPED`` (to journald under systemd).

It is idempotent: with no bundle it does nothing; if a previous run stopped after installing
but before removing the bundle, a re-run installs the same files again (a secret already
wiped from the boot partition is taken from ``/etc/voxbox`` for the checksum) and finishes.

**Secure delete on the boot partition is best effort.** The boot partition is FAT: the vfat
driver does rewrite a file's clusters in place, so the overwrite hides the secret from
anyone reading the filesystem afterwards, but the SD card's flash translation layer remaps
writes to fresh pages and may keep the old ones until it garbage-collects them, and FAT
keeps no permissions, so the secret was readable by anyone who handled the card before first
boot (and by any process that could read ``/boot/firmware`` until this unit ran). Treat
bundle secrets as exposed to whoever handles the cards: use per-unit keys that can be
revoked, and rotate them after installation where the backend allows it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import grp
import logging
import os
import pwd
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxbox.config import ConfigError, parse_config
from voxbox.errors import FirstBootError  # noqa: F401 (re-exported)
from voxbox.field.provision import BUNDLE_DIR, CONFIG, CREDENTIALS, IDENTITY, SAFE_NAME, bundle_checksum, toml_dumps

DEFAULT_BOOT_DIR = Path("/boot/firmware")
DEFAULT_ETC_DIR = Path("/etc/voxbox")

log = logging.getLogger("voxbox.field.firstboot")


@dataclass
class Result:
    result: str  # installed | nothing-to-do
    bundle: Path
    serial: str = ""
    fleet: str = ""
    site: str = ""
    name: str = ""
    checksum: str = ""
    installed: list[str] = field(default_factory=list)
    wiped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def lookup_ids(user: str = "root", group: str = "root") -> tuple[int, int, list[str]]:
    """(uid, gid, notes). A missing user or group falls back to root (0) with a note."""
    notes = []
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        uid = 0
        notes.append(f"user {user!r} not found, using root")
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = 0
        notes.append(f"group {group!r} not found, using root")
    return uid, gid, notes


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (vfat on older kernels) refuse fsync on a directory
    finally:
        os.close(fd)


def _install_file(path: Path, data: bytes, mode: int, uid: int, gid: int, chown: bool) -> None:
    """Atomically replace ``path`` with ``data``: mode and owner are set before the rename."""
    tmp = path.with_name(f".{path.name}.firstboot-tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if chown:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def _ensure_dir(path: Path, mode: int, uid: int, gid: int, chown: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if chown:
        os.chown(path, uid, gid)
    os.chmod(path, mode)


def wipe(path: Path) -> None:
    """Overwrite ``path`` with random bytes, fsync, then unlink it (best effort on flash/FAT)."""
    size = path.stat().st_size
    with open(path, "r+b", buffering=0) as fh:
        remaining = size
        while remaining > 0:
            n = min(remaining, 1 << 16)
            fh.write(os.urandom(n))
            remaining -= n
        os.fsync(fh.fileno())
    path.unlink()


def _check_rel(rel: str) -> bool:
    if rel == CONFIG:
        return True
    parts = rel.split("/")
    return len(parts) == 2 and parts[0] == CREDENTIALS and bool(SAFE_NAME.match(parts[1]))


def install(boot_dir: Path | str = DEFAULT_BOOT_DIR, etc_dir: Path | str = DEFAULT_ETC_DIR, *,
            config_group: str = "voxbox", chown: bool | None = None,
            now: _dt.datetime | None = None) -> Result:
    """Install ``<boot_dir>/voxbox`` into ``etc_dir`` and remove it from the boot partition.

    Args:
        chown: set owners (default: when running as root).

    Raises:
        FirstBootError: a missing/corrupt identity, checksum mismatch, invalid config,
            missing file. Nothing is installed or removed then.
    """
    boot_dir, etc_dir = Path(boot_dir), Path(etc_dir)
    bundle = boot_dir / BUNDLE_DIR
    if not bundle.is_dir():
        return Result("nothing-to-do", bundle)
    chown = (os.geteuid() == 0) if chown is None else chown
    if not (bundle / IDENTITY).exists() and not (bundle / CONFIG).exists():
        # what an interrupted removal leaves behind (identity.toml goes last): finish it
        shutil.rmtree(bundle)
        res = Result("nothing-to-do", bundle)
        res.notes.append("removed the remains of an already installed bundle")
        return res
    try:
        identity: dict[str, Any] = tomllib.loads((bundle / IDENTITY).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FirstBootError(f"{bundle / IDENTITY}: missing (not a voxbox provision bundle?)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FirstBootError(f"{bundle / IDENTITY}: unreadable: {exc}") from None
    meta = identity.get("bundle", {})
    files, checksum = meta.get("files"), meta.get("checksum")
    serial = identity.get("serial")
    if not (isinstance(files, list) and isinstance(checksum, str) and isinstance(serial, str)):
        raise FirstBootError(f"{bundle / IDENTITY}: needs serial and [bundle] files, checksum")
    bad = [f for f in files if not (isinstance(f, str) and _check_rel(f))]
    if bad or CONFIG not in files:
        raise FirstBootError(f"{bundle / IDENTITY}: bad file list {files!r} "
                             "(expected config.toml and credentials/<name>)")
    res = Result("installed", bundle, serial, str(identity.get("fleet", "")),
                 str(identity.get("site", "")), str(identity.get("name", "")), checksum)

    content: dict[str, bytes] = {}
    for rel in files:
        src = bundle / rel
        if src.is_file():
            content[rel] = src.read_bytes()
        elif rel.startswith(CREDENTIALS + "/") and (etc_dir / rel).is_file():
            content[rel] = (etc_dir / rel).read_bytes()  # wiped by an earlier, interrupted run
            res.notes.append(f"{rel} already installed by an earlier run")
        else:
            raise FirstBootError(f"{src}: missing from the bundle")
    actual = bundle_checksum(content)
    if actual != checksum:
        raise FirstBootError(f"{bundle}: checksum mismatch (identity says {checksum}, files give "
                             f"{actual}): the bundle is corrupt or was edited; re-provision the card")
    try:
        parse_config(tomllib.loads(content[CONFIG].decode("utf-8")), str(bundle / CONFIG))
    except (ConfigError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FirstBootError(f"{bundle / CONFIG}: {exc}") from None
    from voxbox.host.sd import redact

    for rel, data in content.items():
        if rel != CONFIG:
            redact(data.decode("utf-8", "replace").strip())

    _, cfg_gid, notes = lookup_ids("root", config_group)
    res.notes += notes
    _ensure_dir(etc_dir, 0o755, 0, 0, chown)
    creds = [rel for rel in files if rel != CONFIG]
    if creds:
        _ensure_dir(etc_dir / CREDENTIALS, 0o700, 0, 0, chown)
    _install_file(etc_dir / CONFIG, content[CONFIG], 0o644, 0, cfg_gid, chown)
    res.installed.append(str(etc_dir / CONFIG))
    for rel in creds:
        _install_file(etc_dir / rel, content[rel], 0o600, 0, 0, chown)
        res.installed.append(str(etc_dir / rel))
    now = now or _dt.datetime.now(_dt.timezone.utc)
    identity["firstboot"] = {"installed_at": now.replace(microsecond=0), "source": str(bundle)}
    _install_file(etc_dir / IDENTITY, toml_dumps(identity, "Voxbox unit identity").encode(),
                  0o644, 0, 0, chown)
    res.installed.append(str(etc_dir / IDENTITY))
    if creds:
        _fsync_dir(etc_dir / CREDENTIALS)
    _fsync_dir(etc_dir)

    # Only now that /etc/voxbox is complete and synced: remove the secrets, then the rest.
    for rel in creds:
        src = bundle / rel
        if src.is_file():
            wipe(src)
            res.wiped.append(str(src))
    if creds:
        _fsync_dir(bundle / CREDENTIALS)
    (bundle / CONFIG).unlink(missing_ok=True)
    _fsync_dir(bundle)
    (bundle / IDENTITY).unlink()  # last: its absence means "installed" to a re-run
    shutil.rmtree(bundle)
    _fsync_dir(boot_dir)
    return res


def run(args: argparse.Namespace) -> int:
    from voxbox.host.sd import setup_logging

    setup_logging(args.log_format, "info")
    try:
        res = install(args.boot_dir, args.etc_dir, config_group=args.config_group)
    except (FirstBootError, OSError) as exc:
        log.error("first boot: not installed: %s", exc,
                  extra={"VOXBOX_EVENT": "firstboot", "VOXBOX_RESULT": "failed",
                         "VOXBOX_BUNDLE": str(Path(args.boot_dir) / BUNDLE_DIR)})
        return 1
    if res.result == "nothing-to-do":
        log.info("first boot: no bundle at %s, nothing to do%s", res.bundle,
                 "".join(f"; {n}" for n in res.notes),
                 extra={"VOXBOX_EVENT": "firstboot", "VOXBOX_RESULT": res.result,
                        "VOXBOX_BUNDLE": str(res.bundle)})
        return 0
    log.info("first boot: installed unit %s (fleet %s, site %s) into %s; wiped %d secret(s) from %s%s",
             res.serial, res.fleet or "-", res.site or "-", args.etc_dir, len(res.wiped), res.bundle,
             "".join(f"; {n}" for n in res.notes),
             extra={"VOXBOX_EVENT": "firstboot", "VOXBOX_RESULT": res.result,
                    "VOXBOX_SERIAL": res.serial, "VOXBOX_FLEET": res.fleet, "VOXBOX_SITE": res.site,
                    "VOXBOX_CHECKSUM": res.checksum, "VOXBOX_BUNDLE": str(res.bundle),
                    "VOXBOX_INSTALLED": ",".join(res.installed), "VOXBOX_WIPED": ",".join(res.wiped)})
    return 0


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--boot-dir", type=Path, default=DEFAULT_BOOT_DIR,
                   help=f"boot partition mount point holding voxbox/ (default {DEFAULT_BOOT_DIR})")
    p.add_argument("--etc-dir", type=Path, default=DEFAULT_ETC_DIR,
                   help=f"where to install (default {DEFAULT_ETC_DIR})")
    p.add_argument("--config-group", default="voxbox",
                   help="group of config.toml (default voxbox; root when the group does not exist)")
    p.add_argument("--log-format", choices=["auto", "text", "json", "journal"], default="auto")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``firstboot`` on an argparse subparsers object."""
    p = subparsers.add_parser("firstboot", help="install the provisioning bundle from the boot partition")
    _add_args(p)
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m voxbox.field.firstboot", description=__doc__.splitlines()[0])
    _add_args(p)
    return run(p.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
