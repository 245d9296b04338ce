"""``voxbox selftest`` (voxbox.field.selftest) on the ALSA file devices of voxbox.sim.rig.

The audio checks run the real command (``python -m voxbox selftest``, the same parser
``voxbox selftest`` registers) as a subprocess against a rig in this process: the
microphone feeder mixes the speaker's played stream back in with a known delay and gain.

Rig note (measured here): with the default one-page speaker pipe, the rig's speaker reads
across a page boundary while the writer is still blocked, so it plays a short silence
(1-280 samples) at nearly every page (every 85 ms): the echo path then grows by ~80 ms over
the 5 s test signal and no single delay is "true". A two-page pipe (``pipe_bytes=8192``)
never starves the speaker, so the echo path is stationary, and the true write-to-microphone
delay is known from the rig alone: the speaker's played stream (with any gaps as silence)
gives the instant the selftest's written sample 0 left the speaker, the feeder adds
``echo_delay_ms``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import alsaaudio  # noqa: E402,F401
import numpy as np
import pytest
import tomli_w

from voxbox.cli import main as voxbox_main  # noqa: E402
from voxbox.config import parse_config  # noqa: E402
from voxbox.field import audiocheck, netcheck, selftest  # noqa: E402
from voxbox.sim.rig import FileDeviceRig  # noqa: E402

ECHO_DELAY_MS = 37.0
ECHO_GAIN_DB = -20.0
NOISE_DBFS = -60.0
KEY = "sk-selftest-0123456789abcdef"


def _run_cli(tmp_path: Path, rig: FileDeviceRig, args: list[str], config: dict | None = None,
             extra_env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    cfg = {"audio": {"capture_device": rig.MIC, "playback_device": rig.SPEAKER},
           "realtime": {"url": "local"}}
    for k, v in (config or {}).items():
        cfg.setdefault(k, {}).update(v)
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(cfg))
    env = {**os.environ, **rig.env, "STATE_DIRECTORY": str(tmp_path / "state"), **(extra_env or {})}
    env.pop("JOURNAL_STREAM", None)
    return subprocess.run([sys.executable, "-m", "voxbox", "selftest", "--config", str(path),
                           "--log-format", "json", *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


def _record(stderr: str) -> dict:
    """The journald record (as the JSON log line) of a selftest run."""
    recs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    sel = [r for r in recs if r.get("VOXBOX_EVENT") == "selftest"]
    assert len(sel) == 1, stderr
    return sel[0]


def test_echo_delay_and_erl_match_the_rig(tmp_path):
    """Acceptance: with a recorded echo path (37 ms, -20 dB) the reported write-to-mic
    echo delay equals the rig's true delay within 2 ms, the ERL its gain within 2 dB."""
    rig = FileDeviceRig(tmp_path / "rig", pipe_bytes=8192)
    try:
        spk = rig.speaker()
        mic = rig.mic(tail="noise", noise_dbfs=NOISE_DBFS, echo_from=spk, echo_gain_db=ECHO_GAIN_DB,
                      echo_delay_ms=ECHO_DELAY_MS)
        mic.start()
        t0 = time.monotonic()
        p = _run_cli(tmp_path, rig, ["--json", "--skip", "button", "--skip", "network", "--skip", "wake"])
        took = time.monotonic() - t0
        played = np.concatenate(spk._played_chunks_from(0)[0])  # the room's stream, gaps as silence
        mic.close()
        spk.close()
    finally:
        rig.close()
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    # JSON shape
    assert out["result"] == "PASS" and set(out) >= {"result", "version", "time", "checks"}
    assert [c["name"] for c in out["checks"]] == list(selftest.CHECKS)
    for c in out["checks"]:
        assert set(c) == {"name", "result", "value", "unit", "limit", "hint", "details"}
    by = {c["name"]: c for c in out["checks"]}
    assert [by[n]["result"] for n in ("button", "network", "wake")] == ["SKIP"] * 3
    assert by["mic"]["result"] == "PASS" and abs(by["mic"]["value"] - NOISE_DBFS) < 1.0
    echo = by["echo"]
    assert echo["result"] == "PASS" and echo["unit"] == "ms"
    d = echo["details"]
    # true delay: written sample 0 left the speaker at spk.t0 + p0/24000 (p0 from the first
    # non-zero sample, exact: the played stream is bit-exact), its echo reached the mic
    # echo_delay_ms later; the selftest's own instant for written sample 0 is play_t0
    nz = np.flatnonzero(played)
    p0 = int(nz[0]) - d["first_nonzero_written"]
    written_span = d["last_nonzero_written"] - d["first_nonzero_written"]
    assert int(nz[-1]) - int(nz[0]) == written_span  # no speaker gap: a stationary echo path
    device_ms = (spk.t0 + p0 / 24000 - d["play_t0"]) * 1000
    true_ms = device_ms + ECHO_DELAY_MS
    print(f"echo delay {echo['value']} ms, true {true_ms:.2f} ms (device {device_ms:.1f} ms + "
          f"acoustic {ECHO_DELAY_MS} ms); ERL {d['erl_db']} dB; ERLE {by['aec']['value']} dB; {took:.1f} s")
    assert abs(echo["value"] - true_ms) < 2.0
    # the device part is the file plugin's buffer plus the two-page pipe, at most
    assert 0 < device_ms < (960 + 4096 + 240) / 24 + 10
    assert abs(d["erl_db"] - (-ECHO_GAIN_DB)) < 2.0
    assert d["suggested_reference_delay_ms"] == round(echo["value"] - 10.0)
    assert by["aec"]["result"] == "PASS" and by["aec"]["value"] >= audiocheck.MIN_ERLE_DB
    # the journald record and the state file
    rec = _record(p.stderr)
    assert rec["VOXBOX_SELFTEST_RESULT"] == "PASS" and rec["VOXBOX_SELFTEST_ECHO"] == "PASS"
    assert rec["VOXBOX_ECHO_DELAY_MS"] == echo["value"]
    assert rec["VOXBOX_ERL_DB"] == d["erl_db"] and rec["VOXBOX_ERLE_DB"] == by["aec"]["value"]
    assert rec["VOXBOX_NOISE_FLOOR_DBFS"] == by["mic"]["value"]
    saved = json.loads((tmp_path / "state" / "selftest.json").read_text())
    assert saved["checks"] == out["checks"]
    assert took < 30


def test_deaf_microphone_fails(tmp_path):
    """A microphone of digital silence FAILs (exit 1), in the table and the record."""
    rig = FileDeviceRig(tmp_path / "rig")
    try:
        mic = rig.mic(tail="silence")
        mic.start()
        p = _run_cli(tmp_path, rig, ["--skip", "echo", "--skip", "aec", "--skip", "network",
                                     "--skip", "wake"])
        mic.close()
    finally:
        rig.close()
    assert p.returncode == 1, p.stdout + p.stderr
    print(p.stdout)
    lines = p.stdout.splitlines()
    assert lines[0].split()[:5] == ["check", "result", "value", "limit", "hint"]
    mic_row = next(line for line in lines if line.startswith("mic "))
    assert "FAIL" in mic_row and "deaf microphone" in mic_row and "voxbox_mic" in mic_row
    assert lines[-1] == "selftest: FAIL"
    rec = _record(p.stderr)
    assert rec["VOXBOX_SELFTEST_RESULT"] == "FAIL" and rec["VOXBOX_SELFTEST_MIC"] == "FAIL"
    assert rec["VOXBOX_SELFTEST_FAILED"] == "mic" and rec["level"] == "WARNING"


def test_missing_capture_device_fails_naming_it(tmp_path, monkeypatch):
    rig = FileDeviceRig(tmp_path / "rig")
    try:
        cfg = parse_config({"audio": {"capture_device": "voxbox_no_such_mic"}})
        for k, v in rig.env.items():
            monkeypatch.setenv(k, v)
        res = selftest.run_selftest(cfg, skip={"echo", "aec", "button", "network", "wake"})
    finally:
        rig.close()
    mic = res[0]
    assert mic.result == "FAIL" and "voxbox_no_such_mic" in mic.hint and "voxbox_mic" in mic.hint


# -- network --------------------------------------------------------------------------------
@pytest.fixture
def server():
    from voxbox.parrot.server import ServerThread

    s = ServerThread(api_key=KEY)
    s.start()
    yield s
    s.stop()


def test_network_pass_and_wrong_key(server):
    cfg = parse_config({"realtime": {"url": f"ws://127.0.0.1:{server.port}/v1/realtime"}})
    ok = selftest.check_network(cfg, {"VOXBOX_API_KEY": KEY})
    assert ok.result == "PASS" and ok.unit == "ms" and 0 <= ok.value < 5000, ok
    assert ok.details["session_id"]
    bad_key = "sk-wrong-key-9876543210"
    bad = selftest.check_network(cfg, {"VOXBOX_API_KEY": bad_key})
    assert bad.result == "FAIL" and bad.hint.startswith("auth"), bad
    assert bad_key not in json.dumps(selftest.to_json([bad])) and KEY not in json.dumps(selftest.to_json([ok]))
    none = selftest.check_network(cfg, {})
    assert none.result == "FAIL" and "VOXBOX_API_KEY" in none.hint


def test_network_local_and_unreachable():
    from voxbox.cli import start_local_server  # the CLI gives the self-test the local server

    local = parse_config({"realtime": {"url": "local"}})
    assert selftest.check_network(local, {}, start_local_server).result == "PASS"
    azure = parse_config({"realtime": {"url": "local", "dialect": "azure-voicelive"}})
    assert selftest.check_network(azure, {}, start_local_server).result == "PASS"
    no_server = selftest.check_network(local, {})  # called without it: a clear failure, no crash
    assert no_server.result == "FAIL" and "local server" in no_server.hint, no_server
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = parse_config({"realtime": {"url": f"ws://127.0.0.1:{port}/v1/realtime", "connect_timeout_s": 2}})
    r = selftest.check_network(cfg, {"VOXBOX_API_KEY": KEY})
    assert r.result == "FAIL" and r.hint.startswith("network: TCP"), r


def test_network_http_401_is_auth():
    """A service answering the upgrade with HTTP 401 (Azure does) is an auth failure."""
    import asyncio

    from websockets.asyncio.server import serve
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    ready, stop, port = threading.Event(), threading.Event(), {}

    def run() -> None:
        async def main() -> None:
            def reject(conn, req):
                return Response(401, "Unauthorized", Headers(), b"bad key")

            async with serve(lambda ws: None, "127.0.0.1", 0, process_request=reject) as srv:
                port["p"] = srv.sockets[0].getsockname()[1]
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert ready.wait(5)
    try:
        cfg = parse_config({"realtime": {"url": f"ws://127.0.0.1:{port['p']}/v1/realtime"}})
        r = selftest.check_network(cfg, {"VOXBOX_API_KEY": KEY})
    finally:
        stop.set()
        th.join(5)
    assert r.result == "FAIL" and "auth: HTTP 401" in r.hint and r.details["http_status"] == 401


def test_network_fatal_answers_follow_the_daemon_rule():
    """Error codes in session.FATAL_ERROR_CODES and close 3000/4000 are marked fatal."""
    from voxbox.parrot.server import ServerThread

    s = ServerThread(openai_beta_allowed=False)  # a GA-only endpoint: beta shape -> error, close 4000
    s.start()
    try:
        cfg = parse_config({"realtime": {"url": f"ws://127.0.0.1:{s.port}/v1/realtime",
                                         "dialect": "openai-beta"}})
        r = selftest.check_network(cfg, {"VOXBOX_API_KEY": KEY})
    finally:
        s.stop()
    assert r.result == "FAIL" and r.hint.startswith("refused: beta_api_shape_disabled"), r
    assert r.details["code"] == "beta_api_shape_disabled" and r.details["fatal"] is True
    s = ServerThread(api_key=KEY)
    s.start()
    try:
        cfg = parse_config({"realtime": {"url": f"ws://127.0.0.1:{s.port}/v1/realtime"}})
        r = selftest.check_network(cfg, {"VOXBOX_API_KEY": "sk-wrong-key-9876543210"})
    finally:
        s.stop()
    assert r.hint.startswith("auth") and r.details["fatal"] is True, r
    assert netcheck.FATAL_CLOSE_CODES == {3000, 4000}


@pytest.mark.parametrize("code, fatal, needle", [(3000, True, "auth: closed 3000"),
                                                  (4000, True, "closed 4000 (invalid model"),
                                                  (1011, False, "connection closed (1011)")])
def test_network_close_codes(code, fatal, needle):
    """A close without an error event: 3000/4000 are fatal (the link's _fatal_close rule, voxbox.realtime.client)."""
    import asyncio

    from websockets.asyncio.server import serve

    async def main():
        async def handler(ws):
            await ws.close(code, "bye")

        async with serve(handler, "127.0.0.1", 0) as srv:
            port = srv.sockets[0].getsockname()[1]
            return await netcheck._probe(f"ws://127.0.0.1:{port}/v1/realtime", {}, 5.0)

    result, cause, _, det = asyncio.run(main())
    assert result == "FAIL" and cause.startswith(needle), cause
    assert det["close_code"] == code and det["fatal"] is fatal


UNIT_ID = "vx-0042"
UNIT_SECRET = "unit-secret-selftest-Zq8wYq3L"


def test_network_in_token_broker_mode():
    """Only the unit secret is provisioned: the check gets a token from the broker and
    connects with it (the service accepts exactly the tokens the broker issued)."""
    from brokerserver import BrokerServer
    from voxbox.parrot.server import ServerThread

    with BrokerServer({UNIT_ID: UNIT_SECRET}, ttl_s=600) as broker:
        service = ServerThread(accept_key=broker.accept)
        service.start()
        try:
            cfg = parse_config({"realtime": {"url": f"ws://127.0.0.1:{service.port}/v1/realtime"},
                                "broker": {"url": broker.url, "unit_id": UNIT_ID}})
            ok = selftest.check_network(cfg, {"VOXBOX_UNIT_SECRET": UNIT_SECRET})
            assert ok.result == "PASS" and ok.details["session_id"], ok
            assert broker.count == 1 and broker.requests[0].unit_id == UNIT_ID
            assert ok.details["broker"] == broker.url and ok.details["key_source"] == "env:VOXBOX_UNIT_SECRET"
            text = json.dumps(selftest.to_json([ok]))
            assert UNIT_SECRET not in text and all(t not in text for t in broker.issued)
            # the account key alone does not do in broker mode
            none = selftest.check_network(cfg, {"VOXBOX_API_KEY": KEY})
            assert none.result == "FAIL" and none.hint.startswith("unprovisioned") \
                and "VOXBOX_UNIT_SECRET" in none.hint, none
            # a refused unit secret: fatal, and no connection was tried
            conns = len(service.record.connections())
            bad = selftest.check_network(cfg, {"VOXBOX_UNIT_SECRET": "wrong-" + UNIT_SECRET})
            assert bad.result == "FAIL" and bad.hint.startswith("broker:") and "HTTP 401" in bad.hint, bad
            assert bad.details["fatal"] is True and bad.details["broker_status"] == 401
            assert "wrong-" + UNIT_SECRET not in json.dumps(selftest.to_json([bad]))
            # a broker in trouble: transient
            broker.fail_status = 503
            down = selftest.check_network(cfg, {"VOXBOX_UNIT_SECRET": UNIT_SECRET})
            assert down.result == "FAIL" and "HTTP 503" in down.hint and down.details["fatal"] is False, down
            assert len(service.record.connections()) == conns
        finally:
            service.stop()
        # the service refuses the broker's token
        broker.fail_status = None
        other = ServerThread(api_key="sk-only-this-key")
        other.start()
        try:
            cfg = parse_config({"realtime": {"url": f"ws://127.0.0.1:{other.port}/v1/realtime"},
                                "broker": {"url": broker.url, "unit_id": UNIT_ID}})
            r = selftest.check_network(cfg, {"VOXBOX_UNIT_SECRET": UNIT_SECRET})
        finally:
            other.stop()
        assert r.result == "FAIL" and r.hint.startswith("auth: the service rejected the broker token"), r


def test_network_broker_mode_without_unit_id(monkeypatch):
    from voxbox.host.credentials import CredentialError

    def no_identity(path=None):
        raise CredentialError("no unit identity (set broker.unit_id or provision the unit)")

    monkeypatch.setattr("voxbox.realtime.broker.load_unit_id", no_identity)
    cfg = parse_config({"realtime": {"url": "local"}, "broker": {"url": "http://127.0.0.1:9/t"}})
    r = selftest.check_network(cfg, {"VOXBOX_UNIT_SECRET": UNIT_SECRET})
    assert r.result == "FAIL" and "no unit identity" in r.hint, r


def test_pink_noise_is_the_shared_generator():
    """The burst is speech.pink_noise band-limited, faded, at NOISE_DBFS RMS."""
    from voxbox.audio.speech import pink_noise

    n = 48000
    x = audiocheck._pink(n, -20.0)
    assert abs(20 * np.log10(np.sqrt(np.mean(x**2)) / 32768) + 20.0) < 1e-9
    ref = pink_noise(n, -20.0, 1, rate=16000, band=(200.0, 7000.0))
    mid = slice(320, n - 320)  # outside the 20 ms fades only the gain differs
    g = np.dot(x[mid], ref[mid]) / np.dot(ref[mid], ref[mid])
    assert np.allclose(x[mid], g * ref[mid]) and abs(g - 1) < 0.01
    assert abs(x[0]) < abs(ref[0]) * 0.01 + 1e-9 and abs(x[-1]) < abs(ref[-1]) * 0.01 + 1e-9
    spec = np.abs(np.fft.rfft(ref))
    f = np.fft.rfftfreq(n, 1 / 16000)
    assert spec[(f > 0) & (f < 200)].max() < 1e-6 and spec[f > 7000].max() < 1e-6


def test_shared_constants():
    from voxbox import cli
    from voxbox.field import report
    assert selftest.EXIT_CONFIG is cli.EXIT_CONFIG == 78
    assert report.SELFTEST_STATE_FILE == selftest.STATE_FILE == "selftest.json"


# -- button and LED -------------------------------------------------------------------------
def _mock_factory():
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    return MockFactory(pin_class=MockPWMPin)


def test_button_and_led_cycle_with_mock_pins():
    cfg = parse_config({"gpio": {"pin_factory": "mock"}})
    factory = _mock_factory()
    said: list[str] = []
    btn = factory.pin(cfg.gpio.button)

    def press() -> None:
        while not any("Press the button" in s for s in said):
            time.sleep(0.01)
        time.sleep(0.1)
        btn.drive_low()  # active low: pressed

    th = threading.Thread(target=press, daemon=True)
    th.start()
    r = selftest.check_button_led(cfg, timeout_s=3, led_s=0.02, prompt=said.append, pin_factory=factory)
    th.join(2)
    assert r.result == "PASS" and 50 <= r.value < 3000, r
    from voxbox.gpio.led import PATTERNS

    assert sum(s.strip().startswith("LED:") for s in said) == len(PATTERNS)
    factory.reset()
    # no press: FAIL naming the pin
    r = selftest.check_button_led(cfg, timeout_s=0.2, led_s=0.0, prompt=said.append, pin_factory=_mock_factory())
    assert r.result == "FAIL" and f"GPIO{cfg.gpio.button}" in r.hint


def test_button_is_skipped_unless_interactive_and_skip_list():
    cfg = parse_config({"realtime": {"url": "local"}})
    res = selftest.run_selftest(cfg, skip={"mic", "echo", "aec", "network", "wake"})
    assert [r.result for r in res] == ["SKIP"] * 6
    assert res[3].hint.startswith("interactive only")
    with pytest.raises(ValueError, match="nosuch"):
        selftest.run_selftest(cfg, skip={"nosuch"})


# -- wake word ------------------------------------------------------------------------------
def test_wake_word_on_the_packaged_sample(tmp_path):
    cfg = parse_config({})
    r = selftest.check_wake(cfg)
    # the package ships voxbox/data/hey_jarvis.wav, so a unit needs no speech synthesiser
    assert r.result == "PASS" and r.value >= 0.5 and r.details["sample"].endswith("data/hey_jarvis.wav"), r
    # a stored sample of something else: not detected
    from voxbox.audio.speech import render_speech, write_wav

    other = tmp_path / "other.wav"
    write_wav(other, render_speech("Good morning, the kitchen lights are on."), 16000)
    r = selftest.check_wake(cfg, other)
    assert r.result == "FAIL" and "not detected" in r.hint
    r = selftest.check_wake(cfg, tmp_path / "missing.wav")
    assert r.result == "FAIL" and "missing.wav" in r.hint


def test_wake_custom_model_without_sample_is_skipped():
    cfg = parse_config({"wake": {"model": "/etc/voxbox/computer.tflite"}})
    r = selftest.check_wake(cfg)
    assert r.result == "SKIP" and "--wake-sample" in r.hint


# -- command line ---------------------------------------------------------------------------
def test_config_error_exits_78(tmp_path, capsys):
    assert voxbox_main(["selftest", "--config", str(tmp_path / "nope.toml")]) == 78
    assert "nope.toml" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[audio]\ncapture_devise = "x"\n')
    assert voxbox_main(["selftest", "--config", str(bad)]) == 78
    assert "audio.capture_devise" in capsys.readouterr().err


def test_cli_json_all_skipped_exit_0(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[realtime]\nurl = "local"\n')
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    args = ["--config", str(cfg), "--json", "--log-format", "json"]
    for n in selftest.CHECKS:
        args += ["--skip", n]
    assert voxbox_main(["selftest", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["result"] == "PASS" and {c["result"] for c in out["checks"]} == {"SKIP"}
    assert (tmp_path / "state" / "selftest.json").is_file()


def test_parser_registers_selftest():
    import argparse

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    selftest.add_parser(sub)
    a = p.parse_args(["selftest", "--skip", "mic", "--skip", "wake", "--json", "--interactive"])
    assert a.func is selftest.cmd_selftest and a.skip == ["mic", "wake"] and a.json and a.interactive
    with pytest.raises(SystemExit):
        p.parse_args(["selftest", "--skip", "nosuch"])
