"""Tool registry, built-ins, plug-ins and the runner (voxbox.conversation.tools)."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
import json
import logging
import sys
import textwrap
import threading

import pytest

from helpers import run
from voxbox.conversation import tools as T
from voxbox.conversation.tools import (
    FunctionCall,
    Tool,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
    ToolRunner,
    function_call_output_events,
    parse_function_call,
    validate_arguments,
)

FIXED = dt.datetime(2025, 6, 3, 14, 5, 9, tzinfo=dt.timezone(dt.timedelta(hours=2), "CEST"))


class FakeCtx:
    def __init__(self, volume: int = 40, now: dt.datetime = FIXED):
        self.volume = volume
        self.stopped = 0
        self._now = now
        self.calls: list[str] = []

    def set_volume(self, percent: int) -> int:
        self.calls.append(threading.current_thread().name)
        self.volume = max(0, min(100, percent))
        return self.volume

    def get_volume(self) -> int:
        return self.volume

    def stop_conversation(self) -> None:
        self.stopped += 1

    def device_status(self) -> dict:
        return {"state": "listening", "session_id": "sess_1", "uptime_s": 12.5,
                "volume": self.volume, "link": "connected"}

    def now(self) -> dt.datetime:
        return self._now


def call(runner: ToolRunner, name: str, args: object = None, raw: str | None = None) -> ToolResult:
    return run(runner.run("call_1", name, raw if raw is not None else json.dumps(args or {})))


def out(result: ToolResult) -> dict:
    return json.loads(result.output)


class FakeEP:
    """Stands for an importlib.metadata.EntryPoint."""

    def __init__(self, name: str, obj=None, exc: BaseException | None = None):
        self.name, self.value, self._obj, self._exc = name, f"fake_{name}:tool", obj, exc

    def load(self):
        if self._exc is not None:
            raise self._exc
        return self._obj


def echo_tool(name: str = "echo", **kw) -> Tool:
    return Tool(name, "echo the text", {"type": "object", "properties": {"text": {"type": "string"}},
                                         "required": ["text"]},
                lambda args, ctx: {"echo": args["text"]}, **kw)


# ---- declarations -----------------------------------------------------------------------
def test_fake_context_satisfies_protocol():
    assert isinstance(FakeCtx(), ToolContext)


def test_declarations_shape_and_sdk_types():
    from openai.types.beta.realtime.session_update_event import SessionTool
    from openai.types.realtime import RealtimeFunctionTool

    decls = ToolRegistry.default(plugins=False).declarations()
    assert [d["name"] for d in decls] == ["set_volume", "get_time", "stop_conversation", "device_status"]
    for d in decls:
        assert set(d) == {"type", "name", "description", "parameters"}
        assert d["type"] == "function" and d["description"]
        assert d["parameters"]["type"] == "object"
        json.dumps(d)  # serialisable
        RealtimeFunctionTool.model_validate(d)  # GA
        SessionTool.model_validate(d)  # beta
    # declarations are copies: editing them cannot change the registry
    decls[0]["parameters"]["properties"].clear()
    assert ToolRegistry.default(plugins=False).declarations()[0]["parameters"]["properties"]


def test_tool_validation_names_the_problem():
    with pytest.raises(ValueError, match="tool name 'bad name'"):
        Tool("bad name", "x", {"type": "object"}, lambda a, c: None)
    with pytest.raises(ValueError, match="tool 'x': parameters"):
        Tool("x", "x", {"type": "string"}, lambda a, c: None)
    with pytest.raises(ValueError, match="tool 'x': timeout_s"):
        Tool("x", "x", {"type": "object"}, lambda a, c: None, timeout_s=0)
    with pytest.raises(ValueError, match="duplicate tool name 'echo'"):
        ToolRegistry([echo_tool(), echo_tool()])


# ---- built-ins --------------------------------------------------------------------------
def test_set_volume_absolute_relative_and_clamped():
    ctx = FakeCtx(volume=40)
    r = ToolRunner(ToolRegistry.default(plugins=False), ctx)
    res = call(r, "set_volume", {"percent": 70})
    assert not res.error and out(res) == {"volume_percent": 70, "previous_percent": 40}
    assert out(call(r, "set_volume", {"change": -20}))["volume_percent"] == 50
    assert out(call(r, "set_volume", {"change": 80}))["volume_percent"] == 100
    assert ctx.calls and all(n.startswith("tool-set_volume") for n in ctx.calls)  # worker thread
    for bad in ({}, {"percent": 10, "change": 5}):
        res = call(r, "set_volume", bad)
        assert res.error and "exactly one of 'percent'" in out(res)["error"]
    res = call(r, "set_volume", {"percent": 150})
    assert res.error and "'percent'" in out(res)["error"] and "100" in out(res)["error"]
    assert ctx.volume == 100


def test_get_time_from_injected_clock():
    res = call(ToolRunner(ToolRegistry.default(plugins=False), FakeCtx()), "get_time")
    assert not res.error
    assert out(res) == {
        "iso": "2025-06-03T14:05:09+02:00", "date": "2025-06-03", "time": "14:05",
        "weekday": "Tuesday", "spoken": "2:05 p.m., Tuesday 3 June 2025",
        "timezone": "CEST", "timezone_abbreviation": "CEST", "utc_offset": "+02:00",
    }


def test_get_time_iana_zone_name():
    import zoneinfo

    tz = zoneinfo.ZoneInfo("Europe/Paris")  # the tz database: Debian's tzdata, installed by ./dev
    ctx = FakeCtx(now=dt.datetime(2025, 1, 5, 0, 0, tzinfo=tz))
    o = out(call(ToolRunner(ToolRegistry.default(plugins=False), ctx), "get_time"))
    assert o["timezone"] == "Europe/Paris" and o["timezone_abbreviation"] == "CET"
    assert o["spoken"] == "12 a.m., Sunday 5 January 2025" and o["utc_offset"] == "+01:00"


def test_stop_conversation_and_device_status():
    ctx = FakeCtx()
    r = ToolRunner(ToolRegistry.default(plugins=False), ctx)
    res = call(r, "stop_conversation")
    assert ctx.stopped == 1 and out(res) == {"ok": True} and res.respond is False
    assert [e["type"] for e in function_call_output_events(res)] == ["conversation.item.create"]
    res = call(r, "device_status")
    assert out(res)["session_id"] == "sess_1" and res.respond is True


# ---- plug-ins ---------------------------------------------------------------------------
def test_plugins_loaded_broken_ones_skipped(caplog):
    good = echo_tool("echo")
    eps = [
        FakeEP("echo", good),
        FakeEP("many", lambda: [echo_tool("weather"), echo_tool("timer"), "junk"]),
        FakeEP("import_fails", exc=ImportError("No module named 'voxbox_nope'")),
        FakeEP("factory_fails", lambda: 1 / 0),
        FakeEP("wrong_type", lambda: {"name": "x"}),
        FakeEP("not_callable", 42),
        FakeEP("steals_builtin", echo_tool("set_volume")),
        FakeEP("zz_duplicate", echo_tool("weather")),
    ]
    with caplog.at_level(logging.ERROR, logger="voxbox.conversation.tools"):
        reg = ToolRegistry.default(entry_points=eps)
    assert reg.names() == ["set_volume", "get_time", "stop_conversation", "device_status",
                           "echo", "weather", "timer"]
    assert reg.get("set_volume").fn is T._set_volume  # built-in kept
    assert reg.source("weather") == "plug-in 'many' (fake_many:tool)"
    text = caplog.text
    for ep in ("import_fails", "factory_fails", "wrong_type", "not_callable", "steals_builtin", "zz_duplicate"):
        assert f"plug-in '{ep}'" in text, ep
    assert "No module named 'voxbox_nope'" in text and "ZeroDivisionError" in text
    assert "'set_volume' is the name of a built-in tool" in text
    assert "'weather' from plug-in 'zz_duplicate'" in text and "already taken" in text
    assert "item of type str" in text


def test_plugin_through_real_entry_point_metadata(tmp_path, monkeypatch):
    (tmp_path / "vx_test_plugin.py").write_text(textwrap.dedent("""
        from voxbox.conversation.tools import Tool
        def make():
            return Tool("shout", "upper-case a word",
                        {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
                        lambda args, ctx: args["word"].upper())
    """))
    info = tmp_path / "vx_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vx-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[voxbox.conversation.tools]\nshout = vx_test_plugin:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vx_test_plugin", raising=False)
    assert any(ep.name == "shout" for ep in importlib.metadata.entry_points(group="voxbox.conversation.tools"))

    reg = ToolRegistry.default()
    assert "shout" in reg
    res = call(ToolRunner(reg, FakeCtx()), "shout", {"word": "hi"})
    assert (res.error, res.output) == (False, "HI")  # a str result is sent as is


def test_allow_list(caplog):
    eps = [FakeEP("weather", echo_tool("weather"))]
    with caplog.at_level(logging.WARNING, logger="voxbox.conversation.tools"):
        reg = ToolRegistry.default(["get_time", "weather", "lights"], entry_points=eps)
    assert reg.names() == ["get_time", "weather"]
    assert "'lights'" in caplog.text and "no such tool" in caplog.text
    assert ToolRegistry.default([], entry_points=eps).declarations() == []
    assert len(ToolRegistry.default(None, entry_points=eps)) == 5


# ---- runner errors ----------------------------------------------------------------------
def test_runner_error_results_name_the_problem():
    def boom(args, ctx):
        raise RuntimeError("relay stuck")

    def expected(args, ctx):
        raise ToolError("no lamp called 'attic'")

    reg = ToolRegistry([
        echo_tool(),
        Tool("boom", "x", {"type": "object"}, boom),
        Tool("expected", "x", {"type": "object"}, expected),
        Tool("nonjson", "x", {"type": "object"}, lambda a, c: {"when": object()}),
        Tool("huge", "x", {"type": "object"}, lambda a, c: "x" * 100),
        Tool("none", "x", {"type": "object"}, lambda a, c: None),
    ])
    r = ToolRunner(reg, FakeCtx(), max_output_chars=50)
    cases = {
        ("nope", "{}"): "unknown tool 'nope'",
        ("echo", "{not json"): "tool 'echo': arguments are not valid JSON",
        ("echo", "[1, 2]"): "arguments must be a JSON object, got list",
        ("echo", "{}"): "argument 'text': required",
        ("echo", '{"text": 5}'): "argument 'text': expected string, got int",
        ("boom", "{}"): "tool 'boom' failed: RuntimeError: relay stuck",
        ("expected", "{}"): "no lamp called 'attic'",
        ("nonjson", "{}"): "tool 'nonjson' returned output that is not JSON",
        ("huge", "{}"): "tool 'huge' output too long (100 > 50 characters)",
    }
    for (name, raw), msg in cases.items():
        res = call(r, name, raw=raw)
        assert res.error and res.call_id == "call_1" and res.ms >= 0, (name, raw)
        assert msg in out(res)["error"], (name, raw, res.output)
        assert [e["type"] for e in function_call_output_events(res)] == [
            "conversation.item.create", "response.create"]  # errors go back to the model
    assert out(call(r, "none")) == {"ok": True}
    res = call(r, "echo", raw="")  # empty arguments mean {}
    assert res.error and "argument 'text': required" in out(res)["error"]
    assert r.running == 0


def test_slow_tool_times_out_without_blocking_the_loop():
    release = threading.Event()
    started = threading.Event()
    finished = threading.Event()

    def slow(args, ctx):
        started.set()
        release.wait(10)
        finished.set()
        return {"late": True}

    reg = ToolRegistry([Tool("slow", "x", {"type": "object"}, slow, timeout_s=0.3), echo_tool()])
    runner = ToolRunner(reg, FakeCtx(), max_running=1)
    timeline: list[str] = []

    async def ticker(stop: asyncio.Event):
        while not stop.is_set():
            if started.is_set() and not finished.is_set():
                timeline.append("tick")  # the loop runs while the tool blocks its thread
            await asyncio.sleep(0.01)

    async def main():
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        res = await runner.run("call_slow", "slow", "{}")
        timeline.append("result")
        # the abandoned thread still occupies the only slot: the next call fails at once
        busy = await runner.run("call_2", "echo", '{"text": "hi"}')
        assert runner.running == 1
        release.set()
        while runner.running:  # the thread ends; its late result is dropped quietly
            await asyncio.sleep(0.01)
        again = await runner.run("call_3", "echo", '{"text": "hi"}')
        stop.set()
        await t
        return res, busy, again

    res, busy, again = asyncio.run(main())
    assert res.error and res.call_id == "call_slow"
    assert "tool 'slow' timed out after 0.3 s" in out(res)["error"]
    assert "tick" in timeline and timeline.index("tick") < timeline.index("result")
    assert busy.error and "too many tool calls still running" in out(busy)["error"]
    assert not again.error and out(again) == {"echo": "hi"}
    assert finished.is_set()


# ---- validation -------------------------------------------------------------------------
SCHEMA = {
    "type": "object",
    "properties": {
        "percent": {"type": "integer", "minimum": 0, "maximum": 100},
        "room": {"type": "string", "enum": ["kitchen", "hall"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "ratio": {"type": ["number", "null"], "exclusiveMinimum": 0},
    },
    "required": ["percent"],
    "additionalProperties": False,
}


def test_argument_validation_names_each_problem():
    """The jsonschema package validates; every problem names the argument."""
    v = lambda a: validate_arguments(SCHEMA, a)  # noqa: E731
    assert v({"percent": 5, "room": "hall", "tags": ["a"], "ratio": None}) == []
    assert v({"percent": 5.0}) == []  # JSON Schema: 5.0 is an integer
    assert v({"percent": True}) == ["argument 'percent': expected integer, got bool True"]
    assert v({"percent": -1}) == ["argument 'percent': -1 is less than the minimum of 0"]
    assert v({}) == ["argument 'percent': required"]
    assert v({"percent": 1, "room": "attic"}) == ["argument 'room': 'attic' is not one of ['kitchen', 'hall']"]
    assert v({"percent": 1, "tags": ["a", 2, "c"]}) == [
        "argument 'tags': ['a', 2, 'c'] is too long", "argument 'tags[1]': expected string, got int 2"]
    assert v({"percent": 1, "ratio": 0}) == ["argument 'ratio': 0 is less than or equal to the minimum of 0"]
    assert v({"percent": 1, "colour": "red"}) == [
        "argument 'colour': unexpected (allowed: percent, room, tags, ratio)"]
    errs = v({"percent": 101, "colour": "red"})
    assert len(errs) == 2 and any("101" in e for e in errs) and any("colour" in e for e in errs)


# ---- protocol helpers -------------------------------------------------------------------
def test_parse_function_call():
    item = {"id": "item_1", "type": "function_call", "status": "completed", "name": "get_time",
            "call_id": "call_9", "arguments": "{}"}
    ev = {"type": "response.output_item.done", "response_id": "resp_1", "output_index": 0, "item": item}
    assert parse_function_call(ev) == FunctionCall("call_9", "get_time", "{}", "item_1", "resp_1")
    assert parse_function_call({**ev, "item": {**item, "status": "incomplete"}}) is None
    assert parse_function_call({**ev, "item": {"type": "message", "role": "assistant"}}) is None
    assert parse_function_call({"type": "response.function_call_arguments.done", "call_id": "c",
                                "arguments": "{}"}) is None


def test_function_call_output_events_match_sdk_types():
    from openai.types.beta.realtime import ConversationItemCreateEvent as BetaItemCreate
    from openai.types.realtime import ConversationItemCreateEvent, ResponseCreateEvent

    res = ToolResult("call_9", '{"ok":true}', False, 1.0, "x")
    create, respond = function_call_output_events(res)
    assert create == {"type": "conversation.item.create",
                      "item": {"type": "function_call_output", "call_id": "call_9", "output": '{"ok":true}'}}
    assert respond == {"type": "response.create"}
    ga = ConversationItemCreateEvent.model_validate(create)
    assert ga.item.type == "function_call_output" and ga.item.call_id == "call_9"
    assert BetaItemCreate.model_validate(create).item.output == '{"ok":true}'
    ResponseCreateEvent.model_validate(respond)
    assert len(function_call_output_events(res, respond=False)) == 1
