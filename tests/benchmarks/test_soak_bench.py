"""Soak: the real daemon for half an hour, a question every 2 minutes, a fault of the local
server every 5 minutes (issue 16, "a 30-minute on-demand soak").

Run (on demand; as long as ``VOXBOX_SOAK_MIN`` says):

    VOXBOX_SOAK_MIN=30 ./dev bench tests/benchmarks/test_soak_bench.py

What runs: :class:`voxbox.sim.harness.DaemonHarness`, i.e. the ``voxbox run`` process on the
ALSA file rig (microphone and speaker paced in real time, a -30 dB echo of the speaker in
the microphone, white noise at -60 dBFS), the local Realtime server in this process, mock
GPIO, a ``NOTIFY_SOCKET``; the product's configuration otherwise (follow-up window,
stall detection, fatal retry, ...) except the harness's fast reconnect (0.2-2 s).

Knobs (environment):

- ``VOXBOX_SOAK_MIN`` (default 30): length of the run, minutes;
- ``VOXBOX_SOAK_TURN_S`` (default 120): a question every this many seconds, alternately a
  tap of the button then a spoken question, and "Hey Jarvis, what will the weather be like
  tomorrow?" (the wake word);
- ``VOXBOX_SOAK_FAULT_S`` (default 300): a fault every this many seconds, in the fixed
  rotation of ``FAULTS`` below (every kind the local server's ``FaultControls`` offers that
  a test uses, plus the server going away): drop, stall, outage, expiry, protocol garbage,
  audio jitter, HTTP 429 rejections. A fault due together with a question is injected
  while the reply plays (the ones that take the link down: drop, stall, outage, expiry,
  HTTP 429) or armed just before the question (protocol garbage, audio jitter); a fault
  that stays armed (jitter, unknown fields) is cleared when the next fault comes. With the
  defaults (faults at 5, 10, 15, 20 and 25 min, questions every even minute): drop (idle),
  stall (mid-reply), outage (idle), expiry (mid-reply), protocol garbage (the question at
  26 min gets the oversized delta); jitter and 429 come only in longer runs;
- ``VOXBOX_SOAK_FAULTS`` (default: all, in that order): the rotation, comma-separated kinds
  (e.g. ``outage,http_429``), to reach the later kinds in a short run;
- ``VOXBOX_SOAK_PROGRESS_S`` (default 300, or a quarter of a shorter run): a progress line.

The test's timeout is the run plus 15 minutes (a marker: it overrides ``./dev bench``'s
``--timeout=1200``). If the daemon process exits it is started again (as systemd's ``Restart=always`` would)
and the exit is counted; the test fails on any.

Printed (progress lines and the final summary):

- ``RSS``: the daemon's ``VmRSS`` (``/proc/<pid>/status``), MiB: at start (just after
  ``READY=1``), after the first answered question (models warm), at the end; the peak of
  the samples taken every ~0.5 s and the kernel's ``VmHWM`` (peak RSS of the process);
- ``restarts``: exits of the daemon process (exit code each) and the pids seen; 0 and one
  pid expected;
- ``turns``: questions asked and answered; answered = a ``playback_end`` or a ``turn``
  record of the daemon after the question and before the next one; per question its time,
  kind (tap / wake), the daemon's state before it, the fault that hit it if any and the
  spoken prompts the unit said meanwhile (``session_lost``: the unit told the user the
  turn was lost);
- ``faults``: per fault its time, kind, whether the link went down after it, and
  ``recovered``: the link is up again before the next fault (a ``session_ready`` /
  ``reconnected`` after the last ``link_down``/``link_fatal``/``stall``, or the link never
  went down), with the time from the fault to the first ``session_ready``/``reconnected``;
  a summary by kind;
- ``log lines/min``: lines the daemon wrote to its log (stderr, one journal entry each)
  over the run, per minute; the top 5 ``VOXBOX_EVENT`` values by count;
- ``watchdog``: ``WATCHDOG=1`` pings received on the ``NOTIFY_SOCKET``, the longest gap
  between two (or from the last one to the end) and the gaps longer than the harness's
  ``WATCHDOG_USEC`` (2 s), which systemd would have answered with a kill.

Asserted: no exit of the daemon, at least one question answered. Everything else is a
printed figure.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

from voxbox.audio.speech import demo_utterance, render_speech
from voxbox.sim.harness import DaemonHarness, HarnessError

SOAK_MIN = float(os.environ.get("VOXBOX_SOAK_MIN", "30"))
TURN_S = float(os.environ.get("VOXBOX_SOAK_TURN_S", "120"))
FAULT_S = float(os.environ.get("VOXBOX_SOAK_FAULT_S", "300"))
PROGRESS_S = float(os.environ.get("VOXBOX_SOAK_PROGRESS_S", str(min(300.0, SOAK_MIN * 60 / 4))))

# the run is longer than ./dev bench's --timeout: this marker overrides it
pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(int(SOAK_MIN * 60 + 900))]

WATCHDOG_S = 2.0          # the harness's WATCHDOG_USEC
OUTAGE_S = 8.0            # the server away: longer than conversation.resume_turn_s (5 s)
# one reply-audio delta over websockets' default 1 MiB frame limit once in base64 JSON
# (about 26 s of audio at 24 kHz; the e2e test's 3 MiB would play for 65 s)
OVERSIZED_BYTES = 1_250_000
ANSWER_TIMEOUT_S = 75.0   # question -> playback_end, at most (the oversized reply included)
LINK_DOWN = ("link_down", "link_fatal", "stall")
LINK_UP = ("session_ready", "reconnected")


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB ({} if the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def tap_question() -> np.ndarray:
    speech = render_speech("Tell me something interesting about lighthouses and the sea.")
    rng = np.random.default_rng(1)
    sig = np.concatenate([np.zeros(4800, np.int16), speech, np.zeros(19200, np.int16)]).astype(np.float32)
    sig += rng.normal(0, 20, sig.size)
    return np.clip(sig, -32768, 32767).astype(np.int16)


# ------------------------------------------------------------------------------ faults
@dataclass
class Fault:
    kind: str
    mid_turn: bool                              # may be injected while a reply plays
    inject: Callable[[DaemonHarness], str]      # returns a short note
    clear: Callable[[DaemonHarness], None] = lambda h: None


def _drop(h: DaemonHarness) -> str:
    return f"{h.server.faults.drop_connections()} connection(s) aborted"


def _stall(h: DaemonHarness) -> str:
    t0 = time.monotonic()
    n = h.server.faults.stall()  # no events, no pongs, until released
    try:
        ev = h.wait_event("stall", timeout=45, after=t0)
        note = f"{n} stalled; declared by the unit after {ev['mono'] - t0:.1f} s"
    except HarnessError as exc:
        note = f"{n} stalled; no stall declared in 45 s ({str(exc).splitlines()[0]})"
    h.server.faults.release()
    return note


def _outage(h: DaemonHarness) -> str:
    port = h.server.port
    h.server.stop()
    time.sleep(OUTAGE_S)
    h.start_server(port)
    return f"server away {OUTAGE_S:.0f} s, back on port {port}"


def _expire(h: DaemonHarness) -> str:
    return f"{h.server.faults.expire_sessions()} session(s) expired"


def _garbage(h: DaemonHarness) -> str:
    f = h.server.faults
    f.send_malformed_json()
    f.send_unknown_event()
    f.set_unknown_fields({"x_future_field": {"a": 1}})
    f.set_unknown_events(5)
    f.oversize_next_audio_delta(OVERSIZED_BYTES)
    return f"malformed JSON, unknown events/fields, next audio delta {OVERSIZED_BYTES} bytes"


def _garbage_clear(h: DaemonHarness) -> None:
    h.server.faults.set_unknown_fields(None)
    h.server.faults.set_unknown_events(None)


def _jitter(h: DaemonHarness) -> str:
    h.server.faults.set_audio_jitter(jitter_s=0.05, burst=8, gap_s=0.25, seed=3)
    return "reply audio jitter 50 ms, 250 ms gap every 8 chunks"


def _reject(h: DaemonHarness) -> str:
    h.server.faults.reject_auth("http-429", count=2)
    n = h.server.faults.drop_connections()
    return f"next 2 handshakes answered HTTP 429; {n} connection(s) aborted"


FAULTS = [
    Fault("drop", True, _drop),
    Fault("stall", True, _stall),
    Fault("outage", True, _outage),
    Fault("expiry", True, _expire),
    Fault("protocol_garbage", False, _garbage, _garbage_clear),
    Fault("audio_jitter", False, _jitter, lambda h: h.server.faults.clear_audio_jitter()),
    Fault("http_429", True, _reject, lambda h: h.server.faults.accept_auth()),
]
_only = [k.strip() for k in os.environ.get("VOXBOX_SOAK_FAULTS", "").split(",") if k.strip()]
if _only:
    _by_kind = {f.kind: f for f in FAULTS}
    _unknown = [k for k in _only if k not in _by_kind]
    if _unknown:
        raise ValueError(f"VOXBOX_SOAK_FAULTS: unknown kind(s) {_unknown}; known: {list(_by_kind)}")
    FAULTS = [_by_kind[k] for k in _only]


# ------------------------------------------------------------------------------ the run
@dataclass
class Soak:
    h: DaemonHarness
    t_start: float = 0.0
    pids: list[int] = field(default_factory=list)
    exits: list[tuple[float, int | None]] = field(default_factory=list)
    rss_start: int | None = None
    rss_warm: int | None = None
    rss_peak: int = 0
    hwm: int | None = None
    questions: list[dict] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)
    armed: Fault | None = None

    # ---- the process
    def check_process(self) -> None:
        """Sample the RSS; an exited daemon is counted and started again."""
        h = self.h
        if h.proc.poll() is not None:
            self.exits.append((time.monotonic(), h.proc.returncode))
            print(f"[soak {self.elapsed():7.0f} s] daemon pid {h.proc.pid} EXITED "
                  f"({h.proc.returncode}); starting it again", flush=True)
            t0 = time.monotonic()
            h.launch()
            self.pids.append(h.proc.pid)
            try:
                h.wait_for(lambda: any(t >= t0 and m == "READY=1" for t, m in h.notify), 60, "READY=1")
            except HarnessError as exc:
                print(f"  not ready again: {str(exc).splitlines()[0]}", flush=True)
            return
        st = proc_status(h.proc.pid)
        if "VmRSS" in st:
            self.rss_peak = max(self.rss_peak, st["VmRSS"])
        if "VmHWM" in st:
            self.hwm = st["VmHWM"]

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(0.5, left))
            self.check_process()

    def safe_wait(self, event: str, timeout: float, after: float) -> dict | None:
        try:
            return self.h.wait_event(event, timeout=timeout, after=after)
        except HarnessError:
            return None

    def state(self) -> str | None:
        st = self.h.events("state")
        return st[-1].get("VOXBOX_STATE") if st else None

    # ---- questions
    def question(self, kind: str, sig: np.ndarray, mid_fault: Fault | None) -> None:
        h = self.h
        # a question to an idle unit (a busy or offline one is asked anyway after 20 s)
        deadline = time.monotonic() + 20
        while self.state() != "idle" and time.monotonic() < deadline:
            self.sleep(0.2)
        t0 = time.monotonic()
        q = {"t": t0, "kind": kind, "state_before": str(self.state()), "fault": None}
        self.questions.append(q)
        if kind == "tap":
            h.press()
            try:
                h.wait_state("listening", timeout=5, after=t0)
            except HarnessError:
                q["state_before"] += " (no listening after the tap)"
        h.mic.play(sig)
        if mid_fault is not None:
            # while the reply plays: playback_start, or 30 s if the reply never starts
            self.safe_wait("playback_start", 30, t0)
            time.sleep(0.3)
            q["fault"] = mid_fault.kind
            self.fault(mid_fault)
        self.wait_answer(t0)
        self.check_process()

    def wait_answer(self, t0: float) -> None:
        """Until the reply played out, or the unit said the turn is lost (a prompt, then
        idle again), or ``ANSWER_TIMEOUT_S``: a lost turn does not hold up the schedule."""
        def pred():
            evs = [r for r in self.h.logs if r.get("mono", 0) >= t0]
            if any(r.get("VOXBOX_EVENT") == "playback_end" for r in evs):
                return True
            prompts = [r["mono"] for r in evs if r.get("VOXBOX_EVENT") == "prompt"]
            states = [r for r in evs if r.get("VOXBOX_EVENT") == "state"]
            return bool(prompts and states and states[-1]["mono"] > prompts[-1]
                        and states[-1].get("VOXBOX_STATE") == "idle")
        try:
            self.h.wait_for(pred, ANSWER_TIMEOUT_S, "the answer or a lost turn")
        except HarnessError:
            pass

    def window(self, i: int) -> list[dict]:
        """The daemon's records from question ``i`` to the next question."""
        t0 = self.questions[i]["t"]
        t1 = self.questions[i + 1]["t"] if i + 1 < len(self.questions) else float("inf")
        return [r for r in list(self.h.logs) if t0 <= r.get("mono", 0) < t1]

    def answered(self, i: int) -> bool:
        return any(r.get("VOXBOX_EVENT") in ("playback_end", "turn") for r in self.window(i))

    # ---- faults
    def fault(self, f: Fault) -> None:
        if self.armed is not None:
            self.armed.clear(self.h)
            self.armed = None
        t0 = time.monotonic()
        try:
            note = f.inject(self.h)
        except Exception as exc:  # a fault that could not be injected is a figure too
            note = f"INJECTION FAILED: {exc!r}"
        self.armed = f
        self.faults.append({"t": t0, "kind": f.kind, "note": note})
        print(f"[soak {t0 - self.t_start:7.0f} s] fault {f.kind}: {note}", flush=True)

    def fault_outcome(self, i: int) -> dict:
        t0 = self.faults[i]["t"]
        t1 = self.faults[i + 1]["t"] if i + 1 < len(self.faults) else float("inf")
        logs = [r for r in list(self.h.logs) if t0 <= r.get("mono", 0) < t1]
        downs = [r["mono"] for r in logs if r.get("VOXBOX_EVENT") in LINK_DOWN]
        ups = [r["mono"] for r in logs if r.get("VOXBOX_EVENT") in LINK_UP]
        return {"link_down": bool(downs),
                "recovered": not downs or (bool(ups) and max(ups) > max(downs)),
                "back_s": (min(ups) - t0) if downs and ups else None}

    # ---- figures
    def watchdog(self, t_end: float) -> tuple[int, float, int]:
        pings = [t for t, m in list(self.h.notify) if m == "WATCHDOG=1" and t >= self.t_start]
        if not pings:
            return 0, t_end - self.t_start, 1
        marks = [self.t_start] + pings + [t_end]
        gaps = np.diff(marks)
        return len(pings), float(gaps.max()), int((gaps > WATCHDOG_S).sum())

    def figures(self, final: bool) -> list[str]:
        h, now = self.h, time.monotonic()
        minutes = max((now - self.t_start) / 60, 1e-9)
        rss_now = proc_status(h.proc.pid).get("VmRSS")
        n_ans = sum(self.answered(i) for i in range(len(self.questions)))
        outcomes = [self.fault_outcome(i) for i in range(len(self.faults))]
        n_wd, gap, late = self.watchdog(now)
        lines = len(h.stderr_text)
        if not final:
            return [f"[soak {now - self.t_start:7.0f} s] RSS {mib(rss_now)} MiB (start {mib(self.rss_start)}, "
                    f"peak {mib(self.rss_peak)}); exits {len(self.exits)}; turns {n_ans}/{len(self.questions)} "
                    f"answered; faults {len(self.faults)} ({sum(o['recovered'] for o in outcomes)} recovered); "
                    f"log {lines / minutes:.1f} lines/min; watchdog longest gap {gap:.2f} s"]
        out = [f"\n==== soak: {minutes:.1f} min, a question every {TURN_S:.0f} s, a fault every {FAULT_S:.0f} s ===="]
        out.append(f"RSS MiB: start {mib(self.rss_start)}  after first answer {mib(self.rss_warm)}  "
                   f"end {mib(rss_now)}  peak sampled {mib(self.rss_peak)}  VmHWM {mib(self.hwm)}  "
                   f"(end - start {mib((rss_now or 0) - (self.rss_start or 0))})")
        out.append(f"restarts: {len(self.exits)} exit(s) {[c for _, c in self.exits]}; pids {self.pids}")
        out.append(f"turns: {len(self.questions)} asked, {n_ans} answered")
        for i, q in enumerate(self.questions):
            prompts = [r.get("VOXBOX_PROMPT", "?") for r in self.window(i) if r.get("VOXBOX_EVENT") == "prompt"]
            out.append(f"  {q['t'] - self.t_start:7.0f} s  {q['kind']:<4}  answered {str(self.answered(i)):<5}  "
                       f"state before {q['state_before']}" + (f"  fault mid-reply: {q['fault']}" if q["fault"] else "")
                       + (f"  prompts: {', '.join(prompts)}" if prompts else ""))
        out.append(f"faults: {len(self.faults)} injected")
        for f, o in zip(self.faults, outcomes):
            back = "-" if o["back_s"] is None else f"{o['back_s']:.2f} s"
            out.append(f"  {f['t'] - self.t_start:7.0f} s  {f['kind']:<17} link down {str(o['link_down']):<5}  "
                       f"recovered {str(o['recovered']):<5}  link back after {back}  ({f['note']})")
        by_kind = collections.defaultdict(lambda: [0, 0])
        for f, o in zip(self.faults, outcomes):
            by_kind[f["kind"]][0] += 1
            by_kind[f["kind"]][1] += o["recovered"]
        out.append("  by kind: " + (", ".join(f"{k} {n} ({r} recovered)" for k, (n, r) in by_kind.items()) or "none"))
        unused = [f.kind for f in FAULTS if f.kind not in by_kind]
        if unused:
            out.append(f"  rotation not reached in this run: {', '.join(unused)}")
        events = collections.Counter(r.get("VOXBOX_EVENT") or "(none)" for r in list(h.logs))
        out.append(f"log: {lines} lines, {lines / minutes:.1f} lines/min; top events: "
                   + ", ".join(f"{k} {v}" for k, v in events.most_common(5)))
        out.append(f"watchdog: {n_wd} WATCHDOG=1 pings, longest gap {gap:.2f} s, "
                   f"{late} gap(s) > {WATCHDOG_S:.0f} s (WATCHDOG_USEC)")
        return out


def test_soak(tmp_path):
    duration = SOAK_MIN * 60
    tap_sig = tap_question()
    wake_sig, _ = demo_utterance()
    with DaemonHarness(tmp_path, echo_db=-30) as h:
        h.start()
        s = Soak(h)
        s.t_start = time.monotonic()
        s.pids.append(h.proc.pid)
        s.rss_start = proc_status(h.proc.pid).get("VmRSS")
        s.rss_peak = s.rss_start or 0
        print(f"\n[soak       0 s] daemon pid {h.proc.pid} ready, RSS {mib(s.rss_start)} MiB; "
              f"{SOAK_MIN:g} min, question every {TURN_S:g} s, fault every {FAULT_S:g} s; "
              f"fault rotation: {', '.join(f.kind for f in FAULTS)}", flush=True)
        next_turn, next_fault, next_progress = TURN_S, FAULT_S, PROGRESS_S
        n_turn = n_fault = 0
        while (now := s.elapsed()) < duration:
            s.check_process()
            turn_due, fault_due = now >= next_turn, now >= next_fault
            fault = FAULTS[n_fault % len(FAULTS)] if fault_due else None
            if fault_due and not (turn_due and fault.mid_turn):
                s.fault(fault)  # alone, or armed before the question due with it
                n_fault, next_fault = n_fault + 1, next_fault + FAULT_S
                fault = None
            if turn_due:
                kind = "tap" if n_turn % 2 == 0 else "wake"
                s.question(kind, tap_sig if kind == "tap" else wake_sig, fault)
                if fault is not None:
                    n_fault, next_fault = n_fault + 1, next_fault + FAULT_S
                if s.rss_warm is None and s.answered(len(s.questions) - 1):
                    s.rss_warm = proc_status(h.proc.pid).get("VmRSS")
                n_turn, next_turn = n_turn + 1, next_turn + TURN_S
            if s.elapsed() >= next_progress:
                print("\n".join(s.figures(final=False)), flush=True)
                next_progress += PROGRESS_S
            s.sleep(0.5)
        s.check_process()
        if s.armed is not None:
            s.armed.clear(h)
        time.sleep(1.0)  # the last records
        print("\n".join(s.figures(final=True)), flush=True)
        n_answered = sum(s.answered(i) for i in range(len(s.questions)))
        assert not s.exits, f"the daemon exited {len(s.exits)} time(s): {s.exits}"
        assert len(set(s.pids)) == 1 and h.proc.poll() is None
        assert n_answered >= 1, "no question was answered"
