"""Wake-word detection with the openWakeWord models on LiteRT (adapter).

``WakeWordDetector.process(frame, t)`` takes 16 kHz mono int16 frames of any length
(the daemon feeds 160-sample, 10 ms frames), accumulates them into the 1280-sample
(80 ms) chunks openWakeWord works on, runs one prediction per chunk and returns a
:class:`Detection` when the score reaches the threshold outside the refractory time of
the previous detection.

Models
------
The built-in names (``hey_jarvis``, ``alexa``, ``ok_nabu``, ``hey_mycroft``,
``hey_rhasspy``) are openWakeWord's pre-trained tflite models, and the shared feature
models (``melspectrogram.tflite``, ``embedding_model.tflite``) are openWakeWord's too. They
are read as data from the installed ``pyopen-wakeword`` package (``pyopen_wakeword/models``;
the files are byte-identical to openWakeWord's ``*_v0.1`` releases), which is never
imported.

**Licence:** the pre-trained openWakeWord models (the built-in wake words and the
feature models) are licensed CC BY-NC-SA 4.0 (https://huggingface.co/davidscripka/openwakeword):
*non-commercial use only*, with attribution and share-alike. A commercial product must
train and ship its own wake-word model.

Custom models: pass a filesystem path instead of a built-in name, e.g.
``WakeWordDetector("/etc/voxbox/computer.tflite")``. It must be an openWakeWord
wake-word head as ``.tflite`` (input: N embedding frames × 96 features, N = 16 for the
stock heads; output: one score), as produced by openWakeWord's training notebook. The
detection's ``model`` field is the file stem (``computer``). ``.onnx`` heads are refused
with a :class:`WakeModelError` (convert the model to tflite).

Runtime
-------
openWakeWord's own package cannot be installed on Python 3.13 (it requires
``tflite-runtime``, which has no cp313 wheel) and its import pulls in onnxruntime, scipy
and scikit-learn (144 MiB RSS; onnxruntime writes a device id under ``~/.cache``). Its
streaming inference is three small tflite models, run here directly on
``ai_edge_litert.interpreter`` (one thread each), the way openWakeWord 0.6's
``AudioFeatures`` streams them: per 80 ms chunk, the melspectrogram of the last 1760
samples (8 frames of 32 bins, scaled ``x / 10 + 2``), one embedding (96 features) of the
last 76 mel frames, and the wake-word head on the last 16 embeddings; the feature state
starts from the embeddings of 4 s of uniform noise in [-1000, 1000) (a fixed seed here)
and the first 5 scores after a start or a reset are 0; the first chunk's melspectrogram
is of its own 1280 samples (5 frames). On the packaged "hey jarvis" clip in noise, with and
without 1 s of lead, every chunk's score matched openWakeWord 0.6's within 2e-6 (peak
0.9969 / 0.9947 at the same chunk), at 0.016 against 0.019 CPU s per audio s on one x86
core (measured when the runtime changed).

While the unit talks
--------------------
:class:`PlaybackAwareWake` is the daemon's detector: it runs on the front end's wake tap
(``CaptureFrontEnd(settings, wake_tap="aec")``: the echo canceller's output, before the
preprocessor and the residual echo suppressor, which remove part of the user's wake word
in double talk) plus a second detector on the far-end reference. A
microphone detection near a reference detection (the unit itself said the wake word) is
dropped, which makes a lower threshold while the unit plays safe (0.2 on two consecutive
80 ms chunks, besides 0.5 on one).
Measured in ``tests/benchmarks/test_wake_bench.py`` (the user's "hey jarvis" 6-10 dB below
the reply's echo, car and kiosk, 300 wake words; 10 min of replies saying "hey jarvis" 56
times): detection with a converged canceller (a unit in use) 92.0 % (car 97.3 %, kiosk
86.7 % = 93.0 % of the wake words the kiosk's reverb lets the model hear without echo;
the front end's uplink output into one detector at 0.5: 77.7 %), 0 self-triggers, 0 false
wakes on ordinary reply speech (on openWakeWord 0.6; the bench re-runs it on this runtime).

Timestamps: ``t`` passed to :meth:`WakeWordDetector.process` is the time of the frame's
first sample; ``Detection.t`` is the time of the end of the 80 ms chunk whose score
crossed the threshold (``t`` + offset of that chunk's last sample + 1/16000).
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxbox.errors import WakeModelError  # noqa: F401 (re-exported)

__all__ = [
    "BUILTIN_MODELS",
    "CHUNK_SAMPLES",
    "SAMPLE_RATE",
    "Detection",
    "OpenWakeWordStream",
    "PlaybackAwareWake",
    "WakeModelError",
    "WakeWordDetector",
    "find_model",
]

SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 1280  # openWakeWord's 80 ms step
MEL_INPUT = CHUNK_SAMPLES + 480  # 1760 samples -> 8 mel frames (hop 160, 400-sample window)
MEL_FRAMES = 8  # mel frames per chunk
MEL_BINS = 32
MEL_WINDOW = 76  # mel frames per embedding
EMBEDDING = 96  # features per embedding
WARMUP_CHUNKS = 5  # openWakeWord scores the first 5 chunks after a (re)start as 0

# Built-in name -> file stem inside pyopen_wakeword/models.
BUILTIN_MODELS: dict[str, str] = {
    "hey_jarvis": "hey_jarvis",
    "alexa": "alexa",
    "ok_nabu": "okay_nabu",
    "hey_mycroft": "hey_mycroft",
    "hey_rhasspy": "hey_rhasspy",
}

_MODELS_PACKAGE = "pyopen_wakeword"


@dataclass(frozen=True, slots=True)
class Detection:
    model: str  # the built-in name, or a custom model's file stem, e.g. "hey_jarvis"
    score: float
    t: float  # end of the 80 ms chunk that crossed the threshold


# --------------------------------------------------------------------------- models


def _models_dir() -> Path:
    """The ``models`` directory of the installed pyopen-wakeword package.

    Located with ``importlib.util.find_spec`` so the package (and its own runtime) is
    never imported just to find data files.
    """
    spec = importlib.util.find_spec(_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WakeModelError(
            "the built-in wake-word models come from the Python package "
            "'pyopen-wakeword' (pip install pyopen-wakeword==1.1.0), which is not installed"
        )
    for location in spec.submodule_search_locations:
        d = Path(location) / "models"
        if d.is_dir():
            return d
    raise WakeModelError(
        f"pyopen-wakeword is installed at {list(spec.submodule_search_locations)} "
        "but has no 'models' directory"
    )


def _builtin_list() -> str:
    return ", ".join(BUILTIN_MODELS)


def find_model(name_or_path: str) -> Path:
    """Resolve a built-in wake-word name or a path to a custom model file.

    Built-in names: ``hey_jarvis``, ``alexa``, ``ok_nabu``, ``hey_mycroft``,
    ``hey_rhasspy`` (CC BY-NC-SA 4.0, from pyopen-wakeword's data). Anything else is
    taken as the path of a custom ``.tflite`` (or, refused later, ``.onnx``) model.

    Raises:
        WakeModelError: not a built-in name and no such file, or not .tflite/.onnx.
    """
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        path = _models_dir() / f"{BUILTIN_MODELS[name]}.tflite"
        if not path.is_file():
            raise WakeModelError(
                f"built-in wake-word model {name!r} not found at {path} "
                f"(built-in models: {_builtin_list()})"
            )
        return path
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in (".tflite", ".onnx"):
            raise WakeModelError(
                f"wake-word model {name!r} is not a .tflite or .onnx file "
                f"(built-in models: {_builtin_list()})"
            )
        return path
    raise WakeModelError(
        f"unknown wake-word model {name!r}: not a built-in name and no such file "
        f"(built-in models: {_builtin_list()}; or give the path to a custom "
        ".tflite model)"
    )


def _feature_models() -> tuple[Path, Path]:
    d = _models_dir()
    mel, emb = d / "melspectrogram.tflite", d / "embedding_model.tflite"
    for p in (mel, emb):
        if not p.is_file():
            raise WakeModelError(f"openWakeWord feature model missing: {p}")
    return mel, emb


# ------------------------------------------------------------------ LiteRT stream


def _interpreter(path: Path, what: str):
    """A one-thread LiteRT interpreter for ``path``, tensors allocated.

    Raises:
        WakeModelError: the file is not a loadable tflite model (named).
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        return Interpreter(model_path=str(path), num_threads=1)
    except (ValueError, RuntimeError) as e:
        raise WakeModelError(f"cannot load {what} {path}: {e}") from e


class _Model:
    """One tflite model with a fixed input shape: ``run(x) -> output`` (views of the
    interpreter's own buffers: copy what must outlive the next call)."""

    def __init__(self, path: Path, what: str, shape: list[int] | None = None):
        self.itp = _interpreter(path, what)
        inp = self.itp.get_input_details()[0]
        if shape is not None:
            self.itp.resize_tensor_input(inp["index"], shape, strict=True)
        try:
            self.itp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise WakeModelError(f"cannot load {what} {path}: {e}") from e
        self.input = self.itp.get_input_details()[0]
        self.output = self.itp.get_output_details()[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        self.itp.set_tensor(self.input["index"], x)
        self.itp.invoke()
        return self.itp.get_tensor(self.output["index"])


_initial_lock = threading.Lock()
_initial_features: dict[tuple[str, str], np.ndarray] = {}


def _noise_embeddings(mel_path: Path, emb_path: Path) -> np.ndarray:
    """openWakeWord's starting feature state: the embeddings of 4 s of uniform noise in
    [-1000, 1000) (41 frames × 96; the draw of ``np.random.seed(0)``), computed once per
    process."""
    key = (str(mel_path), str(emb_path))
    with _initial_lock:
        feats = _initial_features.get(key)
        if feats is None:
            # openWakeWord draws np.random.randint(-1000, 1000, 64000); RandomState(0) is
            # that draw after np.random.seed(0), without touching the global generator
            noise = np.random.RandomState(0).randint(-1000, 1000, 4 * SAMPLE_RATE).astype(np.int16).astype(np.float32)
            mel = _Model(mel_path, "feature model", [1, noise.size]).run(noise[None, :])
            spec = np.squeeze(mel) / 10.0 + 2.0  # (397, 32)
            emb = _Model(emb_path, "feature model")
            rows = [np.array(emb.run(spec[i:i + MEL_WINDOW][None, :, :, None].astype(np.float32)).reshape(EMBEDDING))
                    for i in range(0, spec.shape[0] - MEL_WINDOW + 1, MEL_FRAMES)]
            feats = _initial_features[key] = np.stack(rows).astype(np.float32)
        return feats


class OpenWakeWordStream:
    """openWakeWord's streaming inference on LiteRT: one score per 1280-sample chunk.

    Args:
        head_path: the wake-word head (``.tflite``; input ``[1, N, 96]``, output ``[1, 1]``).
        mel_path, emb_path: the feature models (default: the packaged ones).

    ``score(chunk)`` takes exactly 1280 int16 samples (16 kHz) and returns the head's
    score in [0, 1] (0 for the first 5 chunks after construction or :meth:`reset`, as
    openWakeWord). Buffers are preallocated; one call allocates only the interpreters'
    small outputs. Not thread-safe: one instance per thread.

    Raises:
        WakeModelError: a model that does not load, or a head of the wrong shape (named).
    """

    def __init__(self, head_path: Path, mel_path: Path | None = None, emb_path: Path | None = None):
        if head_path.suffix.lower() == ".onnx":
            raise WakeModelError(
                f"{head_path}: .onnx wake-word models are not supported (openWakeWord's onnx "
                "feature models are not installed); convert the model to .tflite"
            )
        if mel_path is None or emb_path is None:
            mel_path, emb_path = _feature_models()
        self._mel = _Model(mel_path, "feature model", [1, MEL_INPUT])
        # the first chunk after a (re)start has no history: its 1280 samples alone give 5
        # mel frames (openWakeWord computes it so; zero-padding would add 3 frames of silence)
        self._mel_first = _Model(mel_path, "feature model", [1, CHUNK_SAMPLES])
        self._emb = _Model(emb_path, "feature model")
        self._head = _Model(head_path, "wake-word model")
        shape = [int(v) for v in self._head.input["shape"]]
        out = [int(v) for v in self._head.output["shape"]]
        if len(shape) != 3 or shape[0] != 1 or shape[2] != EMBEDDING or shape[1] < 1 or out != [1, 1]:
            raise WakeModelError(
                f"{head_path}: not an openWakeWord wake-word head (input {shape}, output {out}; "
                f"expected input [1, N, {EMBEDDING}] and output [1, 1])"
            )
        self.frames = shape[1]  # embeddings the head looks at (16 for the stock heads)
        self._initial = _noise_embeddings(mel_path, emb_path)
        self._audio = np.zeros((1, MEL_INPUT), np.float32)
        self._mels = np.ones((1, MEL_WINDOW, MEL_BINS, 1), np.float32)
        self._feats = np.zeros((1, self.frames, EMBEDDING), np.float32)
        self.reset()

    def reset(self) -> None:
        """Back to openWakeWord's starting state (mel frames of ones, noise embeddings,
        the next 5 scores 0)."""
        self._audio[:] = 0.0
        self._mels[:] = 1.0
        init = self._initial[-self.frames:]
        self._feats[:] = 0.0
        self._feats[0, self.frames - init.shape[0]:] = init
        self._chunks = 0

    def score(self, chunk: np.ndarray) -> float:
        a = self._audio[0]
        a[:-CHUNK_SAMPLES] = a[CHUNK_SAMPLES:]
        a[-CHUNK_SAMPLES:] = chunk
        if self._chunks == 0:
            mel = self._mel_first.run(self._audio[:, -CHUNK_SAMPLES:])
        else:
            mel = self._mel.run(self._audio)
        mel = mel.reshape(-1, MEL_BINS)
        k = mel.shape[0]  # 8 mel frames (5 for the first chunk)
        m = self._mels[0, :, :, 0]
        m[:-k] = m[k:]
        np.multiply(mel, 0.1, out=m[-k:])
        m[-k:] += 2.0
        emb = self._emb.run(self._mels).reshape(EMBEDDING)
        f = self._feats[0]
        f[:-1] = f[1:]
        f[-1] = emb
        s = float(self._head.run(self._feats).reshape(-1)[0])
        self._chunks += 1
        return 0.0 if self._chunks <= WARMUP_CHUNKS else s


# ----------------------------------------------------------------------- detector


class WakeWordDetector:
    """Streaming openWakeWord detector over 16 kHz mono int16 audio.

    Attributes for the timeline: ``last_score`` (score of the latest 80 ms chunk),
    ``peak_score`` (highest score since construction or :meth:`reset`),
    ``last_detection`` (the latest :class:`Detection` or ``None``).
    """

    def __init__(
        self,
        model: str = "hey_jarvis",
        threshold: float = 0.5,
        refractory_s: float = 1.5,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if refractory_s < 0.0:
            raise ValueError(f"refractory_s must be >= 0, got {refractory_s}")
        self.model_path = find_model(model)
        self.model_name = str(model) if str(model) in BUILTIN_MODELS else self.model_path.stem
        self.threshold = float(threshold)
        self.refractory_s = float(refractory_s)
        self._oww = OpenWakeWordStream(self.model_path)
        self._buf = np.zeros(CHUNK_SAMPLES, dtype=np.int16)
        self._fill = 0
        self.last_score = 0.0
        self.peak_score = 0.0
        self.last_detection: Detection | None = None
        self.chunks = 0  # 80 ms chunks predicted since construction

    def process(self, frame: np.ndarray, t: float) -> Detection | None:
        """Feed ``frame`` (int16, 16 kHz mono, any length) starting at time ``t``.

        Returns the first detection completed inside this frame, or ``None``. A frame
        longer than the refractory time could hold two detections; only the first is
        returned (feed frames of at most a few hundred ms).
        """
        found: Detection | None = None
        for t_end, score in self.scores(frame, t):
            det = self._decide(t_end, score)
            if det is not None and found is None:
                found = det
        return found

    def scores(self, frame: np.ndarray, t: float) -> list[tuple[float, float]]:
        """Feed ``frame`` like :meth:`process` but only score it: returns ``(t_end,
        score)`` for every 80 ms chunk completed inside this frame (usually none or
        one), without thresholding and without touching ``last_detection``/the
        refractory time (``last_score``, ``peak_score`` and ``chunks`` are updated).
        """
        x = np.asarray(frame)
        if x.dtype != np.int16:
            raise TypeError(f"frame must be int16, got {x.dtype}")
        x = x.reshape(-1)
        n = x.shape[0]
        pos = 0
        out: list[tuple[float, float]] = []
        buf = self._buf
        while pos < n:
            take = min(CHUNK_SAMPLES - self._fill, n - pos)
            buf[self._fill : self._fill + take] = x[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == CHUNK_SAMPLES:
                self._fill = 0
                out.append((t + pos / SAMPLE_RATE, self._predict_score()))
        return out

    def _predict_score(self) -> float:
        score = self._oww.score(self._buf)
        self.chunks += 1
        self.last_score = score
        if score > self.peak_score:
            self.peak_score = score
        return score

    def _decide(self, t_end: float, score: float) -> Detection | None:
        if score < self.threshold:
            return None
        last = self.last_detection
        if last is not None and t_end - last.t < self.refractory_s:
            return None
        det = Detection(model=self.model_name, score=score, t=t_end)
        self.last_detection = det
        return det

    def reset(self) -> None:
        """Forget buffered audio so stale speech cannot trigger a new detection.

        What openWakeWord 0.6's ``Model.reset()`` does (:meth:`OpenWakeWordStream.reset`:
        the next 5 chunks score 0, the feature state restarts from noise embeddings,
        restored from a copy rather than recomputed), plus: the partial 80 ms chunk is
        dropped and ``last_score``/``peak_score`` cleared. The refractory time of the last
        detection still applies.
        """
        self._oww.reset()
        self._fill = 0
        self.last_score = 0.0
        self.peak_score = 0.0


# ------------------------------------------------------------ playback-aware wake


class PlaybackAwareWake:
    """Wake word on the microphone, gated by the same model on what the unit plays.

    Two :class:`WakeWordDetector` instances: one on the cleaned microphone (the front
    end's wake tap), one on the far-end reference (what the unit plays, 16 kHz,
    time-aligned with the microphone: the reference the echo canceller gets). The unit's
    own reply saying the wake word makes the reference detector's score rise about when
    the echo makes the microphone detector's rise (the reference leads the echo by the
    system lead plus the front end's latency), so a microphone detection is dropped when
    the reference score reached ``ref_gate`` within ``gate_before_s`` before it or within
    ``gate_after_s`` after it. To look ``gate_after_s`` ahead, a microphone detection is
    held back that long (one or two 80 ms chunks) before it is returned.

    With the unit's own voice gated out, the threshold can be lower while the unit plays
    (the user's wake word competes with the echo residual then and scores lower): a
    detection needs ``threshold`` on one 80 ms chunk, or, while playing,
    ``threshold_playback`` on ``confirm_chunks`` consecutive chunks (a wake word scores
    over several chunks; single-chunk spikes of ordinary reply speech do not). The lower
    threshold applies only from ``warmup_s`` after construction or :meth:`reset`:
    openWakeWord starts from a synthetic feature state, and in the first ~1.2 s it can
    score up to ~0.3 on plain background noise.

    With ``near_end_window_s`` set, a detection while the unit plays (either threshold)
    also needs the caller's word that the user is speaking: :meth:`near_end` (the
    echo-aware near-end speech detector's decision) within ``near_end_window_s`` before
    the chunk's end, and since the current stretch of playing began: near-end speech
    from before it (the wake word that barged in on the last reply, 1.8 s before the
    reply that answered it scored 0.30 on its own residual, closed loop at +6 dB) does not
    count. The unit's own reply leaves a residual the model can score: in the
    closed loop (car, +6 dB echo) the first word of "Sure. Tomorrow will..." scored 0.24-0.29
    on two chunks about 1 s into the reply, and up to 0.6-0.97 in some trials; a user who
    says the wake word over the reply is near-end speech the detector sees. ``None``: no
    such condition (a caller without a near-end detector).

    ``process(frame, ref_frame, t, playing=None)``: ``frame`` and ``ref_frame`` are int16
    blocks of the same length (any length; the daemon's 10 ms periods), ``t`` the time
    of the first sample. ``playing``: whether the far end is active (the unit plays a
    reply); ``None`` derives it from the reference itself (above ``ref_active_dbfs`` in
    the last ``playing_hangover_s``). Returns a :class:`Detection` (``t`` = end of the
    chunk that crossed the threshold, as :class:`WakeWordDetector`; it is returned up to
    ``gate_after_s`` later) or ``None``.

    Counters for the timeline: ``gated`` (microphone detections dropped because the
    reference said the wake word), ``last_ref_score``, ``playing``.
    """

    def __init__(
        self,
        model: str = "hey_jarvis",
        threshold: float = 0.5,
        threshold_playback: float = 0.2,
        refractory_s: float = 1.5,
        confirm_chunks: int = 2,
        warmup_s: float = 1.5,
        ref_gate: float = 0.05,
        gate_before_s: float = 1.0,
        gate_after_s: float = 0.16,
        playing_hangover_s: float = 0.5,
        ref_active_dbfs: float = -60.0,
        near_end_window_s: float | None = None,
    ) -> None:
        for name, v in (("threshold", threshold), ("threshold_playback", threshold_playback),
                        ("ref_gate", ref_gate)):
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        for name, v in (("gate_before_s", gate_before_s), ("gate_after_s", gate_after_s),
                        ("playing_hangover_s", playing_hangover_s), ("refractory_s", refractory_s),
                        ("warmup_s", warmup_s),
                        ("near_end_window_s", 0.0 if near_end_window_s is None else near_end_window_s)):
            if v < 0.0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if isinstance(confirm_chunks, bool) or not isinstance(confirm_chunks, int) or confirm_chunks < 1:
            raise ValueError(f"confirm_chunks must be an int >= 1, got {confirm_chunks!r}")
        self.confirm_chunks = confirm_chunks
        self._run = 0  # consecutive chunks scoring >= threshold_playback
        #: set by the caller while the canceller reconverges after an echo-path change: the
        #: playback threshold is not used (the echo it leaves can score like a wake word)
        self.strict = False
        self.near_end_window_s = None if near_end_window_s is None else float(near_end_window_s)
        self._near_t = -math.inf  # the last time the caller saw near-end speech
        self._play_start = -math.inf  # where the current stretch of playing began (chunk start)
        self.warmup_s = float(warmup_s)
        self._warm_chunks = math.ceil(self.warmup_s * SAMPLE_RATE / CHUNK_SAMPLES - 1e-9)
        self._since_reset = 0  # chunks scored since construction or reset()
        self.threshold = float(threshold)
        self.threshold_playback = float(threshold_playback)
        self.ref_gate = float(ref_gate)
        self.gate_before_s = float(gate_before_s)
        self.gate_after_s = float(gate_after_s)
        self.playing_hangover_s = float(playing_hangover_s)
        self._ref_floor = (32768.0 * 10 ** (ref_active_dbfs / 20)) ** 2  # mean square
        self.mic = WakeWordDetector(model, min(threshold, threshold_playback), refractory_s)
        self.ref = WakeWordDetector(model, 1.0, refractory_s)  # scores only
        self.model_name = self.mic.model_name
        self.refractory_s = float(refractory_s)
        self._ref_hist: deque[tuple[float, float]] = deque()
        self._pending: Detection | None = None
        self._play_until = -math.inf
        self.last_detection: Detection | None = None
        self.playing = False
        self.gated = 0
        self._rf = np.empty(0, np.float32)  # reference frame as float (energy), reused

    def near_end(self, t: float) -> None:
        """The caller's near-end speech detector says the user speaks at ``t`` (s, the
        clock of :meth:`process`): while the unit plays, a detection may count for the
        next ``near_end_window_s``."""
        self._near_t = t

    @property
    def last_score(self) -> float:
        return self.mic.last_score

    @property
    def last_ref_score(self) -> float:
        """Score of the reference detector's latest chunk (the unit's own voice)."""
        return self.ref.last_score

    def process(
        self, frame: np.ndarray, ref_frame: np.ndarray, t: float, playing: bool | None = None
    ) -> Detection | None:
        x = np.asarray(frame).reshape(-1)
        r = np.asarray(ref_frame).reshape(-1)
        if x.shape != r.shape:
            raise ValueError(f"ref_frame must have the shape of frame {x.shape}, got {r.shape}")
        n = x.shape[0]
        if playing is None:
            if self._rf.shape[0] != n:
                self._rf = np.empty(n, np.float32)
            rf = self._rf
            np.copyto(rf, r, casting="unsafe")
            playing = n > 0 and float(np.dot(rf, rf)) > self._ref_floor * n
        if playing:
            self._play_until = t + n / SAMPLE_RATE + self.playing_hangover_s
        mic_scores = self.mic.scores(x, t)
        ref_scores = self.ref.scores(r, t)
        found: Detection | None = None
        for (t_end, m), (_, rs) in zip(mic_scores, ref_scores):
            hist = self._ref_hist
            hist.append((t_end, rs))
            while hist and hist[0][0] < t_end - self.gate_before_s - self.gate_after_s - 1e-9:
                hist.popleft()
            playing_now = t_end <= self._play_until
            if playing_now and not self.playing:
                self._play_start = t_end - CHUNK_SAMPLES / SAMPLE_RATE
            self.playing = playing_now
            det = self._release(t_end)
            if det is not None and found is None:
                found = det
            self._since_reset += 1
            self._run = self._run + 1 if m >= self.threshold_playback else 0
            # while the unit plays, the near-end detector must have heard the user (when the
            # caller gives its word): the unit's own reply leaves residuals that score
            # -- during this stretch of playing: the user's own words from before it (the wake
            # word that barged in on the last reply, the question) do not vouch for a score
            # on the reply that answers them
            heard = (not self.playing or self.near_end_window_s is None
                     or (t_end - self._near_t <= self.near_end_window_s and self._near_t >= self._play_start))
            low_ok = self.playing and self._since_reset > self._warm_chunks and not self.strict
            hit = heard and (m >= self.threshold or (low_ok and self._run >= self.confirm_chunks))
            if hit and self._pending is None:
                last = self.last_detection
                if last is None or t_end - last.t >= self.refractory_s:
                    self._pending = Detection(model=self.model_name, score=m, t=t_end)
                    det = self._release(t_end)
                    if det is not None and found is None:
                        found = det
        return found

    def _release(self, t_end: float) -> Detection | None:
        """Return the pending detection once ``gate_after_s`` has passed, unless the
        reference said the wake word around it."""
        p = self._pending
        if p is None:
            return None
        # the look-ahead is only needed while the unit talks: idle, a wake word is released
        # at once (no added latency)
        if self.playing and t_end < p.t + self.gate_after_s - 1e-9:
            return None
        self._pending = None
        lo, hi = p.t - self.gate_before_s - 1e-9, p.t + self.gate_after_s + 1e-9
        if any(lo <= te <= hi and s >= self.ref_gate for te, s in self._ref_hist):
            self.gated += 1
            return None
        self.last_detection = p
        return p

    def reset(self) -> None:
        """Reset both detectors and forget the pending detection (see
        :meth:`WakeWordDetector.reset`)."""
        self.mic.reset()
        self.ref.reset()
        self._ref_hist.clear()
        self._pending = None
        self._play_until = -math.inf
        self.playing = False
        self._run = 0
        self._since_reset = 0
        self._near_t = -math.inf
        self._play_start = -math.inf
