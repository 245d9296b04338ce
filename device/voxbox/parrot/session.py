"""The local Realtime server's protocol core: ``SessionCore``, one connection's state.

Sans-I/O: client JSON in, server events out (``handle_text`` / ``handle_event``), no
sockets or clocks. It holds the dialect-shaped session object, the input audio buffer on a
session-wide sample timeline (int16 at the session's input rate: 24 kHz, or 16 kHz on
Voice Live if asked), the server VAD (:mod:`voxbox.parrot.vad`), the conversation items
and the active response; the responses themselves are
:class:`voxbox.parrot.responses.ResponseGeneration`, stepped by the adapter
(``ResponseStream.next_delay`` / ``step_response``).

Facts and their sources are in comments next to each decision; the digest is
/work/shared/reference/realtime-device-notes.md.
"""
from __future__ import annotations

import base64
import binascii
import copy
import json
import random
import time
from typing import Any

import numpy as np

from voxbox.parrot.config import LocalServerConfig, ToolScript
from voxbox.parrot.handshake import Dialect
from voxbox.parrot.record import summarize_client_event
from voxbox.parrot.responses import ResponseGeneration, ResponseStream
from voxbox.parrot.schema import (
    AZURE_VAD_KEYS,
    AZURE_VAD_TYPES,
    BETA_SESSION_KEYS,
    BETA_TURN_KEYS,
    CLIENT_EVENT_TYPES,
    GA_SERVER_VAD_KEYS,
    GA_SESSION_KEYS,
    SEMANTIC_SILENCE_MS,
    SEMANTIC_VAD_KEYS,
    VOICE_LIVE_SESSION_KEYS,
    ClientEventError,
    Item,
    _check_bool,
    _check_enum,
    _check_keys,
    _check_num,
    _invalid,
    default_session,
    default_turn_detection,
)
from voxbox.parrot.vad import EnergyVad, SpeechVad, speech_vad_available
from voxbox.parrot.wire import MAX_APPEND_BYTES, MIN_COMMIT_MS, OUTPUT_RATE, new_id


def _deep_merge(base: dict, patch: dict, replace_keys: set[str]) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if k in replace_keys or not isinstance(v, dict) or not isinstance(out.get(k), dict):
            out[k] = copy.deepcopy(v)
        else:
            out[k] = _deep_merge(out[k], v, replace_keys)
    return out


class SessionCore(ResponseGeneration):
    """Per-connection Realtime protocol state, without sockets or clocks.

    ``handle_text`` takes one client message and returns the server events to send, in
    order. The adapter drives a running response with ``active.next_delay()`` and
    ``step_response()`` and schedules ``take_deferred()`` events after their delays.
    """

    def __init__(self, dialect: Dialect, *, model: str = "gpt-realtime",
                 config: LocalServerConfig | None = None, now: float | None = None,
                 max_session_s: float | None = None, tool_script: ToolScript | None = None) -> None:
        self.dialect = dialect
        self.cfg = config or LocalServerConfig()
        self.tool_script = tool_script if tool_script is not None else ToolScript(self.cfg.tool_calls)
        self._replies = 0  # audio replies from cfg.reply_audio so far
        self.max_session_s = max_session_s or self.cfg.max_session_s or dialect.default_max_session_s
        created = time.time() if now is None else now
        self.session_id = new_id("sess")
        self.conversation_id = new_id("conv")
        self.session = default_session(dialect, self.session_id, model,
                                       int(created + self.max_session_s))
        self.items: list[Item] = []
        self.rng = random.Random(self.cfg.seed)
        # input buffer on a session-wide sample timeline
        self._chunks: list[np.ndarray] = []
        self._buf_start = 0                   # timeline index of the first buffered sample
        self.total_samples = 0                # samples appended this session (input rate)
        self.uplink_samples = 0
        self.last_append: np.ndarray | None = None  # the samples of the last append handled
        self.vad: SpeechVad | EnergyVad | None = None
        self._speech_item: str | None = None
        self._speech_start = 0
        self.active: ResponseStream | None = None
        self._pending_auto_response = False
        self.audio_output_started = False
        self._deferred: list[tuple[float, list[dict]]] = []
        self.last_client_summary: dict | None = None
        self.truncates: list[dict] = []
        # function calls: scripted calls started (status "called") or skipped entries
        # (status "skipped"), and function_call_output items received, in order
        self.function_calls: list[dict] = []
        self.function_outputs: list[dict] = []
        # Set (to an error {type, code, message}) and every response fails at once:
        # response.created, then response.done with status "failed" (e.g. insufficient_quota).
        self.response_failure: dict | None = None
        self._rebuild_vad()

    # ---- session accessors (dialect-shaped session dict) --------------------------------
    @property
    def input_rate(self) -> int:
        if self.dialect.voice_live:
            return int(self.session.get("input_audio_sampling_rate") or OUTPUT_RATE)
        return OUTPUT_RATE

    @property
    def turn_detection(self) -> dict | None:
        if self.dialect.ga_names:
            return self.session["audio"]["input"].get("turn_detection")
        return self.session.get("turn_detection")

    @property
    def transcription(self) -> dict | None:
        if self.dialect.ga_names:
            return self.session["audio"]["input"].get("transcription")
        return self.session.get("input_audio_transcription")

    @property
    def voice(self) -> Any:
        if self.dialect.ga_names:
            return self.session["audio"]["output"].get("voice")
        return self.session.get("voice")

    @property
    def modalities(self) -> list[str]:
        key = "output_modalities" if self.dialect.ga_names else "modalities"
        return list(self.session.get(key) or ["audio"])

    def _rebuild_vad(self) -> None:
        td = self.turn_detection
        if not td:
            self.vad = None
            self._speech_item = None
            return
        silence = td.get("silence_duration_ms")
        if td.get("type") == "semantic_vad":
            silence = SEMANTIC_SILENCE_MS.get(td.get("eagerness") or "auto", 600)
        opts: dict[str, Any] = {"threshold": td.get("threshold") or 0.5,
                                 "prefix_padding_ms": td.get("prefix_padding_ms", 300) or 0,
                                 "silence_duration_ms": silence if silence is not None else 500,
                                 "min_speech_ms": self.cfg.vad_min_speech_ms}
        vad: SpeechVad | EnergyVad
        if self.cfg.vad == "speech" and speech_vad_available():
            vad = SpeechVad(self.input_rate, **opts)
        else:
            vad = EnergyVad(self.input_rate, frame_ms=self.cfg.vad_frame_ms, **opts)
        vad.pos = self.total_samples
        self.vad = vad
        self._speech_item = None

    # ---- event helpers -------------------------------------------------------------------
    def _ev(self, type_: str, **fields: Any) -> dict:
        return {"type": type_, "event_id": new_id("event"), **fields}

    def _error(self, err: ClientEventError, client_event_id: str | None) -> dict:
        return self._ev("error", error={"type": err.type, "code": err.code, "message": err.message,
                                        "param": err.param, "event_id": client_event_id})

    def _ms(self, samples: int, rate: int | None = None) -> int:
        return int(samples * 1000 // (rate or self.input_rate))

    def _names(self, kind: str) -> str:
        ga = self.dialect.ga_names
        return {
            "audio.delta": "response.output_audio.delta" if ga else "response.audio.delta",
            "audio.done": "response.output_audio.done" if ga else "response.audio.done",
            "transcript.delta": "response.output_audio_transcript.delta" if ga else "response.audio_transcript.delta",
            "transcript.done": "response.output_audio_transcript.done" if ga else "response.audio_transcript.done",
            "text.delta": "response.output_text.delta" if ga else "response.text.delta",
            "text.done": "response.output_text.done" if ga else "response.text.done",
        }[kind]

    def _item_events(self, item: Item, previous_item_id: str | None, done: bool = True) -> list[dict]:
        """Beta: conversation.item.created. GA: conversation.item.added (+ .done)."""
        if self.dialect.ga_names:
            evs = [self._ev("conversation.item.added", previous_item_id=previous_item_id, item=item.wire())]
            if done:
                evs.append(self._ev("conversation.item.done", previous_item_id=previous_item_id, item=item.wire()))
            return evs
        return [self._ev("conversation.item.created", previous_item_id=previous_item_id, item=item.wire())]

    def take_deferred(self) -> list[tuple[float, list[dict]]]:
        out, self._deferred = self._deferred, []
        return out

    def _find(self, item_id: Any) -> Item | None:
        for it in self.items:
            if it.id == item_id:
                return it
        return None

    # ---- connection lifecycle ------------------------------------------------------------
    def open_events(self) -> list[dict]:
        evs = [self._ev("session.created", session=copy.deepcopy(self.session))]
        if self.dialect.sends_conversation_created:
            evs.append(self._ev("conversation.created",
                                conversation={"id": self.conversation_id, "object": "realtime.conversation"}))
        return evs

    def expire_events(self) -> list[dict]:
        """At the session limit: error session_expired (then the adapter closes 1001)."""
        out: list[dict] = []
        minutes = self.max_session_s / 60
        mtxt = f"{minutes:g} minutes" if minutes >= 1 else f"{self.max_session_s:g} seconds"
        out.append(self._error(ClientEventError(
            "session_expired", f"Your session hit the maximum duration of {mtxt}."), None))
        if self.active is not None:
            self.active.finished = True
            self.active = None
        return out

    # ---- client messages -----------------------------------------------------------------
    def handle_text(self, text: str | bytes) -> list[dict]:
        self.last_client_summary = None
        try:
            ev = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            self.last_client_summary = {"type": None, "invalid_json": True}
            return [self._error(ClientEventError(
                "invalid_json", f"The server could not parse the JSON in your message: {e}."), None)]
        if not isinstance(ev, dict):
            self.last_client_summary = {"type": None, "invalid_json": True}
            return [self._error(ClientEventError(
                "invalid_json", "Expected a JSON object with a 'type' field."), None)]
        return self.handle_event(ev)

    def handle_event(self, ev: dict) -> list[dict]:
        client_id = ev.get("event_id") if isinstance(ev.get("event_id"), str) else None
        self.last_client_summary = summarize_client_event(ev)
        t = ev.get("type")
        try:
            if not isinstance(t, str):
                raise ClientEventError("missing_required_parameter", "Missing required parameter: 'type'.", "type")
            handler = {
                "session.update": self._on_session_update,
                "input_audio_buffer.append": self._on_append,
                "input_audio_buffer.commit": self._on_commit,
                "input_audio_buffer.clear": self._on_clear,
                "conversation.item.create": self._on_item_create,
                "conversation.item.truncate": self._on_truncate,
                "conversation.item.delete": self._on_delete,
                "conversation.item.retrieve": self._on_retrieve,
                "response.create": self._on_response_create,
                "response.cancel": self._on_response_cancel,
            }.get(t)
            if handler is None:
                raise _invalid("type", t, CLIENT_EVENT_TYPES)
            return handler(ev, client_id)
        except ClientEventError as err:
            return [self._error(err, client_id)]

    # -- session.update
    def _validate_turn_detection(self, td: Any, where: str) -> None:
        if td is None:
            return
        if not isinstance(td, dict):
            raise _invalid(where, td, detail="Expected an object or null.")
        types = ["server_vad", "semantic_vad"]
        if self.dialect.voice_live:
            types += list(AZURE_VAD_TYPES)
        if "type" not in td:
            raise ClientEventError("missing_required_parameter", f"Missing required parameter: '{where}.type'.",
                                f"{where}.type")
        _check_enum(td, "type", where, types)
        if self.dialect.ga_names:
            keys = GA_SERVER_VAD_KEYS if td["type"] == "server_vad" else SEMANTIC_VAD_KEYS
        elif self.dialect.voice_live:
            keys = AZURE_VAD_KEYS | {"eagerness"}
        else:
            keys = BETA_TURN_KEYS
        _check_keys(td, keys, where)
        _check_num(td, "threshold", where, 0.0, 1.0)
        _check_num(td, "prefix_padding_ms", where, 0, 10_000, integer=True)
        _check_num(td, "silence_duration_ms", where, 0, 10_000, integer=True)
        _check_num(td, "idle_timeout_ms", where, 0, 3_600_000, integer=True)
        _check_bool(td, "create_response", where)
        _check_bool(td, "interrupt_response", where)
        _check_enum(td, "eagerness", where, ["low", "medium", "high", "auto"])

    def _validate_voice(self, voice: Any, where: str) -> None:
        if self.dialect.voice_live and isinstance(voice, dict):
            _check_enum(voice, "type", where, ["openai", "azure-standard", "azure-custom", "azure-personal",
                                               "avatar-voice-sync"])
            if not isinstance(voice.get("name"), str):
                raise _invalid(f"{where}.name", voice.get("name"), detail="Expected a string.")
        elif self.dialect.ga_names and isinstance(voice, dict):
            _check_keys(voice, {"id"}, where)
        elif not isinstance(voice, str):
            raise _invalid(where, voice, detail="Expected a string.")
        if self.audio_output_started and voice != self.voice:
            raise ClientEventError("invalid_value",
                                "Cannot update a conversation's voice if assistant audio is present.", where)

    def _validate_ga_session(self, s: dict) -> None:
        if "type" not in s:
            raise ClientEventError("missing_required_parameter", "Missing required parameter: 'session.type'.",
                                "session.type")
        if s["type"] != "realtime":
            raise _invalid("session.type", s["type"], ["realtime"],
                           "This local server supports realtime sessions only.")
        _check_keys(s, GA_SESSION_KEYS, "session")
        if "output_modalities" in s:
            om = s["output_modalities"]
            if not isinstance(om, list) or not om or any(m not in ("text", "audio") for m in om):
                raise _invalid("session.output_modalities", om, ["text", "audio"])
        self._check_max_tokens(s, "max_output_tokens", "session")
        if "instructions" in s and not isinstance(s["instructions"], str):
            raise _invalid("session.instructions", s["instructions"], detail="Expected a string.")
        if "audio" not in s:
            return
        audio = _check_keys(s["audio"], {"input", "output"}, "session.audio")
        if "input" in audio:
            inp = _check_keys(audio["input"], {"format", "transcription", "noise_reduction", "turn_detection"},
                              "session.audio.input")
            if "format" in inp:
                self._validate_ga_format(inp["format"], "session.audio.input.format")
            if inp.get("transcription") is not None:
                _check_keys(inp["transcription"], {"model", "language", "prompt", "delay", "keywords", "languages"},
                            "session.audio.input.transcription")
            if inp.get("noise_reduction") is not None:
                nr = _check_keys(inp["noise_reduction"], {"type", "strength"}, "session.audio.input.noise_reduction")
                _check_enum(nr, "type", "session.audio.input.noise_reduction", ["near_field", "far_field"])
            if "turn_detection" in inp:
                self._validate_turn_detection(inp["turn_detection"], "session.audio.input.turn_detection")
        if "output" in audio:
            out = _check_keys(audio["output"], {"format", "voice", "speed"}, "session.audio.output")
            if "format" in out:
                self._validate_ga_format(out["format"], "session.audio.output.format")
            if "voice" in out:
                self._validate_voice(out["voice"], "session.audio.output.voice")
            _check_num(out, "speed", "session.audio.output", 0.25, 1.5)

    def _validate_ga_format(self, fmt: Any, where: str) -> None:
        _check_keys(fmt, {"type", "rate"}, where)
        _check_enum(fmt, "type", where, ["audio/pcm", "audio/pcmu", "audio/pcma"])
        if fmt.get("type", "audio/pcm") == "audio/pcm" and "rate" in fmt:
            _check_enum(fmt, "rate", where, [OUTPUT_RATE])

    def _check_max_tokens(self, s: dict, key: str, where: str) -> None:
        if key in s and s[key] is not None and s[key] != "inf":
            v = s[key]
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096:
                raise _invalid(f"{where}.{key}", v, detail="Expected an integer in [1, 4096] or 'inf'.")

    def _validate_beta_session(self, s: dict) -> None:
        keys = VOICE_LIVE_SESSION_KEYS if self.dialect.voice_live else BETA_SESSION_KEYS
        _check_keys(s, keys, "session")
        if "modalities" in s:
            m = s["modalities"]
            if not isinstance(m, list) or not m or any(x not in ("text", "audio") for x in m):
                raise _invalid("session.modalities", m, ["text", "audio"])
        in_formats = ["pcm16", "g711_ulaw", "g711_alaw"]
        out_formats = in_formats + (["pcm16_8000hz", "pcm16_16000hz"] if self.dialect.voice_live else [])
        _check_enum(s, "input_audio_format", "session", in_formats)
        _check_enum(s, "output_audio_format", "session", out_formats)
        if "voice" in s:
            self._validate_voice(s["voice"], "session.voice")
        if "turn_detection" in s:
            self._validate_turn_detection(s["turn_detection"], "session.turn_detection")
        if s.get("input_audio_transcription") is not None:
            tkeys = {"model", "language", "prompt"}
            if self.dialect.voice_live:
                tkeys = {"model", "language", "custom_speech", "phrase_list"}
            _check_keys(s["input_audio_transcription"], tkeys, "session.input_audio_transcription")
        if s.get("input_audio_noise_reduction") is not None:
            nr = _check_keys(s["input_audio_noise_reduction"], {"type"}, "session.input_audio_noise_reduction")
            nr_types = ["near_field", "far_field"] + (["azure_deep_noise_suppression"] if self.dialect.voice_live else [])
            _check_enum(nr, "type", "session.input_audio_noise_reduction", nr_types)
        if s.get("input_audio_echo_cancellation") is not None:
            ec = _check_keys(s["input_audio_echo_cancellation"], {"type", "reference_source", "channels"},
                             "session.input_audio_echo_cancellation")
            _check_enum(ec, "type", "session.input_audio_echo_cancellation", ["server_echo_cancellation"])
        _check_enum(s, "input_audio_sampling_rate", "session", [16000, 24000])
        _check_num(s, "temperature", "session", 0.6, 1.2)
        _check_num(s, "speed", "session", 0.25, 1.5)
        self._check_max_tokens(s, "max_response_output_tokens", "session")
        if "instructions" in s and not isinstance(s["instructions"], str):
            raise _invalid("session.instructions", s["instructions"], detail="Expected a string.")

    def _on_session_update(self, ev: dict, cid: str | None) -> list[dict]:
        s = ev.get("session")
        if not isinstance(s, dict):
            raise ClientEventError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        if self.dialect.ga_names:
            self._validate_ga_session(s)
            td_changed = "turn_detection" in (s.get("audio") or {}).get("input", {})
        else:
            self._validate_beta_session(s)
            td_changed = "turn_detection" in s or "input_audio_sampling_rate" in s
        replace_keys = {"turn_detection", "transcription", "noise_reduction", "format", "voice",
                        "input_audio_transcription", "input_audio_noise_reduction",
                        "input_audio_echo_cancellation", "tracing", "prompt"}
        patch = copy.deepcopy(s)
        td_where = (patch.get("audio") or {}).get("input") if self.dialect.ga_names else patch
        if isinstance(td_where, dict) and td_where.get("turn_detection"):
            td_where["turn_detection"] = default_turn_detection(self.dialect, td_where["turn_detection"])
        self.session = _deep_merge(self.session, patch, replace_keys)
        if td_changed:
            self._rebuild_vad()
        return [self._ev("session.updated", session=copy.deepcopy(self.session))]

    # -- input audio
    def _buffered(self) -> int:
        return self.total_samples - self._buf_start

    def _buffer_slice(self, start: int, end: int) -> np.ndarray:
        data = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        self._chunks = [data] if len(data) else []
        a = max(0, start - self._buf_start)
        b = max(a, end - self._buf_start)
        return data[a:b].copy()

    def _drop_before(self, pos: int) -> None:
        """Drop buffered samples before timeline index ``pos``."""
        while self._chunks and self._buf_start + len(self._chunks[0]) <= pos:
            self._buf_start += len(self._chunks[0])
            self._chunks.pop(0)
        if self._chunks and self._buf_start < pos:
            cut = pos - self._buf_start
            self._chunks[0] = self._chunks[0][cut:]
            self._buf_start = pos
        if not self._chunks:
            self._buf_start = max(self._buf_start, min(pos, self.total_samples))

    def _on_append(self, ev: dict, cid: str | None) -> list[dict]:
        audio = ev.get("audio")
        if not isinstance(audio, str):
            raise ClientEventError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid("audio", audio[:16] + "...", detail="Expected base64-encoded audio.") from None
        if len(raw) > MAX_APPEND_BYTES:
            raise _invalid("audio", f"<{len(raw)} bytes>", detail="Audio chunks are limited to 15 MiB.")
        samples = np.frombuffer(raw[: len(raw) - (len(raw) % 2)], dtype="<i2").astype(np.int16)
        n = len(samples)
        self.uplink_samples += n
        self.last_append = samples
        if n == 0:
            return []
        self._chunks.append(samples)
        self.total_samples += n
        out: list[dict] = []
        if self.vad is None:
            return out
        for kind, pos in self.vad.feed(samples):
            if kind == "start":
                pos = max(pos, self._buf_start)
                self._speech_item = new_id("item")
                self._speech_start = pos
                out.append(self._ev("input_audio_buffer.speech_started", audio_start_ms=self._ms(pos),
                                    item_id=self._speech_item))
                td = self.turn_detection or {}
                if self.active is not None and td.get("interrupt_response", True):
                    out += self._cancel_active("turn_detected")
            elif kind == "stop" and self._speech_item is not None:
                item_id, self._speech_item = self._speech_item, None
                out.append(self._ev("input_audio_buffer.speech_stopped", audio_end_ms=self._ms(pos),
                                    item_id=item_id))
                out += self._commit(self._speech_start, pos, item_id)
                td = self.turn_detection or {}
                if td.get("create_response", True):
                    if self.active is None:
                        out += self._start_response({}, None)
                    else:
                        self._pending_auto_response = True
        if self.vad is not None and not self.vad.speaking:
            # Bound memory while nobody speaks: keep what a manual commit may want (the last
            # 60 s) and at least what a future speech_started can reach back to (prefix).
            keep = max(60 * self.input_rate, self.vad.prefix + self.vad.frame * (self.vad.min_frames + 2))
            if self._buffered() > keep + 10 * self.input_rate:
                self._drop_before(self.total_samples - keep)
        return out

    def _commit(self, start: int, end: int, item_id: str) -> list[dict]:
        audio = self._buffer_slice(start, end)
        self._drop_before(end)
        prev = self.items[-1].id if self.items else None
        item = Item(id=item_id, type="message", role="user",
                    content=[{"type": "input_audio", "transcript": None}], samples=audio, rate=self.input_rate)
        self.items.append(item)
        out = [self._ev("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id)]
        out += self._item_events(item, prev)
        if self.transcription:
            secs = len(audio) / self.input_rate
            tr = self._ev("conversation.item.input_audio_transcription.completed", item_id=item_id,
                          content_index=0, transcript=f"(local parrot transcript: {secs:.1f} s of speech)")
            if not self.dialect.voice_live:       # Voice Live's event has no usage field
                tr["usage"] = {"type": "duration", "seconds": round(secs, 3)}
            self._deferred.append((self.cfg.transcription_delay_s, [tr]))
        return out

    def _on_commit(self, ev: dict, cid: str | None) -> list[dict]:
        n = self._buffered()
        ms = n * 1000 / self.input_rate
        if ms < MIN_COMMIT_MS:
            raise ClientEventError(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                f"of audio, but buffer only has {ms:.2f}ms of audio.")
        item_id = self._speech_item or new_id("item")
        self._speech_item = None
        out = self._commit(self._buf_start, self.total_samples, item_id)
        if self.vad is not None:
            self.vad.skip_to(self.total_samples)
        return out

    def _on_clear(self, ev: dict, cid: str | None) -> list[dict]:
        self._chunks = []
        self._buf_start = self.total_samples
        self._speech_item = None
        if self.vad is not None:
            self.vad.skip_to(self.total_samples)
        return [self._ev("input_audio_buffer.cleared")]

    # -- conversation items
    def _on_item_create(self, ev: dict, cid: str | None) -> list[dict]:
        it = ev.get("item")
        if not isinstance(it, dict):
            raise ClientEventError("missing_required_parameter", "Missing required parameter: 'item'.", "item")
        t = it.get("type")
        if t not in ("message", "function_call", "function_call_output"):
            raise _invalid("item.type", t, ["message", "function_call", "function_call_output"])
        item_id = it.get("id") or new_id("item")
        if not isinstance(item_id, str):
            raise _invalid("item.id", item_id, detail="Expected a string.")
        if self._find(item_id) is not None:
            raise _invalid("item.id", item_id, detail="An item with this id already exists.")
        item = Item(id=item_id, type=t)
        if t == "message":
            role = it.get("role")
            if role not in ("user", "assistant", "system"):
                raise _invalid("item.role", role, ["user", "assistant", "system"])
            item.role = role
            content = it.get("content")
            if not isinstance(content, list):
                raise ClientEventError("missing_required_parameter", "Missing required parameter: 'item.content'.",
                                    "item.content")
            ga = self.dialect.ga_names
            allowed = {"user": ["input_text", "input_audio"] + (["input_image"] if ga else []),
                       "system": ["input_text"],
                       "assistant": ["output_text", "output_audio"] if ga else ["text", "audio"]}[role]
            parts: list[dict] = []
            audio_parts: list[np.ndarray] = []
            for i, c in enumerate(content):
                if not isinstance(c, dict) or c.get("type") not in allowed:
                    raise _invalid(f"item.content[{i}].type", c.get("type") if isinstance(c, dict) else c, allowed)
                part = {k: v for k, v in c.items() if k != "audio"}
                if isinstance(c.get("audio"), str):
                    try:
                        raw = base64.b64decode(c["audio"], validate=True)
                    except (binascii.Error, ValueError):
                        raise _invalid(f"item.content[{i}].audio", c["audio"][:16] + "...",
                                       detail="Expected base64-encoded audio.") from None
                    audio_parts.append(np.frombuffer(raw[: len(raw) - len(raw) % 2], "<i2").astype(np.int16))
                    part.setdefault("transcript", None)
                parts.append(part)
            item.content = parts
            if audio_parts:
                item.samples = np.concatenate(audio_parts)
                item.rate = self.input_rate
        elif t == "function_call_output":
            if not isinstance(it.get("call_id"), str) or not isinstance(it.get("output"), str):
                missing = "call_id" if not isinstance(it.get("call_id"), str) else "output"
                raise ClientEventError("missing_required_parameter", f"Missing required parameter: 'item.{missing}'.",
                                    f"item.{missing}")
            # "If passed on a function_call_output item, the server will check that a
            # function_call item with the same ID exists in the conversation history"
            # (openai.types.beta.realtime.ConversationItem.call_id). The error's wording is
            # this server's; code and param follow the other invalid_value errors.
            call_id = it["call_id"]
            if not any(x.type == "function_call" and x.extra.get("call_id") == call_id for x in self.items):
                raise _invalid("item.call_id", call_id,
                               detail=f"Tool call ID '{call_id}' not found in conversation.")
            item.extra = {"call_id": call_id, "output": it["output"]}
        else:
            item.extra = {k: it.get(k) for k in ("call_id", "name", "arguments")}
        prev = ev.get("previous_item_id")
        if prev is None:
            prev_id = self.items[-1].id if self.items else None
            self.items.append(item)
        elif prev == "root":
            prev_id = None
            self.items.insert(0, item)
        else:
            p = self._find(prev)
            if p is None:
                raise _invalid("previous_item_id", prev, detail="No item with this id in the conversation.")
            prev_id = prev
            self.items.insert(self.items.index(p) + 1, item)
        if t == "function_call_output":
            self.function_outputs.append({"call_id": item.extra["call_id"], "output": item.extra["output"],
                                          "item_id": item_id, "event_id": cid})
        return self._item_events(item, prev_id)

    def _on_truncate(self, ev: dict, cid: str | None) -> list[dict]:
        for k in ("item_id", "content_index", "audio_end_ms"):
            if k not in ev:
                raise ClientEventError("missing_required_parameter", f"Missing required parameter: '{k}'.", k)
        item_id, ci, end_ms = ev["item_id"], ev["content_index"], ev["audio_end_ms"]
        self.truncates.append({"item_id": item_id, "content_index": ci, "audio_end_ms": end_ms,
                               "event_id": cid})
        item = self._find(item_id)
        if item is None:
            raise _invalid("item_id", item_id, detail="No item with this id in the conversation.")
        if not item.is_assistant_audio:
            raise _invalid("item_id", item_id, detail="Only assistant messages with audio can be truncated.")
        if ci != 0:
            raise _invalid("content_index", ci, [0])
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise _invalid("audio_end_ms", end_ms, detail="Expected a non-negative integer.")
        have_ms = item.audio_sent_samples * 1000 / OUTPUT_RATE
        if item.truncated_ms is not None:
            have_ms = min(have_ms, item.truncated_ms)
        if end_ms > have_ms:
            raise ClientEventError("invalid_value",
                                f"Audio content of {int(have_ms)}ms is already shorter than {end_ms}ms",
                                "audio_end_ms")
        item.truncated_ms = end_ms
        # "Truncating audio deletes the server-side text transcript" (Azure preview document)
        for part in item.content:
            if "transcript" in part:
                part["transcript"] = ""
        return [self._ev("conversation.item.truncated", item_id=item_id, content_index=ci, audio_end_ms=end_ms)]

    def _on_delete(self, ev: dict, cid: str | None) -> list[dict]:
        item = self._find(ev.get("item_id"))
        if item is None:
            raise _invalid("item_id", ev.get("item_id"), detail="No item with this id in the conversation.")
        self.items.remove(item)
        return [self._ev("conversation.item.deleted", item_id=item.id)]

    def _on_retrieve(self, ev: dict, cid: str | None) -> list[dict]:
        item = self._find(ev.get("item_id"))
        if item is None:
            raise _invalid("item_id", ev.get("item_id"), detail="No item with this id in the conversation.")
        return [self._ev("conversation.item.retrieved", item=item.wire())]
