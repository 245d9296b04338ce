"""``voxbox demo``: the whole appliance on real speech, no sound card, no cloud account.

Real espeak-ng speech ("Hey Jarvis" then a question, over pink background noise) is fed in
real time into an ALSA ``file`` capture device; the real daemon process (pyalsaaudio,
Speex, openWakeWord, websockets, mock GPIO pins, sd_notify) hears the wake word, streams
the question to the local Realtime server, which answers by playing the user's own
utterance back ("parrot"); the daemon plays the reply through an ALSA ``file`` playback
device, whose output is mixed back into the microphone (a closed acoustic loop, so the
echo canceller has work to do). The demo writes what the speaker played to a WAV and
prints the timeline.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from voxbox.audio.wavfile import write_wav as _write_wav
from voxbox.sim.harness import DaemonHarness


def _first(h: DaemonHarness, event: str, after: float = 0.0) -> dict | None:
    return next((r for r in h.events(event) if r.get("mono", 0) >= after), None)


def run_demo(out_dir: Path = Path("out/demo"), dialect: str = "openai-ga", echo_db: float | None = -26.0,
             timeout_s: float = 60.0) -> int:
    from voxbox.audio.speech import demo_utterance

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print("voxbox demo: rendering speech (espeak-ng) …", flush=True)
    signal, seg = demo_utterance()
    with tempfile.TemporaryDirectory(prefix="voxbox-demo-") as tmp:
        with DaemonHarness(Path(tmp), dialect=dialect, echo_db=echo_db) as h:
            print(f"voxbox demo: starting the daemon ({dialect}, local server, ALSA file devices, "
                  f"echo {'off' if echo_db is None else f'{echo_db:+.0f} dB'}) …", flush=True)
            t_launch = time.monotonic()
            h.start(wait_ready=True)
            t_ready = h.wait_notify("READY=1")
            h.mic.play(signal)
            h.mic.wait_signal(timeout=len(signal) / 16000 + 5)
            t_sig = h.mic.signal_starts[-1]
            end = h.wait_event("playback_end", timeout=timeout_s, after=t_sig)
            turn = h.wait_event("turn", timeout=5, after=t_sig)
            time.sleep(0.3)
            h.stop_daemon()
            spk = h.speaker
            played, times = spk.snapshot()  # times: consume time of every sample received
            _write_wav(out_dir / "speaker.wav", played, spk.rate)
            t_first_play = spk.first_nonsilent_time()
            reply_path = out_dir / "reply.wav"
            start = stop = 0
            if t_first_play is not None:
                start = max(0, int(np.searchsorted(times, t_first_play)) - spk.rate // 10)
                stop = min(len(played), int(np.searchsorted(times, end["VOXBOX_T"] + 0.3)))
                _write_wav(reply_path, played[start:stop], spk.rate)
            _write_wav(out_dir / "mic-input.wav", signal, 16000)
            (out_dir / "daemon.log").write_text("\n".join(h.stderr_text) + "\n")
            watchdogs = sum(1 for _, m in h.notify if m == "WATCHDOG=1")
            rows = _timeline(h, t_sig, seg, t_first_play, end, turn)
            silence_ms = h.config_sections()["realtime"].get("turn_detection", {}).get("silence_duration_ms", 500)
    print()
    print(f"Timeline (ms from the start of the user's utterance; daemon ready {1000 * (t_ready - t_launch):.0f} ms after launch)")
    for label, ms, note in rows:
        print(f"  {'' if ms is None else f'{ms:8.0f}'} {label:<38} {note}")
    print()
    lat = {k[7:].lower(): v for k, v in turn.items() if k.startswith("VOXBOX_") and k.endswith("_MS")}
    print("Device latencies (ms): " + ", ".join(f"{k}={v}" for k, v in lat.items()))
    if t_first_play is not None:
        heard = (t_first_play - (t_sig + seg["question_end"])) * 1000
        print(f"User-perceived response time (end of the question → first reply sample at the speaker): "
              f"{heard:.0f} ms, of which {silence_ms} ms is the server VAD's end-of-speech silence")
    print(f"Reply written to {reply_path} ({(stop - start) / spk.rate:.2f} s); full speaker stream in "
          f"{out_dir / 'speaker.wav'}; sd_notify: READY=1, {watchdogs} × WATCHDOG=1")
    return 0


def _timeline(h: DaemonHarness, t_sig: float, seg: dict, t_first_play, end: dict, turn: dict):
    def ms(t):
        return None if t is None else (t - t_sig) * 1000

    wake = _first(h, "wake", t_sig)
    up = _first(h, "uplink_start", t_sig)
    vad_start = _first(h, "speech_started", t_sig)
    vad_stop = _first(h, "speech_stopped", t_sig)
    resp = _first(h, "response_start", t_sig)
    rx = _first(h, "reply_audio_start", t_sig)
    rows = [
        ("user says 'Hey Jarvis'", ms(t_sig + seg["wake_start"]), f"until {ms(t_sig + seg['wake_end']):.0f}"),
        ("wake word detected", ms(wake and wake["VOXBOX_T"]),
         f"score {wake['VOXBOX_WAKE_SCORE']:.3f}" if wake else "NOT DETECTED"),
        ("first audio sent to the service", ms(up and up["mono"]), "(no audio before the wake word)"),
        ("user asks the question", ms(t_sig + seg["question_start"]), f"until {ms(t_sig + seg['question_end']):.0f}"),
        ("service: speech started", ms(vad_start and vad_start["mono"]), ""),
        ("service: end of speech (server VAD)", ms(vad_stop and vad_stop["mono"]), ""),
        ("service: response created", ms(resp and resp["mono"]), ""),
        ("first reply audio received", ms(rx and rx["mono"]), ""),
        ("first reply audio at the speaker", ms(t_first_play), ""),
        ("playback end", ms(end["VOXBOX_T"]), ""),
    ]
    states = " → ".join(h.states())
    rows.append(("states", None, states))
    rows.append(("LED", None, " → ".join(h.led_patterns())))
    return rows
