"""The daemon: wires the cores to the adapters and runs the asyncio loop.

Threads:
- capture (``audio_io.CaptureLoop``): ALSA read → echo canceller/noise suppressor → wake
  word → (if the conversation lets audio out) resample 16→24 kHz → hand a bytes block to
  the event loop with ``call_soon_threadsafe`` (never waits on the loop or the network).
- playback (``audio_io.PlaybackLoop``): jitter buffer → ALSA write; what it wrote goes,
  resampled to 16 kHz, into the far-end reference ring read by the capture thread.
- gpiozero's own threads for the button callbacks and LED blinking.
- the asyncio loop: the WebSocket link, the session core, the conversation state machine,
  timers, sd_notify, and the health task (voxbox.service.health: the watchdog, the devices the
  audio loops wait for, a deaf microphone; LED and STATUS=).

The audio loops open their devices themselves, each open tried first in a child process
(voxbox.audio.alsa.probe_open), and keep trying a device that is missing or blocked: the
daemon never exits or freezes for a sound device.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soxr

from voxbox import __version__
from voxbox.audio.jitter import JitterBuffer, LatencyHistogram
from voxbox.config import Config, ConfigError
from voxbox.conversation.machine import (
    UPLINK_STATES,
    Action,
    ClearInput,
    Conversation,
    Earcon,
    EndPushToTalk,
    Interrupt,
    PauseReply,
    Prompt,
    ResendTurn,
    ResetWake,
    ResumeReply,
    SetMuted,
    StartPushToTalk,
    State,
)
from voxbox.gpio.gestures import ButtonGestures, Gesture
from voxbox.gpio.led import display_pattern
from voxbox.host import sd
from voxbox.host.credentials import Secret
from voxbox.host.sd import Notifier
from voxbox.realtime.dialects import PCM_RATE
from voxbox.realtime.session import (
    AudioDelta,
    AudioDone,
    FunctionCallRequested,
    InputCommitted,
    RealtimeSession,
    ResponseDone,
    ResponseStarted,
    ServerError,
    SpeechStarted,
    SpeechStopped,
    TranscriptDone,
    UserTranscript,
)
from voxbox.realtime.turnaudio import TurnAudio
from voxbox.service.audiopath import UPLINK_BLOCK_MS, AudioCallbacks, AudioPath
from voxbox.service.health import HealthMonitor

log = logging.getLogger("voxbox.service.daemon")


def _fmt_stats(stats: dict[str, float]) -> str:
    """The near-end detector's statistics as one journal field: ``key=value ...``."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items())


TURN_AUDIO_MAX_S = 30.0
"""Longest question kept on the unit for a resend after a link loss (s)."""

UNDERRUN_LOG_MAX = 5
"""Underrun events logged per turn (all are counted in the turn record)."""

LONG_HOLD_TALK_S = 0.5
"""A long hold is a mute toggle unless the user spoke this long during the hold (s)."""

HEALTH_TICK_S = 0.5
"""How often the audio devices are judged (voxbox.service.health) and the LED/STATUS= refreshed (s)."""


def _turn_detection_off(session: RealtimeSession) -> None:
    """Queued before a resent question's audio: the service's VAD must not commit it."""
    session.set_turn_detection(False)


@dataclass
class TurnTimes:
    """Monotonic timestamps of one turn, for the journald ``turn`` record and the demo."""

    turn: int = 0
    wake: float | None = None
    wake_score: float | None = None
    first_audio_sent: float | None = None
    speech_started: float | None = None
    speech_stopped: float | None = None
    response_created: float | None = None
    first_reply_received: float | None = None
    first_reply_played: float | None = None
    playback_end: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def latencies_ms(self) -> dict[str, int]:
        def ms(a, b):
            return None if a is None or b is None else int(round((b - a) * 1000))

        out = {
            "VOXBOX_LATENCY_MS": ms(self.speech_stopped, self.first_reply_played),
            "VOXBOX_SERVICE_LATENCY_MS": ms(self.speech_stopped, self.first_reply_received),
            "VOXBOX_DEVICE_PLAYOUT_MS": ms(self.first_reply_received, self.first_reply_played),
            "VOXBOX_WAKE_TO_UPLINK_MS": ms(self.wake, self.first_audio_sent),
        }
        return {k: v for k, v in out.items() if v is not None}


class Daemon:
    """Args:
    cfg: the validated configuration.
    api_key: the Realtime API key (never logged).
    mock_gpio_socket: with ``gpio.pin_factory = "mock"``, a datagram socket path on which
        tests send ``press``/``release`` to drive the mock button pin.
    local_server: with ``realtime.url = "local"``, starts the local Realtime server: called
        with the API key it accepts (None: any), returns the running server
        (``client_url(dialect)``, ``stop()``); :func:`voxbox.cli.start_local_server`.

    Raises:
        ConfigError: ``realtime.url = "local"`` without ``local_server``.
    """

    def __init__(self, cfg: Config, api_key: Secret, mock_gpio_socket: str | None = None,
                 local_server: Callable[[str | None], Any] | None = None):
        if cfg.realtime.url == "local" and local_server is None:
            raise ConfigError('realtime.url = "local": the local server is started by `voxbox run`')
        self.cfg = cfg
        self.api_key = api_key
        self.mock_gpio_socket = mock_gpio_socket
        a = cfg.audio
        self.cap_period = a.capture_rate * a.period_ms // 1000
        self.play_period = a.playback_rate * a.period_ms // 1000
        cc = cfg.conversation
        fe = cfg.frontend
        #: local barge-in: the device's near-end detector decides (voxbox.duplex.nearend), the
        #: service's interrupt_response is sent off (echo it hears cannot cancel a reply)
        self.local_barge_in = cfg.barge_in.mode == "local" and fe.echo_cancel and fe.residual_echo
        rt_cfg = cfg.realtime
        if self.local_barge_in:
            rt_cfg = rt_cfg.model_copy(update={"turn_detection": rt_cfg.turn_detection.model_copy(
                update={"interrupt_response": False})})
        #: the Realtime settings the sessions are opened with
        self.rt_cfg = rt_cfg
        self.conv = Conversation(cc.listen_timeout_s, cc.follow_up_s, cc.thinking_timeout_s,
                                 resume_false_interruptions=cc.resume_false_interruptions,
                                 min_interruption_ms=cc.min_interruption_ms,
                                 barge_in_on_speech=rt_cfg.turn_detection.interrupt_response,
                                 resume_turn_s=cc.resume_turn_s, local_barge_in=self.local_barge_in)
        #: the user's audio of the current turn (resent into the next session after a loss)
        self.turn_audio = TurnAudio(PCM_RATE, TURN_AUDIO_MAX_S, preroll_s=1.0)
        self._turn_audio_state = self.conv.state
        self._state_path = sd.state_dir() / cc.state_file
        self._ptt_samples = 0  # uplink samples streamed in the current push-to-talk hold
        # earcons and spoken prompts: the playback thread mixes the current cue into the reply
        self._earcons: dict[str, np.ndarray] = {}
        self._prompts: dict[str, np.ndarray] = {}
        if a.jitter_fixed_ms is not None:  # a fixed-depth buffer (a baseline, or a known link)
            self.jitter = JitterBuffer(a.playback_rate, self.play_period, a.jitter_fixed_ms, stretch=False,
                                       min_ms=a.jitter_fixed_ms, max_ms=a.jitter_fixed_ms)
        else:
            self.jitter = JitterBuffer(a.playback_rate, self.play_period, a.jitter_prebuffer_ms,
                                       stretch=a.jitter_stretch, min_ms=a.jitter_min_ms,
                                       max_ms=a.jitter_max_ms)
        self._line_from_alsa = False
        self._underruns_at_turn = 0
        self._added_at_turn = self.jitter.added_latency()
        self.notifier = Notifier()
        from voxbox.audio.alsa import OPEN_TIMEOUT_S

        #: judges the audio devices: the watchdog, the LED/STATUS= faults, their journal lines
        self.health = HealthMonitor(a.capture_device, a.playback_device, deaf_after_s=a.deaf_after_s,
                                    probe_timeout_s=OPEN_TIMEOUT_S)
        self.turn = TurnTimes()
        self._stop = asyncio.Event()
        self._ready_sent = False
        self._led_name = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reply_resampler = (None if a.playback_rate == PCM_RATE else
                                 soxr.ResampleStream(PCM_RATE, a.playback_rate, 1, dtype="int16"))
        self._onset_t = 0.0  # when the near-end detector heard the user (monotonic s)
        self.capture = None
        self.playback = None
        self.led = None
        self.button = None
        self.gestures = ButtonGestures(cfg.gpio.debounce_ms / 1000, cfg.gpio.hold_ms / 1000,
                                       cfg.gpio.long_hold_ms / 1000)
        from voxbox.realtime.link import LinkSupervisor, default_rollover_s

        rt = cfg.realtime
        self.link = LinkSupervisor(initial_s=rt.reconnect_initial_s, cap_s=rt.reconnect_max_s,
                                   fatal_retry_s=rt.fatal_retry_s,
                                   rollover_s=rt.session_rollover_s or 0.0,
                                   fallback_rollover_s=default_rollover_s(rt.dialect),
                                   stall_s=rt.stall_s, healthy_s=rt.healthy_after_s,
                                   max_connects_per_min=rt.max_connects_per_min)
        self._idle_audio_logged = False
        self._overflow_logged = False
        #: recent conversation as text, replayed into a new session: (role, text, turn)
        self.history: deque[tuple[str, str, int]] = deque()
        self.stats = {"uplink_samples": 0, "truncates": 0, "tool_calls": 0}
        from voxbox.host.metrics import UnitMetrics

        #: fleet metrics (voxbox.host.metrics), written by _metrics_writer when metrics.textfile is set
        self.metrics = UnitMetrics(version=__version__)
        from voxbox.service.echopath import EchoPath

        #: the far-end reference delayed to meet its echo; the echo delay tracked, the
        #: drift compensated, both persisted (voxbox.service.echopath)
        self.echo = EchoPath(cfg, self.cap_period, self._state_path.parent / "echo.json", self.metrics,
                             on_path_changed=self._echo_path_changed)
        self.t_start = time.monotonic()
        from voxbox.audio.volume import Volume

        self.volume = Volume(self._state_path.parent, mixer=a.mixer or None, mixer_device=a.mixer_device,
                             default_percent=a.volume)
        #: what the capture and playback threads do with each period (voxbox.service.audiopath)
        self.audio = AudioPath(cfg, self.jitter, self.volume, self.echo, AudioCallbacks(
            on_wake=self._on_wake, on_uplink_block=self._queue_uplink, on_near_end=self._on_near_end,
            on_verdict=self._on_verdict, on_gate_change=self._log_gate,
            on_playback_started=self._on_playback_started, on_playback_drained=self._on_playback_drained,
            on_underrun=self._on_underrun), local_barge_in=self.local_barge_in)
        self.tools = None
        self.tool_runner = None
        if cfg.tools.enabled:
            from voxbox.conversation.tools import ToolRegistry, ToolRunner

            self.tools = ToolRegistry.default(cfg.tools.allow or None)
            self.tool_runner = ToolRunner(self.tools, _DaemonToolContext(self))
        from voxbox.realtime.client import LinkCallbacks, RealtimeLink

        #: the WebSocket link to the service (the session, reconnects, liveness, rollover)
        self.rt = RealtimeLink(cfg, rt_cfg, api_key, self.link, LinkCallbacks(
            on_event=self._on_session_event, on_ready=self._on_link_ready, on_closed=self._show_state,
            on_lost=self._on_link_lost, on_fatal=self._on_link_fatal, in_turn=self._in_turn,
            audio_wanted=self._audio_wanted, on_audio_sent=self._on_audio_sent),
            self.metrics, tools=self.tools.declarations() if self.tools is not None else None,
            local_server=local_server)

    # ------------------------------------------------------------------------------ start
    def stop(self) -> None:
        self._stop.set()

    def dump_recording(self) -> None:
        """SIGUSR1: write the recorder's ring (``frontend.record_s``) as three WAV files,
        ``<dir>/voxbox-<UTC time>-{mic,ref,out}.wav`` plus a ``.json`` sidecar, in
        ``$STATE_DIRECTORY/recordings`` (``/var/lib/voxbox/recordings`` outside systemd).
        Runs on the event loop; the copy is taken under the recorder's short lock and the
        files are written off the loop. Replay with ``voxbox dsp``."""
        if self.audio.recorder is None:
            log.warning("recording requested but frontend.record_s is 0; nothing recorded",
                        extra={"VOXBOX_EVENT": "recording"})
            return
        rec = self.audio.recorder.snapshot()
        state_dir = sd.state_dir()
        directory = state_dir / "recordings"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        settings = None if self.audio.frontend is None else dataclasses.asdict(self.audio.frontend.settings)

        def write() -> None:
            from voxbox.audio.wavfile import write_wav

            directory.mkdir(parents=True, exist_ok=True)
            base = directory / f"voxbox-{stamp}"
            for ch in ("mic", "ref", "out"):
                write_wav(Path(f"{base}-{ch}.wav"), rec.channel(ch), rec.sample_rate)
            meta = {"sample_rate": rec.sample_rate, "samples": int(rec.samples.shape[0]),
                    "start_sample": rec.start_sample, "from_start": rec.from_start,
                    "frontend": settings, "reference_delay_ms": self.cfg.frontend.reference_delay_ms,
                    "latency_samples": None if self.audio.frontend is None else self.audio.frontend.latency_samples}
            Path(f"{base}.json").write_text(json.dumps(meta, indent=1) + "\n")
            log.info("recording written: %s-{mic,ref,out}.wav (%.1f s%s)", base,
                     rec.samples.shape[0] / rec.sample_rate,
                     ", from the front end's start" if rec.from_start else "",
                     extra={"VOXBOX_EVENT": "recording", "VOXBOX_PATH": str(base),
                            "VOXBOX_FROM_START": int(rec.from_start)})

        async def run() -> None:
            try:
                await asyncio.to_thread(write)
            except OSError as exc:
                log.error("cannot write recording in %s: %s", directory, exc,
                          extra={"VOXBOX_EVENT": "recording"})

        asyncio.get_running_loop().create_task(run(), name="recording")

    async def run(self) -> int:
        """Run until :meth:`stop`. Returns the exit status."""
        self._loop = asyncio.get_running_loop()
        _return_large_buffers()
        cfg = self.cfg
        log.info("voxbox %s starting (dialect %s)", __version__, cfg.realtime.dialect,
                 extra={"VOXBOX_EVENT": "start", "VOXBOX_VERSION": __version__})
        self._build_dsp()
        self._echo_path_changed()  # a cold canceller: the first second of far-end signal converges it
        self.echo.restore()
        self._build_gpio()
        if self._load_muted():
            self._apply(self.conv.restore_muted(time.monotonic()))
        if self.rt.unprovisioned:
            self.metrics.set_link("unprovisioned")
            self._apply(self.conv.unprovisioned(time.monotonic(), "no Realtime API key"))
        self._show_state()
        from voxbox.audio.alsa import CaptureLoop, PlaybackLoop

        # a device missing at start (a USB card not enumerated yet), lost or blocked: the
        # loops keep trying it (in a child process first) and the unit runs meanwhile
        self.playback = PlaybackLoop(cfg.audio.playback_device, self.audio.playback_source,
                                     self.audio.playback_written, rate=cfg.audio.playback_rate,
                                     period=self.play_period, periods=cfg.audio.periods,
                                     wait_for_device=True)
        self.capture = CaptureLoop(cfg.audio.capture_device, self.audio.on_capture_frame,
                                   rate=cfg.audio.capture_rate, period=self.cap_period,
                                   periods=cfg.audio.periods, wait_for_device=True)
        self.playback.on_drop = self.echo.dropped
        self.echo.start(self._loop)
        self.audio.start(self._loop)
        self.playback.start()
        self.capture.start()
        tasks = [asyncio.create_task(self.rt.run(self._stop), name="link"),
                 asyncio.create_task(self._ticker(), name="ticker"),
                 asyncio.create_task(self._health_task(), name="health"),
                 asyncio.create_task(self._ready_gate(), name="ready")]
        if cfg.metrics.textfile:
            tasks.append(asyncio.create_task(self._metrics_writer(), name="metrics"))
        try:
            await self._stop.wait()
        finally:
            self.notifier.stopping()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.capture.stop()
            await self.echo.stop()
            self.playback.stop()
            await self.rt.close()
            if self.led is not None:
                self.led.close()
            if self.button is not None:
                self.button.close()
            # free the native resampler streams now rather than at interpreter exit
            self.audio.close()
            self._reply_resampler = None
            # the reply audio since start, for the field and the link benchmark
            added = self.jitter.added_latency()
            rate = self.cfg.audio.playback_rate
            log.info("voxbox stopped; since start: %.1f s of reply audio, %d jitter-buffer underruns",
                     added.samples / rate, self.jitter.underruns,
                     extra={"VOXBOX_EVENT": "stop", "VOXBOX_REPLY_S": round(added.samples / rate, 2),
                            "VOXBOX_JITTER_UNDERRUNS": self.jitter.underruns, **_added_fields(added)})
        return 0

    def _build_dsp(self) -> None:
        cfg = self.cfg
        self.audio.build()
        from voxbox.audio.earcon import EarconError, EarconSet, load_prompts

        try:
            es = EarconSet(self.cfg.earcons.model_dump(), rate=cfg.audio.playback_rate)
            self._earcons = {c: es.get(c) for c in ("wake", "end", "error", "mute", "unmute", "startup")}
        except (EarconError, KeyError, ValueError) as exc:  # a bad cue file must not stop the unit
            log.error("earcons off: %s", exc, extra={"VOXBOX_EVENT": "config_error"})
            self._earcons = {}
        try:  # loaded now, not when the link fails: a broken file shows at start
            self._prompts = load_prompts(cfg.audio.playback_rate)
        except EarconError as exc:
            log.error("spoken prompts off: %s", exc, extra={"VOXBOX_EVENT": "config_error"})
            self._prompts = {}

    def _build_gpio(self) -> None:
        g = self.cfg.gpio
        if not g.enabled:
            return
        factory = None
        if g.pin_factory == "mock":
            from gpiozero.pins.mock import MockFactory, MockPWMPin

            factory = MockFactory(pin_class=MockPWMPin)
        from gpiozero import Button

        from voxbox.gpio.board import GpioLed

        if g.rgb_led is not None:
            from voxbox.gpio.board import GpioRgbLed

            self.led = GpioRgbLed(*g.rgb_led, pin_factory=factory, active_high=g.led_active_high)
        else:
            self.led = GpioLed(g.led, pin_factory=factory, active_high=g.led_active_high)
        self.button = Button(g.button, pull_up=g.button_active_low, bounce_time=None,
                             pin_factory=factory)
        loop = self._loop
        self.button.when_pressed = lambda: loop.call_soon_threadsafe(self._button_edge, True)
        self.button.when_released = lambda: loop.call_soon_threadsafe(self._button_edge, False)
        if factory is not None and self.mock_gpio_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                os.unlink(self.mock_gpio_socket)
            except FileNotFoundError:
                pass
            sock.bind(self.mock_gpio_socket)
            sock.setblocking(False)
            pin = factory.pin(g.button)

            def on_msg() -> None:
                msg = sock.recv(64).decode(errors="replace").strip()
                pressed_level = not g.button_active_low
                if msg == "press":
                    pin.drive_high() if pressed_level else pin.drive_low()
                elif msg == "release":
                    pin.drive_low() if pressed_level else pin.drive_high()

            loop.add_reader(sock.fileno(), on_msg)
            self._mock_sock = sock

    def _echo_path_changed(self) -> None:
        """The echo path the canceller sees changed (any thread; see EchoPath)."""
        self.audio.echo_path_changed()

    # ------------------------------------------------------------------------ event loop
    def _queue_uplink(self, block: bytes) -> None:
        if not self.audio.uplink_open:
            return  # turn closed while the block was in flight: drop it
        self.turn_audio.feed(block)  # kept for a resend if the link goes now
        if not self._session_ready:
            return  # link down mid-turn: the block waits in turn_audio for the next session
        if self.conv.push_to_talk:
            self._ptt_samples += len(block) // 2
        if not self.rt.send_audio(block):
            log.warning("uplink queue full; dropping %d ms of audio", UPLINK_BLOCK_MS)

    def _on_near_end(self, t: float, stats: dict[str, float]) -> None:
        """The near-end detector heard the user over the reply: pause it, check the user
        with the speaker quiet (voxbox.duplex.interruption)."""
        self.audio.tentative = True  # first: the capture thread must never see the state change alone
        acts = self.conv.near_end_speech(time.monotonic())
        if not acts:
            self.audio.tentative = False
            return
        log.info("near-end speech over the reply: paused to check (%s)", _fmt_stats(stats),
                 extra={"VOXBOX_EVENT": "near_end", "VOXBOX_T": round(t, 4),
                        "VOXBOX_DEBUG": _fmt_stats(stats)})
        self._onset_t = t
        self._apply(acts)
        self.audio.start_check()

    def _on_verdict(self, verdict, stats: dict[str, float], spoken: int, judged: int) -> None:
        """The interruption check's verdict on a paused reply."""
        from voxbox.duplex.interruption import Verdict

        if not self.audio.tentative:
            return  # the pause ended some other way meanwhile
        now = time.monotonic()
        log.info("interruption check: %s (%d of %d frames spoke with the speaker quiet; %s)", verdict,
                 spoken, judged, _fmt_stats(stats),
                 extra={"VOXBOX_EVENT": "barge_in_check", "VOXBOX_VERDICT": str(verdict),
                        "VOXBOX_DEBUG": _fmt_stats(stats)})
        self.audio.tentative = False
        if verdict is Verdict.CONFIRMED:
            # the service hears the user from before the onset the detector saw
            rate = self.cfg.audio.capture_rate
            back_ms = (now - self._onset_t) * 1000 + self.cfg.barge_in.preroll_ms
            self.audio.open_gate(int(back_ms * rate / 1000))
            self._apply(self.conv.near_end_confirmed(now))
        else:
            self.metrics.on_barge_in_rejected()
            self._apply(self.conv.near_end_rejected(now))

    def _log_gate(self, change, stats: dict[str, float], t: float) -> None:
        """A change of the uplink gate's decision, with the detector's statistics."""
        log.info("uplink gate %s -> %s%s", change.previous, change.state,
                 f" with {change.preroll_samples * 1000 // self.cfg.audio.capture_rate} ms pre-roll"
                 if change.preroll_samples else "",
                 extra={"VOXBOX_EVENT": "uplink_gate", "VOXBOX_GATE": str(change.state),
                        "VOXBOX_T": round(t, 4), "VOXBOX_DEBUG": _fmt_stats(stats)})

    def _on_wake(self, score: float, t: float) -> None:
        self.metrics.on_wake_word()
        log.info("wake word %s score %.3f", self.cfg.wake.model, score,
                 extra={"VOXBOX_EVENT": "wake", "VOXBOX_WAKE_SCORE": round(score, 4),
                        "VOXBOX_T": round(t, 4)})
        turn = self.conv.turn
        self._apply(self.conv.wake(time.monotonic()))
        if self.conv.turn != turn:
            self.turn.wake, self.turn.wake_score = t, score

    def _button_edge(self, pressed: bool) -> None:
        now = time.monotonic()
        log.debug("button %s", "pressed" if pressed else "released",
                  extra={"VOXBOX_EVENT": "button"})
        self._gestures(self.gestures.edge(pressed, now), now)

    def _gestures(self, gestures: list[Gesture], now: float) -> None:
        for g in gestures:
            log.info("button %s", g.value, extra={"VOXBOX_EVENT": "gesture", "VOXBOX_GESTURE": g.value})
            turn = self.conv.turn
            if g is Gesture.TAP:
                if self.led is not None:
                    self.led.acknowledge()
                self._apply(self.conv.tap(now))
            elif g is Gesture.HOLD_START:
                self._apply(self.conv.ptt_start(now))
            elif g is Gesture.HOLD_END:
                self._apply(self.conv.ptt_end(now))
            elif g is Gesture.LONG_HOLD:
                voiced_s = self.audio.ptt_voiced_frames * self.cfg.audio.period_ms / 1000
                if self.conv.push_to_talk and voiced_s >= LONG_HOLD_TALK_S:
                    # a long push-to-talk question, not a mute request
                    log.info("long hold while talking (%.1f s of voice): push-to-talk continues", voiced_s,
                             extra={"VOXBOX_EVENT": "gesture", "VOXBOX_GESTURE": "long_hold_ignored"})
                else:
                    self._apply(self.conv.toggle_mute(now))
            if self.conv.turn != turn:
                self.turn.wake = now

    def _on_playback_started(self, item_id: str, t: float, epoch: int) -> None:
        if epoch != self.jitter.epoch:
            return  # the last period pulled before a barge-in flush: not a new reply
        if self.turn.first_reply_played is None:
            self.turn.first_reply_played = t
        log.info("playing reply item %s", item_id,
                 extra={"VOXBOX_EVENT": "playback_start", "VOXBOX_ITEM_ID": item_id,
                        "VOXBOX_T": round(t, 4)})
        self._apply(self.conv.playback_started(time.monotonic()))

    def _on_underrun(self, item_id: str | None, t: float, epoch: int) -> None:
        """The jitter buffer ran dry while the reply's audio was still expected (a gap the
        user hears). Logged for the first ``UNDERRUN_LOG_MAX`` of a turn; the turn record
        counts all of them (``VOXBOX_JITTER_UNDERRUNS``)."""
        if epoch != self.jitter.epoch:
            return
        self.metrics.on_underrun()
        n = self.jitter.underruns - self._underruns_at_turn
        if n > UNDERRUN_LOG_MAX:
            return
        rate = self.cfg.audio.playback_rate
        at_ms = round(self.jitter.played.get(item_id, 0) * 1000 / rate) if item_id else 0
        log.info("reply audio ran dry %d ms into item %s (target %d ms)%s", at_ms, item_id,
                 self.jitter.target_ms, "; further underruns this turn not logged"
                 if n == UNDERRUN_LOG_MAX else "",
                 extra={"VOXBOX_EVENT": "underrun", "VOXBOX_ITEM_ID": item_id or "",
                        "VOXBOX_AT_MS": at_ms, "VOXBOX_JITTER_TARGET_MS": round(self.jitter.target_ms),
                        "VOXBOX_T": round(t, 4)})

    def _on_playback_drained(self, t: float) -> None:
        if self.conv.state is not State.SPEAKING:
            return
        self.turn.playback_end = t
        log.info("reply played out", extra={"VOXBOX_EVENT": "playback_end", "VOXBOX_T": round(t, 4)})
        if self.session is not None:
            self.session.close_played_items()
        self.jitter.forget_done()  # the per-item accounting of a played reply is not needed
        self._apply(self.conv.playback_drained(time.monotonic()))

    def _apply(self, actions: list[Action]) -> None:
        if self.conv.turn != self.turn.turn:
            if self.conv.turn > self.turn.turn and self.conv.state is State.LISTENING:
                self.turn_audio.begin()
            self.turn = TurnTimes(self.conv.turn)
            self._idle_audio_logged = self._overflow_logged = False
            self._underruns_at_turn = self.jitter.underruns
            self._added_at_turn = self.jitter.added_latency()
        state = self.conv.state
        if state is not self._turn_audio_state:
            self._turn_audio_state = state
            if state in (State.THINKING, State.SPEAKING):
                self.turn_audio.freeze()  # the question is complete
            elif state is not State.LISTENING and not self.conv.holding:
                self.turn_audio.clear()  # the turn is over: nothing of it is kept
        for a in actions:
            if isinstance(a, Interrupt):
                self._interrupt(a)
            elif isinstance(a, ResetWake):
                self.audio.reset_wake()
            elif isinstance(a, ClearInput) and self.session is not None:
                self.session.clear_input()
            elif isinstance(a, PauseReply):
                self._pause_reply()
            elif isinstance(a, ResumeReply):
                self.turn_audio.restore()  # the reply's question again, not the cough
                self.jitter.resume()
                log.info("false interruption: reply resumed", extra={"VOXBOX_EVENT": "barge_in_resumed"})
            elif isinstance(a, StartPushToTalk):
                self._ptt_samples = 0
                self.audio.ptt_voiced_frames = 0
                if self.session is not None:
                    self.session.set_turn_detection(False)
                    self.session.clear_input()
            elif isinstance(a, EndPushToTalk):
                self._end_push_to_talk()
            elif isinstance(a, SetMuted):
                self._save_muted(a.muted)
            elif isinstance(a, Earcon):
                self._play_earcon(a.name)
            elif isinstance(a, Prompt):
                self._play_prompt(a.name)
            elif isinstance(a, ResendTurn):
                self._resend_turn(a)
        if self.audio.tentative and not self.conv.interruption_pending:
            self.audio.cancel_check()  # the paused reply ended some other way (a tap, a drop)
        self._show_state()
        self._flush_session()

    def _resend_turn(self, a: ResendTurn) -> None:
        """The new session gets the held turn: the user's audio from the turn's beginning
        (with turn detection off while a complete question is committed, so the service's
        VAD cannot commit it a second time), then, for a complete question, the commit and
        one ``response.create`` (the push-to-talk path of :meth:`_uplink_sender`)."""
        session = self.session
        if session is None:
            return
        chunks = self.turn_audio.chunks()
        samples = self.turn_audio.samples
        if a.commit and samples < PCM_RATE // 10:
            log.warning("held turn has %d ms of audio: nothing to ask again", samples * 1000 // PCM_RATE,
                        extra={"VOXBOX_EVENT": "turn_resent", "VOXBOX_TURN": self.conv.turn})
            self._apply(self.conv.response_done(time.monotonic(), "empty"))
            return
        self.rt.drain_uplink()
        if a.commit or a.push_to_talk:  # through the queue: it must reach the service first
            self.rt.send_action(_turn_detection_off)
        for c in chunks:
            self.rt.send_audio(c)
        if a.commit or a.push_to_talk:
            self._ptt_samples = samples
        if a.commit:
            self.rt.send_action(self._commit_ptt)
        log.info("turn %d sent again into the new session: %d ms of the user's audio from its beginning%s",
                 self.conv.turn, samples * 1000 // PCM_RATE, ", committed, response asked for" if a.commit else "",
                 extra={"VOXBOX_EVENT": "turn_resent", "VOXBOX_TURN": self.conv.turn,
                        "VOXBOX_RESENT_MS": samples * 1000 // PCM_RATE, "VOXBOX_COMMIT": int(a.commit),
                        "VOXBOX_OVERFLOWED": int(self.turn_audio.overflowed)})

    def _pause_reply(self) -> None:
        """Tentative barge-in: silence the speaker now, keep the reply (see Conversation)."""
        unplayed = self.playback.delay_samples() if self.playback is not None else 0
        self.jitter.pause(unplayed)
        if self.playback is not None:
            self.playback.drop()
        log.info("reply paused: tentative barge-in", extra={"VOXBOX_EVENT": "barge_in_paused"})

    def _end_push_to_talk(self) -> None:
        """Release: commit after the audio already queued, then ask for the response."""
        if self.session is None:
            return
        if not self.rt.send_action(self._commit_ptt):
            log.warning("uplink queue full at push-to-talk release")

    def _set_muted(self, muted: bool) -> bool:
        """Log the mute change and persist it in the state file (``{"muted": true}``),
        atomically (:func:`voxbox.host.statefile.atomic_write`: temporary file, fsync, rename,
        directory fsync), so a restart comes back muted.

        Returns:
            True when saved. False when it cannot be saved (a full disk, a read-only or
            missing state directory): the temporary file is gone, the old file (if any) is
            untouched, and one error (``VOXBOX_EVENT=state_file``) names the file and says
            the change will not survive a restart. Never raises.
        """
        from voxbox.host.statefile import atomic_write

        log.info("microphone %s", "muted" if muted else "unmuted",
                 extra={"VOXBOX_EVENT": "mute", "VOXBOX_MUTED": int(muted)})
        try:
            atomic_write(self._state_path, (json.dumps({"muted": bool(muted)}) + "\n").encode("utf-8"))
        except OSError as exc:
            log.error("cannot save the mute state in %s: %s; the %s will not survive a restart",
                      self._state_path, exc, "mute" if muted else "unmute",
                      extra={"VOXBOX_EVENT": "state_file", "VOXBOX_MUTED": int(muted)})
            return False  # the caller shows it on the LED and in STATUS= (_save_muted)
        return True

    def _save_muted(self, muted: bool) -> None:
        """Save the mute state (:meth:`_set_muted`); one that cannot be saved is shown on
        the LED (``state_not_saved``, for ``health.MUTE_WARNING_S`` s) and in ``STATUS=``
        until the next successful save (:class:`voxbox.service.health.HealthMonitor`)."""
        now = time.monotonic()
        if self._set_muted(muted):
            self.health.mute_saved(now)
        else:
            self.health.mute_not_saved(now, f"cannot write {self._state_path} (see the journal); the "
                                            f"{'mute' if muted else 'unmute'} will not survive a restart")

    def _load_muted(self) -> bool:
        """Whether the microphone was muted at the last stop (``{"muted": true}`` in the
        state file).

        Never raises. False without a word when the file does not exist; False with one
        warning (``VOXBOX_EVENT=state_file``) naming the file and the key when it cannot be
        read, is larger than 64 KiB, is not JSON (truncated, binary garbage), is not a JSON
        object, or its ``muted`` is missing or not ``true``/``false``.
        """
        path = self._state_path
        limit = 64 * 1024  # bytes; a larger file is not a mute state
        try:
            with open(path, "rb") as f:
                raw = f.read(limit + 1)
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            why = f"cannot read it: {exc}"
        else:
            if len(raw) > limit:
                why = f"larger than {limit} bytes: not a mute state"
            else:
                try:
                    data = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                    why = f"not valid JSON: {exc}"
                else:
                    if not isinstance(data, dict):
                        why = f"not a JSON object with key 'muted' (a {type(data).__name__})"
                    elif "muted" not in data:
                        why = "key 'muted' is missing (true or false is needed)"
                    elif not isinstance(data["muted"], bool):
                        why = f"key 'muted' is not true or false (a {type(data['muted']).__name__})"
                    else:
                        return data["muted"]
        log.warning("ignoring state file %s: %s; starting unmuted", path, why,
                    extra={"VOXBOX_EVENT": "state_file"})
        return False

    def _play_earcon(self, name: str) -> None:
        cue = self._earcons.get(name)
        if cue is not None:
            log.debug("earcon %s", name, extra={"VOXBOX_EVENT": "earcon", "VOXBOX_EARCON": name})
            self.audio.play_cue(cue)

    def _play_prompt(self, name: str) -> None:
        """A spoken prompt rendered at build time (voxbox/prompts/*.wav, tools/make_prompts.py)."""
        cue = self._prompts.get(name)
        if cue is None:
            log.error("prompt %s unavailable (see the start-up log)", name, extra={"VOXBOX_EVENT": "prompt"})
            return
        log.info("prompt %s", name, extra={"VOXBOX_EVENT": "prompt", "VOXBOX_PROMPT": name})
        self.audio.play_cue(cue)

    def _interrupt(self, a: Interrupt) -> None:
        was_paused = self.jitter.paused
        played = self.jitter.flush()
        last = self.audio.last_pull.item_id
        if was_paused:
            last = None  # the pause already took back what the device held
        if self.playback is not None:
            # what the device still holds is discarded by drop(): it was never heard
            delay = self.playback.delay_samples()
            if delay and last in played:
                played[last] = max(0, played[last] - delay)
            self.playback.drop()
        self.audio.playing_item = None
        if self.session is None:
            return
        rate = self.cfg.audio.playback_rate
        played24 = {k: v * PCM_RATE // rate for k, v in played.items()}
        res = self.session.interrupt(played24, cancel=not a.by_server)
        self.metrics.on_barge_in(a.cause)
        self.stats["truncates"] += len(res.truncated)
        log.info("barge-in by %s: cancel=%s truncated=%s deleted=%s", a.cause, res.cancelled,
                 res.truncated, res.deleted,
                 extra={"VOXBOX_EVENT": "barge_in", "VOXBOX_CAUSE": a.cause,
                        "VOXBOX_TRUNCATE_MS": ",".join(f"{k}:{v}" for k, v in res.truncated.items())})

    def _show_state(self) -> None:
        state = self.conv.state
        # a held turn keeps streaming into turn_audio while the link is down
        audio = self.audio  # what the capture thread reads (each a bool, written whole)
        audio.uplink_open = self.conv.uplink_open and (self._session_ready or self.conv.holding)
        audio.speaking = state is State.SPEAKING
        audio.muted = self.conv.muted
        audio.push_to_talk = self.conv.push_to_talk
        pattern = display_pattern(state, self.health.led_fault(time.monotonic()))
        if pattern.name != self._led_name:
            self._led_name = pattern.name
            if self.led is not None:
                self.led.show(pattern)
            log.info("led %s", pattern.name, extra={"VOXBOX_EVENT": "led", "VOXBOX_LED": pattern.name})
        self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        """``STATUS=``: the state, the session, the turn, then what is wrong with the unit
        (voxbox.service.health: a device missing, a deaf microphone, a mute not saved…)."""
        sid = self.session.session_id if self.session is not None and self.session.session_id else "-"
        text = f"{self.conv.state.value}; session {sid}; turn {self.conv.turn}"
        for fault in self.health.faults(time.monotonic()):
            text += f"; {fault.text}"
        return text

    # ------------------------------------------------------------------------ link
    @property
    def session(self) -> RealtimeSession | None:
        """The current Realtime session (:class:`voxbox.realtime.client.RealtimeLink`'s), or None."""
        return self.rt.session

    @property
    def _session_ready(self) -> bool:
        """The current session's configuration was acknowledged (``session.updated``)."""
        return self.rt.ready

    def _flush_session(self) -> None:
        self.rt.flush()

    async def _metrics_writer(self) -> None:
        """Write the fleet metrics file (``metrics.textfile``) every ``metrics.interval_s``
        and once at stop, off the event loop (an fsync). A failure is logged when its
        reason changes (``VOXBOX_EVENT=metrics``), never raised."""
        from voxbox.host.metrics import MetricsWriter

        m = self.cfg.metrics
        writer = MetricsWriter(self.metrics, m.textfile, selftest_path=sd.state_dir() / "selftest.json")
        loop = asyncio.get_running_loop()
        said = None

        async def write() -> None:
            nonlocal said
            mic, out = self.audio.take_erle_sums()
            if mic > 0 and out > 0:  # ERLE over the far-end periods since the last write, dB
                self.metrics.set_erle_db(10 * math.log10(mic / out))
            ok = await loop.run_in_executor(None, writer.write)
            err = None if ok else writer.error
            if err != said:
                if err is None:
                    log.info("metrics written again to %s", m.textfile, extra={"VOXBOX_EVENT": "metrics"})
                else:
                    log.error("cannot write the metrics file %s: %s", m.textfile, err,
                              extra={"VOXBOX_EVENT": "metrics"})
                said = err

        try:
            while True:
                await write()
                await asyncio.sleep(m.interval_s)
        except asyncio.CancelledError:
            await write()  # the last figures, at stop
            raise

    # ------------------------------------------------------------------ the link's callbacks
    def _on_link_fatal(self, cause: str) -> None:
        """The service refused the unit (logged by the link)."""
        self._apply(self.conv.fatal(time.monotonic(), cause))

    def _on_link_lost(self, cause: str) -> None:
        """A failed attempt or a lost session (logged by the link)."""
        self._apply(self.conv.link_down(time.monotonic(), cause))

    def _on_link_ready(self) -> None:
        """``session.updated``: the new session carries the conversation so far."""
        self._replay_context()
        self._apply(self.conv.link_up(time.monotonic()))

    def _in_turn(self) -> bool:
        return self.conv.state in UPLINK_STATES

    def _audio_wanted(self) -> bool:
        return self.audio.uplink_open

    def _on_audio_sent(self, block: bytes) -> None:
        if self.turn.first_audio_sent is None:
            self.turn.first_audio_sent = time.monotonic()
            log.info("first audio sent to the service",
                     extra={"VOXBOX_EVENT": "uplink_start", "VOXBOX_TURN": self.conv.turn})
        self.stats["uplink_samples"] += len(block) // 2

    def _commit_ptt(self, session: RealtimeSession) -> None:
        """Queued behind the question's audio: commit and ask for the response (a
        push-to-talk release, a resent question); under 100 ms of audio nothing is sent."""
        if self._ptt_samples >= PCM_RATE // 10:  # commits under 100 ms are errors
            session.commit()
            session.create_response()
        else:
            log.info("push-to-talk too short (%d ms): nothing sent",
                     self._ptt_samples * 1000 // PCM_RATE, extra={"VOXBOX_EVENT": "ptt_short"})
            session.clear_input()
            self._apply(self.conv.response_done(time.monotonic(), "empty"))
        session.set_turn_detection(True)

    def _on_session_event(self, ev, t_open: float) -> None:
        now = time.monotonic()
        conv = self.conv
        if isinstance(ev, AudioDelta):
            if self.turn.first_reply_received is None:
                self.turn.first_reply_received = now
                log.info("first reply audio received", extra={"VOXBOX_EVENT": "reply_audio_start",
                                                              "VOXBOX_ITEM_ID": ev.item_id})
            if conv.state not in UPLINK_STATES or conv.muted:
                if not self._idle_audio_logged:  # once per turn
                    self._idle_audio_logged = True
                    log.warning("reply audio for item %s arrived while %s: dropped, never played",
                                ev.item_id, conv.state, extra={"VOXBOX_EVENT": "idle_audio", "VOXBOX_ITEM_ID": ev.item_id})
                return
            pcm = np.frombuffer(ev.pcm, dtype="<i2").astype(np.int16, copy=False)
            if self._reply_resampler is not None:
                pcm = self._reply_resampler.resample_chunk(pcm)
            dropped = self.jitter.push(ev.item_id, pcm)
            if dropped and not self._overflow_logged:
                self._overflow_logged = True
                log.warning("reply audio queued ahead of playback over %.0f s: the excess is dropped "
                            "(first %d ms of it from item %s)", self.jitter.max_queued_ms / 1000,
                            dropped * 1000 // self.cfg.audio.playback_rate, ev.item_id,
                            extra={"VOXBOX_EVENT": "reply_overflow", "VOXBOX_ITEM_ID": ev.item_id})
            return
        if isinstance(ev, SpeechStarted):
            self.turn.speech_started = now
            log.info("service heard speech start", extra={"VOXBOX_EVENT": "speech_started",
                                                           "VOXBOX_ITEM_ID": ev.item_id})
            self._apply(conv.speech_started(now, ev.audio_start_ms))
        elif isinstance(ev, (SpeechStopped, InputCommitted)):
            if self.turn.speech_stopped is None:
                self.turn.speech_stopped = now
                log.info("service heard end of speech", extra={"VOXBOX_EVENT": "speech_stopped",
                                                                "VOXBOX_ITEM_ID": ev.item_id})
            if isinstance(ev, SpeechStopped):
                self._apply(conv.speech_stopped(now, ev.audio_end_ms))
            elif not conv.interruption_pending:
                self._apply(conv.turn_committed(now))
        elif isinstance(ev, ResponseStarted):
            self.turn.response_created = now
            log.info("response %s started", ev.response_id, extra={"VOXBOX_EVENT": "response_start",
                                                                    "VOXBOX_RESPONSE_ID": ev.response_id})
            self._apply(conv.response_started(now))
        elif isinstance(ev, AudioDone):
            self.jitter.mark_complete()
        elif isinstance(ev, ResponseDone):
            self.jitter.mark_complete()
            log.info("response %s %s", ev.response_id, ev.status,
                     extra={"VOXBOX_EVENT": "response_done", "VOXBOX_STATUS": ev.status})
            self._apply(conv.response_done(now, ev.status, audio_queued=self.jitter.queued_samples > 0))
            if not self.jitter.active and self.conv.state is State.SPEAKING:
                self._apply(conv.playback_drained(now))
        elif isinstance(ev, FunctionCallRequested):
            asyncio.get_running_loop().create_task(self._run_tool(ev), name=f"tool {ev.name}")
        elif isinstance(ev, TranscriptDone):
            log.info("assistant: %s", ev.transcript, extra={"VOXBOX_EVENT": "assistant_transcript"})
            self._remember("assistant", ev.transcript)
        elif isinstance(ev, UserTranscript):
            log.info("user: %s", ev.transcript, extra={"VOXBOX_EVENT": "user_transcript"})
            self._remember("user", ev.transcript)
        elif isinstance(ev, ServerError):
            level = logging.ERROR if ev.fatal else logging.WARNING
            if ev.code == "response_cancel_not_active":
                level = logging.INFO
            log.log(level, "service error %s (type %s, in reply to %s%s): %s", ev.code or "(no code)",
                    ev.type or "(none)", ev.cause or "(no client event named)",
                    f" {ev.event_id}" if ev.event_id else "", ev.message or "(no message)",
                    extra={"VOXBOX_EVENT": "service_error", "VOXBOX_ERROR_CODE": ev.code,
                           "VOXBOX_CAUSE": ev.cause or ""})
            if ev.fatal:
                self._apply(conv.fatal(now, ev.code))

    async def _run_tool(self, call) -> None:
        """Run a tool call off the loop (ToolRunner: worker thread, timeout, error result)
        and answer it on the session that asked, if it is still the current one."""
        session = self.session
        self.stats["tool_calls"] += 1
        if self.tool_runner is None:
            from voxbox.conversation.tools import ToolResult

            result = ToolResult(call.call_id, json.dumps({"error": "tools are disabled on this unit"}), True, 0.0)
        else:
            result = await self.tool_runner.run(call.call_id, call.name, call.arguments)
        log.log(logging.WARNING if result.error else logging.INFO, "tool %s -> %s (%.0f ms)", call.name,
                result.output[:200], result.ms,
                extra={"VOXBOX_EVENT": "tool_call", "VOXBOX_TOOL": call.name, "VOXBOX_TOOL_ERROR": int(result.error),
                       "VOXBOX_TOOL_MS": round(result.ms, 1)})
        if session is None or session is not self.session:
            log.info("tool %s answered after its session ended; dropped", call.name,
                     extra={"VOXBOX_EVENT": "tool_call"})
            return
        session.function_output(call.call_id, result.output, respond=result.respond)
        self._flush_session()

    def _stop_conversation(self) -> None:
        self._apply(self.conv.end_conversation(time.monotonic(), "the model ended the conversation"))

    def _remember(self, role: str, text: str) -> None:
        """Keep the conversation as text for the next session (bounded by turns and chars)."""
        text = text.strip()
        if not text:
            return
        cc = self.cfg.conversation
        h = self.history
        h.append((role, text, self.conv.turn))
        while len(h) > 2 * cc.context_turns or sum(len(t) for _, t, _ in h) > cc.context_chars:
            h.popleft()

    def _replay_context(self) -> None:
        """A new session starts empty: give it the recent conversation as text items. The
        words of a turn held for a resend are left out: its audio is sent again instead."""
        if self.session is None or not self.history:
            return
        held = self.conv.turn if self.conv.holding else None
        items = [(role, text) for role, text, turn in self.history if turn != held]
        for role, text in items:
            self.session.add_text_item(role, text)
        log.info("context carried over: %d items", len(items),
                 extra={"VOXBOX_EVENT": "context_replay", "VOXBOX_ITEMS": len(items)})

    def _log_turn_end(self, old: State) -> None:
        t = self.turn
        self.metrics.on_turn()
        fields = {"VOXBOX_EVENT": "turn", "VOXBOX_TURN": t.turn,
                  "VOXBOX_SESSION_ID": self.session.session_id if self.session else ""}
        fields.update(t.latencies_ms())
        if t.wake_score is not None:
            fields["VOXBOX_WAKE_SCORE"] = round(t.wake_score, 4)
        fields["VOXBOX_JITTER_UNDERRUNS"] = self.jitter.underruns - self._underruns_at_turn
        fields["VOXBOX_JITTER_TARGET_MS"] = round(self.jitter.target_ms)
        fields.update(_added_fields(self.jitter.added_latency() - self._added_at_turn))
        fields.update(self.echo.turn_fields())
        log.info("turn %d done: %s", t.turn,
                 " ".join(f"{k[7:].lower()}={v}" for k, v in fields.items() if "MS" in k), extra=fields)

    # ------------------------------------------------------------------------ timers
    async def _ticker(self) -> None:
        last_state = self.conv.state
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            self._gestures(self.gestures.tick(now), now)
            self._apply(self.conv.tick(now))
            self._supervise_link(now)
            state = self.conv.state
            if state is not last_state:
                if last_state is State.SPEAKING and state in (State.FOLLOW_UP, State.IDLE):
                    self._log_turn_end(last_state)
                    self.link.healthy()  # a completed turn: the link works
                last_state = state

    def _supervise_link(self, now: float) -> None:
        idle = self.conv.state is State.IDLE and not self.jitter.active and self.audio.cue is None
        self.rt.supervise(now, idle, str(self.conv.state))

    def _audio_alive(self, now: float, within_s: float) -> bool:
        return self.audio.capture_frames > 0 and now - self.audio.last_capture_t < within_s

    def _devices_down(self) -> list[str]:
        """The audio devices the loops are waiting for (missing, busy, blocked)."""
        return [loop.device for loop in (self.capture, self.playback)
                if loop is not None and loop.status().state == "waiting"]

    async def _ready_gate(self) -> None:
        """READY=1 once audio flows (or a device the unit waits for is reported: a unit
        whose USB card is not there yet runs, says so, and is not killed by its start
        timeout) and the session is up; after the connect timeout READY=1 anyway (offline)
        so a unit booting in a tunnel is not killed by its start timeout. The reference
        delay line is set from ALSA once capture flows and playback is open."""
        t0 = time.monotonic()
        ready = False
        while not (ready and self._line_from_alsa):
            now = time.monotonic()
            audio = self._audio_alive(now, 1.0)
            if (audio and not self._line_from_alsa and self.playback is not None
                    and self.playback.status().state == "open"):
                self._line_from_alsa = True
                self.echo.init_line(self.playback.delay_samples(), self.cfg.audio.playback_rate)
                # trains the echo canceller on the right alignment before the first reply
                self._play_earcon("startup")
            down = self._devices_down()
            if (not ready and (audio or down)
                    and (self._session_ready or now - t0 > self.cfg.realtime.connect_timeout_s)):
                ready = True
                self.notifier.ready(self._status_text())
                log.info("ready (session %s%s)", "up" if self._session_ready else "not up yet",
                         f"; waiting for audio device(s) {', '.join(map(repr, down))}" if down else "",
                         extra={"VOXBOX_EVENT": "ready"})
            await asyncio.sleep(0.02 if not ready else 0.1)  # after READY=1: waiting for a device

    async def _health_task(self) -> None:
        """Every HEALTH_TICK_S: judge the audio devices (:class:`voxbox.service.health.HealthMonitor`),
        log what it reports, refresh the LED and ``STATUS=``, and send ``WATCHDOG=1`` (every
        half ``WatchdogSec=``) only while capture and playback make progress. A missing or
        blocked device and a deaf microphone are reported, never restart-looped."""
        interval = self.notifier.watchdog_interval_s or 1.0
        last_ping = 0.0
        while True:
            await asyncio.sleep(HEALTH_TICK_S)
            now = time.monotonic()
            cap = self.capture.status() if self.capture is not None else None
            play = self.playback.status() if self.playback is not None else None
            for r in self.health.update(now, cap, play, self.audio.last_nonsilent_t or None):
                log.log(r.level, "%s", r.message, extra=r.fields)
            self._show_state()
            if self.health.watchdog_cause is None and now - last_ping >= interval - HEALTH_TICK_S / 2:
                last_ping = now
                if self.notifier.watchdog_usec:
                    self.notifier.watchdog()


class _DaemonToolContext:
    """What built-in tools may touch (voxbox.conversation.tools.ToolContext); called from worker threads."""

    def __init__(self, daemon: "Daemon"):
        self._d = daemon

    def set_volume(self, percent: int) -> int:
        v = self._d.volume.set(percent)
        log.info("volume %d %%", v, extra={"VOXBOX_EVENT": "volume", "VOXBOX_VOLUME": v})
        return v

    def get_volume(self) -> int:
        return self._d.volume.get()

    def stop_conversation(self) -> None:
        self._d._loop.call_soon_threadsafe(self._d._stop_conversation)

    def device_status(self) -> dict[str, Any]:
        d = self._d
        return {"state": d.conv.state.value, "muted": d.conv.muted, "volume": d.volume.get(),
                "session_id": d.session.session_id if d.session is not None else None,
                "uptime_s": round(time.monotonic() - d.t_start), "version": __version__,
                "reconnects": d.rt.reconnects}

    def now(self):
        import datetime

        return datetime.datetime.now().astimezone()


def _added_fields(h: LatencyHistogram) -> dict:
    """Journald fields for the jitter buffer's added latency over ``h`` (none if no audio)."""
    if not h.samples:
        return {}
    return {"VOXBOX_JITTER_ADDED_MS": round(h.mean_ms(), 1),
            "VOXBOX_JITTER_ADDED_P95_MS": round(h.quantile_ms(0.95))}


MMAP_THRESHOLD_BYTES = 32 * 1024
"""glibc: allocations from this size up (a reply-audio message, its decoded PCM) get pages
of their own, returned to the system when freed."""


def _return_large_buffers() -> None:
    """Fix glibc's mmap threshold (``mallopt(M_MMAP_THRESHOLD)``) at MMAP_THRESHOLD_BYTES.

    glibc raises the threshold on its own after the first large buffer is freed (up to 32
    MiB), after which every large transient buffer comes from the heap, and a burst of them
    leaves the heap fragmented: measured with the real daemon, 30 min of reply audio in 4 s
    left RSS 11.3 MiB above where it was (6.3 MiB even after ``malloc_trim``); with the
    threshold fixed, 6.1 MiB. Not glibc (musl): nothing to do."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_MMAP_THRESHOLD = -3
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
