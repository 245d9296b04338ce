"""Short-lived Realtime credentials from the fleet's token broker.

Instead of holding the account's long-lived API key, a unit can hold only a per-unit secret
(systemd credential ``voxbox-unit-secret``, provisioned with ``[secrets.voxbox-unit-secret]
source = "generate"``) and ask the fleet's own HTTPS endpoint for a short-lived Realtime
token before each session. This is the pattern the services document for clients that must
not hold the account key ("ephemeral keys", OpenAI ``POST /v1/realtime/client_secrets``):
the broker holds the account key, mints a client secret and hands it to the unit. A leaked
unit secret is revoked at the broker for that one unit; a leaked token expires by itself.

Protocol (what a fleet broker implements)
=========================================

Request::

    POST <broker url>
    Authorization: Bearer <unit secret>
    Content-Type: application/json
    User-Agent: voxbox/<version>

    {"unit_id": "<serial>", "client": "voxbox/<version>", ...request_fields}

``request_fields`` are added by the caller (the daemon sends ``model`` and ``dialect`` so a
broker serving several kinds of unit can mint for the right model).

Success: HTTP 200 with a JSON object ``{"value": "<token>", "expires_at": <unix s>}`` --
the shape of OpenAI's ``client_secrets`` response (``openai.types.realtime.
ClientSecretCreateResponse``: ``value``, ``expires_at``, ``session``), so a broker may pass
the service's answer through unchanged. The older sessions shape ``{"client_secret":
{"value", "expires_at"}}`` is accepted too. Other fields are ignored.

Per the OpenAI SDK (``ClientSecretCreateParams.expires_after``): the expiry only limits
*creating* sessions -- "the session itself may continue after that time once started", and
one secret "can be used to create multiple sessions until it expires" (10 s to 2 h, default
10 min). So a token only has to be valid at the WebSocket handshake, and one token is
reused for reconnects until shortly before it expires.

Why a bearer secret and not an HMAC-signed, timestamped body
------------------------------------------------------------
- TLS (verified, on by default) already gives confidentiality and replay protection on the
  wire; plain ``http://`` is refused except to a loopback address (tests).
- A Raspberry Pi has no real-time clock: until NTP has synchronised, its clock is wherever
  fake-hwclock left it. A timestamp window would make the broker refuse the unit after a
  cold boot, and a refusal is (rightly) a *fatal* error that puts the unit in slow retry.
- With a bearer secret the broker can store only a hash of each unit secret (HMAC would
  force it to keep every secret in clear) and any backend can implement it in a few lines.
The cost: the secret reaches whatever terminates TLS at the fleet end. Brokers must not log
the ``Authorization`` header.

Redirects are not followed (a redirect would carry the secret to another origin); proxies
(``HTTPS_PROXY``) are not used.

Errors
======

:class:`BrokerError` names the URL (without query or user info) and the HTTP status or cause.
``fatal`` is True when retrying soon cannot help and must not be hammered: HTTP 401/403 (the
unit secret is refused), any other 4xx except 408/429 (wrong URL or request), a TLS
certificate that does not verify (wrong ``ca_file`` or an impostor), and a refused unit
secret. Everything else -- 5xx, 408, 429, timeouts, connection errors, a malformed answer --
is transient (``retry_after`` carries ``Retry-After`` when the broker sent one).

Expiry is measured against the broker's own clock: the token's lifetime is ``expires_at``
minus the response's ``Date`` header (the unit's wall clock only when there is no ``Date``),
and the cache deadline runs on ``clock`` (monotonic by default), so a unit whose wall clock
is wrong or jumps at NTP sync neither uses an expired token nor refetches on every session.
"""

from __future__ import annotations

import asyncio
import email.utils
import http.client
import json
import logging
import os
import socket
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping
from urllib.parse import urlsplit

from voxbox import __version__
from voxbox.config import check_broker_url, public_url  # noqa: F401 (check_broker_url re-exported)
from voxbox.errors import BrokerError  # noqa: F401 (re-exported)
from voxbox.host import sd
from voxbox.host.credentials import CredentialError, Secret, load_api_key, load_credential

if TYPE_CHECKING:
    from voxbox.config import Config

log = logging.getLogger("voxbox.realtime.broker")

UNIT_SECRET_CREDENTIAL = "voxbox-unit-secret"
UNIT_SECRET_ENV = "VOXBOX_UNIT_SECRET"
DEFAULT_IDENTITY_PATH = Path("/etc/voxbox/identity.toml")
MAX_RESPONSE_BYTES = 64 * 1024
REDACT_KEEP = 4
"""How many of the latest tokens stay registered with :func:`voxbox.host.sd.redact`."""

_TRANSIENT_4XX = frozenset({408, 429})


def load_unit_secret(environ: Mapping[str, str] | None = None, required: bool = True) -> Secret:
    """The per-unit broker secret, mirroring :func:`voxbox.host.credentials.load_api_key`.

    Order: ``$CREDENTIALS_DIRECTORY/voxbox-unit-secret`` (systemd ``LoadCredential=``), then
    the environment variable ``VOXBOX_UNIT_SECRET``.

    Raises:
        CredentialError: no secret (when ``required``), an empty or unreadable credential file.
    """
    return load_credential(UNIT_SECRET_CREDENTIAL, UNIT_SECRET_ENV, "unit secret for the token broker",
                           None if environ is None else dict(environ), required)


def load_unit_id(path: Path | str = DEFAULT_IDENTITY_PATH) -> str:
    """The unit's id for the broker: ``serial`` from ``identity.toml`` (written by
    ``voxbox provision``, installed by first boot).

    Raises:
        CredentialError: the file is missing, unreadable, not TOML or has no serial.
    """
    from voxbox.config import read_toml  # here, not at module level: config imports this module

    path = Path(path)
    data = read_toml(path, "unit identity", CredentialError,
                     missing="no unit identity (set broker.unit_id or provision the unit)")
    serial = data.get("serial")
    if not isinstance(serial, str) or not serial.strip():
        raise CredentialError(f"{path}: unit identity has no serial")
    return serial.strip()


def load_connect_secret(cfg: Config, environ: Mapping[str, str] | None = None,
                        required: bool = True) -> Secret:
    """The credential the unit connects with, for the configured mode.

    - Token-broker mode (``broker.url`` set): the per-unit secret (:func:`load_unit_secret`).
      With ``required``, a missing secret raises, and so does a missing unit id when
      ``broker.unit_id`` is empty (:func:`load_unit_id` reads ``identity.toml``), checked
      first: a secret without an id cannot get a token.
    - Otherwise: the Realtime API key (:func:`voxbox.host.credentials.load_api_key`). With
      ``required`` it raises when missing, except for ``realtime.url = "local"`` (the local
      server needs no key).

    With ``required=False`` (the daemon polling for a credential delivered later) nothing
    missing raises: the result is then an empty ``Secret("", "none")``. Never returns None.

    Raises:
        CredentialError: see above; also an empty or unreadable credential file (always).
    """
    env = None if environ is None else dict(environ)
    if cfg.broker.url:
        if required and not cfg.broker.unit_id:
            load_unit_id()  # raises naming /etc/voxbox/identity.toml
        return load_unit_secret(env, required=required)
    return load_api_key(env, required=required and cfg.realtime.url != "local")


def credential_source(cfg: Config, secret: Secret) -> StaticKey | TokenBroker:
    """What to connect with, as one interface (``await .token()``, ``.invalidate()``,
    ``.fresh``): ``secret`` as is (:class:`StaticKey`), or in token-broker mode a
    :class:`TokenBroker` for ``broker.url`` that holds ``secret`` as the unit secret and asks
    for a token per session (unit id ``broker.unit_id``, else :func:`load_unit_id`).

    The broker's refresh margin is at least ``realtime.connect_timeout_s + 5`` so a cached
    token cannot expire during a handshake; the request carries ``model`` (the deployment
    when set) and ``dialect``. Nothing is fetched here.

    Raises:
        CredentialError: broker mode, no ``broker.unit_id`` and no usable identity file.
        ValueError: broker mode with an unusable URL (:func:`check_broker_url`), an empty
            secret or unit id.
    """
    b = cfg.broker
    if not b.url:
        return StaticKey(secret)
    rt = cfg.realtime
    return TokenBroker(b.url, b.unit_id or load_unit_id(), secret,
                       timeout_s=b.timeout_s, ca_file=b.ca_file or None,
                       refresh_margin_s=max(b.refresh_margin_s, rt.connect_timeout_s + 5),
                       request_fields={"model": rt.deployment or rt.model, "dialect": rt.dialect})


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class StaticKey:
    """The long-lived API key behind the same interface as :class:`TokenBroker`, so the
    daemon can ask one object for "the credential to connect with" in both modes."""

    def __init__(self, key: Secret):
        self.key = key

    async def token(self) -> Secret:
        return self.key

    def invalidate(self) -> None:
        pass

    @property
    def fresh(self) -> bool:
        return False


class TokenBroker:
    """Fetches and caches short-lived Realtime tokens from the fleet's broker.

    Args:
        url: ``https://...`` (``http://`` only to a loopback address).
        unit_id: this unit's id (its serial, see :func:`load_unit_id`).
        unit_secret: the per-unit secret (:func:`load_unit_secret`); a ``str`` is wrapped.
        timeout_s: limit for the whole request (connect, TLS, answer).
        ca_file: PEM file of the CA(s) to trust *instead of* the system store (a fleet CA).
        clock: monotonic seconds; the cache deadline runs on it.
        wall_clock: unix seconds; used only when the broker sends no ``Date`` header.
        refresh_margin_s: a cached token with less life than this left is replaced (at most
            half the token's lifetime, so short tokens are still reused). Keep it above the
            WebSocket open timeout.
        request_fields: extra JSON fields for the request body (e.g. model, dialect).
    """

    def __init__(self, url: str, unit_id: str, unit_secret: Secret | str, *, timeout_s: float,
                 ca_file: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 refresh_margin_s: float = 30.0,
                 request_fields: Mapping[str, Any] | None = None):
        problem = check_broker_url(url)
        if problem:
            raise ValueError(problem)
        parts = urlsplit(url)
        self.url = public_url(url)
        if not unit_id:
            raise ValueError("broker: empty unit_id")
        secret = unit_secret if isinstance(unit_secret, Secret) else Secret(unit_secret, "argument")
        if not secret.value:
            raise ValueError("broker: empty unit secret")
        if timeout_s <= 0:
            raise ValueError("broker: timeout_s must be > 0")
        sd.redact(secret.value)
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.unit_id = unit_id
        self._secret = secret
        self.timeout_s = float(timeout_s)
        self.ca_file = str(ca_file) if ca_file else None
        self._clock = clock
        self._wall = wall_clock
        self.refresh_margin_s = float(refresh_margin_s)
        self._fields = dict(request_fields or {})
        self._ssl: ssl.SSLContext | None = None
        if self._scheme == "https":
            # cafile given: trust only it (the fleet CA); else the system store
            self._ssl = ssl.create_default_context(cafile=self.ca_file)
        self._token: Secret | None = None
        self._refresh_at = 0.0   # clock time after which the cached token is not handed out
        self._expires_at = 0.0   # clock time at which the broker says it expires
        self._fresh = False
        self._lock = asyncio.Lock()
        self._redacted: list[str] = []
        self.fetches = 0

    def __repr__(self) -> str:
        return f"TokenBroker({self.url!r}, unit_id={self.unit_id!r})"

    @property
    def fresh(self) -> bool:
        """True when the last :meth:`token` result was fetched by that call (not cached): a
        service refusing a fresh token is a real refusal, not an expired cache."""
        return self._fresh

    def expires_in(self) -> float | None:
        """Seconds until the cached token expires (None when nothing is cached)."""
        if self._token is None:
            return None
        return self._expires_at - self._clock()

    def invalidate(self) -> None:
        """Drop the cached token (the service refused it): the next :meth:`token` fetches."""
        self._drop()

    def _drop(self) -> None:
        self._token = None

    def _remember(self, value: str) -> None:
        # sd.redact keeps every secret and scans each log record for all of them: keep only
        # the last REDACT_KEEP tokens registered (older ones have long expired).
        self._redacted.append(value)
        while len(self._redacted) > REDACT_KEEP:
            sd.forget(self._redacted.pop(0))

    async def token(self) -> Secret:
        """A Realtime token valid for at least the refresh margin, from cache or the broker.

        Raises:
            BrokerError: with ``fatal`` set for refusals and configuration errors.
        """
        async with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                self._fresh = False
                return self._token
            self._drop()
            try:
                value, lifetime = await asyncio.wait_for(asyncio.to_thread(self._fetch),
                                                         self.timeout_s + 1.0)
            except asyncio.TimeoutError:
                raise BrokerError(self.url, f"no answer within {self.timeout_s:g} s") from None
            except BrokerError as exc:
                log.warning("%s", exc, extra={"VOXBOX_EVENT": "broker_error",
                                              "VOXBOX_CAUSE": exc.cause,
                                              "VOXBOX_FATAL": exc.fatal})
                raise
            now = self._clock()
            margin = min(self.refresh_margin_s, lifetime / 2)
            self._remember(value)
            self._token = Secret(value, f"broker:{self.url}")
            self._expires_at = now + lifetime
            self._refresh_at = now + lifetime - margin
            self._fresh = True
            self.fetches += 1
            log.info("Realtime token from the broker, valid %.0f s", lifetime,
                     extra={"VOXBOX_EVENT": "broker_token", "VOXBOX_TTL_S": round(lifetime)})
            return self._token

    # ---- blocking part, run in a worker thread ----------------------------------------------
    def _fetch(self) -> tuple[str, float]:
        body = json.dumps({**self._fields, "unit_id": self.unit_id,
                           "client": f"voxbox/{__version__}"}).encode()
        headers = {
            "Authorization": f"Bearer {self._secret.value}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"voxbox/{__version__}",
        }
        conn: http.client.HTTPConnection
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout_s,
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
        try:
            try:
                conn.request("POST", self._path, body=body, headers=headers)
                resp = conn.getresponse()
                status = resp.status
                data = resp.read(MAX_RESPONSE_BYTES + 1)
            except ssl.SSLCertVerificationError as exc:
                raise BrokerError(self.url, f"TLS certificate not trusted: {exc.verify_message}"
                                  + ("" if self.ca_file else " (no broker.ca_file set)"),
                                  fatal=True) from None
            except ssl.SSLError as exc:
                raise BrokerError(self.url, f"TLS error: {exc.reason or exc}") from None
            except (socket.timeout, TimeoutError):
                raise BrokerError(self.url, f"no answer within {self.timeout_s:g} s") from None
            except (OSError, http.client.HTTPException) as exc:
                cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
                raise BrokerError(self.url, f"cannot reach the broker: {cause}") from None
        finally:
            conn.close()
        date = resp.getheader("Date")
        if status != 200:
            fatal = 400 <= status < 500 and status not in _TRANSIENT_4XX
            reason = {401: "unit secret refused", 403: "unit refused"}.get(status) or resp.reason or "error"
            detail = self._error_detail(data)
            raise BrokerError(self.url, reason + (f" ({detail})" if detail else ""), status=status,
                              fatal=fatal, retry_after=_retry_after(resp.getheader("Retry-After")))
        if len(data) > MAX_RESPONSE_BYTES:
            raise BrokerError(self.url, "answer too large", status=status)
        return self._parse(data, date, status)

    def _error_detail(self, data: bytes) -> str:
        text = data[:2000].decode("utf-8", "replace")
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            err = obj.get("error")
            if isinstance(err, dict):
                err = err.get("message") or err.get("code")
            text = str(err or obj.get("message") or "")
        # the unit secret was registered with sd.redact in __init__, tokens before logging
        return sd.scrub(" ".join(text.split())[:120])

    def _parse(self, data: bytes, date: str | None, status: int) -> tuple[str, float]:
        try:
            obj = json.loads(data)
        except ValueError:
            raise BrokerError(self.url, "answer is not JSON", status=status) from None
        if isinstance(obj, dict) and isinstance(obj.get("client_secret"), dict):
            obj = obj["client_secret"]
        if not isinstance(obj, dict):
            raise BrokerError(self.url, "answer is not a JSON object", status=status)
        value, expires_at = obj.get("value"), obj.get("expires_at")
        if not isinstance(value, str) or not value.strip() or any(c in value for c in "\r\n"):
            raise BrokerError(self.url, "answer has no usable 'value'", status=status)
        value = value.strip()
        sd.redact(value)  # before anything could log it
        if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
            raise BrokerError(self.url, "answer has no numeric 'expires_at'", status=status)
        server_now = None
        if date:
            try:
                server_now = email.utils.parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                server_now = None
        lifetime = float(expires_at) - (server_now if server_now is not None else self._wall())
        if lifetime <= 0:
            sd.forget(value)
            raise BrokerError(self.url, f"token already expired (expires_at {expires_at})", status=status)
        return value, lifetime

