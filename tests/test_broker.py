"""Token-broker mode (voxbox.realtime.broker) against the local test broker (tests/brokerserver.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket

import pytest

from brokerserver import BrokerServer, make_test_pki
from helpers import FakeClock, run
from voxbox.config import Realtime, parse_config
from voxbox.host import sd
from voxbox.host.credentials import CredentialError, Secret
from voxbox.realtime.broker import (
    BrokerError,
    StaticKey,
    TokenBroker,
    check_broker_url,
    credential_source,
    load_connect_secret,
    load_unit_id,
    load_unit_secret,
)

UNIT = "vx-0042"
SECRET = "unit-secret-Zq8wYq3LrT0p"


@pytest.fixture
def broker(clocks):
    """The local broker on the wall clock of ``clocks`` (tests/conftest.py: the unit's
    monotonic and wall clocks; a test advances them together)."""
    with BrokerServer({UNIT: SECRET, "vx-other": "other-secret"}, clock=clocks.wall, ttl_s=100) as b:
        yield b


def client(b: BrokerServer, clocks, **kw) -> TokenBroker:
    mono, wall = clocks
    kw.setdefault("timeout_s", 5)
    return TokenBroker(b.url, kw.pop("unit_id", UNIT), kw.pop("secret", SECRET), clock=mono,
                       wall_clock=wall, **kw)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    # needs the openssl command, which ./dev installs: a missing one is a failure, not a skip
    return make_test_pki(tmp_path_factory.mktemp("pki"))


# ---- fetching and caching -----------------------------------------------------------------
def test_token_fetched_and_cached(broker, clocks):
    tb = client(broker, clocks, request_fields={"model": "gpt-realtime", "dialect": "openai-ga"})

    async def go():
        t1 = await tb.token()
        assert tb.fresh
        t2 = await tb.token()
        assert not tb.fresh
        return t1, t2

    t1, t2 = run(go())
    assert isinstance(t1, Secret) and t1 is t2
    assert t1.value.startswith("ek_") and t1.value in broker.issued
    assert t1.value not in repr(t1) and t1.value not in str(t1)
    assert broker.count == 1 and tb.fetches == 1
    req = broker.requests[0]
    assert req.authorized and req.unit_id == UNIT
    assert req.body["model"] == "gpt-realtime" and req.body["dialect"] == "openai-ga"
    assert req.body["client"].startswith("voxbox/")
    assert SECRET not in json.dumps(req.body)
    assert tb.expires_in() == pytest.approx(100, abs=1)


def test_refreshed_shortly_before_expiry(broker, clocks):
    mono, wall = clocks
    tb = client(broker, clocks, refresh_margin_s=30)

    async def go():
        first = await tb.token()
        for dt in (10, 59):           # 69 s into a 100 s token: still outside the margin
            wall.t += dt
            mono.t += dt
            assert await tb.token() is first
        wall.t += 2
        mono.t += 2                   # 71 s: inside the 30 s margin
        second = await tb.token()
        assert second.value != first.value and tb.fresh
        return first, second

    first, second = run(go())
    assert broker.count == 2
    assert first.value in sd._SECRETS and second.value in sd._SECRETS


def test_only_the_latest_tokens_stay_registered_for_redaction(broker, clocks):
    from voxbox.realtime.broker import REDACT_KEEP

    tb = client(broker, clocks)

    async def go():
        out = []
        for _ in range(REDACT_KEEP + 2):
            out.append((await tb.token()).value)
            tb.invalidate()
        return out

    values = run(go())
    assert [v in sd._SECRETS for v in values] == [False] * 2 + [True] * REDACT_KEEP


def test_short_tokens_are_reused_for_half_their_life(broker, clocks):
    mono, wall = clocks
    broker.ttl_s = 20                  # margin 30 s would never reuse it: half the life instead
    tb = client(broker, clocks, refresh_margin_s=30)

    async def go():
        first = await tb.token()
        mono.t += 9
        wall.t += 9
        assert await tb.token() is first
        mono.t += 2
        wall.t += 2
        assert await tb.token() is not first

    run(go())
    assert broker.count == 2


def test_lifetime_follows_the_broker_clock_not_the_unit_wall_clock(broker, clocks):
    mono, wall = clocks
    unit_wall = FakeClock(wall.t - 86400 * 365)   # unit booted without NTP: a year behind
    tb = TokenBroker(broker.url, UNIT, SECRET, timeout_s=5, clock=mono, wall_clock=unit_wall)
    run(tb.token())
    assert tb.expires_in() == pytest.approx(100, abs=1)


def test_invalidate_forces_a_fresh_token(broker, clocks):
    tb = client(broker, clocks)

    async def go():
        a = await tb.token()
        tb.invalidate()
        b = await tb.token()
        assert a.value != b.value and tb.fresh

    run(go())
    assert broker.count == 2


def test_concurrent_callers_share_one_fetch(broker, clocks):
    broker.delay_s = 0.2
    tb = client(broker, clocks)

    async def go():
        return await asyncio.gather(*(tb.token() for _ in range(5)))

    tokens = run(go())
    assert len({t.value for t in tokens}) == 1 and broker.count == 1


# ---- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("unit_id,secret", [(UNIT, "wrong-secret-xyz"), ("vx-unknown", SECRET),
                                            ("vx-other", SECRET)])
def test_refused_unit_secret_is_fatal(broker, clocks, unit_id, secret):
    tb = client(broker, clocks, unit_id=unit_id, secret=secret)
    with pytest.raises(BrokerError) as exc:
        run(tb.token())
    e = exc.value
    assert e.fatal and e.status == 401 and e.url == broker.url
    assert broker.url in str(e) and "401" in str(e) and "unit secret refused" in str(e)
    assert secret not in str(e) and SECRET not in str(e)


@pytest.mark.parametrize("status,fatal", [(500, False), (502, False), (503, False), (429, False),
                                          (408, False), (403, True), (404, True), (400, True)])
def test_http_errors_transient_or_fatal(broker, clocks, status, fatal):
    broker.fail_status = status
    tb = client(broker, clocks)
    with pytest.raises(BrokerError) as exc:
        run(tb.token())
    assert exc.value.status == status and exc.value.fatal is fatal
    assert f"HTTP {status}" in str(exc.value) and broker.url in str(exc.value)
    broker.fail_status = None        # recovers on the next call
    assert run(tb.token()).value.startswith("ek_")


def test_retry_after_is_reported(broker, clocks):
    broker.fail_status = 503
    broker.state.retry_after = "7"
    with pytest.raises(BrokerError) as exc:
        run(client(broker, clocks).token())
    assert not exc.value.fatal and exc.value.retry_after == 7.0


def test_unreachable_broker_is_transient(clocks):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                       # nothing listens there now
    mono, wall = clocks
    tb = TokenBroker(f"http://127.0.0.1:{port}/token", UNIT, SECRET, timeout_s=2, clock=mono,
                     wall_clock=wall)
    with pytest.raises(BrokerError) as exc:
        run(tb.token())
    assert not exc.value.fatal and exc.value.status is None
    assert "cannot reach" in str(exc.value) and f"127.0.0.1:{port}" in str(exc.value)


def test_slow_broker_times_out_as_transient(broker, clocks):
    broker.delay_s = 2.0
    tb = client(broker, clocks, timeout_s=0.3)
    with pytest.raises(BrokerError) as exc:
        run(tb.token())
    assert not exc.value.fatal and "no answer within 0.3 s" in str(exc.value)


@pytest.mark.parametrize("answer,needle", [
    (b"not json", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"expires_at": 1}', "no usable 'value'"),
    (b'{"value": "ek_x\\r\\nX-Evil: 1", "expires_at": 9999999999}', "no usable 'value'"),
    (b'{"value": "ek_x", "expires_at": "soon"}', "numeric 'expires_at'"),
    (b'{"value": "ek_x", "expires_at": 1000}', "already expired"),
])
def test_malformed_answers_are_transient_errors(answer, needle):
    tb = TokenBroker("http://127.0.0.1:9/t", UNIT, SECRET, timeout_s=1, wall_clock=lambda: 2000.0)
    with pytest.raises(BrokerError) as exc:
        tb._parse(answer, None, 200)
    assert needle in str(exc.value) and not exc.value.fatal


def test_nested_client_secret_shape_accepted():
    tb = TokenBroker("http://127.0.0.1:9/t", UNIT, SECRET, timeout_s=1, wall_clock=lambda: 2000.0)
    value, lifetime = tb._parse(b'{"client_secret": {"value": "ek_n", "expires_at": 2060}}', None, 200)
    assert value == "ek_n" and lifetime == 60
    sd.forget("ek_n")


def test_constructor_refuses_unsafe_urls_and_empty_values():
    with pytest.raises(ValueError, match="loopback"):
        TokenBroker("http://fleet.example.com/token", UNIT, SECRET, timeout_s=1)
    with pytest.raises(ValueError, match="https"):
        TokenBroker("ftp://fleet.example.com/token", UNIT, SECRET, timeout_s=1)
    with pytest.raises(ValueError, match="user info"):
        TokenBroker("https://u:p@fleet.example.com/token", UNIT, SECRET, timeout_s=1)
    with pytest.raises(ValueError, match="unit secret"):
        TokenBroker("https://fleet.example.com/token", UNIT, "", timeout_s=1)
    with pytest.raises(ValueError, match="unit_id"):
        TokenBroker("https://fleet.example.com/token", "", SECRET, timeout_s=1)
    tb = TokenBroker("https://fleet.example.com/token?x=secretquery", UNIT, Secret(SECRET), timeout_s=1)
    assert tb.url == "https://fleet.example.com/token" and SECRET not in repr(tb)


@pytest.mark.parametrize("url", [
    "https://fleet.example.com/token", "https://fleet.example.com:8443/t?x=1", "http://127.0.0.1:8080/t",
    "http://127.9.8.7/t", "http://localhost/t", "http://[::1]:9/t",
])
def test_check_broker_url_accepts(url):
    assert check_broker_url(url) is None
    TokenBroker(url, UNIT, SECRET, timeout_s=1)  # the constructor agrees


@pytest.mark.parametrize("url, needle", [
    ("http://localhost.example.com/t", "loopback"),       # a prefix check accepted these
    ("http://127.0.0.1@evil.example/t", "loopback"),
    ("http://127.0.0.1.evil.example/t", "loopback"),
    ("https://user:pw@b.example/t", "user info"),
    ("https://@b.example/t", "user info"),
    ("ftp://b.example/t", "https"),
    ("https:///t", "https"),
    ("", "https"),
    ("https://b.example:99999/t", "not a valid URL"),
    ("https://u:pw123456@b.example:abc/t?k=v", "not a valid URL"),
    ("http://[::1/t", "not a valid URL"),
])
def test_check_broker_url_refuses(url, needle):
    why = check_broker_url(url)
    assert why and needle in why, why
    assert "pw123456" not in why and "k=v" not in why and "pw@" not in why
    with pytest.raises(ValueError) as exc:
        TokenBroker(url, UNIT, SECRET, timeout_s=1)
    assert str(exc.value) == why


def test_error_detail_scrubs_the_unit_secret():
    tb = TokenBroker("http://127.0.0.1:9/t", UNIT, SECRET, timeout_s=1)
    detail = tb._error_detail(json.dumps({"error": {"message": f"bad secret {SECRET} for {UNIT}"}}).encode())
    assert SECRET not in detail and "<redacted>" in detail and UNIT in detail


# ---- the connect credential for the configured mode --------------------------------------
def test_load_connect_secret_direct_mode():
    cfg = parse_config({"realtime": {"url": "wss://api.example.com/v1/realtime"}})
    key = load_connect_secret(cfg, {"VOXBOX_API_KEY": "sk-k", "VOXBOX_UNIT_SECRET": SECRET})
    assert key.value == "sk-k" and key.source == "env:VOXBOX_API_KEY"
    with pytest.raises(CredentialError, match="VOXBOX_API_KEY"):
        load_connect_secret(cfg, {"VOXBOX_UNIT_SECRET": SECRET})
    assert load_connect_secret(cfg, {}, required=False) == Secret("", "none")
    local = parse_config({"realtime": {"url": "local"}})
    assert load_connect_secret(local, {}).value == ""  # the local server needs no key


def test_load_connect_secret_broker_mode(monkeypatch, tmp_path):
    url = "https://fleet.example.com/token"
    cfg = parse_config({"realtime": {"url": "local"}, "broker": {"url": url, "unit_id": UNIT}})
    s = load_connect_secret(cfg, {"VOXBOX_API_KEY": "sk-k", "VOXBOX_UNIT_SECRET": SECRET})
    assert s.value == SECRET and s.source == "env:VOXBOX_UNIT_SECRET"
    # the unit secret is required even with url = "local"; the API key does not stand in
    with pytest.raises(CredentialError, match="VOXBOX_UNIT_SECRET"):
        load_connect_secret(cfg, {"VOXBOX_API_KEY": "sk-k"})
    assert load_connect_secret(cfg, {"VOXBOX_API_KEY": "sk-k"}, required=False) == Secret("", "none")
    # no broker.unit_id: the identity file must name the unit (when required)
    no_id = parse_config({"broker": {"url": url}})
    seen = []

    def missing_identity(path=None):
        seen.append(path)
        raise CredentialError("no unit identity (set broker.unit_id or provision the unit)")

    monkeypatch.setattr("voxbox.realtime.broker.load_unit_id", missing_identity)
    with pytest.raises(CredentialError, match="no unit identity"):
        load_connect_secret(no_id, {"VOXBOX_UNIT_SECRET": SECRET})
    assert load_connect_secret(no_id, {"VOXBOX_UNIT_SECRET": SECRET}, required=False).value == SECRET
    monkeypatch.setattr("voxbox.realtime.broker.load_unit_id", lambda: "vx-from-identity")
    assert load_connect_secret(no_id, {"VOXBOX_UNIT_SECRET": SECRET}).value == SECRET


def test_credential_source(monkeypatch):
    key = Secret("sk-k", "env")
    direct = credential_source(parse_config({}), key)
    assert isinstance(direct, StaticKey) and run(direct.token()) is key
    cfg = parse_config({"realtime": {"connect_timeout_s": 40, "model": "gpt-x", "dialect": "openai-beta"},
                        "broker": {"url": "https://fleet.example.com/t", "unit_id": UNIT, "timeout_s": 3,
                                   "refresh_margin_s": 10}})
    tb = credential_source(cfg, Secret(SECRET, "env"))
    assert isinstance(tb, TokenBroker) and tb.unit_id == UNIT and tb.timeout_s == 3
    assert tb.refresh_margin_s == 45  # at least connect_timeout_s + 5
    assert tb._fields == {"model": "gpt-x", "dialect": "openai-beta"}
    monkeypatch.setattr("voxbox.realtime.broker.load_unit_id", lambda: "vx-from-identity")
    cfg2 = parse_config({"broker": {"url": "https://fleet.example.com/t"}})
    assert credential_source(cfg2, Secret(SECRET, "env")).unit_id == "vx-from-identity"


# ---- TLS ----------------------------------------------------------------------------------
@pytest.fixture
def tls_broker(pki, clocks):
    with BrokerServer({UNIT: SECRET}, certfile=pki.cert_file, keyfile=pki.key_file, clock=clocks.wall) as b:
        yield b


def test_tls_with_fleet_ca_file(tls_broker, pki, clocks):
    assert tls_broker.url.startswith("https://")
    tb = client(tls_broker, clocks, ca_file=pki.ca_file)
    assert run(tb.token()).value in tls_broker.issued


def test_tls_without_ca_file_fails_fatal(tls_broker, clocks):
    tb = client(tls_broker, clocks)   # system store: the test CA is not in it
    with pytest.raises(BrokerError) as exc:
        run(tb.token())
    assert exc.value.fatal and "not trusted" in str(exc.value) and "ca_file" in str(exc.value)
    assert tls_broker.count == 0      # the secret never left the unit


def test_tls_with_the_wrong_ca_fails_fatal(tls_broker, pki, clocks):
    tb = client(tls_broker, clocks, ca_file=pki.other_ca_file)
    with pytest.raises(BrokerError) as exc:
        run(tb.token())
    assert exc.value.fatal and "not trusted" in str(exc.value)
    assert tls_broker.count == 0


# ---- logs ---------------------------------------------------------------------------------
def test_secret_and_token_never_in_logs(broker, clocks, caplog):
    """Neither the raw records (caplog) nor the formatted text/JSON output carry them."""
    mono, wall = clocks
    out = io.StringIO()
    handlers = []
    for fmt in (sd.TextFormatter(), sd.JsonFormatter()):
        h = logging.StreamHandler(out)
        h.setFormatter(fmt)
        handlers.append(h)
    lg = logging.getLogger("voxbox")
    for h in handlers:
        lg.addHandler(h)
    old = lg.level
    lg.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    tokens = []
    try:
        tb = client(broker, clocks)
        tokens.append(run(tb.token()).value)
        wall.t += 90
        mono.t += 90
        tokens.append(run(tb.token()).value)
        broker.fail_status = 500
        tb.invalidate()
        with pytest.raises(BrokerError):
            run(tb.token())
        broker.fail_status = None
        bad = client(broker, clocks, secret="wrong-" + SECRET)
        with pytest.raises(BrokerError):
            run(bad.token())
        logging.getLogger("voxbox.test").info("the unit uses %s and %s", tb.unit_id, tokens)
    finally:
        for h in handlers:
            lg.removeHandler(h)
        lg.setLevel(old)
    text = out.getvalue()
    assert "Realtime token from the broker" in text and "HTTP 500" in text and "HTTP 401" in text
    for s in (SECRET, *tokens):
        assert s not in text
        assert all(s not in r.getMessage() for r in caplog.records if r.name.startswith("voxbox.realtime.broker"))
    assert "<redacted>" in text        # the deliberate leak above was scrubbed (current token)


# ---- credentials --------------------------------------------------------------------------
def test_load_unit_secret(tmp_path):
    (tmp_path / "voxbox-unit-secret").write_text(SECRET + "\n")
    s = load_unit_secret({"CREDENTIALS_DIRECTORY": str(tmp_path), "VOXBOX_UNIT_SECRET": "env"})
    assert s.value == SECRET and s.source == "credential:voxbox-unit-secret" and SECRET not in repr(s)
    assert load_unit_secret({"VOXBOX_UNIT_SECRET": " e "}).value == "e"
    assert load_unit_secret({}, required=False).value == ""
    with pytest.raises(CredentialError, match="voxbox-unit-secret"):
        load_unit_secret({"CREDENTIALS_DIRECTORY": str(tmp_path / "none")})
    (tmp_path / "voxbox-unit-secret").write_text("  \n")
    with pytest.raises(CredentialError, match="empty"):
        load_unit_secret({"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_load_unit_id(tmp_path):
    p = tmp_path / "identity.toml"
    p.write_text('serial = "vx-0042"\nfleet = "acme"\n')
    assert load_unit_id(p) == "vx-0042"
    p.write_text('fleet = "acme"\n')
    with pytest.raises(CredentialError, match="no serial"):
        load_unit_id(p)
    with pytest.raises(CredentialError, match="no unit identity"):
        load_unit_id(tmp_path / "missing.toml")


def test_static_key_has_the_broker_interface():
    k = StaticKey(Secret("sk-x", "env"))
    assert run(k.token()).value == "sk-x" and not k.fresh
    k.invalidate()


# ---- end to end: broker token opens a Realtime session ------------------------------------
def test_broker_token_opens_a_local_realtime_session(tls_broker, pki, clocks):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from voxbox.parrot.server import LocalRealtimeServer
    from voxbox.realtime.dialects import auth_headers, build_url

    mono, wall = clocks
    rt = Realtime()

    async def session(server, key: str):
        url = build_url(rt, server.url)
        ws = await connect(url, additional_headers=auth_headers(rt, key, url), max_size=None)
        first = json.loads(await ws.recv())
        if first["type"] == "error":
            with pytest.raises(ConnectionClosed) as exc:
                await ws.recv()
            return first["error"]["code"], exc.value.rcvd.code
        await ws.close()
        return first["type"], None

    async def go():
        server = LocalRealtimeServer(accept_key=tls_broker.accept)
        await server.start()
        try:
            tb = client(tls_broker, clocks, ca_file=pki.ca_file, refresh_margin_s=10)
            token = await tb.token()
            assert await session(server, token.value) == ("session.created", None)
            # the same token opens further sessions until it nears expiry
            assert await session(server, (await tb.token()).value) == ("session.created", None)
            assert tls_broker.count == 1
            # a token the broker never issued, and the account-key path with no key
            assert await session(server, "ek_forged") == ("invalid_api_key", 3000)
            assert await session(server, "") == ("invalid_api_key", 3000)
            # an expired token is refused by the service; the client has already moved on
            wall.t += 601             # past the 600 s lifetime
            mono.t += 601
            assert await session(server, token.value) == ("invalid_api_key", 3000)
            fresh = await tb.token()
            assert fresh.value != token.value and tb.fresh
            assert await session(server, fresh.value) == ("session.created", None)
            assert [c.auth for c in server.record.connections()][:1] == ["bearer"]
        finally:
            await server.stop()

    run(go())
