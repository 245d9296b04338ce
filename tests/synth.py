"""Synthetic test signals shared by the tests (numpy; ``speech`` also needs espeak-ng)."""

from __future__ import annotations

import functools

import numpy as np

SR = 16000  # Hz


def speechlike(n: int, seed: int) -> np.ndarray:
    """Band-limited (~100-3400 Hz) noise with a ~4 Hz syllable envelope, peak 1.0."""
    rng = np.random.default_rng(seed)
    t = np.arange(-64, 65)
    h = (np.sinc(2 * 3400 / SR * t) * 2 * 3400 / SR - np.sinc(2 * 100 / SR * t) * 2 * 100 / SR)
    h *= np.hamming(len(t))
    x = np.convolve(rng.standard_normal(n), h, mode="same")
    tt = np.arange(n) / SR
    env = np.sin(2 * np.pi * 3.7 * tt + rng.uniform(0, 6)) ** 2 + 0.05
    env *= 0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * tt + rng.uniform(0, 6)) ** 2
    y = x * env
    return y / np.max(np.abs(y))


def room_ir(seed: int, delay_ms: float = 5.0, tail_ms: float = 60.0, gain: float = 0.5) -> np.ndarray:
    """Echo path: pure delay (the reference leads the echo) then a decaying random tail."""
    rng = np.random.default_rng(seed)
    d, n = int(SR * delay_ms / 1000), int(SR * tail_ms / 1000)
    tail = rng.standard_normal(n) * np.exp(-np.arange(n) / (n / 6))
    h = np.concatenate([np.zeros(d), tail])
    return h / np.sqrt(np.sum(h**2)) * gain


def power(x: np.ndarray) -> float:
    return float(np.mean(x.astype(np.float64) ** 2))


def speech(text: str, lead_s: float = 0.0, tail_s: float = 1.0, *, voice: str = "en-us",
           seed: int = 5) -> np.ndarray:
    """A spoken microphone signal: espeak-ng ``text`` (16 kHz, ``voxbox.audio.speech``) between
    ``lead_s`` and ``tail_s`` of silence, plus N(0, 20) noise from ``default_rng(seed)``,
    int16 (what the end-to-end tests and the link benchmark play into the rig's mic).
    Cached in memory per argument set; each call returns its own copy."""
    return _speech(text, lead_s, tail_s, voice, seed).copy()


@functools.lru_cache(maxsize=64)
def _speech(text: str, lead_s: float, tail_s: float, voice: str, seed: int) -> np.ndarray:
    from voxbox.audio.speech import render_speech

    x = render_speech(text, voice)
    rng = np.random.default_rng(seed)
    sig = np.concatenate([np.zeros(int(SR * lead_s)), x, np.zeros(int(SR * tail_s))])
    return np.clip(sig + rng.normal(0, 20, sig.size), -32768, 32767).astype(np.int16)
