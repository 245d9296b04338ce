"""The local Realtime server's record of what it saw and sent, for tests.

``ServerRecord`` (thread-safe) holds one ``ConnectionRecord`` per connection: the client and
server events in order, summarised without audio payloads (``summarize_client_event`` /
``summarize_server_event``: audio as sample counts), each with ``t`` (``time.monotonic()``);
the uplink samples and the first seconds of uplink audio (PCM16 at the input rate); the
reply audio sent per item (PCM16, 24 kHz); truncations, function calls and outputs; close
codes and times. ``ServerRecord.faults`` lists the injected faults with their times.
"""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


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
