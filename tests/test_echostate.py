"""Echo-path state file: round trip, every kind of bad input (None + a log line naming the
file and the key, never an exception), and the atomic write."""
import json
import logging
import math
import os

import pytest

from helpers import leftovers
from voxbox.dsp import echostate
from voxbox.dsp.echostate import EchoState, load_echo_state, save_echo_state

DEV = "capture=plughw:CARD=Mic,DEV=0 playback=plughw:CARD=Spk,DEV=0"


def state(**kw):
    d = dict(reference_delay_ms=42.5, echo_delay_ms=10.25, drift_ppm=-35.5, erl_db=8.1,
             saved_at=1733390000.0, devices=DEV)
    d.update(kw)
    return EchoState(**d)


def good_dict(**kw):
    d = json.loads(state().to_json())
    d.update(kw)
    return d


def write(tmp_path, content, name="echo.json"):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif isinstance(content, str):
        p.write_text(content)
    else:
        p.write_text(json.dumps(content))
    return p


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG, logger="voxbox.dsp.echostate")
    return caplog


def only_message(caplog):
    recs = [r for r in caplog.records if r.name == "voxbox.dsp.echostate"]
    assert len(recs) == 1, [r.getMessage() for r in recs]
    return recs[0].getMessage()


# ---- round trip -------------------------------------------------------------------------
def test_round_trip(tmp_path, logs):
    p = tmp_path / "echo.json"
    s = state()
    save_echo_state(p, s)
    assert load_echo_state(p, DEV) == s
    assert not logs.records
    d = json.loads(p.read_text())
    assert d["version"] == 1 and d["reference_delay_ms"] == 42.5 and d["devices"] == DEV
    assert p.read_text().endswith("\n") and p.read_text().count("\n") == 1


def test_optional_measurements_may_be_null(tmp_path):
    p = tmp_path / "echo.json"
    s = state(echo_delay_ms=None, erl_db=None)
    save_echo_state(p, s)
    assert load_echo_state(p, DEV) == s
    assert json.loads(p.read_text())["erl_db"] is None


def test_ints_are_read_as_floats(tmp_path):
    p = write(tmp_path, good_dict(reference_delay_ms=40, drift_ppm=0, erl_db=12, saved_at=1733390000))
    s = load_echo_state(p, DEV)
    assert s is not None and s.reference_delay_ms == 40.0 and isinstance(s.reference_delay_ms, float)
    assert isinstance(s.drift_ppm, float) and isinstance(s.saved_at, float)


def test_unknown_extra_keys_are_ignored(tmp_path):
    p = write(tmp_path, good_dict(comment="written by a newer voxbox"))
    assert load_echo_state(p, DEV) == state()


def test_range_limits_are_inclusive(tmp_path):
    p = write(tmp_path, good_dict(reference_delay_ms=500, echo_delay_ms=0, drift_ppm=-1000, erl_db=80))
    assert load_echo_state(p, DEV) is not None
    p = write(tmp_path, good_dict(reference_delay_ms=0, echo_delay_ms=500, drift_ppm=1000, erl_db=-40))
    assert load_echo_state(p, DEV) is not None


def test_missing_file_is_silent(tmp_path, logs):
    assert load_echo_state(tmp_path / "nope.json", DEV) is None
    assert not logs.records


# ---- bad input: None and one message naming the file and the key ------------------------
@pytest.mark.parametrize("key,value,words", [
    ("reference_delay_ms", -1.0, "outside 0..500 ms"),
    ("reference_delay_ms", 500.5, "outside 0..500 ms"),
    ("reference_delay_ms", "42", "not a number (str)"),
    ("reference_delay_ms", True, "not a number (bool)"),
    ("reference_delay_ms", None, "missing"),
    ("reference_delay_ms", [42], "not a number (list)"),
    ("echo_delay_ms", -0.5, "outside 0..500 ms"),
    ("echo_delay_ms", 501, "outside 0..500 ms"),
    ("echo_delay_ms", {"ms": 3}, "not a number (dict)"),
    ("drift_ppm", 1000.1, "outside -1000..1000 ppm"),
    ("drift_ppm", -5000, "outside -1000..1000 ppm"),
    ("drift_ppm", None, "missing"),
    ("drift_ppm", 10 ** 400, "not a finite number"),
    ("erl_db", 80.5, "outside -40..80 dB"),
    ("erl_db", -41, "outside -40..80 dB"),
    ("erl_db", "high", "not a number (str)"),
    ("saved_at", -1, "outside"),
    ("saved_at", "yesterday", "not a number (str)"),
    ("devices", 3, "devices is not a string"),
])
def test_bad_value_is_rejected_naming_file_and_key(tmp_path, logs, key, value, words):
    p = write(tmp_path, good_dict(**{key: value}))
    assert load_echo_state(p, DEV) is None
    msg = only_message(logs)
    assert str(p) in msg and key in msg and words in msg, msg


@pytest.mark.parametrize("key", ["reference_delay_ms", "drift_ppm", "saved_at", "devices"])
def test_missing_required_key(tmp_path, logs, key):
    d = good_dict()
    del d[key]
    p = write(tmp_path, d)
    assert load_echo_state(p, DEV) is None
    msg = only_message(logs)
    assert str(p) in msg and key in msg


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("key", ["reference_delay_ms", "echo_delay_ms", "drift_ppm", "erl_db", "saved_at"])
def test_non_finite_numbers_are_rejected(tmp_path, logs, key, literal):
    text = json.dumps(good_dict(**{key: 12345.0})).replace("12345.0", literal)
    p = write(tmp_path, text)
    assert load_echo_state(p, DEV) is None
    msg = only_message(logs)
    assert str(p) in msg and key in msg and "not a finite number" in msg, msg


@pytest.mark.parametrize("content,words", [
    ("", "not valid JSON"),
    ("{\"version\": 1, \"reference_delay_ms\": 4", "not valid JSON"),  # truncated (power cut)
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"\x00" * 64, "not valid JSON"),
    ("[1, 2, 3]", "not a JSON object (a list)"),
    ("42", "not a JSON object (a int)"),
    ("null", "not a JSON object (a NoneType)"),
    ("[" * 100000 + "]" * 100000, "larger than"),
])
def test_corrupt_file(tmp_path, logs, content, words):
    p = write(tmp_path, content)
    assert load_echo_state(p, DEV) is None
    msg = only_message(logs)
    assert str(p) in msg and words in msg, msg


def test_deeply_nested_json_does_not_raise(tmp_path, logs):
    p = write(tmp_path, "[" * 20000 + "]" * 20000)  # under the size cap; RecursionError inside json
    assert load_echo_state(p, DEV) is None
    assert str(p) in only_message(logs)


@pytest.mark.parametrize("version", [None, 0, 2, "1", True])
def test_wrong_version(tmp_path, logs, version):
    d = good_dict(version=version)
    if version is None:
        del d["version"]
    p = write(tmp_path, d)
    assert load_echo_state(p, DEV) is None
    msg = only_message(logs)
    assert str(p) in msg and "version" in msg


def test_other_devices_are_not_reused(tmp_path, logs):
    p = tmp_path / "echo.json"
    save_echo_state(p, state())
    assert load_echo_state(p, "capture=hw:2 playback=hw:2") is None
    msg = only_message(logs)
    assert str(p) in msg and "devices" in msg and "other sound devices" in msg


def test_unreadable_path_does_not_raise(tmp_path, logs):
    d = tmp_path / "echo.json"
    d.mkdir()  # a directory where the file should be: IsADirectoryError
    assert load_echo_state(d, DEV) is None
    msg = only_message(logs)
    assert str(d) in msg and "cannot read" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_permissions_do_not_raise(tmp_path, logs):
    p = tmp_path / "echo.json"
    save_echo_state(p, state())
    p.chmod(0)
    assert load_echo_state(p, DEV) is None
    assert "cannot read" in only_message(logs)


# ---- the dataclass ----------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [("reference_delay_ms", math.nan), ("drift_ppm", math.inf),
                                       ("erl_db", 200.0), ("echo_delay_ms", -3.0), ("devices", None)])
def test_invalid_state_cannot_be_built(key, value):
    with pytest.raises(ValueError, match=key):
        state(**{key: value})


def test_from_measurement_drops_unusable_optional_figures():
    s = EchoState.from_measurement(40, math.nan, 12, math.nan, DEV, saved_at=5.0)
    assert (s.reference_delay_ms, s.echo_delay_ms, s.drift_ppm, s.erl_db, s.saved_at) == (40.0, None, 12.0, None, 5.0)
    s = EchoState.from_measurement(40.0, 600.0, 0.0, -90.0, DEV)
    assert s.echo_delay_ms is None and s.erl_db is None and s.saved_at > 1.7e9
    with pytest.raises(ValueError, match="drift_ppm"):
        EchoState.from_measurement(40.0, 10.0, 5000.0, 8.0, DEV)
    with pytest.raises(ValueError, match="reference_delay_ms"):
        EchoState.from_measurement(math.nan, 10.0, 0.0, 8.0, DEV)


# ---- atomic write -----------------------------------------------------------------------
def test_save_creates_the_directory_and_leaves_no_temp(tmp_path):
    p = tmp_path / "state" / "sub" / "echo.json"
    save_echo_state(p, state())
    assert load_echo_state(p, DEV) == state()
    assert leftovers(p.parent, keep="echo.json") == []
    assert oct(p.stat().st_mode & 0o777) == oct(0o644)


def test_save_overwrites(tmp_path):
    p = tmp_path / "echo.json"
    save_echo_state(p, state())
    save_echo_state(p, state(drift_ppm=12.0))
    assert load_echo_state(p, DEV).drift_ppm == 12.0
    assert leftovers(tmp_path, keep="echo.json") == []


def test_failing_write_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    p = tmp_path / "echo.json"
    save_echo_state(p, state())
    before = p.read_bytes()

    def fail_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(echostate.os, "fsync", fail_fsync)
    with pytest.raises(OSError, match="No space left"):
        save_echo_state(p, state(drift_ppm=99.0))
    assert p.read_bytes() == before
    assert leftovers(tmp_path, keep="echo.json") == []


def test_failing_rename_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    p = tmp_path / "echo.json"
    save_echo_state(p, state())
    before = p.read_bytes()

    def fail_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(echostate.os, "replace", fail_replace)
    with pytest.raises(OSError, match="Input/output error"):
        save_echo_state(p, state(drift_ppm=99.0))
    assert p.read_bytes() == before
    assert leftovers(tmp_path, keep="echo.json") == []


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(echostate.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    p = tmp_path / "echo.json"
    save_echo_state(p, state())
    assert load_echo_state(p, DEV) == state()


def test_interrupt_during_write_removes_the_temp(tmp_path, monkeypatch):
    p = tmp_path / "echo.json"

    def interrupted(fd, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(echostate.os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_echo_state(p, state())
    assert not p.exists() and leftovers(tmp_path, keep="echo.json") == []


def test_the_rename_and_the_directory_are_fsynced(tmp_path, monkeypatch):
    p = tmp_path / "echo.json"
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(echostate.os, "fsync", lambda fd: (calls.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}"))),
                                                           real_fsync(fd)))
    monkeypatch.setattr(echostate.os, "replace", lambda a, b: (calls.append(("replace", None)), real_replace(a, b)))
    save_echo_state(p, state())
    assert calls == [("fsync", False), ("replace", None), ("fsync", True)]


def test_unwritable_directory_raises_oserror(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        save_echo_state(blocker / "echo.json", state())


def test_random_garbage_never_raises(tmp_path, caplog):
    """Mutated state files (wrong types, huge and non-finite numbers, truncation, binary
    noise): load_echo_state returns None or an EchoState, never raises."""
    import random

    caplog.set_level(logging.CRITICAL, logger="voxbox.dsp.echostate")
    rnd = random.Random(16)
    junk = [None, True, 0, -1, 1e308, "1e999", 10 ** 400, [], {}, "x", "NaN", 1.5]
    p = tmp_path / "echo.json"
    for _ in range(400):
        d = good_dict()
        for _ in range(rnd.randint(1, 3)):
            d[rnd.choice([*d, "version", "extra"])] = rnd.choice(junk)
        text = json.dumps(d).replace('"1e999"', "1e999").replace('"NaN"', "NaN")
        if rnd.random() < 0.2:
            text = text[:rnd.randint(0, len(text))]
        raw = bytes(rnd.randrange(256) for _ in range(40)) if rnd.random() < 0.1 else text.encode()
        p.write_bytes(raw)
        assert load_echo_state(p, DEV) is None or isinstance(load_echo_state(p, DEV), EchoState)


# ---- the loudspeaker model --------------------------------------------------------------
def test_loudspeaker_saturation_round_trips_and_older_files_load_as_linear(tmp_path, logs):
    p = tmp_path / "echo.json"
    s = state(loudspeaker_clip=0.21, loudspeaker_knee=8.0)
    save_echo_state(p, s)
    assert load_echo_state(p, DEV) == s
    d = json.loads(p.read_text())
    assert d["loudspeaker_clip"] == 0.21 and d["loudspeaker_knee"] == 8.0
    del d["loudspeaker_clip"], d["loudspeaker_knee"]  # a file from before the model
    got = load_echo_state(write(tmp_path, d), DEV)
    assert got is not None and got.loudspeaker_clip is None and got.loudspeaker_knee is None
    assert not logs.records


@pytest.mark.parametrize("extra,words", [
    ({"loudspeaker_clip": 0.0, "loudspeaker_knee": 8.0}, "loudspeaker_clip = 0"),
    ({"loudspeaker_clip": 1.5, "loudspeaker_knee": 8.0}, "loudspeaker_clip = 1.5"),
    ({"loudspeaker_clip": 0.2, "loudspeaker_knee": 100}, "loudspeaker_knee = 100"),
    ({"loudspeaker_clip": "hard", "loudspeaker_knee": 8.0}, "loudspeaker_clip is not a number (str)"),
    ({"loudspeaker_clip": 0.2}, "given together"),
    ({"loudspeaker_knee": 2.0}, "given together"),
])
def test_bad_loudspeaker_saturation_is_rejected_naming_the_key(tmp_path, logs, extra, words):
    p = write(tmp_path, good_dict(**extra))
    assert load_echo_state(p, DEV) is None
    msg = only_message(logs)
    assert str(p) in msg and words in msg, msg


def test_from_measurement_keeps_a_usable_saturation_only():
    def make(ls):
        return EchoState.from_measurement(40.0, 10.0, 0.0, 8.0, DEV, saved_at=1.0, loudspeaker=ls)

    s = make((0.2, 8.0))
    assert (s.loudspeaker_clip, s.loudspeaker_knee) == (0.2, 8.0)
    for ls in (None, (math.inf, math.inf), (float("nan"), 2.0), (2.0, 2.0), (0.2, -1.0)):
        s = make(ls)
        assert s.loudspeaker_clip is None and s.loudspeaker_knee is None
