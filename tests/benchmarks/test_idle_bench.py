"""The first question after quiet, and a day of use: the real daemon, the local server,
the wake word on real speech, idle periods of minutes between questions.

On demand: ``./dev bench tests/benchmarks/test_idle_bench.py`` (about 18 min).
``VOXBOX_IDLE_S`` (default 300) sets the quiet before the single question;
``VOXBOX_DAY_QUESTIONS`` (default 6) and ``VOXBOX_DAY_GAP_S`` (default 110) the day of use:
that many "Hey Jarvis, ..." questions, each after that much quiet (6 x 2 min = 12 min,
the day in which the unit used to answer none of 6).

Per question it prints: answered (the reply played out), in the session open at the wake
word or not, the connections opened, stalls declared, ``session_lost`` prompts, wake word
to first audio sent (``VOXBOX_WAKE_TO_UPLINK_MS``) and end of speech to first reply
sample played (``VOXBOX_LATENCY_MS``), from the daemon's ``turn`` record.
"""

from __future__ import annotations

import os
import time

import pytest

from voxbox.audio.speech import demo_utterance
from voxbox.sim.harness import DaemonHarness

pytestmark = pytest.mark.benchmark


def one_question(h: DaemonHarness, sig, label: str) -> dict:
    conns_before = len(h.server.record.connections())
    t0 = time.monotonic()
    h.mic.play(sig)
    out = {"label": label, "answered": False}
    try:
        wake = h.wait_event("wake", timeout=15, after=t0)
        h.wait_event("playback_end", timeout=45, after=t0)
        turn = h.wait_event("turn", timeout=10, after=t0)
        out.update(answered=True, wake_score=wake["VOXBOX_WAKE_SCORE"],
                   wake_to_uplink_ms=turn.get("VOXBOX_WAKE_TO_UPLINK_MS"),
                   latency_ms=turn.get("VOXBOX_LATENCY_MS"))
    except Exception as exc:  # a miss is a figure, not a crash of the bench
        out["error"] = str(exc).splitlines()[0]
    out["new_connections"] = len(h.server.record.connections()) - conns_before
    out["stalls"] = len([r for r in h.events("stall") if r["mono"] >= t0])
    out["session_lost"] = len([r for r in h.events("prompt") if r["mono"] >= t0
                               and r.get("VOXBOX_PROMPT") == "session_lost"])
    h.wait_state("idle", timeout=30, after=t0)
    return out


def show(rows: list[dict]) -> None:
    print(f"\n{'question':<22}{'answered':>9}{'same session':>13}{'stalls':>7}{'lost':>5}"
          f"{'wake->uplink ms':>16}{'latency ms':>11}{'wake score':>11}")
    for r in rows:
        print(f"{r['label']:<22}{str(r['answered']):>9}{str(r['new_connections'] == 0):>13}{r['stalls']:>7}"
              f"{r['session_lost']:>5}{str(r.get('wake_to_uplink_ms', '-')):>16}{str(r.get('latency_ms', '-')):>11}"
              f"{str(r.get('wake_score', '-')):>11}")
    n = sum(r["answered"] and r["new_connections"] == 0 for r in rows)
    print(f"answered in the same session: {n} of {len(rows)}")


def test_first_question_after_long_quiet(tmp_path):
    idle = float(os.environ.get("VOXBOX_IDLE_S", "300"))
    sig, _ = demo_utterance()
    with DaemonHarness(tmp_path, echo_db=-30, config={"conversation": {"follow_up_s": 0}}) as h:
        h.start()
        time.sleep(idle)
        row = one_question(h, sig, f"after {idle:.0f} s idle")
        show([row])
        assert row["answered"] and row["new_connections"] == 0 and row["stalls"] == 0


def test_a_day_of_use(tmp_path):
    n = int(os.environ.get("VOXBOX_DAY_QUESTIONS", "6"))
    gap = float(os.environ.get("VOXBOX_DAY_GAP_S", "110"))
    sig, _ = demo_utterance()
    rows = []
    with DaemonHarness(tmp_path, echo_db=-30, config={"conversation": {"follow_up_s": 0}}) as h:
        h.start()
        for k in range(n):
            time.sleep(gap)
            rows.append(one_question(h, sig, f"#{k + 1} after {gap:.0f} s"))
        show(rows)
        assert all(r["answered"] for r in rows)
