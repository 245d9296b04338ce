"""WAV files, once for the whole package (stdlib :mod:`wave` + numpy on whole buffers).

Used by ``voxbox dsp`` (field recordings), the daemon's recorder dumps, earcons and
prompts, espeak-ng speech for the demo and tests, and the test rig.
"""

from __future__ import annotations

import os
import wave
from dataclasses import dataclass
from typing import IO, Union

import numpy as np

from voxbox.errors import WavError  # noqa: F401 (re-exported)

__all__ = ["WavError", "Wav", "read_wav", "read_pcm16_mono", "write_wav"]

Source = Union[str, os.PathLike, IO[bytes]]


@dataclass(frozen=True)
class Wav:
    """Attributes:
        pcm: the integer samples, shape ``(frames, channels)``: uint8 (8-bit), int16,
            int32 (24-bit, sign-extended) or int32 (32-bit).
        rate: sample rate, Hz.
        width: bytes per sample (1-4).
    """

    pcm: np.ndarray
    rate: int
    width: int

    @property
    def channels(self) -> int:
        return self.pcm.shape[1]

    @property
    def frames(self) -> int:
        return self.pcm.shape[0]

    def float_mono(self) -> np.ndarray:
        """Mean of the channels scaled to -1..1 (full scale), float64, shape ``(frames,)``."""
        x = self.pcm.astype(np.float64)
        if self.width == 1:
            x = (x - 128.0) / 128.0
        else:
            x /= float(1 << (8 * self.width - 1))
        return x.mean(axis=1) if self.channels > 1 else x[:, 0]


def read_wav(src: Source, what: str) -> Wav:
    """Read a PCM WAV file.

    Args:
        src: path or binary file object.
        what: how errors name the file (e.g. ``"--mic mic.wav"``, ``"earcon file x.wav"``).

    Raises:
        WavError: ``"<what>: not found"``, ``is a directory``, ``permission denied``,
            ``not a PCM WAV file (...)``, ``cannot read (...)``, or an unsupported width.
    """
    try:
        with wave.open(src if not isinstance(src, os.PathLike) else os.fspath(src), "rb") as w:
            ch, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except FileNotFoundError:
        raise WavError(f"{what}: not found") from None
    except IsADirectoryError:
        raise WavError(f"{what}: is a directory") from None
    except PermissionError:
        raise WavError(f"{what}: permission denied") from None
    except (wave.Error, EOFError) as exc:
        raise WavError(f"{what}: not a PCM WAV file ({exc}); use 16-bit PCM, "
                       "e.g. `sox in.wav -b 16 out.wav`") from None
    except OSError as exc:
        raise WavError(f"{what}: cannot read ({exc})") from None
    ch = max(ch, 1)
    buf = np.frombuffer(raw, dtype=np.uint8)
    frames = len(buf) // (width * ch) if width else 0
    buf = buf[: frames * width * ch]
    if width == 1:
        pcm = buf.copy()
    elif width == 2:
        pcm = buf.view("<i2").astype(np.int16)
    elif width == 3:
        b = buf.reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        pcm = np.where(v & 0x800000, v - 0x1000000, v).astype(np.int32)
    elif width == 4:
        pcm = buf.view("<i4").astype(np.int32)
    else:
        raise WavError(f"{what}: unsupported sample width {width} bytes")
    return Wav(pcm.reshape(-1, ch), rate, width)


def read_pcm16_mono(src: Source, what: str) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM mono WAV file: its samples as int16, shape ``(n,)``, and its rate.

    Raises:
        WavError: as :func:`read_wav`, or ``"<what>: expected 16-bit PCM, got N-bit
            samples"``, ``"<what>: expected mono, got N channels"``.
    """
    w = read_wav(src, what)
    if w.width != 2:
        raise WavError(f"{what}: expected 16-bit PCM, got {8 * w.width}-bit samples")
    if w.channels != 1:
        raise WavError(f"{what}: expected mono, got {w.channels} channels")
    return w.pcm[:, 0].copy(), w.rate


def write_wav(path: str | os.PathLike, x: np.ndarray, rate: int) -> None:
    """Write mono int16 samples, shape ``(n,)``, as a 16-bit WAV file (rate in Hz)."""
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(x, dtype="<i2").tobytes())
