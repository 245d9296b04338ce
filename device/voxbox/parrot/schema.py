"""The local Realtime server's schema: client event validation and the wire shapes.

- ``ClientEventError``: a client event the service would refuse (its ``error`` event's code,
  message, param, type); ``_unknown`` / ``_invalid`` build the usual ones
  (``unknown_parameter``, ``invalid_value``), ``_check_keys`` / ``_check_num`` /
  ``_check_bool`` / ``_check_enum`` raise them;
- the keys each dialect accepts in a session, a turn detection object and a GA
  ``response.create`` (sources next to them: the ``openai`` and ``azure-ai-voicelive`` SDK
  types), the client event types;
- ``default_session`` / ``default_turn_detection``: the session object of
  ``session.created`` in the dialect's shape, and the defaults the server reports;
- ``Item``: a conversation item (user input audio at the input rate, assistant reply audio
  at 24 kHz, int16) and its wire shape.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from voxbox.errors import VoxboxError
from voxbox.parrot.handshake import Dialect
from voxbox.parrot.wire import OUTPUT_RATE


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
