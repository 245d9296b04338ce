"""Playback underruns a device does not report, inferred from the writer's own timing.

Core module, pure: :class:`UnderrunInference` is fed the times of the playback thread's
blocking writes and returns the underrun each write reveals; no clock, no I/O.

A card reports an underrun (``write()`` fails with ``-EPIPE``), and the daemon measures the
echo path afresh. Some devices hide it: an ALSA ``file`` plugin over ``null`` (the test
rig), a sound server that plays silence when its client is late. There the speaker's clock
runs on through the silence, and the echo falls behind its reference with no word of it.

The writer can still see it. A blocking ``write()`` returns when the device has room for a
period, that is, with its buffer full. At such returns, the *lead*, samples written minus
``rate`` times the time since the first write, is the buffer fill plus a constant, give
or take the return's scheduling latency. A stall the buffer covers leaves it unchanged:
the writer refills what was drained. A stall longer than the buffer lowers it for good, by
the silence the device played. So the lead at blocked returns, taken as the maximum over
the last ``confirm`` of them (a late return alone lowers one value, not the maximum), is
followed, and a drop of more than ``threshold`` samples is an underrun of that size.
Clock drift between the device and ``time.monotonic()`` moves the lead slowly (1,000 ppm
is 1 ms a second) and is followed, not reported.

Measured on the closed loop (reporting-half car room, echo +6 dB above the user): the
test rig's speaker played 27-76 ms of silence when the daemon's playback thread stalled;
the echo moved behind its reference, the reference line followed in three moves, and one
reply was paused on its own echo and cut at 26 %.
"""

from __future__ import annotations

from collections import deque

__all__ = ["UnderrunInference"]


class UnderrunInference:
    """Infer playback underruns from the times of blocking writes (see module doc).

    Args:
        rate: the device's sample rate, Hz.
        period: samples per write.
        threshold_ms: smallest drop of the lead reported, ms (a scheduling jitter of the
            returns stays below it); at least 2 periods are used.
        confirm: blocked returns whose maximum lead is compared (>= 1).
        drift_ppm: the clock drift followed without a report, ppm.

    Raises:
        ValueError: a non-positive rate, period or threshold, or ``confirm`` < 1.
    """

    def __init__(self, rate: int, period: int, threshold_ms: float = 20.0, confirm: int = 4,
                 drift_ppm: float = 1000.0) -> None:
        if rate <= 0 or period <= 0 or threshold_ms <= 0 or confirm < 1 or drift_ppm < 0:
            raise ValueError(f"UnderrunInference: bad arguments rate={rate!r} period={period!r} "
                             f"threshold_ms={threshold_ms!r} confirm={confirm!r} drift_ppm={drift_ppm!r}")
        self.rate = int(rate)
        self.period = int(period)
        #: samples: the smallest drop reported
        self.threshold = max(threshold_ms * rate / 1000.0, 2.0 * period)
        self.confirm = int(confirm)
        self.drift = drift_ppm * 1e-6
        #: a write that took at least this long blocked (s): the device's buffer was full
        self.blocked_s = 0.5 * period / rate
        #: underruns inferred, and their samples in all
        self.count = 0
        self.samples = 0
        self.reset()

    def reset(self) -> None:
        """Forget the timing: after a reported underrun, a drop of the queue (barge-in) or
        a reopen of the device, the buffer's fill starts afresh."""
        self._t0: float | None = None
        self._w0 = 0
        self._leads: deque[float] = deque(maxlen=self.confirm)
        self._base: float | None = None
        self._t_base = 0.0

    def wrote(self, t_call: float, t_return: float, written: int) -> int:
        """One write: called at ``t_call``, returned at ``t_return`` (s, one monotonic
        clock); ``written``: samples written since the device was opened, this write
        included. Returns the samples of silence the device played unreported since the
        last report (0: none)."""
        if self._t0 is None:
            self._t0, self._w0 = t_return, written
            return 0
        if t_return - t_call < self.blocked_s:
            return 0  # the buffer had room: refilling after a stall, or starting
        lead = (written - self._w0) - self.rate * (t_return - self._t0)
        self._leads.append(lead)
        if len(self._leads) < self.confirm:
            return 0
        m = max(self._leads)
        if self._base is None:
            self._base, self._t_base = m, t_return
            return 0
        # follow a slow drift down, and any rise at once
        base = self._base - self.drift * self.rate * (t_return - self._t_base)
        self._t_base = t_return
        if m >= base:
            self._base = m
            return 0
        self._base = base
        drop = base - m
        if drop < self.threshold:
            return 0
        self._base = m
        self._leads.clear()
        self.count += 1
        n = int(round(drop))
        self.samples += n
        return n
