"""End to end: the real ``voxbox`` process on ALSA file devices paced in real time, real
openWakeWord, real Speex, real websockets to the local server, mock GPIO pins, a
``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import synth
from probes import probe_children
from voxbox.audio.speech import demo_utterance
from voxbox.sim.harness import DaemonHarness, write_config

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]

question = partial(synth.speech, lead_s=0.3, tail_s=1.2, seed=1)  # this file's lead, tail and noise seed

BIT_EXACT = {"audio": {"jitter_fixed_ms": 200}}


def reply_samples_at_speaker(h: DaemonHarness, item_audio: bytes) -> int:
    """How many samples of the item's audio reached the speaker, bit-exact, in order."""
    ref = np.frombuffer(item_audio, dtype="<i2")
    played = h.speaker.samples
    probe = 480
    nz = np.flatnonzero(ref)
    assert nz.size, "item audio is all zeros"
    s0 = int(nz[0])
    head = ref[s0:s0 + probe]
    # find where the item's first non-zero block starts in the speaker stream
    windows = np.lib.stride_tricks.sliding_window_view(played, head.size)
    hits = np.flatnonzero((windows == head).all(axis=1))
    assert hits.size, "reply audio not found in the speaker stream"
    start = int(hits[0]) - s0
    n = min(ref.size, played.size - start)
    same = played[start:start + n] == ref[:n]
    mismatch = np.flatnonzero(~same)
    return int(mismatch[0]) if mismatch.size else n


@pytest.mark.parametrize("dialect", ["openai-ga", "openai-beta", "azure-voicelive"])
def test_wake_word_turn_end_to_end(tmp_path, dialect):
    signal, seg = demo_utterance()
    # a fixed 200 ms jitter buffer: the reply is compared with what the server sent sample for
    # sample, so an underrun fade (legitimate when the loaded test machine delays a chunk)
    # must not happen here; the adaptive buffer has its own tests and benchmarks
    with DaemonHarness(tmp_path, dialect=dialect, echo_db=-30, config=BIT_EXACT) as h:
        h.start()
        server = h.server.record
        conn = server.connection(0)
        assert conn.dialect is not None
        time.sleep(1.0)  # idle with background noise: nothing may leave the unit
        assert server.uplink_samples_total == 0
        h.mic.play(signal)
        t_sig = h.mic.signal_starts[-1] if h.mic.signal_starts else time.monotonic()
        wake = h.wait_event("wake", timeout=15)
        end = h.wait_event("playback_end", timeout=40)
        time.sleep(0.4)  # the device still holds ~130 ms written but not yet played
        t_sig = h.mic.signal_starts[-1]
        # the wake word fired during/just after "Hey Jarvis", on the cleaned signal
        assert t_sig + seg["wake_start"] < wake["VOXBOX_T"] < t_sig + seg["wake_end"] + 1.0
        # no audio before the wake word: the first append reached the server after it
        conn = server.connection(-1)
        appends = [e for e in conn.client_events if e["type"] == "input_audio_buffer.append"]
        assert appends, "no audio was streamed"
        assert appends[0]["t"] >= wake["mono"]
        assert conn.client_types()[0] == "session.update"
        # a full turn: the server answered and the reply reached the speaker bit-exact
        items = [e for e in conn.server_events if e["type"].endswith("output_item.added")]
        assert items
        item_id = items[-1]["item"]["id"]
        audio = h.server.record.item_audio(item_id)
        assert len(audio) > 24000  # > 0.5 s of reply
        assert reply_samples_at_speaker(h, audio) == len(audio) // 2
        assert h.states()[:5] == ["idle", "listening", "thinking", "speaking", "follow_up"]
        assert h.led_patterns()[:6] == ["offline", "idle", "listening", "thinking", "speaking", "follow_up"]
        # systemd saw every step
        h.wait_state("idle", timeout=10, after=end["mono"])
        msgs = [m for _, m in h.notify]
        assert "READY=1" in msgs
        assert msgs.count("WATCHDOG=1") >= 2
        statuses = [m for m in msgs if m.startswith("STATUS=")]
        assert any(s.startswith("STATUS=speaking") for s in statuses)
        turn = h.wait_event("turn", timeout=5)
        assert turn["VOXBOX_LATENCY_MS"] > 0
        assert h.stop_daemon() == 0


def test_tap_barge_in_truncates_to_the_audio_played(tmp_path):
    with DaemonHarness(tmp_path, echo_db=None, config=BIT_EXACT) as h:
        h.start()
        h.press()  # tap: start listening without the wake word
        h.wait_state("listening", timeout=5)
        h.mic.play(question("Please tell me a long story about the sea, the wind and the ships "
                            "that sail across the ocean at night."))
        h.wait_event("playback_start", timeout=30)
        time.sleep(1.5)
        h.press()  # tap during the reply: barge-in
        barge = h.wait_event("barge_in", timeout=5)
        assert barge["VOXBOX_CAUSE"] == "button tap"
        rec = h.server.record
        assert rec.wait_for(lambda conns: any(c.truncates for c in conns), timeout=5)
        (tr,) = rec.truncates
        time.sleep(0.5)  # let the speaker drain what was already in the device
        audio = rec.item_audio(tr["item_id"])
        played = reply_samples_at_speaker(h, audio)
        played_ms = played * 1000 / 24000
        print(f"barge-in: truncate audio_end_ms={tr['audio_end_ms']}, reached the speaker "
              f"{played_ms:.1f} ms, difference {tr['audio_end_ms'] - played_ms:+.1f} ms")
        assert abs(tr["audio_end_ms"] - played_ms) <= 20, (tr, played_ms)
        assert 1000 < played_ms < len(audio) / 48  # stopped mid-reply
        # playback stopped at once: nothing after the truncation point reached the speaker
        conn = rec.connection(-1)
        assert "response.cancel" in conn.client_types()
        assert h.stop_daemon() == 0


def test_reconnect_after_drop(tmp_path):
    with DaemonHarness(tmp_path, echo_db=None) as h:
        h.start()
        rec = h.server.record
        first = rec.connection(0)
        assert first.client_types()[0] == "session.update"
        t_drop = time.monotonic()
        assert h.server.drop_all_connections() >= 1
        h.wait_event("link_down", timeout=5, after=t_drop)
        ready = h.wait_event("session_ready", timeout=10, after=t_drop)
        reconnect_ms = (ready["mono"] - t_drop) * 1000
        print(f"reconnect: session ready {reconnect_ms:.0f} ms after the drop")
        assert reconnect_ms < 3000
        conns = rec.connections()
        assert len(conns) == 2 and conns[1].client_types()[0] == "session.update"
        # the new session carries the same configuration
        upd0 = next(e for e in conns[0].client_events if e["type"] == "session.update")
        upd1 = next(e for e in conns[1].client_events if e["type"] == "session.update")
        assert upd0["session"] == upd1["session"]
        # and handles the next turn
        h.press()
        h.wait_state("listening", timeout=5, after=ready["mono"])
        h.mic.play(question("What time is it?"))
        h.wait_event("playback_end", timeout=30, after=ready["mono"])
        assert rec.connection(-1).uplink_samples > 0
        assert h.stop_daemon() == 0


def _run_daemon(tmp_path: Path, config: dict, env: dict | None = None) -> subprocess.CompletedProcess:
    cfg = tmp_path / "config.toml"
    write_config(cfg, config)
    penv = {k: v for k, v in os.environ.items() if k not in ("VOXBOX_API_KEY", "CREDENTIALS_DIRECTORY")}
    penv.update(env or {})
    return subprocess.run([sys.executable, "-m", "voxbox", "run", "--config", str(cfg)],
                          env=penv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("config,env,expect", [
    ({"audio": {"capture_devcie": "x"}}, {"VOXBOX_API_KEY": "k"}, "audio.capture_devcie: unknown key"),
    ({"wake": {"threshold": "high"}}, {"VOXBOX_API_KEY": "k"}, "wake.threshold"),
    ({"realtime": {"dialect": "azure"}}, {"VOXBOX_API_KEY": "k"}, "allowed values"),
], ids=["unknown-key", "wrong-type", "bad-dialect"])
def test_bad_config_exits_naming_the_problem(tmp_path, config, env, expect):
    """Neither a missing audio device nor a missing credential is one of these: the
    daemon waits for the device (test_missing_audio_devices_keep_the_unit_running_until_they_appear)
    and runs ``unprovisioned`` without a credential; ``voxbox check-config`` names both
    (test_check_config_names_what_cannot_be_used)."""
    res = _run_daemon(tmp_path, config, env)
    assert res.returncode == 78, res.stderr
    assert expect in res.stderr
    assert "starting" not in res.stderr  # exited before touching audio


@pytest.mark.parametrize("config,env,expect", [
    ({"audio": {"capture_device": "no_such_pcm"}}, {"VOXBOX_API_KEY": "sk-check-config-0123456789"},
     ["capture device 'no_such_pcm'", "Unknown PCM no_such_pcm", "available capture PCMs"]),
    ({"gpio": {"pin_factory": "mock"}}, {}, ["VOXBOX_API_KEY"]),
], ids=["missing-device", "missing-credential"])
def test_check_config_names_what_cannot_be_used(tmp_path, config, env, expect):
    """``voxbox check-config`` (the installer, a person at the unit) says clearly that a
    device name cannot be opened (and what ALSA does know), or that the credential is
    missing: exit 78."""
    cfg = tmp_path / "config.toml"
    write_config(cfg, config)
    penv = {k: v for k, v in os.environ.items() if k not in ("VOXBOX_API_KEY", "CREDENTIALS_DIRECTORY")}
    penv.update(env)
    res = subprocess.run([sys.executable, "-m", "voxbox", "check-config", "--config", str(cfg)],
                         env=penv, capture_output=True, text=True, timeout=60)
    print(res.stderr.strip())
    assert res.returncode == 78
    for words in expect:
        assert words in res.stderr


def test_api_key_never_logged(tmp_path):
    key = "sk-secret-key-that-must-not-leak-42"
    with DaemonHarness(tmp_path, echo_db=None, api_key=key) as h:
        h.start()
        h.press()
        h.mic.play(question("Hello there."))
        h.wait_event("playback_end", timeout=30)
        h.stop_daemon()
        assert key not in "\n".join(h.stderr_text)
        assert key not in "\n".join(m for _, m in h.notify)


# systemd 252 (Bookworm) does not know the back-off keys of systemd >= 254: verify warns, once
# per key and pass, and still exits 0; nothing else may be reported
_UNKNOWN_ON_252 = ("RestartSteps", "RestartMaxDelaySec")


def _verify_and_security(tmp_path):
    """``systemd-analyze verify`` (CompletedProcess) and the overall exposure figure of
    ``systemd-analyze security --offline=true`` for the repository's unit."""
    unit = (REPO / "systemd" / "voxbox.service").read_text()
    exe = Path(sys.executable).parent / "voxbox"
    (tmp_path / "voxbox.service").write_text(unit.replace("/opt/voxbox/venv/bin/voxbox", str(exe)))
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "voxbox.service")],
                         capture_output=True, text=True)
    sec = subprocess.run(["systemd-analyze", "security", "--offline=true", str(tmp_path / "voxbox.service")],
                         capture_output=True, text=True)
    line = [l for l in sec.stdout.splitlines() if "Overall exposure level" in l][0]
    return res, float(line.split(":")[1].split()[0]), line


def test_unit_file_verifies_and_is_hardened(tmp_path):
    unit = (REPO / "systemd" / "voxbox.service").read_text()
    res, score, line = _verify_and_security(tmp_path)
    assert res.returncode == 0, res.stderr
    other = [l for l in res.stderr.splitlines()
             if not any(f"Unknown key '{k}' in section [Service], ignoring." in l for k in _UNKNOWN_ON_252)]
    assert other == [], res.stderr
    print(f"systemd-analyze security: {line}")
    assert score <= 1.5, line  # 1.5 with the empty IPAddressDeny= too: unchanged
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "LoadCredential=" in unit


def test_unit_file_has_no_empty_ip_address_list():
    """An empty ``IPAddressDeny=`` only resets the list: it filtered nothing. The unit needs
    any address (the service, the broker, the resolver), so it has no list at all."""
    keys = _unit_values((REPO / "systemd" / "voxbox.service").read_text())
    for key in ("IPAddressDeny", "IPAddressAllow"):
        assert all(v.strip() for v in keys.get(key, [])), (key, keys.get(key))


def _unit_values(text: str) -> dict[str, list[str]]:
    """``{key: [values]}`` of a unit file as systemd reads it: a line ending in a backslash
    goes on with the next one (the backslash becomes a space), comments dropped."""
    text = text.replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def _unit_argv(value: str) -> list[str]:
    """The argv systemd runs for an ``Exec*=`` value of this unit (no "-" prefix, quotes
    removed, ``%%`` and ``$$`` unescaped; the unit uses no other specifier or variable)."""
    import shlex

    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(value.lstrip("-"))]


def test_unit_file_never_gives_up_restarting():
    """Any crash loop: no start limit (systemd would otherwise leave the unit failed for good),
    ``Restart=always`` except for EX_CONFIG, and a back-off schedule of 2, 4, 8, 16, 32, 32…
    s from systemd's own ``RestartSteps=``/``RestartMaxDelaySec=`` (systemd >= 254)."""
    v = _unit_values((REPO / "systemd" / "voxbox.service").read_text())
    assert v["StartLimitIntervalSec"] == ["0"] and "StartLimitBurst" not in v
    assert v["Restart"] == ["always"] and v["RestartPreventExitStatus"] == ["78"]
    base, steps, top = float(v["RestartSec"][0]), int(v["RestartSteps"][0]), float(v["RestartMaxDelaySec"][0])

    def systemd_delay(k: int) -> float:  # systemd >= 254, service_restart_usec_next(), restart k = 1, 2…
        if k <= 1:
            return base
        if k > steps:
            return top
        return base * (top / base) ** ((k - 1) / steps)

    schedule = [round(systemd_delay(k), 6) for k in range(1, 9)]
    print("systemd >= 254 restart delays, s:", schedule)
    assert schedule == [2, 4, 8, 16, 32, 32, 32, 32]
    assert v["RuntimeDirectory"] == ["voxbox"] and v["RuntimeDirectoryPreserve"] == ["restart"]


class _BackoffRig:
    """Runs the unit's ExecStartPre=/ExecStopPost= back-off scripts under /bin/sh as systemd
    would (``$RUNTIME_DIRECTORY``, ``$SERVICE_RESULT``), with ``date`` reading a fake clock
    and ``sleep`` advancing it (and recording the wait) instead of waiting."""

    def __init__(self, tmp_path: Path):
        v = _unit_values((REPO / "systemd" / "voxbox.service").read_text())
        (pre,), (post,) = v["ExecStartPre"], v["ExecStopPost"]
        assert pre.startswith("-") and post.startswith("-")  # a failing script never blocks a start
        self.pre, self.post = _unit_argv(pre), _unit_argv(post)
        assert self.pre[:2] == ["/bin/sh", "-c"] and self.post[:2] == ["/bin/sh", "-c"]
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        self.clock, self.sleeps = tmp_path / "clock", tmp_path / "sleeps"
        self.clock.write_text("1700000000\n")
        self.sleeps.write_text("")
        (bin_dir / "date").write_text(f'#!/bin/sh\ncat "{self.clock}"\n')
        (bin_dir / "sleep").write_text(f'#!/bin/sh\necho "$1" >> "{self.sleeps}"\n'
                                       f'echo $(( $(cat "{self.clock}") + $1 )) > "{self.clock}"\n')
        for f in bin_dir.iterdir():
            f.chmod(0o755)
        self.env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "RUNTIME_DIRECTORY": str(self.run_dir)}

    def advance(self, s: int) -> None:
        self.clock.write_text(f"{int(self.clock.read_text()) + s}\n")

    def now(self) -> int:
        return int(self.clock.read_text())

    def _sh(self, argv, **env):
        res = subprocess.run(argv, env={**self.env, **env}, capture_output=True, text=True, timeout=10)
        assert res.returncode == 0 and "Illegal" not in res.stderr and "not found" not in res.stderr, res
        return res

    def start(self) -> int:
        """ExecStartPre=; returns how long it slept (s)."""
        before = self.now()
        self._sh(self.pre)
        return self.now() - before

    def stop(self, result: str) -> None:
        self._sh(self.post, SERVICE_RESULT=result)


@pytest.mark.parametrize("systemd", [252, 257])
def test_crash_loop_backs_off_on_bookworm_and_trixie(tmp_path, systemd):
    """A daemon that dies 3 s after every start: the time from its death to the next start
    (systemd's RestartSec= wait, or RestartSteps= on systemd >= 254, plus what the
    ExecStartPre= sleeps) goes 2, 4, 8, 16, 32, 32, 32 s on both systemd versions; a run of
    10 minutes starts the schedule again; a clean stop forgets it."""
    rig = _BackoffRig(tmp_path)
    steps = [2, 4, 8, 16, 32, 32, 32, 32]

    def systemd_wait(k: int) -> int:  # what systemd itself waits before the k-th restart
        return 2 if systemd == 252 else steps[k - 1]

    assert rig.start() == 0  # first start: nothing to wait for
    waits, slept = [], []
    for k in range(1, 8):
        rig.advance(3)  # runs 3 s, crashes
        rig.stop("exit-code")
        rig.advance(systemd_wait(k))
        s = rig.start()
        slept.append(s)
        waits.append(systemd_wait(k) + s)
    print(f"systemd {systemd}: waits {waits} s, of which the ExecStartPre= slept {slept}")
    assert waits == [2, 4, 8, 16, 32, 32, 32]
    if systemd >= 254:
        assert slept == [0] * 7  # systemd did the whole wait itself
    # a healthy run of 10 minutes, then a crash: back to 2 s
    rig.advance(600)
    rig.stop("watchdog")
    rig.advance(systemd_wait(1))
    assert rig.start() == 0
    rig.advance(3)
    rig.stop("core-dump")
    rig.advance(systemd_wait(2))
    assert systemd_wait(2) + rig.start() == 4
    # a clean stop (systemctl stop / restart: exit 0 on SIGTERM) forgets the count
    rig.stop("success")
    assert list(rig.run_dir.iterdir()) == []
    assert rig.start() == 0


def test_backoff_scripts_survive_a_garbage_count_file(tmp_path):
    """The count file is the scripts' own, but a garbage one must not make them fail or sleep
    for long (at most the 32 s top of the schedule)."""
    rig = _BackoffRig(tmp_path)
    for junk in ["", "abc def", "3", "-5 -7", "99999 0", "1 99999999999", "\x00\xff", "2 1700000000 extra"]:
        (rig.run_dir / "restart-backoff").write_text(junk)
        assert 0 <= rig.start() <= 32, junk
        (rig.run_dir / "restart-backoff.start").write_text(junk)
        rig.stop("exit-code")
        n, t = (rig.run_dir / "restart-backoff").read_text().split()
        assert int(n) >= 1 and int(t) == rig.now(), junk


def test_local_url_runs_the_parrot_inside_the_daemon(tmp_path):
    with DaemonHarness(tmp_path, echo_db=None, config={"realtime": {"url": "local"}}) as h:
        h.start()
        h.press()
        h.mic.play(question("Can you hear me?"))
        h.wait_event("playback_end", timeout=30)
        assert h.server.record.connections() == []  # the harness's own server was not used
        assert h.stop_daemon() == 0


def test_watchdog_only_while_capture_delivers_frames(tmp_path):
    with DaemonHarness(tmp_path, echo_db=None) as h:
        h.start()
        time.sleep(2.5)
        before = sum(1 for _, m in h.notify if m == "WATCHDOG=1")
        assert before >= 1
        # the microphone stops delivering (writer alive, no data: reads block forever)
        hold = os.open(h.rig.mic_fifo, os.O_RDWR | os.O_NONBLOCK)
        try:
            h.mic.close()
            t_stall = time.monotonic()
            h.wait_event("watchdog_withheld", timeout=8, after=t_stall)  # stalled 3 s (health.STALL_S)
            t_check = time.monotonic()
            time.sleep(3.0)
            late = [t for t, m in h.notify if m == "WATCHDOG=1" and t > t_check]
            assert late == []
        finally:
            h.proc.kill()
            os.close(hold)


def _watchdogs(h: DaemonHarness, after: float, before: float = float("inf")) -> int:
    return sum(1 for t, m in h.notify if m == "WATCHDOG=1" and after < t < before)


def _statuses(h: DaemonHarness) -> list[str]:
    return [m for _, m in h.notify if m.startswith("STATUS=")]


def test_deaf_microphone_is_reported_not_restart_looped(tmp_path):
    """The capture device keeps delivering frames, but only digital zeros (a hardware mute
    switch, a dead ADC): after ``audio.deaf_after_s`` it is reported (LED, STATUS=, one
    journal line naming the device) and the watchdog stays fed (no restart); the link and
    the button keep working; sound again ends it with one more line."""
    with DaemonHarness(tmp_path, echo_db=None, config={"audio": {"deaf_after_s": 2.0}}) as h:
        h.start()
        time.sleep(1.5)
        assert any(m == "WATCHDOG=1" for _, m in h.notify)
        h.mic.tail = "silence"
        t_deaf = time.monotonic()
        ev = h.wait_event("deaf_microphone", timeout=10, after=t_deaf)
        assert ev["VOXBOX_DEAF"] == 1 and ev["VOXBOX_DEVICE"] == "voxbox_mic" and ev["level"] == "WARNING"
        assert "voxbox_mic" in ev["msg"] and "mute switch" in ev["msg"]
        h.wait_for(lambda: "deaf_microphone" in h.led_patterns(), 2, "the deaf-microphone LED pattern")
        h.wait_for(lambda: any("deaf microphone: capture device 'voxbox_mic'" in m for m in _statuses(h)), 2,
                   "STATUS= naming the deaf microphone")
        # the link is up and the button works: a tap starts a turn (the LED follows it)
        assert h.server.record.connections()
        t_tap = time.monotonic()
        h.press()
        h.wait_state("listening", timeout=5, after=t_tap)
        h.press()  # and cancels it
        h.wait_state("idle", timeout=5, after=t_tap)
        t_check = time.monotonic()
        time.sleep(3.0)
        fed = _watchdogs(h, t_check)
        assert fed >= 2  # fed all along (WATCHDOG_USEC = 2 s: every second)
        assert h.events("watchdog_withheld") == []
        assert [e["VOXBOX_DEAF"] for e in h.events("deaf_microphone")] == [1]  # once, no repeat yet
        h.mic.tail = "noise"
        end = h.wait_event("deaf_microphone", timeout=10, where=lambda r: r["VOXBOX_DEAF"] == 0)
        h.wait_for(lambda: h.led_patterns()[-1] == "idle", 2, "the LED back to idle")
        h.wait_for(lambda: "deaf" not in _statuses(h)[-1], 2, "STATUS= without the fault")
        assert h.proc.poll() is None  # never exited: no restart
        print(f"deaf microphone reported {ev['mono'] - t_deaf:.1f} s after the last sound (deaf_after_s 2.0); "
              f"WATCHDOG=1 sent {fed} times in the 3 s after; ended after {end['VOXBOX_SILENT_S']} s of silence; "
              f"watchdog_withheld: {len(h.events('watchdog_withheld'))}; restarts: 0")
        assert h.stop_daemon() == 0


USB_MIC, USB_SPEAKER = "voxbox_usb_mic", "voxbox_usb_speaker"


def _usb_mic_config(node: Path) -> str:
    """A capture PCM whose device node (the file plugin's infile) may not exist yet, like
    ``plughw:CARD=usbmic`` before the card is enumerated."""
    return (f'pcm.{USB_MIC} {{ type file; slave.pcm "null"; file "/dev/null"; infile "{node}"; '
            'format "raw" }\n')


def test_missing_audio_devices_keep_the_unit_running_until_they_appear(tmp_path):
    """Both devices missing at start (the microphone's device node is not there; the
    speaker's PCM is not defined: its card is not enumerated): the daemon does not exit
    (it used to exit 78, which systemd never restarts). It runs: READY=1, LED
    ``audio_device``, STATUS= and one journal line per device naming it, the watchdog fed,
    the link up, the button working. When the devices appear it opens them (tried every
    2 s) and answers a turn."""
    node = tmp_path / "usb-mic.fifo"
    with DaemonHarness(tmp_path, echo_db=None, alsa_config=_usb_mic_config(node),
                       config={"audio": {"capture_device": USB_MIC, "playback_device": USB_SPEAKER}}) as h:
        t0 = time.monotonic()
        h.start(ready_timeout=30)
        t_ready = h.wait_notify("READY=1")
        down = {e["VOXBOX_DEVICE"]: e for e in
                [h.wait_event("audio_device", timeout=10, where=lambda r, d=d: r["VOXBOX_DEVICE"] == d)
                 for d in (USB_MIC, USB_SPEAKER)]}
        for dev, kind, words in ((USB_MIC, "capture", "usb-mic.fifo"), (USB_SPEAKER, "playback", "Unknown PCM")):
            e = down[dev]
            assert e["VOXBOX_DEVICE_KIND"] == kind and e["VOXBOX_DEVICE_STATE"] == "missing"
            assert e["level"] == "ERROR" and dev in e["msg"] and words in e["VOXBOX_CAUSE"]
        h.wait_for(lambda: h.led_patterns()[-1:] == ["audio_device"], 3, "the audio_device LED pattern")
        h.wait_for(lambda: any(f"capture device '{USB_MIC}' missing" in m and f"playback device '{USB_SPEAKER}' "
                               "missing" in m for m in _statuses(h)), 3, "STATUS= naming both devices")
        h.wait_event("session_ready", timeout=10)  # the link works
        t_tap = time.monotonic()
        h.press()  # the button works
        h.wait_state("listening", timeout=5, after=t_tap)
        h.press()
        h.wait_state("idle", timeout=5, after=t_tap)
        t_check = time.monotonic()
        time.sleep(3.0)
        assert _watchdogs(h, t_check) >= 2 and h.events("watchdog_withheld") == []
        # one line per device so far (then one a minute: tests/test_health.py)
        assert len([e for e in h.events("audio_device") if e["VOXBOX_DEVICE"] == USB_MIC]) == 1
        # the microphone is plugged in: its device node appears
        t_mic = time.monotonic()
        os.symlink(h.rig.mic_fifo, node)
        up_mic = h.wait_event("audio_device", timeout=10, after=t_mic,
                              where=lambda r: r["VOXBOX_DEVICE"] == USB_MIC and r["VOXBOX_DEVICE_STATE"] == "open")
        # the speaker's card is enumerated: its PCM exists
        t_spk = time.monotonic()
        h.set_alsa_config(_usb_mic_config(node) + f'pcm.{USB_SPEAKER} {{ type plug; slave.pcm "voxbox_speaker" }}\n')
        up_spk = h.wait_event("audio_device", timeout=10, after=t_spk,
                              where=lambda r: r["VOXBOX_DEVICE"] == USB_SPEAKER and r["VOXBOX_DEVICE_STATE"] == "open")
        h.wait_for(lambda: h.led_patterns()[-1] == "idle", 3, "the LED back to idle")
        h.wait_for(lambda: "missing" not in _statuses(h)[-1], 3, "STATUS= without the devices")
        # and the unit runs normally: a turn is answered through the new devices
        t_turn = time.monotonic()
        h.press()
        h.wait_state("listening", timeout=5, after=t_turn)
        h.mic.play(question("What time is it?"))
        h.wait_event("playback_end", timeout=40, after=t_turn)
        assert h.speaker.received > 0
        assert h.proc.poll() is None  # the same process all along: no restart
        print(f"both devices missing: READY=1 {t_ready - t0:.1f} s after launch; microphone open "
              f"{up_mic['mono'] - t_mic:.1f} s after its node appeared, speaker "
              f"{up_spk['mono'] - t_spk:.1f} s after its PCM; a turn answered; restarts: 0")
        assert h.stop_daemon() == 0


def test_a_blocking_device_open_never_freezes_the_daemon(tmp_path):
    """A capture PCM whose open blocks (a file plugin on a FIFO nobody writes: opening it
    for reading waits for a writer; pyalsaaudio holds the GIL meanwhile, so in-process it
    froze the whole daemon, SIGTERM included). The open is tried in a child process: the
    daemon stays alive (watchdog fed, link up), reports the device as blocked, and exits
    on SIGTERM within a few seconds, the blocked child killed."""
    fifo = tmp_path / "stuck.fifo"
    os.mkfifo(fifo)
    stuck = "voxbox_stuck_mic"
    conf = f'pcm.{stuck} {{ type file; slave.pcm "null"; file "/dev/null"; infile "{fifo}"; format "raw" }}\n'
    with DaemonHarness(tmp_path, echo_db=None, alsa_config=conf, config={"audio": {"capture_device": stuck}}) as h:
        t0 = time.monotonic()
        h.start(ready_timeout=30)
        ev = h.wait_event("audio_device", timeout=15, where=lambda r: r["VOXBOX_DEVICE"] == stuck)
        assert ev["VOXBOX_DEVICE_STATE"] == "blocked" and "did not return within 5 s" in ev["VOXBOX_CAUSE"]
        h.wait_for(lambda: any(f"capture device '{stuck}' blocked" in m for m in _statuses(h)), 3,
                   "STATUS= naming the blocked device")
        h.wait_event("session_ready", timeout=10)
        # alive while the probe blocked: the watchdog was fed during the 5 s
        fed = _watchdogs(h, t0 + 1.0, ev["mono"])
        assert fed >= 3
        # SIGTERM while the next probe is blocked in the open
        h.wait_for(lambda: probe_children(stuck), 5, "the next probe")
        time.sleep(1.0)
        assert probe_children(stuck)
        t_term = time.monotonic()
        h.proc.send_signal(15)
        rc = h.proc.wait(10)
        took = time.monotonic() - t_term
        left = probe_children(stuck)
        print(f"blocking open: reported as blocked {ev['mono'] - t0:.1f} s after launch, WATCHDOG=1 sent "
              f"{fed} times meanwhile; SIGTERM during a blocked probe: exit {rc} after {took:.2f} s; "
              f"probe children left: {len(left)}")
        assert rc == 0 and took < 3.0 and left == []


def test_watchdog_withheld_when_playback_is_wedged(tmp_path):
    """The playback thread stops completing writes (the speaker stops draining: the write
    blocks in the device) while capture goes on: the watchdog stops (systemd restarts the
    unit), with the cause naming the playback device."""
    with DaemonHarness(tmp_path, echo_db=None) as h:
        h.start()
        time.sleep(2.0)
        assert _watchdogs(h, 0) >= 1
        # a reader that never reads: the speaker pipe fills and the daemon's write blocks
        hold = os.open(h.rig.speaker_fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            h.speaker.close()
            t_wedge = time.monotonic()
            ev = h.wait_event("watchdog_withheld", timeout=10, after=t_wedge)
            assert "playback device 'voxbox_speaker' completed no write" in ev["VOXBOX_CAUSE"]
            t_check = time.monotonic() + 0.2
            frames = h.wait_for(lambda: any("watchdog withheld: playback device" in m for m in _statuses(h)), 3,
                                "STATUS= with the cause")
            time.sleep(3.0)
            late = _watchdogs(h, t_check)
            print(f"playback wedged: watchdog withheld {ev['mono'] - t_wedge:.1f} s after the speaker stopped "
                  f"(stall threshold 3 s); WATCHDOG=1 after: {late}")
            assert late == 0 and frames
        finally:
            h.proc.kill()
            os.close(hold)


def test_a_mute_that_cannot_be_saved_shows_on_the_led_and_in_status(tmp_path):
    """The kernel refuses the state file (RLIMIT_FSIZE of 8 bytes on the daemon, as a full
    disk refuses with ENOSPC): the long hold still mutes, the LED shows
    ``state_not_saved`` for 10 s then ``muted``, and STATUS= says so until a save works."""
    import resource

    with DaemonHarness(tmp_path, echo_db=None, config={"gpio": {"long_hold_ms": 1000}}) as h:
        h.start()
        soft, hard = resource.prlimit(h.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(h.proc.pid, resource.RLIMIT_FSIZE, (8, hard))  # the soft limit only
        t_hold = time.monotonic()
        h.button(True)
        h.wait_state("muted", timeout=5, after=t_hold)
        h.button(False)
        err = h.wait_event("state_file", timeout=5, after=t_hold)
        assert "File too large" in err["msg"] and "will not survive a restart" in err["msg"]
        h.wait_for(lambda: h.led_patterns()[-1:] == ["state_not_saved"], 3, "the state_not_saved LED pattern")
        h.wait_for(lambda: any("mute not saved: cannot write" in m for m in _statuses(h)), 3, "STATUS=")
        t_led = next(r["mono"] for r in reversed(h.events("led")) if r["VOXBOX_LED"] == "state_not_saved")
        back = h.wait_event("led", timeout=15, after=t_led + 0.01, where=lambda r: r["VOXBOX_LED"] == "muted")
        assert "mute not saved" in _statuses(h)[-1]  # still said
        # the disk has room again: the next change is saved, the fault is gone
        resource.prlimit(h.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))
        t_hold = time.monotonic()
        h.button(True)
        h.wait_state("idle", timeout=5, after=t_hold)
        h.button(False)
        h.wait_for(lambda: "mute not saved" not in _statuses(h)[-1], 3, "STATUS= without the fault")
        print(f"unsaved mute: LED state_not_saved for {back['mono'] - t_led:.1f} s, then muted; "
              f"STATUS= said it until the unmute was saved")
        assert h.stop_daemon() == 0
