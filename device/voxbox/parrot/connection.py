"""The local Realtime server's connection: one WebSocket session on the server's event loop.

``_Connection`` runs a ``SessionCore`` over a ``websockets`` server connection: it reads
client messages into the core, drives the active response (``ResponseStream.next_delay``
in s, then ``step_response``), sends the events in order through one queue (with the reply
audio pacing of ``AudioJitter``), records both directions in the ``ConnectionRecord``, and
carries out the faults on its wire (stall, release, drop after N events, malformed JSON,
oversized audio delta, expiry) as armed by :class:`voxbox.parrot.faults.FaultControls`
(``server.faults``, read at run time).

``server`` is the :class:`voxbox.parrot.server.LocalRealtimeServer` (not imported here:
it imports this module).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from voxbox.parrot.handshake import HandshakeDecision
from voxbox.parrot.record import ConnectionRecord, summarize_server_event
from voxbox.parrot.responses import ResponseStream
from voxbox.parrot.session import SessionCore
from voxbox.parrot.wire import OUTPUT_RATE, new_id

log = logging.getLogger("voxbox.parrot.server")   # one logger for the whole local server


# --------------------------------------------------------------------------------------
# websockets adapter
# --------------------------------------------------------------------------------------
_CLOSE = object()
_RAW = object()

# A frame cut off mid-string: what a client sees if a proxy or a buggy server truncates one.
MALFORMED_JSON = '{"type": "response.output_audio.delta", "event_id": "event_malformed", "response_id": "resp_'


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
    def __init__(self, server: "LocalRealtimeServer", ws: ServerConnection, decision: HandshakeDecision,  # noqa: F821
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
