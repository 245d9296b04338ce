"""The daemon: builds the parts, wires them together with callbacks, runs the asyncio loop.

Parts (each in its own module, each told what to report through callbacks):
- :class:`voxbox.service.audiopath.AudioPath`: the capture thread (ALSA read -> front end
  -> near-end detector and check -> uplink gate -> wake word -> 24 kHz uplink blocks) and
  the playback thread (jitter buffer -> volume -> cue -> ALSA write), run by
  :class:`voxbox.audio.alsa.CaptureLoop` / :class:`voxbox.audio.alsa.PlaybackLoop`;
- :class:`voxbox.service.echopath.EchoPath`: the far-end reference, its delay line, the
  echo-delay worker thread, drift compensation, the persisted echo state;
- :class:`voxbox.realtime.client.RealtimeLink`: the WebSocket session, reconnects,
  liveness, rollover;
- :func:`voxbox.gpio.board.build_board`: the LED and the button (gpiozero's own threads);
- :class:`voxbox.service.health.HealthMonitor`: the watchdog, the devices the audio loops
  wait for, a deaf microphone; LED and ``STATUS=``.

What the unit does about their reports is :class:`voxbox.service.controller.Controller`
(this class derives from it). Data flows one way: capture -> front end -> wake/uplink, and
downlink -> jitter buffer -> playback -> reference. The audio threads never wait on the
event loop or the network.

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
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soxr

from voxbox import __version__
from voxbox.audio.jitter import JitterBuffer
from voxbox.config import Config, ConfigError
from voxbox.conversation.machine import (
    Conversation,
    State,
)
from voxbox.gpio.gestures import ButtonGestures
from voxbox.host import sd
from voxbox.host.credentials import Secret
from voxbox.host.sd import Notifier
from voxbox.realtime.dialects import PCM_RATE
from voxbox.realtime.turnaudio import TurnAudio
from voxbox.service.audiopath import AudioCallbacks, AudioPath
from voxbox.service.controller import TURN_AUDIO_MAX_S, Controller, ToolContext, TurnTimes, added_fields
from voxbox.service.health import HealthMonitor
from voxbox.service.mutestate import load_muted

log = logging.getLogger("voxbox.service.daemon")


HEALTH_TICK_S = 0.5
"""How often the audio devices are judged (voxbox.service.health) and the LED/STATUS= refreshed (s)."""



class Daemon(Controller):
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
                             on_path_changed=self._echo_path_changed,
                             on_measured=lambda: self.audio.line_measured(), on_moved=self._line_moved)
        self._startup_cue_again = False  # the start-up cue was played again after a line move
        self._last_rejected: float | None = None  # when the last false interruption was rejected
        self.t_start = time.monotonic()
        from voxbox.audio.volume import Volume

        self.volume = Volume(self._state_path.parent, mixer=a.mixer or None, mixer_device=a.mixer_device,
                             default_percent=a.volume)
        #: what the capture and playback threads do with each period (voxbox.service.audiopath)
        self.audio = AudioPath(cfg, self.jitter, self.volume, self.echo, AudioCallbacks(
            on_wake=self._on_wake, on_uplink_block=self._queue_uplink, on_near_end=self._on_near_end,
            on_verdict=self._on_verdict, on_gate_change=self._log_gate,
            on_playback_started=self._on_playback_started, on_playback_drained=self._on_playback_drained,
            on_underrun=self._on_underrun, on_loudspeaker=self._loudspeaker_changed),
            local_barge_in=self.local_barge_in)
        self.tools = None
        self.tool_runner = None
        if cfg.tools.enabled:
            from voxbox.conversation.tools import ToolRegistry, ToolRunner

            self.tools = ToolRegistry.default(cfg.tools.allow or None)
            self.tool_runner = ToolRunner(self.tools, ToolContext(self))
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
        files are written off the loop. Replay with ``voxbox dsp`` (``--events`` the
        sidecar: the canceller's retrainings, at the samples where they came)."""
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
                    # the echo canceller's retrainings, replayed by `voxbox dsp --events`
                    "events": [list(e) for e in rec.events],
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
        self.echo.restore()
        # a cold canceller: the first second of far-end signal converges it; with the delay
        # line not measured on these devices, until the tracker has measured it
        self.audio.echo_path_changed(cold=self.echo.tracker is not None and self.echo.state is None)
        self.audio.restore_loudspeaker(self.echo.loudspeaker)
        self._build_gpio()
        if load_muted(self._state_path):
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
                                     wait_for_device=True,
                                     on_xrun=lambda kind: self._device_gap("playback", kind))
        self.capture = CaptureLoop(cfg.audio.capture_device, self.audio.on_capture_frame,
                                   rate=cfg.audio.capture_rate, period=self.cap_period,
                                   periods=cfg.audio.periods, wait_for_device=True,
                                   on_xrun=lambda kind: self._device_gap("capture", kind))
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
                            "VOXBOX_JITTER_UNDERRUNS": self.jitter.underruns, **added_fields(added)})
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
        from voxbox.gpio.board import build_board

        self.led, self.button = build_board(self.cfg.gpio, self._loop, self._button_edge, self.mock_gpio_socket)

    def _device_gap(self, stream: str, kind: str) -> None:
        """A playback underrun or a capture overrun (that stream's audio thread): the echo
        moved against the reference by up to the gap; the echo path measures afresh (see
        EchoPath.device_gap). One journal line per gap."""
        self.echo.device_gap()
        self._loop.call_soon_threadsafe(self._log_device_gap, stream, kind)

    def _log_device_gap(self, stream: str, kind: str) -> None:
        device = self.cfg.audio.playback_device if stream == "playback" else self.cfg.audio.capture_device
        log.warning("%s %s on %r: the echo path is measured afresh", stream, kind, device,
                    extra={"VOXBOX_EVENT": "xrun", "VOXBOX_DEVICE_KIND": stream, "VOXBOX_CAUSE": kind,
                           "VOXBOX_DEVICE": device})

    def _echo_path_changed(self) -> None:
        """The echo path the canceller sees changed (any thread; see EchoPath)."""
        self.audio.echo_path_changed()

    def _line_moved(self, old_ms: float, new_ms: float) -> None:
        """Event loop: the echo-delay tracker moved the reference line. Before the first
        turn since start, the canceller learned the start-up cue on the old line: it is
        retrained on it at the new line at once (AudioPath, CaptureFrontEnd.realign), and
        the cue plays once more, while the unit is idle and nothing else plays, for more
        of the same (retrained again once it has played), so the first reply is
        cancelled like later ones. Measured on the closed loop's first replies after boot:
        all 4 wake-word misses of 20 boots were boots whose line moved after the cue."""
        if (self._startup_cue_again or self.conv.turn != 0 or self.conv.state is not State.IDLE
                or self.jitter.active or self.audio.cue is not None or self._earcons.get("startup") is None):
            return
        self._startup_cue_again = True
        log.info("reference line moved %.1f -> %.1f ms before the first turn: the start-up cue again, "
                 "so the echo canceller learns the new alignment", old_ms, new_ms,
                 extra={"VOXBOX_EVENT": "earcon", "VOXBOX_EARCON": "startup", "VOXBOX_CAUSE": "line_moved"})
        self._play_earcon("startup")

    def _loudspeaker_changed(self, clip: float, knee: float, last) -> None:
        """The loudspeaker model settled on a new saturation (event loop): one journal
        line, and the echo path saves it for the next start."""
        gain = None if last is None else round(last[2] - last[1], 1)
        if math.isinf(clip):
            log.info("loudspeaker model: linear", extra={"VOXBOX_EVENT": "loudspeaker_model"})
        else:
            log.info("loudspeaker model: saturates at %.3f of full scale (%.1f dBFS), knee %g; "
                     "explains %s dB more of the microphone", clip, 20 * math.log10(clip), knee, gain,
                     extra={"VOXBOX_EVENT": "loudspeaker_model", "VOXBOX_LOUDSPEAKER_CLIP": round(clip, 4),
                            "VOXBOX_LOUDSPEAKER_KNEE": knee})
        self.echo.note_loudspeaker(clip, knee)

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
