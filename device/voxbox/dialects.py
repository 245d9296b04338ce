"""The three Realtime dialects in one place: URL, auth headers, session JSON, event names.

Sources: ``shared/reference/realtime-device-notes.md`` ("Dialects, URLs and auth", "Beta
versus GA names"), the OpenAI SDK types (``openai.types.realtime`` GA,
``openai.types.beta.realtime`` beta) and the azure-ai-voicelive SDK.

| dialect | event names | session shape | URL query |
|---|---|---|---|
| ``openai-ga`` | GA (``response.output_audio.delta``) | ``type: realtime``, ``audio.input/output`` | ``model`` (or ``model`` on Azure ``/openai/v1/realtime``) |
| ``openai-beta`` | beta (``response.audio.delta``) | flat (``voice``, ``turn_detection``) + header ``OpenAI-Beta: realtime=v1`` on api.openai.com | ``model``, or Azure preview ``api-version`` + ``deployment`` |
| ``azure-voicelive`` | beta + Azure fields | flat, Azure voices ``{name, type: azure-standard}`` | ``api-version`` + ``model`` |

Internally every server event is renamed to its GA name (:func:`canonical_event_type`), so
the session core handles one vocabulary.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from voxbox.config import Realtime

PCM_RATE = 24000
"""Sample rate of PCM16 audio on the wire for every dialect (Hz)."""

VOICELIVE_API_VERSION = "2025-10-01"
AZURE_OPENAI_PREVIEW_API_VERSION = "2025-04-01-preview"

# beta name -> GA name (realtime-device-notes.md, "Beta versus GA names")
_BETA_TO_GA = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}


def uses_ga_names(dialect: str) -> bool:
    return dialect == "openai-ga"


def canonical_event_type(dialect: str, event_type: str) -> str:
    """The GA name of a server event type (unchanged for GA and for unknown types)."""
    if uses_ga_names(dialect):
        return event_type
    return _BETA_TO_GA.get(event_type, event_type)


def _is_azure(host: str) -> bool:
    return host.endswith((".azure.com", ".azure.cn", ".azure.us"))


def build_url(rt: Realtime, url: str | None = None) -> str:
    """The WebSocket URL with the query parameters the dialect needs.

    Parameters already present in ``realtime.url`` are kept as given.
    """
    parts = urlsplit(url or rt.url)
    query = dict(parse_qsl(parts.query))
    path = parts.path
    if rt.dialect == "azure-voicelive":
        query.setdefault("api-version", rt.api_version or VOICELIVE_API_VERSION)
        query.setdefault("model", rt.model)
    elif "/openai/realtime" in path:  # Azure OpenAI preview (beta event names)
        query.setdefault("api-version", rt.api_version or AZURE_OPENAI_PREVIEW_API_VERSION)
        query.setdefault("deployment", rt.deployment or rt.model)
    else:  # OpenAI, Azure OpenAI GA (/openai/v1/realtime)
        query.setdefault("model", rt.deployment or rt.model)
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


def auth_headers(rt: Realtime, api_key: str, url: str | None = None) -> dict[str, str]:
    """Handshake headers: auth plus the beta header where the dialect needs it.

    ``realtime.auth = "auto"`` uses ``api-key`` on Azure hosts and ``Authorization: Bearer``
    elsewhere. The beta header is sent only to non-Azure hosts in the ``openai-beta``
    dialect (sending it to the GA endpoint is fatal: close 4000).
    """
    host = urlsplit(url or rt.url).hostname or ""
    headers: dict[str, str] = {}
    mode = rt.auth
    if mode == "auto":
        mode = "api-key" if _is_azure(host) else "bearer"
    if api_key:
        if mode == "api-key":
            headers["api-key"] = api_key
        else:
            headers["Authorization"] = f"Bearer {api_key}"
    if rt.dialect == "openai-beta" and not _is_azure(host):
        headers["OpenAI-Beta"] = "realtime=v1"
    return headers


def _turn_detection(rt: Realtime) -> dict[str, Any] | None:
    td = rt.turn_detection
    if td.type == "none":
        return None
    out: dict[str, Any] = {"type": td.type}
    if td.type == "semantic_vad":
        if td.eagerness != "auto":
            out["eagerness"] = td.eagerness
    else:
        out.update(
            threshold=td.threshold,
            prefix_padding_ms=td.prefix_padding_ms,
            silence_duration_ms=td.silence_duration_ms,
        )
    out["create_response"] = True
    out["interrupt_response"] = td.interrupt_response
    return out


def _voicelive_voice(voice: str) -> Any:
    # Azure TTS voices look like "en-US-Ava:DragonHDLatestNeural"; OpenAI voices are one word.
    if "-" in voice:
        return {"name": voice, "type": "azure-standard"}
    return voice


def session_config(
    rt: Realtime, tools: list[dict[str, Any]] | None = None, *, turn_detection: bool = True
) -> dict[str, Any]:
    """The ``session`` object of ``session.update`` for the configured dialect.

    Args:
        rt: the ``[realtime]`` configuration.
        tools: function tools (``{"type": "function", "name", "description", "parameters"}``).
        turn_detection: False forces push-to-talk (turn detection null).
    """
    td = _turn_detection(rt) if turn_detection else None
    transcription = {"model": rt.transcription_model} if rt.transcription_model else None
    if rt.dialect == "openai-ga":
        audio_in: dict[str, Any] = {
            "format": {"type": "audio/pcm", "rate": PCM_RATE},
            "turn_detection": td,
        }
        if transcription:
            audio_in["transcription"] = transcription
        session: dict[str, Any] = {
            "type": "realtime",
            "instructions": rt.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": audio_in,
                "output": {"format": {"type": "audio/pcm", "rate": PCM_RATE}, "voice": rt.voice},
            },
        }
    else:
        session = {
            "modalities": ["audio", "text"],
            "instructions": rt.instructions,
            "voice": rt.voice if rt.dialect == "openai-beta" else _voicelive_voice(rt.voice),
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "turn_detection": td,
        }
        if transcription:
            session["input_audio_transcription"] = transcription
        if rt.dialect == "azure-voicelive":
            session["input_audio_sampling_rate"] = PCM_RATE
    if tools:
        session["tools"] = tools
        session["tool_choice"] = "auto"
    return session
