"""Warm start benchmark (issue 15, item 3): how well does the echo canceller handle the
FIRST reply after boot, cold, after the start-up cue, and warm?

Run (about 2 minutes on 2 cores; not part of the default test run):

    .venv/bin/python -m pytest -m benchmark -s tests/benchmarks/test_warmstart_bench.py

Offline, through the real :class:`voxbox.dsp.frontend.CaptureFrontEnd` (default settings,
with the ``"aec"`` wake tap), in the simulated car and kiosk of ``rooms.py`` (echo path
model, background noise, microphone self-noise, the echo 6 dB above a near-end talker:
``ser_db = -6``), variants 0..``VOXBOX_BENCH_VARIANTS - 1`` averaged. One continuous
stream per condition, cut into 10 ms blocks as on the device; everything played (cue,
replies) goes through the same loudspeaker + room echo path at the same acoustic gain
(set so a reply's echo is at the room's ``echo_dbfs``):

- **cold**: a fresh front end, ``IDLE_S`` of idle (reference silent, room noise on the
  microphone), then the first reply;
- **cue**: the packaged start-up cue (24 kHz, resampled to the 16 kHz reference with
  soxr as the daemon does), ``IDLE_S`` of idle, then the first reply;
- **cue +30 s**: the same with 30 s of idle before the reply (does Speex keep what it
  learnt from the cue while the reference is silent?);
- **warm**: a previous 10 s reply, ``IDLE_S`` of idle, then the reply (what the tenth
  reply sees).

Metrics on the reply (10 ms frames; echo-active frames as in the front-end benchmark):

- ERLE (dB) = 10 log10(sum mic power / sum output power), single talk (reply echo and
  room noise only), over 0-2 s and 2-4 s of the reply: main output (the uplink and the
  barge-in detector: residual echo here is what makes false barge-ins) and the ``aec``
  wake tap (the echo canceller's output that the playback-aware wake word detector
  reads);
- DT tap SER / DT out SER (dB): the same reply with a near-end talker from 0.5 s on (the
  echo 6 dB above it): near-end-to-residual ratio over near-active frames of 0.5-4 s at
  the wake tap (what a wake word spoken during the first reply competes with) and at the
  main output, the near-end part being the projection of the signal on the clean
  near-end (the microphone's own ratio is printed in the title, about -6 dB).

A second table trades the cue's length and the level of its noise "whoosh" (made by
``tools/make_earcons.py:startup_cue``) against the first reply's ERLE.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soxr

from voxbox.audio.earcon import EARCON_RATE, load_earcon
from voxbox.dsp.frontend import CaptureFrontEnd, FrontEndSettings

from .rooms import (
    FAR_TEXTS,
    FAR_VOICE,
    FRAME,
    NEAR_TEXTS,
    NEAR_VOICE,
    ROOMS,
    SR,
    RoomSpec,
    _echo,
    _room_noise,
    _scale_to,
    active_mask,
    frame_powers,
    room_irs,
    speech_track,
    variant,
)

pytestmark = pytest.mark.benchmark

BLOCK = 160  # the capture period (10 ms)
VARIANTS = int(os.environ.get("VOXBOX_BENCH_VARIANTS", "3"))
IDLE_S = 3.0  # boot: cue, then idle until the first question is answered
REPLY_S = 4.5
SER_DB = -6.0  # near-end talker 6 dB below the echo
NEAR_START_S = 0.5  # into the reply

ROOT = Path(__file__).resolve().parents[2]


def make_earcons():
    spec = importlib.util.spec_from_file_location("make_earcons", ROOT / "tools" / "make_earcons.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def to_reference(cue24: np.ndarray) -> np.ndarray:
    """A 24 kHz int16 cue as the 16 kHz reference the capture thread gets."""
    y = soxr.resample(cue24.astype(np.float32) / 32768.0, EARCON_RATE, SR, quality="HQ")
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


# -- one room placement -------------------------------------------------------------------
class Placement:
    """The signals of one room variant: the first reply (far end), a previous reply, the
    near-end talker, the echo gain, and the noise generator."""

    def __init__(self, spec: RoomSpec):
        self.spec = spec = replace(spec, ser_db=SER_DB)
        rot = spec.variant % len(FAR_TEXTS)
        self.reply = self._far(REPLY_S, rot)
        self.previous = self._far(10.0, rot + 3)
        _, self.gain = _echo(spec, self.reply.astype(np.float64), None, None)  # reply echo at echo_dbfs
        n = int(REPLY_S * SR)
        v = spec.variant % len(NEAR_TEXTS)
        ns = speech_track(NEAR_TEXTS[v:] + NEAR_TEXTS[:v], NEAR_VOICE, REPLY_S, start_s=NEAR_START_S,
                          end_s=REPLY_S, gap_s=0.3)
        from scipy.signal import fftconvolve

        self.near = _scale_to(fftconvolve(ns, room_irs(spec)["talker"])[:n], spec.echo_dbfs + spec.ser_db)

    def _far(self, seconds: float, rot: int) -> np.ndarray:
        rot %= len(FAR_TEXTS)
        f = _scale_to(speech_track(FAR_TEXTS[rot:] + FAR_TEXTS[:rot], FAR_VOICE, seconds, start_s=0.1),
                      self.spec.far_dbfs)
        return np.clip(np.round(f), -32768, 32767).astype(np.int16)

    def stream(self, prefix: np.ndarray, near: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(mic, ref, echo, reply start sample) for ``prefix`` (the reference played
        before the reply, int16 at 16 kHz, silence included) followed by the reply."""
        spec = self.spec
        ref = np.concatenate([prefix, self.reply])
        n = ref.shape[0]
        echo, _ = _echo(spec, ref.astype(np.float64), None, self.gain)
        seed = spec.seed * 7919 + n  # the same noise for the same stream length
        sn = lambda x, db: x * 32768.0 * 10 ** (db / 20)
        noise = sn(_room_noise(spec, n, seed), spec.bg_noise_dbfs) \
            + sn(np.random.default_rng(seed + 1).standard_normal(n), spec.self_noise_dbfs)
        mic = echo + noise
        start = prefix.shape[0]
        if near:
            mic[start:] += self.near
        return np.clip(np.round(mic), -32768, 32767).astype(np.int16), ref, echo, start


def run(mic: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(main output, aec wake tap), latency removed, float64, through a fresh front end."""
    fe = CaptureFrontEnd(FrontEndSettings(), wake_tap="aec")
    lat = fe.latency_samples
    mic = np.concatenate([mic, np.zeros(lat, dtype=np.int16)])
    ref = np.concatenate([ref, np.zeros(lat, dtype=np.int16)])
    out, tap = [], []
    for i in range(0, mic.shape[0], BLOCK):
        out.append(fe.process(mic[i:i + BLOCK], ref[i:i + BLOCK]))
        tap.append(fe.wake_tap)
    fe.close()
    return (np.concatenate(out)[lat:].astype(np.float64), np.concatenate(tap)[lat:].astype(np.float64))


def erle(mic: np.ndarray, out: np.ndarray, echo: np.ndarray, a: int, b: int) -> float:
    m = active_mask(echo[a:b])
    pm, po = frame_powers(mic[a:b].astype(np.float64))[m], frame_powers(out[a:b])[m]
    return float(10 * np.log10(np.sum(pm) / max(np.sum(po), 1e-9)))


def dt_ser(y: np.ndarray, near: np.ndarray, a: int, b: int) -> float:
    """Near-end-to-residual ratio of ``y`` (aligned with ``near``, both reply-relative)
    over near-active frames of [a, b): the near-end part is the projection of ``y`` on
    ``near``, the rest (residual echo, noise, distortion) the residual."""
    n, y = near[a:b], y[a:b]
    m = np.repeat(active_mask(n, 30.0), FRAME)
    k = m.shape[0]
    n, y = n[:k][m], y[:k][m]
    g = float(np.dot(y, n) / np.dot(n, n))
    r = y - g * n
    return float(10 * np.log10(np.sum((g * n) ** 2) / max(np.sum(r * r), 1e-9)))


def measure(pl: Placement, prefix: np.ndarray) -> dict[str, float]:
    mic, ref, echo, s = pl.stream(prefix, near=False)
    out, tap = run(mic, ref)
    two = 2 * SR
    res = {"erle_0_2": erle(mic, out, echo, s, s + two), "erle_2_4": erle(mic, out, echo, s + two, s + 2 * two),
           "tap_0_2": erle(mic, tap, echo, s, s + two), "tap_2_4": erle(mic, tap, echo, s + two, s + 2 * two)}
    mic, ref, echo, s = pl.stream(prefix, near=True)
    out, tap = run(mic, ref)
    a, b = int(NEAR_START_S * SR), int(4.0 * SR)
    res["dt_ser"] = dt_ser(tap[s:], pl.near, a, b)
    res["dt_ser_out"] = dt_ser(out[s:], pl.near, a, b)
    res["dt_ser_mic"] = dt_ser(mic[s:].astype(np.float64), pl.near, a, b)
    return res


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SR)), dtype=np.int16)


def mean_over(rooms_variants, fn) -> dict[str, float]:
    rows = [fn(pl) for pl in rooms_variants]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


@pytest.fixture(scope="module")
def placements():
    return {room.name: [Placement(variant(room, k)) for k in range(VARIANTS)] for room in ROOMS}


COLS = [("erle_0_2", "ERLE 0-2 s"), ("erle_2_4", "ERLE 2-4 s"), ("tap_0_2", "tap ERLE 0-2 s"),
        ("tap_2_4", "tap ERLE 2-4 s"), ("dt_ser", "DT tap SER"), ("dt_ser_out", "DT out SER")]


def print_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{title}")
    print(f"{'':<28}" + "".join(f"{c:>16}" for _, c in COLS))
    for name, r in rows:
        print(f"{name:<28}" + "".join(f"{r[k]:>16.1f}" for k, _ in COLS))


def test_first_reply_cold_cue_warm(placements):
    cue = to_reference(load_earcon("startup"))
    conditions = [
        ("cold", lambda pl: silence(IDLE_S)),
        (f"cue ({len(cue) / SR:.1f} s)", lambda pl: np.concatenate([cue, silence(IDLE_S)])),
        ("cue + 30 s idle", lambda pl: np.concatenate([cue, silence(30.0)])),
        ("warm (10 s reply before)", lambda pl: np.concatenate([pl.previous, silence(IDLE_S)])),
        ("warm + 30 s idle", lambda pl: np.concatenate([pl.previous, silence(30.0)])),
    ]
    results = {}
    for room, pls in placements.items():
        rows = []
        for name, prefix in conditions:
            rows.append((name, mean_over(pls, lambda pl, prefix=prefix: measure(pl, prefix(pl)))))
        mic_ser = rows[0][1]["dt_ser_mic"]
        print_table(f"{room}: first reply, {VARIANTS} placements (dB; microphone DT SER {mic_ser:.1f} dB)", rows)
        results[room] = dict(rows)
    mean_rows = [(name, {k: float(np.mean([results[r][name][k] for r in results])) for k, _ in COLS})
                 for name, _ in conditions]
    print_table("mean of the rooms", mean_rows)
    m = dict(mean_rows)
    # the cue must help the first 2 s of the first reply, and keep helping after 30 s of idle
    cue_name = conditions[1][0]
    assert m[cue_name]["erle_0_2"] > m["cold"]["erle_0_2"]
    assert m["cue + 30 s idle"]["erle_0_2"] > m["cold"]["erle_0_2"]


def test_cue_length_and_whoosh_trade(placements):
    mk = make_earcons()
    grid = [(0.8, -6.0), (1.2, -12.0), (1.2, -6.0), (1.2, 0.0), (0.8, 6.0), (1.2, 6.0), (1.5, 6.0),
            (2.0, 6.0), (3.0, 6.0), (1.2, 40.0)]  # +40 dB: the whoosh alone
    rows = [("cold", mean_over([p for pls in placements.values() for p in pls],
                               lambda pl: measure(pl, silence(IDLE_S))))]
    for length, whoosh in grid:
        cue = to_reference(mk.normalise(mk.startup_cue(length_s=length, whoosh_db=whoosh)))
        prefix = np.concatenate([cue, silence(IDLE_S)])
        rows.append((f"{length:.1f} s, whoosh {whoosh:+.0f} dB",
                     mean_over([p for pls in placements.values() for p in pls], lambda pl, prefix=prefix: measure(pl, prefix))))
    print_table("cue length / whoosh level vs the first reply (mean of rooms and placements)", rows)
