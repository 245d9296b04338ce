"""hardware/: the profiles are valid config fragments on pins clear of the sound buses, the
asound.conf examples load in alsa-lib and name the expected cards, and the wiring picture
numbers the 40-pin header correctly and shows the pins the default config uses."""
import os
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from voxbox.config import parse_config

HW = Path(__file__).resolve().parent.parent / "hardware"
PROFILES = sorted((HW / "profiles").glob("*.toml"))
ASOUND = sorted((HW / "asound").glob("*.conf"))
README = (HW / "README.md").read_text(encoding="utf-8")
SVG = HW / "wiring.svg"
NS = {"svg": "http://www.w3.org/2000/svg"}

#: the Raspberry Pi 40-pin header (Pi 3B+/4/5): physical pin -> BCM GPIO, or a supply name
HEADER = {
    1: "3V3", 2: "5V", 3: 2, 4: "5V", 5: 3, 6: "GND", 7: 4, 8: 14, 9: "GND", 10: 15,
    11: 17, 12: 18, 13: 27, 14: "GND", 15: 22, 16: 23, 17: "3V3", 18: 24, 19: 10, 20: "GND",
    21: 9, 22: 25, 23: 11, 24: 8, 25: "GND", 26: 7, 27: 0, 28: 1, 29: 5, 30: "GND",
    31: 6, 32: 12, 33: 13, 34: "GND", 35: 19, 36: 16, 37: 26, 38: 20, 39: "GND", 40: 21,
}
PIN_OF = {g: p for p, g in HEADER.items() if isinstance(g, int)}


def profile_data(path):
    return tomllib.loads(path.read_text(encoding="utf-8"))


def reserved(bus):
    """GPIOs of a bus in the README's "Pins the sound hardware uses" table."""
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] == bus:
            return {int(n) for n in re.findall(r"GPIO(\d+)", cells[1])}
    raise AssertionError(f"README has no row for {bus} in its pin table")


def used_pins(cfg):
    g = cfg.gpio
    return [g.button] + (list(g.rgb_led) if g.rgb_led else [g.led])


def test_the_three_profiles_exist_and_are_listed():
    names = {p.name for p in PROFILES}
    assert {"respeaker-2mic.toml", "usb-speakerphone.toml", "usb-mic-amp.toml"} <= names
    for name in names:
        assert f"(profiles/{name})" in README


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_profile_is_a_valid_config_fragment(path):
    data = profile_data(path)
    cfg = parse_config(data, str(path))  # merged over the defaults; unknown keys are errors
    # what the fragment says is what the config holds (nothing silently dropped)
    for section, values in data.items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_profile_uses_card_ids_not_indexes(path):
    audio = profile_data(path).get("audio", {})
    for key in ("capture_device", "playback_device", "mixer_device"):
        dev = audio.get(key)
        if dev is None:
            continue
        assert not re.search(r"hw:\d|CARD=\d|,\s*\d+\s*$", dev), f"{key} = {dev!r} uses a card index"
        assert re.fullmatch(r"(plug)?hw:CARD=[A-Za-z_][A-Za-z0-9_]{0,14}(,DEV=\d)?|voxbox_\w+|default", dev), dev


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_profile_pins_clear_of_i2s_i2c_spi(path):
    cfg = parse_config(profile_data(path))
    pins = used_pins(cfg)
    assert len(set(pins)) == len(pins)
    taken = reserved("I²S") | reserved("I²C") | reserved("SPI") | reserved("HAT EEPROM")
    assert taken >= {18, 19, 20, 21, 2, 3}
    assert not set(pins) & taken, f"{path.name}: {sorted(set(pins) & taken)} collide with a sound bus"


def test_default_and_rgb_pins_clear_of_the_buses():
    taken = reserved("I²S") | reserved("I²C") | reserved("SPI")
    default = parse_config({})
    rgb = parse_config({"gpio": {"rgb_led": [12, 13, 16]}})
    assert not (set(used_pins(default)) | set(used_pins(rgb))) & taken


def test_usb_mic_amp_crosses_clock_domains_with_drift_compensation():
    cfg = parse_config(profile_data(HW / "profiles" / "usb-mic-amp.toml"))
    card = lambda dev: re.search(r"CARD=(\w+)", dev).group(1)  # noqa: E731
    assert card(cfg.audio.capture_device) != card(cfg.audio.playback_device)
    assert cfg.frontend.drift_compensation and cfg.frontend.track_echo_delay
    assert "drift_compensation" in README


def test_single_i2s_card_plays_at_the_capture_rate():
    cfg = parse_config(profile_data(HW / "profiles" / "respeaker-2mic.toml"))
    assert cfg.audio.playback_rate == cfg.audio.capture_rate


# -- asound.conf examples ------------------------------------------------------------------
def _pcm_names(text):
    return re.findall(r"^pcm\.!?(\w+)\s*\{", text, flags=re.M)


def test_asound_example_per_profile():
    assert {p.stem for p in ASOUND} == {p.stem for p in PROFILES}
    assert "[`asound/`](asound/)" in README
    for path in ASOUND:
        names = _pcm_names(path.read_text(encoding="utf-8"))
        assert {"voxbox_mic", "voxbox_speaker"} <= set(names), path.name


@pytest.mark.parametrize("path", ASOUND, ids=lambda p: p.name)
def test_asound_example_loads_in_alsa_lib(path, tmp_path):
    """alsa-lib parses the file and resolves every PCM down to ``hw:CARD=<id>``: on a
    machine without that card the open fails with "Cannot get card index for <id>" (a
    syntax error or an undefined name fails differently); with the card it opens."""
    import alsaaudio  # noqa: F401  (a dependency; alsa-lib's alsa.conf comes with libasound2)

    assert Path("/usr/share/alsa/alsa.conf").exists(), "alsa-lib configuration missing (libasound2)"
    text = path.read_text(encoding="utf-8")
    cards = set(re.findall(r"hw:CARD=(\w+)", text))
    names = _pcm_names(text)
    probe = (
        "import sys, alsaaudio\n"
        "for name in sys.argv[1:]:\n"
        "    for kind in (alsaaudio.PCM_CAPTURE, alsaaudio.PCM_PLAYBACK):\n"
        "        try:\n"
        "            alsaaudio.PCM(kind, device=name).close()\n"
        "            print('OPEN', name, flush=True)\n"
        "        except alsaaudio.ALSAAudioError as e:\n"
        "            print('ERR', name, e, flush=True)\n"
        "print('HINTS', ' '.join(alsaaudio.pcms()))\n"
    )
    env = dict(os.environ, ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{path}", HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", probe, *names], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Unknown PCM" not in r.stderr and "corrupted" not in r.stderr, r.stderr
    hints = r.stdout.split("HINTS", 1)[1].split()
    for name in ("voxbox_mic", "voxbox_speaker"):
        assert name in hints, f"{name} has no hint.description (aplay -L does not list it)"
    for line in r.stdout.splitlines():
        if line.startswith("ERR"):
            missing = re.findall(r"Cannot get card index for (\w+)", r.stderr)
            assert missing and set(missing) <= cards, f"{line}\n{r.stderr}"


def test_usb_card_id_rule_documented():
    assert 'SUBSYSTEM=="sound"' in README and 'ATTR{id}="voxboxmic"' in README
    assert "CARD=voxboxmic" in (HW / "profiles" / "usb-mic-amp.toml").read_text(encoding="utf-8")


# -- wiring picture --------------------------------------------------------------------------
def svg_root():
    return ET.parse(SVG).getroot()  # well-formed XML or this raises


def test_readme_shows_the_picture():
    assert "![wiring](wiring.svg)" in README


def test_svg_is_well_formed_svg():
    root = svg_root()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") and root.find("svg:title", NS) is not None


def test_svg_header_numbering_matches_the_pi():
    root = svg_root()
    pins = {int(g.get("data-pin")): g for g in root.iter("{http://www.w3.org/2000/svg}g")
            if g.get("data-pin")}
    assert sorted(pins) == list(range(1, 41))
    xs = {}
    for pin, g in pins.items():
        circle = g.find("svg:circle", NS)
        xs[pin] = float(circle.get("cx"))
        label = " ".join(t.text or "" for t in g.iter("{http://www.w3.org/2000/svg}text"))
        expect = HEADER[pin]
        if isinstance(expect, int):
            assert g.get("data-gpio") == str(expect), pin
            assert re.search(rf"\bGPIO{expect}\b", label), (pin, label)
        else:
            assert g.get("data-gpio") is None and expect in label, (pin, label)
        assert re.search(rf"(^|\s){pin}(\s|$)", label), f"pin {pin} not numbered"
    # odd pins in the left column, even in the right; pin 1 at the top
    assert len({xs[p] for p in range(1, 41, 2)}) == 1 and len({xs[p] for p in range(2, 41, 2)}) == 1
    assert xs[1] < xs[2]
    ys = {p: float(pins[p].find("svg:circle", NS).get("cy")) for p in pins}
    assert ys[1] == min(ys.values()) and ys[1] == ys[2] and ys[39] == max(ys.values())


def test_svg_shows_the_default_button_and_led_wiring():
    cfg = parse_config({})
    root = svg_root()
    groups = {g.get("id"): g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("id")}
    button, led = groups["button-circuit"], groups["led-circuit"]
    assert button.get("data-gpio") == str(cfg.gpio.button)
    assert led.get("data-gpio") == str(cfg.gpio.led)
    # each circuit goes from the GPIO's pin to a GND pin
    for g, gpio in ((button, cfg.gpio.button), (led, cfg.gpio.led)):
        pins = [int(p) for p in g.get("data-pins").split()]
        assert PIN_OF[gpio] in pins and any(HEADER[p] == "GND" for p in pins)
    text = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for gpio in (cfg.gpio.button, cfg.gpio.led):
        assert f"GPIO{gpio}" in text and f"pin {PIN_OF[gpio]}" in text
    assert "330 Ω" in text
    rgb = groups["rgb-circuit"]
    assert rgb.get("data-gpio") == "12 13 16"
    for gpio in (12, 13, 16):
        assert f"pin {PIN_OF[gpio]} · GPIO{gpio}" in text


def test_svg_renders(tmp_path):
    out = tmp_path / "wiring.png"
    subprocess.run(["rsvg-convert", str(SVG), "-o", str(out)], check=True, timeout=60)
    assert out.stat().st_size > 10_000
