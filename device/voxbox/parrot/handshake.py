"""The local Realtime server's handshake: HTTP upgrade path, auth and dialect detection.

``classify_request(path, headers)`` is pure: from the upgrade request's path and query
(``/v1/realtime``, ``/openai/v1/realtime``, ``/openai/realtime``, ``/voice-live/realtime``),
the ``OpenAI-Beta`` header and the presented key (``Authorization: Bearer`` or ``api-key``)
it decides the ``Dialect`` (one of ``DIALECTS``: event names, session shape, defaults such
as the session limit in s and the server VAD silence in ms) and returns a
``HandshakeDecision``: accept, reject before the upgrade (HTTP status and body), or accept
then send one error and close (fatal: close code 3000 or 4000).

Sources: the digest (/work/shared/reference/realtime-device-notes.md), table "Dialects,
URLs and auth", and the comments next to each decision.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping
from urllib.parse import parse_qs, urlsplit


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
