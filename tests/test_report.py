"""``voxbox report`` (support archive, secrets scrubbed) and the journald field set."""
from __future__ import annotations

import argparse
import base64
import json
import re
import tarfile
import urllib.parse
from pathlib import Path

import pytest

from voxbox.field import report
from voxbox.field.report import (
    REDACTED,
    CmdResult,
    Paths,
    ReportError,
    Unavailable,
    build_report,
    journalctl_source,
    looks_secret,
    redact_tree,
    scrub_text,
    secret_forms,
)
from voxbox.host.journal_ids import MESSAGE_IDS, message_id

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-test-REPORT-0123456789abcdefghijklmnop"
OTHER = "sk-other-unit-credential-zyxwvutsrqponm"
UNIT_SET = "sk-setcredential-inline-9876543210qwerty"


def _variants(secret: str) -> list[bytes]:
    """What must not appear in any member: the value and its usual encodings."""
    raw = secret.encode()
    out = [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), base64.b64encode(raw).rstrip(b"="),
           urllib.parse.quote(secret, safe="").encode()]
    # embedded in a larger blob (an HTTP Basic header: "user:key")
    out.append(base64.b64encode(b"api:" + raw)[8:-4])
    return out


def _journal_lines() -> str:
    recs = [
        {"__REALTIME_TIMESTAMP": "1700000000000000", "MESSAGE": "voxbox 0.1.0 starting", "VOXBOX_EVENT": "start",
         "VOXBOX_VERSION": "0.1.0", "_SYSTEMD_UNIT": "voxbox.service"},
        {"__REALTIME_TIMESTAMP": "1700000001000000", "MESSAGE": f"oops, connecting with {KEY}",
         "VOXBOX_EVENT": "link_down", "VOXBOX_CAUSE": f"Bearer {KEY}"},
        {"__REALTIME_TIMESTAMP": "1700000002000000",
         "MESSAGE": "header Authorization: Basic " + base64.b64encode(f"api:{KEY}".encode()).decode(),
         "VOXBOX_EVENT": "protocol"},
        {"__REALTIME_TIMESTAMP": "1700000003000000", "MESSAGE": "b64 " + base64.b64encode(KEY.encode()).decode(),
         "VOXBOX_EVENT": "protocol"},
        # journalctl -o json writes non-printable messages as byte arrays
        {"__REALTIME_TIMESTAMP": "1700000004000000", "MESSAGE": list(f"\x07bell {KEY}".encode()),
         "VOXBOX_EVENT": "service_error"},
        {"__REALTIME_TIMESTAMP": "1700000005000000", "MESSAGE": "turn 1 done: latency_ms=812",
         "VOXBOX_EVENT": "turn", "VOXBOX_TURN": "1", "VOXBOX_LATENCY_MS": "812", "VOXBOX_ERL_DB": "12.5",
         "VOXBOX_ECHO_DELAY_MS": "41.25"},
        {"__REALTIME_TIMESTAMP": "1700000006000000", "MESSAGE": "user: what time is it",
         "VOXBOX_EVENT": "user_transcript"},
        {"__REALTIME_TIMESTAMP": "1700000007000000", "MESSAGE": f"env OPENAI_API_KEY={OTHER} leaked",
         "VOXBOX_EVENT": "config_error"},
    ]
    return "".join(json.dumps(r) + "\n" for r in recs) + "not json at all " + KEY + "\n"


CONFIG = f"""\
[realtime]
dialect = "openai-ga"
auth = "api-key"
api_key = "{KEY}"

[realtime.extra]
token = "{OTHER}"
headers = {{ "x-api-key" = "literal-header-secret-value" }}

[audio]
capture_device = "plughw:CARD=seeed2micvoicec,DEV=0"
"""


def _fake_run(calls: list[list[str]]):
    outputs = {
        "systemctl status": CmdResult([], 3, f"voxbox.service - Voxbox\n  Active: inactive\n  log: key {KEY}\n", ""),
        "systemctl show": CmdResult([], 0, "Id=voxbox.service\nNRestarts=4\nResult=watchdog\n", ""),
        "systemctl cat": CmdResult([], 0, "# /etc/systemd/system/voxbox.service\n[Service]\n"
                                   "LoadCredential=voxbox-api-key:/etc/voxbox/credentials/voxbox-api-key\n"
                                   f"SetCredential=voxbox-extra:{UNIT_SET}\n"
                                   "Environment=PYTHONUNBUFFERED=1 SOME_TOKEN=abcdef123456\n", ""),
        "aplay -l": CmdResult([], 0, "card 0: seeed2micvoicec [seeed2micvoicec]\n", ""),
    }

    def run(argv: list[str]) -> CmdResult:
        calls.append(argv)
        key = " ".join(argv[:2])
        if key in outputs:
            r = outputs[key]
            return CmdResult(argv, r.rc, r.stdout, r.stderr)
        raise Unavailable(f"{argv[0]} is not installed")

    return run


@pytest.fixture
def unit(tmp_path):
    """A fake unit: config, state dir with selftest.json, credentials, ALSA config."""
    etc = tmp_path / "etc" / "voxbox"
    (etc / "credentials").mkdir(parents=True)
    (etc / "credentials" / "voxbox-api-key").write_text(KEY + "\n")
    (etc / "identity.toml").write_text('serial = "VX-0042"\nfleet = "acme"\n')
    cfg = etc / "config.toml"
    cfg.write_text(CONFIG)
    creds = tmp_path / "run" / "credentials"
    creds.mkdir(parents=True)
    (creds / "voxbox-api-key").write_text(KEY)
    (creds / "other").write_text(OTHER + "\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "selftest.json").write_text(json.dumps({"ok": True, "erl_db": 14.2, "note": f"used {KEY}"}))
    asound = tmp_path / "asound.conf"
    asound.write_text(f"pcm.!default plughw:0\n# {KEY}\n")
    osr = tmp_path / "os-release"
    osr.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    journal = tmp_path / "journal.jsonl"
    journal.write_text(_journal_lines())
    paths = Paths(etc_dir=etc, state_dir=None, os_release=(osr,), asound_conf=asound,
                  alsa_conf_d=tmp_path / "nope", asound_cards=tmp_path / "nocards",
                  journald_dir=tmp_path / "no-journald")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "STATE_DIRECTORY": str(state), "PATH": "/usr/bin:/bin"}
    return {"tmp": tmp_path, "cfg": cfg, "paths": paths, "env": env, "journal": journal}


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _assert_clean(members: dict[str, bytes], *secrets: str) -> None:
    for name, data in members.items():
        for s in secrets:
            for v in _variants(s):
                assert v not in data, f"{s!r} form {v!r} found in {name}"


def _build(unit, **kw):
    out = unit["tmp"] / "out" / "report.tar.gz"
    calls: list[list[str]] = []
    kw.setdefault("journal_source", report.file_source(unit["journal"]))
    manifest = build_report(out, config_path=unit["cfg"], run=_fake_run(calls), environ=unit["env"],
                            paths=unit["paths"], **kw)
    return out, manifest, calls


def test_report_members_manifest_and_no_secret(unit):
    out, manifest, calls = _build(unit)
    assert out.stat().st_mode & 0o777 == 0o600
    m = _members(out)
    for name in ("README.txt", "manifest.json", "journal.jsonl", "config.toml", "identity.toml", "versions.json",
                 "os-release", "selftest.json", "etc-voxbox.txt", "alsa/asound.conf",
                 "commands/systemctl-status.txt", "commands/systemctl-show.txt", "commands/systemctl-cat.txt",
                 "commands/aplay-l.txt"):
        assert name in m, f"{name} missing: {sorted(m)}"
    _assert_clean(m, KEY, OTHER, UNIT_SET, "literal-header-secret-value")
    assert b"abcdef123456" not in m["commands/systemctl-cat.txt"]  # secret-looking Environment= name

    disk = json.loads(m["manifest.json"])
    assert disk["voxbox_report"] == 1
    included = {e["member"] for e in disk["included"]}
    assert included == set(m) - {"README.txt", "manifest.json"}
    missing = {e["item"]: e["reason"] for e in disk["unavailable"]}
    assert "is not installed" in missing["commands/arecord-l.txt"]
    assert missing["alsa/cards.txt"] == "not present"
    assert disk["redaction"]["known_secrets"] >= 3
    assert disk["redaction"]["replacements"] > 0
    assert disk["journal"]["records"] == 9 and disk["journal"]["events"]["protocol"] == 2
    assert disk["journal"]["first"] == "2023-11-14T22:13:20Z"

    # the config is parsed and redacted, the non-secrets kept
    cfg = m["config.toml"].decode()
    assert 'api_key = "<redacted>"' in cfg and 'token = "<redacted>"' in cfg
    assert 'auth = "api-key"' in cfg and "seeed2micvoicec" in cfg
    # journal: one JSON object per line, byte-array message turned into text and scrubbed
    recs = [json.loads(line) for line in m["journal.jsonl"].decode().splitlines() if line.startswith("{")]
    bell = next(r for r in recs if r["VOXBOX_EVENT"] == "service_error")
    assert bell["MESSAGE"] == f"\x07bell {REDACTED}"
    turn = next(r for r in recs if r["VOXBOX_EVENT"] == "turn")
    assert turn["VOXBOX_ERL_DB"] == "12.5" and turn["MESSAGE"] == "turn 1 done: latency_ms=812"
    assert json.loads(m["selftest.json"])["erl_db"] == 14.2
    versions = json.loads(m["versions.json"])
    assert versions["voxbox"] and versions["packages"]["numpy"] and versions["os_release"]["ID"] == "debian"
    assert "seeed2micvoicec" in m["commands/aplay-l.txt"].decode()
    assert b"NRestarts=4" in m["commands/systemctl-show.txt"]
    assert b"LoadCredential=voxbox-api-key:/etc/voxbox/credentials/voxbox-api-key" in m["commands/systemctl-cat.txt"]
    assert "voxbox.service" in [a for c in calls if c[:2] == ["systemctl", "status"] for a in c]


def test_missing_journal_is_recorded(unit):
    def no_journal(since):
        raise Unavailable("no journal: journald is not running")

    out, manifest, _ = _build(unit, journal_source=no_journal)
    m = _members(out)
    assert "journal.jsonl" not in m
    disk = json.loads(m["manifest.json"])
    j = next(e for e in disk["unavailable"] if e["item"] == "journal")
    assert "journald is not running" in j["reason"] and "2 days ago" in j["source"]
    assert disk["journal"] is None
    assert b"journald is not running" in m["README.txt"]


def test_journalctl_source_without_journald(tmp_path):
    calls = []

    def run(argv):
        calls.append(argv)
        return CmdResult(argv, 0, "", "")  # what journalctl does when journald never ran

    with pytest.raises(Unavailable, match="journald is not running"):
        journalctl_source(run, journald_dir=tmp_path / "absent")("1 hour ago")
    assert calls[0][:1] == ["journalctl"] and "--unit=voxbox.service" in calls[0]
    assert calls[0][-2:] == ["--since", "1 hour ago"] and "json" in calls[0]
    (tmp_path / "journal").mkdir()
    jt = journalctl_source(run, journald_dir=tmp_path / "journal")("1 hour ago")
    assert jt.text == "" and "no entries" in jt.note
    with pytest.raises(Unavailable, match="exited 1"):
        journalctl_source(lambda a: CmdResult(a, 1, "", "Failed to open journal"))("today")


def test_real_run_command_missing_binary():
    with pytest.raises(Unavailable, match="not installed"):
        report.run_command(["voxbox-no-such-tool-xyz"])
    assert report.run_command(["true"]).rc == 0


def test_transcripts_dropped(unit):
    out, _, _ = _build(unit, drop_transcripts=True)
    journal = _members(out)["journal.jsonl"].decode()
    assert "what time is it" not in journal and "<transcript removed>" in journal


def test_leak_detected_deletes_archive(unit, monkeypatch):
    monkeypatch.setattr(report, "scrub_text", lambda text, forms: (text, 0))  # scrubbing broken
    with pytest.raises(ReportError, match="survived scrubbing"):
        _build(unit)
    assert not (unit["tmp"] / "out" / "report.tar.gz").exists()
    assert not list((unit["tmp"] / "out").glob("*.tmp"))


def test_cli_exit_code_and_path(unit, monkeypatch, capsys):
    for k, v in unit["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("VOXBOX_API_KEY", KEY)
    monkeypatch.setenv(report.JOURNAL_FILE_ENV, str(unit["journal"]))
    monkeypatch.setattr(report, "run_command", _fake_run([]))
    monkeypatch.setattr(report, "Paths", lambda: unit["paths"])
    parser = argparse.ArgumentParser(prog="voxbox")
    report.add_parser(parser.add_subparsers(dest="command"))
    out = unit["tmp"] / "cli.tar.gz"
    args = parser.parse_args(["report", "--out", str(out), "--since", "3 hours ago", "--config", str(unit["cfg"])])
    assert args.func(args) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == str(out)
    assert "no commands/arecord-l.txt" in printed.err
    m = _members(out)
    _assert_clean(m, KEY, OTHER)
    assert json.loads(m["manifest.json"])["since"] == "3 hours ago"


def test_looks_secret_and_redact_tree():
    for name in ("api_key", "API-KEY", "OPENAI_API_KEY", "token", "client_secret", "password", "key",
                 "SetCredential", "x-api-key", "access_key"):
        assert looks_secret(name), name
    for name in ("auth", "dialect", "highpass_hz", "keyword", "LoadCredential", "CREDENTIALS_DIRECTORY",
                 "capture_device", "monkey"):
        assert not looks_secret(name), name
    tree = {"a": 1, "api_key": "x", "nested": {"token": ["a", "b"], "secrets": {"p": "q"}}, "list": [{"key": 1}]}
    assert redact_tree(tree) == {"a": 1, "api_key": REDACTED,
                                 "nested": {"token": REDACTED, "secrets": {"p": REDACTED}},
                                 "list": [{"key": REDACTED}]}


def test_scrub_text_forms():
    forms = secret_forms(KEY)
    blob = base64.b64encode(b"xx:" + KEY.encode() + b":yy").decode()
    text, n = scrub_text(f"a {KEY} b {urllib.parse.quote(KEY)} c {blob} d Authorization: Bearer zzz123", forms)
    assert KEY not in text and "zzz123" not in text and n >= 3
    assert "Authorization: Bearer <redacted>" in text


# ----------------------------------------------------------------- the journald field set
def _logged_events() -> set[str]:
    events = set()
    for p in (REPO / "device" / "voxbox").rglob("*.py"):
        events |= set(re.findall(r'"VOXBOX_EVENT":\s*"([a-z_]+)"', p.read_text()))
    return events


def test_every_event_has_a_message_id_and_is_documented():
    events = _logged_events()
    assert {"turn", "wake", "state", "watchdog_withheld", "link_fatal"} <= events
    missing = events - set(MESSAGE_IDS)
    assert not missing, f"add a MESSAGE_ID (uuid4().hex) in voxbox/host/journal_ids.py for {sorted(missing)}"
    doc = (REPO / "docs" / "journald.md").read_text()
    undocumented = [e for e in sorted(events) if f"`{e}`" not in doc]
    assert not undocumented, f"document these VOXBOX_EVENT values in docs/journald.md: {undocumented}"
    for e, mid in MESSAGE_IDS.items():
        assert re.fullmatch(r"[0-9a-f]{32}", mid) and mid in doc, e
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)
    assert message_id("turn") == MESSAGE_IDS["turn"] and message_id("nope") is None and message_id(None) is None


def test_every_logged_field_is_documented():
    fields = set()
    for p in (REPO / "device" / "voxbox").rglob("*.py"):
        fields |= set(re.findall(r'"(VOXBOX_[A-Z_]+)"', p.read_text()))
    fields -= {"VOXBOX_API_KEY", "VOXBOX_MOCK_GPIO_SOCKET", "VOXBOX_UNIT_SECRET",  # environment, not fields
               report.JOURNAL_FILE_ENV}
    doc = (REPO / "docs" / "journald.md").read_text()
    undocumented = sorted(f for f in fields if f not in doc)
    assert not undocumented, f"document these journal fields in docs/journald.md: {undocumented}"


def test_packages_follow_the_installed_metadata(monkeypatch):
    """versions.json lists voxbox's own declared dependencies, not a hand-kept list."""
    import importlib.metadata

    declared = importlib.metadata.requires("voxbox")
    pkgs = report.PACKAGES
    assert pkgs[0] == "voxbox" and {"jsonschema", "tqdm", "lgpio", "numpy", "systemd-python"} <= set(pkgs)
    assert not {"pytest", "openai", "pesq"} & set(pkgs)  # test and bench extras are not the unit's
    assert all(not re.search(r"[<>=!;\[ ]", p) for p in pkgs) and len(set(pkgs)) == len(pkgs)
    assert all(any(r.startswith(p) for r in declared) for p in pkgs[1:] if p not in report.SYSTEM_PACKAGES)

    def fake(dist):
        assert dist == "voxbox"
        return ['numpy>=1.26', 'foo-bar[x,y] (>=2); python_version >= "3.11"', "Baz_Q==1",
                'lgpio>=0.2; extra == "pi"', 'pytest>=8; extra == "test"', 'numpy; extra == "pi"']

    monkeypatch.setattr(importlib.metadata, "requires", fake)
    assert report._runtime_packages() == ("voxbox", "numpy", "foo-bar", "Baz_Q", "lgpio")

    def missing(dist):
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "requires", missing)
    assert report._runtime_packages() == report._FALLBACK_PACKAGES
    monkeypatch.setattr(importlib.metadata, "requires", lambda dist: None)
    assert report._runtime_packages() == report._FALLBACK_PACKAGES


def test_selftest_state_file_comes_from_the_state_directory(tmp_path):
    from voxbox.field import selftest
    from voxbox.host import sd
    assert report.SELFTEST_STATE_FILE == selftest.STATE_FILE
    assert sd.state_dir({"STATE_DIRECTORY": f"{tmp_path}:/other"}) == tmp_path


# ----------------------------------------------- an unreadable key file (issue 16)
def _unreadable(monkeypatch, *paths: Path) -> None:
    """Make ``paths`` unreadable: mode 000, and (tests run as root, who ignores modes) an
    ``open`` that answers EACCES for them, as the kernel does for an unprivileged user."""
    import errno
    import io

    blocked = {str(p) for p in paths}
    for p in paths:
        p.chmod(0)
    real_open = io.open

    def guarded(file, *a, **kw):
        if str(file) in blocked:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(io, "open", guarded)


def _no_inline_secret_config(unit) -> None:
    unit["cfg"].write_text('[realtime]\ndialect = "openai-ga"\n\n[audio]\ncapture_device = "hw:0"\n')


def test_unreadable_key_file_scrubs_what_it_can_know_and_is_not_verified(unit, monkeypatch, capsys):
    # `sudo voxbox report` outside the unit (no $CREDENTIALS_DIRECTORY), the key only in
    # /etc/voxbox/credentials, which cannot be read; the journal holds the key in several
    # forms (an old daemon logged it), among them a "Bearer" header and its base64
    _no_inline_secret_config(unit)
    del unit["env"]["CREDENTIALS_DIRECTORY"]
    key_file = unit["paths"].etc_dir / "credentials" / "voxbox-api-key"
    _unreadable(monkeypatch, key_file)
    out, manifest, _ = _build(unit)
    m = _members(out)
    _assert_clean(m, KEY)  # raw, base64 (also inside "api:KEY"), URL: the Bearer value gave it away
    red = json.loads(m["manifest.json"])["redaction"]
    assert red["verified"] is False
    assert red["verification"].startswith("not verified: ")
    assert f"key file {key_file} unreadable: Permission denied" in red["verification"]
    assert red["unchecked"] == [f"key file {key_file} unreadable: Permission denied"]
    assert "seen in journal.jsonl" in red["secret_sources"]
    assert b"not verified: key file" in m["README.txt"]
    assert manifest["redaction"] == red

    # the command says so too
    for k, v in unit["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("VOXBOX_API_KEY", raising=False)
    monkeypatch.setenv(report.JOURNAL_FILE_ENV, str(unit["journal"]))
    monkeypatch.setattr(report, "run_command", _fake_run([]))
    monkeypatch.setattr(report, "Paths", lambda: unit["paths"])
    parser = argparse.ArgumentParser(prog="voxbox")
    report.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", "--out", str(unit["tmp"] / "cli.tar.gz"), "--config", str(unit["cfg"])])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert f"not verified: key file {key_file} unreadable: Permission denied" in err
    assert KEY not in err


def test_unverifiable_secret_is_reported_not_claimed(unit, monkeypatch):
    # the key appears only base64-encoded: with its file unreadable nothing can recognise
    # it, and the manifest must not say "verified"
    _no_inline_secret_config(unit)
    del unit["env"]["CREDENTIALS_DIRECTORY"]
    rec = {"__REALTIME_TIMESTAMP": "1700000000000000", "VOXBOX_EVENT": "protocol",
           "MESSAGE": "frame " + base64.b64encode(KEY.encode()).decode()}
    unit["journal"].write_text(json.dumps(rec) + "\n")
    key_file = unit["paths"].etc_dir / "credentials" / "voxbox-api-key"
    _unreadable(monkeypatch, key_file)
    _, manifest, _ = _build(unit)
    assert manifest["redaction"]["verified"] is False
    assert "Permission denied" in manifest["redaction"]["verification"]

    # a credential directory that cannot be listed is named as well
    monkeypatch.undo()
    key_file.chmod(0o600)
    cred_dir = unit["paths"].etc_dir / "credentials"
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == cred_dir:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    _, manifest, _ = _build(unit)
    assert f"credential directory {cred_dir} cannot be listed: Permission denied" in manifest["redaction"]["verification"]


def test_verified_only_with_every_secret_in_hand(unit):
    out, manifest, _ = _build(unit)
    red = manifest["redaction"]
    assert red["verified"] is True and red["unchecked"] == []
    assert red["verification"].startswith("verified: ")
    assert b"verified: after writing" in _members(out)["README.txt"]
