"""Test helper: the device-open probe children (voxbox.audio.alsa.probe_open) still alive."""

from __future__ import annotations

from pathlib import Path


def probe_children(device: str) -> list[int]:
    """PIDs of open-probe children for the ALSA PCM ``device`` still alive (their command
    line imports alsaaudio and names the device in its JSON arguments)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"alsaaudio" in cmd and f'"device": "{device}"'.encode() in cmd:
                pids.append(int(d.name))
    return pids
