"""Earcons: the short sounds the unit plays on wake, end of listening, error, mute, and
once at start-up.

The packaged cues live in ``voxbox/earcons/*.wav`` (16-bit mono, 24 000 Hz, peak
-12 dBFS; made by ``tools/make_earcons.py``). A configuration maps each cue to a packaged
name, a user WAV file, or ``"off"``:

    {"wake": "wake", "end": "/etc/voxbox/ding.wav", "error": "off"}

The ``startup`` cue (1.5 s: a rising chime over a broadband "whoosh") is meant to be
played once when the unit starts, through the normal playback path: its broadband content
trains the echo canceller's adaptive filter (whose state cannot be saved across restarts,
see :mod:`voxbox.dsp.echostate`), so the first reply is cancelled about as well as later ones.
A user WAV for it should be broadband too (a noise swell, not a pure tone) to keep that.

:func:`load_earcon` reads one WAV (8/16/24/32-bit integer PCM, mono or multi-channel,
downmixed to mono) and resamples it to the playback rate with soxr when the rates differ.
A missing, unreadable or unsuitable file raises :class:`EarconError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np

from voxbox.audio.wavfile import WavError, read_wav
from voxbox.errors import EarconError  # noqa: F401 (re-exported)

#: the rate the packaged WAVs are stored at (= the playback rate)
EARCON_RATE = 24000
#: packaged earcons, by name
NAMES = ("wake", "end", "error", "mute", "unmute", "startup")
#: the cues the daemon can play; by default each plays the packaged earcon of its name
#: (a configuration that does not name a cue gets its packaged default, so adding a cue
#: here keeps older configurations valid)
CUES = NAMES
OFF = "off"
#: a cue longer than this is a configuration mistake (a song, a recording)
MAX_S = 5.0


def _package_file(name: str, folder: str = "earcons"):
    return resources.files("voxbox").joinpath(folder, f"{name}.wav")


def _read_wav(src, label: str) -> tuple[np.ndarray, int]:
    """(float samples in -1..1, mono; sample rate)."""
    try:
        w = read_wav(src, f"earcon file {label}")
    except WavError as exc:
        raise EarconError(str(exc)) from None
    if w.frames == 0 or w.rate <= 0:
        raise EarconError(f"earcon file {label}: no audio")
    if w.frames / w.rate > MAX_S:
        raise EarconError(f"earcon file {label}: {w.frames / w.rate:.1f} s long; an earcon must be "
                          f"at most {MAX_S:g} s")
    return w.float_mono(), w.rate


def load_earcon(name_or_path: str | os.PathLike, rate: int = EARCON_RATE) -> np.ndarray:
    """A packaged earcon by name (``wake``, ``end``, ``error``, ``mute``, ``unmute``,
    ``startup``) or a user WAV file by path, as mono ``numpy.int16`` at ``rate`` Hz."""
    if isinstance(name_or_path, str) and name_or_path in NAMES:
        res = _package_file(name_or_path)
        label = f"{name_or_path!r} (packaged {res})"
        with resources.as_file(res) as p:
            x, src_rate = _read_wav(str(p), label)
    else:
        path = Path(os.fspath(name_or_path)).expanduser()
        if isinstance(name_or_path, str) and len(path.parts) == 1 and not path.suffix \
                and not path.exists():
            raise EarconError(f"earcon {name_or_path!r}: not a packaged earcon "
                              f"({', '.join(NAMES)}) and not a WAV file")
        x, src_rate = _read_wav(str(path), str(path))
    if src_rate != rate:
        import soxr

        x = soxr.resample(x.astype(np.float32), src_rate, rate, quality="HQ")
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


#: spoken prompts shipped with the package (voxbox/prompts/<name>.wav, tools/make_prompts.py)
PROMPT_NAMES = ("offline", "error", "session_lost")


def load_prompts(rate: int = EARCON_RATE) -> dict[str, np.ndarray]:
    """The packaged spoken prompts by name, as mono ``numpy.int16`` at ``rate`` Hz.

    Raises:
        EarconError: a prompt file is missing or unreadable (named).
    """
    out = {}
    for name in PROMPT_NAMES:
        res = _package_file(name, "prompts")
        with resources.as_file(res) as p:
            out[name] = load_earcon(p, rate)
    return out


class EarconSet:
    """The earcons the daemon plays, loaded (and checked) once at start-up.

    ``config`` maps cue → packaged name, WAV path, or ``"off"``; cues not mentioned play
    their packaged default. Unknown cues raise :class:`EarconError` naming the key.
    """

    def __init__(self, config: Mapping[str, str | os.PathLike] | None = None,
                 rate: int = EARCON_RATE):
        config = dict(config or {})
        unknown = sorted(set(config) - set(CUES))
        if unknown:
            raise EarconError(f"earcons: unknown cue(s) {', '.join(map(repr, unknown))}; "
                              f"cues are {', '.join(CUES)}")
        self.rate = rate
        self.sources: dict[str, str | None] = {}
        self._sounds: dict[str, np.ndarray | None] = {}
        for cue in CUES:
            src = config.get(cue, cue)
            if isinstance(src, str) and src.strip().lower() == OFF:
                self.sources[cue] = None
                self._sounds[cue] = None
                continue
            try:
                self._sounds[cue] = load_earcon(src, rate)
            except EarconError as exc:
                raise EarconError(f"earcons.{cue}: {exc}") from None
            self.sources[cue] = os.fspath(src)

    @classmethod
    def from_config(cls, config: Mapping[str, str | os.PathLike] | None,
                    rate: int = EARCON_RATE) -> EarconSet:
        return cls(config, rate)

    def get(self, cue: str) -> np.ndarray | None:
        """The samples for ``cue`` (int16 at :attr:`rate`), or None when it is off."""
        try:
            return self._sounds[cue]
        except KeyError:
            raise KeyError(f"unknown earcon cue {cue!r}; cues are {', '.join(CUES)}") from None
