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
| startup | rising C-major-9 chime arpeggio (C5 E5 G5 D6, soft bell partials) over a swelling, \
pink-tilted noise "whoosh" (150 Hz-7 kHz, +6 dB re the chime) | 1500 ms |

The start-up cue is played once at boot through the normal playback path: besides saying
"ready", its broadband whoosh trains the echo canceller's adaptive filter in every
frequency band the capture sees (16 kHz capture: up to 8 kHz), so the first reply starts
with a converged canceller (``tests/benchmarks/test_warmstart_bench.py``: the whoosh's
level matters more than the cue's length; 1.5 s with the whoosh 6 dB above the chime puts
the canceller's ERLE over the first 2 s of the first reply at 21 dB, against 8 dB cold and
24 dB warm). Its noise is a counter-based hash (splitmix64 of the sample index), not a
random generator, so the file is the same on every machine and numpy version (up to the
1 LSB of floating-point rounding the test allows).

Usage: ``python tools/make_earcons.py [OUT_DIR]`` (default: the package directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from voxbox.audio.wavfile import write_wav as _write_wav

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


def hash_noise(n: int, seed: int) -> np.ndarray:
    """Deterministic white noise, zero mean, unit RMS: splitmix64 of the sample index
    (uint64 arithmetic wraps), the sum of two uniforms (triangular). No RNG state."""
    with np.errstate(over="ignore"):
        z = (np.arange(n, dtype=np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u1 = (z >> np.uint64(40)).astype(np.float64) / 2.0 ** 24  # 24 high bits
    u2 = (z & np.uint64(0xFFFFFF)).astype(np.float64) / 2.0 ** 24  # 24 low bits
    x = u1 + u2 - 1.0
    return x / np.sqrt(np.mean(x * x))


def shaped_noise(n: int, seed: int, lo_hz: float = 150.0, hi_hz: float = 7000.0,
                 tilt_db_per_oct: float = -3.0) -> np.ndarray:
    """Band-limited noise, unit RMS: ``hash_noise`` shaped in the frequency domain, flat
    raised-cosine skirts (one octave) below ``lo_hz`` and above ``hi_hz``, and a spectral
    tilt (-3 dB/octave = pink: soft, "shhh" rather than hiss)."""
    m = 1 << (n - 1).bit_length()
    spec = np.fft.rfft(hash_noise(n, seed), m)
    f = np.fft.rfftfreq(m, 1 / RATE)
    g = np.zeros_like(f)
    band = f > 0
    g[band] = (f[band] / 1000.0) ** (tilt_db_per_oct / (20 * np.log10(2)))

    def skirt(x):  # 0 -> 1 raised cosine over x in [0, 1]
        return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))

    with np.errstate(divide="ignore"):
        octs_lo = np.log2(np.where(band, f, 1e-9) / (lo_hz / 2))
        octs_hi = np.log2((hi_hz * 1.5) / np.where(band, f, 1e-9))
    g *= skirt(octs_lo) * skirt(octs_hi / np.log2(1.5))
    y = np.fft.irfft(spec * g, m)[:n]
    return y / np.sqrt(np.mean(y * y))


def startup_cue(length_s: float = 1.5, whoosh_db: float = 6.0,
                notes: tuple[float, ...] = (523.25, 659.26, 783.99, 1174.66), note_step_s: float = 0.11,
                decay_s: float = 0.45) -> np.ndarray:
    """The start-up cue (float, arbitrary scale; :func:`normalise` sets the peak).

    A rising arpeggio of bell-like notes (partials 1, 2, 3, 4 at 1, 0.35, 0.15, 0.08,
    5 ms attack, exponential decay ``decay_s``), ``note_step_s`` apart, over a pink noise
    whoosh (:func:`shaped_noise`) whose RMS is ``whoosh_db`` re the chime's RMS; the whoosh
    swells in over the first 40 % and fades over the rest (raised cosines), and the whole
    cue gets a 10 ms attack and a 150 ms release so it starts and ends at 0.
    """
    n = int(round(length_s * RATE))
    t = np.arange(n) / RATE
    chime = np.zeros(n)
    for i, f0 in enumerate(notes):
        t0 = i * note_step_s
        tt = t - t0
        on = tt >= 0
        env = np.where(on, np.exp(-np.maximum(tt, 0) / decay_s), 0.0)
        att = int(round(0.005 * RATE))
        s0 = int(round(t0 * RATE))
        env[s0:s0 + att] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(min(att, n - s0)) / att)
        for k, a in enumerate((1.0, 0.35, 0.15, 0.08)):
            if (k + 1) * f0 < 8000:
                chime += a * env * np.sin(2 * np.pi * (k + 1) * f0 * np.maximum(tt, 0))
    chime_rms = np.sqrt(np.mean(chime[chime != 0] ** 2))
    swell = np.where(t < 0.4 * length_s, 0.5 - 0.5 * np.cos(np.pi * t / (0.4 * length_s)),
                     0.5 + 0.5 * np.cos(np.pi * (t - 0.4 * length_s) / (0.6 * length_s)))
    whoosh = shaped_noise(n, seed=0x5EED) * swell
    whoosh *= chime_rms * 10 ** (whoosh_db / 20) / np.sqrt(np.mean(whoosh ** 2))
    return (chime + whoosh) * envelope(n, 0.010, 0.150)


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
    cues["startup"] = startup_cue()
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
