"""Real-time ALSA adapters over pyalsaaudio: a capture thread and a playback thread.

Both loops are thin: they own one PCM handle each and move int16 frames between ALSA and
callbacks. Everything else (echo cancelling, jitter buffering) lives in the cores.

Facts measured with pyalsaaudio 0.11 / alsa-lib 1.2.8 (Debian 12) that shape this code:

* Error conventions. ``PCM(...)`` raises ``alsaaudio.ALSAAudioError("<strerror> [<device>]")``
  when the device cannot be opened (an unknown PCM gives ``"No such file or directory
  [name]"``). ``read()`` returns ``(frames, bytes)``; on a capture overrun (``-EPIPE``) it
  does *not* raise: it returns ``(-32, b"")``; ``-EAGAIN`` in non-blocking mode comes back
  as ``(0, b"")``. ``write()`` returns the number of frames written, ``0`` for ``-EAGAIN``,
  and *raises* ``ALSAAudioError("Broken pipe [device]")`` on an underrun. Neither wrapper
  exposes ``snd_pcm_prepare``; instead ``read()``/``write()`` call it themselves when they
  find the PCM in the XRUN or SETUP state. So the least disruptive recovery is: count the
  xrun and simply call ``read()``/``write()`` again (the PCM is re-prepared and restarted
  in place, no reopen). ``drop()`` leaves the PCM in SETUP, and the next ``write()``
  re-prepares it, which is how :meth:`PlaybackLoop.drop` works. Other errors (device
  unplugged, suspended…) make the loop close and reopen the device after a back-off.
* Stopping. ``close()`` from another thread while ``read()`` blocks is unsafe (pyalsaaudio
  calls ``snd_pcm_close``, which frees the handle the reader is still inside; not tried,
  and closing an fd does not wake a thread blocked in ``read()`` on Linux), so the capture loop opens
  the PCM in ``PCM_NONBLOCK`` mode and waits with ``poll()`` on ``polldescriptors()`` with a
  timeout, checking the stop flag between waits. On a real card a non-blocking read never
  sleeps. On the ALSA ``file`` plugin over ``null`` the poll descriptor is always ready and
  the plugin's blocking ``read()`` of its ``infile`` FIFO is what paces the loop (≤ one
  period while the feeder runs); stop() then returns within a period. If the feeder is
  alive but silent forever, the read cannot be interrupted: ``stop()`` gives up after its
  timeout and leaves the daemon thread behind (it returns ``False``) rather than hang.
  Playback uses blocking writes: on a real card ``write()`` returns once the period fits in
  the ring buffer, which paces the loop at the device clock (one period per period time).
* Opens that block. ``alsaaudio.PCM(...)`` holds the GIL for the whole ``snd_pcm_open``
  and hw-params setup, so an open that blocks freezes every thread of the process, and
  Python's SIGTERM handler never runs (measured: a ``type file`` capture PCM whose
  ``infile`` is a FIFO with no writer, and a playback PCM whose ``file`` is a FIFO with no
  reader, block in ``open(2)`` of the FIFO; a ticker thread stopped ticking and SIGTERM
  was ignored until SIGKILL). ``mode=PCM_NONBLOCK`` does not help there (the same two
  opens blocked just the same: the plugin opens its file blocking whatever the PCM mode),
  and pyalsaaudio 0.11 has no call to switch a PCM opened non-blocking back to blocking
  I/O (no ``snd_pcm_nonblock``), which the playback loop's blocking writes need. So every
  open first runs in a child process (:func:`probe_open`: a fresh interpreter, ``-I -S``,
  about 10 ms on x86) that opens and closes the device non-blocking; only when the child
  reports success within ``OPEN_TIMEOUT_S`` is the device opened in this process. A child
  that does not return is killed, and the device is reported as blocked. The window
  between the child's close and our own open remains (a device that starts blocking in
  those milliseconds would still freeze the process; the watchdog then restarts it).
  Unknown PCMs and absent cards fail fast: ``"No such file or directory [name]"`` (unknown
  PCM name, or a file plugin whose ``infile`` does not exist), ``"No such device [name]"``
  (``hw:CARD=X`` for a card that is not there).
* Waiting for a device. With ``wait_for_device=True`` (the daemon) a loop never gives up:
  a device that cannot be opened (missing at start, unplugged, blocked) is tried again
  every ``retry_s``, and :meth:`_Loop.status` says why it is not open, for the health
  supervisor (:mod:`voxbox.service.health`).
* Timestamps. ``avail()`` on the ``null`` slave always reports a full buffer (capture: 640
  of 640 frames; playback: 960 of 960 free), so it cannot be used to correct capture times
  or to measure the playback delay on the test rig. The capture timestamp is the read
  completion time minus one period (the capture time of the frame's first sample when the
  loop keeps up); during a catch-up burst after a stall frames carry near-equal times.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from voxbox.audio.underrun import UnderrunInference
from voxbox.errors import AudioDeviceError, DeviceBlockedError  # noqa: F401 (re-exported)

try:  # pragma: no cover - import guard exercised only on hosts without pyalsaaudio
    import alsaaudio
except ImportError:  # pragma: no cover
    alsaaudio = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "AudioDeviceError",
    "CaptureLoop",
    "DeviceBlockedError",
    "LoopStatus",
    "PlaybackLoop",
    "list_devices",
    "open_check",
    "probe_open",
]

OPEN_TIMEOUT_S = 5.0
"""A device open (in the probe child) that has not returned after this long is blocked (s).
A real card opens in milliseconds, a USB card in well under a second; the child's own
start costs about 10 ms on x86 and some 100 ms on a Pi."""

RETRY_S = 2.0
"""A loop waiting for its device tries to open it this often (s)."""

_EPIPE = -errno.EPIPE
_ESTRPIPE = -errno.ESTRPIPE


def _require_alsa() -> None:
    if alsaaudio is None:
        raise AudioDeviceError("?", "audio", "pyalsaaudio (module alsaaudio) is not installed")


def _pcm_type(kind: str) -> int:
    if kind == "capture":
        return alsaaudio.PCM_CAPTURE
    if kind == "playback":
        return alsaaudio.PCM_PLAYBACK
    raise ValueError(f"kind must be 'capture' or 'playback', not {kind!r}")


def list_devices() -> dict[str, list[str]]:
    """PCM names ALSA knows (``alsaaudio.pcms``), as ``{"capture": [...], "playback": [...]}``.

    ALSA re-reads its configuration (``ALSA_CONFIG_PATH``, checked at every open/hint call)
    when the variable or the files change, so this reflects the current environment.
    """
    _require_alsa()
    out: dict[str, list[str]] = {}
    for kind in ("capture", "playback"):
        try:
            out[kind] = list(alsaaudio.pcms(_pcm_type(kind)))
        except alsaaudio.ALSAAudioError:  # pragma: no cover - hint failure
            out[kind] = []
    return out


def _open_pcm(device: str, kind: str, mode: int, rate: int, period: int, periods: int):
    _require_alsa()
    try:
        pcm = alsaaudio.PCM(
            type=_pcm_type(kind),
            mode=mode,
            device=device,
            rate=rate,
            channels=1,
            format=alsaaudio.PCM_FORMAT_S16_LE,
            periodsize=period,
            periods=periods,
        )
    except alsaaudio.ALSAAudioError as exc:
        raise AudioDeviceError(device, kind, str(exc), list_devices().get(kind, [])) from exc
    wrong = _format_mismatch(pcm.info(), rate)
    if wrong:
        pcm.close()
        raise AudioDeviceError(device, kind, wrong, list_devices().get(kind, []))
    return pcm


def open_check(device: str, kind: str, rate: int | None = None, period: int | None = None,
               periods: int = 4) -> dict:
    """Open and close ``device`` once to fail early with a clear :class:`AudioDeviceError`
    (:class:`DeviceBlockedError` when the open does not return within ``OPEN_TIMEOUT_S``).

    ``kind`` is ``"capture"`` or ``"playback"``; rate/period default to the voxbox contract
    (capture 16 kHz / 160, playback 24 kHz / 240). Returns ``pcm.info()`` of the open.
    The open runs in a child process (:func:`probe_open`), non-blocking, and nothing is
    read or written, so no audio is consumed and an open that blocks cannot hang the caller.
    """
    if rate is None:
        rate = 16000 if kind == "capture" else 24000
    if period is None:
        period = rate // 100
    return probe_open(device, kind, rate, period, periods)


_PROBE_CODE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import alsaaudio
a = json.loads(sys.argv[2])
t = alsaaudio.PCM_CAPTURE if a["kind"] == "capture" else alsaaudio.PCM_PLAYBACK
try:
    pcm = alsaaudio.PCM(type=t, mode=alsaaudio.PCM_NONBLOCK, device=a["device"], rate=a["rate"],
                        channels=1, format=alsaaudio.PCM_FORMAT_S16_LE,
                        periodsize=a["period"], periods=a["periods"])
except alsaaudio.ALSAAudioError as exc:
    try:
        avail = list(alsaaudio.pcms(t))
    except alsaaudio.ALSAAudioError:
        avail = []
    print(json.dumps({"ok": False, "error": str(exc), "available": avail}))
    sys.exit(0)
info = pcm.info()
pcm.close()
print(json.dumps({"ok": True, "info": info}, default=str))
"""

_unreaped: list[subprocess.Popen] = []  # probe children that did not die on SIGKILL (yet)


def _alsa_lib_line(stderr: str) -> str:
    """The last ``ALSA lib file.c:N:(function) message`` line of a child's stderr, as
    ``message`` (it says *which* part is missing: ``Unknown PCM x``, ``open /path ...``)."""
    for line in reversed(stderr.strip().splitlines()):
        if line.startswith("ALSA lib"):
            return line.split(") ", 1)[-1].strip()
    return ""


def probe_open(device: str, kind: str, rate: int, period: int, periods: int = 4,
               timeout_s: float = OPEN_TIMEOUT_S, cancel: threading.Event | None = None) -> dict | None:
    """Open and close ``device`` in a child process (non-blocking mode, nothing read or
    written), so an open that blocks cannot freeze this process (see the module notes).

    Args:
        device: ALSA PCM name; kind: ``"capture"`` or ``"playback"``; rate (Hz), period
            (frames), periods: the parameters the loops use.
        timeout_s: how long the child may take (s); then it is killed.
        cancel: when set while the child runs, the child is killed and None returned.

    Returns:
        The child's ``pcm.info()`` (JSON round trip), or None when cancelled.

    Raises:
        DeviceBlockedError: the open did not return within ``timeout_s``.
        AudioDeviceError: ALSA refused the open (the detail names what is missing), or the
            device negotiated another rate/format, or the child could not start or failed.
    """
    _require_alsa()
    for p in list(_unreaped):  # reap children a previous probe had to leave behind
        if p.poll() is not None:
            _unreaped.remove(p)
    libdir = _module_dir()
    args = json.dumps({"kind": kind, "device": device, "rate": rate, "period": period, "periods": periods})
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _PROBE_CODE, libdir, args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    except OSError as exc:  # no memory or processes left for the child
        raise AudioDeviceError(device, kind, f"cannot start the open probe: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    out = err = ""
    while True:
        try:
            out, err = proc.communicate(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            pass
        if (cancel is not None and cancel.is_set()) or time.monotonic() >= deadline:
            proc.kill()
            try:
                proc.communicate(timeout=1.0)
            except subprocess.TimeoutExpired:  # uninterruptible sleep in a driver
                _unreaped.append(proc)
            if cancel is not None and cancel.is_set():
                return None
            raise DeviceBlockedError(device, kind, timeout_s)
    try:
        res = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        detail = f"the open probe exited with status {proc.returncode}: {(err or out).strip()[-300:]}"
        raise AudioDeviceError(device, kind, detail) from None
    if not res.get("ok"):
        detail = res.get("error", "?")
        why = _alsa_lib_line(err)
        if why:
            detail = f"{detail} ({why})"
        raise AudioDeviceError(device, kind, detail, res.get("available", []))
    info = res["info"]
    wrong = _format_mismatch(info, rate)
    if wrong:
        raise AudioDeviceError(device, kind, wrong)
    return info


def _format_mismatch(info: dict, rate: int) -> str:
    """Why ``pcm.info()`` is not what the loops need (mono S16_LE at ``rate``), or ""."""
    got = (info.get("rate"), info.get("channels"), info.get("format_name"))
    if got == (rate, 1, "S16_LE"):
        return ""
    return (f"device negotiated rate={got[0]} channels={got[1]} format={got[2]}, "
            f"need rate={rate} channels=1 format=S16_LE (use a plughw:/plug PCM on a real card)")


def _module_dir() -> str:
    """The directory to put on the probe child's ``sys.path`` to import ``alsaaudio``
    (an extension module file, or a package directory in later releases)."""
    here = os.path.dirname(os.path.abspath(alsaaudio.__file__))
    return os.path.dirname(here) if os.path.basename(here) == "alsaaudio" else here


OPENING = "opening"
PROBING = "probing"
OPEN = "open"
WAITING = "waiting"
STOPPED = "stopped"


@dataclass(frozen=True)
class LoopStatus:
    """What a loop's device is doing at one moment (for :mod:`voxbox.service.health`).

    ``state``: ``"probing"`` (the open is being tried in a child process: bounded by the
    probe's timeout), ``"opening"`` (the open in this process, after the probe succeeded:
    milliseconds), ``"open"`` (the loop pumps the device), ``"waiting"`` (the last open
    failed: ``error`` says why; the next try is at most ``retry_s`` away) or ``"stopped"``.
    ``since`` and ``last_progress`` are ``time.monotonic()`` seconds: when the state began,
    and when the loop last delivered a frame (capture) or completed a write (playback),
    None before the first one.
    """

    state: str
    since: float
    last_progress: float | None
    error: AudioDeviceError | None = None


class _Loop:
    """Shared thread and device plumbing for the two loops: ``stream`` is "capture" or
    "playback", opened in ``pcm_mode`` (``alsaaudio.PCM_NONBLOCK`` / ``PCM_NORMAL``).

    Every open is first probed in a child process (:func:`probe_open`, ``probe=True``, the
    default for real devices), so an open that blocks never freezes this process. With
    ``wait_for_device`` the loop never gives up: :meth:`start` returns at once and the
    thread tries the device every ``retry_s`` s until it opens; without it, :meth:`start`
    raises the first open's :class:`AudioDeviceError`. After a device error while running
    (unplugged, suspended…), both close the device and try again, first after
    ``reopen_backoff`` s, then every ``retry_s`` s.
    """

    stream = ""
    pcm_mode = 0
    drop_on_close = False

    def __init__(self, name: str, device: str, rate: int, period: int, periods: int,
                 on_xrun: Callable[[str], None] | None, reopen_backoff: float,
                 pcm_factory: Callable[[], object] | None, wait_for_device: bool = False,
                 retry_s: float = RETRY_S, open_timeout_s: float = OPEN_TIMEOUT_S,
                 probe: bool | None = None):
        self.name = name
        self.device = device
        self.rate = rate
        self.period = period
        self.periods = periods
        self.on_xrun = on_xrun
        self.reopen_backoff = reopen_backoff
        self.wait_for_device = wait_for_device
        self.retry_s = retry_s
        self.open_timeout_s = open_timeout_s
        self._pcm_factory = pcm_factory  # tests inject a fake PCM here
        self.probe = pcm_factory is None if probe is None else probe
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self.error: BaseException | None = None
        self.xruns = 0
        self.reopens = 0
        self.open_failures = 0
        #: time.monotonic() of the last frame delivered / write completed
        self.last_progress: float | None = None
        self._state: tuple[str, float, AudioDeviceError | None] = (OPENING, time.monotonic(), None)

    def status(self) -> LoopStatus:
        """The device's state now (thread-safe: one tuple read)."""
        state, since, error = self._state
        return LoopStatus(state, since, self.last_progress, error)

    def _set_state(self, state: str, error: AudioDeviceError | None = None) -> None:
        self._state = (state, time.monotonic(), error)

    def _open(self):
        """Probe (child process), then open in this process. Returns the PCM, or None
        when the loop is stopping. Raises :class:`AudioDeviceError`."""
        if self._pcm_factory is not None:
            return self._pcm_factory()
        if self.probe:
            self._set_state(PROBING)
            if probe_open(self.device, self.stream, self.rate, self.period, self.periods,
                          timeout_s=self.open_timeout_s, cancel=self._stop) is None:
                return None
        self._set_state(OPENING)
        return _open_pcm(self.device, self.stream, self.pcm_mode, self.rate, self.period, self.periods)

    def _open_until_done(self, first: bool):
        """Open the device, trying again every ``retry_s`` s while it fails (the first open
        of a loop without ``wait_for_device`` raises instead). None when stopping."""
        while not self._stop.is_set():
            try:
                pcm = self._open()
            except Exception as exc:  # noqa: BLE001 - AudioDeviceError, or a fake's error
                if first and not self.wait_for_device:
                    raise
                err = exc if isinstance(exc, AudioDeviceError) else AudioDeviceError(
                    self.device, self.stream, f"{type(exc).__name__}: {exc}")
                self.open_failures += 1
                self._set_state(WAITING, err)
                log.debug("%s: %s; next try in %.1f s", self.name, err, self.retry_s)
                if self._stop.wait(self.retry_s):
                    return None
                continue
            if pcm is None or self._stop.is_set():
                if pcm is not None:
                    _safe_close(pcm, drop=self.drop_on_close)
                return None
            if not first:
                self.reopens += 1
            self._set_state(OPEN)
            return pcm
        return None

    def _run(self) -> None:
        pcm = self._open_until_done(first=True)  # without wait_for_device: errors go to start()
        self._opened.set()
        try:
            while pcm is not None and not self._stop.is_set():
                try:
                    self._pump(pcm)
                    return
                except Exception as exc:  # noqa: BLE001 - anything but an xrun
                    if self._stop.is_set():
                        return
                    self._xrun("error")
                    log.warning("%s: %s; reopening %r", self.name, exc, self.device)
                    _safe_close(pcm, drop=self.drop_on_close)
                    pcm = None
                    self._set_state(WAITING, AudioDeviceError(self.device, self.stream, f"device error: {exc}"))
                    if self._stop.wait(self.reopen_backoff):
                        return
                    pcm = self._open_until_done(first=False)
        finally:
            if pcm is not None:
                # playback: drop rather than drain: stop must not wait for queued audio
                _safe_close(pcm, drop=self.drop_on_close)
            self._set_state(STOPPED)

    def _pump(self, pcm) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> None:
        """Start the thread. Without ``wait_for_device``, waits for the first open and
        raises its :class:`AudioDeviceError` (:class:`DeviceBlockedError` when it blocked
        for ``open_timeout_s``); with it, returns at once (see :meth:`status`)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._thread = threading.Thread(target=self._run_guarded, name=self.name, daemon=True)
        self._thread.start()
        if self.wait_for_device:
            return
        self._opened.wait()
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the loop to stop and wait up to ``timeout`` s. True if the thread ended.
        A probe child still running is killed."""
        self._stop.set()
        return self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if alive:
            log.warning("%s: thread still blocked in ALSA after %.1f s; leaving it", self.name,
                        timeout or 0.0)
        return not alive

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _xrun(self, kind: str) -> None:
        self.xruns += 1
        log.info("%s: %s (#%d)", self.name, kind, self.xruns)
        if self.on_xrun is not None:
            try:
                self.on_xrun(kind)
            except Exception:  # noqa: BLE001 - a callback must not kill audio
                log.exception("%s: on_xrun callback failed", self.name)

    def _run_guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            if self._opened.is_set():
                log.exception("%s: loop died", self.name)
        finally:
            self._opened.set()


class CaptureLoop(_Loop):
    """Capture thread: reads periods of mono S16_LE and calls ``on_frame(frame, t)``.

    ``frame`` is a fresh ``np.int16`` array of shape ``(period,)``; ``t`` is the
    ``time.monotonic()`` estimate of the frame's first sample (read completion minus one
    period). Reads may return fewer frames than a period (non-blocking mode, real cards):
    bytes are accumulated in a preallocated buffer and numpy only sees whole frames.
    Overruns (``read()`` → ``-EPIPE``) are counted in ``xruns`` and reported through
    ``on_xrun("overrun")``; the partial frame is discarded and the next ``read()``
    re-prepares the PCM in place. Other errors close and reopen the device.
    ``device_options``: ``wait_for_device``, ``retry_s``, ``open_timeout_s``, ``probe``
    (see :class:`_Loop`).
    """

    stream = "capture"
    pcm_mode = alsaaudio.PCM_NONBLOCK

    def __init__(self, device: str, on_frame: Callable[[np.ndarray, float], None],
                 rate: int = 16000, period: int = 160, periods: int = 4, name: str = "capture",
                 on_xrun: Callable[[str], None] | None = None, poll_timeout: float = 0.1,
                 reopen_backoff: float = 0.5, pcm_factory: Callable[[], object] | None = None,
                 **device_options):
        super().__init__(name, device, rate, period, periods, on_xrun, reopen_backoff, pcm_factory,
                         **device_options)
        self.on_frame = on_frame
        self.poll_timeout = poll_timeout
        self.frames_delivered = 0
        self.last_frame_time: float | None = None
        self.partial_reads = 0
        self._frame_bytes = period * 2
        self._buf = bytearray(self._frame_bytes * 2)
        self._fill = 0

    def _pump(self, pcm) -> None:
        poller = select.poll()
        try:
            for fd, events in pcm.polldescriptors():
                poller.register(fd, events)
        except Exception:  # noqa: BLE001 - fake PCMs / plugins without descriptors
            poller = None
        timeout_ms = int(self.poll_timeout * 1000)
        self._fill = 0  # a partial frame from before a reopen is stale
        fb = self._frame_bytes
        buf = self._buf
        mv = memoryview(buf)
        idle = False
        while not self._stop.is_set():
            if idle and poller is not None:
                poller.poll(timeout_ms)
                if self._stop.is_set():
                    break
            elif idle:
                time.sleep(self.period / self.rate / 2)
            n, data = pcm.read()
            if n == 0:
                idle = True
                continue
            idle = False
            if n < 0:
                # -EPIPE overrun (or -ESTRPIPE suspend): pyalsaaudio re-prepares on the
                # next read(); samples were lost, so drop the partial frame too.
                self._fill = 0
                self._xrun("overrun" if n == _EPIPE else f"read error {n}")
                continue
            nb = len(data)
            if nb != fb:
                self.partial_reads += 1
            pos = 0
            while pos < nb:
                take = min(nb - pos, fb - self._fill)
                mv[self._fill:self._fill + take] = data[pos:pos + take]
                self._fill += take
                pos += take
                if self._fill == fb:
                    self._fill = 0
                    frame = np.frombuffer(buf, dtype=np.int16, count=self.period).copy()
                    now = time.monotonic()
                    t = now - self.period / self.rate
                    self.frames_delivered += 1
                    self.last_frame_time = t
                    self.on_frame(frame, t)
                    self.last_progress = now


class PlaybackLoop(_Loop):
    """Playback thread: ``frame = source()`` → ``pcm.write`` → ``on_written(frame, t)``.

    ``source`` must not block and returns ``period`` int16 samples (silence when idle), so
    the device never starves and the echo path stays constant. Blocking writes pace the
    loop on a real card (the write returns when the period fits in the ring buffer, i.e.
    once per period time in steady state); on the rig the ``file`` plugin's blocking write
    into the speaker FIFO paces it (the ``null`` slave itself paces nothing). ``t`` is the
    ``time.monotonic()`` at which ``write()`` returned. Underruns (``write()`` raises
    "Broken pipe") are counted in ``xruns``; the frame is written again, which re-prepares
    the PCM in place. :meth:`drop` discards what is queued in the device (barge-in).
    ``device_options``: ``wait_for_device``, ``retry_s``, ``open_timeout_s``, ``probe``
    (see :class:`_Loop`).
    """

    stream = "playback"
    pcm_mode = alsaaudio.PCM_NORMAL
    drop_on_close = True

    def __init__(self, device: str, source: Callable[[], np.ndarray],
                 on_written: Callable[[np.ndarray, float], None] | None = None,
                 rate: int = 24000, period: int = 240, periods: int = 4,
                 name: str = "playback", on_xrun: Callable[[str], None] | None = None,
                 reopen_backoff: float = 0.5, pcm_factory: Callable[[], object] | None = None,
                 **device_options):
        super().__init__(name, device, rate, period, periods, on_xrun, reopen_backoff, pcm_factory,
                         **device_options)
        self.source = source
        self.on_written = on_written
        #: called on the loop thread with the number of frames a drop() discarded (those
        #: were handed to ``on_written`` but never played): a reference must forget them
        self.on_drop: Callable[[int], None] | None = None
        self._drop = threading.Event()
        self.frames_written = 0
        self.samples_written = 0
        self.drops = 0
        self.last_write_time: float | None = None
        self.buffer_size: int | None = None
        self._delay = 0
        #: underruns the device does not report, inferred from the write times
        #: (:mod:`voxbox.audio.underrun`); each is reported like a real one, through
        #: ``on_xrun("underrun_inferred")``
        self.inferred = UnderrunInference(rate, period)

    def drop(self) -> None:
        """Discard what is queued in the device at once (thread-safe; for barge-in).

        Flags the loop, which calls ``pcm.drop()`` before its next write (at most one
        period later, since the loop is blocked in ``write()`` for ≤ a period); the next
        ``write()`` re-prepares the PCM. Frames already handed to ``on_written`` but
        dropped were never heard; :attr:`last_drop_discarded` estimates how many.
        """
        self._drop.set()

    last_drop_discarded = 0

    def delay_samples(self) -> int:
        """Samples written but not yet played, per the device (``buffer_size - avail``).

        Computed by the loop thread after each write (alsa-lib handles are not shared
        across threads here). On a real card this is the ring-buffer fill. On the ``null``
        slave ``avail()`` always reports the whole buffer free, so this is 0 on the test
        rig: there the buffering lives in the ``file`` plugin and the speaker FIFO
        (see :mod:`voxbox.sim.rig`).
        """
        return self._delay

    def _pump(self, pcm) -> None:
        try:
            self.buffer_size = int(pcm.info().get("buffer_size") or 0) or None
        except Exception:  # noqa: BLE001
            self.buffer_size = None
        inferred = self.inferred
        inferred.reset()
        while not self._stop.is_set():
            if self._drop.is_set():
                inferred.reset()
                self._drop.clear()
                self.last_drop_discarded = self._delay
                pcm.drop()  # → SETUP; the next write() re-prepares
                self.drops += 1
                if self.on_drop is not None and self._delay:
                    self.on_drop(self._delay)  # frames handed to on_written, never heard
                self._delay = 0
            frame = self.source()
            data = np.ascontiguousarray(frame, dtype=np.int16).tobytes()
            t_call = time.monotonic()
            xruns = self.xruns
            self._write_all(pcm, data)
            t = time.monotonic()
            n = len(data) // 2
            self.frames_written += 1
            self.samples_written += n
            self.last_write_time = t
            if self.xruns != xruns:
                inferred.reset()  # a reported underrun: the fill starts afresh
            elif gap := inferred.wrote(t_call, t, self.samples_written):
                log.info("%s: %.0f ms of silence played unreported", self.name, 1000.0 * gap / self.rate)
                self._xrun("underrun_inferred")
            if self.buffer_size:
                try:
                    self._delay = max(0, self.buffer_size - int(pcm.avail()))
                except Exception:  # noqa: BLE001
                    pass
            if self.on_written is not None:
                self.on_written(frame, t)
            self.last_progress = time.monotonic()

    def _write_all(self, pcm, data: bytes) -> None:
        mv = memoryview(data)
        retries = 0
        while mv and not self._stop.is_set():
            try:
                n = pcm.write(mv)
            except alsaaudio.ALSAAudioError as exc:
                # Underrun: "Broken pipe [dev]" (-EPIPE); the PCM is in XRUN and the next
                # write() re-prepares it. Anything else goes to the reopen path.
                if _is_xrun(pcm, exc) and retries < 3:
                    retries += 1
                    self._xrun("underrun")
                    continue
                raise
            if n <= 0:  # -EAGAIN (only in non-blocking mode) → wait a little
                time.sleep(self.period / self.rate / 4)
                continue
            mv = mv[n * 2:]


def _is_xrun(pcm, exc: Exception) -> bool:
    msg = str(exc)
    if "Broken pipe" in msg:
        return True
    try:
        return pcm.state() == alsaaudio.PCM_STATE_XRUN
    except Exception:  # noqa: BLE001
        return False


def _safe_close(pcm, drop: bool = False) -> None:
    try:
        if drop:
            pcm.drop()
    except Exception:  # noqa: BLE001
        pass
    try:
        pcm.close()
    except Exception:  # noqa: BLE001
        pass
