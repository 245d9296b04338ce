"""Capture front-end benchmark: simulated car and kiosk, ICASSP AEC-challenge style.

Run (about 15 s on 2 cores; not part of the default test run):

    .venv/bin/python -m pytest -m benchmark -s tests/benchmarks/test_frontend_bench.py

Prints one table per room and the mean of the rooms: metrics as rows, systems as
columns, the issue's goal in the last column; a value that misses its goal is marked ✗.
Set ``VOXBOX_BENCH_STRICT=1`` to make the last system in ``SYSTEMS`` fail the run when it
misses a goal.

Systems are ``(name, factory)`` entries in ``SYSTEMS``; a factory returns an object with
``process(mic, ref) -> out`` (int16 blocks of any size, same shape out) and an int
``latency_samples`` (fixed output delay; compensated before scoring). Add a new system
(e.g. a residual echo suppressor after the front end) by appending one entry.

Metrics (10 ms frames; "echo active" = echo frame power within 30 dB of the loud frames;
"near active" likewise on the clean near-end):
- ERLE (dB) = 10 log10(sum mic power / sum output power) over echo-active frames:
  fst from 2 s to the end (steady state), fst 0-2 s (start), epc 2-6 s (before the
  change) and 6-8 s (first 2 s after the change). The room's background noise is present
  (echo-to-noise ratio printed in the header), as in the challenge's recorded clips.
- convergence (s): time (window end, from the start or from the change) after which
  every 500 ms running ERLE window (with >= 250 ms of echo-active frames) stays >= 20 dB
  for the rest of the file, which must leave at least 1 s; otherwise "never".
- DT PESQ-WB / STOI: output vs the clean near-end at the microphone (reverberant, no echo,
  no noise) over the near-end part of the double-talk file (4 s to the end).
- DT near-end level (dB): output vs clean near-end energy over near-active frames (the
  issue's definition; residual echo in the output biases it upwards). The line below it
  is the coherent near-end gain 20 log10(<out, near> / <near, near>) on the same frames,
  which residual echo and noise do not bias.
- NST noise SNR gain (dB): coherent near-end gain on near-active frames minus the output
  / input power ratio on noise-only frames after 1 s (near-end single talk in loud noise).
- CPU: process CPU seconds spent in ``process`` per audio second, all four files, in %
  of one core of *this* machine (a Raspberry Pi core is several times slower).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import pytest
from pesq import pesq
from pystoi import stoi

from voxbox.dsp.frontend import CaptureFrontEnd, FrontEndSettings
from voxbox.dsp.speexdsp import EchoCanceller

from .rooms import FRAME, ROOMS, SR, RoomSpec, Scenario, active_mask, frame_powers, scenarios, variant

pytestmark = pytest.mark.benchmark

BLOCK = 160  # the capture period (10 ms)
#: placements per room (variant 0 = the room's nominal positions); metrics are averaged
#: over them (convergence times: median)
VARIANTS = int(os.environ.get("VOXBOX_BENCH_VARIANTS", "3"))


# -- systems -----------------------------------------------------------------------------
class System(Protocol):
    latency_samples: int

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray: ...


class Passthrough:
    """The unprocessed microphone."""

    latency_samples = 0

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return mic.copy()


class Reframed:
    """Runs a per-frame function ``fn(mic_frame, ref_frame) -> out_frame`` on blocks of
    any size; fixed latency ``frame_size - 1`` (output FIFO primed with zeros)."""

    def __init__(self, frame_size: int, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.frame_size = frame_size
        self.fn = fn
        self.latency_samples = frame_size - 1
        self._mic = np.zeros(frame_size, dtype=np.int16)
        self._ref = np.zeros(frame_size, dtype=np.int16)
        self._fill = 0
        self._pending = np.zeros(frame_size - 1, dtype=np.int16)

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        f, n, pos = self.frame_size, mic.shape[0], 0
        chunks = [self._pending]
        while pos < n:
            k = min(f - self._fill, n - pos)
            self._mic[self._fill : self._fill + k] = mic[pos : pos + k]
            self._ref[self._fill : self._fill + k] = ref[pos : pos + k]
            self._fill += k
            pos += k
            if self._fill == f:
                chunks.append(np.array(self.fn(self._mic, self._ref), dtype=np.int16))
                self._fill = 0
        buf = np.concatenate(chunks)
        self._pending = buf[n:]
        return buf[:n]


def speex_aec_only(frame_size: int = 256, filter_ms: int = 200) -> Reframed:
    """Plain Speex MDF echo canceller, no preprocessor."""
    ec = EchoCanceller(frame_size, filter_ms * SR // 1000, SR)
    out = np.zeros(frame_size, dtype=np.int16)
    return Reframed(frame_size, lambda m, r: ec.cancel(m, r, out))


SYSTEMS: list[tuple[str, Callable[[], System]]] = [
    ("mic", Passthrough),
    ("speex AEC", speex_aec_only),
    ("speex FE", lambda: CaptureFrontEnd(FrontEndSettings(residual_echo=False))),  # AEC + linked preprocessor
    ("voxbox FE", lambda: CaptureFrontEnd(FrontEndSettings())),  # + voxbox residual echo suppressor
]


def run_system(factory: Callable[[], System], sc: Scenario) -> tuple[np.ndarray, float]:
    """Stream ``sc`` through a fresh system in 10 ms blocks; return the output aligned to
    the input (latency removed) as float64, and the CPU seconds spent in ``process``."""
    system = factory()
    lat = int(system.latency_samples)
    n = sc.mic.shape[0]
    mic = np.concatenate([sc.mic, np.zeros(lat, dtype=np.int16)])
    ref = np.concatenate([sc.ref, np.zeros(lat, dtype=np.int16)])
    outs = []
    t0 = time.process_time()
    for i in range(0, mic.shape[0], BLOCK):
        outs.append(system.process(mic[i : i + BLOCK], ref[i : i + BLOCK]))
    cpu = time.process_time() - t0
    close = getattr(system, "close", None)
    if close is not None:
        close()
    out = np.concatenate(outs)[lat : lat + n].astype(np.float64)
    return out, cpu


# -- metrics -----------------------------------------------------------------------------
def _frames(t0: float, t1: float, nframes: int) -> slice:
    return slice(int(round(t0 * SR / FRAME)), min(nframes, int(round(t1 * SR / FRAME))))


def erle_db(mic: np.ndarray, out: np.ndarray, echo: np.ndarray, t0: float, t1: float) -> float:
    pm, po, act = frame_powers(mic), frame_powers(out), active_mask(echo)
    s = _frames(t0, t1, pm.shape[0])
    num, den = float(np.sum(pm[s][act[s]])), float(np.sum(po[s][act[s]]))
    return 10 * math.log10(num / max(den, 1e-9))


def convergence_s(mic: np.ndarray, out: np.ndarray, echo: np.ndarray, t0: float,
                  target_db: float = 20.0, win_s: float = 0.5, min_active_s: float = 0.25) -> float:
    """Seconds after ``t0`` until the running ERLE stays >= target (inf: never)."""
    pm, po, act = frame_powers(mic), frame_powers(out), active_mask(echo)
    w, f0 = int(win_s * SR / FRAME), int(round(t0 * SR / FRAME))
    cm = np.concatenate([[0.0], np.cumsum(np.where(act, pm, 0.0))])
    co = np.concatenate([[0.0], np.cumsum(np.where(act, po, 0.0))])
    ca = np.concatenate([[0], np.cumsum(act)])
    starts = np.arange(f0, pm.shape[0] - w + 1)
    valid = (ca[starts + w] - ca[starts]) >= int(min_active_s * SR / FRAME)
    starts = starts[valid]
    val = 10 * np.log10((cm[starts + w] - cm[starts]) / np.maximum(co[starts + w] - co[starts], 1e-9))
    if starts.size == 0 or val[-1] < target_db:
        return math.inf
    bad = np.flatnonzero(val < target_db)
    first_ok = 0 if bad.size == 0 else bad[-1] + 1
    t = (starts[first_ok] + w - f0) * FRAME / SR
    # it must hold for at least the last second of the file to count
    return t if (pm.shape[0] - f0) * FRAME / SR - t >= 1.0 else math.inf


def _samples(mask: np.ndarray) -> np.ndarray:
    return np.repeat(mask, FRAME)


def coherent_gain_db(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    m = _samples(mask)
    o, r = out[: m.shape[0]][m], ref[: m.shape[0]][m]
    g = float(np.dot(o, r) / np.dot(r, r))
    return 20 * math.log10(max(g, 1e-6))


def level_db(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    po, pr = frame_powers(out), frame_powers(ref)
    return 10 * math.log10(float(np.sum(po[mask])) / float(np.sum(pr[mask])))


def score(sc: dict[str, Scenario], outs: dict[str, np.ndarray]) -> dict[str, float]:
    r: dict[str, float] = {}
    fst, epc, dt, nst = sc["fst"], sc["epc"], sc["dt"], sc["nst"]
    o = outs["fst"]
    r["erle_fst"] = erle_db(fst.mic, o, fst.echo, 2.0, fst.seconds)
    r["erle_start"] = erle_db(fst.mic, o, fst.echo, 0.0, 2.0)
    r["conv_start"] = convergence_s(fst.mic, o, fst.echo, 0.0)
    o = outs["epc"]
    c = epc.change_s
    r["erle_pre"] = erle_db(epc.mic, o, epc.echo, 2.0, c)
    r["erle_epc"] = erle_db(epc.mic, o, epc.echo, c, c + 2.0)
    r["conv_epc"] = convergence_s(epc.mic, o, epc.echo, c)
    # double talk, near-end part
    o = outs["dt"]
    a = int(dt.near_start_s * SR)
    r["dt_pesq"] = float(pesq(SR, dt.near[a:], o[a:], "wb"))
    r["dt_stoi"] = float(stoi(dt.near[a:], o[a:], SR, extended=False))
    act = active_mask(dt.near)
    act[: a // FRAME] = False
    r["dt_level"] = level_db(o, dt.near, act)
    r["dt_gain"] = coherent_gain_db(o, dt.near, act)
    # near-end single talk in noise
    o = outs["nst"]
    act = active_mask(nst.near)
    quiet = frame_powers(nst.near) < np.percentile(frame_powers(nst.near), 95) * 1e-6
    quiet[: SR // FRAME] = False  # let noise estimators settle for 1 s
    noise_db = 10 * math.log10(float(np.sum(frame_powers(o)[quiet])) / float(np.sum(frame_powers(nst.mic)[quiet])))
    r["nst_gain"] = coherent_gain_db(o, nst.near, act)
    r["nst_noise"] = noise_db
    r["nst_snr_gain"] = r["nst_gain"] - noise_db
    a = int(nst.near_start_s * SR)
    r["nst_stoi"] = float(stoi(nst.near[a:], o[a:], SR, extended=False))
    return r


# (key, label, format, goal op, goal value)
ROWS: list[tuple[str, str, str, str | None, float | None]] = [
    ("erle_fst", "ERLE far-end single talk, after 2 s (dB)", "{:.1f}", ">=", 35.0),
    ("erle_start", "ERLE first 2 s after start (dB)", "{:.1f}", None, None),
    ("conv_start", "convergence to 20 dB from start (s)", "{:.2f}", None, None),
    ("erle_pre", "ERLE before echo-path change, 2-6 s (dB)", "{:.1f}", None, None),
    ("erle_epc", "ERLE first 2 s after echo-path change (dB)", "{:.1f}", ">=", 20.0),
    ("conv_epc", "reconvergence to 20 dB after change (s)", "{:.2f}", None, None),
    ("dt_pesq", "DT near-end PESQ-WB", "{:.2f}", None, None),
    ("dt_stoi", "DT near-end STOI", "{:.3f}", ">=", 0.88),
    ("dt_level", "DT near-end attenuation, energy (dB)", "{:+.1f}", ">=", -2.0),
    ("dt_gain", "DT near-end coherent gain (dB)", "{:+.1f}", None, None),
    ("nst_noise", "NST noise level change, noise-only (dB)", "{:+.1f}", None, None),
    ("nst_gain", "NST near-end coherent gain (dB)", "{:+.1f}", None, None),
    ("nst_snr_gain", "NST noise SNR gain (dB)", "{:+.1f}", None, None),
    ("nst_stoi", "NST near-end STOI (in noise)", "{:.3f}", None, None),
    ("cpu_pct", "CPU, % of one core (this machine)", "{:.2f}", "<=", 5.0),
]


def _miss(key: str, v: float) -> bool:
    row = next(r for r in ROWS if r[0] == key)
    op, goal = row[3], row[4]
    if op is None or goal is None:
        return False
    return not (v >= goal if op == ">=" else v <= goal) or math.isnan(v)


def _fmt(fmt: str, v: float) -> str:
    if math.isinf(v):
        return "never"
    return fmt.format(v)


def table(title: str, results: dict[str, dict[str, float]], header: list[str] = ()) -> str:
    names = [n for n, _ in SYSTEMS]
    lw = max(len(r[1]) for r in ROWS)
    cw = max(11, *(len(n) + 2 for n in names))
    lines = [f"== {title} ==", *header]
    lines.append(f"{'metric':<{lw}} " + "".join(f"{n:>{cw}}" for n in names) + "   goal")
    lines.append("-" * (lw + 1 + cw * len(names) + 12))
    for key, label, fmt, op, goal in ROWS:
        cells = []
        for n in names:
            v = results[n][key]
            s = _fmt(fmt, v) + (" ✗" if _miss(key, v) else "  ")
            cells.append(f"{s:>{cw}}")
        g = f"{op} {goal:g}" if op else "-"
        lines.append(f"{label:<{lw}} " + "".join(cells) + f"   {g}")
    return "\n".join(lines)


# -- runs --------------------------------------------------------------------------------
MEDIAN_KEYS = ("conv_start", "conv_epc")


def combine(per: list[dict[str, float]]) -> dict[str, float]:
    """Mean over variants/rooms; median for convergence times (robust to one 'never')."""
    return {k: float(np.median([m[k] for m in per]) if k in MEDIAN_KEYS else np.mean([m[k] for m in per]))
            for k in per[0]}


def bench_room(spec: RoomSpec) -> dict[str, dict[str, float]]:
    """{system: metrics} for one room, combined over ``VARIANTS`` placements."""
    per: dict[str, list[dict[str, float]]] = {name: [] for name, _ in SYSTEMS}
    for k in range(VARIANTS):
        sc = scenarios(variant(spec, k))
        audio_s = sum(s.seconds for s in sc.values())
        for name, factory in SYSTEMS:
            outs, cpu = {}, 0.0
            for kind, s in sc.items():
                outs[kind], c = run_system(factory, s)
                cpu += c
            m = score(sc, outs)
            m["cpu_pct"] = 100.0 * cpu / audio_s
            per[name].append(m)
    return {name: combine(ms) for name, ms in per.items()}


ELAPSED: dict[str, float] = {}


@pytest.fixture(scope="module")
def bench() -> dict[str, dict[str, dict[str, float]]]:
    """{room: {system: metrics}} (rooms as in ``ROOMS``)."""
    t0 = time.monotonic()
    res = {spec.name: bench_room(spec) for spec in ROOMS}
    ELAPSED["s"] = time.monotonic() - t0
    return res


def _header(spec) -> list[str]:
    i = scenarios(spec)["fst"].info
    return [
        f"{VARIANTS} placements (device and talker moved up to {spec.jitter_m * 100:.0f} cm per axis); "
        "figures for the nominal placement:",
        f"room {spec.dims[0]}x{spec.dims[1]}x{spec.dims[2]} m, RT60 {i['rt60']:.2f} s (target {spec.rt60}), "
        f"speaker-mic {np.linalg.norm(np.subtract(spec.speaker, spec.mic)) * 100:.0f} cm, "
        f"talker {np.linalg.norm(np.subtract(spec.talker, spec.mic)):.2f} m, noise: {spec.noise_kind}",
        f"reference leads echo by {i['lead_ms']:.1f} ms; loudspeaker distortion {i['ndr_db']:.1f} dB below "
        f"the linear echo; echo-path energy beyond 200 ms filter "
        f"{'none' if i['tail_db'] < -100 else format(i['tail_db'], '.0f') + ' dB'}; "
        f"echo-path change misalignment {i['misalign_db']:.1f} dB",
        f"echo {spec.echo_dbfs:g} dBFS, SER {spec.ser_db:g} dB, echo-to-background-noise {i['enr_db']:.0f} dB "
        f"(ERLE measurement ceiling for a system that keeps the noise), NST SNR {spec.noisy_snr_db:g} dB",
    ]


@pytest.mark.parametrize("room", [r.name for r in ROOMS])
def test_room_table(bench, room: str) -> None:
    spec = next(r for r in ROOMS if r.name == room)
    print()
    print(table(f"{room}", bench[room], _header(spec)))
    _check(bench[room])


def test_mean_table(bench) -> None:
    names = [n for n, _ in SYSTEMS]
    rooms = [r.name for r in ROOMS]
    mean = {n: {k: float(np.mean([bench[r][n][k] for r in rooms])) for k, *_ in ROWS} for n in names}
    print()
    print(table(f"mean of {' and '.join(rooms)}", mean))
    print(f"({VARIANTS} placements per room; scenario generation + processing + scoring {ELAPSED['s']:.1f} s)")
    for n in names:
        for k, *_ in ROWS:
            assert not math.isnan(mean[n][k]), (n, k)
    _check(mean)


def _check(results: dict[str, dict[str, float]]) -> None:
    # the unprocessed microphone is the identity: sanity of alignment and metrics
    mic = results["mic"]
    assert abs(mic["erle_fst"]) < 1e-6 and abs(mic["dt_gain"]) < 0.5 and abs(mic["nst_snr_gain"]) < 0.5
    if os.environ.get("VOXBOX_BENCH_STRICT"):
        name = SYSTEMS[-1][0]
        misses = [k for k, *_ in ROWS if _miss(k, results[name][k])]
        assert not misses, f"{name} misses goals: {misses}"


def test_reference_leads_echo_and_latency_is_compensated() -> None:
    """The reference leads the echo by 10-20 ms (never lags), and the front end's
    ``latency_samples`` aligns its output with the clean near end (lag 0)."""
    for spec in ROOMS:
        sc = scenarios(spec)
        fst = sc["fst"]
        n = 4 * SR
        x = np.fft.rfft(fst.ref[:n].astype(np.float64), 2 * n)
        y = np.fft.rfft(fst.echo[:n], 2 * n)
        xc = np.fft.irfft(np.conj(x) * y, 2 * n)
        lag = int(np.argmax(np.abs(xc[: SR // 10])))  # echo lags the reference by `lag`
        assert 10 * SR // 1000 <= lag <= 25 * SR // 1000, (spec.name, lag)
        nst = sc["nst"]
        out, _ = run_system(SYSTEMS[-1][1], nst)
        a = int(nst.near_start_s * SR)
        lags = range(-300, 301)
        c = [float(np.dot(out[a + 400 : -400], nst.near[a + 400 + k : nst.near.shape[0] - 400 + k])) for k in lags]
        assert lags[int(np.argmax(c))] == 0, (spec.name, lags[int(np.argmax(c))])
