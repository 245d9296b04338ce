"""The ``network`` check of ``voxbox selftest``: connect to ``realtime.url`` with the
daemon's credential (a token from the broker in token-broker mode) and wait for
``session.created`` (:func:`check_network`, :func:`_probe`); ``realtime.url = "local"``
starts the local server through the factory the CLI passes (:data:`LocalServerFactory`)."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from voxbox.config import Config
from voxbox.field.checkresult import CheckResult, _round
from voxbox.realtime.session import FATAL_CLOSE_CODES

#: starts the local Realtime server for ``realtime.url = "local"``: called with the API key
#: it accepts (None: any), returns a started server with ``client_url(dialect)`` and
#: ``stop()``. The CLI passes :func:`voxbox.cli.start_local_server`; the field tools never
#: import the test server themselves (the import rules in ``.importlinter``).
LocalServerFactory = Callable[[str | None], Any]


def _local_url(cfg: Config, key: str, local_server: LocalServerFactory):
    server = local_server(key or None)
    return server, server.client_url(cfg.realtime.dialect)


async def _probe(url: str, headers: dict[str, str], timeout: float,
                 what: str = "API key") -> tuple[str, str, float, dict]:
    """Connect and wait for ``session.created``. Returns (result, cause, ms, details);
    ``what`` names the credential in auth failures. ``details["fatal"]`` follows the
    daemon's rule: :data:`voxbox.realtime.session.FATAL_ERROR_CODES`, :data:`FATAL_CLOSE_CODES`."""
    import asyncio
    import socket
    import ssl

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

    from voxbox.realtime.session import FATAL_ERROR_CODES

    t0 = time.monotonic()
    ms = lambda: (time.monotonic() - t0) * 1000  # noqa: E731
    try:
        async with asyncio.timeout(timeout):
            async with connect(url, additional_headers=headers, open_timeout=timeout, close_timeout=2,
                               compression=None, max_size=2**24, ping_interval=None) as ws:
                t_open = ms()
                while True:
                    ev = json.loads(await ws.recv())
                    typ = ev.get("type")
                    if typ == "session.created":
                        sess = ev.get("session") or {}
                        return "PASS", "", ms(), {"handshake_ms": round(t_open, 1),
                                                  "session_id": sess.get("id"), "model": sess.get("model")}
                    if typ == "error":
                        err = ev.get("error") or {}
                        code = str(err.get("code") or err.get("type") or "error")
                        fatal = code in FATAL_ERROR_CODES
                        det = {"code": code, "fatal": fatal}
                        if "api_key" in code or code in ("unauthorized", "forbidden"):
                            return "FAIL", f"auth: the service rejected the {what} ({code})", ms(), det
                        msg = str(err.get("message") or "")[:120]
                        if fatal:  # quota, model, API shape: the daemon would not retry soon
                            return "FAIL", (f"refused: {code}: {msg}; check realtime.model/deployment/"
                                            "dialect and the account"), ms(), det
                        return "FAIL", f"service error {code}: {msg}", ms(), det
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):  # fatal for the daemon too
            return "FAIL", f"auth: HTTP {status}, the {what} is rejected (or lacks access)", ms(), \
                {"http_status": status, "fatal": True}
        if status == 404:
            return "FAIL", "HTTP 404: wrong realtime.url path, model or deployment", ms(), {"http_status": status}
        return "FAIL", f"HTTP {status} from the service", ms(), {"http_status": status}
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        code = rcvd.code if rcvd is not None else None
        why = (f"auth: closed 3000 (invalid {what})" if code == 3000
               else f"closed {code} (invalid model or API shape: check realtime.model/dialect)" if code == 4000
               else f"connection closed ({code})")
        return "FAIL", why, ms(), {"close_code": code, "fatal": code in FATAL_CLOSE_CODES}
    except socket.gaierror as exc:
        return "FAIL", f"network: DNS lookup failed ({exc.strerror}); check DNS/the host name", ms(), {}
    except ssl.SSLError as exc:
        return "FAIL", f"TLS: {exc.reason or exc}; check the clock (date) and CA certificates", ms(), {}
    except (TimeoutError, asyncio.TimeoutError):
        return "FAIL", f"timeout: no session.created within {timeout:g} s (realtime.connect_timeout_s)", ms(), {}
    except InvalidURI as exc:
        return "FAIL", f"realtime.url invalid: {exc}", ms(), {}
    except InvalidHandshake as exc:
        return "FAIL", f"handshake failed: {exc}", ms(), {}
    except OSError as exc:
        return "FAIL", f"network: TCP connect failed ({exc.strerror or exc}); check the network/firewall", ms(), {}
    return "FAIL", "connection ended without session.created", ms(), {}


def check_network(cfg: Config, environ: dict[str, str] | None = None,
                  local_server: LocalServerFactory | None = None) -> CheckResult:
    """Connect to the configured service and wait for ``session.created``: time in ms.

    The credential is the daemon's (:func:`voxbox.realtime.broker.load_connect_secret`): the API
    key, or in token-broker mode the unit secret, with which a token is fetched from
    ``broker.url`` first (:func:`voxbox.realtime.broker.credential_source`), so the broker is tested
    too."""
    import asyncio

    from voxbox.host.credentials import CredentialError
    from voxbox.host.sd import redact
    from voxbox.realtime.broker import load_connect_secret

    rt = cfg.realtime
    limit = f"session.created within {rt.connect_timeout_s:g} s"
    try:
        secret = load_connect_secret(cfg, environ, required=True)
    except CredentialError as exc:
        return CheckResult("network", "FAIL", None, "ms", limit, f"unprovisioned: {exc}")
    redact(secret.value)
    result, cause, ms, det = asyncio.run(_connect(cfg, secret, local_server))
    return CheckResult("network", result, _round(ms, 0), "ms", limit, cause, det)


async def _connect(cfg: Config, secret, local_server: LocalServerFactory | None = None
                   ) -> tuple[str, str, float | None, dict]:
    """The network check in one event loop: credential (token from the broker), then
    :func:`_probe`. Returns (result, cause, ms, details)."""
    import asyncio
    from urllib.parse import urlsplit

    from voxbox.host.credentials import CredentialError
    from voxbox.realtime.broker import BrokerError, credential_source
    from voxbox.realtime.dialects import auth_headers, build_url

    rt, b = cfg.realtime, cfg.broker
    det: dict[str, Any] = {"dialect": rt.dialect, "key_source": secret.source}
    what = "API key"
    if b.url:
        what = "broker token"
        try:
            source = credential_source(cfg, secret)
        except (CredentialError, ValueError) as exc:  # no unit id, unusable broker.url
            return "FAIL", f"broker: {exc}", None, det
        det["broker"] = source.url
        t0 = time.monotonic()
        try:
            key = await source.token()
        except BrokerError as exc:
            det.update(broker_status=exc.status, fatal=exc.fatal)
            return "FAIL", f"broker: {exc}", None, det
        det["broker_ms"] = round((time.monotonic() - t0) * 1000, 1)
    else:
        key = await credential_source(cfg, secret).token()
    server = None
    try:
        if rt.url == "local":
            if local_server is None:
                return "FAIL", 'config: realtime.url = "local" needs the local server (`voxbox selftest` starts it)', None, det
            server, base = await asyncio.to_thread(_local_url, cfg, key.value, local_server)
            url = build_url(rt, base)
        else:
            url = build_url(rt, rt.url)
        headers = auth_headers(rt, key.value, url)
        result, cause, ms, pdet = await _probe(url, headers, rt.connect_timeout_s, what)
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
    parts = urlsplit(url)
    return result, cause, ms, {"host": parts.hostname, "port": parts.port, "path": parts.path, **det, **pdet}
