"""Configuration: validation names the key and the allowed values; credentials."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from voxbox import cli
from voxbox.config import ConfigError, apply_overrides, load_config, parse_config
from voxbox.host.credentials import CredentialError, CredentialInvalid, Secret, load_api_key


def test_defaults_are_valid():
    cfg = parse_config({})
    assert cfg.realtime.dialect == "openai-ga"
    assert cfg.audio.capture_rate == 16000 and cfg.audio.period_ms == 10
    assert cfg.wake.model == "hey_jarvis"
    assert (cfg.gpio.button, cfg.gpio.led) == (17, 12)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError) as e:
        parse_config({"audio": {"capture_devcie": "hw:0"}})
    assert "audio.capture_devcie: unknown key" in str(e.value)


def test_bad_dialect_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        parse_config({"realtime": {"dialect": "openai"}})
    msg = str(e.value)
    assert "realtime.dialect" in msg and "'openai'" in msg
    for allowed in ("openai-ga", "openai-beta", "azure-voicelive"):
        assert allowed in msg


def test_wrong_type_is_named():
    with pytest.raises(ConfigError) as e:
        parse_config({"wake": {"threshold": "high"}, "gpio": {"button": 99}})
    msg = str(e.value)
    assert "wake.threshold" in msg and "gpio.button" in msg


def test_jitter_bounds_named():
    cfg = parse_config({"audio": {"jitter_min_ms": 40, "jitter_max_ms": 300}})
    assert (cfg.audio.jitter_min_ms, cfg.audio.jitter_max_ms) == (40, 300)
    with pytest.raises(ConfigError) as e:
        parse_config({"audio": {"jitter_min_ms": 400, "jitter_max_ms": 300}})
    assert "audio.jitter_min_ms (400)" in str(e.value) and "audio.jitter_max_ms (300)" in str(e.value)


def test_pin_factory_values():
    with pytest.raises(ConfigError) as e:
        parse_config({"gpio": {"pin_factory": "rpi"}})
    assert "'auto'" in str(e.value) and "'mock'" in str(e.value)


def test_same_pin_rejected():
    with pytest.raises(ConfigError, match="same pin"):
        parse_config({"gpio": {"button": 12, "led": 12}})


def test_url_scheme():
    with pytest.raises(ConfigError, match="realtime.url"):
        parse_config({"realtime": {"url": "http://example.com"}})
    assert parse_config({"realtime": {"url": "local"}}).realtime.url == "local"


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[realtime\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    good = tmp_path / "good.toml"
    good.write_text('[realtime]\ndialect = "openai-beta"\n[realtime.turn_detection]\nsilence_duration_ms = 700\n')
    cfg = load_config(good)
    assert cfg.realtime.turn_detection.silence_duration_ms == 700


def test_string_typed_override_stays_text_and_input_is_not_changed():
    data = {"wake": {"threshold": 0.5}}
    out = apply_overrides(data, ["wake.model=123", "wake.threshold=0.7"])
    assert out["wake"] == {"threshold": 0.7, "model": "123"} and data == {"wake": {"threshold": 0.5}}


def test_overrides():
    data = apply_overrides({"wake": {"model": "alexa"}}, ["wake.threshold=0.7", "audio.capture_device=hw:1"])
    cfg = parse_config(data)
    assert cfg.wake.threshold == 0.7 and cfg.wake.model == "alexa"
    assert cfg.audio.capture_device == "hw:1"
    with pytest.raises(ConfigError):
        apply_overrides({}, ["novalue"])


def test_api_key_from_credentials_dir(tmp_path):
    (tmp_path / "voxbox-api-key").write_text("sk-test-123\n")
    key = load_api_key({"CREDENTIALS_DIRECTORY": str(tmp_path), "VOXBOX_API_KEY": "other"})
    assert key.value == "sk-test-123"
    assert "sk-test" not in repr(key) and "sk-test" not in str(key)


def test_api_key_from_env_and_missing(tmp_path):
    assert load_api_key({"VOXBOX_API_KEY": "k"}).value == "k"
    with pytest.raises(CredentialError) as e:
        load_api_key({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "VOXBOX_API_KEY" in str(e.value) and "LoadCredential" in str(e.value)
    assert load_api_key({}, required=False) == Secret("", "none")


def test_broker_url_checked_by_the_rule_the_token_broker_applies():
    assert parse_config({"broker": {"url": "http://[::1]:8/t"}}).broker.url
    for bad in ("http://localhost.example.com/t", "http://127.0.0.1@evil.example/t",
                "https://user:pw@b.example/t"):
        with pytest.raises(ConfigError, match="broker.url"):
            parse_config({"broker": {"url": bad}})


# ------------------------------------------------ field hardening (issue 16): URL, key, metrics
REPO = Path(__file__).resolve().parents[1]


def _write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _run_daemon(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``voxbox run`` as systemd starts it, in a clean environment plus ``env``."""
    penv = {k: v for k, v in os.environ.items()
            if k not in ("VOXBOX_API_KEY", "CREDENTIALS_DIRECTORY", "VOXBOX_UNIT_SECRET")}
    penv.update(env)
    return subprocess.run([sys.executable, "-m", "voxbox", "run", *args], env=penv,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("url", [
    "ws://api.openai.com/v1/realtime",
    "ws://10.0.0.7:8765/v1/realtime",
    "ws://[2001:db8::1]/v1/realtime",
    "ws://localhost.example.com/v1/realtime",
    "ws://127.0.0.1.nip.io/v1/realtime",
])
def test_plain_ws_to_a_remote_host_is_refused(url):
    with pytest.raises(ConfigError) as e:
        parse_config({"realtime": {"url": url}})
    msg = str(e.value)
    assert "realtime.url" in msg and "unencrypted" in msg and "wss://" in msg, msg


def test_plain_ws_allowed_only_to_loopback_and_wss_always():
    for url in ("ws://127.0.0.1:8765/v1/realtime", "ws://127.1.2.3/v1/realtime", "ws://localhost:9/x",
                "ws://[::1]:8765/v1/realtime", "wss://api.openai.com/v1/realtime", "wss://10.0.0.7/x", "local"):
        assert parse_config({"realtime": {"url": url}}).realtime.url == url
    # the message never shows user info or the query (Azure's api-key= is a secret)
    with pytest.raises(ConfigError) as e:
        parse_config({"realtime": {"url": "ws://u:pw-secret@voice.example.com/rt?api-key=q-secret-1"}})
    assert "pw-secret" not in str(e.value) and "q-secret-1" not in str(e.value)
    assert "voice.example.com" in str(e.value)


def test_plain_ws_refused_by_check_config_and_at_daemon_start(tmp_path, monkeypatch, capsys):
    cfg = _write_config(tmp_path / "config.toml", '[realtime]\nurl = "ws://voice.example.com/v1/realtime"\n')
    monkeypatch.setenv("VOXBOX_API_KEY", "sk-good-key-0123456789")
    assert cli.main(["check-config", "--config", str(cfg)]) == cli.EXIT_CONFIG == 78
    err = capsys.readouterr().err
    assert "realtime.url" in err and "unencrypted" in err
    res = _run_daemon(["--config", str(cfg)], {"VOXBOX_API_KEY": "sk-good-key-0123456789"})
    assert res.returncode == 78, res.stderr
    assert "realtime.url" in res.stderr and "unencrypted" in res.stderr


BAD_KEYS = {
    "crlf": "sk-proj-AAAAbbbb1111\r\nX-Injected: CCCCdddd2222",
    "lf": "sk-proj-AAAAbbbb1111\nCCCCdddd2222",
    "tab": "sk-proj-AAAAbbbb1111\tCCCCdddd2222",
    "bell": "sk-proj-AAAAbbbb1111\x07CCCCdddd2222",
    "space": "sk-proj-AAAAbbbb1111 CCCCdddd2222",
    "nbsp": "sk-proj-AAAAbbbb1111\u00a0CCCCdddd2222",
    "zero-width": "sk-proj-AAAAbbbb1111\u200bCCCCdddd2222",
    "bom": "\ufeffsk-proj-AAAAbbbb1111CCCCdddd2222",
    "del": "sk-proj-AAAAbbbb1111\x7fCCCCdddd2222",
}
KEY_PARTS = ("sk-proj", "AAAAbbbb1111", "CCCCdddd2222", "X-Injected")


def _assert_no_part_of_the_key(text: str) -> None:
    for part in KEY_PARTS:
        assert part not in text, f"{part!r} (part of the key) in {text!r}"


@pytest.mark.parametrize("name", list(BAD_KEYS))
def test_api_key_with_control_characters_or_inner_whitespace_is_refused(tmp_path, name):
    key = BAD_KEYS[name]
    # from the environment: the message names the variable
    with pytest.raises(CredentialInvalid) as e:
        load_api_key({"VOXBOX_API_KEY": key})
    assert "environment variable VOXBOX_API_KEY" in str(e.value)
    _assert_no_part_of_the_key(str(e.value))
    # from a systemd credential: the message names the credential and its file
    (tmp_path / "voxbox-api-key").write_text(key + "\n")
    with pytest.raises(CredentialInvalid) as e:
        load_api_key({"CREDENTIALS_DIRECTORY": str(tmp_path)}, required=False)  # refused even when optional
    msg = str(e.value)
    assert "credential voxbox-api-key" in msg and str(tmp_path / "voxbox-api-key") in msg
    assert e.value.source in msg
    _assert_no_part_of_the_key(msg)


def test_api_key_trailing_newline_still_stripped_and_non_utf8_file_refused(tmp_path):
    (tmp_path / "voxbox-api-key").write_text("sk-proj-AAAAbbbb1111CCCCdddd2222\r\n")
    assert load_api_key({"CREDENTIALS_DIRECTORY": str(tmp_path)}).value == "sk-proj-AAAAbbbb1111CCCCdddd2222"
    (tmp_path / "voxbox-api-key").write_bytes(b"sk-proj-AAAAbbbb1111\xffCCCCdddd2222\n")
    with pytest.raises(CredentialInvalid) as e:
        load_api_key({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "not UTF-8" in str(e.value) and "voxbox-api-key" in str(e.value)
    _assert_no_part_of_the_key(str(e.value))


def test_bad_api_key_refused_by_check_config_and_at_daemon_start(tmp_path, monkeypatch, capsys):
    key = BAD_KEYS["crlf"]
    cfg = _write_config(tmp_path / "config.toml", '[gpio]\npin_factory = "mock"\n')
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("VOXBOX_API_KEY", key)
    assert cli.main(["check-config", "--config", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert "VOXBOX_API_KEY" in err and "line break" in err
    _assert_no_part_of_the_key(err)
    # the daemon, key from a systemd credential, JSON log: exit 78 (not "unprovisioned"
    # and waiting for ever), the credential named, no part of the key anywhere
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "voxbox-api-key").write_text(key + "\n")
    res = _run_daemon(["--config", str(cfg), "--log-format", "json"], {"CREDENTIALS_DIRECTORY": str(creds)})
    assert res.returncode == 78, res.stderr
    assert "credential voxbox-api-key" in res.stderr and "line break" in res.stderr
    assert "unprovisioned" not in res.stderr
    _assert_no_part_of_the_key(res.stdout + res.stderr)


def test_metrics_section_defaults_and_validation():
    m = parse_config({}).metrics
    assert (m.textfile, m.interval_s) == ("", 15.0)  # off by default
    m = parse_config({"metrics": {"textfile": "/var/lib/prometheus/node-exporter/voxbox.prom",
                                  "interval_s": 60}}).metrics
    assert (m.textfile, m.interval_s) == ("/var/lib/prometheus/node-exporter/voxbox.prom", 60.0)
    assert parse_config({"metrics": {"interval_s": 1}}).metrics.interval_s == 1.0
    assert parse_config({"metrics": {"interval_s": 3600}}).metrics.interval_s == 3600.0
    for bad, key in (({"interval_s": 0.5}, "metrics.interval_s"), ({"interval_s": 3601}, "metrics.interval_s"),
                     ({"interval_s": "often"}, "metrics.interval_s"),
                     ({"textfile": "voxbox.prom"}, "metrics.textfile"),
                     ({"textfile": "/var/lib/node-exporter/voxbox.txt"}, "metrics.textfile"),
                     ({"textfile": 5}, "metrics.textfile"),
                     ({"intervall_s": 5}, "metrics.intervall_s: unknown key")):
        with pytest.raises(ConfigError) as e:
            parse_config({"metrics": bad})
        assert key in str(e.value), (bad, str(e.value))
    assert apply_overrides({}, ["metrics.textfile=/run/x.prom"])["metrics"]["textfile"] == "/run/x.prom"


def test_example_config_is_valid_and_documents_metrics():
    example = REPO / "provisioning" / "config.example.toml"
    cfg = load_config(example)
    assert cfg.metrics.textfile == "" and cfg.metrics.interval_s == 15.0
    text = example.read_text()
    assert "[metrics]" in text and "textfile" in text and "interval_s" in text
