#!/usr/bin/env python3
"""Make Voxbox's earcons: the short cues in ``device/voxbox/earcons/*.wav``.

Deterministic (pure numpy, no randomness): running it again rewrites byte-identical files,
and ``tests/test_earcon.py`` checks that the committed WAVs match. 16-bit mono PCM at
24 000 Hz (the playback rate), peak -12 dBFS, raised-cosine attack and release on every
tone so nothing clicks, phase-continuous frequency steps.

| cue | sound | length |
|---|---|---|
| wake | rising two-tone, 660 → 880 Hz | 120 ms |
| end | falling two-tone, 880 → 660 Hz | 100 ms |
| error | low double buzz, 196 Hz with odd harmonics, 2 × 100 ms, 50 ms apart | 250 ms |
| mute | falling two-tone, lower, 523 → 392 Hz | 150 ms |
| unmute | rising two-tone, lower, 392 → 523 Hz | 150 ms |

Usage: ``python tools/make_earcons.py [OUT_DIR]`` (default: the package directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from voxbox.wavfile import write_wav as _write_wav

RATE = 24000
PEAK_DBFS = -12.0
OUT_DIR = Path(__file__).resolve().parent.parent / "device" / "voxbox" / "earcons"


def envelope(n: int, attack_s: float, release_s: float) -> np.ndarray:
    """Raised-cosine attack and release, flat between: starts and ends at exactly 0."""
    env = np.ones(n)
    a = max(2, int(round(attack_s * RATE)))
    r = max(2, int(round(release_s * RATE)))
    env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    env[n - r:] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(r) + 1) / r)
    return env


def steps(freqs: list[float], seg_s: float, glide_s: float = 0.006,
          harmonics: tuple[float, ...] = (1.0, 0.25)) -> np.ndarray:
    """Tones of ``seg_s`` each, one after another, with the frequency gliding over
    ``glide_s`` at each step and the phase integrated (no discontinuity). ``harmonics``:
    amplitude of partial 1, 2, ... (a little 2nd harmonic helps small speakers)."""
    n = int(round(seg_s * RATE)) * len(freqs)
    t = np.arange(n) / RATE
    f = np.full(n, float(freqs[0]))
    for i in range(1, len(freqs)):
        t_step = i * seg_s
        ramp = np.clip((t - (t_step - glide_s / 2)) / glide_s, 0.0, 1.0)
        ramp = 0.5 - 0.5 * np.cos(np.pi * ramp)
        f += (freqs[i] - freqs[i - 1]) * ramp
    phase = 2 * np.pi * np.cumsum(f) / RATE
    return sum(a * np.sin((k + 1) * phase) for k, a in enumerate(harmonics))


def buzz(freq: float, dur_s: float) -> np.ndarray:
    """A band-limited square-ish buzz: odd harmonics 1/k, all below 4 kHz, so a low
    fundamental is still heard on a small speaker that cannot reproduce it."""
    n = int(round(dur_s * RATE))
    t = np.arange(n) / RATE
    out = np.zeros(n)
    k = 1
    while k * freq < 4000:
        out += np.sin(2 * np.pi * k * freq * t) / k
        k += 2
    return out * envelope(n, 0.008, 0.025)


def normalise(x: np.ndarray) -> np.ndarray:
    peak = 10 ** (PEAK_DBFS / 20) * 32767
    return np.round(x / np.max(np.abs(x)) * peak).astype(np.int16)


def synthesize() -> dict[str, np.ndarray]:
    """All cues as int16 arrays at :data:`RATE`."""
    cues: dict[str, np.ndarray] = {}

    def two_tone(f1: float, f2: float, total_s: float, attack_s: float, release_s: float):
        x = steps([f1, f2], total_s / 2)
        return x * envelope(len(x), attack_s, release_s)

    cues["wake"] = two_tone(660.0, 880.0, 0.120, 0.008, 0.030)
    cues["end"] = two_tone(880.0, 660.0, 0.100, 0.006, 0.035)
    gap = np.zeros(int(round(0.050 * RATE)))
    cues["error"] = np.concatenate([buzz(196.0, 0.100), gap, buzz(196.0, 0.100)])
    cues["mute"] = two_tone(523.25, 392.0, 0.150, 0.008, 0.040)
    cues["unmute"] = two_tone(392.0, 523.25, 0.150, 0.008, 0.040)
    return {name: normalise(x) for name, x in cues.items()}


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    _write_wav(path, samples, rate)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, x in synthesize().items():
        write_wav(out / f"{name}.wav", x)
        print(f"{out / (name + '.wav')}: {len(x) / RATE * 1000:.0f} ms, "
              f"peak {20 * np.log10(np.max(np.abs(x)) / 32767):.1f} dBFS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
