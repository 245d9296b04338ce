"""The Realtime link: one WebSocket session kept open (websockets' asyncio client).

The adapter between the sans-I/O session core (:class:`voxbox.realtime.session.RealtimeSession`),
the reconnect policy (:class:`voxbox.realtime.link.LinkSupervisor`) and the network. It
connects with the unit's credential (an API key, or a token broker's token per session;
:func:`voxbox.realtime.broker.credential_source`), sends the session's messages, pings for
liveness, closes a socket the service does not serve within ``realtime.connect_timeout_s``,
rolls the session over before the service's ``expires_at``, replaces a stalled socket, and
reconnects after a loss with the supervisor's backoff. One ``link_down`` journal line per
failed attempt or lost session, with its cause.

It knows nothing of the conversation: the daemon gives it callbacks (``on_event``,
``on_lost``...) and feeds it uplink audio (:meth:`RealtimeLink.send_audio`) and ordered
session actions (:meth:`RealtimeLink.send_action`).

Sources: the Realtime API's WebSocket protocol (``session.created``/``session.updated``,
``error`` with ``session_expired``, close codes; ``../shared/reference/realtime-device-notes.md``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from voxbox.realtime.dialects import auth_headers, build_url
from voxbox.realtime.link import LinkSupervisor
from voxbox.realtime.session import (
    FATAL_CLOSE_CODES,
    InvalidEvent,
    ProtocolError,
    RealtimeSession,
    ServerError,
    SessionCreated,
    SessionReady,
)

log = logging.getLogger(__name__)

__all__ = ["RealtimeLink", "LinkCallbacks", "CREDENTIAL_POLL_S", "TURN_PING_S", "IDLE_PING_S",
           "REJECT_LOG_EVERY_S", "MAX_MESSAGE_BYTES"]

CREDENTIAL_POLL_S = 2.0
"""How often an unprovisioned unit looks for its credential (s)."""

TURN_PING_S = 1.0
IDLE_PING_S = 10.0
"""Liveness pings (our own; the websockets keepalive is off): every second during a turn,
every 10 s otherwise. A ping unanswered for ``realtime.stall_s`` with no server event
meanwhile is a stall (:meth:`voxbox.realtime.link.LinkSupervisor.stalled`)."""

REJECT_LOG_EVERY_S = 60.0
"""A server event that fails validation is logged once per event type, then summed up at
most once per this many seconds."""

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Incoming WebSocket message limit (websockets defaults to 1 MiB; appends may be 15 MiB)."""

#: an action queued behind the uplink audio: called with the session it was queued for
#: (only if that session is still the current one), its messages sent right after
SessionAction = Callable[[RealtimeSession], None]


@dataclass
class LinkCallbacks:
    """What the link tells the daemon (all called on the event loop).

    Attributes:
        on_event: every server event of the current session (after the link's own
            bookkeeping of ``session.created``/``session.updated``/``error``), with the
            monotonic time the socket opened (s).
        on_ready: the session's configuration was acknowledged (``session.updated``).
        on_closed: the socket closed (the session is gone).
        on_lost: a failed attempt or a lost session, with its cause (already logged).
        on_fatal: the service refused the unit (already logged); the next attempt is slow.
        in_turn: True while a turn is on (pings every ``TURN_PING_S``, else ``IDLE_PING_S``).
        audio_wanted: False drops uplink audio still queued (the turn closed meanwhile).
        on_audio_sent: a block of uplink audio is about to be appended (bytes, PCM16 24 kHz).
    """

    on_event: Callable[[Any, float], None]
    on_ready: Callable[[], None]
    on_closed: Callable[[], None]
    on_lost: Callable[[str], None]
    on_fatal: Callable[[str], None]
    in_turn: Callable[[], bool]
    audio_wanted: Callable[[], bool]
    on_audio_sent: Callable[[bytes], None]


class RealtimeLink:
    """Keep one Realtime session open; see the module docstring.

    Args:
        cfg: the validated configuration (``realtime``, ``broker``).
        rt_cfg: the ``[realtime]`` settings sessions are opened with (the daemon's, with
            ``interrupt_response`` off in local barge-in mode).
        api_key: the credential (:class:`voxbox.host.credentials.Secret`; empty while unprovisioned).
        supervisor: the reconnect policy.
        callbacks: :class:`LinkCallbacks`.
        metrics: :class:`voxbox.host.metrics.UnitMetrics` (link state, reconnects).
        tools: the tool declarations sent in ``session.update``, or None.
        local_server: starts the local server for ``realtime.url = "local"`` (see
            :class:`voxbox.service.daemon.Daemon`).
    """

    def __init__(self, cfg, rt_cfg, api_key, supervisor: LinkSupervisor, callbacks: LinkCallbacks,
                 metrics, tools: list[dict] | None = None,
                 local_server: Callable[[str | None], Any] | None = None) -> None:
        self.cfg = cfg
        self.rt_cfg = rt_cfg
        self.api_key = api_key
        self.sup = supervisor
        self.cb = callbacks
        self.metrics = metrics
        self.tools = tools
        self._start_local_server = local_server
        self.server = None  # the local server, when realtime.url = "local"
        self.session: RealtimeSession | None = None
        self.ws = None
        self.reconnects = 0
        self.expires_at: float | None = None  # the session's expires_at (monotonic s)
        self._link_host = "?"  # the service's host name, for the journal
        self._keys = None  # StaticKey or TokenBroker (see credentials)
        self._expired = False  # the service said session_expired
        self._fatal_code: str | None = None  # a fatal error event preceded the close
        self._stall_cause: str | None = None
        # server events that failed validation: per event type, (last logged, not logged since)
        self._rejected: dict[str, tuple[float, int]] = {}
        self._uplink_q: asyncio.Queue[bytes | SessionAction] = asyncio.Queue(maxsize=500)

    # ------------------------------------------------------------------ the daemon's side
    @property
    def ready(self) -> bool:
        """The current session's configuration was acknowledged (``session.updated``)."""
        return self.session is not None and self.session.ready

    @property
    def unprovisioned(self) -> bool:
        """No credential yet. In broker mode ``api_key`` holds the per-unit secret."""
        return not self.api_key.value and (self.cfg.realtime.url != "local" or bool(self.cfg.broker.url))

    def send_audio(self, block: bytes) -> bool:
        """Queue a block of uplink audio (PCM16 24 kHz) for the current session. Returns
        False (and logs) when the queue is full and the block was dropped."""
        try:
            self._uplink_q.put_nowait(block)
        except asyncio.QueueFull:
            return False
        return True

    def send_action(self, action: SessionAction) -> bool:
        """Queue ``action`` behind the audio queued before it (a commit after the last
        block of a push-to-talk question). Returns False when the queue is full."""
        try:
            self._uplink_q.put_nowait(action)
        except asyncio.QueueFull:
            return False
        return True

    def drain_uplink(self) -> None:
        """Forget the queued uplink audio and actions."""
        while not self._uplink_q.empty():
            self._uplink_q.get_nowait()

    def flush(self) -> None:
        """Send what the session core has to send (after the daemon called it)."""
        if self.session is None or self.ws is None:
            return
        for msg in self.session.data_to_send():
            asyncio.ensure_future(self._send(msg))

    def supervise(self, now: float, idle: bool, state: str) -> None:
        """Timer: roll the session over when it is old and the unit ``idle``; replace a
        stalled socket (``state``: the conversation state, for the journal line)."""
        ws = self.ws
        sup = self.sup
        if ws is None or self.session is None or sup.rolling:
            return
        if sup.should_roll_over(now, idle and self.session.response_id is None):
            sup.start_rollover()
            left = "" if self.expires_at is None else f", {self.expires_at - now:.0f} s before the service's expires_at"
            log.info("session is %.0f s old: rolling over to a fresh one between turns%s",
                     now - sup.session_started, left, extra={"VOXBOX_EVENT": "rollover"})
            asyncio.ensure_future(ws.close(1000, "session rollover"))
            return
        if sup.stalled(now):
            self._stall_cause = (f"stalled: a ping unanswered for {now - sup.ping_out:.1f} s, "
                                 f"no server event either ({state})")
            log.warning("%s; replacing the socket", self._stall_cause, extra={"VOXBOX_EVENT": "stall"})
            sup.pong(now)  # once
            transport = getattr(ws, "transport", None)
            if transport is not None:
                transport.abort()

    def rejected_event(self, kind: str, detail: str) -> None:
        """A server event dropped (failed validation, or not an event at all): logged once
        per kind, then at most once per REJECT_LOG_EVERY_S with the count since."""
        now = time.monotonic()
        last, quiet = self._rejected.get(kind, (None, 0))
        if last is not None and now - last < REJECT_LOG_EVERY_S:
            self._rejected[kind] = (last, quiet + 1)
            return
        if len(self._rejected) >= 256 and kind not in self._rejected:
            self._rejected.clear()  # bounded: a server inventing event types forever
        self._rejected[kind] = (now, 0)
        more = f" ({quiet} more since the last report)" if quiet else ""
        log.warning("ignoring server event %s: %s%s", kind, detail, more,
                    extra={"VOXBOX_EVENT": "protocol", "VOXBOX_EVENT_TYPE": kind,
                           "VOXBOX_REJECTED_SINCE": quiet})

    async def close(self) -> None:
        """At stop: the local server, if one runs (off the loop: its close handshake needs
        this loop's client side)."""
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)

    # ------------------------------------------------------------------ connecting
    async def _send(self, msg: str) -> None:
        ws = self.ws
        if ws is None:
            return
        try:
            await ws.send(msg)
        except Exception as exc:  # the receive loop notices the drop and reconnects
            log.debug("send failed: %s", exc)

    def _local_url(self) -> str:
        if self.server is None:
            # in broker mode the unit presents broker tokens, not its secret: accept any key
            self.server = self._start_local_server(None if self.cfg.broker.url else (self.api_key.value or None))
        return self.server.client_url(self.cfg.realtime.dialect)

    def _credentials(self):
        """What to connect with: the API key as is, or a token broker (token per session);
        see :func:`voxbox.realtime.broker.credential_source`."""
        if self._keys is None:
            from voxbox.realtime.broker import credential_source

            self._keys = credential_source(self.cfg, self.api_key)
        return self._keys

    async def _wait_for_credential(self) -> None:
        """Unprovisioned: look for the credential every CREDENTIAL_POLL_S seconds (the
        first-boot service or an installer may deliver it while the unit runs)."""
        from voxbox.host.credentials import CredentialError
        from voxbox.host.sd import redact
        from voxbox.realtime.broker import load_connect_secret

        said = None  # the last problem logged: a credential that stays bad is logged once
        while self.unprovisioned:
            await asyncio.sleep(CREDENTIAL_POLL_S)
            try:
                key = load_connect_secret(self.cfg, required=False)
            except CredentialError as exc:
                if str(exc) != said:  # names the source, never the value
                    said = str(exc)
                    log.warning("%s; looking again every %.0f s", exc, CREDENTIAL_POLL_S,
                                extra={"VOXBOX_EVENT": "unprovisioned"})
                self.metrics.set_link("unprovisioned")
                continue
            if key.value:
                redact(key.value)
                self.api_key = key
                log.info("API key found (%s): connecting", key.source, extra={"VOXBOX_EVENT": "provisioned"})

    async def run(self, stop: asyncio.Event) -> None:
        """Keep one session open until ``stop`` is set (a warm session while idle: the
        first word after the wake word costs no handshake). Reconnect decisions come from
        :class:`LinkSupervisor`: full-jitter backoff, a slow retry after fatal answers,
        immediate reconnect after our own rollover."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
        from websockets.frames import Close

        from voxbox.realtime.broker import BrokerError

        if self.unprovisioned:
            await self._wait_for_credential()
        rt = self.cfg.realtime
        sup = self.sup
        keys = self._credentials()
        while not stop.is_set():
            url = build_url(rt, self._local_url() if rt.url == "local" else rt.url)
            try:
                key = await keys.token()
            except BrokerError as exc:
                delay = sup.failed(time.monotonic(), str(exc), exc.fatal)
                if exc.retry_after:
                    delay = max(delay, exc.retry_after)
                self._lost(str(exc), delay)
                if exc.fatal:
                    self._fatal(str(exc))
                await _wait(stop, delay)
                continue
            headers = auth_headers(rt, key.value, url)
            self._link_host = urlsplit(url).hostname or "?"
            t_try = time.monotonic()
            try:
                # keepalive off: _pinger pings and the LinkSupervisor judges the pongs
                async with connect(url, additional_headers=headers, max_size=MAX_MESSAGE_BYTES,
                                   open_timeout=rt.connect_timeout_s, ping_interval=None,
                                   close_timeout=2, compression=None) as ws:
                    t_open = time.monotonic()
                    sup.connected(t_open)
                    self.ws = ws
                    try:
                        await self._serve(ws, sup.connects, t_open)
                        # the stream ended with a normal close (1000/1001): keep its code
                        raise ConnectionClosed(Close(ws.close_code or 1006, ws.close_reason or ""), None)
                    finally:
                        self.ws = None
                        self.session = None
                        self.cb.on_closed()
            except asyncio.CancelledError:
                raise
            except ConnectionClosed as exc:
                if sup.rolling:
                    delay = sup.ended_for_rollover()
                    self.drain_uplink()
                    log.info("session rolled over after %.0f s", time.monotonic() - t_try,
                             extra={"VOXBOX_EVENT": "rollover"})
                else:
                    cause = self._stall_cause or _close_cause(exc)
                    self._stall_cause = None
                    fatal = _fatal_close(exc) or self._fatal_code is not None
                    if fatal and self.cfg.broker.url and not keys.fresh:
                        keys.invalidate()  # a cached token refused: try a fresh one before giving up
                        fatal, self._fatal_code = False, None
                    if self._fatal_code:
                        cause = f"{self._fatal_code} ({cause})"
                    self._fatal_code = None
                    if self._expired:  # the service ended the session (limit): come back at once
                        self._expired = False
                        delay = sup.ended_by_service(time.monotonic(), cause)
                    else:
                        delay = sup.failed(time.monotonic(), cause, fatal)
                    self._lost(cause, delay)
                    if fatal:
                        self._fatal(cause)
            except InvalidStatus as exc:
                code = exc.response.status_code
                cause = f"HTTP {code} at handshake"
                fatal = code in (401, 403)
                if fatal and self.cfg.broker.url and not keys.fresh:
                    keys.invalidate()
                    fatal = False
                delay = sup.failed(time.monotonic(), cause, fatal)
                self._lost(cause, delay)
                if fatal:
                    self._fatal(cause)
            except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                delay = sup.failed(time.monotonic(), cause)
                self._lost(cause, delay)
            except Exception as exc:  # never strand the unit: log, back off, try again
                log.exception("link error", extra={"VOXBOX_EVENT": "link_down"})
                delay = sup.failed(time.monotonic(), f"{type(exc).__name__}: {exc}")
                self._lost(sup.cause, delay)
            if delay > 0:
                await _wait(stop, delay)

    def _fatal(self, cause: str) -> None:
        self.metrics.set_link("fatal")
        log.error("the service refused the unit: %s; next attempt in %.0f s", cause,
                  self.sup.fatal_retry_s, extra={"VOXBOX_EVENT": "link_fatal", "VOXBOX_CAUSE": cause})
        self.cb.on_fatal(cause)

    def _lost(self, cause: str, delay: float = 0.0) -> None:
        """One journal line per failed attempt or lost session: the cause, how many
        attempts have failed in a row, when the next one is."""
        self.reconnects += 1
        self.metrics.set_link("down")
        sup = self.sup
        log.warning("link lost: %s; %d failure(s) in a row; next attempt in %.1f s", cause,
                    sup.failures, delay,
                    extra={"VOXBOX_EVENT": "link_down", "VOXBOX_CAUSE": cause,
                           "VOXBOX_FAILURES": sup.failures, "VOXBOX_RETRY_S": round(delay, 2)})
        self.session = None
        self.drain_uplink()
        self.cb.on_lost(cause)

    # ------------------------------------------------------------------ one session
    async def _serve(self, ws, conn_no: int, t_open: float) -> None:
        session = RealtimeSession(self.rt_cfg, prefix=f"vx{conn_no}", tools=self.tools)
        session.start()
        self.session = session
        self.expires_at = None
        self.drain_uplink()
        for msg in session.data_to_send():
            await ws.send(msg)
        sender = asyncio.create_task(self._uplink_sender(ws, session))
        pinger = asyncio.create_task(self._pinger(ws))
        deadline = asyncio.create_task(self._session_deadline(ws, session, t_open))
        try:
            async for message in ws:
                self.sup.event(time.monotonic())
                try:
                    events = session.receive(message)
                except ProtocolError as exc:
                    self.rejected_event("(not an event)", str(exc))
                    continue
                for ev in events:
                    try:
                        self._on_event(ev, t_open)
                    except Exception as exc:  # one event never ends the session
                        log.exception("error handling %s", type(ev).__name__, extra={"VOXBOX_EVENT": "protocol"})
                        self.rejected_event(type(ev).__name__, f"{type(exc).__name__}: {exc}")
                self.flush()
        finally:
            sender.cancel()
            pinger.cancel()
            deadline.cancel()

    def _on_event(self, ev, t_open: float) -> None:
        """The link's own part of a server event, then the daemon's (``on_event``)."""
        now = time.monotonic()
        if isinstance(ev, SessionCreated):
            left = self.sup.expires_in(ev.expires_at, time.time()) if ev.expires_at is not None else None
            self.expires_at = None if left is None else now + left
            if ev.expires_at is not None and left is None:
                log.warning("session.created expires_at %s is %.0f s from now by this unit's clock: ignored "
                            "(is the clock set?); rolling over by the dialect's period",
                            ev.expires_at, ev.expires_at - time.time(), extra={"VOXBOX_EVENT": "session"})
            log.info("session created%s", "" if left is None else f"; the service ends it in {left:.0f} s",
                     extra={"VOXBOX_EVENT": "session", "VOXBOX_SESSION_ID": ev.session_id,
                            **({} if left is None else {"VOXBOX_EXPIRES_IN_S": round(left)})})
        elif isinstance(ev, SessionReady):
            log.info("session ready in %d ms", (now - t_open) * 1000,
                     extra={"VOXBOX_EVENT": "session_ready", "VOXBOX_SESSION_ID": ev.session_id,
                            "VOXBOX_CONNECT_MS": int((now - t_open) * 1000)})
            down_since = self.sup.down_since
            self.sup.session_ready(now, self.expires_at)
            self.metrics.set_link("up")
            if down_since is not None:
                self.metrics.on_reconnect()
                log.info("link back: session ready %d ms after the link was lost (outage)",
                         (now - down_since) * 1000,
                         extra={"VOXBOX_EVENT": "reconnected",
                                "VOXBOX_RECONNECT_MS": int((now - down_since) * 1000)})
            self.cb.on_ready()
            return
        elif isinstance(ev, InvalidEvent):
            self.rejected_event(ev.type, f"field {ev.field}: {ev.detail}")
            return
        elif isinstance(ev, ServerError):
            if ev.code == "session_expired":
                self._expired = True
            if ev.fatal:
                self._fatal_code = ev.code
        self.cb.on_event(ev, t_open)

    async def _session_deadline(self, ws, session: RealtimeSession, t_open: float) -> None:
        """No ``session.created`` (or no ``session.updated`` after it) within
        ``realtime.connect_timeout_s`` of the handshake: the service is not serving this
        socket. Close it with one line naming the host and the wait; the link loop backs
        off and retries."""
        wait = self.cfg.realtime.connect_timeout_s
        await asyncio.sleep(wait)
        if session.ready:
            return
        host = self._link_host
        what = "session.updated" if session.session_id else "session.created"
        self._stall_cause = f"no {what} from {host} within {wait:g} s of the handshake"
        log.warning("%s; closing the socket", self._stall_cause,
                    extra={"VOXBOX_EVENT": "session_timeout", "VOXBOX_CAUSE": self._stall_cause})
        transport = getattr(ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def _pinger(self, ws) -> None:
        """Liveness, at every moment: a ping every TURN_PING_S during a turn and every
        IDLE_PING_S otherwise (one outstanding at a time). The LinkSupervisor hears of each
        ping and pong and calls the link stalled when a ping goes unanswered, with no server
        event either, for ``realtime.stall_s`` (see :meth:`supervise`): a dead socket is
        replaced in seconds during a turn, and a quiet idle hour is never a stall."""
        last = 0.0
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            every = TURN_PING_S if self.cb.in_turn() else IDLE_PING_S
            if now - last < every:
                continue
            last = now
            try:
                waiter = await ws.ping()
            except Exception:  # closed meanwhile: the receive loop handles it
                return
            self.sup.ping_sent(now)
            try:
                await waiter
            except Exception:
                return
            self.sup.pong(time.monotonic())

    async def _uplink_sender(self, ws, session: RealtimeSession) -> None:
        while True:
            item = await self._uplink_q.get()
            if callable(item):  # a session action, in order with the audio
                if session is self.session:
                    item(session)
                    for msg in session.data_to_send():
                        await ws.send(msg)
                continue
            if session is not self.session or not self.cb.audio_wanted():
                continue
            self.cb.on_audio_sent(item)
            session.append_audio(item)
            for msg in session.data_to_send():
                await ws.send(msg)


async def _wait(stop: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except asyncio.TimeoutError:
        pass


def _close_cause(exc) -> str:
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None:
        return f"closed by the service ({rcvd.code} {rcvd.reason})".strip()
    return "connection dropped"


def _fatal_close(exc) -> bool:
    rcvd = getattr(exc, "rcvd", None)
    return rcvd is not None and rcvd.code in FATAL_CLOSE_CODES
