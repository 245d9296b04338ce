"""ALSA ``file`` devices over FIFOs, paced in real time, for the demo and end-to-end tests.

The daemon (a separate process) opens two ordinary PCM names, ``voxbox_mic`` and
``voxbox_speaker``, defined in ``<workdir>/asound.conf``::

    voxbox_mic      type file, slave null, infile = <workdir>/mic.fifo      (raw S16_LE)
    voxbox_speaker  type file, slave null, file   = <workdir>/speaker.fifo  (format raw)

and this module, running in the test/demo process, plays the room:

* :class:`MicFeeder` writes the microphone signal into ``mic.fifo`` at real-time pace.
* :class:`Speaker` drains ``speaker.fifo`` at real-time pace and records what was played.

Measured (alsa-lib 1.2.8, pyalsaaudio 0.11, Linux pipes):

* The ``null`` slave paces nothing: capture ``read()`` returns at once and playback
  ``write()`` is accepted at once, and ``avail()`` always reports a full (capture) or empty
  (playback) buffer. All pacing comes from the FIFOs: capture reads block in the plugin's
  ``read()`` of ``infile`` until the feeder writes; playback writes block in the plugin's
  ``write()`` to ``file`` once the pipe is full and the speaker has not drained it.
* ``format "raw"`` on playback writes exactly the PCM bytes (no header): a ramp written
  with ``pcm.write`` comes out of the FIFO bit-exact.
* The ``file`` plugin holds back one ALSA buffer of written audio before it writes to the
  FIFO: it keeps ``buffer_size`` frames (4 × 240 = 960 = 40 ms at 24 kHz) and writes the
  excess, one period per ``write()``. ``pcm.drop()`` does *not* discard that held-back
  buffer: it flushes it into the FIFO (measured: 1920 bytes appear at the drop), and
  ``close()`` flushes what is left too. So on the rig a barge-in ``drop()`` silences the
  speaker only after the plugin buffer and the pipe have played out (≤ ~125 ms); on a
  real card ``snd_pcm_drop`` stops at once.
* Opening ``voxbox_speaker`` opens ``speaker.fifo`` for writing, which blocks until a
  reader exists: create the :class:`Speaker` before the daemon (or ``open_check``) opens
  the PCM. Opening ``voxbox_mic`` opens ``mic.fifo`` for reading, which blocks until a
  writer exists: create the :class:`MicFeeder` first (it holds the FIFO from construction).
  Close capture loops before the feeder: once the last writer is gone the plugin reads EOF
  and returns stale, unpaced frames.
* The speaker pipe is shrunk to one page (``F_SETPIPE_SZ`` → 4096 bytes = 2048 samples =
  85.3 ms at 24 kHz). A one-page pipe fills in a saw-tooth: the kernel only appends at the
  tail of the page, so once full the writer waits until the speaker has drained the whole
  page, then refills it in a burst. Hence, measured over 3 s of continuous playback, the
  time from ``pcm.write()`` returning for a frame to the speaker consuming it ranges
  0.7–130 ms (median 80 ms) — the on_written time of a frame is when the plugin pushed an
  *older* frame into the pipe. The robust invariant is on counts:
  ``0 ≤ loop.samples_written − speaker.received ≤ buffer_size + 2048 (+ one period)``
  = :attr:`FileDeviceRig.playback_buffer_samples` (+240), checked by the tests.
* ``speaker_channels = 8`` paces playback like a real card instead: ``voxbox_speaker``
  becomes a ``plug`` that copies the mono stream onto 8 channels (``ttable``, bit-exact)
  before the ``file`` plugin, so a 10 ms period is 3840 bytes, one per pipe page (the
  next does not fit), and the pipe (4 pages) holds 4 periods, like a card's 4-period
  buffer: every ``write()`` waits for the speaker's next 10 ms read, not 85 ms bursts, and
  a writer late by less than 30 ms catches up (measured, a writer 18 ms late every 10th
  period: writes 10 ms apart, 18/2 ms around the late one, 100 per second; with a
  one-page pipe each late write is lost time, 82 writes per second). The daemon still opens a mono
  PCM; :class:`Speaker` keeps channel 0. :class:`voxbox.sim.harness.DaemonHarness` (the demo,
  the end-to-end tests, the link benchmark) uses it: the jitter buffer decides and measures
  per pull, and 8 pulls in one burst with no arrival between them is not what a card does.
  Not for a playback loop in the same process as the :class:`Speaker`: closing the paced
  PCM blocks in alsa-lib while it flushes into the full pipe, holding the GIL, so the
  speaker thread can never drain it (measured: a deadlock); the daemon is a subprocess.
* ``infile`` is read with a blocking ``read()`` of exactly one period per ``readi``; a
  short pipe read would leave stale bytes in the frame, so the feeder always writes one
  whole capture period per ``write()`` (≤ PIPE_BUF, hence atomic).
* There is no capture overrun on this device: the mic pipe (shrunk to 4096 bytes, 128 ms)
  absorbs a stalled reader, and the feeder holds the chunks the full pipe does not take
  while the reader read within :data:`HOLD_MAX_S` (0.5 s), so a daemon stalled
  by the test host loses nothing (a card would report an overrun it could act on; the
  file plugin cannot report one, and a silent loss moves a closed loop's echo ahead of
  its reference). Past that the reader is gone and the feeder *drops* chunks, counted in
  :attr:`MicFeeder.dropped_chunks`. :meth:`MicFeeder.lose` injects a silent loss on
  purpose.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import termios
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

__all__ = ["FileDeviceRig", "MicFeeder", "Speaker", "F_SETPIPE_SZ"]

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
STEP_S = 0.010  # pacing step of the feeder and the speaker
#: the microphone waits this long at most (s) for the echo the speaker is due to play (the
#: speaker's thread may wake late with the test host: a late chunk is held, a hole in the
#: echo is not cancellable)
ECHO_WAIT_S = 0.2
#: the microphone holds chunks the full pipe did not take while its reader read within
#: this long (s): a stalled reader loses nothing, like a card with a buffer the test host's
#: scheduling stalls fit in; one gone longer (the daemon stopped) gets none of them, and
#: neither does a reader that has not drained the pipe yet (the daemon starting: a card's
#: capture buffer starts empty; a daemon opening it must not find a backlog held for it)
HOLD_MAX_S = 0.5


def _shrink_pipe(fd: int, size: int = 4096) -> int:
    """Shrink a pipe to ``size`` bytes (the kernel rounds up to a page). Returns the size."""
    try:
        return fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    except OSError:
        return fcntl.fcntl(fd, F_GETPIPE_SZ)


class FileDeviceRig:
    """Writes ``<workdir>/asound.conf`` and the two FIFOs; :attr:`env` points ALSA at them.

    ALSA re-reads ``ALSA_CONFIG_PATH`` (and the files' mtimes) at every PCM open and name
    hint, so setting ``os.environ`` at any time before opening works in-process; for the
    daemon pass ``env`` to the subprocess.
    """

    MIC = "voxbox_mic"
    SPEAKER = "voxbox_speaker"

    def __init__(self, workdir: Path, capture_rate: int = 16000, playback_rate: int = 24000,
                 playback_period: int | None = None, playback_periods: int = 4,
                 pipe_bytes: int = 4096, speaker_channels: int = 1,
                 speaker_pipe_bytes: int | None = None):
        if speaker_channels not in (1, 8):
            raise ValueError(f"speaker_channels must be 1 or 8, got {speaker_channels}")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.capture_rate = capture_rate
        self.playback_rate = playback_rate
        self.capture_period = capture_rate // 100
        self.playback_period = playback_period or playback_rate // 100
        self.playback_periods = playback_periods
        self.pipe_bytes = pipe_bytes
        self.speaker_channels = speaker_channels
        # wide: 4 pages, one 10 ms period each (3840 bytes; the next does not fit a page)
        self.speaker_pipe_bytes = speaker_pipe_bytes or (pipe_bytes if speaker_channels == 1 else 4 * 4096)
        self.mic_fifo = self.workdir / "mic.fifo"
        self.speaker_fifo = self.workdir / "speaker.fifo"
        self.config_path = self.workdir / "asound.conf"
        for p in (self.mic_fifo, self.speaker_fifo):
            if p.exists() or p.is_symlink():
                p.unlink()
            os.mkfifo(p, 0o600)
        self.config_path.write_text(self._config())
        self._children: list = []

    def _config(self) -> str:
        return (
            "# generated by voxbox.sim.rig.FileDeviceRig\n"
            f"pcm.{self.MIC} {{\n"
            "  type file\n"
            "  slave.pcm \"null\"\n"
            "  file \"/dev/null\"\n"
            f"  infile \"{self.mic_fifo}\"\n"
            "  format \"raw\"\n"
            f"  hint.description \"voxbox rig microphone ({self.capture_rate} Hz S16_LE mono)\"\n"
            "}\n"
            + (self._speaker_config() if self.speaker_channels == 1 else self._wide_speaker_config())
        )

    def _speaker_config(self, name: str | None = None, hint: bool = True) -> str:
        return (
            f"pcm.{name or self.SPEAKER} {{\n"
            "  type file\n"
            "  slave.pcm \"null\"\n"
            f"  file \"{self.speaker_fifo}\"\n"
            "  format \"raw\"\n"
            + (f"  hint.description \"voxbox rig speaker ({self.playback_rate} Hz S16_LE mono)\"\n"
               if hint else "")
            + "}\n"
        )

    def _wide_speaker_config(self) -> str:
        n = self.speaker_channels
        return (
            self._speaker_config("voxbox_speaker_wide", hint=False)
            + f"pcm.{self.SPEAKER} {{\n"
            "  type plug\n"
            f"  slave {{ pcm \"voxbox_speaker_wide\"; channels {n}; format S16_LE; rate {self.playback_rate} }}\n"
            + "".join(f"  ttable.0.{c} 1\n" for c in range(n))
            + f"  hint.description \"voxbox rig speaker ({self.playback_rate} Hz S16_LE mono, paced per period)\"\n"
            "}\n"
        )

    @property
    def env(self) -> dict[str, str]:
        """Environment additions the daemon needs to see the rig's PCMs."""
        return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.config_path}"}

    def apply_env(self) -> None:
        """Set :attr:`env` in this process (ALSA picks it up at the next open)."""
        os.environ.update(self.env)

    @property
    def playback_buffer_samples(self) -> int:
        """Nominal samples between the daemon's ``write()`` and the speaker consuming them:
        the ``file`` plugin's held-back buffer plus the speaker pipe (see module notes)."""
        if self.speaker_channels == 1:
            return self.playback_period * self.playback_periods + self.speaker_pipe_bytes // 2
        return self.playback_period * (self.playback_periods + self.speaker_pipe_bytes // 4096)

    def speaker(self, **kw) -> "Speaker":
        s = Speaker(self, **kw)
        self._children.append(s)
        return s

    def mic(self, signal: np.ndarray | None = None, **kw) -> "MicFeeder":
        m = MicFeeder(self, signal, **kw)
        self._children.append(m)
        return m

    def close(self) -> None:
        for c in reversed(self._children):
            c.close()
        self._children.clear()
        for p in (self.mic_fifo, self.speaker_fifo):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "FileDeviceRig":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _FifoWorker:
    """A thread serving one FIFO end (``fd``) until :meth:`close`."""

    fd: int
    _stop: threading.Event
    _thread: threading.Thread

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Tape:
    """An append-only recording in fixed blocks of ``block`` values (no reallocation, no
    copy of what is already recorded). :meth:`array` joins a handful of large blocks,
    which numpy does without holding the GIL for long; joining one small array per 10 ms
    tick (60,000 of them after ten minutes) held it for 0.1-0.3 s, long enough for the
    rig's own speaker thread to miss its ticks and play silence (an echo-path shift the
    daemon had to chase)."""

    def __init__(self, dtype, block: int = 1 << 18):
        self.dtype = np.dtype(dtype)
        self.block = block
        self._blocks: list[np.ndarray] = []
        self.n = 0

    def append(self, x) -> None:
        """Append the array ``x``."""
        x = np.asarray(x, dtype=self.dtype)
        self._write(x.size, lambda pos, k: x[pos:pos + k])

    def fill(self, value: float, count: int) -> None:
        """Append ``count`` copies of ``value``."""
        self._write(count, lambda pos, k: value)

    def _write(self, count: int, part) -> None:
        """Append ``count`` values, ``part(pos, k)`` giving values ``pos..pos+k`` (an array
        or a scalar), block by block."""
        pos = 0
        while pos < count:
            i = self.n % self.block
            if i == 0 and self.n // self.block == len(self._blocks):
                self._blocks.append(np.empty(self.block, self.dtype))
            k = min(count - pos, self.block - i)
            self._blocks[self.n // self.block][i:i + k] = part(pos, k)
            self.n += k
            pos += k

    def refs(self) -> tuple[list[np.ndarray], int]:
        """The blocks and the length, to be taken under the writer's lock (cheap)."""
        return list(self._blocks), self.n

    @staticmethod
    def join(blocks: list[np.ndarray], n: int, dtype) -> np.ndarray:
        """A new array of the first ``n`` values (outside the lock: the recorded values
        never change, only the length grows)."""
        if not blocks:
            return np.zeros(0, dtype)
        return np.concatenate(blocks)[:n] if len(blocks) > 1 else blocks[0][:n].copy()


class Speaker(_FifoWorker):
    """Drains ``speaker.fifo`` at real-time rate and records what the device "played".

    Opens the FIFO ``O_RDONLY | O_NONBLOCK`` at construction (so the daemon's open of the
    PCM never blocks) and shrinks the pipe to one page, so the daemon's writes block like a
    real card's. The thread wakes every 10 ms and reads what is due by
    ``time.monotonic()`` since start (no drift). With ``slack_periods`` > 0 (the closed
    acoustic loop), like a card, whose buffer is consumed at the exact rate whatever a
    10 ms tick sees, a shortfall of up to ``slack_periods`` periods is carried to the next
    tick (pipe pages free up a whole period at a time, so a
    tick that is late by a fraction of a period finds the writer a little behind); a
    longer shortfall is an underrun: the speaker clock runs on and the gap is played as
    silence (``underrun_samples``), never caught up. Without the slack every such tick
    would shift the played stream, and with it a closed loop's echo path, by a few samples.
    With slack, a shortfall this thread caused by waking late (the test host's scheduling,
    not the writer: the writer waits on the full pipe meanwhile) is excused on top of the
    slack while it shrinks (``late_max``, the largest); a card's clock does not stall with
    the host. Measured in CI before: 20-75 ms "underruns" in bursts under load, each
    moving the closed loop's echo path behind its reference.

    ``samples``: all int16 received, in order (bit-exact with what the daemon wrote).
    ``times``: per received sample, the monotonic time of the 10 ms block that consumed it.
    ``snapshot()``: both at once, the same length (while the thread runs, read them there).
    """

    def __init__(self, rig: FileDeviceRig, start: bool = True, slack_periods: int = 0):
        self.rig = rig
        self.slack = slack_periods * rig.playback_period
        self.rate = rig.playback_rate
        self.fd = os.open(rig.speaker_fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.pipe_size = _shrink_pipe(self.fd, rig.speaker_pipe_bytes)
        self._lock = threading.Lock()
        self._samples = _Tape(np.int16)  # every sample received, in order
        self._times = _Tape(np.float64)  # per sample: the time of the tick that consumed it
        self._played: list[np.ndarray] = []  # received + silence for gaps, for the echo path
        self._played_len = 0
        self.t0: float | None = None  # monotonic time of played sample 0
        self.underrun_samples = 0
        #: the largest shortfall excused as this thread's own lateness, samples (closed loop)
        self.late_max = 0
        #: each underrun once the stream has started, as (monotonic time of the tick,
        #: samples of silence played): a device gap the daemon cannot see here (a card
        #: reports it as an xrun)
        self.underruns: list[tuple[float, int]] = []
        self.received = 0
        self._leftover = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rig-speaker", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        ch = self.rig.speaker_channels
        frame = 2 * ch
        bps = self.rate * frame
        t0 = time.monotonic()
        self.t0 = t0
        due_bytes = 0
        deficit = 0  # samples due but not yet read (within the slack: not an underrun)
        excused = 0  # ... of which this thread's own late wake-ups account for (closed loop)
        k = 0
        while not self._stop.is_set():
            k += 1
            target = t0 + k * STEP_S
            delay = target - time.monotonic()
            if delay > 0:
                if self._stop.wait(delay):
                    break
            now = time.monotonic()
            late_s = now - target  # this wake-up's lateness (the ticks then resume from now)
            k = max(k, int((now - t0) / STEP_S))
            want = int((now - t0) * bps) // frame * frame - due_bytes
            if want <= 0:
                continue
            due_bytes += want
            nsamp_want = want // frame + deficit
            got = self._read(nsamp_want * frame, frame)
            block = np.frombuffer(got, dtype=np.int16)
            if ch > 1:
                block = block.reshape(-1, ch)[:, 0].copy()
            with self._lock:
                if len(block):
                    self._samples.append(block)
                    self._times.fill(now, len(block))
                    self.received += len(block)
                short = nsamp_want - len(block)
                if self.slack:
                    # a tick this thread woke late for wants more than the pipe can hold,
                    # while the writer waits on the full pipe: that shortfall is the rig's,
                    # not the writer's (a card's clock does not stall with the test host).
                    # It is excused while it shrinks; a shortfall that grows past it and
                    # the slack is the writer's underrun.
                    late = int(max(0.0, late_s) * self.rate)
                    excused = min(max(short, 0), excused + late)
                if short > self.slack + excused:
                    self.underrun_samples += short
                    if self.received > len(block):  # a gap in the stream, not its start
                        self.underruns.append((now, short))
                    played = np.concatenate([block, np.zeros(short, np.int16)])
                    deficit = excused = 0
                else:
                    played = block
                    deficit = max(0, short)
                    self.late_max = max(self.late_max, excused)
                self._played.append(played)
                self._played_len += len(played)

    def _read(self, nbytes: int, frame: int = 2) -> bytes:
        out = self._leftover
        self._leftover = b""
        while len(out) < nbytes:
            try:
                b = os.read(self.fd, nbytes - len(out))
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break
                raise
            if not b:  # no writer (EOF): the daemon has not opened / has closed the PCM
                break
            out += b
        cut = len(out) - len(out) % frame
        self._leftover = out[cut:]
        return out[:cut]

    def pipe_fill_bytes(self) -> int:
        """Bytes currently queued in the speaker pipe (FIONREAD)."""
        import array
        import termios
        buf = array.array("i", [0])
        fcntl.ioctl(self.fd, termios.FIONREAD, buf)
        return buf[0]

    @property
    def samples(self) -> np.ndarray:
        with self._lock:
            blocks, n = self._samples.refs()
        return _Tape.join(blocks, n, np.int16)

    @property
    def times(self) -> np.ndarray:
        return self.snapshot()[1]

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """``(samples, times)`` taken under one lock, so they have the same length (reading
        ``samples`` then ``times`` may see a block more in the second)."""
        with self._lock:
            sb, n = self._samples.refs()
            tb, _ = self._times.refs()
        return _Tape.join(sb, n, np.int16), _Tape.join(tb, n, np.float64)

    def first_nonsilent_time(self, threshold: int = 0) -> float | None:
        """Monotonic time of the block that consumed the first sample with |x| > threshold."""
        samples, times = self.snapshot()
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
        return float(times[loud[0]]) if loud.size else None

    def _played_chunks_from(self, chunk_index: int) -> tuple[list[np.ndarray], int]:
        with self._lock:
            new = self._played[chunk_index:]
            return list(new), len(self._played)

    def write_wav(self, path: Path | str) -> None:
        from voxbox.audio.wavfile import write_wav

        write_wav(path, self.samples, self.rate)


class MicFeeder(_FifoWorker):
    """Writes a 16 kHz int16 signal into ``mic.fifo`` at real-time pace, then a tail.

    The FIFO is opened ``O_RDWR | O_NONBLOCK`` at construction: this never blocks (no need
    for the daemon to be reading yet), keeps the pipe alive so the capture never sees EOF,
    and lets the feeder hold chunks while a stalled reader catches up (``held_max``) and
    drop them when nobody reads (``dropped_chunks``, after ``HOLD_MAX_S``). The mic pipe is
    shrunk to ``rig.pipe_bytes`` (4096 bytes = 128 ms at 16 kHz) to bound the backlog a
    daemon finds when it opens the PCM.

    Timing model (like an ADC): sample ``i`` of the signal is captured at
    ``t_start + i/16000``, and the 10 ms chunk holding samples ``[i, i+160)`` is written
    when its last sample is "captured", at ``t_start + (i+160)/16000``, against
    ``time.monotonic()`` with no drift accumulation.

    The signal given to the constructor is played as soon as :meth:`start` runs;
    :meth:`play` queues another one at the next chunk boundary (``signal_starts`` keeps
    the ``t_start`` of each). After the signals, ``tail`` ("silence" or "noise", with
    ``noise_dbfs``) is written until :meth:`close`.

    Acoustic echo: with ``echo_from=speaker`` the speaker's played stream (24 kHz, with
    gaps as silence) is resampled to 16 kHz with soxr, scaled by ``echo_gain_db`` and
    mixed in ``echo_delay_ms`` after it was played (plus the feeder's own ≤ 10 ms chunking).
    A closed acoustic loop like a real room: ``echo_nonlinearity`` (a callable on float
    samples in [-1, 1], the loudspeaker's distortion at its drive level) is applied first,
    then ``echo_rir`` (the speaker-to-microphone impulse response at 16 kHz, float, with
    the acoustic flight time; convolved by overlap-add with the tail carried across chunks),
    then the gain. Without them the echo is the played stream, delayed and scaled.
    """

    def __init__(self, rig: FileDeviceRig, signal: np.ndarray | None = None,
                 tail: str = "silence", noise_dbfs: float = -70.0,
                 echo_from: Speaker | None = None, echo_gain_db: float = -20.0,
                 echo_delay_ms: float = 50.0, start: bool = False, seed: int = 0,
                 echo_rir: np.ndarray | None = None, echo_nonlinearity=None):
        self.rig = rig
        self.rate = rig.capture_rate
        self.chunk = rig.capture_period
        self.fd = os.open(rig.mic_fifo, os.O_RDWR | os.O_NONBLOCK)
        self.pipe_size = _shrink_pipe(self.fd, rig.pipe_bytes)
        self.tail = tail
        self.noise_amp = 32768.0 * 10 ** (noise_dbfs / 20)
        self.echo_from = echo_from
        self.echo_gain = 10 ** (echo_gain_db / 20)
        self.echo_delay = echo_delay_ms / 1000.0
        self.echo_rir = None if echo_rir is None else np.asarray(echo_rir, dtype=np.float64)
        self.echo_nonlinearity = echo_nonlinearity
        self._rir_tail = np.zeros(0)  # convolution tail carried into the next chunk
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._queue: list[np.ndarray] = []
        if signal is not None:
            self._queue.append(np.asarray(signal, dtype=np.int16))
        self._current: np.ndarray | None = None
        self._pos = 0
        self.t0: float | None = None  # capture time of the feeder's sample 0
        self.t_start: float | None = None  # capture time of the (latest) signal's sample 0
        self.signal_starts: list[float] = []
        self.samples_written = 0
        self.dropped_chunks = 0
        #: each dropped chunk as (monotonic time, samples): microphone samples the daemon
        #: never reads, which moves the echo ahead of its reference (a card reports an overrun)
        self.drops: list[tuple[float, int]] = []
        self._lose = 0  # samples still to lose (lose())
        self._held: deque[np.ndarray] = deque()  # chunks the full pipe did not take yet
        self._fill = array.array("i", [0])  # FIONREAD's answer
        self._consumed = 0  # bytes a reader took from the pipe (written - FIONREAD), last seen
        self._read_at = -HOLD_MAX_S  # monotonic time a reader was last seen taking bytes
        #: the most chunks held at once while the reader was stalled
        self.held_max = 0
        self.signal_done = threading.Event()
        self._stop = threading.Event()
        self._echo16 = np.zeros(0, np.float32)  # 16 kHz echo stream, sample j at spk.t0+j/16k
        self._echo_base = 0  # index of _echo16[0] in the 16 kHz echo stream
        self._echo_chunks = 0
        #: chunks mixed with part of their echo missing (the speaker had not played it
        #: ``ECHO_WAIT_S`` after it was due)
        self.echo_short_chunks = 0
        self._resampler = None
        self._thread = threading.Thread(target=self._run, name="rig-mic", daemon=True)
        self.written: list[np.ndarray] | None = None
        if start:
            self.start()

    def start(self, record: bool = False) -> None:
        """Start feeding. ``record=True`` keeps every chunk written in :attr:`written`."""
        if record:
            self.written = []
        self._thread.start()

    def play(self, signal: np.ndarray) -> None:
        """Queue ``signal`` (int16, 16 kHz); it starts at the next chunk boundary."""
        with self._lock:
            self._queue.append(np.asarray(signal, dtype=np.int16))
            self.signal_done.clear()

    def wait_signal(self, timeout: float | None = None) -> bool:
        """Wait until every queued signal has been written."""
        return self.signal_done.wait(timeout)

    def _next_chunk(self, t_first: float) -> np.ndarray:
        n = self.chunk
        out = np.empty(n, np.int16)
        filled = 0
        with self._lock:
            while filled < n:
                if self._current is None:
                    if not self._queue:
                        break
                    self._current = self._queue.pop(0)
                    self._pos = 0
                    self.t_start = t_first + filled / self.rate
                    self.signal_starts.append(self.t_start)
                take = min(n - filled, len(self._current) - self._pos)
                out[filled:filled + take] = self._current[self._pos:self._pos + take]
                filled += take
                self._pos += take
                if self._pos >= len(self._current):
                    self._current = None
            if self._current is None and not self._queue:
                self.signal_done.set()
        if filled < n:
            if self.tail == "noise":
                noise = self._rng.normal(0.0, self.noise_amp, n - filled)
                out[filled:] = np.clip(np.round(noise), -32768, 32767).astype(np.int16)
            else:
                out[filled:] = 0
        return out

    def _pull_echo(self, spk: "Speaker") -> None:
        """Append what the speaker played since the last call to the 16 kHz echo stream."""
        new, self._echo_chunks = spk._played_chunks_from(self._echo_chunks)
        if new:
            x = np.concatenate(new).astype(np.float32)
            y = self._resampler.resample_chunk(x)
            if len(y) and (self.echo_nonlinearity is not None or self.echo_rir is not None):
                y = self._room(y)
            self._echo16 = np.concatenate([self._echo16, y])

    def _echo(self, t_first: float) -> np.ndarray | None:
        spk = self.echo_from
        if spk is None or spk.t0 is None:
            return None
        if self._resampler is None:
            import soxr
            self._resampler = soxr.ResampleStream(spk.rate, self.rate, 1, dtype="float32")
        self._pull_echo(spk)
        # echo stream index of the mic sample captured at t_first
        j0 = int(round((t_first - self.echo_delay - spk.t0) * self.rate)) - self._echo_base
        n = self.chunk
        # the speaker may not have consumed all it played by now (a shortfall carried within
        # its slack is read at its next tick; the resampler holds back its filter delay):
        # wait for it rather than mix an echo with holes in it (a chopped echo no linear
        # canceller can follow: before this wait, 40 % of the 1 ms blocks of a reply's echo
        # were missing with 2 slack periods, and the best linear filter explained 4 dB of it)
        deadline = time.monotonic() + ECHO_WAIT_S
        while len(self._echo16) < j0 + n and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.002)
            self._pull_echo(spk)
        if len(self._echo16) < j0 + n:
            self.echo_short_chunks += 1
        out = np.zeros(n, np.float32)
        lo, hi = max(j0, 0), min(j0 + n, len(self._echo16))
        if hi > lo:
            out[lo - j0:hi - j0] = self._echo16[lo:hi]
        # forget what can no longer be needed
        keep_from = max(0, min(j0, len(self._echo16)) - n)
        if keep_from > self.rate:
            self._echo16 = self._echo16[keep_from:]
            self._echo_base += keep_from
        return out * self.echo_gain

    def _room(self, y: np.ndarray) -> np.ndarray:
        """The loudspeaker and the room on a new piece of the 16 kHz echo stream."""
        v = y.astype(np.float64) / 32768.0
        if self.echo_nonlinearity is not None:
            v = np.asarray(self.echo_nonlinearity(v), dtype=np.float64)
        if self.echo_rir is not None:
            from scipy.signal import oaconvolve

            full = oaconvolve(v, self.echo_rir)
            tail = self._rir_tail
            full[:len(tail)] += tail
            v, self._rir_tail = full[:len(v)], full[len(v):].copy()
        return (v * 32768.0).astype(np.float32)

    def _run(self) -> None:
        n = self.chunk
        t0 = time.monotonic()
        self.t0 = t0
        k = 0
        while not self._stop.is_set():
            t_first = t0 + k * n / self.rate  # capture time of this chunk's first sample
            t_write = t_first + n / self.rate  # written when its last sample is captured
            delay = t_write - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            chunk = self._next_chunk(t_first)
            echo = self._echo(t_first)
            if echo is not None:
                mixed = chunk.astype(np.float32) + echo
                chunk = np.clip(np.round(mixed), -32768, 32767).astype(np.int16)
            if self.written is not None:
                self.written.append(chunk)
            if self._lose > 0:  # a capture gap (lose()): never reaches the daemon
                self._lose -= n
                self.drops.append((time.monotonic(), n))
                k += 1
                continue
            self._held.append(chunk)
            self._flush(time.monotonic())
            k += 1

    def _flush(self, now: float) -> None:
        """Write the held chunks, oldest first, while the pipe takes them. A reader that
        took bytes from the pipe within ``HOLD_MAX_S`` is stalled, not gone: its chunks
        wait (``held_max``). Before any reader took a byte (the daemon has not opened the
        PCM yet) and past ``HOLD_MAX_S``, the held chunks are dropped (``dropped_chunks``,
        ``drops``): a device opened later finds the pipe's 128 ms, never a backlog held
        for it (a card's capture buffer starts empty)."""
        fcntl.ioctl(self.fd, termios.FIONREAD, self._fill)
        consumed = 2 * self.samples_written - self._fill[0]
        if consumed > self._consumed:  # a reader took bytes since the last chunk
            self._consumed, self._read_at = consumed, now
        held = self._held
        while held:
            try:
                os.write(self.fd, held[0].tobytes())
            except BlockingIOError:
                break
            held.popleft()
            self.samples_written += self.chunk
        self.held_max = max(self.held_max, len(held))
        if held and now - self._read_at > HOLD_MAX_S:  # no reader, or one gone
            for c in held:
                self.dropped_chunks += 1
                self.drops.append((now, len(c)))
            held.clear()

    def lose(self, seconds: float) -> None:
        """Fault: the next ``seconds`` of microphone signal never reach the daemon, like a
        capture overrun no driver reported (the daemon reads on, unaware; the echo then
        comes that much ahead of its reference). Recorded in :attr:`drops`."""
        self._lose = int(seconds * self.rate)

    def close(self) -> None:
        super().close()
        self._resampler = None  # free the soxr stream now, not at interpreter exit
