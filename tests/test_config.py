"""Configuration: validation names the key and the allowed values; credentials."""

import pytest

from voxbox.config import ConfigError, apply_overrides, load_config, parse_config
from voxbox.credentials import CredentialError, Secret, load_api_key


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
