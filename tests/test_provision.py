"""Fleet provisioning (``voxbox provision``) and first boot (``voxbox.field.firstboot``)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from voxbox.config import load_config
from voxbox.field.firstboot import FirstBootError, install, wipe
from voxbox.field.provision import add_parser, bundle_checksum, cmd_provision

REPO = Path(__file__).resolve().parents[1]
KEY1 = "sk-test-UNIT1-aaaaaaaaaaaaaaaaaaaaaaaa"
KEY2 = "sk-test-UNIT2-bbbbbbbbbbbbbbbbbbbbbbbb"
KEY3 = "sk-test-UNIT3-cccccccccccccccccccccccc"

FLEET = """\
[fleet]
name = "acme-lobbies"

[realtime]
dialect = "openai-ga"
voice = "marin"

[realtime.turn_detection]
type = "server_vad"

[audio]
capture_device = "plughw:CARD=seeed2micvoicec,DEV=0"
playback_device = "plughw:CARD=seeed2micvoicec,DEV=0"

[gpio]
button = 17

[secrets.voxbox-api-key]
source = "column"
column = "api_key"

[secrets.broker-secret]
source = "generate"
bytes = 24
"""


def write_units(path: Path, rows: list[dict[str, str]]) -> Path:
    cols = ["serial", "name", "site", "api_key", "audio.capture_device", "gpio.button",
            "realtime.turn_detection.type", "# notes"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    return path


UNITS = [
    {"serial": "VB-0001", "name": "Lobby 1", "site": "HQ", "api_key": KEY1,
     "audio.capture_device": "plughw:CARD=Array,DEV=0", "gpio.button": "23", "# notes": "by the door"},
    {"serial": "VB-0002", "name": "Lobby 2", "site": "HQ", "api_key": KEY2,
     "realtime.turn_detection.type": "semantic_vad"},
    {"serial": "VB-0003", "name": "Annex", "site": "Annex", "api_key": KEY3},
]


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, Path, Path]:
    f = tmp_path / "fleet.toml"
    f.write_text(FLEET)
    units = write_units(tmp_path / "units.csv", UNITS)
    return f, units, tmp_path / "out"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def run_provision(capsys, *argv: str) -> tuple[int, str, str]:
    import argparse

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    rc = cmd_provision(p.parse_args(["provision", *argv, "--no-progress"]))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------ provision


def test_bundle_contents_modes_and_overrides(fleet, capsys):
    f, units, out = fleet
    rc, stdout, stderr = run_provision(capsys, str(f), str(units), "--out", str(out))
    assert rc == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["VB-0001", "VB-0002", "VB-0003", "generated-secrets.csv"]
    b = out / "VB-0001" / "voxbox"
    assert sorted(tree(b)) == ["config.toml", "credentials/broker-secret", "credentials/voxbox-api-key",
                               "identity.toml"]
    assert mode(b / "config.toml") == 0o644
    assert mode(b / "identity.toml") == 0o644
    assert mode(b / "credentials") == 0o700
    assert mode(b / "credentials" / "voxbox-api-key") == 0o600
    assert mode(b / "credentials" / "broker-secret") == 0o600
    assert mode(out) == 0o700
    assert (b / "credentials" / "voxbox-api-key").read_text() == KEY1
    assert len((b / "credentials" / "broker-secret").read_text()) >= 32  # token_urlsafe(24)

    # overrides on top of the fleet defaults; the file is a valid config
    cfg1 = load_config(b / "config.toml")
    assert cfg1.audio.capture_device == "plughw:CARD=Array,DEV=0"
    assert cfg1.audio.playback_device == "plughw:CARD=seeed2micvoicec,DEV=0"
    assert cfg1.gpio.button == 23
    assert cfg1.realtime.turn_detection.type == "server_vad"
    cfg2 = load_config(out / "VB-0002" / "voxbox" / "config.toml")
    assert cfg2.realtime.turn_detection.type == "semantic_vad"
    assert cfg2.audio.capture_device == "plughw:CARD=seeed2micvoicec,DEV=0" and cfg2.gpio.button == 17
    text = (b / "config.toml").read_text()
    assert KEY1 not in text and "sk-" not in text and "by the door" not in text

    ident = tomllib.loads((b / "identity.toml").read_text())
    assert (ident["serial"], ident["name"], ident["site"], ident["fleet"]) == \
        ("VB-0001", "Lobby 1", "HQ", "acme-lobbies")
    assert ident["provisioned_at"].tzinfo is not None
    assert ident["bundle"]["files"] == ["config.toml", "credentials/broker-secret", "credentials/voxbox-api-key"]
    assert ident["bundle"]["checksum"] == bundle_checksum(tree(b))
    assert KEY1 not in (b / "identity.toml").read_text()

    # generated secrets are recorded (0600) for registration with the backend
    manifest = out / "generated-secrets.csv"
    assert mode(manifest) == 0o600
    rows = list(csv.DictReader(manifest.open()))
    assert {(r["serial"], r["credential"]) for r in rows} == {(s, "broker-secret") for s in
                                                              ("VB-0001", "VB-0002", "VB-0003")}
    assert {r["value"] for r in rows if r["serial"] == "VB-0001"} == \
        {(b / "credentials" / "broker-secret").read_text()}
    for key in (KEY1, KEY2, KEY3):
        assert key not in stdout + stderr


def test_reprovision_replaces_bundle_and_keeps_generated_secret(fleet, capsys):
    f, units, out = fleet
    assert run_provision(capsys, str(f), str(units), "--out", str(out))[0] == 0
    broker = (out / "VB-0002/voxbox/credentials/broker-secret").read_text()
    rows = [dict(u) for u in UNITS]
    rows[1]["gpio.button"] = "22"
    write_units(units, rows)
    rc, _, err = run_provision(capsys, str(f), str(units), "--out", str(out), "--only", "VB-0002")
    assert rc == 0, err
    assert load_config(out / "VB-0002/voxbox/config.toml").gpio.button == 22
    assert (out / "VB-0002/voxbox/credentials/broker-secret").read_text() == broker
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert len(list(csv.DictReader((out / "generated-secrets.csv").open()))) == 3


@pytest.mark.parametrize("column,value,expect", [
    ("gpio.button", "99", "gpio.button"),
    ("gpio.button", "twelve", "gpio.button"),
    ("realtime.turn_detection.type", "shouting", "realtime.turn_detection.type"),
    ("gpio.button", "12", "gpio.button and gpio.led are the same pin"),
])
def test_bad_csv_value_names_serial_and_key_and_writes_nothing(fleet, capsys, column, value, expect):
    f, units, out = fleet
    rows = [dict(u) for u in UNITS]
    rows[1][column] = value
    write_units(units, rows)
    rc, stdout, err = run_provision(capsys, str(f), str(units), "--out", str(out))
    assert rc == 1
    assert "VB-0002" in err and "line 3" in err and expect in err and "units.csv" in err
    assert "VB-0001" not in err and "VB-0003" not in err
    assert not out.exists()  # all-or-nothing by default

    # --keep-going writes the good units; the bad one is not written, not even partly,
    # and an earlier bundle of it is left as it was
    old = out / "VB-0002" / "voxbox"
    old.mkdir(parents=True)
    (old / "config.toml").write_text("# previous\n")
    rc, _, err = run_provision(capsys, str(f), str(units), "--out", str(out), "--keep-going")
    assert rc == 1 and "VB-0002" in err
    assert (out / "VB-0001/voxbox/config.toml").exists() and (out / "VB-0003/voxbox/config.toml").exists()
    assert tree(out / "VB-0002") == {"voxbox/config.toml": b"# previous\n"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_unknown_column_and_missing_secret_are_named(fleet, capsys, tmp_path):
    f, units, out = fleet
    text = units.read_text().replace("audio.capture_device", "audio.capture_devcie", 1)
    units.write_text(text)
    rc, _, err = run_provision(capsys, str(f), str(units), "--out", str(out))
    assert rc == 1 and "audio.capture_devcie" in err and "not a configuration key" in err

    rows = [dict(u) for u in UNITS]
    rows[2]["api_key"] = ""
    write_units(units, rows)
    rc, _, err = run_provision(capsys, str(f), str(units), "--out", str(out))
    assert rc == 1 and "VB-0003" in err and "voxbox-api-key" in err and "api_key" in err
    assert not out.exists()

    rows[2]["api_key"] = KEY3
    rows[2]["name"] = "Annex\x00"
    write_units(units, rows)
    rc, _, err = run_provision(capsys, str(f), str(units), "--out", str(out))
    assert rc == 1 and "VB-0003" in err and "control characters" in err
    assert not out.exists()


def test_fleet_file_errors_are_named(tmp_path, capsys):
    f = tmp_path / "fleet.toml"
    f.write_text('[fleet]\nname = "x"\ncolour = "red"\n[audio]\nperiods = 99\n'
                 '[secrets.voxbox-api-key]\nsource = "column"\n')
    units = write_units(tmp_path / "units.csv", UNITS)
    rc, _, err = run_provision(capsys, str(f), str(units), "--out", str(tmp_path / "out"))
    assert rc == 1
    assert "fleet.colour: unknown key" in err
    assert "audio.periods" in err
    assert "secrets.voxbox-api-key" in err and "column" in err


def test_secret_file_per_serial(tmp_path, capsys):
    (tmp_path / "keys").mkdir()
    for s in ("VB-0001", "VB-0002"):
        (tmp_path / "keys" / f"{s}.key").write_text(f"key-for-{s}\n")
    f = tmp_path / "fleet.toml"
    f.write_text('[fleet]\nname = "files"\n[secrets.voxbox-api-key]\nsource = "file"\n'
                 'path = "keys/{serial}.key"\n')
    units = tmp_path / "units.csv"
    units.write_text("serial,name,site\nVB-0001,a,s\nVB-0002,b,s\nVB-0003,c,s\n")
    out = tmp_path / "out"
    rc, _, err = run_provision(capsys, str(f), str(units), "--out", str(out))
    assert rc == 1 and "VB-0003" in err and "VB-0003.key" in err and "not found" in err
    assert not out.exists()
    rc, _, err = run_provision(capsys, str(f), str(units), "--out", str(out), "--only", "VB-0001", "VB-0002")
    assert rc == 0, err
    assert (out / "VB-0002/voxbox/credentials/voxbox-api-key").read_text() == "key-for-VB-0002"
    assert sorted(p.name for p in out.iterdir()) == ["VB-0001", "VB-0002"]  # nothing generated


def test_no_api_key_policy_is_an_error_unless_local(tmp_path, capsys):
    f = tmp_path / "fleet.toml"
    f.write_text('[fleet]\nname = "bench"\n')
    units = tmp_path / "units.csv"
    units.write_text("serial,name,site,realtime.url\nB-1,a,lab,local\nB-2,b,lab,\n")
    rc, _, err = run_provision(capsys, str(f), str(units), "--out", str(tmp_path / "out"))
    assert rc == 1 and "B-2" in err and "secrets.voxbox-api-key" in err and "B-1" not in err
    rc, _, err = run_provision(capsys, str(f), str(units), "--out", str(tmp_path / "out"), "--only", "B-1")
    assert rc == 0, err
    assert sorted(tree(tmp_path / "out" / "B-1" / "voxbox")) == ["config.toml", "identity.toml"]


def test_dry_run_writes_nothing_and_never_prints_a_secret(fleet, capsys):
    f, units, out = fleet
    rc, stdout, err = run_provision(capsys, str(f), str(units), "--out", str(out), "--dry-run")
    assert rc == 0, err
    assert not out.exists()
    for s in ("VB-0001", "VB-0002", "VB-0003"):
        assert str(out / s / "voxbox") in stdout
    assert "0600" in stdout and "credentials/voxbox-api-key" in stdout and "redacted" in stdout
    assert "0644" in stdout and "config.toml" in stdout and "identity.toml" in stdout
    assert " B  " in stdout  # sizes
    for key in (KEY1, KEY2, KEY3):
        assert key not in stdout + err

    # with bundles already in --out, the (reused) generated secrets are known: still redacted
    assert run_provision(capsys, str(f), str(units), "--out", str(out))[0] == 0
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    rc, stdout, err = run_provision(capsys, str(f), str(units), "--out", str(out), "--dry-run")
    assert rc == 0
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert before == after
    for p in out.rglob("credentials/*"):
        assert p.read_text() not in stdout + err


def test_dry_run_reports_errors_without_secrets(fleet, capsys):
    f, units, out = fleet
    rows = [dict(u) for u in UNITS]
    rows[0]["gpio.button"] = "40"
    write_units(units, rows)
    rc, stdout, err = run_provision(capsys, str(f), str(units), "--out", str(out), "--dry-run")
    assert rc == 1 and "VB-0001" in err and "gpio.button" in err
    assert not out.exists() and KEY1 not in stdout + err


def test_only_unknown_serial(fleet, capsys):
    f, units, out = fleet
    rc, _, err = run_provision(capsys, str(f), str(units), "--out", str(out), "--only", "VB-9999")
    assert rc == 1 and "VB-9999" in err and not out.exists()


def test_module_entry_point_with_progress(fleet):
    f, units, out = fleet
    res = subprocess.run([sys.executable, "-m", "voxbox", "provision", str(f), str(units), "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "provisioned 3 unit(s)" in res.stdout
    assert KEY1 not in res.stdout + res.stderr


# ------------------------------------------------------------------------ first boot


@pytest.fixture
def card(fleet, capsys) -> tuple[Path, Path, Path]:
    """A boot partition with VB-0001's bundle copied onto it, and an empty /etc."""
    f, units, out = fleet
    assert run_provision(capsys, str(f), str(units), "--out", str(out))[0] == 0
    boot = out.parent / "boot"
    boot.mkdir()
    shutil.copytree(out / "VB-0001" / "voxbox", boot / "voxbox")
    return out / "VB-0001" / "voxbox", boot, out.parent / "etc" / "voxbox"


def run_firstboot(boot: Path, etc: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
    return subprocess.run([sys.executable, "-m", "voxbox.field.firstboot", "--boot-dir", str(boot),
                           "--etc-dir", str(etc), "--log-format", "json", *extra],
                          capture_output=True, text=True, env=env)


def records(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root to chown (runs, and must pass, in CI)")
def test_firstboot_installs_modes_owners_and_wipes(card):
    src, boot, etc = card
    res = run_firstboot(boot, etc, "--config-group", "no-such-group-voxbox")
    assert res.returncode == 0, res.stderr
    assert not (boot / "voxbox").exists()
    assert sorted(tree(etc)) == ["config.toml", "credentials/broker-secret", "credentials/voxbox-api-key",
                                 "identity.toml"]
    assert (etc / "config.toml").read_bytes() == (src / "config.toml").read_bytes()
    assert (etc / "credentials/voxbox-api-key").read_text() == KEY1
    for rel, m in [("config.toml", 0o644), ("identity.toml", 0o644), ("credentials", 0o700),
                   ("credentials/voxbox-api-key", 0o600), ("credentials/broker-secret", 0o600)]:
        st = (etc / rel).stat()
        assert stat.S_IMODE(st.st_mode) == m, rel
        assert (st.st_uid, st.st_gid) == (0, 0), rel
    assert load_config(etc / "config.toml").audio.capture_device == "plughw:CARD=Array,DEV=0"
    ident = tomllib.loads((etc / "identity.toml").read_text())
    assert ident["serial"] == "VB-0001" and ident["fleet"] == "acme-lobbies"
    assert ident["firstboot"]["source"] == str(boot / "voxbox")
    assert ident["bundle"]["checksum"] == tomllib.loads((src / "identity.toml").read_text())["bundle"]["checksum"]

    recs = records(res.stderr)
    assert len(recs) == 1, res.stderr
    r = recs[0]
    assert r["VOXBOX_EVENT"] == "firstboot" and r["VOXBOX_RESULT"] == "installed"
    assert r["VOXBOX_SERIAL"] == "VB-0001" and r["VOXBOX_FLEET"] == "acme-lobbies"
    assert str(boot / "voxbox/credentials/voxbox-api-key") in r["VOXBOX_WIPED"]
    assert str(etc / "credentials/voxbox-api-key") in r["VOXBOX_INSTALLED"]
    assert "no-such-group-voxbox" in r["msg"]
    assert KEY1 not in res.stderr + res.stdout

    # idempotent: no bundle, nothing changes
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in etc.rglob("*") if p.is_file()}
    res2 = run_firstboot(boot, etc)
    assert res2.returncode == 0, res2.stderr
    (r2,) = records(res2.stderr)
    assert r2["VOXBOX_EVENT"] == "firstboot" and r2["VOXBOX_RESULT"] == "nothing-to-do"
    assert before == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in etc.rglob("*") if p.is_file()}


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root to chown (runs, and must pass, in CI)")
def test_firstboot_config_group(card):
    src, boot, etc = card
    res = install(boot, etc, config_group="daemon")  # gid 1 on Debian
    import grp

    assert res.result == "installed"
    assert (etc / "config.toml").stat().st_gid == grp.getgrnam("daemon").gr_gid
    assert (etc / "credentials/voxbox-api-key").stat().st_gid == 0


def test_firstboot_finishes_an_interrupted_run(card):
    src, boot, etc = card
    assert install(boot, etc, config_group="root").result == "installed"
    # crash after installing and wiping the secrets, before removing the rest
    shutil.copytree(src, boot / "voxbox")
    for p in (boot / "voxbox" / "credentials").iterdir():
        p.unlink()
    res = install(boot, etc, config_group="root")
    assert res.result == "installed" and not (boot / "voxbox").exists()
    assert (etc / "credentials/voxbox-api-key").read_text() == KEY1
    # crash after identity.toml went, leftovers only
    (boot / "voxbox" / "credentials").mkdir(parents=True)
    res = install(boot, etc, config_group="root")
    assert res.result == "nothing-to-do" and not (boot / "voxbox").exists()
    # a re-provisioned card replaces the installed files
    shutil.copytree(src.parent.parent / "VB-0002" / "voxbox", boot / "voxbox")
    assert install(boot, etc, config_group="root").serial == "VB-0002"
    assert (etc / "credentials/voxbox-api-key").read_text() == KEY2


def test_firstboot_refuses_a_corrupt_bundle_and_changes_nothing(card):
    src, boot, etc = card
    cfg = boot / "voxbox" / "config.toml"
    cfg.write_text(cfg.read_text().replace("Array", "Arrey"))
    with pytest.raises(FirstBootError, match="checksum mismatch"):
        install(boot, etc)
    assert not etc.exists()
    assert (boot / "voxbox/credentials/voxbox-api-key").read_text() == KEY1
    res = run_firstboot(boot, etc)
    assert res.returncode == 1
    (r,) = records(res.stderr)
    assert r["VOXBOX_EVENT"] == "firstboot" and r["VOXBOX_RESULT"] == "failed" and "checksum" in r["msg"]
    assert KEY1 not in res.stderr


def test_firstboot_rejects_paths_outside_the_bundle(card):
    src, boot, etc = card
    ident = boot / "voxbox" / "identity.toml"
    ident.write_text(ident.read_text().replace('"credentials/broker-secret"', '"../../etc/shadow"'))
    with pytest.raises(FirstBootError, match="bad file list"):
        install(boot, etc)
    assert not etc.exists()


def test_wipe_overwrites_before_unlinking(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(KEY1)
    os.link(secret, tmp_path / "peek")  # a second name for the same clusters
    wipe(secret)
    assert not secret.exists()
    data = (tmp_path / "peek").read_bytes()
    assert len(data) == len(KEY1) and data != KEY1.encode()


def test_firstboot_unit_verifies(tmp_path):
    unit = (REPO / "provisioning" / "voxbox-firstboot.service").read_text()
    assert "ConditionPathExists=/boot/firmware/voxbox" in unit
    assert "Type=oneshot" in unit and "Before=voxbox.service" in unit
    assert "--boot-dir /boot/firmware --etc-dir /etc/voxbox" in unit
    assert "/opt/voxbox/venv/bin/python -m voxbox.field.firstboot" in unit
    (tmp_path / "voxbox-firstboot.service").write_text(
        unit.replace("/opt/voxbox/venv/bin/python", sys.executable))
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "voxbox-firstboot.service")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=true",
                          str(tmp_path / "voxbox-firstboot.service")], capture_output=True, text=True)
    line = [l for l in sec.stdout.splitlines() if "Overall exposure level" in l][0]
    assert float(line.split(":")[1].split()[0]) <= 2.0, line
