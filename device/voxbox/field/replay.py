"""``voxbox dsp``: replay a recorded microphone and reference through the daemon's front end.

    voxbox dsp --mic MIC.wav --ref REF.wav --out OUT.wav [--config PATH] [--set key=value ...]
               [--events RECORDING.json]

The front end is built by :func:`build_frontend`, the function the daemon uses, from the
same configuration file (``--set`` overrides applied on top, validated like the file), and
fed in the daemon's capture period (10 ms blocks). Because
:meth:`voxbox.dsp.frontend.CaptureFrontEnd.process` is a pure function of the sample stream,
a recording the daemon made from its start (``voxbox-*-mic.wav`` and ``-ref.wav``, see
:mod:`voxbox.dsp.recorder`) replays to its ``-out.wav`` bit for bit with the same settings;
with other settings it shows what a change would have done on that unit's audio. The
echo canceller's retrainings (at a move of the reference line, after the start-up cue,
early in a young canceller's first far end) come at periods the daemon's threads
decided; ``--events`` takes them from the recording's ``.json`` sidecar and replays each,
and only those, at the sample where it came. Without ``--events`` the front end takes
its early retraining itself, at the frame it is due.

Inputs: 16-bit mono WAV at the capture rate (16 000 Hz). The reference is what the echo
canceller is given, i.e. already delayed to lead the echo; ``--ref-delay-ms`` shifts it
further (positive = later) for recordings made by other tools.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from voxbox.audio import wavfile
from voxbox.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from voxbox.dsp.frontend import build_frontend, frontend_settings, run_frontend  # noqa: F401 (re-exported)
from voxbox.dsp.recorder import EVENT_KINDS
from voxbox.errors import DspError  # noqa: F401 (re-exported)

__all__ = ["DspError", "frontend_settings", "build_frontend", "read_wav", "read_events", "run_frontend", "add_parser"]


def read_wav(path: Path, rate: int, what: str) -> np.ndarray:
    """Read a 16-bit mono WAV file as int16, shape ``(n,)``.

    Raises:
        DspError: missing/unreadable file, not 16-bit PCM, not mono, or not at ``rate``
            Hz; the message names ``what`` (the option) and the file.
    """
    try:
        x, got = wavfile.read_pcm16_mono(path, f"{what} {path}")
    except wavfile.WavError as exc:
        raise DspError(str(exc)) from None
    if got != rate:
        raise DspError(f"{what} {path}: expected {rate} Hz (audio.capture_rate), got {got} Hz; "
                       f"convert with: sox IN -r {rate} -c 1 -b 16 OUT.wav")
    return x


def read_events(path: Path) -> list[tuple[int, str, int]]:
    """The front-end steps of a recording's ``.json`` sidecar (its ``events`` key).

    Raises:
        DspError: missing/unreadable file, not JSON, or ``events`` missing or malformed;
            the message names ``--events`` and the file.
    """
    try:
        meta = json.loads(Path(path).read_text())
        events = [(int(t), str(k), int(v)) for t, k, v in meta["events"]]
    except OSError as exc:
        raise DspError(f"--events {path}: cannot read it: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise DspError(f"--events {path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    except (KeyError, TypeError, ValueError):
        raise DspError(f"--events {path}: expected an 'events' list of [sample, kind, value] "
                       f"(a voxbox recording's .json sidecar)") from None
    bad = [k for _, k, _ in events if k not in EVENT_KINDS]
    if bad:
        raise DspError(f"--events {path}: unknown event kind {bad[0]!r} (expected {', '.join(EVENT_KINDS)})")
    return events


def _erle_db(mic: np.ndarray, out: np.ndarray, ref: np.ndarray, rate: int, latency: int) -> float | None:
    """Mean echo reduction over 10 ms frames where the far end is active (dB), or None."""
    f = rate // 100
    n = (min(mic.shape[0], out.shape[0] - latency) // f) * f
    if n <= 0:
        return None
    pm = np.mean(mic[:n].astype(np.float64).reshape(-1, f) ** 2, axis=1)
    po = np.mean(out[latency : latency + n].astype(np.float64).reshape(-1, f) ** 2, axis=1)
    pr = np.mean(ref[:n].astype(np.float64).reshape(-1, f) ** 2, axis=1)
    act = pr > max(float(pr.max()) * 1e-3, 1.0)
    if not act.any():
        return None
    return float(10 * np.log10(pm[act].sum() / max(po[act].sum(), 1e-9)))


def cmd_dsp(args: argparse.Namespace) -> int:
    try:
        sets = [s if "." in s.partition("=")[0] else f"frontend.{s}" for s in args.set]
        cfg = load_config(args.config, sets)
        rate = cfg.audio.capture_rate
        mic = read_wav(args.mic, rate, "--mic")
        ref = read_wav(args.ref, rate, "--ref")
        events = read_events(args.events) if args.events is not None else None
    except (ConfigError, DspError) as exc:
        print(f"voxbox dsp: {exc}", file=sys.stderr)
        return 78 if isinstance(exc, ConfigError) else 2
    if mic.shape != ref.shape:
        n = min(mic.shape[0], ref.shape[0])
        print(f"voxbox dsp: --mic has {mic.shape[0]} samples, --ref {ref.shape[0]}; using the first {n}",
              file=sys.stderr)
        mic, ref = mic[:n], ref[:n]
    d = int(round(args.ref_delay_ms * rate / 1000))
    if d > 0:
        ref = np.concatenate([np.zeros(d, np.int16), ref[:-d] if d < ref.shape[0] else ref[:0]])[: mic.shape[0]]
    elif d < 0:
        ref = np.concatenate([ref[-d:], np.zeros(-d, np.int16)])[: mic.shape[0]]
    fe = build_frontend(cfg)
    block = rate * cfg.audio.period_ms // 1000
    t0 = time.process_time()
    try:
        out = run_frontend(fe, mic, ref, block, events)
    finally:
        latency = 0 if fe is None else fe.latency_samples
        ls = None if fe is None else fe.loudspeaker
        if fe is not None:
            fe.close()
    cpu = time.process_time() - t0
    wavfile.write_wav(args.out, out, rate)
    secs = mic.shape[0] / rate
    erle = _erle_db(mic, out, ref, rate, latency)
    summary = {
        "mic": str(args.mic), "ref": str(args.ref), "out": str(args.out), "seconds": round(secs, 3),
        "latency_samples": latency, "erle_db": None if erle is None else round(erle, 1),
        "cpu_per_audio_s": round(cpu / secs, 5) if secs else None,
        "settings": None if fe is None else dataclasses.asdict(fe.settings),
        # the loudspeaker saturation identified (null: linear, or the model is off)
        "loudspeaker": None if ls is None or math.isinf(ls.clip) else {"clip": round(ls.clip, 4), "knee": ls.knee},
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.out}: {secs:.2f} s processed, output delayed {latency} samples "
              f"({1000 * latency / rate:.1f} ms); echo reduction over far-end-active frames "
              f"{'n/a (no far end)' if erle is None else f'{erle:.1f} dB'}; "
              f"CPU {cpu:.3f} s ({100 * cpu / max(secs, 1e-9):.2f} % of one core); loudspeaker "
              f"{'linear' if summary['loudspeaker'] is None else 'saturating at %.3f of full scale, knee %g' % (ls.clip, ls.knee)}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("dsp", help="run recorded mic/ref WAVs through the daemon's capture front end",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mic", type=Path, required=True, help="microphone WAV (16-bit mono, capture rate)")
    p.add_argument("--ref", type=Path, required=True, help="far-end reference WAV, as fed to the canceller")
    p.add_argument("--out", type=Path, required=True, help="output WAV")
    p.add_argument("--config", type=Path, default=None,
                   help=f"daemon configuration (e.g. {DEFAULT_CONFIG_PATH}); default: built-in defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set filter_ms=300 or --set frontend.agc=true (repeatable)")
    p.add_argument("--ref-delay-ms", type=float, default=0.0,
                   help="delay the reference by this much (ms; negative = earlier)")
    p.add_argument("--events", type=Path, default=None, metavar="RECORDING.json",
                   help="replay the echo canceller's retrainings from a recording's .json sidecar, "
                        "and only those")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_dsp)
