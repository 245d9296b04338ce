"""voxbox.host.sd helpers: secret scrubbing and the state directory."""

from __future__ import annotations

import logging
from pathlib import Path

from voxbox.host import sd


def test_scrub_and_forget():
    s = "tok-3f9a1c77e2"
    try:
        sd.redact(s)
        assert sd.scrub(f"Bearer {s}, again {s}") == "Bearer <redacted>, again <redacted>"
        rec = logging.LogRecord("voxbox.x", logging.INFO, __file__, 1, "using %s", (s,), None)
        assert s not in sd.TextFormatter().format(rec) and s not in sd.JsonFormatter().format(rec)
    finally:
        sd.forget(s)
    assert sd.scrub(f"Bearer {s}") == f"Bearer {s}"
    sd.forget(s)  # forgetting twice is harmless


def test_state_dir():
    assert sd.state_dir({}) == Path("/var/lib/voxbox")
    assert sd.state_dir({"STATE_DIRECTORY": ""}) == Path("/var/lib/voxbox")
    assert sd.state_dir({"STATE_DIRECTORY": "/var/lib/voxbox-a"}) == Path("/var/lib/voxbox-a")
    # systemd joins several StateDirectory= entries with ':'; the first is ours
    assert sd.state_dir({"STATE_DIRECTORY": "/s/one:/s/two"}) == Path("/s/one")


def test_state_dir_defaults_to_the_process_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    assert sd.state_dir() == tmp_path
