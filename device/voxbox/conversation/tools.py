"""Function tools the model can call: registry, built-ins, plug-ins and a runner.

Three parts, each usable on its own:

* :class:`Tool` and :class:`ToolRegistry`: the tools declared in ``session.update``
  (:meth:`ToolRegistry.declarations` gives the Realtime function-tool shape
  ``{"type": "function", "name", "description", "parameters"}``, identical for OpenAI GA,
  OpenAI beta and Azure Voice Live). :meth:`ToolRegistry.default` holds the built-ins
  (``set_volume``, ``get_time``, ``stop_conversation``, ``device_status``) plus third-party
  tools from the entry point group ``voxbox.conversation.tools``, filtered by an allow-list.
* :class:`ToolRunner`: runs one call off the event loop, in its own thread, with a per-tool
  timeout. Every failure (unknown tool, arguments that are not JSON or break the schema, an
  exception, a timeout, an output that is not JSON) becomes an error result
  ``{"error": "..."}`` handed back to the model; nothing raises into the daemon.
* :func:`parse_function_call` and :func:`function_call_output_events`: the protocol ends, as
  plain dicts (sans-I/O, like :mod:`voxbox.realtime.session`).

Protocol (checked against the openai 3.x SDK types, GA and beta, and azure-ai-voicelive
1.3): the model's call arrives as a ``function_call`` output item (``call_id``, ``name``,
``arguments`` = JSON text) in ``response.output_item.done``; its arguments are also streamed
as ``response.function_call_arguments.delta`` / ``.done``, but the beta ``.done`` event has
no ``name`` field, so :func:`parse_function_call` reads the output item (same shape in all
three dialects). The client answers with ``conversation.item.create`` carrying
``{"type": "function_call_output", "call_id", "output"}`` (``output`` is a string: free text
or JSON) and then ``response.create`` so that the model speaks about the result. Send that
``response.create`` only after ``response.done`` of the response that made the call (and
once for all the calls of one response): while that response is active a
``response.create`` is rejected with ``conversation_already_has_active_response``.

Plug-ins: a distribution declares, in its ``pyproject.toml``::

    [project.entry-points."voxbox.conversation.tools"]
    weather = "voxbox_weather:tool"        # a Tool, or a factory returning Tool | list[Tool]

Installed plug-ins are imported when the registry is built (installing one into the
daemon's environment is the trust decision); the allow-list decides which tools the model
sees. A plug-in that fails to import, raises in its factory, returns something else than
tools, or reuses a name already taken is logged with its entry point name and skipped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from voxbox.errors import ToolError  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

#: entry point group of third-party tools
ENTRY_POINT_GROUP = "voxbox.conversation.tools"
#: function names accepted by the Realtime services (the OpenAI function-name rule)
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: default per-tool timeout, seconds
DEFAULT_TIMEOUT_S = 5.0


@runtime_checkable
class ToolContext(Protocol):
    """What the built-in tools need from the daemon.

    Every method is called from a tool worker thread, never from the event loop: the
    daemon's implementation must be thread-safe. Methods that touch loop-owned state
    (``stop_conversation``, and ``device_status`` if it reads the conversation state machine)
    should schedule the work onto the loop with ``loop.call_soon_threadsafe`` (fire and
    forget) or ``asyncio.run_coroutine_threadsafe(...).result(timeout)`` (when a value is
    needed); they must not block for longer than the tool's timeout.
    """

    def set_volume(self, percent: int) -> int:
        """Set the output volume, 0..100 %; returns the volume now in effect (0..100)."""
        ...

    def get_volume(self) -> int:
        """The output volume, 0..100 %."""
        ...

    def stop_conversation(self) -> None:
        """End the conversation and go back to waiting for the wake word (asynchronously)."""
        ...

    def device_status(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot, e.g. ``{"state": "speaking", "session_id": "...",
        "uptime_s": 3600, "volume": 40, "link": "connected", "version": "0.1.0"}``."""
        ...

    def now(self) -> dt.datetime:
        """Local wall-clock time, timezone-aware (``datetime.now().astimezone()``);
        injected so that tests fix the clock."""
        ...


ToolFn = Callable[[dict[str, Any], ToolContext], "dict[str, Any] | str | None"]


@dataclass(frozen=True, eq=False)
class Tool:
    """One function the model can call.

    Args:
        name: function name, ``[A-Za-z0-9_-]{1,64}``, unique in a registry.
        description: what it does and when to call it (the model reads this).
        parameters: JSON Schema of the arguments object (``{"type": "object", ...}``).
        fn: ``fn(args, ctx)``, called in a worker thread with the validated arguments; returns
            a JSON-serialisable dict (sent as JSON), a str (sent as is: free text) or None
            (sent as ``{"ok": true}``). Raise :class:`ToolError` for an expected failure.
        timeout_s: seconds after which the model gets an error result (the thread itself
            cannot be killed and may go on running).
        respond: True (the usual case) asks the model to go on after the output
            (``response.create``); False only records the output (``stop_conversation``:
            there is nobody left to answer).
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    fn: ToolFn = field(repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    respond: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise ValueError(f"tool name {self.name!r} must match {NAME_RE.pattern}")
        if not isinstance(self.description, str):
            raise ValueError(f"tool {self.name!r}: description must be a string")
        if not isinstance(self.parameters, Mapping) or self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be a JSON Schema with type 'object'")
        if not callable(self.fn):
            raise ValueError(f"tool {self.name!r}: fn is not callable")
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s < math.inf):
            raise ValueError(f"tool {self.name!r}: timeout_s must be a positive number, got {self.timeout_s!r}")

    def declaration(self) -> dict[str, Any]:
        """``{"type": "function", "name", "description", "parameters"}`` for ``session.update``."""
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": json.loads(json.dumps(self.parameters))}


# ---- built-in tools ---------------------------------------------------------------------
def _set_volume(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    has_abs, has_rel = "percent" in args, "change" in args
    if has_abs == has_rel:
        raise ToolError("set_volume: give exactly one of 'percent' (0..100) or 'change' (-100..100)")
    before = int(ctx.get_volume())
    target = int(args["percent"]) if has_abs else before + int(args["change"])
    now = int(ctx.set_volume(max(0, min(100, target))))
    return {"volume_percent": now, "previous_percent": before}


def _spoken_time(t: dt.datetime) -> str:
    hour12 = t.hour % 12 or 12
    clock = f"{hour12} {'a.m.' if t.hour < 12 else 'p.m.'}" if t.minute == 0 \
        else f"{hour12}:{t.minute:02d} {'a.m.' if t.hour < 12 else 'p.m.'}"
    return f"{clock}, {t.strftime('%A')} {t.day} {t.strftime('%B')} {t.year}"


def _get_time(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    t = ctx.now()
    if t.tzinfo is None:
        t = t.astimezone()  # naive means local time
    offset = t.strftime("%z")
    tz_key = getattr(t.tzinfo, "key", None)  # zoneinfo.ZoneInfo carries the IANA name
    return {
        "iso": t.isoformat(timespec="seconds"),
        "date": t.date().isoformat(),
        "time": t.strftime("%H:%M"),
        "weekday": t.strftime("%A"),
        "spoken": _spoken_time(t),
        "timezone": tz_key or t.tzname() or "",
        "timezone_abbreviation": t.tzname() or "",
        "utc_offset": f"{offset[:3]}:{offset[3:]}" if offset else "",
    }


def _stop_conversation(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    ctx.stop_conversation()
    return {"ok": True}


def _device_status(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    return dict(ctx.device_status())


_NO_ARGS = {"type": "object", "properties": {}, "additionalProperties": False}

BUILTINS: tuple[Tool, ...] = (
    Tool(
        name="set_volume",
        description=("Change the loudness of the device's speaker. Give either 'percent' for an "
                     "absolute volume or 'change' for a relative step (e.g. +10 louder, -10 "
                     "quieter). Returns the new and previous volume in percent."),
        parameters={
            "type": "object",
            "properties": {
                "percent": {"type": "integer", "minimum": 0, "maximum": 100,
                            "description": "absolute volume, 0 (mute) to 100 (loudest)"},
                "change": {"type": "integer", "minimum": -100, "maximum": 100,
                           "description": "relative change in percentage points"},
            },
            "additionalProperties": False,
        },
        fn=_set_volume,
        timeout_s=3.0,
    ),
    Tool(
        name="get_time",
        description="The current local date and time of the device, with its timezone.",
        parameters=_NO_ARGS,
        fn=_get_time,
        timeout_s=2.0,
    ),
    Tool(
        name="stop_conversation",
        description=("End the conversation when the user says goodbye or asks you to stop "
                     "listening. Say goodbye before calling it: nothing is spoken afterwards."),
        parameters=_NO_ARGS,
        fn=_stop_conversation,
        timeout_s=2.0,
        respond=False,
    ),
    Tool(
        name="device_status",
        description="Status of the device: state, session, uptime, volume, network link.",
        parameters=_NO_ARGS,
        fn=_device_status,
        timeout_s=2.0,
    ),
)
BUILTIN_NAMES = frozenset(t.name for t in BUILTINS)


# ---- registry ---------------------------------------------------------------------------
class ToolRegistry:
    """Tools by name, in registration order."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self._tools: dict[str, Tool] = {}
        self._source: dict[str, str] = {}
        for t in tools:
            if not self.register(t):
                raise ValueError(f"duplicate tool name {t.name!r}")

    def register(self, tool: Tool, *, source: str = "built-in") -> bool:
        """Add ``tool``; False (and an error in the log) if its name is taken."""
        if not isinstance(tool, Tool):
            raise TypeError(f"{source}: expected a voxbox.conversation.tools.Tool, got {type(tool).__name__}")
        if tool.name in self._tools:
            log.error("tool %r from %s rejected: the name is already taken by %s",
                      tool.name, source, self._source[tool.name],
                      extra={"VOXBOX_TOOL": tool.name})
            return False
        self._tools[tool.name] = tool
        self._source[tool.name] = source
        return True

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def source(self, name: str) -> str | None:
        """``"built-in"`` or ``"plug-in <entry point> (<value>)"``."""
        return self._source.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self):
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def declarations(self) -> list[dict[str, Any]]:
        """Function tools for ``session.update`` (``session.tools``), registration order."""
        return [t.declaration() for t in self._tools.values()]

    def load_plugins(self, group: str = ENTRY_POINT_GROUP, *, entry_points: Iterable[Any] | None = None) -> list[str]:
        """Register the tools of every entry point in ``group``; returns the names added.

        Each entry point loads either a :class:`Tool` or a callable taking no argument that
        returns a Tool or a list of Tools. Failures are logged with the entry point name and
        skipped. ``entry_points`` (objects with ``name``, ``value``, ``load()``) replaces the
        installed ones (tests).
        """
        if entry_points is None:
            try:
                entry_points = importlib.metadata.entry_points(group=group)
            except Exception:  # a broken distribution's metadata must not stop the daemon
                log.exception("cannot list entry points of group %r", group)
                return []
        added: list[str] = []
        seen: set[tuple[str, str]] = set()
        for ep in sorted(entry_points, key=lambda e: (e.name, e.value)):
            if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            source = f"plug-in {ep.name!r} ({ep.value})"
            try:
                obj = ep.load()
                if not isinstance(obj, Tool):
                    if not callable(obj):
                        raise TypeError(f"loaded a {type(obj).__name__}, not a Tool or a factory")
                    obj = obj()
                tools = [obj] if isinstance(obj, Tool) else list(obj) if isinstance(obj, (list, tuple)) else None
                if tools is None:
                    raise TypeError(f"factory returned a {type(obj).__name__}, not a Tool or a list of Tools")
            except Exception as exc:
                log.error("tool %s skipped: %s: %s", source, type(exc).__name__, exc,
                          exc_info=True, extra={"VOXBOX_TOOL_PLUGIN": ep.name})
                continue
            for t in tools:
                if not isinstance(t, Tool):
                    log.error("tool %s: skipped an item of type %s (not a Tool)", source,
                              type(t).__name__, extra={"VOXBOX_TOOL_PLUGIN": ep.name})
                    continue
                if t.name in BUILTIN_NAMES:
                    log.error("tool %s: %r is the name of a built-in tool; rejected", source, t.name,
                              extra={"VOXBOX_TOOL_PLUGIN": ep.name, "VOXBOX_TOOL": t.name})
                    continue
                if self.register(t, source=source):
                    added.append(t.name)
        return added

    def restrict(self, enabled: Iterable[str] | None) -> None:
        """Keep only the tools named in ``enabled`` (None keeps everything); names that match
        no tool are logged as warnings."""
        if enabled is None:
            return
        wanted = list(enabled)
        for name in wanted:
            if name not in self._tools:
                log.warning("tools.enabled names %r, but no such tool is installed (have: %s)",
                            name, ", ".join(self._tools) or "none")
        keep = set(wanted)
        for name in [n for n in self._tools if n not in keep]:
            del self._tools[name]
            del self._source[name]

    @classmethod
    def default(cls, enabled: Iterable[str] | None = None, *, plugins: bool = True,
                group: str = ENTRY_POINT_GROUP, entry_points: Iterable[Any] | None = None) -> ToolRegistry:
        """Built-ins, then plug-ins (if ``plugins``), then the allow-list ``enabled``
        (tool names; None = all; applies to built-ins too)."""
        reg = cls(BUILTINS)
        if plugins:
            reg.load_plugins(group, entry_points=entry_points)
        reg.restrict(enabled)
        return reg


# ---- argument validation ----------------------------------------------------------------
def _where(path: str) -> str:
    return f"argument {path!r}" if path else "arguments"


def validate_arguments(schema: Mapping[str, Any], args: Any) -> list[str]:
    """Problems of ``args`` against the tool's JSON Schema (the ``jsonschema`` package,
    the draft the schema names, 2020-12 by default), one message per problem naming the
    argument (``argument 'tags[1]': expected string, got int 2``); empty list = valid."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    errors = []
    for err in sorted(cls(schema).iter_errors(args), key=lambda e: [str(p) for p in e.absolute_path]):
        base = ""
        for part in err.absolute_path:  # tags[1].name
            base = f"{base}[{part}]" if isinstance(part, int) else _join(base, str(part))
        inst = err.instance if isinstance(err.instance, dict) else {}
        # name the argument itself for a missing or an unexpected one
        if err.validator == "required":
            errors += [f"{_where(_join(base, n))}: required" for n in err.validator_value if n not in inst]
        elif err.validator == "additionalProperties" and err.validator_value is False:
            allowed = list((err.schema.get("properties") or {}))
            errors += [f"{_where(_join(base, n))}: unexpected (allowed: {', '.join(allowed) or 'none'})"
                       for n in inst if n not in allowed]
        elif err.validator == "type":
            types = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
            errors.append(f"{_where(base)}: expected {' or '.join(types)}, "
                          f"got {type(err.instance).__name__} {err.instance!r:.40}")
        else:
            errors.append(f"{_where(base)}: {err.message}")
    return errors


def _join(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


# ---- runner -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolResult:
    """The outcome of one call.

    Attributes:
        call_id: the model's ``call_id``.
        output: the ``function_call_output.output`` string (JSON, or a tool's free text).
        error: True when ``output`` is ``{"error": "..."}``.
        ms: milliseconds from :meth:`ToolRunner.run` to the result (timeouts included).
        name: the tool name as the model sent it.
        respond: whether the model should be asked to go on (``response.create``).
    """

    call_id: str
    output: str
    error: bool
    ms: float
    name: str = ""
    respond: bool = True


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class ToolRunner:
    """Runs tool calls off the event loop.

    Each call runs in its own daemon thread (at most ``max_running`` at once, counting
    threads still running after their timeout). Not a ThreadPoolExecutor on purpose: a
    timed-out tool cannot be killed, an executor's workers would be taken by such tools one
    by one, and the interpreter joins executor threads at exit, so a hung tool would hang the
    daemon's shutdown. A daemon thread that outlives its timeout just finishes (or not) on
    its own; its late result is dropped and logged.

    Args:
        registry: the tools.
        ctx: the daemon's :class:`ToolContext`.
        max_running: tool threads allowed at once; beyond, calls fail at once with an error.
        max_output_chars: longer outputs become an error result (protects the session).
        clock: monotonic seconds, for :attr:`ToolResult.ms`.
    """

    def __init__(self, registry: ToolRegistry, ctx: ToolContext, *, max_running: int = 4,
                 max_output_chars: int = 16_000, clock: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.ctx = ctx
        self.max_running = max_running
        self.max_output_chars = max_output_chars
        self.clock = clock
        self._lock = threading.Lock()
        self._running = 0

    @property
    def running(self) -> int:
        """Tool threads alive now (including those abandoned after a timeout)."""
        with self._lock:
            return self._running

    def _error(self, call_id: str, name: str, t0: float, message: str) -> ToolResult:
        log.warning("tool call %s %s failed: %s", name, call_id, message,
                    extra={"VOXBOX_TOOL": name, "VOXBOX_CALL_ID": call_id})
        return ToolResult(call_id, _dumps({"error": message}), True,
                          (self.clock() - t0) * 1000.0, name)

    async def run(self, call_id: str, name: str, arguments_json: str) -> ToolResult:
        """Execute one call; never raises (except ``CancelledError`` if the caller is
        cancelled, in which case the thread runs on and its result is dropped)."""
        t0 = self.clock()
        tool = self.registry.get(name)
        if tool is None:
            return self._error(call_id, name, t0, f"unknown tool {name!r} (available: {', '.join(self.registry.names()) or 'none'})")
        try:
            args = json.loads(arguments_json) if (arguments_json or "").strip() else {}
        except (ValueError, TypeError) as exc:
            return self._error(call_id, name, t0, f"tool {name!r}: arguments are not valid JSON: {exc}")
        if not isinstance(args, dict):
            return self._error(call_id, name, t0, f"tool {name!r}: arguments must be a JSON object, got {type(args).__name__}")
        problems = validate_arguments(tool.parameters, args)
        if problems:
            return self._error(call_id, name, t0, f"tool {name!r}: " + "; ".join(problems))
        with self._lock:
            if self._running >= self.max_running:
                busy = True
            else:
                busy = False
                self._running += 1
        if busy:
            return self._error(call_id, name, t0, f"tool {name!r}: too many tool calls still running ({self.max_running})")

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[bool, Any]] = loop.create_future()

        def deliver(outcome: tuple[bool, Any]) -> None:
            if fut.done():
                log.info("tool %s %s finished after its timeout; result dropped", name, call_id,
                         extra={"VOXBOX_TOOL": name, "VOXBOX_CALL_ID": call_id})
            else:
                fut.set_result(outcome)

        def work() -> None:
            outcome: tuple[bool, Any]
            try:
                outcome = (True, tool.fn(args, self.ctx))
            except BaseException as exc:  # noqa: BLE001 - reported to the model
                outcome = (False, exc)
            finally:  # the slot is free before the result is seen
                with self._lock:
                    self._running -= 1
            try:
                loop.call_soon_threadsafe(deliver, outcome)
            except RuntimeError:  # loop closed meanwhile (shutdown)
                pass

        threading.Thread(target=work, name=f"tool-{name}-{call_id}", daemon=True).start()
        try:
            ok, value = await asyncio.wait_for(fut, tool.timeout_s)
        except asyncio.TimeoutError:
            return self._error(call_id, name, t0, f"tool {name!r} timed out after {tool.timeout_s:g} s")
        if not ok:
            if isinstance(value, ToolError):
                return self._error(call_id, name, t0, str(value) or f"tool {name!r} failed")
            log.error("tool %s %s raised", name, call_id, exc_info=value,
                      extra={"VOXBOX_TOOL": name, "VOXBOX_CALL_ID": call_id})
            return self._error(call_id, name, t0, f"tool {name!r} failed: {type(value).__name__}: {value}")
        if isinstance(value, str):
            output = value
        else:
            try:
                output = _dumps({"ok": True} if value is None else value)
            except (TypeError, ValueError) as exc:
                return self._error(call_id, name, t0, f"tool {name!r} returned output that is not JSON: {exc}")
        if len(output) > self.max_output_chars:
            return self._error(call_id, name, t0, f"tool {name!r} output too long ({len(output)} > {self.max_output_chars} characters)")
        ms = (self.clock() - t0) * 1000.0
        log.info("tool call %s %s done in %.0f ms", name, call_id, ms,
                 extra={"VOXBOX_TOOL": name, "VOXBOX_CALL_ID": call_id})
        return ToolResult(call_id, output, False, ms, name, tool.respond)


# ---- protocol helpers -------------------------------------------------------------------
@dataclass(frozen=True)
class FunctionCall:
    """A completed function call of the model (from ``response.output_item.done``)."""

    call_id: str
    name: str
    arguments: str
    item_id: str = ""
    response_id: str = ""


def parse_function_call(event: Mapping[str, Any]) -> FunctionCall | None:
    """The call in a server ``response.output_item.done`` event, or None.

    None for every other event, for items that are not ``function_call`` and for calls whose
    status is not ``completed`` (a response cancelled by barge-in leaves ``incomplete``
    calls, which must not run). Same shape in GA, beta and Voice Live.
    """
    if event.get("type") != "response.output_item.done":
        return None
    item = event.get("item")
    if not isinstance(item, Mapping) or item.get("type") != "function_call":
        return None
    if item.get("status") not in (None, "completed"):
        return None
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str):
        return None
    return FunctionCall(call_id, name, str(item.get("arguments") or ""), str(item.get("id") or ""),
                        str(event.get("response_id") or ""))


def function_call_output_events(result: ToolResult, *, respond: bool | None = None) -> list[dict[str, Any]]:
    """Client events answering one call, without ``event_id`` (the session adds it).

    ``[{"type": "conversation.item.create", "item": {"type": "function_call_output",
    "call_id", "output"}}, {"type": "response.create"}]``; the ``response.create`` is left out
    when ``respond`` is False (default: ``result.respond``). Identical for GA, beta and Voice
    Live. With several calls in one response, send every item and a single ``response.create``,
    after that response's ``response.done``.
    """
    events: list[dict[str, Any]] = [{
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": result.call_id, "output": result.output},
    }]
    if result.respond if respond is None else respond:
        events.append({"type": "response.create"})
    return events
