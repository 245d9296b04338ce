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

Service-side features (semantic VAD, Voice Live end-of-utterance detection, noise reduction,
server echo cancellation, input transcription) are mapped in :func:`session_config` only; a
feature the dialect does not have is an :class:`UnsupportedFeature` error naming the
``realtime.*`` key, raised by :func:`check_features` (call it at start-up) and again by
:func:`session_config` (never silently dropped). ``tests/test_dialects.py`` validates every
combination against the SDK types.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from voxbox.config import Realtime
from voxbox.errors import UnsupportedFeature  # noqa: F401 (re-exported)

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


# ---- service-side features ---------------------------------------------------------------
# What each dialect accepts, in one table. Sources (the installed SDKs are the truth; checked
# with openai 3.54.0 and azure-ai-voicelive 1.3.1):
#   openai-ga:       openai.types.realtime.RealtimeAudioConfigInput -- turn_detection ServerVad |
#                    SemanticVad (eagerness), noise_reduction.type NoiseReductionType
#                    (near_field | far_field), transcription AudioTranscription {model}
#   openai-beta:     openai.types.beta.realtime.session_update_event.Session --
#                    SessionTurnDetection.type server_vad | semantic_vad (eagerness),
#                    SessionInputAudioNoiseReduction.type near_field | far_field,
#                    SessionInputAudioTranscription {model}
#   azure-voicelive: azure.ai.voicelive.models.RequestSession -- TurnDetectionType server_vad |
#                    azure_semantic_vad | azure_semantic_vad_en | azure_semantic_vad_multilingual
#                    (no semantic_vad, no eagerness), EouDetection on every VAD type,
#                    AudioNoiseReduction.type azure_deep_noise_suppression | near_field |
#                    far_field, AudioEchoCancellation.type server_echo_cancellation,
#                    AudioInputTranscriptionOptions {model}
# and realtime-device-notes.md ("Beta versus GA names": the Voice Live session fields).
_TURN_TYPES: dict[str, frozenset[str]] = {
    "openai-ga": frozenset({"server_vad", "semantic_vad", "none"}),
    "openai-beta": frozenset({"server_vad", "semantic_vad", "none"}),
    "azure-voicelive": frozenset(
        {"server_vad", "azure_semantic_vad", "azure_semantic_vad_multilingual", "none"}
    ),
}
_NOISE_REDUCTION: dict[str, frozenset[str]] = {
    "openai-ga": frozenset({"off", "near_field", "far_field"}),
    "openai-beta": frozenset({"off", "near_field", "far_field"}),
    "azure-voicelive": frozenset({"off", "near_field", "far_field", "azure_deep_noise_suppression"}),
}
_SERVER_ECHO_CANCELLATION = frozenset({"azure-voicelive"})
_END_OF_UTTERANCE = frozenset({"azure-voicelive"})

#: Voice Live end-of-utterance model per turn detection type (azure.ai.voicelive.models
#: AzureSemanticDetection / AzureSemanticDetectionMultilingual; Voice Live how-to:
#: ``semantic_detection_v1`` is English, ``semantic_detection_v1_multilingual`` covers en, es,
#: fr, it, de, ja, pt, zh, ko, hi; usable with either VAD type)
VOICELIVE_EOU_MODEL = {
    "server_vad": "semantic_detection_v1",
    "azure_semantic_vad": "semantic_detection_v1",
    "azure_semantic_vad_multilingual": "semantic_detection_v1_multilingual",
}

#: Transcription models Voice Live documents for ``input_audio_transcription.model``
#: (azure.ai.voicelive.models.AudioInputTranscriptionOptions; voice-live API reference)
VOICELIVE_TRANSCRIPTION_MODELS = frozenset({
    "azure-speech", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
    "gpt-4o-transcribe-diarize", "mai-transcribe-1",
})


def _problems(rt: Realtime) -> list[str]:
    d = rt.dialect
    td = rt.turn_detection
    out: list[str] = []
    if td.type not in _TURN_TYPES[d]:
        out.append(
            f"realtime.turn_detection.type: {td.type!r} is not available in dialect {d} "
            f"(allowed: {', '.join(sorted(_TURN_TYPES[d]))})"
        )
    if td.eagerness != "auto" and td.type != "semantic_vad":
        out.append(
            f"realtime.turn_detection.eagerness: {td.eagerness!r} applies only to "
            f"turn_detection.type 'semantic_vad' (type is {td.type!r})"
        )
    if td.end_of_utterance:
        if d not in _END_OF_UTTERANCE:
            out.append(f"realtime.turn_detection.end_of_utterance: not available in dialect {d} "
                       "(Voice Live only)")
        elif td.type not in VOICELIVE_EOU_MODEL:
            out.append(f"realtime.turn_detection.end_of_utterance: needs server turn detection "
                       f"(server_vad or azure_semantic_vad*), type is {td.type!r}")
    if rt.noise_reduction not in _NOISE_REDUCTION[d]:
        out.append(
            f"realtime.noise_reduction: {rt.noise_reduction!r} is not available in dialect {d} "
            f"(allowed: {', '.join(sorted(_NOISE_REDUCTION[d]))})"
        )
    if rt.server_echo_cancellation and d not in _SERVER_ECHO_CANCELLATION:
        out.append(f"realtime.server_echo_cancellation: not available in dialect {d} "
                   "(Voice Live only; the device's own echo canceller is [frontend] echo_cancel)")
    if rt.transcription_model == "azure-speech" and d != "azure-voicelive":
        out.append(f"realtime.transcription_model: 'azure-speech' is not available in dialect {d} "
                   "(Voice Live only)")
    return out


def check_features(rt: Realtime) -> list[str]:
    """Check the service-side features of ``rt`` against its dialect, at start-up.

    Returns:
        warnings: combinations that are accepted by the dialect's session schema but that
        the service documentation says may not work (log them).

    Raises:
        UnsupportedFeature: (a ``ValueError``) naming every ``realtime.*`` key whose value the
        dialect does not have. Nothing is ever silently dropped: :func:`session_config`
        raises the same error.
    """
    problems = _problems(rt)
    if problems:
        raise UnsupportedFeature(problems)
    warnings: list[str] = []
    if rt.dialect == "azure-voicelive":
        if rt.turn_detection.end_of_utterance and "realtime" in rt.model:
            # learn.microsoft.com/azure/ai-services/speech-service/voice-live-how-to,
            # turn_detection.end_of_utterance_detection ("doesn't support gpt-realtime,
            # gpt-4o-mini-realtime, and phi4-mm-realtime"): a warning, as this may change
            warnings.append(
                "realtime.turn_detection.end_of_utterance: Voice Live documents end-of-utterance "
                f"detection as unsupported with the realtime (native audio) models; model is "
                f"{rt.model!r}"
            )
        if rt.transcription_model and rt.transcription_model not in VOICELIVE_TRANSCRIPTION_MODELS:
            warnings.append(
                f"realtime.transcription_model: {rt.transcription_model!r} is not a transcription "
                f"model Voice Live documents ({', '.join(sorted(VOICELIVE_TRANSCRIPTION_MODELS))})"
            )
    return warnings


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
    if td.end_of_utterance:  # Voice Live only (checked): EouDetection
        out["end_of_utterance_detection"] = {"model": VOICELIVE_EOU_MODEL[td.type]}
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

    Service-side features, per dialect (the only place they are mapped):

    openai-ga, under ``audio.input`` (``openai.types.realtime.RealtimeAudioConfigInput``):
      - ``turn_detection``: ``{type: server_vad, threshold, prefix_padding_ms,
        silence_duration_ms, create_response, interrupt_response}`` or ``{type: semantic_vad,
        eagerness (unless auto), create_response, interrupt_response}``; null for "none"
      - ``noise_reduction: {type: near_field | far_field}``
      - ``transcription: {model}``
      - error: azure_semantic_vad*, end_of_utterance, azure_deep_noise_suppression,
        server_echo_cancellation, transcription_model "azure-speech"
    openai-beta, flat (``openai.types.beta.realtime.session_update_event.Session``):
      - ``turn_detection`` as GA; ``input_audio_noise_reduction: {type: near_field |
        far_field}``; ``input_audio_transcription: {model}``
      - error: as GA
    azure-voicelive, flat (``azure.ai.voicelive.models.RequestSession``):
      - ``turn_detection: {type: server_vad | azure_semantic_vad |
        azure_semantic_vad_multilingual, threshold, prefix_padding_ms, silence_duration_ms,
        create_response, interrupt_response}`` plus, with ``end_of_utterance``,
        ``end_of_utterance_detection: {model: semantic_detection_v1}``
        (``semantic_detection_v1_multilingual`` for the multilingual VAD) (``EouDetection``)
      - ``input_audio_noise_reduction: {type: azure_deep_noise_suppression | near_field |
        far_field}`` (``AudioNoiseReduction``)
      - ``input_audio_echo_cancellation: {type: server_echo_cancellation}``
        (``AudioEchoCancellation``)
      - ``input_audio_transcription: {model}`` (``AudioInputTranscriptionOptions``)
      - error: semantic_vad and eagerness (not in the Voice Live SDK's turn detection types)

        "error" is :class:`UnsupportedFeature` (see :func:`check_features`); "off"/false/"" send
    nothing, leaving the service default (off). Field names follow the SDK types cited at
    ``_TURN_TYPES``; ``tests/test_dialects.py`` validates every combination against them.

    Args:
        rt: the ``[realtime]`` configuration.
        tools: function tools (``{"type": "function", "name", "description", "parameters"}``).
        turn_detection: False forces push-to-talk (turn detection null).

    Raises:
        UnsupportedFeature: the configuration asks for a feature the dialect does not have.
    """
    problems = _problems(rt)
    if problems:
        raise UnsupportedFeature(problems)
    td = _turn_detection(rt) if turn_detection else None
    transcription = {"model": rt.transcription_model} if rt.transcription_model else None
    noise = {"type": rt.noise_reduction} if rt.noise_reduction != "off" else None
    if rt.dialect == "openai-ga":
        audio_in: dict[str, Any] = {
            "format": {"type": "audio/pcm", "rate": PCM_RATE},
            "turn_detection": td,
        }
        if transcription:
            audio_in["transcription"] = transcription
        if noise:
            audio_in["noise_reduction"] = noise
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
        if noise:
            session["input_audio_noise_reduction"] = noise
        if rt.dialect == "azure-voicelive":
            session["input_audio_sampling_rate"] = PCM_RATE
            if rt.server_echo_cancellation:
                session["input_audio_echo_cancellation"] = {"type": "server_echo_cancellation"}
    if tools:
        session["tools"] = tools
        session["tool_choice"] = "auto"
    return session
