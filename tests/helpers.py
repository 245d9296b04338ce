"""Plain helper functions shared by the tests (import them: ``from helpers import run``;
tests/ is on sys.path). Fixtures live in tests/conftest.py; synthetic signals, spoken
questions included, in tests/synth.py."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voxbox.config import Realtime, parse_config

if TYPE_CHECKING:
    from voxbox.sim.harness import DaemonHarness


def run(coro, timeout: float = 30):
    """Run ``coro`` to completion in a fresh event loop; TimeoutError after ``timeout`` s."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Loop:
    """An event loop stand-in for code that reports from its threads: ``call_soon_threadsafe``
    calls at once (in the caller's thread, in order); ``create_task`` closes the coroutine
    unrun (the echo path's saves are not run here)."""

    def call_soon_threadsafe(self, fn, *args):
        fn(*args)

    def create_task(self, coro):
        coro.close()


class FakeClock:
    """A clock (``clock()`` -> seconds) that stands still until a test moves ``t``."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def leftovers(directory: Path, keep: str | None = None) -> list[str]:
    """Files an atomic write left in ``directory``, sorted by name: with ``keep`` (the file
    written), every other file; without, the temporary files (``*.tmp``, as
    ``voxbox.host.statefile.atomic_write`` names them)."""
    if keep is None:
        return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))
    return sorted(p.name for p in directory.iterdir() if p.name != keep)


def write_raw_wav(path: Path, frames: bytes | np.ndarray, rate: int, width: int = 2, channels: int = 1) -> Path:
    """Write ``frames`` (bytes, or an array written as its bytes) as they are into a WAV file
    of any sample ``width`` (bytes) and ``channels``, with the standard library's ``wave``
    (not the package's writer); returns ``path``."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames if isinstance(frames, bytes) else np.asarray(frames).tobytes())
    return path


def realtime_config(**kw) -> Realtime:
    """The ``[realtime]`` settings parsed from ``kw`` (the rest of the configuration default)."""
    return parse_config({"realtime": kw}).realtime


def tap_turn(h: DaemonHarness, sig: np.ndarray, until: str = "playback_end", timeout: float = 40) -> dict:
    """One turn on a running daemon: tap the button, wait for listening, play ``sig`` into the
    rig's mic; returns the first ``until`` record after the tap (within ``timeout`` s)."""
    t0 = time.monotonic()
    h.press()
    h.wait_state("listening", timeout=5, after=t0)
    h.mic.play(sig)
    return h.wait_event(until, timeout=timeout, after=t0)
