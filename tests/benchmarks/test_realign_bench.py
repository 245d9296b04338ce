"""The first reply after boot when the reference delay line moves after the start-up cue
(issue 15, item 3): the echo canceller kept, or retrained at the new line.

Run (about 2 minutes on 2 cores; not part of the default test run):

    .venv/bin/python -m pytest -m benchmark -s -o addopts="-ra --timeout=1800" \\
        tests/benchmarks/test_realign_bench.py

Offline, through the real :class:`voxbox.dsp.frontend.CaptureFrontEnd` (default settings,
``"aec"`` wake tap: the echo canceller's output, which the wake word hears), on the room
family's ``REPORTING`` half (``VOXBOX_FAMILY_HALF=tuning`` for the half that
``REALIGN_HISTORY_MS`` and ``REALIGN_PASSES`` were chosen on). One stream per room and
case, cut into 10 ms blocks as on the device: 0.3 s of room noise, the packaged start-up
cue (resampled to 16 kHz as the daemon does), 0.2 s, then the move of the line (at a
frame boundary or not, as it falls), 1.0 s of quiet (the question), then a 6 s spoken
reply. The echo goes through the room's loudspeaker nonlinearity and impulse response;
the loudspeaker model starts from the saturation a previous run identified, as the
daemon's does from its echo state.

Before the move the line is ``off`` ms away from the right one (negative: too short, the
reference leads its echo by that much more; positive: too long, the echo leads the
reference); the move sets it right. Cases:

- **kept**: the filter is kept across the move (the daemon before ``realign``);
- **retrained**: the daemon now: 0.3 s after the cue, the canceller is retrained on it
  (``realign(0)``), and at the move it is retrained at the new line (``realign(off)``);
- **right line**: the line was right from the start, the cue heard once, no retraining
  (what the first reply got on a unit whose saved line was right, before this change).

Figure: ERLE (dB) of the canceller's output over the reply's 0-1 s, 1-2 s and 2-4 s,
10 log10(sum mic power / sum output power) over echo-active frames (within 30 dB of the
loudest), median and worst decile (10th percentile) over the half's rooms.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.signal import fftconvolve

from voxbox.audio.earcon import load_earcon
from voxbox.dsp.frontend import CaptureFrontEnd, FrontEndSettings

from .roomfamily import REPORTING, TUNING, FamilyRoom, _far_track, echo_path, room_noise
from .test_warmstart_bench import to_reference

pytestmark = pytest.mark.benchmark

SR = 16000
BLOCK = 160
HALF = os.environ.get("VOXBOX_FAMILY_HALF", "reporting")
OFFSETS_MS = (-40.0, -20.0, 30.0, 60.0)
SPANS = ((0.0, 1.0), (1.0, 2.0), (2.0, 4.0))
_LS: dict[str, tuple[float, float]] = {}  # room -> the loudspeaker saturation a first run identified


def scene(room: FamilyRoom) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """(far end, microphone, cue end, move, reply start), int16 / samples."""
    rir, nl, _ = echo_path(room)
    cue = to_reference(load_earcon("startup")).astype(np.float64)
    reply = _far_track(room, 6.0, 3)
    lead = np.zeros(int(0.3 * SR))
    x = np.concatenate([lead, cue, np.zeros(int(1.2 * SR)), reply])
    n = x.shape[0]
    echo = fftconvolve(nl(x / 32768.0) * 32768.0, rir)[:n]
    d = int(0.010 * SR)  # the echo lags the right line by the aligner's lead
    echo = np.concatenate([np.zeros(d), echo[: n - d]])
    noise = room_noise(room, n, room.seed + 7) * 32768 * 10 ** (room.bg_noise_dbfs / 20)
    mic = np.clip(np.round(echo + noise), -32768, 32767).astype(np.int16)
    cue_end = lead.shape[0] + cue.shape[0]
    move = (cue_end + int(0.2 * SR)) // BLOCK * BLOCK
    return x.astype(np.int16), mic, cue_end, move, cue_end + int(1.2 * SR)


def run(room: FamilyRoom, off_ms: float, case: str) -> list[float]:
    x, mic, cue_end, move, r0 = scene(room)
    n = x.shape[0]
    off = 0 if case == "right line" else int(round(off_ms * SR / 1000))
    ref = x.copy()  # before the move the line is off: ref(t) = x(t - off)
    if off > 0:
        ref[:move] = np.concatenate([np.zeros(off, np.int16), x[: move - off]])
    elif off < 0:
        ref[:move] = x[-off : move - off]
    fe = CaptureFrontEnd(FrontEndSettings(), wake_tap="aec")
    if room.name in _LS:
        fe.loudspeaker.restore(*_LS[room.name])
    retrain_at = (cue_end + int(0.3 * SR)) // BLOCK * BLOCK
    taps = []
    for i in range(0, n, BLOCK):
        if case in ("retrained", "at the move") and i == move:
            fe.realign(-off)  # the line grew by -off: ref_new(t) = x(t) = ref_old(t + off)
        if case == "retrained" and i == retrain_at:
            fe.realign(0)
        fe.process(mic[i : i + BLOCK], ref[i : i + BLOCK])
        taps.append(fe.wake_tap.copy())
    if case == "right line" and room.name not in _LS:
        _LS[room.name] = (fe.loudspeaker.clip, fe.loudspeaker.knee)
    tap = np.concatenate(taps).astype(np.float64)[fe.latency_samples :]
    fe.close()
    out = []
    for a, b in SPANS:
        s = slice(r0 + int(a * SR), r0 + int(b * SR))
        m = mic[s].astype(np.float64).reshape(-1, BLOCK)
        o = tap[s].reshape(-1, BLOCK)
        pm = (m**2).mean(1)
        act = pm > pm.max() * 1e-3
        out.append(float(10 * np.log10(pm[act].sum() / max((o[act] ** 2).mean(1).sum(), 1e-9))))
    return out


def test_first_reply_after_a_line_move() -> None:
    rooms = REPORTING if HALF == "reporting" else TUNING
    for r in rooms:  # the loudspeaker saturation each room's model starts from
        run(r, 0.0, "right line")
    right = np.array([run(r, 0.0, "right line") for r in rooms])
    print(f"\nfirst reply after boot, echo canceller output ERLE (dB), median / worst decile over the "
          f"{HALF} half's {len(rooms)} rooms; reply 0-1 s | 1-2 s | 2-4 s")

    def row(label: str, v: np.ndarray) -> str:
        return f"  {label:<28}" + " | ".join(f"{np.median(v[:, k]):5.1f} / {np.percentile(v[:, k], 10):5.1f}"
                                            for k in range(len(SPANS)))

    print(row("right line, cue heard once", right))
    print(row("right line, retrained", np.array([run(r, 0.0, "retrained") for r in rooms])))
    worst_gain = np.inf
    for off in OFFSETS_MS:
        kept = np.array([run(r, off, "kept") for r in rooms])
        new = np.array([run(r, off, "retrained") for r in rooms])
        print(row(f"line {off:+.0f} ms off, kept", kept))
        print(row(f"line {off:+.0f} ms off, retrained", new))
        worst_gain = min(worst_gain, float(np.median(new[:, 0] - kept[:, 0])))
    print(f"  smallest median gain of retraining over keeping, reply's first second: {worst_gain:.1f} dB")


def test_history_and_passes_trade(monkeypatch) -> None:
    """How much history, how many passes (``REALIGN_HISTORY_MS``, ``REALIGN_PASSES``; the
    CPU of a retraining is their product): the line 40 ms off, retrained at the move
    only (no retraining after the cue), so the figures show what each choice recovers."""
    import voxbox.dsp.frontend as fe_mod

    rooms = REPORTING if HALF == "reporting" else TUNING
    for r in rooms:
        if r.name not in _LS:
            run(r, 0.0, "right line")
    print(f"\nretrained at the move only, line -40 ms off; ERLE (dB) of the canceller's output, median / "
          f"worst decile over the {HALF} half; reply 0-1 s | 1-2 s | 2-4 s")
    for hist in (1000, 1500, 2000):
        for passes in (1, 2, 3):
            monkeypatch.setattr(fe_mod, "REALIGN_HISTORY_MS", hist)
            monkeypatch.setattr(fe_mod, "REALIGN_PASSES", passes)
            v = np.array([run(r, -40.0, "at the move") for r in rooms])
            print(f"  history {hist} ms, {passes} pass{'es' if passes > 1 else '  '}  "
                  + " | ".join(f"{np.median(v[:, k]):5.1f} / {np.percentile(v[:, k], 10):5.1f}" for k in range(len(SPANS))))
