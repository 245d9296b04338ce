"""Output volume: persistence, software gain, ALSA mixer adapter (voxbox.audio.volume)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from voxbox.audio.volume import STATE_FILE, Volume, VolumeError, open_mixer, percent_to_gain


class FakeALSAError(Exception):
    pass


class FakeMixer:
    def __init__(self, alsa, control, device):
        self.alsa, self.control, self.device = alsa, control, device
        self.closed = False

    def volumecap(self):
        return self.alsa.caps

    def getvolume(self):
        return list(self.alsa.levels)

    def setvolume(self, percent):
        if self.alsa.fail_set:
            self.alsa.fail_set -= 1
            raise FakeALSAError("No such device [hw:CARD=Device]")
        self.alsa.levels = [percent, percent]
        self.alsa.sets.append(percent)

    def close(self):
        self.closed = True


class FakeAlsa:
    """Stands for the alsaaudio module: one card with the controls in ``controls``."""

    ALSAAudioError = FakeALSAError

    def __init__(self, controls=("PCM", "Master"), caps=("Volume", "Joined Volume"), levels=(30, 30)):
        self.controls = list(controls)
        self.caps = list(caps)
        self.levels = list(levels)
        self.sets: list[int] = []
        self.fail_set = 0
        self.opened = 0

    def Mixer(self, control="Master", device="default"):
        if control not in self.controls:
            raise FakeALSAError(f"Unable to find mixer control {control},0 [{device}]")
        self.opened += 1
        return FakeMixer(self, control, device)

    def mixers(self, device="default"):
        return list(self.controls)


def frame(*values) -> np.ndarray:
    return np.array(values, dtype=np.int16)


# ---- software backend -------------------------------------------------------------------
def test_persisted_across_instances(tmp_path):
    v = Volume(tmp_path, default_percent=50)
    assert (v.backend, v.get(), v.mixer_error) == ("software", 50, None)
    assert not (tmp_path / STATE_FILE).exists()  # nothing saved until a change
    assert v.set(72) == 72
    assert json.loads((tmp_path / STATE_FILE).read_text()) == {"percent": 72}
    assert Volume(tmp_path, default_percent=50).get() == 72
    assert v.change(-80) == 0 and v.change(250) == 100 and v.set(33.6) == 34
    assert Volume(tmp_path).get() == 34
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temporary files left


def test_state_dir_created_and_bad_state_ignored(tmp_path, caplog):
    d = tmp_path / "var" / "lib" / "voxbox"
    Volume(d).set(20)
    assert Volume(d).get() == 20
    (d / STATE_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="voxbox.audio.volume"):
        assert Volume(d, default_percent=45).get() == 45
    assert "ignoring volume state file" in caplog.text and STATE_FILE in caplog.text
    (d / STATE_FILE).write_text('{"percent": "loud"}')
    assert Volume(d, default_percent=45).get() == 45
    assert Volume(None, default_percent=10).set(90) == 90  # not persisted: no error


# every kind of unusable volume.json: defaults, one warning naming the file and the key, no
# exception (1e999 used to raise OverflowError out of Volume(): exit 1 and a crash loop)
_KEY = "key 'percent'"


@pytest.mark.parametrize("content,words", [
    ('{"percent": 1e999}', f"{_KEY} is not a finite number: inf"),
    ('{"percent": -1e999}', f"{_KEY} is not a finite number: -inf"),
    ('{"percent": NaN}', f"{_KEY} is not a finite number: nan"),
    ('{"percent": Infinity}', f"{_KEY} is not a finite number"),
    ('{"percent": ' + "9" * 400 + "}", f"{_KEY} is not a finite number"),  # an int too big for a float
    ('{"percent": -1}', f"{_KEY} = -1 is outside 0..100"),
    ('{"percent": 100.5}', f"{_KEY} = 100.5 is outside 0..100"),
    ('{"percent": 1e308}', f"{_KEY} = 1e+308 is outside 0..100"),
    ('{"percent": "40"}', f"{_KEY} is not a number (str)"),
    ('{"percent": true}', f"{_KEY} is not a number (bool)"),
    ('{"percent": null}', f"{_KEY} is not a number (NoneType)"),
    ('{"percent": [40]}', f"{_KEY} is not a number (list)"),
    ('{"percent": {"value": 40}}', f"{_KEY} is not a number (dict)"),
    ('{"volume": 40}', f"{_KEY} is missing"),
    ("[40]", "not a JSON object with key 'percent' (a list)"),
    ("40", "not a JSON object with key 'percent' (a int)"),
    ("null", "not a JSON object with key 'percent' (a NoneType)"),
    ('"percent"', "not a JSON object with key 'percent' (a str)"),
    ("", "not valid JSON"),
    ('{"percent": 4', "not valid JSON"),  # truncated (power cut)
    (b"\xff\xfe\x00\x9c garbage", "not valid JSON"),  # binary
    (b"\x00" * 32, "not valid JSON"),
    ("[" * 2000 + "]" * 2000, "maximum recursion depth"),  # RecursionError inside json
    ('{"percent": 40, "pad": "' + "x" * 5000 + '"}', "larger than 4096 bytes"),
])
def test_unusable_state_file_gives_defaults_and_one_warning(tmp_path, caplog, content, words):
    path = tmp_path / STATE_FILE
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with caplog.at_level(logging.WARNING, logger="voxbox.audio.volume"):
        v = Volume(tmp_path, default_percent=45)
    assert (v.get(), v.gain) == (45, pytest.approx(percent_to_gain(45)))
    recs = [r for r in caplog.records if r.name == "voxbox.audio.volume"]
    assert len(recs) == 1, [r.getMessage() for r in recs]
    msg = recs[0].getMessage()
    print(msg[:200])
    assert recs[0].levelno == logging.WARNING and recs[0].VOXBOX_EVENT == "state_file"
    assert f"ignoring volume state file {path}: " in msg and words in msg, msg
    assert v.set(60) == 60 and json.loads(path.read_text()) == {"percent": 60}  # overwritten
    assert Volume(tmp_path, default_percent=45).get() == 60


def test_unusable_state_file_with_a_mixer_keeps_the_mixer_level(tmp_path, caplog):
    """Defaults with a mixer are the mixer's current level, as without a state file."""
    (tmp_path / STATE_FILE).write_text('{"percent": 1e999}')
    alsa = FakeAlsa(levels=(30, 30))
    with caplog.at_level(logging.WARNING, logger="voxbox.audio.volume"):
        v = Volume(tmp_path, mixer="PCM", alsa=alsa, default_percent=45)
    assert v.get() == 30 and alsa.sets == [30] and "'percent'" in caplog.text


@pytest.mark.parametrize("content,expected", [
    ('{"percent": 0}', 0), ('{"percent": 100}', 100), ('{"percent": 72.4}', 72),
    ('{"percent": 33, "other": "kept"}', 33),
])
def test_usable_state_file_edges(tmp_path, caplog, content, expected):
    (tmp_path / STATE_FILE).write_text(content)
    with caplog.at_level(logging.WARNING, logger="voxbox.audio.volume"):
        assert Volume(tmp_path, default_percent=45).get() == expected
    assert caplog.records == []


def test_unreadable_state_file_is_not_fatal(tmp_path, caplog):
    (tmp_path / STATE_FILE).mkdir()  # a directory where the file should be: EISDIR
    with caplog.at_level(logging.WARNING, logger="voxbox.audio.volume"):
        assert Volume(tmp_path, default_percent=45).get() == 45
    assert f"ignoring volume state file {tmp_path / STATE_FILE}: cannot read it" in caplog.text


def test_unwritable_state_dir_is_not_fatal(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="voxbox.audio.volume"):
        assert Volume(blocker / "sub").set(60) == 60
    assert "cannot save the volume" in caplog.text


def test_software_gain_applied_in_place():
    v = Volume(None, default_percent=100)
    f = frame(1000, -1000, 32767, -32768)
    v.apply(f)
    assert f.tolist() == [1000, -1000, 32767, -32768]  # 100 %: untouched

    v.set(50)
    assert v.gain == pytest.approx(0.125) == percent_to_gain(50)
    f = frame(1000, -1000, 32767, -32768, 3)
    v.apply(f)
    assert f.dtype == np.int16 and f.tolist() == [125, -125, 4096, -4096, 0]

    v.set(0)
    f = frame(1000, -1000)
    v.apply(f)
    assert f.tolist() == [0, 0]

    f = np.full((240,), 20000, dtype=np.int16)  # clipping, for any gain above 1
    v.gain = 2.0
    v.apply(f)
    assert (f == 32767).all()
    f = frame(-20000, 10)
    v.apply(f)
    assert f.tolist() == [-32768, 20]


def test_apply_rejects_wrong_frames():
    v = Volume(None, default_percent=50)
    with pytest.raises(ValueError, match="int16, got float32"):
        v.apply(np.zeros(4, np.float32))
    ro = frame(1, 2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        v.apply(ro)


def test_gain_curve_monotonic():
    gains = [percent_to_gain(p) for p in range(101)]
    assert gains[0] == 0 and gains[100] == 1 and all(a < b for a, b in zip(gains, gains[1:]))
    assert percent_to_gain(150) == 1 and percent_to_gain(-3) == 0


# ---- ALSA backend (fake alsaaudio module) -----------------------------------------------
def test_mixer_backend_sets_and_restores(tmp_path):
    alsa = FakeAlsa(levels=(30, 34))
    v = Volume(tmp_path, mixer="PCM", mixer_device="default", alsa=alsa)
    assert v.backend == "alsa" and v.gain == 1.0
    assert v.get() == 32 and alsa.sets == [32]  # nothing persisted: the mixer's value
    f = frame(1000)
    v.apply(f)
    assert f.tolist() == [1000]  # the mixer does the work
    assert v.set(80) == 80 and alsa.levels == [80, 80]
    alsa2 = FakeAlsa(levels=(5, 5))
    v2 = Volume(tmp_path, mixer="PCM", alsa=alsa2)  # after a reboot: the saved value wins
    assert v2.get() == 80 and alsa2.sets == [80]
    assert v2.status() == {"percent": 80, "backend": "alsa", "mixer": "PCM",
                           "mixer_device": "default", "mixer_error": None}


def test_missing_mixer_control_falls_back_to_software(tmp_path, caplog):
    alsa = FakeAlsa(controls=("Speaker", "Mic"))
    with caplog.at_level(logging.WARNING, logger="voxbox.audio.volume"):
        v = Volume(tmp_path, mixer="PCM", mixer_device="hw:CARD=Device", alsa=alsa, default_percent=50)
    assert v.backend == "software" and v.gain == pytest.approx(0.125)
    assert v.mixer_error == ("ALSA mixer control 'PCM' on device 'hw:CARD=Device': Unable to find mixer "
                             "control PCM,0 [hw:CARD=Device] (controls: Speaker, Mic)")
    assert v.mixer_error in caplog.text and "using software volume" in caplog.text
    with pytest.raises(VolumeError, match="'PCM' on device 'hw:CARD=Device'"):
        open_mixer("PCM", "hw:CARD=Device", alsa=alsa)


def test_control_without_playback_volume_rejected():
    alsa = FakeAlsa(controls=("Capture",), caps=("Capture Volume",))
    with pytest.raises(VolumeError, match="'Capture' on device 'default': has no playback volume"):
        open_mixer("Capture", "default", alsa=alsa)
    assert Volume(None, mixer="Capture", alsa=alsa).backend == "software"


def test_mixer_failure_at_run_time_reopens_then_falls_back(tmp_path):
    alsa = FakeAlsa()
    v = Volume(tmp_path, mixer="PCM", alsa=alsa)
    alsa.fail_set = 1  # one failure: reopened, value applied
    assert v.set(60) == 60 and v.backend == "alsa" and alsa.levels == [60, 60] and alsa.opened == 2
    alsa.fail_set = 1
    alsa.controls = []  # card gone: the reopen fails too
    assert v.set(40) == 40
    assert v.backend == "software" and v.gain == pytest.approx(0.064)
    assert "'PCM'" in v.mixer_error
    assert Volume(tmp_path).get() == 40  # still persisted


def test_no_mixer_configured_is_software():
    alsa = FakeAlsa()
    assert Volume(None, mixer="", alsa=alsa).backend == "software"
    assert Volume(None, mixer=None, alsa=alsa).backend == "software" and alsa.opened == 0


# ---- the real pyalsaaudio ---------------------------------------------------------------
def test_real_pyalsaaudio_unknown_control_falls_back(tmp_path):
    v = Volume(tmp_path, mixer="VoxboxNoSuchControl", mixer_device="default", default_percent=50)
    assert v.backend == "software" and v.gain == pytest.approx(0.125)
    assert v.mixer_error.startswith("ALSA mixer control 'VoxboxNoSuchControl' on device 'default': ")
