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
* Timestamps. ``avail()`` on the ``null`` slave always reports a full buffer (capture: 640
  of 640 frames; playback: 960 of 960 free), so it cannot be used to correct capture times
  or to measure the playback delay on the test rig. The capture timestamp is the read
  completion time minus one period (the capture time of the frame's first sample when the
  loop keeps up); during a catch-up burst after a stall frames carry near-equal times.
"""

from __future__ import annotations

import errno
import logging
import select
import threading
import time
from typing import Callable

import numpy as np

try:  # pragma: no cover - import guard exercised only on hosts without pyalsaaudio
    import alsaaudio
except ImportError:  # pragma: no cover
    alsaaudio = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "AudioDeviceError",
    "CaptureLoop",
    "PlaybackLoop",
    "list_devices",
    "open_check",
]

_EPIPE = -errno.EPIPE
_ESTRPIPE = -errno.ESTRPIPE


class AudioDeviceError(RuntimeError):
    """An ALSA PCM could not be opened or used. Names the device and the PCMs available."""

    def __init__(self, device: str, kind: str, detail: str, available: list[str] | None = None):
        self.device = device
        self.kind = kind
        self.detail = detail
        self.available = list(available or [])
        avail = ", ".join(self.available) if self.available else "(none)"
        super().__init__(
            f"cannot open ALSA {kind} device {device!r}: {detail}; available {kind} PCMs: {avail}"
        )


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
    info = pcm.info()
    got = (info.get("rate"), info.get("channels"), info.get("format_name"))
    if got != (rate, 1, "S16_LE"):
        pcm.close()
        raise AudioDeviceError(
            device,
            kind,
            f"device negotiated rate={got[0]} channels={got[1]} format={got[2]}, "
            f"need rate={rate} channels=1 format=S16_LE (use a plughw:/plug PCM on a real card)",
            list_devices().get(kind, []),
        )
    return pcm


def open_check(device: str, kind: str, rate: int | None = None, period: int | None = None,
               periods: int = 4) -> dict:
    """Open and close ``device`` once to fail early with a clear :class:`AudioDeviceError`.

    ``kind`` is ``"capture"`` or ``"playback"``; rate/period default to the voxbox contract
    (capture 16 kHz / 160, playback 24 kHz / 240). Returns ``pcm.info()`` of the open.
    The capture PCM is opened non-blocking and nothing is read, so no audio is consumed.
    """
    if rate is None:
        rate = 16000 if kind == "capture" else 24000
    if period is None:
        period = rate // 100
    mode = alsaaudio.PCM_NONBLOCK if alsaaudio is not None else 0
    pcm = _open_pcm(device, kind, mode, rate, period, periods)
    try:
        return pcm.info()
    finally:
        # Playback: close() drains, and nothing was written, so it returns at once.
        pcm.close()


class _Loop:
    """Shared thread and device plumbing for the two loops: ``stream`` is "capture" or
    "playback", opened in ``pcm_mode`` (``alsaaudio.PCM_NONBLOCK`` / ``PCM_NORMAL``)."""

    stream = ""
    pcm_mode = 0

    def __init__(self, name: str, device: str, rate: int, period: int, periods: int,
                 on_xrun: Callable[[str], None] | None, reopen_backoff: float,
                 pcm_factory: Callable[[], object] | None):
        self.name = name
        self.device = device
        self.rate = rate
        self.period = period
        self.periods = periods
        self.on_xrun = on_xrun
        self.reopen_backoff = reopen_backoff
        self._pcm_factory = pcm_factory  # tests inject a fake PCM here
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self.error: BaseException | None = None
        self.xruns = 0
        self.reopens = 0

    def _open(self):
        if self._pcm_factory is not None:
            return self._pcm_factory()
        return _open_pcm(self.device, self.stream, self.pcm_mode, self.rate, self.period, self.periods)

    def _reopen(self, pcm, exc: Exception, drop: bool):
        """After an unexpected device error: count it, close the PCM and reopen it after
        ``reopen_backoff`` until that works. Returns the new PCM, or None when stopping."""
        self._xrun("error")
        log.warning("%s: %s; reopening %r", self.name, exc, self.device)
        _safe_close(pcm, drop=drop)
        pcm = None
        while pcm is None and not self._stop.wait(self.reopen_backoff):
            try:
                pcm = self._open()
                self.reopens += 1
            except Exception as exc2:  # noqa: BLE001
                log.warning("%s: reopen failed: %s", self.name, exc2)
        return pcm

    def start(self) -> None:
        """Start the thread. Raises :class:`AudioDeviceError` if the first open fails."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._thread = threading.Thread(target=self._run_guarded, name=self.name, daemon=True)
        self._thread.start()
        self._opened.wait()
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the loop to stop and wait up to ``timeout`` s. True if the thread ended."""
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

    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class CaptureLoop(_Loop):
    """Capture thread: reads periods of mono S16_LE and calls ``on_frame(frame, t)``.

    ``frame`` is a fresh ``np.int16`` array of shape ``(period,)``; ``t`` is the
    ``time.monotonic()`` estimate of the frame's first sample (read completion minus one
    period). Reads may return fewer frames than a period (non-blocking mode, real cards):
    bytes are accumulated in a preallocated buffer and numpy only sees whole frames.
    Overruns (``read()`` → ``-EPIPE``) are counted in ``xruns`` and reported through
    ``on_xrun("overrun")``; the partial frame is discarded and the next ``read()``
    re-prepares the PCM in place. Other errors close and reopen the device.
    """

    stream = "capture"
    pcm_mode = alsaaudio.PCM_NONBLOCK

    def __init__(self, device: str, on_frame: Callable[[np.ndarray, float], None],
                 rate: int = 16000, period: int = 160, periods: int = 4, name: str = "capture",
                 on_xrun: Callable[[str], None] | None = None, poll_timeout: float = 0.1,
                 reopen_backoff: float = 0.5, pcm_factory: Callable[[], object] | None = None):
        super().__init__(name, device, rate, period, periods, on_xrun, reopen_backoff, pcm_factory)
        self.on_frame = on_frame
        self.poll_timeout = poll_timeout
        self.frames_delivered = 0
        self.last_frame_time: float | None = None
        self.partial_reads = 0
        self._frame_bytes = period * 2
        self._buf = bytearray(self._frame_bytes * 2)
        self._fill = 0

    def _run(self) -> None:
        pcm = self._open()  # first open: errors propagate to start()
        self._opened.set()
        try:
            while not self._stop.is_set():
                try:
                    self._pump(pcm)
                    return
                except Exception as exc:  # noqa: BLE001 - anything but an xrun
                    if self._stop.is_set():
                        return
                    pcm = self._reopen(pcm, exc, drop=False)
                    if pcm is None:
                        return
        finally:
            if pcm is not None:
                _safe_close(pcm)

    def _pump(self, pcm) -> None:
        poller = select.poll()
        try:
            for fd, events in pcm.polldescriptors():
                poller.register(fd, events)
        except Exception:  # noqa: BLE001 - fake PCMs / plugins without descriptors
            poller = None
        timeout_ms = int(self.poll_timeout * 1000)
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
                    t = time.monotonic() - self.period / self.rate
                    self.frames_delivered += 1
                    self.last_frame_time = t
                    self.on_frame(frame, t)


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
    """

    stream = "playback"
    pcm_mode = alsaaudio.PCM_NORMAL

    def __init__(self, device: str, source: Callable[[], np.ndarray],
                 on_written: Callable[[np.ndarray, float], None] | None = None,
                 rate: int = 24000, period: int = 240, periods: int = 4,
                 name: str = "playback", on_xrun: Callable[[str], None] | None = None,
                 reopen_backoff: float = 0.5, pcm_factory: Callable[[], object] | None = None):
        super().__init__(name, device, rate, period, periods, on_xrun, reopen_backoff, pcm_factory)
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
        (see :mod:`voxbox.rig`).
        """
        return self._delay

    def _run(self) -> None:
        pcm = self._open()
        self._opened.set()
        try:
            while not self._stop.is_set():
                try:
                    self._pump(pcm)
                    return
                except Exception as exc:  # noqa: BLE001
                    if self._stop.is_set():
                        return
                    pcm = self._reopen(pcm, exc, drop=True)
                    if pcm is None:
                        return
        finally:
            if pcm is not None:
                # drop rather than drain: stop must not wait for queued audio to play out
                _safe_close(pcm, drop=True)

    def _pump(self, pcm) -> None:
        try:
            self.buffer_size = int(pcm.info().get("buffer_size") or 0) or None
        except Exception:  # noqa: BLE001
            self.buffer_size = None
        while not self._stop.is_set():
            if self._drop.is_set():
                self._drop.clear()
                self.last_drop_discarded = self._delay
                pcm.drop()  # → SETUP; the next write() re-prepares
                self.drops += 1
                if self.on_drop is not None and self._delay:
                    self.on_drop(self._delay)  # frames handed to on_written, never heard
                self._delay = 0
            frame = self.source()
            data = np.ascontiguousarray(frame, dtype=np.int16).tobytes()
            self._write_all(pcm, data)
            t = time.monotonic()
            n = len(data) // 2
            self.frames_written += 1
            self.samples_written += n
            self.last_write_time = t
            if self.buffer_size:
                try:
                    self._delay = max(0, self.buffer_size - int(pcm.avail()))
                except Exception:  # noqa: BLE001
                    pass
            if self.on_written is not None:
                self.on_written(frame, t)

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
