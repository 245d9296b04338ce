"""The local Realtime server's responses: the parrot reply, its pacing and its events.

- ``ResponseStream``: one response in flight: the reply audio (24 kHz int16; None for
  text), its transcript, the chunk sizes (samples per audio delta, words per text delta, or
  characters per function-call arguments delta) and the pace of each (a multiple of real
  time): ``next_delay`` is the wait (s) before the next step;
- ``speak_24k``: text spoken by espeak-ng at 24 kHz;
- ``ResponseGeneration``: the response half of :class:`voxbox.parrot.session.SessionCore`
  (``response.create`` / ``response.cancel``, the parrot, scripted or spoken reply, the
  stepped deltas, ``response.done``), a mixin on the core's state.
"""
from __future__ import annotations

import base64
import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxbox.parrot.schema import GA_RESPONSE_KEYS, ClientEventError, Item, _check_keys, _invalid
from voxbox.parrot.wire import OUTPUT_RATE, new_id

log = logging.getLogger("voxbox.parrot.server")   # one logger for the whole local server


@dataclass
class ResponseStream:
    id: str
    item_id: str
    audio: np.ndarray | None            # 24 kHz reply audio; None for text-only
    transcript: str
    chunks: list[int]                   # samples per step (audio) or words per step (text)
    pace: list[float]
    metadata: Any
    in_conversation: bool
    modalities: list[str]
    voice: Any
    input_item_ms: float
    step: int = 0
    item_started: bool = False
    words_sent: int = 0
    samples_sent: int = 0
    first_delay: float = 0.05
    finished: bool = False
    status: str = "in_progress"
    # scripted function call: {"call_id", "name", "arguments"} (audio None, chunks are
    # characters of the arguments per delta)
    call: dict | None = None
    args_sent: int = 0

    @property
    def words(self) -> list[str]:
        return self.transcript.split(" ")

    def next_delay(self) -> float:
        if self.step == 0:
            return self.first_delay
        i = self.step - 1
        if i < len(self.chunks):
            if self.call is not None:
                return 0.02 / self.pace[i]
            dur = (self.chunks[i] / OUTPUT_RATE) if self.audio is not None else 0.05 * self.chunks[i]
            return dur / self.pace[i]
        return 0.0


def speak_24k(text: str) -> np.ndarray:
    """``text`` spoken by espeak-ng (``voxbox.audio.speech.render_speech``), resampled to the
    server's output rate (24 kHz), int16. Raises what ``render_speech`` raises."""
    import soxr

    from voxbox.audio.speech import SAMPLE_RATE, render_speech
    x = render_speech(text)
    y = soxr.resample(x.astype(np.float32), SAMPLE_RATE, OUTPUT_RATE, quality="HQ")
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


class ResponseGeneration:
    """The responses of :class:`voxbox.parrot.session.SessionCore` (a mixin: the methods use
    the core's session, items, config, RNG, tool script and event helpers).

    ``response.create`` / ``response.cancel``; ``_start_response`` picks the reply (a
    scripted function call, the spoken tool output, the scripted reply audio, the parrot of
    the user's audio, or a tone); ``step_response`` sends it in steps; ``_finish`` closes
    it with ``response.done``.
    """

    # -- responses
    def _on_response_create(self, ev: dict, cid: str | None) -> list[dict]:
        params = ev.get("response") or {}
        if not isinstance(params, dict):
            raise _invalid("response", params, detail="Expected an object.")
        if self.dialect.ga_names:
            _check_keys(params, GA_RESPONSE_KEYS, "response")
        mkey = "output_modalities" if self.dialect.ga_names else "modalities"
        if mkey in params:
            m = params[mkey]
            if not isinstance(m, list) or not m or any(x not in ("text", "audio") for x in m):
                raise _invalid(f"response.{mkey}", m, ["text", "audio"])
        if self.active is not None:
            raise ClientEventError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.")
        return self._start_response(params, cid)

    def _on_response_cancel(self, ev: dict, cid: str | None) -> list[dict]:
        rid = ev.get("response_id")
        if self.active is None or (rid is not None and rid != self.active.id):
            raise ClientEventError("response_cancel_not_active", "Cancellation failed: no active response found")
        return self._cancel_active("client_cancelled")

    def _response_obj(self, r: ResponseStream, status: str, output: list[dict], usage: dict | None,
                      status_details: dict | None) -> dict:
        d: dict[str, Any] = {"object": "realtime.response", "id": r.id, "status": status,
                             "status_details": status_details, "output": output,
                             "conversation_id": self.conversation_id if r.in_conversation else None,
                             "usage": usage, "metadata": r.metadata}
        if self.dialect.ga_names:
            d["output_modalities"] = r.modalities
            d["max_output_tokens"] = "inf"
            d["audio"] = {"output": {"format": copy.deepcopy(self.session["audio"]["output"]["format"]),
                                     "voice": r.voice}}
        else:
            d["modalities"] = r.modalities
            d["voice"] = r.voice
            d["output_audio_format"] = self.session.get("output_audio_format", "pcm16")
            d["temperature"] = self.session.get("temperature", 0.8)
            d["max_output_tokens"] = "inf"
        return d

    def _function_tool_names(self, params: dict) -> list[str]:
        """Names of the function tools in effect for a response ([] if tool_choice is none)."""
        tools = params.get("tools") if isinstance(params.get("tools"), list) else self.session.get("tools")
        choice = params.get("tool_choice", self.session.get("tool_choice", "auto"))
        if choice == "none" or not isinstance(tools, list):
            return []
        return [t["name"] for t in tools if isinstance(t, dict) and t.get("type", "function") == "function"
                and isinstance(t.get("name"), str)]

    def _scripted_call(self, params: dict, turn: Item | None) -> dict | None:
        """The script entry this response calls, if any (see ``ToolScript``)."""
        if turn is None or turn.answered or not (turn.type == "message" and turn.role == "user"):
            return None
        names = self._function_tool_names(params)
        if not names:
            return None
        entry = self.tool_script.pop()
        if entry is None:
            return None
        if entry["name"] not in names:
            log.warning("tool_calls: %r is not a declared function tool (%s): entry skipped",
                        entry["name"], ", ".join(names))
            self.function_calls.append({**entry, "status": "skipped", "response_id": None, "item_id": None})
            return None
        entry["call_id"] = entry["call_id"] or new_id("call")
        return entry

    @staticmethod
    def _spoken_output(output: str, max_words: int = 12) -> str:
        words = str(output).split()
        text = " ".join(words[:max_words])
        return text if text.strip() else "Done."

    def _speak(self, text: str) -> np.ndarray:
        """``text`` spoken by espeak-ng at 24 kHz (a tone if espeak-ng is unavailable)."""
        try:
            return speak_24k(text)
        except Exception as e:  # noqa: BLE001 - a missing espeak-ng must not kill the session
            log.warning("could not render speech for %r: %s", text, e)
            t = np.arange(int(OUTPUT_RATE * 0.6)) / OUTPUT_RATE
            return (3000 * np.sin(2 * np.pi * 660 * t) * np.hanning(len(t))).astype(np.int16)

    def _start_call(self, params: dict, call: dict, modalities: list[str], in_conversation: bool,
                    turn: Item) -> list[dict]:
        args = call["arguments"]
        chunks: list[int] = []
        left = len(args)
        while left > 0:
            n = min(self.rng.randint(4, 16), left)
            chunks.append(n)
            left -= n
        if not chunks:
            chunks = [0]                     # one (empty) delta for "" arguments
        pace = [self.rng.uniform(self.cfg.pace_min, self.cfg.pace_max) for _ in chunks]
        turn.answered = True
        input_ms = (len(turn.samples) * 1000 / turn.rate) if turn.samples is not None else 0.0
        r = ResponseStream(id=new_id("resp"), item_id=new_id("item"), audio=None, transcript="",
                           chunks=chunks, pace=pace, metadata=params.get("metadata"),
                           in_conversation=in_conversation, modalities=modalities,
                           voice=copy.deepcopy(self.voice), input_item_ms=input_ms,
                           first_delay=self.cfg.response_latency_s,
                           call={"call_id": call["call_id"], "name": call["name"], "arguments": args})
        self.active = r
        self.function_calls.append({**r.call, "status": "called", "response_id": r.id, "item_id": r.item_id})
        return [self._ev("response.created", response=self._response_obj(r, "in_progress", [], None, None))]

    def _start_response(self, params: dict, cid: str | None) -> list[dict]:
        mkey = "output_modalities" if self.dialect.ga_names else "modalities"
        modalities = list(params.get(mkey) or self.modalities)
        with_audio = "audio" in modalities
        if self.dialect.ga_names:
            modalities = ["audio"] if with_audio else ["text"]   # GA: audio implies its transcript
        in_conversation = params.get("conversation", "auto") != "none"
        if self.response_failure is not None:
            # A response the service refuses (e.g. insufficient_quota): created, then done
            # with status "failed" and status_details.error; the session stays open.
            r = ResponseStream(id=new_id("resp"), item_id=new_id("item"), audio=None, transcript="",
                               chunks=[], pace=[], metadata=params.get("metadata"),
                               in_conversation=in_conversation, modalities=modalities,
                               voice=copy.deepcopy(self.voice), input_item_ms=0.0)
            self.active = r
            out = [self._ev("response.created", response=self._response_obj(r, "in_progress", [], None, None))]
            return out + self._finish(r, "failed", None, error=dict(self.response_failure))
        # the turn being answered: the newest user message or function_call_output
        turn = None
        for it in reversed(self.items):
            if (it.type == "message" and it.role == "user") or it.type == "function_call_output":
                turn = it
                break
        call = self._scripted_call(params, turn)
        if call is not None and turn is not None:
            return self._start_call(params, call, modalities, in_conversation, turn)
        # the parrot source: the newest user message in the conversation
        source = None
        for it in reversed(self.items):
            if it.type == "message" and it.role == "user":
                source = it
                break
        audio: np.ndarray | None = None
        if turn is not None and turn.type == "function_call_output":
            # the answer to a tool result: speak (the start of) the output
            transcript = self._spoken_output(turn.extra.get("output", ""))
            audio = self._speak(transcript) if with_audio else None
            source = turn
        elif source is not None and source.samples is not None and len(source.samples) \
                and self.cfg.reply_audio:
            clips = self.cfg.reply_audio
            audio = np.asarray(clips[self._replies % len(clips)], dtype=np.int16)
            self._replies += 1
            transcript = f"(scripted reply, {len(audio) / OUTPUT_RATE:.1f} s)"
        elif source is not None and source.samples is not None and len(source.samples):
            dur = len(source.samples) / source.rate
            transcript = f"You said: ({dur:.1f} s of audio)"
            audio = source.samples
            if source.rate != OUTPUT_RATE:
                n_out = int(round(len(audio) * OUTPUT_RATE / source.rate))
                x = np.linspace(0, len(audio) - 1, n_out)
                audio = np.interp(x, np.arange(len(audio)), audio.astype(np.float64)).astype(np.int16)
        else:
            text = None
            if source is not None:
                text = " ".join(str(c.get("text")) for c in source.content if c.get("text"))
            transcript = f"You said: {text}" if text else "Hello from the local parrot."
            dur = 0.6
            t = np.arange(int(OUTPUT_RATE * dur)) / OUTPUT_RATE
            audio = (3000 * np.sin(2 * np.pi * 660 * t) * np.hanning(len(t))).astype(np.int16)
        if source is not None:
            source.answered = True
        input_ms = (len(source.samples) * 1000 / source.rate) if source is not None and source.samples is not None else 0.0
        if with_audio:
            chunks: list[int] = []
            left = len(audio)
            while left > 0:
                n = self.rng.randint(self.cfg.chunk_ms_min, self.cfg.chunk_ms_max) * OUTPUT_RATE // 1000
                n = min(n, left)
                chunks.append(n)
                left -= n
        else:
            audio = None
            words = len(transcript.split(" "))
            chunks = []
            while sum(chunks) < words:
                chunks.append(min(self.rng.randint(1, 3), words - sum(chunks)))
        pace = [self.rng.uniform(self.cfg.pace_min, self.cfg.pace_max) for _ in chunks]
        r = ResponseStream(id=new_id("resp"), item_id=new_id("item"), audio=audio, transcript=transcript,
                           chunks=chunks, pace=pace, metadata=params.get("metadata"),
                           in_conversation=in_conversation, modalities=modalities,
                           voice=copy.deepcopy(self.voice), input_item_ms=input_ms,
                           first_delay=self.cfg.response_latency_s)
        self.active = r
        return [self._ev("response.created", response=self._response_obj(r, "in_progress", [], None, None))]

    def _assistant_item(self, r: ResponseStream, status: str, transcript: str) -> dict:
        ga = self.dialect.ga_names
        if r.audio is not None:
            ctype = "output_audio" if ga else "audio"
            part = {"type": ctype, "transcript": transcript}
        else:
            part = {"type": "output_text" if ga else "text", "text": transcript}
        return {"id": r.item_id, "object": "realtime.item", "type": "message", "status": status,
                "role": "assistant", "content": [part] if status != "in_progress" else []}

    def _part(self, r: ResponseStream, transcript: str) -> dict:
        if r.audio is not None:
            return {"type": "audio", "transcript": transcript}
        return {"type": "text", "text": transcript}

    def _usage(self, r: ResponseStream) -> dict:
        in_audio = int(r.input_item_ms / 100)           # ~10 tokens/s of input audio
        out_audio = int(r.samples_sent * 20 / OUTPUT_RATE)  # ~20 tokens/s of output audio
        out_text = r.words_sent + (r.args_sent + 3) // 4     # ~4 characters per token of arguments
        in_text = 120
        return {"total_tokens": in_audio + in_text + out_audio + out_text,
                "input_tokens": in_audio + in_text, "output_tokens": out_audio + out_text,
                "input_token_details": {"cached_tokens": 0, "text_tokens": in_text, "audio_tokens": in_audio,
                                        "image_tokens": 0,
                                        "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0,
                                                                  "image_tokens": 0}},
                "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio}}

    def step_response(self) -> list[dict]:
        """Next batch of events of the active response (call after ``active.next_delay()``)."""
        r = self.active
        if r is None or r.finished:
            return []
        if r.call is not None:
            return self._step_call(r)
        out: list[dict] = []
        base = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        if not r.item_started:
            r.item_started = True
            item = Item(id=r.item_id, type="message", role="assistant", status="in_progress",
                        is_assistant_audio=r.audio is not None)
            if r.in_conversation:
                prev = self.items[-1].id if self.items else None
                self.items.append(item)
            out.append(self._ev("response.output_item.added", response_id=r.id, output_index=0,
                                item=self._assistant_item(r, "in_progress", "")))
            if r.in_conversation:
                if self.dialect.ga_names:
                    out.append(self._ev("conversation.item.added", previous_item_id=prev,
                                        item=self._assistant_item(r, "in_progress", "")))
                else:
                    out.append(self._ev("conversation.item.created", previous_item_id=prev,
                                        item=self._assistant_item(r, "in_progress", "")))
            out.append(self._ev("response.content_part.added", **base, part=self._part(r, "")))
            r.step = 1
            # fall through: the first chunk goes with the item events
        i = r.step - 1
        words = r.words
        if i < len(r.chunks):
            if r.audio is not None:
                # transcript words spread over the audio chunks, each before its audio delta
                target = math.ceil(len(words) * (i + 1) / len(r.chunks))
                if target > r.words_sent:
                    delta = " ".join(words[r.words_sent:target])
                    if r.words_sent:
                        delta = " " + delta
                    out.append(self._ev(self._names("transcript.delta"), **base, delta=delta))
                    r.words_sent = target
                a = r.samples_sent
                pcm = r.audio[a:a + r.chunks[i]]
                out.append(self._ev(self._names("audio.delta"), **base,
                                    delta=base64.b64encode(pcm.astype("<i2").tobytes()).decode("ascii")))
                r.samples_sent += len(pcm)
                self.audio_output_started = True
                it = self._find(r.item_id)
                if it is not None:
                    it.audio_sent_samples = r.samples_sent
            else:
                n = r.chunks[i]
                delta = " ".join(words[r.words_sent:r.words_sent + n])
                if r.words_sent:
                    delta = " " + delta
                out.append(self._ev(self._names("text.delta"), **base, delta=delta))
                r.words_sent += n
            r.step += 1
            return out
        return out + self._finish(r, "completed", None)

    def _call_item(self, r: ResponseStream, status: str, arguments: str) -> dict:
        """The function_call item (same shape in all dialects)."""
        assert r.call is not None
        return {"id": r.item_id, "object": "realtime.item", "type": "function_call", "status": status,
                "call_id": r.call["call_id"], "name": r.call["name"], "arguments": arguments}

    def _step_call(self, r: ResponseStream) -> list[dict]:
        """Scripted function call: output_item.added, conversation item, argument deltas."""
        assert r.call is not None
        out: list[dict] = []
        if not r.item_started:
            r.item_started = True
            if r.in_conversation:
                prev = self.items[-1].id if self.items else None
                self.items.append(Item(id=r.item_id, type="function_call", status="in_progress",
                                       extra={"call_id": r.call["call_id"], "name": r.call["name"],
                                              "arguments": ""}))
            out.append(self._ev("response.output_item.added", response_id=r.id, output_index=0,
                                item=self._call_item(r, "in_progress", "")))
            if r.in_conversation:
                name = "conversation.item.added" if self.dialect.ga_names else "conversation.item.created"
                out.append(self._ev(name, previous_item_id=prev, item=self._call_item(r, "in_progress", "")))
            r.step = 1
            # fall through: the first delta goes with the item events
        i = r.step - 1
        if i < len(r.chunks):
            args = r.call["arguments"]
            piece = args[r.args_sent:r.args_sent + r.chunks[i]]
            out.append(self._ev("response.function_call_arguments.delta", response_id=r.id, item_id=r.item_id,
                                output_index=0, call_id=r.call["call_id"], delta=piece))
            r.args_sent += len(piece)
            it = self._find(r.item_id)
            if it is not None:
                it.extra["arguments"] = args[:r.args_sent]
            r.step += 1
            return out
        return out + self._finish(r, "completed", None)

    def _finish_call(self, r: ResponseStream, status: str) -> tuple[list[dict], list[dict]]:
        """Done events of a function call item: (events, response output)."""
        assert r.call is not None
        if not r.item_started:
            return [], []
        args = r.call["arguments"] if status == "completed" else r.call["arguments"][:r.args_sent]
        item_status = "completed" if status == "completed" else "incomplete"
        # GA and Voice Live carry the name; the beta event has no name field
        # (openai.types.beta.realtime.ResponseFunctionCallArgumentsDoneEvent).
        extra = {"name": r.call["name"]} if (self.dialect.ga_names or self.dialect.voice_live) else {}
        out = [self._ev("response.function_call_arguments.done", response_id=r.id, item_id=r.item_id,
                        output_index=0, call_id=r.call["call_id"], arguments=args, **extra)]
        final = self._call_item(r, item_status, args)
        out.append(self._ev("response.output_item.done", response_id=r.id, output_index=0, item=final))
        it = self._find(r.item_id)
        if it is not None:
            it.status = item_status
            it.extra["arguments"] = args
            if self.dialect.ga_names:
                idx = self.items.index(it)
                prev = self.items[idx - 1].id if idx > 0 else None
                out.append(self._ev("conversation.item.done", previous_item_id=prev, item=it.wire()))
        return out, [final]

    def _finish(self, r: ResponseStream, status: str, reason: str | None,
                error: dict | None = None) -> list[dict]:
        """Close the response: done events for the started item, then response.done."""
        r.finished = True
        r.status = status
        out: list[dict] = []
        base = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        said = " ".join(r.words[:r.words_sent]) if status != "completed" else r.transcript
        output: list[dict] = []
        if r.call is not None:
            out, output = self._finish_call(r, status)
        elif r.item_started:
            item_status = "completed" if status == "completed" else "incomplete"
            if r.audio is not None:
                out.append(self._ev(self._names("audio.done"), **base))
                out.append(self._ev(self._names("transcript.done"), **base, transcript=said))
            else:
                out.append(self._ev(self._names("text.done"), **base, text=said))
            out.append(self._ev("response.content_part.done", **base, part=self._part(r, said)))
            final = self._assistant_item(r, item_status, said)
            out.append(self._ev("response.output_item.done", response_id=r.id, output_index=0, item=final))
            it = self._find(r.item_id)
            if it is not None:
                it.status = item_status
                it.content = copy.deepcopy(final["content"])
                if it.truncated_ms is not None:
                    for p in it.content:
                        if "transcript" in p:
                            p["transcript"] = ""
                if self.dialect.ga_names:
                    idx = self.items.index(it)
                    prev = self.items[idx - 1].id if idx > 0 else None
                    out.append(self._ev("conversation.item.done", previous_item_id=prev, item=it.wire()))
            output = [final]
        details = None if status == "completed" else {"type": status, "reason": reason}
        if error is not None:
            details = {"type": status, "error": error}
        out.append(self._ev("response.done",
                            response=self._response_obj(r, status, output, self._usage(r), details)))
        if self.dialect.sends_rate_limits and error is None:
            out.append(self._ev("rate_limits.updated", rate_limits=[
                {"name": "requests", "limit": 10000, "remaining": 9999, "reset_seconds": 0.006},
                {"name": "tokens", "limit": 2_000_000, "remaining": 1_999_000, "reset_seconds": 0.03}]))
        if self.active is r:
            self.active = None
        if self._pending_auto_response and self.active is None:
            self._pending_auto_response = False
            out += self._start_response({}, None)
        return out

    def _cancel_active(self, reason: str) -> list[dict]:
        r = self.active
        if r is None:
            return []
        self._pending_auto_response = False
        return self._finish(r, "cancelled", reason)
