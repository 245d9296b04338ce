"""The local Realtime server's fault injection: what a real service (or its network) does to a client.

``FaultControls`` (``LocalRealtimeServer.faults`` / ``ServerThread.faults``), thread-safe:
drop (abort the TCP stream, no close frame), reply audio delay and jitter (``AudioJitter``,
s), stall without pongs, auth and quota rejections (HTTP 401/403/429 before the upgrade,
``invalid_api_key`` then close 3000, ``insufficient_quota`` on every response), session
expiry (``session_expired``, close 1001), malformed JSON, unknown events and fields,
oversized audio deltas (bytes). The same faults are ``LocalServerConfig`` options, read
once here. The error bodies follow the OpenAI API's (``INSUFFICIENT_QUOTA``).

``server`` is the :class:`voxbox.parrot.server.LocalRealtimeServer` (not imported here:
it imports this module).
"""
from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from voxbox.parrot.config import REJECT_AUTH_MODES, AudioJitter
from voxbox.parrot.connection import MALFORMED_JSON, _Connection
from voxbox.parrot.handshake import HandshakeDecision
from voxbox.parrot.wire import new_id

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

    def __init__(self, server: "LocalRealtimeServer") -> None:  # noqa: F821
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
