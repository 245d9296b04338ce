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
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np
import soxr

from voxbox import __version__
from voxbox.audio.jitter import JitterBuffer
from voxbox.audio.playout import LatencyHistogram, PullClock, PullResult
from voxbox.audio.ring import FrameQueue, SampleRing
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
from voxbox.realtime.dialects import PCM_RATE, auth_headers, build_url
from voxbox.realtime.session import (
    FATAL_CLOSE_CODES,
    AudioDelta,
    AudioDone,
    FunctionCallRequested,
    InputCommitted,
    InvalidEvent,
    ProtocolError,
    RealtimeSession,
    ResponseDone,
    ResponseStarted,
    ServerError,
    SessionCreated,
    SessionReady,
    SpeechStarted,
    SpeechStopped,
    TranscriptDone,
    UserTranscript,
)
from voxbox.realtime.turnaudio import TurnAudio
from voxbox.service.health import HealthMonitor

log = logging.getLogger("voxbox.service.daemon")


def _fmt_stats(stats: dict[str, float]) -> str:
    """The near-end detector's statistics as one journal field: ``key=value ...``."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items())

UPLINK_BLOCK_MS = 40
"""Uplink audio is sent in blocks of this many ms (one ``input_audio_buffer.append`` each)."""

CREDENTIAL_POLL_S = 2.0
"""How often an unprovisioned unit looks for its credential (s)."""

REF_MOVE_QUIET_PERIODS = 30
#: after an echo-path change the daemon made itself (a move of the reference delay line,
#: a resync of it) the near-end detector pauses no reply during this much far-end signal
#: (ms): the canceller is reconverging, and its residual looks like a talker to the
#: detector and, with an echo estimate not yet caught up, to the check. Measured in the
#: closed loop (t06, +6 dB): replies after a move began with 0-4 dB of echo cancellation for
#: about 400 ms, and were paused, and cut, on their own echo at 250-350 ms.
RECONVERGE_FAR_MS = 1000.0
"""A move of the reference delay line that is not urgent (the reference still leads its
echo) waits until the reference has been silent this many capture periods (300 ms)."""

TURN_PING_S = 1.0
IDLE_PING_S = 10.0
"""Liveness pings (our own; the websockets keepalive is off): every second during a turn,
every 10 s otherwise. A ping unanswered for ``realtime.stall_s`` with no server event
meanwhile is a stall (:meth:`voxbox.realtime.link.LinkSupervisor.stalled`)."""

TURN_AUDIO_MAX_S = 30.0
"""Longest question kept on the unit for a resend after a link loss (s)."""

REJECT_LOG_EVERY_S = 60.0
"""A server event that fails validation is logged once per event type, then summed up at
most once per this many seconds."""

MIN_REF_DELAY_PERIODS = 3
UNDERRUN_LOG_MAX = 5  # underrun events logged per turn (all are counted in the turn record)
"""Shortest far-end reference delay line, in capture periods (see Daemon.__init__)."""

LONG_HOLD_TALK_S = 0.5
"""A long hold is a mute toggle unless the user spoke this long during the hold (s)."""
VOICE_POWER = (32768 * 10 ** (-40 / 20)) ** 2
"""Mean power of a capture period counted as voice during a hold (-40 dBFS RMS)."""

_COMMIT: Any = object()  # uplink-queue marker: push-to-talk released, commit after the audio before it
_TURN_DETECTION_OFF: Any = object()  # uplink-queue marker: turn detection off before the audio after it

HEALTH_TICK_S = 0.5
"""How often the audio devices are judged (voxbox.service.health) and the LED/STATUS= refreshed (s)."""

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Incoming WebSocket message limit (websockets defaults to 1 MiB; appends may be 15 MiB)."""


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
        self._start_local_server = local_server
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
        #: the echo path measured on these devices (voxbox.dsp.echostate): restored at start so
        #: the first reply after boot has its reference delay and drift right
        self._echo_state_path = self._state_path.parent / "echo.json"
        self._echo_devices = (f"capture={a.capture_device} playback={a.playback_device} "
                              f"rate={a.playback_rate} period_ms={a.period_ms} periods={a.periods}")
        self._echo_state = None
        self._echo_saving = False
        self._echo_saved_at = 0.0
        self._ptt_samples = 0  # uplink samples streamed in the current push-to-talk hold
        self._ptt_voiced_frames = 0  # capture periods above VOICE_DBFS during the hold
        # earcons: the playback thread mixes the current cue into the reply (whole frames)
        self._earcons: dict[str, np.ndarray] = {}
        self._cue: np.ndarray | None = None
        self._prompts: dict[str, np.ndarray] = {}
        self._cue_pos = 0
        if a.jitter_fixed_ms is not None:  # a fixed-depth buffer (a baseline, or a known link)
            self.jitter = JitterBuffer(a.playback_rate, self.play_period, a.jitter_fixed_ms, stretch=False,
                                       min_ms=a.jitter_fixed_ms, max_ms=a.jitter_fixed_ms)
        else:
            self.jitter = JitterBuffer(a.playback_rate, self.play_period, a.jitter_prebuffer_ms,
                                       stretch=a.jitter_stretch, min_ms=a.jitter_min_ms,
                                       max_ms=a.jitter_max_ms)
        self._pull_clock = PullClock(a.playback_rate, self.play_period)
        self.ref_ring = SampleRing(a.capture_rate)  # 1 s
        # the delay line never runs shorter than MIN_REF_DELAY_PERIODS periods: the two audio
        # threads wake at different times, and a shorter backlog starves the reference
        self._ref_floor = MIN_REF_DELAY_PERIODS * self.cap_period
        self._ref_delay = max(self._ref_floor, a.capture_rate * cfg.frontend.reference_delay_ms // 1000)
        self._resyncs_seen = 0
        self._ref_quiet = 0  # echo worker: periods since the reference last held signal
        self._pending_move: tuple[int, float, float] | None = None  # a line move waiting for a pause
        self._line_from_alsa = False
        self._underruns_at_turn = 0
        self._added_at_turn = self.jitter.added_latency()
        self._wake_aware = cfg.wake.enabled and cfg.wake.playback_aware
        # reference alignment (capture thread) and drift compensation (playback thread)
        self.delay_tracker = None
        self._echo_q: FrameQueue | None = None
        self._echo_stop = threading.Event()
        self.aligner = None
        self._drift_target_ppm = 0.0  # published by the capture thread
        self._drift_comp = None  # used by the playback thread only
        if cfg.frontend.echo_cancel and cfg.frontend.track_echo_delay:
            from voxbox.dsp.align import DriftCompensator, EchoDelayTracker, ReferenceAligner

            self.delay_tracker = EchoDelayTracker(a.capture_rate)
            # 1 s of (reference, microphone) periods for the echo worker thread
            self._echo_q = FrameQueue(a.capture_rate // self.cap_period, self.cap_period)
            self.aligner = ReferenceAligner(a.capture_rate, lead_ms=cfg.frontend.reference_lead_ms)
            if cfg.frontend.drift_compensation:
                self._drift_comp = DriftCompensator(0.0)
        self.notifier = Notifier()
        from voxbox.audio.alsa import OPEN_TIMEOUT_S

        #: judges the audio devices: the watchdog, the LED/STATUS= faults, their journal lines
        self.health = HealthMonitor(a.capture_device, a.playback_device, deaf_after_s=a.deaf_after_s,
                                    probe_timeout_s=OPEN_TIMEOUT_S)
        self.session: RealtimeSession | None = None
        self.turn = TurnTimes()
        self.uplink_open = False  # read by the capture thread
        self._wake_reset = False
        self._stop = asyncio.Event()
        self._ws = None
        self._ready_sent = False
        self._led_name = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._uplink_q: asyncio.Queue[bytes] = asyncio.Queue(maxsize=500)
        # capture-thread state (touched only by the capture thread)
        self._ref_frame = np.zeros(self.cap_period, dtype=np.int16)
        self._cap_f32 = np.zeros(self.cap_period, dtype=np.float32)  # voice-level scratch
        self._erle_f32 = np.zeros(self.cap_period, dtype=np.float32)  # ERLE scratch
        #: microphone and cleaned energy summed over far-end periods (capture thread; read
        #: and reset by the metrics writer: a race costs one period of 10 ms in a sum)
        self._erle_mic = self._erle_out = 0.0
        self._up_resampler: soxr.ResampleStream | None = None
        self._up_parts: list[np.ndarray] = []
        self._up_samples = 0
        self._up_block = PCM_RATE * UPLINK_BLOCK_MS // 1000
        self.capture_frames = 0
        self.last_capture_t = 0.0
        self.last_nonsilent_t = 0.0
        # playback-thread state
        self._play_buf = np.zeros(self.play_period, dtype=np.int16)
        self._mix_i32 = np.zeros(self.play_period, dtype=np.int32)  # earcon mixing scratch
        self._last_pull = PullResult(None, 0, False, False, 0)
        # float, not int16: soxr's int16 output carries +-1 of dither after the signal, and a
        # reference that is never exactly silent keeps the far end "active" for ever
        self._ref_resampler = (None if a.playback_rate == a.capture_rate else
                               soxr.ResampleStream(a.playback_rate, a.capture_rate, 1, dtype="float32"))
        self._playing_item: str | None = None
        self._reply_resampler = (None if a.playback_rate == PCM_RATE else
                                 soxr.ResampleStream(PCM_RATE, a.playback_rate, 1, dtype="int16"))
        self.frontend = None
        self.near_end = None  # voxbox.duplex.nearend.NearEndDetector (local barge-in)
        self.gate = None  # voxbox.duplex.uplinkgate.UplinkGate
        self._fe_far = False  # the latest front-end frame's reference held far-end signal
        #: far-end front-end frames left during which the detector pauses no reply (the
        #: canceller reconverges after an echo-path change; written by the echo worker and
        #: the capture thread, an int: no lock)
        self._reconverge_frames = 0
        self._near = False  # the detector's latest decision
        self._check = None  # voxbox.duplex.interruption.InterruptionCheck (the second stage)
        self._check_start = False  # loop -> capture thread: start the check
        self._tentative = False  # a reply is paused on the detector's word, being checked
        self._onset_t = 0.0  # when the detector heard the user (monotonic s)
        self._gate_open: int | None = None  # loop -> capture thread: open the gate, pre-roll
        self.recorder = None
        self.wake = None
        self.capture = None
        self.playback = None
        self.server = None
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
        self._expires_at: float | None = None  # the session's expires_at (monotonic s)
        self._link_host = "?"  # the service's host name, for the journal
        # server events that failed validation: per event type, (last logged, not logged since)
        self._rejected: dict[str, tuple[float, int]] = {}
        self._idle_audio_logged = False
        self._overflow_logged = False
        self._keys = None  # StaticKey or TokenBroker (see _credentials)
        self._expired = False  # the service said session_expired
        self._fatal_code: str | None = None  # a fatal error event preceded the close
        self._stall_cause: str | None = None
        #: recent conversation as text, replayed into a new session: (role, text, turn)
        self.history: deque[tuple[str, str, int]] = deque()
        self.stats = {"uplink_samples": 0, "truncates": 0, "reconnects": 0, "tool_calls": 0}
        from voxbox.host.metrics import UnitMetrics

        #: fleet metrics (voxbox.host.metrics), written by _metrics_writer when metrics.textfile is set
        self.metrics = UnitMetrics(version=__version__)
        self.t_start = time.monotonic()
        from voxbox.audio.volume import Volume

        self.volume = Volume(self._state_path.parent, mixer=a.mixer or None, mixer_device=a.mixer_device,
                             default_percent=a.volume)
        self.tools = None
        self.tool_runner = None
        if cfg.tools.enabled:
            from voxbox.conversation.tools import ToolRegistry, ToolRunner

            self.tools = ToolRegistry.default(cfg.tools.allow or None)
            self.tool_runner = ToolRunner(self.tools, _DaemonToolContext(self))

    # ------------------------------------------------------------------------------ start
    def stop(self) -> None:
        self._stop.set()

    def dump_recording(self) -> None:
        """SIGUSR1: write the recorder's ring (``frontend.record_s``) as three WAV files,
        ``<dir>/voxbox-<UTC time>-{mic,ref,out}.wav`` plus a ``.json`` sidecar, in
        ``$STATE_DIRECTORY/recordings`` (``/var/lib/voxbox/recordings`` outside systemd).
        Runs on the event loop; the copy is taken under the recorder's short lock and the
        files are written off the loop. Replay with ``voxbox dsp``."""
        if self.recorder is None:
            log.warning("recording requested but frontend.record_s is 0; nothing recorded",
                        extra={"VOXBOX_EVENT": "recording"})
            return
        rec = self.recorder.snapshot()
        state_dir = sd.state_dir()
        directory = state_dir / "recordings"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        settings = None if self.frontend is None else dataclasses.asdict(self.frontend.settings)

        def write() -> None:
            from voxbox.audio.wavfile import write_wav

            directory.mkdir(parents=True, exist_ok=True)
            base = directory / f"voxbox-{stamp}"
            for ch in ("mic", "ref", "out"):
                write_wav(Path(f"{base}-{ch}.wav"), rec.channel(ch), rec.sample_rate)
            meta = {"sample_rate": rec.sample_rate, "samples": int(rec.samples.shape[0]),
                    "start_sample": rec.start_sample, "from_start": rec.from_start,
                    "frontend": settings, "reference_delay_ms": self.cfg.frontend.reference_delay_ms,
                    "latency_samples": None if self.frontend is None else self.frontend.latency_samples}
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
        if self.delay_tracker is not None:
            from voxbox.dsp.echostate import load_echo_state

            self._echo_state = load_echo_state(self._echo_state_path, self._echo_devices)
            if self._echo_state is not None and self._drift_comp is not None:
                self._drift_target_ppm = self._echo_state.drift_ppm
        self._build_gpio()
        if self._load_muted():
            self._apply(self.conv.restore_muted(time.monotonic()))
        if self._unprovisioned():
            self.metrics.set_link("unprovisioned")
            self._apply(self.conv.unprovisioned(time.monotonic(), "no Realtime API key"))
        self._show_state()
        from voxbox.audio.alsa import CaptureLoop, PlaybackLoop

        # a device missing at start (a USB card not enumerated yet), lost or blocked: the
        # loops keep trying it (in a child process first) and the unit runs meanwhile
        self.playback = PlaybackLoop(cfg.audio.playback_device, self._playback_source,
                                     self._playback_written, rate=cfg.audio.playback_rate,
                                     period=self.play_period, periods=cfg.audio.periods,
                                     wait_for_device=True)
        self.capture = CaptureLoop(cfg.audio.capture_device, self._on_capture_frame,
                                   rate=cfg.audio.capture_rate, period=self.cap_period,
                                   periods=cfg.audio.periods, wait_for_device=True)
        self.playback.on_drop = self._playback_dropped
        self.playback.start()
        self.capture.start()
        if self._echo_q is not None:
            self._echo_thread = threading.Thread(target=self._echo_worker, name="echo-delay", daemon=True)
            self._echo_thread.start()
        tasks = [asyncio.create_task(self._link(), name="link"),
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
            self._echo_stop.set()
            if self.delay_tracker is not None and self.aligner is not None and self.aligner.moves:
                await self._save_echo_state(None, None, force=True)
            self.playback.stop()
            if self.server is not None:
                # off the loop: the server's close handshake needs this loop's client side
                await asyncio.to_thread(self.server.stop)
            if self.led is not None:
                self.led.close()
            if self.button is not None:
                self.button.close()
            # free the native resampler streams now rather than at interpreter exit
            self._up_resampler = self._ref_resampler = self._reply_resampler = None
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
        from voxbox.dsp.frontend import build_frontend

        # the same builder as `voxbox dsp`; the wake-word tap does not change the uplink output
        self.frontend = build_frontend(cfg, wake_tap="aec" if cfg.wake.enabled and cfg.wake.playback_aware else None)
        if self.frontend is not None and self.local_barge_in:
            from voxbox.duplex.nearend import BargeInSettings, NearEndDetector, SileroVad

            # the first stage only pauses the reply (the check with the speaker quiet decides),
            # so it is more sensitive than the detector's stand-alone defaults: a short
            # "Stop." in double talk reaches Silero 0.5-0.7, rarely 0.8
            self.near_end = NearEndDetector(
                BargeInSettings(frame_size=self.frontend.frame_size, sample_rate=cfg.audio.capture_rate,
                                vad_min=0.5, onset_fill=0.75),
                vad=SileroVad(cfg.audio.capture_rate))
            self.frontend.observer = self._on_frontend_frame
            from voxbox.duplex.interruption import InterruptionCheck

            self._check = InterruptionCheck(1000 * self.frontend.frame_size / cfg.audio.capture_rate)
            if cfg.barge_in.uplink_gate:
                from voxbox.duplex.uplinkgate import UplinkGate

                self.gate = UplinkGate(self.cap_period, cfg.audio.capture_rate,
                                       preroll_ms=cfg.barge_in.preroll_ms, tail_ms=cfg.barge_in.tail_ms,
                                       max_preroll_ms=cfg.barge_in.preroll_ms + 1200)
        if cfg.frontend.record_s > 0:
            from voxbox.dsp.recorder import CaptureRecorder

            self.recorder = CaptureRecorder(cfg.frontend.record_s, cfg.audio.capture_rate)
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
        if cfg.wake.enabled:
            from voxbox.wake.detector import WakeWordDetector

            if cfg.wake.playback_aware:
                from voxbox.wake.detector import PlaybackAwareWake

                self.wake = PlaybackAwareWake(cfg.wake.model, cfg.wake.threshold,
                                              threshold_playback=cfg.wake.threshold_playback,
                                              refractory_s=cfg.wake.refractory_s)
            else:
                self.wake = WakeWordDetector(cfg.wake.model, cfg.wake.threshold, cfg.wake.refractory_s)

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

    # ------------------------------------------------------------------- capture thread
    def _on_capture_frame(self, frame: np.ndarray, t: float) -> None:
        """Capture thread: one 10 ms period of 16 kHz int16 microphone samples."""
        self.capture_frames += 1
        self.last_capture_t = t
        if frame.any():
            self.last_nonsilent_t = t
        ref = self._ref_frame
        ring = self.ref_ring
        backlog = ring.available
        ring.read_delayed(ref, self._ref_delay)
        if ring.resyncs != self._resyncs_seen:
            self._resyncs_seen = ring.resyncs
            self._echo_path_changed()
            self._loop.call_soon_threadsafe(self._log_resync, backlog, self._ref_delay, ring.resyncs)
        clean = self.frontend.process(frame, ref) if self.frontend is not None else frame
        if self._fe_far and self.frontend is not None:  # ERLE over far-end periods (metrics)
            f = self._erle_f32
            np.copyto(f, frame)
            self._erle_mic += float(np.dot(f, f))
            np.copyto(f, clean)
            self._erle_out += float(np.dot(f, f))
        gate = self.gate
        if gate is not None:
            req = self._gate_open
            if req is not None:
                self._gate_open = None
                gate.open(req)
            # while a paused reply is checked the service hears nothing (the gate stays
            # closed); a confirmed barge-in opens it with the user's audio from the onset
            # during a reply only a confirmed barge-in opens it (open()); elsewhere (a cue
            # playing while the user has the floor) the detector's word passes the user
            tentative = self._tentative
            near = self._near and not tentative and self.conv.state is not State.SPEAKING
            up, change = gate.process(clean, self._fe_far or tentative, near or self.conv.push_to_talk,
                                      self.near_end.noise_floor_dbfs)
            if change is not None:
                self._loop.call_soon_threadsafe(self._log_gate, change, self._near_end_stats(), t)
        else:
            up = clean
        if self._echo_q is not None:  # analysed by the echo worker, never on this thread
            self._echo_q.put(ref, frame)
        if self.recorder is not None:
            self.recorder.write(frame, ref, clean)
        if self.conv.muted:
            return  # the frame was captured (watchdog) but goes nowhere
        wake = self.wake
        if wake is not None:
            if self._wake_reset:
                self._wake_reset = False
                wake.reset()
            if self._wake_aware:
                wake.strict = self._reconverge_frames > 0  # reconverging: no low playback threshold
                fe = self.frontend
                # the canceller's output before the residual suppressor, which would also eat
                # the user's wake word in double talk (the path the wake bench measures)
                tap = fe.wake_tap if fe is not None and fe.wake_tap is not None else clean
                det = wake.process(tap, ref, t)
            else:
                det = wake.process(clean, t)
            if det is not None:
                self._loop.call_soon_threadsafe(self._on_wake, det.score, det.t)
        if self.conv.push_to_talk:
            # float32 dot product over the whole period, in a preallocated buffer
            f = self._cap_f32
            np.copyto(f, clean)
            if float(np.dot(f, f)) > VOICE_POWER * f.shape[0]:
                self._ptt_voiced_frames += 1
        if self.uplink_open:
            if self._up_resampler is None:
                self._up_resampler = soxr.ResampleStream(self.cfg.audio.capture_rate, PCM_RATE, 1,
                                                         dtype="int16")
            up = self._up_resampler.resample_chunk(up)
            self._up_parts.append(up)
            self._up_samples += up.shape[0]
            if self._up_samples >= self._up_block:
                block = np.concatenate(self._up_parts).tobytes()
                self._up_parts.clear()
                self._up_samples = 0
                self._loop.call_soon_threadsafe(self._queue_uplink, block)
        elif self._up_resampler is not None:
            self._up_resampler = None
            self._up_parts.clear()
            self._up_samples = 0

    def _log_resync(self, backlog: int, line: int, count: int) -> None:
        """The reference delay line slipped: the echo path moved for the canceller."""
        rate = self.cfg.audio.capture_rate
        log.debug("reference delay line resynced (%d so far): backlog %.1f ms against the line's %.1f ms",
                  count, backlog * 1000 / rate, line * 1000 / rate,
                  extra={"VOXBOX_EVENT": "reference_resync", "VOXBOX_COUNT": count})

    def _on_frontend_frame(self, frame: np.ndarray, ratio_db: float, far: bool) -> None:
        """Capture thread, once per front-end frame (16 ms): the near-end detector."""
        self._fe_far = far
        d = self.near_end
        near = d.push(frame, ratio_db, far)
        settling = self._reconverge_frames > 0
        if settling and far:
            self._reconverge_frames -= 1
        if near and not self._near and self.conv.state is State.SPEAKING and not self._tentative and not settling:
            self._loop.call_soon_threadsafe(self._on_near_end, time.monotonic(), self._near_end_stats())
        self._near = near
        check = self._check
        if self._check_start:
            self._check_start = False
            check.start()
        if check.active:
            verdict = check.push(d.vad_prob, d.level_dbfs, d.noise_floor_dbfs, far, ratio_db)
            if verdict is not None:
                self._loop.call_soon_threadsafe(self._on_verdict, verdict, self._near_end_stats(),
                                                check.spoken, check.judged)

    def _near_end_stats(self) -> dict[str, float]:
        """Capture thread: the near-end detector's latest statistics, for the journal."""
        d = self.near_end
        return {"vad": d.vad_prob, "ratio_db": d.ratio_db, "level_dbfs": d.level_dbfs,
                "floor_dbfs": d.noise_floor_dbfs}

    def _echo_worker(self) -> None:
        """Echo-delay worker thread: drains the periods the capture thread queued and runs
        the tracker (a GCC-PHAT over 2 s windows once a second: milliseconds of FFTs that
        must not delay the capture loop)."""
        pair = np.zeros((2, self.cap_period), dtype=np.int16)
        while not self._echo_stop.wait(0.05):
            while self._echo_q.get_into(pair):
                self._track_echo(pair[0], pair[1])

    def _track_echo(self, ref: np.ndarray, mic: np.ndarray) -> None:
        """Echo worker: feed the echo-delay tracker; move the reference delay line and
        retune the drift compensator when the aligner says so (see voxbox.dsp.align). The
        audio threads read the two results (an int and a float) without a lock."""
        tr = self.delay_tracker
        # a move of the line is an echo-path change for the canceller: one that is not
        # urgent waits for a pause of the far end (between replies), where it costs nothing
        self._ref_quiet = self._ref_quiet + 1 if not ref.any() else 0
        pending = self._pending_move
        if pending is not None and self._ref_quiet >= REF_MOVE_QUIET_PERIODS:
            self._pending_move = None
            self._move_line(*pending)
        est = tr.push(ref, mic)
        if est is None:
            return
        new = self.aligner.on_delay(est.delay_ms, self._ref_delay)
        if new is not None:
            new = max(new, self._ref_floor)
        if new is not None and new != self._ref_delay:
            if est.delay_ms >= 0 and self._ref_quiet < REF_MOVE_QUIET_PERIODS:
                self._pending_move = (new, est.delay_ms, est.erl_db)  # the reference leads: wait
            else:
                self._pending_move = None
                self._move_line(new, est.delay_ms, est.erl_db)
            return
        if self._drift_comp is not None:
            ppm = self.aligner.on_drift(tr.drift_ppm, tr.drift_stderr_ppm, self._drift_target_ppm)
            if ppm is not None:
                self._drift_target_ppm = ppm
                tr.reset_drift()
                self._loop.call_soon_threadsafe(self._log_drift, ppm)

    def _echo_path_changed(self) -> None:
        """The daemon changed the echo path the canceller sees (any thread): the near-end
        detector pauses no reply for the next ``RECONVERGE_FAR_MS`` of far-end signal."""
        if self.frontend is not None:
            self._reconverge_frames = int(RECONVERGE_FAR_MS * self.cfg.audio.capture_rate
                                          / 1000 / self.frontend.frame_size)

    def _move_line(self, new: int, delay_ms: float, erl_db: float) -> None:
        """Echo worker: set the reference delay line to ``new`` samples."""
        old = self._ref_delay
        if new == old:
            return
        self._ref_delay = new
        self._echo_path_changed()
        self.delay_tracker.reset()  # turn records show only estimates on the current line
        self._loop.call_soon_threadsafe(self._log_alignment, delay_ms, old, new, erl_db)

    def _log_alignment(self, delay_ms: float, old: int, new: int, erl_db: float) -> None:
        self.metrics.set_echo_delay_ms(delay_ms)
        self.metrics.set_erl_db(erl_db)
        rate = self.cfg.audio.capture_rate
        log.info("echo delay %.1f ms (reference lead wanted %.1f ms): reference delay %.1f -> %.1f ms; "
                 "echo return loss %.1f dB", delay_ms, self.cfg.frontend.reference_lead_ms,
                 old * 1000 / rate, new * 1000 / rate, erl_db,
                 extra={"VOXBOX_EVENT": "echo_delay", "VOXBOX_ECHO_DELAY_MS": round(delay_ms, 2),
                        "VOXBOX_REFERENCE_DELAY_MS": round(new * 1000 / rate, 2),
                        "VOXBOX_ERL_DB": round(erl_db, 1)})
        # the lead the canceller sees on the new line
        self._loop.create_task(self._save_echo_state(delay_ms - (new - old) * 1000 / rate, erl_db))

    def _log_drift(self, ppm: float) -> None:
        log.info("clock drift between capture and playback: compensating %+.1f ppm", ppm,
                 extra={"VOXBOX_EVENT": "clock_drift", "VOXBOX_DRIFT_PPM": round(ppm, 1)})
        last = self.delay_tracker.last if self.delay_tracker is not None else None
        self._loop.create_task(self._save_echo_state(getattr(last, "delay_ms", None),
                                                     getattr(last, "erl_db", None)))

    async def _save_echo_state(self, echo_ms: float | None, erl_db: float | None, force: bool = False) -> None:
        """Persist the echo path (reference delay, drift, ERL) for the next start: at most
        once a minute (and at stop), written off the event loop (an fsync on an SD card)."""
        now = time.monotonic()
        if self._echo_saving or (not force and now - self._echo_saved_at < 60.0):
            return
        from voxbox.dsp.echostate import EchoState, save_echo_state

        rate = self.cfg.audio.capture_rate
        prev = self._echo_state
        if echo_ms is None and prev is not None:
            echo_ms, erl_db = prev.echo_delay_ms, erl_db if erl_db is not None else prev.erl_db
        self._echo_saving = True
        try:
            st = EchoState.from_measurement(self._ref_delay * 1000 / rate, echo_ms, self._drift_target_ppm,
                                            erl_db, self._echo_devices)
            await asyncio.to_thread(save_echo_state, self._echo_state_path, st)
            self._echo_state = st
            self._echo_saved_at = now
        except (OSError, ValueError) as exc:
            log.error("cannot save the echo path in %s: %s", self._echo_state_path, exc,
                      extra={"VOXBOX_EVENT": "state_file"})
        finally:
            self._echo_saving = False

    # ------------------------------------------------------------------ playback thread
    def _playback_source(self) -> np.ndarray:
        # the pull time: a card paces the loop (a write returns when a period fits), so
        # this is when the period enters the device, a constant depth before it plays;
        # the jitter buffer's accelerate and its added latency are measured from it
        # (paced: a late wake-up and the catch-up pulls after it are not the device's time)
        now = time.monotonic()
        self._last_pull = self.jitter.pull(self._play_buf, self._pull_clock.next(now), now)
        self.volume.apply(self._play_buf)
        cue = self._cue
        if cue is not None:  # mix the earcon over whatever plays (whole-frame numpy)
            buf = self._play_buf
            k = min(buf.shape[0], cue.shape[0] - self._cue_pos)
            mixed = self._mix_i32[:k]
            np.add(buf[:k], cue[self._cue_pos:self._cue_pos + k], out=mixed, dtype=np.int32)
            np.clip(mixed, -32768, 32767, out=mixed)
            buf[:k] = mixed
            self._cue_pos += k
            if self._cue_pos >= cue.shape[0]:
                self._cue = None
        return self._play_buf

    def _playback_dropped(self, frames: int) -> None:
        """Playback thread: a barge-in dropped ``frames`` the device held, never played:
        the reference forgets them, so it keeps pairing with what the microphone hears."""
        a = self.cfg.audio
        self.ref_ring.unwrite(frames * a.capture_rate // a.playback_rate)

    def _playback_written(self, frame: np.ndarray, t: float) -> None:
        if self._ref_resampler is None:
            ref = frame
        else:
            y = self._ref_resampler.resample_chunk(frame.astype(np.float32))
            np.rint(y, out=y)
            np.clip(y, -32768, 32767, out=y)
            ref = y.astype(np.int16)
        comp = self._drift_comp
        if comp is not None:
            if comp.ppm != self._drift_target_ppm:
                comp.set_ppm(self._drift_target_ppm)
            ref = comp.process(ref)
        self.ref_ring.write(ref)
        res = self._last_pull
        if res.item_id is not None and res.item_id != self._playing_item:
            self._playing_item = res.item_id
            self._loop.call_soon_threadsafe(self._on_playback_started, res.item_id, t, res.epoch)
        if res.drained or res.underrun:
            if res.drained:
                self._playing_item = None
                self._loop.call_soon_threadsafe(self._on_playback_drained, t)
            else:
                self._loop.call_soon_threadsafe(self._on_underrun, self._playing_item, t, res.epoch)

    # ------------------------------------------------------------------------ event loop
    def _queue_uplink(self, block: bytes) -> None:
        if not self.uplink_open:
            return  # turn closed while the block was in flight: drop it
        self.turn_audio.feed(block)  # kept for a resend if the link goes now
        if not self._session_ready:
            return  # link down mid-turn: the block waits in turn_audio for the next session
        if self.conv.push_to_talk:
            self._ptt_samples += len(block) // 2
        try:
            self._uplink_q.put_nowait(block)
        except asyncio.QueueFull:
            log.warning("uplink queue full; dropping %d ms of audio", UPLINK_BLOCK_MS)

    def _on_near_end(self, t: float, stats: dict[str, float]) -> None:
        """The near-end detector heard the user over the reply: pause it, check the user
        with the speaker quiet (voxbox.duplex.interruption)."""
        self._tentative = True  # first: the capture thread must never see the state change alone
        acts = self.conv.near_end_speech(time.monotonic())
        if not acts:
            self._tentative = False
            return
        log.info("near-end speech over the reply: paused to check (%s)", _fmt_stats(stats),
                 extra={"VOXBOX_EVENT": "near_end", "VOXBOX_T": round(t, 4),
                        "VOXBOX_DEBUG": _fmt_stats(stats)})
        self._onset_t = t
        self._apply(acts)
        self._check_start = True

    def _on_verdict(self, verdict, stats: dict[str, float], spoken: int, judged: int) -> None:
        """The interruption check's verdict on a paused reply."""
        from voxbox.duplex.interruption import Verdict

        if not self._tentative:
            return  # the pause ended some other way meanwhile
        now = time.monotonic()
        log.info("interruption check: %s (%d of %d frames spoke with the speaker quiet; %s)", verdict,
                 spoken, judged, _fmt_stats(stats),
                 extra={"VOXBOX_EVENT": "barge_in_check", "VOXBOX_VERDICT": str(verdict),
                        "VOXBOX_DEBUG": _fmt_stats(stats)})
        self._tentative = False
        if verdict is Verdict.CONFIRMED:
            # the service hears the user from before the onset the detector saw
            rate = self.cfg.audio.capture_rate
            back_ms = (now - self._onset_t) * 1000 + self.cfg.barge_in.preroll_ms
            self._gate_open = int(back_ms * rate / 1000)
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
                voiced_s = self._ptt_voiced_frames * self.cfg.audio.period_ms / 1000
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
                self._wake_reset = True
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
                self._ptt_voiced_frames = 0
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
        if self._tentative and not self.conv.interruption_pending:
            self._tentative = False  # the paused reply ended some other way (a tap, a drop)
            if self._check is not None:
                self._check.cancel()
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
        self._drain_uplink()
        if a.commit or a.push_to_talk:  # through the queue: it must reach the service first
            self._uplink_q.put_nowait(_TURN_DETECTION_OFF)
        for c in chunks:
            self._uplink_q.put_nowait(c)
        if a.commit or a.push_to_talk:
            self._ptt_samples = samples
        if a.commit:
            self._uplink_q.put_nowait(_COMMIT)
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
        try:
            self._uplink_q.put_nowait(_COMMIT)
        except asyncio.QueueFull:
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
            self._cue_pos = 0
            self._cue = cue

    def _play_prompt(self, name: str) -> None:
        """A spoken prompt rendered at build time (voxbox/prompts/*.wav, tools/make_prompts.py)."""
        cue = self._prompts.get(name)
        if cue is None:
            log.error("prompt %s unavailable (see the start-up log)", name, extra={"VOXBOX_EVENT": "prompt"})
            return
        log.info("prompt %s", name, extra={"VOXBOX_EVENT": "prompt", "VOXBOX_PROMPT": name})
        self._cue_pos = 0
        self._cue = cue

    def _interrupt(self, a: Interrupt) -> None:
        was_paused = self.jitter.paused
        played = self.jitter.flush()
        last = self._last_pull.item_id
        if was_paused:
            last = None  # the pause already took back what the device held
        if self.playback is not None:
            # what the device still holds is discarded by drop(): it was never heard
            delay = self.playback.delay_samples()
            if delay and last in played:
                played[last] = max(0, played[last] - delay)
            self.playback.drop()
        self._playing_item = None
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
        self.uplink_open = self.conv.uplink_open and (self._session_ready or self.conv.holding)
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
    def _flush_session(self) -> None:
        if self.session is None or self._ws is None:
            return
        for msg in self.session.data_to_send():
            asyncio.ensure_future(self._send(msg))

    async def _send(self, msg: str) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send(msg)
        except Exception as exc:  # the receive loop notices the drop and reconnects
            log.debug("send failed: %s", exc)

    def _local_url(self) -> str:
        if self.server is None:
            # in broker mode the unit presents broker tokens, not its secret: accept any key
            self.server = self._start_local_server(None if self.cfg.broker.url else (self.api_key.value or None))
        return self.server.client_url(self.cfg.realtime.dialect)

    @property
    def _session_ready(self) -> bool:
        """The current session's configuration was acknowledged (``session.updated``)."""
        return self.session is not None and self.session.ready

    def _unprovisioned(self) -> bool:
        """No credential yet. In broker mode ``api_key`` holds the per-unit secret."""
        return not self.api_key.value and (self.cfg.realtime.url != "local" or bool(self.cfg.broker.url))

    def _credentials(self):
        """What to connect with: the API key as is, or a token broker (token per session);
        see :func:`voxbox.realtime.broker.credential_source`."""
        if self._keys is None:
            from voxbox.realtime.broker import credential_source

            self._keys = credential_source(self.cfg, self.api_key)
        return self._keys

    async def _wait_for_credential(self) -> None:
        """Unprovisioned: look for the credential every CREDENTIAL_POLL_S seconds (the
        first-boot service or an installer may deliver it while the unit runs)."""
        from voxbox.host.credentials import CredentialError
        from voxbox.host.sd import redact
        from voxbox.realtime.broker import load_connect_secret

        said = None  # the last problem logged: a credential that stays bad is logged once
        while self._unprovisioned():
            await asyncio.sleep(CREDENTIAL_POLL_S)
            try:
                key = load_connect_secret(self.cfg, required=False)
            except CredentialError as exc:
                if str(exc) != said:  # names the source, never the value
                    said = str(exc)
                    log.warning("%s; looking again every %.0f s", exc, CREDENTIAL_POLL_S,
                                extra={"VOXBOX_EVENT": "unprovisioned"})
                self.metrics.set_link("unprovisioned")
                continue
            if key.value:
                redact(key.value)
                self.api_key = key
                log.info("API key found (%s): connecting", key.source, extra={"VOXBOX_EVENT": "provisioned"})

    async def _link(self) -> None:
        """Keep one session open (a warm session while idle: the first word after the wake
        word costs no handshake). Reconnect decisions come from :class:`LinkSupervisor`:
        full-jitter backoff, a slow retry after fatal answers, immediate reconnect after
        our own rollover."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
        from websockets.frames import Close

        if self._unprovisioned():
            await self._wait_for_credential()
        rt = self.cfg.realtime
        sup = self.link
        from voxbox.realtime.broker import BrokerError

        keys = self._credentials()
        while not self._stop.is_set():
            url = build_url(rt, self._local_url() if rt.url == "local" else rt.url)
            try:
                key = await keys.token()
            except BrokerError as exc:
                delay = sup.failed(time.monotonic(), str(exc), exc.fatal)
                if exc.retry_after:
                    delay = max(delay, exc.retry_after)
                self._link_lost(str(exc), delay)
                if exc.fatal:
                    self._fatal(str(exc))
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
                continue
            headers = auth_headers(rt, key.value, url)
            self._link_host = urlsplit(url).hostname or "?"
            t_try = time.monotonic()
            try:
                # keepalive off: _pinger pings and the LinkSupervisor judges the pongs
                async with connect(url, additional_headers=headers, max_size=MAX_MESSAGE_BYTES,
                                   open_timeout=rt.connect_timeout_s, ping_interval=None,
                                   close_timeout=2, compression=None) as ws:
                    t_open = time.monotonic()
                    sup.connected(t_open)
                    self._ws = ws
                    try:
                        await self._serve(ws, sup.connects, t_open)
                        # the stream ended with a normal close (1000/1001): keep its code
                        raise ConnectionClosed(Close(ws.close_code or 1006, ws.close_reason or ""), None)
                    finally:
                        self._ws = None
                        self.session = None
                        self._show_state()
            except asyncio.CancelledError:
                raise
            except ConnectionClosed as exc:
                if sup.rolling:
                    delay = sup.ended_for_rollover()
                    self._drain_uplink()
                    log.info("session rolled over after %.0f s", time.monotonic() - t_try,
                             extra={"VOXBOX_EVENT": "rollover"})
                else:
                    cause = self._stall_cause or _close_cause(exc)
                    self._stall_cause = None
                    fatal = _fatal_close(exc) or self._fatal_code is not None
                    if fatal and self.cfg.broker.url and not keys.fresh:
                        keys.invalidate()  # a cached token refused: try a fresh one before giving up
                        fatal, self._fatal_code = False, None
                    if self._fatal_code:
                        cause = f"{self._fatal_code} ({cause})"
                    self._fatal_code = None
                    if self._expired:  # the service ended the session (limit): come back at once
                        self._expired = False
                        delay = sup.ended_by_service(time.monotonic(), cause)
                    else:
                        delay = sup.failed(time.monotonic(), cause, fatal)
                    self._link_lost(cause, delay)
                    if fatal:
                        self._fatal(cause)
            except InvalidStatus as exc:
                code = exc.response.status_code
                cause = f"HTTP {code} at handshake"
                fatal = code in (401, 403)
                if fatal and self.cfg.broker.url and not keys.fresh:
                    keys.invalidate()
                    fatal = False
                delay = sup.failed(time.monotonic(), cause, fatal)
                self._link_lost(cause, delay)
                if fatal:
                    self._fatal(cause)
            except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                delay = sup.failed(time.monotonic(), cause)
                self._link_lost(cause, delay)
            except Exception as exc:  # never strand the unit: log, back off, try again
                log.exception("link error", extra={"VOXBOX_EVENT": "link_down"})
                delay = sup.failed(time.monotonic(), f"{type(exc).__name__}: {exc}")
                self._link_lost(sup.cause, delay)
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass

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
            mic, out = self._erle_mic, self._erle_out
            if mic > 0 and out > 0:  # ERLE over the far-end periods since the last write, dB
                self._erle_mic = self._erle_out = 0.0
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

    def _fatal(self, cause: str) -> None:
        self.metrics.set_link("fatal")
        log.error("the service refused the unit: %s; next attempt in %.0f s", cause,
                  self.link.fatal_retry_s, extra={"VOXBOX_EVENT": "link_fatal", "VOXBOX_CAUSE": cause})
        self._apply(self.conv.fatal(time.monotonic(), cause))

    def _link_lost(self, cause: str, delay: float = 0.0) -> None:
        """One journal line per failed attempt or lost session: the cause, how many
        attempts have failed in a row, when the next one is."""
        self.stats["reconnects"] += 1
        self.metrics.set_link("down")
        sup = self.link
        log.warning("link lost: %s; %d failure(s) in a row; next attempt in %.1f s", cause,
                    sup.failures, delay,
                    extra={"VOXBOX_EVENT": "link_down", "VOXBOX_CAUSE": cause,
                           "VOXBOX_FAILURES": sup.failures, "VOXBOX_RETRY_S": round(delay, 2)})
        self.session = None
        self._drain_uplink()
        self._apply(self.conv.link_down(time.monotonic(), cause))

    def _drain_uplink(self) -> None:
        while not self._uplink_q.empty():
            self._uplink_q.get_nowait()

    async def _serve(self, ws, conn_no: int, t_open: float) -> None:
        session = RealtimeSession(self.rt_cfg, prefix=f"vx{conn_no}",
                                  tools=self.tools.declarations() if self.tools is not None else None)
        session.start()
        self.session = session
        self._expires_at = None
        self._drain_uplink()
        for msg in session.data_to_send():
            await ws.send(msg)
        sender = asyncio.create_task(self._uplink_sender(ws, session))
        pinger = asyncio.create_task(self._pinger(ws))
        deadline = asyncio.create_task(self._session_deadline(ws, session, t_open))
        try:
            async for message in ws:
                self.link.event(time.monotonic())
                try:
                    events = session.receive(message)
                except ProtocolError as exc:
                    self._rejected_event("(not an event)", str(exc))
                    continue
                for ev in events:
                    try:
                        self._on_session_event(ev, t_open)
                    except Exception as exc:  # one event never ends the session
                        log.exception("error handling %s", type(ev).__name__, extra={"VOXBOX_EVENT": "protocol"})
                        self._rejected_event(type(ev).__name__, f"{type(exc).__name__}: {exc}")
                self._flush_session()
        finally:
            sender.cancel()
            pinger.cancel()
            deadline.cancel()

    def _rejected_event(self, kind: str, detail: str) -> None:
        """A server event dropped (failed validation, or not an event at all): logged once
        per kind, then at most once per REJECT_LOG_EVERY_S with the count since."""
        now = time.monotonic()
        last, quiet = self._rejected.get(kind, (None, 0))
        if last is not None and now - last < REJECT_LOG_EVERY_S:
            self._rejected[kind] = (last, quiet + 1)
            return
        if len(self._rejected) >= 256 and kind not in self._rejected:
            self._rejected.clear()  # bounded: a server inventing event types forever
        self._rejected[kind] = (now, 0)
        more = f" ({quiet} more since the last report)" if quiet else ""
        log.warning("ignoring server event %s: %s%s", kind, detail, more,
                    extra={"VOXBOX_EVENT": "protocol", "VOXBOX_EVENT_TYPE": kind,
                           "VOXBOX_REJECTED_SINCE": quiet})

    async def _session_deadline(self, ws, session: RealtimeSession, t_open: float) -> None:
        """No ``session.created`` (or no ``session.updated`` after it) within
        ``realtime.connect_timeout_s`` of the handshake: the service is not serving this
        socket. Close it with one line naming the host and the wait; the link loop backs
        off and retries."""
        wait = self.cfg.realtime.connect_timeout_s
        await asyncio.sleep(wait)
        if session.ready:
            return
        host = self._link_host
        what = "session.updated" if session.session_id else "session.created"
        self._stall_cause = f"no {what} from {host} within {wait:g} s of the handshake"
        log.warning("%s; closing the socket", self._stall_cause,
                    extra={"VOXBOX_EVENT": "session_timeout", "VOXBOX_CAUSE": self._stall_cause})
        transport = getattr(ws, "transport", None)
        if transport is not None:
            transport.abort()

    async def _pinger(self, ws) -> None:
        """Liveness, at every moment: a ping every TURN_PING_S during a turn and every
        IDLE_PING_S otherwise (one outstanding at a time). The LinkSupervisor hears of each
        ping and pong and calls the link stalled when a ping goes unanswered, with no server
        event either, for ``realtime.stall_s`` (see :meth:`_supervise_link`): a dead socket
        is replaced in seconds during a turn, and a quiet idle hour is never a stall."""
        last = 0.0
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            every = TURN_PING_S if self.conv.state in UPLINK_STATES else IDLE_PING_S
            if now - last < every:
                continue
            last = now
            try:
                waiter = await ws.ping()
            except Exception:  # closed meanwhile: the receive loop handles it
                return
            self.link.ping_sent(now)
            try:
                await waiter
            except Exception:
                return
            self.link.pong(time.monotonic())

    async def _uplink_sender(self, ws, session: RealtimeSession) -> None:
        while True:
            block = await self._uplink_q.get()
            if block is _TURN_DETECTION_OFF:
                if session is self.session:
                    session.set_turn_detection(False)
                    for msg in session.data_to_send():
                        await ws.send(msg)
                continue
            if block is _COMMIT:
                if session is self.session:
                    if self._ptt_samples >= PCM_RATE // 10:  # commits under 100 ms are errors
                        session.commit()
                        session.create_response()
                    else:
                        log.info("push-to-talk too short (%d ms): nothing sent",
                                 self._ptt_samples * 1000 // PCM_RATE, extra={"VOXBOX_EVENT": "ptt_short"})
                        session.clear_input()
                        self._apply(self.conv.response_done(time.monotonic(), "empty"))
                    session.set_turn_detection(True)
                    for msg in session.data_to_send():
                        await ws.send(msg)
                continue
            if session is not self.session or not self.uplink_open:
                continue
            if self.turn.first_audio_sent is None:
                self.turn.first_audio_sent = time.monotonic()
                log.info("first audio sent to the service",
                         extra={"VOXBOX_EVENT": "uplink_start", "VOXBOX_TURN": self.conv.turn})
            session.append_audio(block)
            self.stats["uplink_samples"] += len(block) // 2
            for msg in session.data_to_send():
                await ws.send(msg)

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
        if isinstance(ev, SessionCreated):
            left = self.link.expires_in(ev.expires_at, time.time()) if ev.expires_at is not None else None
            self._expires_at = None if left is None else now + left
            if ev.expires_at is not None and left is None:
                log.warning("session.created expires_at %s is %.0f s from now by this unit's clock: ignored "
                            "(is the clock set?); rolling over by the dialect's period",
                            ev.expires_at, ev.expires_at - time.time(), extra={"VOXBOX_EVENT": "session"})
            log.info("session created%s", "" if left is None else f"; the service ends it in {left:.0f} s",
                     extra={"VOXBOX_EVENT": "session", "VOXBOX_SESSION_ID": ev.session_id,
                            **({} if left is None else {"VOXBOX_EXPIRES_IN_S": round(left)})})
        elif isinstance(ev, SessionReady):
            log.info("session ready in %d ms", (now - t_open) * 1000,
                     extra={"VOXBOX_EVENT": "session_ready", "VOXBOX_SESSION_ID": ev.session_id,
                            "VOXBOX_CONNECT_MS": int((now - t_open) * 1000)})
            down_since = self.link.down_since
            self.link.session_ready(now, self._expires_at)
            self.metrics.set_link("up")
            if down_since is not None:
                self.metrics.on_reconnect()
                log.info("link back: session ready %d ms after the link was lost (outage)",
                         (now - down_since) * 1000,
                         extra={"VOXBOX_EVENT": "reconnected",
                                "VOXBOX_RECONNECT_MS": int((now - down_since) * 1000)})
            self._replay_context()
            self._apply(conv.link_up(now))
        elif isinstance(ev, SpeechStarted):
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
        elif isinstance(ev, InvalidEvent):
            self._rejected_event(ev.type, f"field {ev.field}: {ev.detail}")
        elif isinstance(ev, ServerError):
            level = logging.ERROR if ev.fatal else logging.WARNING
            if ev.code == "response_cancel_not_active":
                level = logging.INFO
            log.log(level, "service error %s (type %s, in reply to %s%s): %s", ev.code or "(no code)",
                    ev.type or "(none)", ev.cause or "(no client event named)",
                    f" {ev.event_id}" if ev.event_id else "", ev.message or "(no message)",
                    extra={"VOXBOX_EVENT": "service_error", "VOXBOX_ERROR_CODE": ev.code,
                           "VOXBOX_CAUSE": ev.cause or ""})
            if ev.code == "session_expired":
                self._expired = True
            if ev.fatal:
                self._fatal_code = ev.code
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
        est = self.delay_tracker.last if self.delay_tracker is not None else None
        if est is not None:  # one attribute, replaced whole by the echo worker
            fields["VOXBOX_ECHO_DELAY_MS"] = round(est.delay_ms, 2)
            fields["VOXBOX_ERL_DB"] = round(est.erl_db, 1)
            fields["VOXBOX_DRIFT_PPM"] = round(self._drift_target_ppm, 1)
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
        ws = self._ws
        if ws is None or self.session is None or self.link.rolling:
            return
        idle = (self.conv.state is State.IDLE and not self.jitter.active and self._cue is None
                and self.session.response_id is None)
        if self.link.should_roll_over(now, idle):
            self.link.start_rollover()
            left = "" if self._expires_at is None else f", {self._expires_at - now:.0f} s before the service's expires_at"
            log.info("session is %.0f s old: rolling over to a fresh one between turns%s",
                     now - self.link.session_started, left, extra={"VOXBOX_EVENT": "rollover"})
            asyncio.ensure_future(ws.close(1000, "session rollover"))
            return
        if self.link.stalled(now):
            self._stall_cause = (f"stalled: a ping unanswered for {now - self.link.ping_out:.1f} s, "
                                 f"no server event either ({self.conv.state})")
            log.warning("%s; replacing the socket", self._stall_cause, extra={"VOXBOX_EVENT": "stall"})
            self.link.pong(now)  # once
            transport = getattr(ws, "transport", None)
            if transport is not None:
                transport.abort()

    def _audio_alive(self, now: float, within_s: float) -> bool:
        return self.capture_frames > 0 and now - self.last_capture_t < within_s

    def _init_reference_line(self) -> None:
        """Start the far-end delay line from what ALSA reports: the playback ring's fill
        (written, not yet played) plus one capture period (a frame is read a period after
        its first sample), plus ``frontend.reference_delay_ms`` for buffering ALSA cannot
        see (USB, Bluetooth, a rig's pipes). The echo-delay tracker then refines it."""
        a = self.cfg.audio
        st = self._echo_state
        if st is not None:
            line = max(self._ref_floor, round(st.reference_delay_ms * a.capture_rate / 1000))
            self._ref_delay = line
            log.info("reference delay line %.1f ms, drift %+.1f ppm: restored from %s (measured on these "
                     "devices; echo return loss %s dB)", line * 1000 / a.capture_rate, st.drift_ppm,
                     self._echo_state_path, "?" if st.erl_db is None else f"{st.erl_db:.1f}",
                     extra={"VOXBOX_EVENT": "echo_delay", "VOXBOX_REFERENCE_DELAY_MS":
                            round(line * 1000 / a.capture_rate, 2), "VOXBOX_RESTORED": 1})
            return
        play = self.playback.delay_samples() if self.playback is not None else 0
        play16 = play * a.capture_rate // a.playback_rate
        extra = a.capture_rate * self.cfg.frontend.reference_delay_ms // 1000
        line = max(self._ref_floor, play16 + self.cap_period + extra)
        self._ref_delay = line
        log.info("reference delay line %.1f ms = ALSA playback delay %.1f ms + capture period %.1f ms "
                 "+ reference_delay_ms %d", line * 1000 / a.capture_rate, play16 * 1000 / a.capture_rate,
                 self.cap_period * 1000 / a.capture_rate, self.cfg.frontend.reference_delay_ms,
                 extra={"VOXBOX_EVENT": "echo_delay", "VOXBOX_REFERENCE_DELAY_MS": round(line * 1000 / a.capture_rate, 2)})

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
                self._init_reference_line()
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
            for r in self.health.update(now, cap, play, self.last_nonsilent_t or None):
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
                "reconnects": d.stats["reconnects"]}

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


def _close_cause(exc) -> str:
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is not None:
        return f"closed by the service ({rcvd.code} {rcvd.reason})".strip()
    return "connection dropped"


def _fatal_close(exc) -> bool:
    rcvd = getattr(exc, "rcvd", None)
    return rcvd is not None and rcvd.code in FATAL_CLOSE_CODES
