"""A local token broker for tests: the fleet endpoint :mod:`voxbox.realtime.broker` talks to.

``BrokerServer`` runs ``http.server`` in a daemon thread, over HTTPS when given a
certificate (:func:`make_test_pki` makes a throw-away CA and a server certificate for
127.0.0.1/localhost with the ``openssl`` CLI) or plain HTTP on loopback. It checks
``Authorization: Bearer <unit secret>`` against its table of units, answers
``{"value": "ek_<random>", "expires_at": now + ttl_s}`` (OpenAI ``client_secrets`` shape,
plus a ``Date`` header), counts requests and can be told to fail:

- ``fail_status = 500`` (or any status) answers every request with that status;
- ``delay_s`` sleeps before answering (a slow broker);
- ``ttl_s`` sets the token lifetime; ``clock`` (unix seconds) is the broker's clock.

Tokens it issued are checked with :meth:`BrokerServer.accept` (issued and not expired at the
broker's clock), the check a Realtime service makes at the WebSocket handshake: pass it
to the local Realtime server as ``LocalServerConfig.accept_key``
(``ServerThread(accept_key=broker.accept)``).
"""

from __future__ import annotations

import email.utils
import json
import secrets
import shutil
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable


@dataclass
class BrokerRequest:
    """One request as the broker saw it (never the secret)."""

    path: str
    unit_id: str | None
    authorized: bool
    status: int
    body: dict | None


@dataclass
class BrokerState:
    units: dict[str, str]                 # unit_id -> secret
    ttl_s: float = 600.0
    fail_status: int | None = None
    retry_after: str | None = None
    delay_s: float = 0.0
    clock: Callable[[], float] = time.time
    issued: dict[str, float] = field(default_factory=dict)   # token -> expires_at
    requests: list[BrokerRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server_version = "voxbox-test-broker/1"
    state: BrokerState  # set on the subclass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        # the Date header follows the broker's (possibly fake) clock
        return email.utils.formatdate(self.state.clock() if timestamp is None else timestamp, usegmt=True)

    def _answer(self, status: int, obj: dict, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        st = self.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        unit_id = body.get("unit_id") if isinstance(body, dict) else None
        authz = self.headers.get("Authorization", "")
        presented = authz[7:] if authz.startswith("Bearer ") else None
        expected = st.units.get(unit_id) if isinstance(unit_id, str) else None
        authorized = (presented is not None and expected is not None
                      and secrets.compare_digest(presented.encode(), expected.encode()))
        if st.delay_s:
            time.sleep(st.delay_s)
        token = None
        fail = st.fail_status
        if fail is not None:
            status = fail
        elif body is None or unit_id is None:
            status = 400
        elif not authorized:
            status = 401
        else:
            status = 200
            token = "ek_" + secrets.token_urlsafe(24)
            expires_at = int(st.clock() + st.ttl_s)
        # record before answering: a test reading the count after its answer sees it
        with st.lock:
            if token is not None:
                st.issued[token] = expires_at
            st.requests.append(BrokerRequest(self.path, unit_id, authorized, status,
                                             body if isinstance(body, dict) else None))
        if fail is not None:
            extra = {"Retry-After": st.retry_after} if st.retry_after else None
            self._answer(status, {"error": {"message": "broker failure (test)", "code": "test"}}, extra)
        elif status == 400:
            self._answer(status, {"error": {"message": "expected JSON with unit_id"}})
        elif status == 401:
            self._answer(status, {"error": {"message": "unit secret refused"}})
        else:
            self._answer(200, {"value": token, "expires_at": expires_at,
                               "session": {"type": "realtime", "model": body.get("model", "gpt-realtime")}})


class BrokerServer:
    """The test broker. ``start()`` returns the port; ``url`` is the endpoint.

    Args:
        units: unit_id -> unit secret.
        certfile, keyfile: serve HTTPS with this certificate (else plain HTTP).
        path: the endpoint path.
    """

    def __init__(self, units: dict[str, str], *, certfile: str | Path | None = None,
                 keyfile: str | Path | None = None, ttl_s: float = 600.0,
                 clock: Callable[[], float] = time.time, path: str = "/v1/realtime-token"):
        self.state = BrokerState(dict(units), ttl_s=ttl_s, clock=clock)
        self.certfile, self.keyfile = certfile, keyfile
        self.path = path
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # knobs (thread-safe enough: plain attribute writes read per request)
    @property
    def fail_status(self) -> int | None:
        return self.state.fail_status

    @fail_status.setter
    def fail_status(self, v: int | None) -> None:
        self.state.fail_status = v

    @property
    def delay_s(self) -> float:
        return self.state.delay_s

    @delay_s.setter
    def delay_s(self, v: float) -> None:
        self.state.delay_s = v

    @property
    def ttl_s(self) -> float:
        return self.state.ttl_s

    @ttl_s.setter
    def ttl_s(self, v: float) -> None:
        self.state.ttl_s = v

    @property
    def requests(self) -> list[BrokerRequest]:
        with self.state.lock:
            return list(self.state.requests)

    @property
    def count(self) -> int:
        return len(self.requests)

    @property
    def issued(self) -> list[str]:
        with self.state.lock:
            return list(self.state.issued)

    def accept(self, token: str | None) -> bool:
        """True when ``token`` was issued here and has not expired (broker clock)."""
        if not token:
            return False
        with self.state.lock:
            exp = self.state.issued.get(token)
        return exp is not None and self.state.clock() < exp

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("broker not started")
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}{self.path}"

    def start(self) -> int:
        handler = type("Handler", (_Handler,), {"state": self.state})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        if self.certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.certfile), str(self.keyfile) if self.keyfile else None)
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="voxbox-test-broker", daemon=True)
        self._thread.start()
        return httpd.server_address[1]

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "BrokerServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path
    other_ca_file: Path   # a CA that did not sign the server certificate


def make_test_pki(directory: Path | str) -> Pki:
    """A throw-away CA, a server certificate it signed for 127.0.0.1 and localhost, and an
    unrelated second CA, made with the ``openssl`` CLI.

    Raises:
        RuntimeError: no ``openssl`` on PATH or it failed.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl CLI not found")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        r = subprocess.run([openssl, *args], cwd=d, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()}")

    for name in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=voxbox test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "other-ca.pem")
