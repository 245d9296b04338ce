"""Barge-in benchmark: which VAD and which parameters for :class:`voxbox.duplex.nearend.NearEndDetector`.

Run (on-demand, a few minutes on 2 cores; not part of the default test run):

    .venv/bin/python -m pytest -m benchmark -s -o addopts="-ra --timeout=1800" tests/benchmarks/test_bargein_bench.py

Offline study through the real :class:`voxbox.dsp.frontend.CaptureFrontEnd` (defaults; fed
in 10 ms blocks like the daemon), whose frame observer feeds the detector.

Conditions: the car and the kiosk of ``rooms.py`` (mild loudspeaker nonlinearity,
reference leading its echo by the room's system lead of 12 / 16 ms plus flight time),
echo at the microphone ``ECHO_DBFS`` and the user's voice ``ECHO_OVER_NEAR_DB`` below
it (-10, 0, +6, +10 dB: echo up to 10 dB louder than the user), room noise and
microphone self-noise as in ``rooms.py``. Each file: reply A (6 s, the front end starts
fresh: "cold"), 1.4 s of silence (the detector disarms), reply B (10 s, front end
converged: "warm"), 1 s of tail. Far-end single talk files have no user; double talk
files have one user command starting at a known instant in reply B (two instants per
placement).

Split by seed: placements (``rooms.variant``) 1-3, near voices/sentences and far
voice/sentences of the first half go to the TUNING set; placements 4-6 and the other
voices and sentences to the REPORTING set. Parameters are chosen on the tuning set only
(rule: no false barge-in in any warm reply, detection >= 95 %, then the smallest p95
latency, then the median); the tables are on the reporting set.

Metrics:
- false barge-ins per reply: detector onsets in a far-end single talk reply (warm:
  reply B; cold: reply A with a fresh front end), plus "dt early": onsets in double talk
  files before the user's true onset (per file);
- detection rate: user commands with an onset between the true onset and the end of
  the command;
- latency: decision time (end of the input frame whose push turned the decision on)
  minus the true onset (first 10 ms frame of the reverberant user speech within 30 dB of
  its loud frames); includes the front end's 48 ms and the hysteresis;
- CPU: process time per audio second of each VAD (and of the detector without a VAD),
  in % of one core of *this* machine (a Raspberry Pi 4 core is ~3-5x slower).

Speed: the front end runs once per file; the VADs once per file (their per-frame answers
are replayed to the real detector for the parameter sweep, which is exact because the
detector calls the VAD only while armed and ``tail_ms`` is not swept).
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pytest
from scipy.signal import fftconvolve

from voxbox.audio.speech import render_speech
from voxbox.dsp.frontend import CaptureFrontEnd
from voxbox.duplex.nearend import BargeInSettings, NearEndDetector, SileroVad

from .rooms import (
    FAR_TEXTS,
    NEAR_TEXTS,
    ROOMS,
    SR,
    _delay,
    _room_noise,
    _scale_to,
    _trim,
    active_mask,
    active_rms,
    loudspeaker,
    room_irs,
    speech_track,
    variant,
)

pytestmark = pytest.mark.benchmark

BLOCK = 160  # the capture period (10 ms)
FRAME = 256  # the front end's frame
ECHO_DBFS = -24.0
ECHO_OVER_NEAR_DB = (-10.0, 0.0, 6.0, 10.0)
#: room noise at the microphone, dBFS: the rooms' quiet default (-64) and loud (engine
#: noise at speed in the car, crowd babble at the kiosk; the preprocessor removes much
#: of the stationary part, not the babble)
NOISE_DBFS = {"quiet": None, "loud": -42.0}
A0, A1 = 0.1, 6.1  # reply A (s)
B0, B1 = 7.5, 17.5  # reply B (s)
SECONDS = 18.5
SPLITS = {
    "tune": dict(variants=(1, 2, 3), far_voice="en-us+f3", near_voices=("en-gb+m3", "en-us+f4"),
                 far_texts=FAR_TEXTS[:3], near_texts=NEAR_TEXTS[:3]),
    "report": dict(variants=(4, 5, 6), far_voice="en-gb+m4", near_voices=("en-us+m1", "en-gb+f2"),
                   far_texts=FAR_TEXTS[3:], near_texts=NEAR_TEXTS[3:]),
}
WORKERS = int(os.environ.get("VOXBOX_BENCH_WORKERS", str(min(2, os.cpu_count() or 1))))
TAIL_MS = BargeInSettings().tail_ms


# -- VAD adapters --------------------------------------------------------------------------
class WebRtcVad:
    """WebRTC VAD (PyPI ``webrtcvad-wheels``) as a ``voxbox.duplex.nearend.Vad``: 0/1 per chunk."""

    def __init__(self, mode: int = 3, chunk_samples: int = 320) -> None:
        import webrtcvad

        self.mode, self.chunk_samples = mode, chunk_samples
        self._vad = webrtcvad.Vad(mode)

    def __call__(self, chunk: np.ndarray) -> float:
        return 1.0 if self._vad.is_speech(chunk.tobytes(), SR) else 0.0

    def reset(self) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(self.mode)


class ReplayVad:
    """Replays recorded per-frame VAD answers (chunk = one frame: called once per armed frame)."""

    chunk_samples = FRAME

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs
        self.i = 0

    def bind(self, det: NearEndDetector) -> None:
        self.det = det

    def __call__(self, chunk: np.ndarray) -> float:
        return float(self.probs[self.det.frames - 1])

    def reset(self) -> None:
        pass


VADS = {
    "silero": lambda: SileroVad(),
    "webrtc3": lambda: WebRtcVad(3, 320),
}


# -- conditions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Cond:
    split: str
    room: str
    k: int  # placement variant
    level: float  # echo over near, dB
    kind: str  # fst | dt
    noise: str = "quiet"
    onset_s: float = math.nan  # user command start (dt)
    idx: int = 0


def conditions(split: str) -> list[Cond]:
    out = []
    for room in ROOMS:
        for k in SPLITS[split]["variants"]:
            for level, noise in itertools.product(ECHO_OVER_NEAR_DB, NOISE_DBFS):
                out.append(Cond(split, room.name, k, level, "fst", noise=noise))
                for j, t in enumerate((B0 + 1.2, B0 + 5.3)):
                    out.append(Cond(split, room.name, k, level, "dt", noise, t + 0.35 * (k % 3) + 0.11 * j, j))
    return out


def render(c: Cond) -> dict:
    """mic/ref int16 and the user's true onset/end for one condition."""
    cfg = SPLITS[c.split]
    spec = variant(next(r for r in ROOMS if r.name == c.room), c.k)
    irs = room_irs(spec)
    n = int(SECONDS * SR)
    seed = spec.seed * 100 + int(c.level) + 50 + 7 * c.idx + (0 if c.kind == "fst" else 1000) + 17 * (c.noise != "quiet")
    ft = cfg["far_texts"]
    rot = (c.k + c.idx) % len(ft)
    far = speech_track(ft[rot:] + ft[:rot], cfg["far_voice"], SECONDS, start_s=A0, end_s=A1)
    rot = (rot + 1) % len(ft)
    far += speech_track(ft[rot:] + ft[:rot], cfg["far_voice"], SECONDS, start_s=B0, end_s=B1)
    far = np.clip(np.round(_scale_to(far, spec.far_dbfs)), -32768, 32767)
    d = int(round(spec.system_lead_ms * SR / 1000))
    echo = _delay(fftconvolve(loudspeaker(far), irs["echo_a"])[:n], d)
    echo *= 32768.0 * 10 ** (ECHO_DBFS / 20) / active_rms(echo)
    rng = np.random.default_rng(seed)
    nd = NOISE_DBFS[c.noise]
    noise = _room_noise(spec, n, int(rng.integers(2**31))) * 32768.0 * 10 ** ((spec.bg_noise_dbfs if nd is None else nd) / 20)
    noise += rng.standard_normal(n) * 32768.0 * 10 ** (spec.self_noise_dbfs / 20)
    near = np.zeros(n)
    on = end = math.nan
    if c.kind == "dt":
        nt = cfg["near_texts"]
        voice = cfg["near_voices"][(c.k + c.idx) % 2]
        u = _trim(render_speech(nt[(c.k + 2 * c.idx) % len(nt)], voice=voice, rate_wpm=165)).astype(np.float64)
        i0 = int(c.onset_s * SR)
        near[i0 : i0 + u.shape[0]] = u[: n - i0]
        near = fftconvolve(near, irs["talker"])[:n]
        near = _scale_to(near, ECHO_DBFS - c.level)
        act = np.flatnonzero(active_mask(near, 30.0))
        on, end = act[0] * 0.01, (act[-1] + 1) * 0.01
    mic = np.clip(np.round(echo + near + noise), -32768, 32767).astype(np.int16)
    return {"mic": mic, "ref": far.astype(np.int16), "on": on, "end": end}


def front_end_trace(c: Cond) -> dict:
    """Run the front end (10 ms blocks); record every frame, ratio_db, far; then each VAD's
    per-frame answer as the real detector sees it (armed frames only)."""
    r = render(c)
    mic, ref = r["mic"], r["ref"]
    nf = mic.shape[0] // FRAME
    frames = np.zeros((nf, FRAME), dtype=np.int16)
    ratio = np.full(nf, np.nan)
    far = np.zeros(nf, dtype=bool)
    i = [0]

    def obs(frame, ratio_db, f):
        j = i[0]
        if j < nf:
            frames[j] = frame
            ratio[j] = ratio_db
            far[j] = f
        i[0] = j + 1

    fe = CaptureFrontEnd()
    fe.observer = obs
    for p in range(0, mic.shape[0] - BLOCK + 1, BLOCK):
        fe.process(mic[p : p + BLOCK], ref[p : p + BLOCK])
    fe.close()
    probs, cpu = {}, {}
    for name, make in VADS.items():
        det = NearEndDetector(BargeInSettings(ratio_db_min=None, tail_ms=TAIL_MS), make())
        pr = np.full(nf, np.nan)
        t0 = time.process_time()
        for j in range(nf):
            det.push(frames[j], ratio[j], bool(far[j]))
            pr[j] = det.vad_prob
        cpu[name] = time.process_time() - t0
        probs[name] = pr
    return {"cond": c, "frames": frames, "ratio": ratio, "far": far, "probs": probs, "cpu": cpu,
            "on": r["on"], "end": r["end"]}


# -- scoring -------------------------------------------------------------------------------
def run_detector(tr: dict, settings: BargeInSettings, vad: str | None) -> np.ndarray:
    """Onset frame indices of the real detector on a recorded trace."""
    rv = ReplayVad(tr["probs"][vad]) if vad else None
    det = NearEndDetector(settings, rv)
    if rv is not None:
        rv.bind(det)
    frames, ratio, far = tr["frames"], tr["ratio"], tr["far"]
    onsets = []
    push = det.push
    for j in range(frames.shape[0]):
        push(frames[j], float(ratio[j]), bool(far[j]))
        if det.onset:
            onsets.append(j)
    return np.asarray(onsets, dtype=int)


def onset_time(j: np.ndarray) -> np.ndarray:
    return (j + 1) * FRAME / SR  # end of the frame's input = when the decision is made


def score(traces: list[dict], settings: BargeInSettings, vad: str | None) -> list[dict]:
    rows = []
    for tr in traces:
        c = tr["cond"]
        t = onset_time(run_detector(tr, settings, vad))
        row = {"room": c.room, "level": c.level, "kind": c.kind, "noise": c.noise}
        if c.kind == "fst":
            row["false_cold"] = int(np.sum((t >= A0) & (t < B0)))
            row["false_warm"] = int(np.sum(t >= B0))
        else:
            row["early"] = int(np.sum((t >= B0) & (t < tr["on"])))
            hit = t[(t >= tr["on"]) & (t <= tr["end"])]
            row["hit"] = bool(hit.size)
            row["lat_ms"] = float((hit[0] - tr["on"]) * 1000) if hit.size else math.nan
        rows.append(row)
    return rows


def summarize(rows: list[dict], level: float | None = None, noise: str | None = None) -> dict:
    rs = [r for r in rows if (level is None or r["level"] == level) and (noise is None or r["noise"] == noise)]
    fst = [r for r in rs if r["kind"] == "fst"]
    dt = [r for r in rs if r["kind"] == "dt"]
    lat = np.array([r["lat_ms"] for r in dt if r["hit"]])
    return {
        "false_warm": sum(r["false_warm"] for r in fst) / max(1, len(fst)),
        "false_cold": sum(r["false_cold"] for r in fst) / max(1, len(fst)),
        "early": sum(r["early"] for r in dt) / max(1, len(dt)),
        "det": sum(r["hit"] for r in dt) / max(1, len(dt)),
        "med": float(np.median(lat)) if lat.size else math.nan,
        "p95": float(np.percentile(lat, 95)) if lat.size else math.nan,
        "n_fst": len(fst),
        "n_dt": len(dt),
    }


def rank_key(s: dict) -> tuple:
    """Tuning rule: no false barge-in (warm replies, dt early), detection >= 95 %, then
    the smallest p95 latency and median; otherwise fewest false, best detection."""
    false = s["false_warm"] + s["early"]
    ok = false == 0 and s["det"] >= 0.95
    p95 = s["p95"] if not math.isnan(s["p95"]) else 1e9
    return (0 if ok else 1, false, -s["det"], p95, s["med"], s["false_cold"])


# -- candidates and parameter grids ---------------------------------------------------------
BASE = BargeInSettings(tail_ms=TAIL_MS)
ONSET = [(48.0, 1.0), (64.0, 1.0), (96.0, 0.66), (96.0, 1.0), (128.0, 0.75)]
RATIO = (3.0, 6.0, 10.0, 15.0)
HOLD = (0.0, 96.0)
CANDIDATES: dict[str, tuple[str | None, list[BargeInSettings]]] = {
    "RES alone": (None, [replace(BASE, ratio_db_min=r, onset_ms=o, onset_fill=f)
                         for r, (o, f) in itertools.product((10.0, 20.0), ONSET)]),
    "Silero alone": ("silero", [replace(BASE, ratio_db_min=None, vad_min=v, onset_ms=o, onset_fill=f)
                                for v, (o, f) in itertools.product((0.5, 0.8, 0.95), ONSET)]),
    "Silero+RES": ("silero", [replace(BASE, ratio_db_min=r, ratio_hold_ms=h, vad_min=v, onset_ms=o, onset_fill=f)
                              for r, h, v, (o, f) in itertools.product(RATIO, HOLD, (0.5, 0.8, 0.95), ONSET)]),
    "WebRTC3+RES": ("webrtc3", [replace(BASE, ratio_db_min=r, ratio_hold_ms=h, vad_min=0.5, onset_ms=o, onset_fill=f)
                                for r, h, (o, f) in itertools.product(RATIO, HOLD, ONSET)]),
    "energy+RES": (None, [replace(BASE, ratio_db_min=r, ratio_hold_ms=h, energy_db_min=e, onset_ms=o, onset_fill=f)
                          for r, h, e, (o, f) in itertools.product(RATIO, HOLD, (10.0, 20.0), ONSET)]),
}


_TRACES: dict[str, list[dict]] = {}


def _init(traces):
    _TRACES.update(traces)


def _sweep_split(args):
    split, vad, settings = args
    return summarize(score(_TRACES[split], settings, vad))


def traces_for(split: str, pool) -> list[dict]:
    return list(pool.map(front_end_trace, conditions(split)))


def cpu_table(traces: list[dict]) -> dict:
    audio = sum(tr["frames"].shape[0] for tr in traces) * FRAME / SR
    out = {name: sum(tr["cpu"][name] for tr in traces) / audio for name in VADS}
    # the detector alone (RES + energy, no VAD), same frames
    t0 = time.process_time()
    for tr in traces[:8]:
        run_detector(tr, replace(BASE, ratio_db_min=6.0, energy_db_min=10.0), None)
    out["detector, no VAD"] = (time.process_time() - t0) / (sum(tr["frames"].shape[0] for tr in traces[:8]) * FRAME / SR)
    armed = np.mean(np.concatenate([np.isfinite(tr["probs"]["silero"]) | np.isfinite(tr["probs"]["webrtc3"])
                                    for tr in traces]))
    return out, float(armed)


def fmt(x: float, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n  {title}")
    print(f"    {'echo over user':>15} {'false/reply':>11} {'cold':>6} {'dt early':>8} {'detect':>7} {'lat med':>8} {'lat p95':>8}  (n fst/dt)")
    for level, noise in [*itertools.product(ECHO_OVER_NEAR_DB, ["quiet"]), *itertools.product(ECHO_OVER_NEAR_DB, ["loud"]),
                         (None, "quiet"), (None, "loud"), (None, None)]:
        s = summarize(rows, level, noise)
        name = (f"{level:+.0f} dB" if level is not None else "all") + (f" {noise}" if noise else "")
        print(f"    {name:>15} {s['false_warm']:>11.2f} {s['false_cold']:>6.2f} {s['early']:>8.2f} {s['det'] * 100:>6.0f}%"
              f" {fmt(s['med'], '>6.0f')} ms {fmt(s['p95'], '>5.0f')} ms  ({s['n_fst']}/{s['n_dt']})")


def describe(s: BargeInSettings) -> str:
    parts = []
    if s.ratio_db_min is not None:
        parts.append(f"ratio>={s.ratio_db_min:g}dB hold {s.ratio_hold_ms:g}ms")
    parts.append(f"vad>={s.vad_min:g}")
    if s.energy_db_min is not None:
        parts.append(f"energy>={s.energy_db_min:g}dB")
    parts.append(f"onset {s.onset_ms:g}ms@{s.onset_fill:g}")
    parts.append(f"hang {s.hangover_ms:g}ms")
    return ", ".join(parts)


def all_traces() -> dict[str, list[dict]]:
    """Front-end + VAD traces of both splits; ``VOXBOX_BENCH_CACHE=file.pkl`` keeps them
    between runs (delete the file after changing the front end, the VADs or the rooms)."""
    path = os.environ.get("VOXBOX_BENCH_CACHE")
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    with ProcessPoolExecutor(WORKERS) as pool:
        traces = {split: traces_for(split, pool) for split in SPLITS}
    if path:
        with open(path, "wb") as f:
            pickle.dump(traces, f)
    return traces


def test_bargein_bench():
    t_start = time.perf_counter()
    traces = all_traces()
    t_fe = time.perf_counter() - t_start
    print(f"\nBarge-in bench: {sum(len(v) for v in traces.values())} files of {SECONDS:g} s through the front end "
          f"and {len(VADS)} VADs in {t_fe:.0f} s ({WORKERS} workers)")

    jobs = [(name, vad, s) for name, (vad, grid) in CANDIDATES.items() for s in grid]
    with ProcessPoolExecutor(WORKERS, initializer=_init, initargs=({"tune": traces["tune"]},)) as pool:
        sums = list(pool.map(_sweep_split, [("tune", vad, s) for _, vad, s in jobs], chunksize=4))
    chosen = {}
    for (name, vad, s), summ in zip(jobs, sums):
        if name not in chosen or rank_key(summ) < rank_key(chosen[name][2]):
            chosen[name] = (vad, s, summ)
    print(f"parameter sweep: {len(jobs)} settings on the tuning set in {time.perf_counter() - t_start - t_fe:.0f} s")
    for name, (vad, s, summ) in chosen.items():
        print(f"  tuned {name:<13} {describe(s)}: tune false/reply {summ['false_warm']:.2f} (cold {summ['false_cold']:.2f},"
              f" early {summ['early']:.2f}), detect {summ['det'] * 100:.0f}%, p95 {fmt(summ['p95'], '.0f')} ms")

    print("\nREPORTING set (placements/voices/sentences not used for tuning):")
    for name, (vad, s, _) in chosen.items():
        print_table(f"{name}: {describe(s)}", score(traces["report"], s, vad))
    print("\n  default BargeInSettings() with SileroVad:")
    print_table(describe(BargeInSettings()), score(traces["report"], replace(BargeInSettings(), tail_ms=TAIL_MS), "silero"))

    cpu, armed = cpu_table(traces["report"])
    print("\nCPU per audio second (process time, % of one core of this machine; VADs run only while armed,"
          f" {armed * 100:.0f}% of the frames here):")
    for name, v in cpu.items():
        print(f"    {name:<18} {v * 100:6.2f} %")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
