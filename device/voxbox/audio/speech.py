"""Synthetic speech for the demo and the tests (espeak-ng).

``render_speech`` renders text with the ``espeak-ng`` command (Debian package
``espeak-ng``) to a temporary WAV, reads it with :mod:`voxbox.audio.wavfile` and
resamples espeak-ng's 22 050 Hz output to the 16 kHz capture rate with soxr. Results are
cached as 16 kHz WAV files in ``$XDG_CACHE_HOME/voxbox/speech`` (default
``~/.cache/voxbox/speech``), keyed by text, voice, rate and the espeak-ng version, so
repeated test runs do not re-synthesise.

``demo_utterance`` builds the standard demo clip: noise, "Hey Jarvis", a pause, a
question, trailing noise, with pink background noise over the whole clip, and returns
the segment boundaries.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from voxbox.audio.wavfile import WavError, read_pcm16_mono, write_wav  # noqa: F401  (write_wav: re-exported)
from voxbox.errors import SpeechError  # noqa: F401 (re-exported)

__all__ = [
    "SAMPLE_RATE",
    "SpeechError",
    "cache_dir",
    "demo_utterance",
    "pink_noise",
    "render_speech",
]

SAMPLE_RATE = 16_000
ESPEAK = "espeak-ng"

DEMO_WAKE_TEXT = "Hey Jarvis"
DEMO_QUESTION_TEXT = "What will the weather be like tomorrow?"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voxbox" / "speech"


def _espeak_path() -> str:
    path = shutil.which(ESPEAK)
    if path is None:
        raise SpeechError(
            "espeak-ng not found on PATH: speech rendering needs the espeak-ng "
            "command (Debian/Ubuntu package `espeak-ng`: apt-get install espeak-ng)"
        )
    return path


@functools.lru_cache(maxsize=None)
def _espeak_version(path: str) -> str:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise SpeechError(f"cannot run {path} --version: {e}") from e
    return out.strip()


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    try:
        return read_pcm16_mono(path, str(path))
    except WavError as exc:
        raise SpeechError(str(exc)) from None


def render_speech(text: str, voice: str = "en-us", rate_wpm: int = 150) -> np.ndarray:
    """Speak ``text`` with espeak-ng; return 16 kHz mono int16 samples.

    ``voice`` is any espeak-ng voice name, optionally with a variant
    (``en-us``, ``en-gb``, ``en-us+f3``). Cached on disk (see module docstring).
    """
    if not text.strip():
        raise ValueError("text is empty")
    exe = _espeak_path()
    key = hashlib.sha256(
        "\0".join([_espeak_version(exe), voice, str(int(rate_wpm)), text]).encode()
    ).hexdigest()[:32]
    cdir = cache_dir()
    cached = cdir / f"{key}.wav"
    if cached.is_file():
        try:
            x, rate = _read_wav(cached)
            if rate == SAMPLE_RATE and x.size:
                return x
        except SpeechError:
            pass  # corrupt cache entry: render again

    import soxr

    with tempfile.TemporaryDirectory(prefix="voxbox-speech-") as tmp:
        raw = Path(tmp) / "speech.wav"
        cmd = [exe, "-v", voice, "-s", str(int(rate_wpm)), "-w", str(raw), "--", text]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            raise SpeechError(f"espeak-ng failed to run: {e}") from e
        if proc.returncode != 0 or not raw.is_file():
            msg = (proc.stderr + proc.stdout).strip()
            raise SpeechError(
                f"espeak-ng failed (voice {voice!r}, exit {proc.returncode}): {msg}"
            )
        x, rate = _read_wav(raw)
    if x.size == 0:
        raise SpeechError(f"espeak-ng produced no audio for {text!r} (voice {voice!r})")
    if rate != SAMPLE_RATE:
        x = soxr.resample(x, rate, SAMPLE_RATE, quality="HQ")
    x = np.ascontiguousarray(x, dtype=np.int16)

    # Atomic cache write (parallel test workers may race on the same key).
    try:
        cdir.mkdir(parents=True, exist_ok=True)
        fd, tmpname = tempfile.mkstemp(dir=cdir, suffix=".wav.tmp")
        os.close(fd)
        write_wav(Path(tmpname), x, SAMPLE_RATE)
        os.replace(tmpname, cached)
    except OSError:
        pass  # read-only home etc.: caching is an optimisation only
    return x


def pink_noise(n: int, dbfs: float, seed: int = 0, *, rate: int = SAMPLE_RATE,
               band: tuple[float, float | None] = (20.0, None)) -> np.ndarray:
    """Deterministic pink (1/f) noise, float64, RMS at ``dbfs`` re int16 full scale.

    Args:
        rate: sample rate, Hz (the band edges are in Hz at this rate).
        band: (low, high) Hz, both inclusive; nothing outside. ``high = None``: up to
            Nyquist. The default (20 Hz and up) is the demo's background noise.
    """
    if n <= 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n, 1.0 / rate)
    shape = np.zeros_like(f)
    lo, hi = band
    inb = f >= lo
    if hi is not None:
        inb &= f <= hi
    shape[inb] = 1.0 / np.sqrt(f[inb])
    x = np.fft.irfft(spec * shape, n)
    rms = float(np.sqrt(np.mean(x**2)))
    if rms == 0.0:
        return np.zeros(n)
    return x * (32768.0 * 10.0 ** (dbfs / 20.0) / rms)


def _trim(x: np.ndarray, floor: int = 64) -> np.ndarray:
    """Drop leading/trailing near-silence (espeak-ng pads its output)."""
    idx = np.flatnonzero(np.abs(x.astype(np.int32)) > floor)
    return x if idx.size == 0 else x[idx[0] : idx[-1] + 1]


def demo_utterance(noise_dbfs: float = -45.0, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The demo clip at 16 kHz int16 and its segment boundaries in seconds.

    Layout: 0.5 s noise, "Hey Jarvis", 0.6 s pause, "What will the weather be like
    tomorrow?", 1.5 s trailing noise; pink noise at ``noise_dbfs`` (RMS, dBFS) over
    the whole clip, deterministic for a given ``seed``. The dict has ``wake_start``,
    ``wake_end``, ``question_start``, ``question_end`` (speech boundaries after
    trimming espeak-ng's padding) and ``duration``.
    """
    wake = _trim(render_speech(DEMO_WAKE_TEXT))
    question = _trim(render_speech(DEMO_QUESTION_TEXT))
    lead, pause, tail = (int(round(s * SAMPLE_RATE)) for s in (0.5, 0.6, 1.5))
    parts = [np.zeros(lead), wake, np.zeros(pause), question, np.zeros(tail)]
    speech = np.concatenate([p.astype(np.float64) for p in parts])
    mixed = speech + pink_noise(speech.size, noise_dbfs, seed)
    out = np.clip(np.round(mixed), -32768, 32767).astype(np.int16)

    wake_start = lead
    wake_end = wake_start + wake.size
    question_start = wake_end + pause
    question_end = question_start + question.size
    segments = {
        "wake_start": wake_start / SAMPLE_RATE,
        "wake_end": wake_end / SAMPLE_RATE,
        "question_start": question_start / SAMPLE_RATE,
        "question_end": question_end / SAMPLE_RATE,
        "duration": out.size / SAMPLE_RATE,
    }
    return out, segments
