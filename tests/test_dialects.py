"""Service-side features per dialect, validated against the official SDK types.

Every ``session.update`` that :func:`voxbox.realtime.dialects.session_config` (through
:meth:`voxbox.realtime.session.RealtimeSession.start`) can produce is checked against the types of the
installed SDKs, with no unknown field at any level:

* openai-ga: ``openai.types.realtime.SessionUpdateEvent`` / ``RealtimeSessionCreateRequest``
  (pydantic, extras allowed by the SDK: ``model_extra`` must be empty everywhere and the
  ``exclude_unset`` dump must equal the input);
* openai-beta: ``openai.types.beta.realtime.SessionUpdateEvent`` (same checks);
* azure-voicelive: ``azure.ai.voicelive.models.ClientEventSessionUpdate`` / ``RequestSession``
  (azure-core typespec models, which accept anything: :func:`vl_check` walks the declared
  rest fields and type hints, resolves discriminated subclasses through ``__mapping__``, and
  rejects unknown keys, unknown discriminators, missing required fields and wrong types; the
  SDK's own deserialisation must give the expected classes and ``as_dict()`` the input back).

Which combinations must be refused is derived from the SDK types too (a value the dialect's
type does not declare), plus two rules of ours: ``eagerness`` only with ``semantic_vad``, and
``azure-speech`` transcription only on Voice Live.
"""
from __future__ import annotations

import functools
import itertools
import json
import sys
import types
import typing
from enum import Enum
from typing import Any

import azure.ai.voicelive.models as vlm
import pydantic
import pytest
from azure.ai.voicelive import _unions as vl_unions
from azure.ai.voicelive._utils.model_base import Model as VlModel
from azure.ai.voicelive._utils.model_base import _RestField
from azure.ai.voicelive.models import _models as vl_generated
from openai.types.beta.realtime import SessionUpdateEvent as BetaSessionUpdateEvent
from openai.types.beta.realtime.session_update_event import (
    SessionInputAudioNoiseReduction as BetaNoiseReduction,
)
from openai.types.beta.realtime.session_update_event import (
    SessionTurnDetection as BetaTurnDetection,
)
from openai.types.realtime import (
    NoiseReductionType,
    RealtimeAudioInputTurnDetection,
    RealtimeSessionCreateRequest,
)
from openai.types.realtime import (
    SessionUpdateEvent as GaSessionUpdateEvent,
)
from openai.types.realtime.realtime_audio_config_input import RealtimeAudioConfigInput

from voxbox.config import parse_config
from voxbox.realtime.dialects import UnsupportedFeature, check_features, session_config
from voxbox.realtime.session import RealtimeSession

TOOLS = [{"type": "function", "name": "get_time", "description": "The current local time.",
          "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}]


def rt(dialect: str = "openai-ga", **kw: Any):
    td = kw.pop("td", {})
    return parse_config({"realtime": {"dialect": dialect, "turn_detection": td, **kw}}).realtime


def update_event(r, tools=TOOLS, **kw) -> dict:
    """The first client event exactly as RealtimeSession.start() queues it."""
    s = RealtimeSession(r, tools)
    s.start(**kw)
    ev = json.loads(s.data_to_send()[0])
    assert ev["type"] == "session.update"
    return ev


# ---- openai (pydantic) --------------------------------------------------------------------
def no_extra(obj: Any, path: str = "") -> None:
    """Fail on any field the SDK model does not declare, at any depth."""
    if isinstance(obj, pydantic.BaseModel):
        assert not obj.model_extra, f"{path or '<root>'}: fields unknown to {type(obj).__name__}: {sorted(obj.model_extra)}"
        for name in type(obj).model_fields:
            no_extra(getattr(obj, name), f"{path}.{name}" if path else name)
    elif isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            no_extra(x, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, x in obj.items():
            no_extra(x, f"{path}.{k}")


def openai_check(model: type[pydantic.BaseModel], data: dict) -> pydantic.BaseModel:
    m = model.model_validate(data)
    no_extra(m)
    assert m.model_dump(mode="json", exclude_unset=True) == data  # nothing coerced or lost
    return m


def ga_check(event: dict) -> None:
    ev = openai_check(GaSessionUpdateEvent, event)
    assert isinstance(ev.session, RealtimeSessionCreateRequest)
    openai_check(RealtimeSessionCreateRequest, event["session"])


def beta_check(event: dict) -> None:
    openai_check(BetaSessionUpdateEvent, event)


# ---- azure-ai-voicelive (typespec models) -----------------------------------------------
_NS = {**vars(sys.modules[vl_generated.__name__]), "_models": vlm, "_unions": vl_unions}


@functools.cache
def _rest_fields(cls: type) -> dict[str, Any]:
    """rest name -> type hint, over the whole MRO."""
    hints = typing.get_type_hints(cls, globalns=_NS)
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for attr, v in vars(klass).items():
            if isinstance(v, _RestField):
                out[v._rest_name_input or attr] = hints[attr]
    return out


def _concrete(cls: type, data: dict, path: str) -> type:
    mapping = getattr(cls, "__mapping__", None)
    if not mapping:
        return cls
    disc = next((v for v in vars(cls).values() if isinstance(v, _RestField) and v._is_discriminator), None)
    if disc is None:
        return cls
    value = data.get(disc._rest_name_input)
    sub = mapping.get(value)
    assert sub is not None, f"{path}.{disc._rest_name_input}: {value!r} is not one of {sorted(mapping)} ({cls.__name__})"
    return _concrete(sub, data, path) if sub is not cls else sub


def _optional(hint: Any) -> bool:
    return hint is Any or type(None) in typing.get_args(hint)


def vl_check(value: Any, hint: Any, path: str = "session") -> None:
    """Strict check of a JSON value against an azure-ai-voicelive type hint."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return
    if hint is type(None):
        assert value is None, f"{path}: expected null"
    elif origin in (typing.Union, types.UnionType):
        errors = []
        for alt in typing.get_args(hint):
            try:
                vl_check(value, alt, path)
                return
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{path}: {value!r} matches no alternative of {hint}: {errors}")
    elif origin is typing.Literal:
        allowed = [a.value if isinstance(a, Enum) else a for a in typing.get_args(hint)]
        assert value in allowed and type(value) is type(allowed[allowed.index(value)]), \
            f"{path}: {value!r} not in {allowed}"
    elif origin is list:
        assert isinstance(value, list), f"{path}: expected a list"
        for i, x in enumerate(value):
            vl_check(x, typing.get_args(hint)[0], f"{path}[{i}]")
    elif origin is dict:
        assert isinstance(value, dict), f"{path}: expected an object"
        for k, x in value.items():
            vl_check(x, typing.get_args(hint)[1], f"{path}.{k}")
    elif isinstance(hint, type) and issubclass(hint, VlModel):
        assert isinstance(value, dict), f"{path}: expected an object ({hint.__name__})"
        cls = _concrete(hint, value, path)
        fields = _rest_fields(cls)
        unknown = set(value) - set(fields)
        assert not unknown, f"{path}: fields unknown to {cls.__name__}: {sorted(unknown)}"
        missing = {k for k, h in fields.items() if not _optional(h)} - set(value)
        assert not missing, f"{path}: {cls.__name__} requires {sorted(missing)}"
        for k, x in value.items():
            vl_check(x, fields[k], f"{path}.{k}")
    elif isinstance(hint, type) and issubclass(hint, Enum):
        assert value in [e.value for e in hint], f"{path}: {value!r} not in {hint.__name__}"
    elif hint is float:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path}: expected a number"
    elif hint in (int, str, bool):
        assert type(value) is hint, f"{path}: expected {hint.__name__}, got {value!r}"
    else:
        raise AssertionError(f"{path}: no rule for type hint {hint!r}")


def vl_event_check(event: dict) -> vlm.ClientEventSessionUpdate:
    vl_check(event, vlm.ClientEventSessionUpdate, "event")
    vl_check(event["session"], vlm.RequestSession)
    ev = vlm.ClientEventSessionUpdate(event)         # the SDK's own deserialisation
    assert isinstance(ev.session, vlm.RequestSession)
    assert ev.as_dict() == event
    return ev


CHECK = {"openai-ga": ga_check, "openai-beta": beta_check, "azure-voicelive": vl_event_check}


def vl_check_rejects(data: dict, hint: Any = vlm.RequestSession) -> str:
    with pytest.raises(AssertionError) as exc:
        vl_check(data, hint)
    return str(exc.value)


def test_validators_catch_unknown_fields():
    """The strict checks themselves: an unknown field anywhere is caught."""
    ok = session_config(rt("openai-ga"))
    bad = json.loads(json.dumps(ok))
    bad["audio"]["input"]["echo_cancellation"] = {"type": "server_echo_cancellation"}
    with pytest.raises(AssertionError, match="echo_cancellation"):
        ga_check({"type": "session.update", "session": bad})
    bad = dict(session_config(rt("openai-beta")), input_audio_echo_cancellation={"type": "server_echo_cancellation"})
    with pytest.raises(AssertionError, match="input_audio_echo_cancellation"):
        beta_check({"type": "session.update", "session": bad})
    vl = session_config(rt("azure-voicelive"))
    assert "eagerness" in vl_check_rejects({**vl, "turn_detection": {"type": "server_vad", "eagerness": "low"}})
    assert "semantic_vad" in vl_check_rejects({**vl, "turn_detection": {"type": "semantic_vad"}})
    assert "threshold" in vl_check_rejects({**vl, "turn_detection": {
        "type": "azure_semantic_vad", "end_of_utterance_detection": {"model": "semantic_detection_v1", "threshold": 0.1}}})
    assert "requires" in vl_check_rejects({**vl, "voice": {"type": "azure-standard"}})
    assert "silence_duration_ms" in vl_check_rejects({**vl, "turn_detection": {"type": "server_vad", "silence_duration_ms": "5"}})


# ---- which combinations each dialect has, read from the SDK types ------------------------
def _literals(hint: Any) -> set[str]:
    out: set[str] = set()
    for a in typing.get_args(hint) or ():
        if typing.get_origin(a) is typing.Literal or typing.get_args(a):
            out |= _literals(a)
        elif isinstance(a, (str, Enum)):
            out.add(a.value if isinstance(a, Enum) else a)
    return out


def _ga_turn_types() -> set[str]:
    union = typing.get_args(typing.get_args(RealtimeAudioInputTurnDetection)[0])
    return {t for m in union if m is not type(None) for t in _literals(m.model_fields["type"].annotation)}


SDK = {
    "openai-ga": {
        "turn": _ga_turn_types(),
        "noise": _literals(NoiseReductionType),
        "echo": "echo_cancellation" in RealtimeAudioConfigInput.model_fields,
        "eou": False,
    },
    "openai-beta": {
        "turn": _literals(BetaTurnDetection.model_fields["type"].annotation),
        "noise": _literals(BetaNoiseReduction.model_fields["type"].annotation),
        "echo": "input_audio_echo_cancellation" in BetaSessionUpdateEvent.model_fields,
        "eou": "end_of_utterance_detection" in BetaTurnDetection.model_fields,
    },
    "azure-voicelive": {
        "turn": set(vlm.TurnDetection.__mapping__),
        "noise": _literals(_rest_fields(vlm.AudioNoiseReduction)["type"]),
        "echo": "input_audio_echo_cancellation" in _rest_fields(vlm.RequestSession),
        "eou": all("end_of_utterance_detection" in _rest_fields(c) for c in vlm.TurnDetection.__mapping__.values()),
    },
}


def test_sdk_facts():
    """What the installed SDKs declare (the source of the mapping in dialects.py)."""
    assert SDK["openai-ga"]["turn"] == {"server_vad", "semantic_vad"}
    assert SDK["openai-ga"]["noise"] == {"near_field", "far_field"}
    assert SDK["openai-beta"]["turn"] == {"server_vad", "semantic_vad"}
    assert SDK["openai-beta"]["noise"] == {"near_field", "far_field"}
    assert {"server_vad", "azure_semantic_vad", "azure_semantic_vad_multilingual"} <= SDK["azure-voicelive"]["turn"]
    assert "semantic_vad" not in SDK["azure-voicelive"]["turn"]
    assert "azure_deep_noise_suppression" in SDK["azure-voicelive"]["noise"]
    assert [d for d in SDK if SDK[d]["echo"]] == ["azure-voicelive"]
    assert [d for d in SDK if SDK[d]["eou"]] == ["azure-voicelive"]
    assert set(vlm.EouDetection.__mapping__) >= {"semantic_detection_v1", "semantic_detection_v1_multilingual"}


def expected_problems(dialect: str, td_type: str, eagerness: str, eou: bool, noise: str, echo: bool,
                      transcription: str) -> set[str]:
    sdk = SDK[dialect]
    keys = set()
    if td_type != "none" and td_type not in sdk["turn"]:
        keys.add("realtime.turn_detection.type")
    if eagerness != "auto" and td_type != "semantic_vad":
        keys.add("realtime.turn_detection.eagerness")
    if eou and (not sdk["eou"] or td_type == "none" or td_type not in sdk["turn"]):
        keys.add("realtime.turn_detection.end_of_utterance")
    if noise != "off" and noise not in sdk["noise"]:
        keys.add("realtime.noise_reduction")
    if echo and not sdk["echo"]:
        keys.add("realtime.server_echo_cancellation")
    if transcription == "azure-speech" and dialect != "azure-voicelive":
        keys.add("realtime.transcription_model")
    return keys


TD_TYPES = ["server_vad", "semantic_vad", "azure_semantic_vad", "azure_semantic_vad_multilingual", "none"]
NOISE = ["off", "near_field", "far_field", "azure_deep_noise_suppression"]


@pytest.mark.parametrize("dialect", ["openai-ga", "openai-beta", "azure-voicelive"])
def test_every_combination_validates_or_is_refused(dialect):
    """dialect x turn type x eagerness x end-of-utterance x noise x echo x transcription:
    the session.update validates against the SDK, or both check_features and session_config
    refuse it naming exactly the offending keys."""
    transcriptions = ["", "whisper-1", "azure-speech"]
    validated = refused = 0
    for td_type, eag, eou, noise, echo, tr in itertools.product(
            TD_TYPES, ["auto", "low"], [False, True], NOISE, [False, True], transcriptions):
        r = rt(dialect, td={"type": td_type, "eagerness": eag, "end_of_utterance": eou},
               noise_reduction=noise, server_echo_cancellation=echo, transcription_model=tr)
        want = expected_problems(dialect, td_type, eag, eou, noise, echo, tr)
        case = f"{dialect} {td_type} eagerness={eag} eou={eou} noise={noise} echo={echo} tr={tr!r}"
        if want:
            for fn in (check_features, session_config):
                with pytest.raises(UnsupportedFeature) as exc:
                    fn(r)
                named = {p.split(":")[0] for p in exc.value.problems}
                assert named == want, case
                assert all(f"dialect {dialect}" in p or "applies only" in p or "needs server" in p
                           for p in exc.value.problems), case
            refused += 1
            continue
        check_features(r)
        for ptt in (True, False):
            ev = update_event(r, turn_detection=ptt)
            try:
                CHECK[dialect](ev)
            except AssertionError as e:
                raise AssertionError(f"{case} push_to_talk={not ptt}: {e}") from None
        validated += 1
    assert validated and refused


# ---- the expected keys, per dialect and feature ------------------------------------------
def test_ga_features():
    r = rt("openai-ga", td={"type": "semantic_vad", "eagerness": "low", "interrupt_response": False},
           noise_reduction="far_field", transcription_model="gpt-4o-mini-transcribe")
    ev = update_event(r)
    ga_check(ev)
    inp = ev["session"]["audio"]["input"]
    assert inp["turn_detection"] == {"type": "semantic_vad", "eagerness": "low", "create_response": True,
                                     "interrupt_response": False}
    assert inp["noise_reduction"] == {"type": "far_field"}
    assert inp["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert set(ev["session"]) == {"type", "instructions", "output_modalities", "audio", "tools", "tool_choice"}
    plain = session_config(rt("openai-ga"))["audio"]["input"]
    assert set(plain) == {"format", "turn_detection"}   # "off" sends nothing
    assert "eagerness" not in session_config(rt("openai-ga", td={"type": "semantic_vad"}))["audio"]["input"]["turn_detection"]


def test_beta_features():
    r = rt("openai-beta", td={"type": "semantic_vad", "eagerness": "high"}, noise_reduction="near_field",
           transcription_model="whisper-1", voice="alloy")
    ev = update_event(r)
    beta_check(ev)
    s = ev["session"]
    assert s["turn_detection"] == {"type": "semantic_vad", "eagerness": "high", "create_response": True,
                                   "interrupt_response": True}
    assert s["input_audio_noise_reduction"] == {"type": "near_field"}
    assert s["input_audio_transcription"] == {"model": "whisper-1"}
    assert "audio" not in s and "input_audio_echo_cancellation" not in s


@pytest.mark.parametrize("td_type,eou_model,sdk_class", [
    ("azure_semantic_vad", "semantic_detection_v1", vlm.AzureSemanticVad),
    ("azure_semantic_vad_multilingual", "semantic_detection_v1_multilingual", vlm.AzureSemanticVadMultilingual),
    ("server_vad", "semantic_detection_v1", vlm.ServerVad),
])
def test_voicelive_features(td_type, eou_model, sdk_class):
    r = rt("azure-voicelive", td={"type": td_type, "end_of_utterance": True, "silence_duration_ms": 400},
           noise_reduction="azure_deep_noise_suppression", server_echo_cancellation=True,
           transcription_model="azure-speech", voice="en-US-Ava:DragonHDLatestNeural", model="gpt-4.1")
    assert check_features(r) == []
    ev = vl_event_check(update_event(r))
    s = ev.session
    assert isinstance(s.turn_detection, sdk_class)
    assert s.turn_detection.silence_duration_ms == 400
    assert isinstance(s.turn_detection.end_of_utterance_detection, vlm.EouDetection.__mapping__[eou_model])
    assert s.turn_detection.end_of_utterance_detection.as_dict() == {"model": eou_model}
    assert s.input_audio_noise_reduction.as_dict() == {"type": "azure_deep_noise_suppression"}
    assert s.input_audio_echo_cancellation.as_dict() == {"type": "server_echo_cancellation"}
    assert s.input_audio_transcription.as_dict() == {"model": "azure-speech"}
    assert isinstance(s.voice, dict) and s.as_dict()["voice"] == {"name": "en-US-Ava:DragonHDLatestNeural",
                                                                  "type": "azure-standard"}
    assert isinstance(s.tools[0], vlm.FunctionTool)


def test_voicelive_defaults_send_no_extras():
    s = session_config(rt("azure-voicelive", td={"type": "azure_semantic_vad"}))
    assert "end_of_utterance_detection" not in s["turn_detection"]
    assert not {"input_audio_noise_reduction", "input_audio_echo_cancellation", "input_audio_transcription"} & set(s)
    assert s["voice"] == "marin"   # OpenAI voice names stay plain strings (RequestSession.voice: str)


@pytest.mark.parametrize("dialect,kw,key", [
    ("openai-ga", {"noise_reduction": "azure_deep_noise_suppression"}, "realtime.noise_reduction"),
    ("openai-beta", {"server_echo_cancellation": True}, "realtime.server_echo_cancellation"),
    ("openai-ga", {"td": {"type": "azure_semantic_vad"}}, "realtime.turn_detection.type"),
    ("openai-beta", {"td": {"type": "server_vad", "end_of_utterance": True}}, "realtime.turn_detection.end_of_utterance"),
    ("azure-voicelive", {"td": {"type": "semantic_vad"}}, "realtime.turn_detection.type"),
    ("azure-voicelive", {"td": {"type": "none", "end_of_utterance": True}}, "realtime.turn_detection.end_of_utterance"),
    ("openai-ga", {"td": {"type": "server_vad", "eagerness": "high"}}, "realtime.turn_detection.eagerness"),
    ("openai-ga", {"transcription_model": "azure-speech"}, "realtime.transcription_model"),
])
def test_unsupported_names_the_key(dialect, kw, key):
    r = rt(dialect, **kw)
    with pytest.raises(ValueError, match=rf"^{key}: .*") as exc:
        check_features(r)
    assert isinstance(exc.value, UnsupportedFeature) and exc.value.problems[0].startswith(key)
    with pytest.raises(UnsupportedFeature, match=key):
        RealtimeSession(r).start()


def test_all_problems_reported_at_once():
    r = rt("openai-ga", noise_reduction="azure_deep_noise_suppression", server_echo_cancellation=True,
           td={"type": "azure_semantic_vad_multilingual", "end_of_utterance": True})
    with pytest.raises(UnsupportedFeature) as exc:
        check_features(r)
    assert [p.split(":")[0] for p in exc.value.problems] == [
        "realtime.turn_detection.type", "realtime.turn_detection.end_of_utterance",
        "realtime.noise_reduction", "realtime.server_echo_cancellation"]
    assert "not available in dialect openai-ga" in str(exc.value)


def test_voicelive_warnings():
    eou_native = rt("azure-voicelive", model="gpt-realtime", td={"type": "azure_semantic_vad", "end_of_utterance": True})
    assert any(w.startswith("realtime.turn_detection.end_of_utterance") for w in check_features(eou_native))
    odd = rt("azure-voicelive", transcription_model="my-deployment")
    assert [w.split(":")[0] for w in check_features(odd)] == ["realtime.transcription_model"]
    vl_event_check(update_event(odd))   # still valid for the SDK (model is an open string)
    assert check_features(rt("openai-ga", transcription_model="my-deployment")) == []


# ---- the local test server accepts what the device sends ---------------------------------
LOCAL_DIALECTS = {"openai-ga": ["openai-ga", "azure-ga"], "openai-beta": ["openai-beta", "azure-preview"],
                  "azure-voicelive": ["voice-live"]}


@pytest.mark.parametrize("dialect", ["openai-ga", "openai-beta", "azure-voicelive"])
def test_localserver_accepts_every_valid_session(dialect):
    from voxbox.parrot.server import DIALECTS, LocalServerConfig, SessionCore

    cores = [SessionCore(DIALECTS[name], config=LocalServerConfig(seed=1)) for name in LOCAL_DIALECTS[dialect]]
    n = 0
    for td_type, eou, noise, echo, tr in itertools.product(
            TD_TYPES, [False, True], NOISE, [False, True], ["", "whisper-1", "azure-speech"]):
        if expected_problems(dialect, td_type, "auto", eou, noise, echo, tr):
            continue
        r = rt(dialect, td={"type": td_type, "end_of_utterance": eou}, noise_reduction=noise,
               server_echo_cancellation=echo, transcription_model=tr)
        ev = update_event(r)
        for core in cores:
            out = core.handle_event(ev)
            assert [e["type"] for e in out] == ["session.updated"], (core.dialect.name, ev, out)
            s = out[0]["session"]
            td = s["audio"]["input"]["turn_detection"] if core.dialect.ga_names else s["turn_detection"]
            assert (td or {}).get("type", "none") == td_type
            if eou:
                assert td["end_of_utterance_detection"] == ev["session"]["turn_detection"]["end_of_utterance_detection"]
        n += 1
    assert n
