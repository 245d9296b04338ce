"""Small state files: the atomic write (voxbox.host.statefile) on a full disk and every other
failure, and the daemon's mute state file built on it (``voxbox.service.mutestate``:
``save_muted`` and ``load_muted``)."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import leftovers
from voxbox.host import statefile
from voxbox.host.statefile import atomic_write
from voxbox.service.mutestate import load_muted, save_muted

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- atomic_write -------------------------------------------------------------------------
def test_write_creates_the_directory_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a" / "b" / "state.json"
    atomic_write(p, b'{"x": 1}\n')
    assert p.read_bytes() == b'{"x": 1}\n' and (p.stat().st_mode & 0o777) == 0o644
    atomic_write(p, b"second", mode=0o600)
    assert p.read_bytes() == b"second" and (p.stat().st_mode & 0o777) == 0o600
    assert sorted(x.name for x in p.parent.iterdir()) == ["state.json"]


def test_order_is_write_fsync_rename_then_directory_fsync(tmp_path, monkeypatch):
    p = tmp_path / "state.json"
    calls = []
    real = {name: getattr(os, name) for name in ("write", "fsync", "close", "replace")}

    def spy(name):
        def call(*args):
            if name == "fsync":
                calls.append(("fsync", "dir" if os.path.isdir(f"/proc/self/fd/{args[0]}") else "file"))
            else:
                calls.append((name,))
            return real[name](*args)
        return call

    for name in real:
        monkeypatch.setattr(statefile.os, name, spy(name))
    atomic_write(p, b"data")
    assert [c for c in calls if c != ("close",)] == [("write",), ("fsync", "file"), ("replace",), ("fsync", "dir")]
    assert calls.index(("fsync", "file")) < calls.index(("close",)) < calls.index(("replace",))


@pytest.mark.parametrize("step,err", [
    ("write", errno.ENOSPC),  # disk full while writing
    ("fsync", errno.ENOSPC),  # disk full reported at the fsync (delayed allocation)
    ("fsync", errno.EIO),
    ("close", errno.EIO),
    ("chmod", errno.EPERM),
    ("replace", errno.EIO),
])
def test_failure_removes_the_temp_keeps_the_old_file_and_raises(tmp_path, monkeypatch, step, err):
    p = tmp_path / "state.json"
    atomic_write(p, b"old")
    real = getattr(os, step)
    failed = []

    def fail(*args):
        if step == "fsync" and os.path.isdir(f"/proc/self/fd/{args[0]}"):
            return real(*args)  # only the file's fsync fails here
        if step == "close":
            real(*args)  # the descriptor is closed, the error still reported
        failed.append(step)
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(statefile.os, step, fail)
    with pytest.raises(OSError) as info:
        atomic_write(p, b"new content")
    assert info.value.errno == err and failed == [step]
    assert p.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_write_that_writes_nothing_is_a_full_disk_not_a_hang(tmp_path, monkeypatch):
    p = tmp_path / "state.json"
    monkeypatch.setattr(statefile.os, "write", lambda fd, data: 0)
    with pytest.raises(OSError) as info:
        atomic_write(p, b"data")
    assert info.value.errno == errno.ENOSPC
    assert not p.exists() and leftovers(tmp_path) == []


def test_disk_full_after_a_short_write_removes_the_temp(tmp_path, monkeypatch):
    """The first write gets 3 bytes onto the disk, the second finds it full."""
    p = tmp_path / "state.json"
    real_write = os.write
    calls = []

    def short_then_full(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:3]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(statefile.os, "write", short_then_full)
    with pytest.raises(OSError, match="No space left on device"):
        atomic_write(p, b"0123456789")
    assert calls == [10, 7] and not p.exists() and leftovers(tmp_path) == []


def test_interrupt_during_fsync_removes_the_temp(tmp_path, monkeypatch):
    p = tmp_path / "state.json"

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(statefile.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, b"data")
    assert not p.exists() and leftovers(tmp_path) == []


def test_no_temp_possible_raises_oserror(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):  # the parent is a file: the directory cannot be made
        atomic_write(blocker / "state.json", b"data")

    def no_space(**kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(statefile.tempfile, "mkstemp", no_space)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(tmp_path / "state.json", b"data")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["file"]


def test_directory_fsync_failure_is_raised_after_the_rename(tmp_path, monkeypatch):
    p = tmp_path / "state.json"
    real_fsync = os.fsync

    def dir_fails(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(fd)

    monkeypatch.setattr(statefile.os, "fsync", dir_fails)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write(p, b"new")
    assert p.read_bytes() == b"new" and leftovers(tmp_path) == []  # in place; nothing to remove


# ---- the daemon's mute state -------------------------------------------------------------
def stand_in(path):
    return path


def daemon_records(caplog):
    return [r for r in caplog.records if r.name == "voxbox.service.mutestate" and r.levelno >= logging.WARNING]


def test_set_muted_saves_atomically_and_load_reads_it(tmp_path, caplog, monkeypatch):
    p = tmp_path / "lib" / "state.json"
    d = stand_in(p)
    caplog.set_level(logging.INFO, logger="voxbox.service.mutestate")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(statefile.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    assert save_muted(d, True) is True
    assert json.loads(p.read_text()) == {"muted": True} and len(synced) == 2  # the file, the directory
    assert load_muted(d) is True
    assert save_muted(d, False) is True
    assert load_muted(d) is False
    assert sorted(x.name for x in p.parent.iterdir()) == ["state.json"]
    assert daemon_records(caplog) == []


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_set_muted_on_a_full_disk_reports_it_and_leaves_no_temp(tmp_path, caplog, monkeypatch, step):
    """Disk full while saving mute: False for the caller (the LED), one error naming the file
    and saying the mute will not survive a restart, no temporary file, the old state file
    untouched."""
    p = tmp_path / "state.json"
    p.write_text('{"muted": false}\n')

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(statefile.os, step, full)
    with caplog.at_level(logging.INFO, logger="voxbox.service.mutestate"):
        assert save_muted(stand_in(p), True) is False
    (rec,) = daemon_records(caplog)
    msg = rec.getMessage()
    print(msg)
    assert rec.levelno == logging.ERROR and rec.VOXBOX_EVENT == "state_file" and rec.VOXBOX_MUTED == 1
    assert str(p) in msg and "No space left on device" in msg and "the mute will not survive a restart" in msg
    assert leftovers(tmp_path) == [] and p.read_text() == '{"muted": false}\n'


def test_set_muted_unmute_that_cannot_be_saved_says_so(tmp_path, caplog, monkeypatch):
    p = tmp_path / "state.json"
    monkeypatch.setattr(statefile.os, "write", lambda fd, data: (_ for _ in ()).throw(ENOSPC))
    with caplog.at_level(logging.ERROR, logger="voxbox.service.mutestate"):
        assert save_muted(stand_in(p), False) is False
    assert "the unmute will not survive a restart" in caplog.text and leftovers(tmp_path) == []


def test_set_muted_when_the_kernel_refuses_the_write(tmp_path):
    """No patching: a child process whose file size limit (RLIMIT_FSIZE, 8 bytes) makes the
    kernel accept part of the 16-byte state and refuse the rest (EFBIG, as a full disk
    refuses with ENOSPC)."""
    p = tmp_path / "state.json"
    p.write_text('{"muted": false}\n')
    code = textwrap.dedent(f"""
        import json, logging, resource, signal, sys
        from pathlib import Path
        from voxbox.service.mutestate import save_muted
        records = []
        class Keep(logging.Handler):
            def emit(self, r):
                records.append([r.levelname, r.getMessage(), getattr(r, "VOXBOX_EVENT", None)])
        logging.getLogger("voxbox").addHandler(Keep())
        logging.getLogger("voxbox").setLevel(logging.INFO)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8, 8))
        ok = save_muted(Path({str(p)!r}), True)
        print(json.dumps({{"ok": ok, "records": records}}))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    errors = [r for r in out["records"] if r[0] == "ERROR"]
    print(errors)
    assert out["ok"] is False and len(errors) == 1 and errors[0][2] == "state_file"
    assert str(p) in errors[0][1] and "File too large" in errors[0][1]
    assert "the mute will not survive a restart" in errors[0][1]
    assert leftovers(tmp_path) == [] and p.read_text() == '{"muted": false}\n'


@pytest.mark.parametrize("content,words", [
    ('{"muted": "false"}', "key 'muted' is not true or false (a str)"),  # was bool("false"): muted
    ('{"muted": 1}', "key 'muted' is not true or false (a int)"),
    ('{"muted": null}', "key 'muted' is not true or false (a NoneType)"),
    ('{"muted": 1e999}', "key 'muted' is not true or false (a float)"),
    ('{"muted": NaN}', "key 'muted' is not true or false (a float)"),
    ('{"muted": [true]}', "key 'muted' is not true or false (a list)"),
    ("{}", "key 'muted' is missing"),
    ("[true]", "not a JSON object with key 'muted' (a list)"),
    ("true", "not a JSON object with key 'muted' (a bool)"),
    ('"muted"', "not a JSON object with key 'muted' (a str)"),
    ("", "not valid JSON"),
    ('{"muted": tr', "not valid JSON"),  # truncated
    (b"\xff\xfe\x00\x9c garbage", "not valid JSON"),
    (b"\x00" * 64, "not valid JSON"),
    ("[" * 20000 + "]" * 20000, "maximum recursion depth"),
    ('{"muted": true, "pad": "' + "x" * 70000 + '"}', "larger than 65536 bytes"),
])
def test_load_muted_never_raises_on_garbage(tmp_path, caplog, content, words):
    p = tmp_path / "state.json"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with caplog.at_level(logging.DEBUG, logger="voxbox.service.mutestate"):
        assert load_muted(stand_in(p)) is False
    (rec,) = daemon_records(caplog)
    msg = rec.getMessage()
    print(msg[:200])
    assert rec.levelno == logging.WARNING and rec.VOXBOX_EVENT == "state_file"
    assert msg.startswith(f"ignoring state file {p}: ") and words in msg and "starting unmuted" in msg, msg


def test_load_muted_missing_or_unreadable(tmp_path, caplog):
    p = tmp_path / "state.json"
    with caplog.at_level(logging.DEBUG, logger="voxbox.service.mutestate"):
        assert load_muted(stand_in(p)) is False
    assert daemon_records(caplog) == []  # first boot: silent
    p.mkdir()  # a directory where the file should be
    with caplog.at_level(logging.DEBUG, logger="voxbox.service.mutestate"):
        assert load_muted(stand_in(p)) is False
    (rec,) = daemon_records(caplog)
    assert f"ignoring state file {p}: cannot read it" in rec.getMessage()


def test_load_muted_reads_true_and_extra_keys(tmp_path, caplog):
    p = tmp_path / "state.json"
    p.write_text('{"muted": true, "other": 3}\n')
    with caplog.at_level(logging.DEBUG, logger="voxbox.service.mutestate"):
        assert load_muted(stand_in(p)) is True
    assert daemon_records(caplog) == []
