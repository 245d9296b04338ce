"""Log redaction (issue 16): secrets are removed before a record is serialized, in every
form (raw, base64, URL-encoded, JSON-escaped), from the message, the exception and every
field value, by the text, JSON and journal outputs alike."""

from __future__ import annotations

import base64
import json
import logging
import re
import urllib.parse

import pytest

from voxbox.host import sd  # CR/LF, quotes and a backslash: what JSON escaping changed after the old post-json.dumps

# scrub; '/', '+' and '=' change under URL and base64 encoding; length 41 (not a multiple of
# 3) gives base64 padding
SECRET = 'sk-"quo\\te\r\nline/slash+plus=0123456789ab'
assert len(SECRET.encode()) % 3


def _forms(secret: str) -> dict[str, str]:
    raw = secret.encode()
    return {
        "raw": secret,
        "json": json.dumps(secret)[1:-1],
        "json-utf8": json.dumps(secret, ensure_ascii=False)[1:-1],
        "repr": repr(secret)[1:-1],
        "b64": base64.b64encode(raw).decode(),
        "b64-nopad": base64.b64encode(raw).decode().rstrip("="),
        "b64url": base64.urlsafe_b64encode(raw).decode(),
        "b64url-nopad": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "url": urllib.parse.quote(secret, safe=""),
        "url-lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), urllib.parse.quote(secret, safe="")),
        "url-plus": urllib.parse.quote_plus(secret),
        "url-path": urllib.parse.quote(secret),
    }


def _leaks(text: str, secret: str = SECRET) -> list[str]:
    """Names of the forms of ``secret`` found in ``text``, also inside an encoded blob."""
    found = [name for name, form in _forms(secret).items() if form in text]
    # embedded in a larger base64 blob (HTTP Basic "user:secret"): the middle of the encoding
    blob = base64.b64encode(b"api:" + secret.encode()).decode()
    if blob[8:-4] in text:
        found.append("b64-embedded")
    return found


@pytest.fixture
def secret():
    sd.redact(SECRET)
    try:
        yield SECRET
    finally:
        sd.forget(SECRET)


def _record(form_names: list[str]) -> logging.LogRecord:
    forms = _forms(SECRET)
    msg = " | ".join(f"{n}=%s" for n in form_names)
    rec = logging.LogRecord("voxbox.realtime.link", logging.ERROR, __file__, 1, msg, tuple(forms[n] for n in form_names), None)
    rec.VOXBOX_EVENT = "link_down"
    rec.VOXBOX_CAUSE = f"Authorization: Bearer {SECRET}"
    rec.VOXBOX_HEADER = "Basic " + base64.b64encode(b"api:" + SECRET.encode()).decode()
    rec.VOXBOX_URL = "wss://h.example/rt?api-key=" + forms["url"]
    rec.VOXBOX_DETAIL = {"headers": {"api-key": SECRET}}  # not a str: logged as str() (repr)
    rec.VOXBOX_TURN = 3
    try:
        raise ValueError(f"invalid header value {SECRET!r}")
    except ValueError:
        import sys

        rec.exc_info = sys.exc_info()
    return rec


def test_json_log_redacts_every_form_before_serialization(secret):
    names = list(_forms(SECRET))
    line = sd.JsonFormatter().format(_record(names))
    assert "\n" not in line
    out = json.loads(line)  # still valid JSON: nothing was replaced inside an escape
    # neither the line nor any decoded value holds any form of the secret
    assert _leaks(line) == []
    for k, v in out.items():
        assert _leaks(str(v)) == [], (k, v)
    assert out["msg"] == " | ".join(f"{n}={sd.REDACTED}" for n in names)
    assert out["VOXBOX_CAUSE"] == f"Authorization: Bearer {sd.REDACTED}"
    assert out["VOXBOX_URL"] == f"wss://h.example/rt?api-key={sd.REDACTED}"
    assert out["VOXBOX_TURN"] == 3 and out["VOXBOX_EVENT"] == "link_down"
    assert sd.REDACTED in out["VOXBOX_DETAIL"] and sd.REDACTED in out["exception"]
    assert "invalid header value" in out["exception"]


def test_text_and_journal_outputs_redact_every_form(secret, monkeypatch):
    names = list(_forms(SECRET))
    text = sd.TextFormatter().format(_record(names))
    assert _leaks(text) == [] and text.count(sd.REDACTED) >= len(names)

    sent: list[tuple[str, dict]] = []
    handler = sd.JournalHandler.__new__(sd.JournalHandler)  # without systemd-python
    logging.Handler.__init__(handler)
    handler._send = lambda msg, **fields: sent.append((msg, fields))
    handler.emit(_record(names))
    msg, fields = sent[0]
    assert _leaks(msg) == [] and "invalid header value" in msg  # the exception text too
    for k, v in fields.items():
        assert _leaks(v) == [], (k, v)


def test_forms_are_computed_once_at_registration_and_forgotten(monkeypatch):
    other = "tok-\r\n-second-secret-42"
    sd.redact(SECRET)
    sd.redact(other)
    try:
        assert set(_forms(SECRET).values()) <= set(sd._FORMS)
        assert list(sd._FORMS) == sorted(sd._FORMS, key=len, reverse=True)  # longest first

        def recompute(_):  # scrub and the formatters must not recompute forms per record
            raise AssertionError("secret forms recomputed while logging")

        monkeypatch.setattr(sd, "secret_forms", recompute)
        assert sd.scrub(f"a {_forms(other)['b64']} b {_forms(SECRET)['json']}") == f"a {sd.REDACTED} b {sd.REDACTED}"
        sd.JsonFormatter().format(_record(["raw"]))
        monkeypatch.undo()
    finally:
        sd.forget(SECRET)
    # the other secret is still redacted, the forgotten one in none of its forms
    assert not set(_forms(SECRET).values()) & set(sd._FORMS)
    assert sd.scrub(_forms(SECRET)["b64"]) == _forms(SECRET)["b64"]
    assert sd.scrub(json.dumps(other)) == f'"{sd.REDACTED}"'
    sd.forget(other)
    sd.forget(other)  # twice is harmless
    assert SECRET not in sd._SECRETS and other not in sd._SECRETS
