"""The daemon's footprint in use: memory (VmRSS, VmHWM) and CPU while listening.

On demand: ``./dev bench tests/benchmarks/test_footprint_bench.py`` (one hour by default).
``VOXBOX_FOOTPRINT_S`` (default 3600) sets how long the real daemon runs on the rig with the
local server, a "Hey Jarvis, ..." question every ``VOXBOX_FOOTPRINT_TURN_S`` (default 120) s
and background noise between them (the wake word, the front end and both wake detectors
run all the time).

It prints, from ``/proc/<pid>/status`` and ``/proc/<pid>/stat``:

- VmRSS after start, after the first turn, and at the end; VmHWM (peak RSS) at the end;
- CPU while listening: user + system CPU seconds of the daemon per second of audio over a
  quiet stretch (no turn, no reply: capture, front end, wake word on the microphone and on
  the reference), and the same scaled to a Raspberry Pi 4 by ``PI4_FACTOR``;
- the ML runtimes loaded in the daemon (from ``/proc/<pid>/maps``: onnxruntime, TensorFlow
  Lite / LiteRT, scipy, sklearn).

``PI4_FACTOR`` (4.0): a Cortex-A72 at 1.8 GHz does about a quarter of the single-thread
work of the x86-64 cores this is measured on; the figure is an estimate to check on the
unit (``voxbox selftest`` prints the real one there). Source: Geekbench 6 single-core, Pi 4
about 250-300 against about 1,100-1,300 for a 2020s x86-64 server core (browser.geekbench.com
searches "Raspberry Pi 4 Model B" and the host CPU model).
"""

from __future__ import annotations

import os
import time

import pytest

from voxbox.audio.speech import demo_utterance
from voxbox.sim.harness import DaemonHarness

pytestmark = pytest.mark.benchmark

PI4_FACTOR = 4.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) // 1024  # MiB
    return out


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def runtimes(pid: int) -> list[str]:
    maps = open(f"/proc/{pid}/maps").read()
    # package directories (numpy's own OpenBLAS is libscipy_openblas: not scipy)
    names = {"/onnxruntime/": "onnxruntime", "/tflite_runtime/": "tflite-runtime",
             "/ai_edge_litert/": "LiteRT (ai-edge-litert)", "/scipy/": "scipy", "/sklearn/": "scikit-learn",
             "/pyopen_wakeword/lib/": "pyopen-wakeword's TensorFlow Lite"}
    return sorted({v for k, v in names.items() if k in maps})


def test_footprint_in_use(tmp_path):
    total = float(os.environ.get("VOXBOX_FOOTPRINT_S", "3600"))
    every = float(os.environ.get("VOXBOX_FOOTPRINT_TURN_S", "120"))
    sig, _ = demo_utterance()
    with DaemonHarness(tmp_path, echo_db=-30, config={"conversation": {"follow_up_s": 0}}) as h:
        h.start()
        pid = h.proc.pid
        t_start = time.monotonic()
        time.sleep(15.0)  # past the wake word's 10 s warm-up
        rss_start = status(pid)["VmRSS"]
        # CPU while listening: a quiet 30 s
        c0, t0 = cpu_s(pid), time.monotonic()
        time.sleep(30.0)
        listen = (cpu_s(pid) - c0) / (time.monotonic() - t0)
        turns = answered = 0
        rss_first = None
        while time.monotonic() - t_start < total:
            t = time.monotonic()
            h.mic.play(sig)
            turns += 1
            try:
                h.wait_event("playback_end", timeout=45, after=t)
                answered += 1
            except Exception:
                pass
            if rss_first is None:
                time.sleep(2.0)
                rss_first = status(pid)["VmRSS"]
            time.sleep(max(0.0, t + every - time.monotonic()))
        end = status(pid)
        print(f"\nfootprint over {(time.monotonic() - t_start) / 60:.1f} min, {answered}/{turns} turns answered:")
        print(f"  VmRSS after start {rss_start} MiB, after the first turn {rss_first} MiB, at the end "
              f"{end['VmRSS']} MiB; VmHWM {end['VmHWM']} MiB")
        print(f"  CPU while listening (capture, front end, 2 wake detectors): {listen:.3f} CPU s per audio s "
              f"on this machine; x{PI4_FACTOR:g} for a Pi 4: {listen * PI4_FACTOR:.2f}")
        print(f"  ML runtimes mapped: {', '.join(runtimes(pid)) or 'none'}")
        assert answered == turns
