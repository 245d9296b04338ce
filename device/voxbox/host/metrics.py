"""Fleet metrics: per-unit counters and gauges written in the Prometheus text exposition
format (version 0.0.4) for node_exporter's textfile collector, so a fleet scrapes them with
Prometheus alongside the host metrics.

Three layers:

* :class:`UnitMetrics`, the core: plain numbers, updated by event methods
  (:meth:`~UnitMetrics.on_turn`, :meth:`~UnitMetrics.on_wake_word`, ...) and setters
  (:meth:`~UnitMetrics.set_echo_delay_ms`, :meth:`~UnitMetrics.set_link`, ...), read as one
  consistent :class:`MetricsSnapshot`. No I/O. Thread-safe: every method takes a private
  lock for a few attribute assignments only (never around I/O or rendering), so the
  capture and playback threads may count too without waiting on a write.
* :func:`render`: a snapshot as the text format, with the official ``prometheus_client``
  (a private :class:`~prometheus_client.CollectorRegistry` per call, nothing registered in
  the library's global registry, no ``_created`` series). Pure.
* :class:`MetricsWriter`, the adapter: snapshot, render, and replace the configured file
  atomically (:func:`voxbox.host.statefile.atomic_write`: temporary file in the same directory,
  fsync, rename, directory fsync; ``prometheus_client.write_to_textfile`` renames but does
  not fsync). The temporary file is named ``.<name>.<random>.tmp``, which the textfile
  collector ignores (it reads ``*.prom`` only), and a scrape sees either the previous file
  or the new one, never half of one. :meth:`MetricsWriter.write` never raises
  :class:`OSError`: it returns False and keeps the reason in :attr:`MetricsWriter.error`
  for the caller to log (once per change, not every interval).

Configuration (``[metrics]``): ``textfile`` (path of the ``.prom`` file, e.g.
``/var/lib/prometheus/node-exporter/voxbox.prom``; empty = off, the default) and
``interval_s`` (default 15). The daemon calls :meth:`MetricsWriter.write` from its event
loop through an executor every ``interval_s`` seconds
(``await loop.run_in_executor(None, writer.write)``), once more at stop, and never from the
audio path: a write fsyncs and may take tens of milliseconds on an SD card. The directory
must be writable by the service (``ReadWritePaths=`` under ``ProtectSystem=strict``) and the
file readable by node_exporter (it is written 0644).

Metrics (no labels naming the unit: Prometheus adds ``instance`` at the scrape; no secrets,
no transcripts, no ids):

============================================ ======= =============================================
name                                         type    meaning
============================================ ======= =============================================
``voxbox_build_info{version}``               gauge   1, with the daemon's version
``voxbox_start_time_seconds``                gauge   daemon start, Unix time (s)
``voxbox_uptime_seconds``                    gauge   seconds since the daemon started (monotonic)
``voxbox_turns_total``                       counter turns: the user got the floor
``voxbox_wake_words_total``                  counter wake words detected
``voxbox_barge_in_rejected_total``           counter false-barge-in guard fired: a tentative
                                                     barge-in the interruption check rejected
                                                     (the reply resumed)
``voxbox_barge_in_confirmed_total{cause}``   counter replies interrupted, by cause
``voxbox_underruns_total``                   counter reply-audio underruns of the jitter buffer
``voxbox_reconnects_total``                  counter sessions ready again after a lost link
``voxbox_link_up``                           gauge   1 while a session is ready, else 0
``voxbox_link_state{state}``                 gauge   1 for the current link state, 0 for others
``voxbox_echo_delay_seconds``                gauge   loudspeaker -> microphone echo delay (s)
``voxbox_erl_db``                            gauge   echo return loss (dB)
``voxbox_erle_db``                           gauge   echo return loss enhancement (dB)
``voxbox_selftest_passed``                   gauge   last ``voxbox selftest``: 1 PASS, 0 FAIL
``voxbox_selftest_timestamp_seconds``        gauge   when it ran, Unix time (s)
============================================ ======= =============================================

A gauge not measured yet (echo delay, ERL, ERLE, self-test) is absent from the file, not 0
or NaN. Counters start at 0 with the daemon (Prometheus' ``rate()`` handles the reset). The
file stays after the daemon stops; node_exporter's ``node_textfile_mtime_seconds`` tells a
stale file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from voxbox.host.statefile import atomic_write

__all__ = ["BARGE_IN_CAUSES", "DEFAULT_INTERVAL_S", "LINK_STATES", "MetricsSnapshot", "MetricsWriter",
           "UnitMetrics", "read_selftest", "render"]

log = logging.getLogger(__name__)

#: default ``metrics.interval_s`` (s)
DEFAULT_INTERVAL_S = 15.0

#: values of ``voxbox_link_state{state}``: ``up`` a session is ready; ``down`` no session,
#: connecting or backing off; ``fatal`` the service refused the unit (401/403, policy
#: close: slow retry); ``unprovisioned`` no API key, no connection attempted
LINK_STATES = ("up", "down", "fatal", "unprovisioned")

#: the daemon's barge-in causes (journal field ``VOXBOX_CAUSE`` of ``barge_in``) -> the
#: ``cause`` label of ``voxbox_barge_in_confirmed_total``; any other cause counts as ``other``
BARGE_IN_CAUSES = {
    "near-end speech": "near_end_speech",  # the device's own detector (barge_in.mode = "local")
    "user speech": "user_speech",  # the service's VAD
    "wake word": "wake_word",
    "button tap": "button_tap",
    "push-to-talk": "push_to_talk",
}
_CAUSE_LABELS = tuple(BARGE_IN_CAUSES.values()) + ("other",)

#: ``selftest.json``'s ``time`` format (``voxbox.field.selftest.to_json``)
_SELFTEST_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
_MAX_SELFTEST_BYTES = 1024 * 1024


def _finite(value: float | None) -> float | None:
    """``value`` as a float when it is a finite number, else None (unknown)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class MetricsSnapshot:
    """The metrics at one instant (what :func:`render` writes). Times in seconds; None =
    not measured yet."""

    version: str
    start_time_s: float  # Unix time of the daemon start (s), as the wall clock sees it now
    uptime_s: float  # monotonic seconds since the start
    turns: int
    wake_words: int
    barge_in_rejected: int
    barge_in_confirmed: dict[str, int]  # cause label -> count, every label of _CAUSE_LABELS
    underruns: int
    reconnects: int
    link_state: str  # one of LINK_STATES
    echo_delay_s: float | None
    erl_db: float | None
    erle_db: float | None
    selftest_passed: bool | None
    selftest_time_s: float | None  # Unix time (s)


class UnitMetrics:
    """Per-unit counters and gauges (the pure core; see the module docstring).

    Args:
        version: the daemon's version, for ``voxbox_build_info`` (no secrets here).
        clock: monotonic clock (s) for the uptime; injectable for tests.
        wall_clock: Unix time (s) for ``voxbox_start_time_seconds``; read at each snapshot
            and back-dated by the monotonic uptime, so a Pi whose clock NTP set after the
            start still reports the right start time.
    """

    def __init__(self, version: str = "", *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self._lock = threading.Lock()
        self._clock = clock
        self._wall = wall_clock
        self._version = str(version)
        self._t0 = clock()
        self._turns = 0
        self._wake_words = 0
        self._rejected = 0
        self._confirmed = dict.fromkeys(_CAUSE_LABELS, 0)
        self._underruns = 0
        self._reconnects = 0
        self._link = "down"
        self._echo_delay_s: float | None = None
        self._erl_db: float | None = None
        self._erle_db: float | None = None
        self._selftest_passed: bool | None = None
        self._selftest_time_s: float | None = None

    # ------------------------------------------------------------------ counters
    def on_turn(self) -> None:
        """A turn began (the user got the floor: state ``listening``)."""
        with self._lock:
            self._turns += 1

    def on_wake_word(self) -> None:
        """The wake word was detected."""
        with self._lock:
            self._wake_words += 1

    def on_barge_in_rejected(self) -> None:
        """The false-barge-in guard fired: a tentative barge-in (reply paused) that the
        interruption check rejected; the reply resumed (``barge_in_check`` with verdict
        ``rejected``)."""
        with self._lock:
            self._rejected += 1

    def on_barge_in(self, cause: str = "") -> None:
        """A reply was interrupted (a confirmed barge-in; the journal's ``barge_in``).

        Args:
            cause: the daemon's cause (``"near-end speech"``, ``"user speech"``,
                ``"wake word"``, ``"button tap"``, ``"push-to-talk"``); anything else is
                counted under ``cause="other"`` (the label set stays bounded).
        """
        label = BARGE_IN_CAUSES.get(str(cause).strip().lower(), "other")
        with self._lock:
            self._confirmed[label] += 1

    def on_underrun(self, count: int = 1) -> None:
        """``count`` reply-audio underruns of the jitter buffer (one call per underrun, or
        once per turn with the turn's count).

        Raises:
            ValueError: ``count`` is negative (a counter only goes up).
        """
        n = int(count)
        if n < 0:
            raise ValueError(f"underrun count must be >= 0, got {count!r}")
        with self._lock:
            self._underruns += n

    def on_reconnect(self) -> None:
        """A session is ready again after the link was lost (the journal's
        ``reconnected``)."""
        with self._lock:
            self._reconnects += 1

    # -------------------------------------------------------------------- gauges
    def set_link(self, state: str) -> None:
        """The link's state, one of :data:`LINK_STATES` (``"up"`` sets ``voxbox_link_up``
        to 1, every other state to 0). Starts ``"down"``.

        Raises:
            ValueError: ``state`` is not one of :data:`LINK_STATES`.
        """
        if state not in LINK_STATES:
            raise ValueError(f"link state must be one of {', '.join(LINK_STATES)}, got {state!r}")
        with self._lock:
            self._link = state

    def set_echo_delay_ms(self, ms: float | None) -> None:
        """The measured loudspeaker -> microphone echo delay in milliseconds (written in
        seconds). None, NaN or infinity: unknown (the gauge is left out)."""
        v = _finite(ms)
        with self._lock:
            self._echo_delay_s = None if v is None else v / 1000.0

    def set_erl_db(self, db: float | None) -> None:
        """The echo return loss in dB (played level minus captured echo level). None, NaN or
        infinity: unknown."""
        v = _finite(db)
        with self._lock:
            self._erl_db = v

    def set_erle_db(self, db: float | None) -> None:
        """The echo canceller's echo return loss enhancement in dB. None, NaN or infinity:
        unknown."""
        v = _finite(db)
        with self._lock:
            self._erle_db = v

    def set_selftest(self, result: str | None, at_unix_s: float | None = None) -> None:
        """The last ``voxbox selftest``: ``result`` ``"PASS"`` or ``"FAIL"`` (its overall
        result), ``at_unix_s`` when it ran (Unix time, s; None = unknown). ``result`` None
        clears both gauges (no self-test known).

        Raises:
            ValueError: ``result`` is neither ``"PASS"``, ``"FAIL"`` nor None.
        """
        if result is not None and result not in ("PASS", "FAIL"):
            raise ValueError(f"self-test result must be 'PASS' or 'FAIL', got {result!r}")
        at = _finite(at_unix_s) if result is not None else None
        with self._lock:
            self._selftest_passed = None if result is None else result == "PASS"
            self._selftest_time_s = at

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> MetricsSnapshot:
        """Every metric at this instant, consistent with each other."""
        now = self._clock()
        wall = self._wall()
        with self._lock:
            uptime = max(0.0, now - self._t0)
            return MetricsSnapshot(
                version=self._version, start_time_s=wall - uptime, uptime_s=uptime,
                turns=self._turns, wake_words=self._wake_words, barge_in_rejected=self._rejected,
                barge_in_confirmed=dict(self._confirmed), underruns=self._underruns,
                reconnects=self._reconnects, link_state=self._link,
                echo_delay_s=self._echo_delay_s, erl_db=self._erl_db, erle_db=self._erle_db,
                selftest_passed=self._selftest_passed, selftest_time_s=self._selftest_time_s)


# ------------------------------------------------------------------------ rendering
class _SnapshotCollector:
    """A ``prometheus_client`` custom collector yielding one snapshot's families."""

    def __init__(self, snap: MetricsSnapshot):
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        yield InfoMetricFamily("voxbox_build", "Voxbox daemon build: 1, with the version.",
                               value={"version": s.version})
        yield GaugeMetricFamily("voxbox_start_time_seconds", "Daemon start time, Unix time in seconds.",
                                value=s.start_time_s)
        yield GaugeMetricFamily("voxbox_uptime_seconds", "Seconds since the daemon started (monotonic).",
                                value=s.uptime_s)
        # CounterMetricFamily appends _total to the name
        yield CounterMetricFamily("voxbox_turns", "Turns: the user got the floor (state listening).",
                                  value=s.turns)
        yield CounterMetricFamily("voxbox_wake_words", "Wake words detected.", value=s.wake_words)
        yield CounterMetricFamily(
            "voxbox_barge_in_rejected",
            "False-barge-in guard fired: a tentative barge-in the interruption check rejected; "
            "the reply resumed.", value=s.barge_in_rejected)
        c = CounterMetricFamily("voxbox_barge_in_confirmed", "Replies interrupted (confirmed barge-ins), by cause.",
                                labels=["cause"])
        for label in _CAUSE_LABELS:
            c.add_metric([label], s.barge_in_confirmed.get(label, 0))
        yield c
        yield CounterMetricFamily("voxbox_underruns", "Reply-audio underruns of the jitter buffer.",
                                  value=s.underruns)
        yield CounterMetricFamily("voxbox_reconnects", "Sessions ready again after the link was lost.",
                                  value=s.reconnects)
        yield GaugeMetricFamily("voxbox_link_up", "1 while a Realtime session is ready, else 0.",
                                value=1.0 if s.link_state == "up" else 0.0)
        g = GaugeMetricFamily("voxbox_link_state", "The link's state: 1 for the current one, 0 for the others.",
                              labels=["state"])
        for state in LINK_STATES:
            g.add_metric([state], 1.0 if s.link_state == state else 0.0)
        yield g
        if s.echo_delay_s is not None:
            yield GaugeMetricFamily("voxbox_echo_delay_seconds",
                                    "Measured loudspeaker to microphone echo delay, seconds.", value=s.echo_delay_s)
        if s.erl_db is not None:
            yield GaugeMetricFamily("voxbox_erl_db", "Echo return loss in dB: played level minus captured echo "
                                    "level (higher is better).", value=s.erl_db)
        if s.erle_db is not None:
            yield GaugeMetricFamily("voxbox_erle_db", "Echo return loss enhancement of the echo canceller, dB "
                                    "(higher is better).", value=s.erle_db)
        if s.selftest_passed is not None:
            yield GaugeMetricFamily("voxbox_selftest_passed", "Last voxbox selftest: 1 PASS, 0 FAIL.",
                                    value=1.0 if s.selftest_passed else 0.0)
            if s.selftest_time_s is not None:
                yield GaugeMetricFamily("voxbox_selftest_timestamp_seconds",
                                        "When the last voxbox selftest ran, Unix time in seconds.",
                                        value=s.selftest_time_s)


def render(snap: MetricsSnapshot) -> bytes:
    """``snap`` in the Prometheus text exposition format 0.0.4 (UTF-8 bytes), rendered by
    ``prometheus_client.generate_latest`` from a private registry. Pure."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))  # type: ignore[arg-type]
    return generate_latest(registry)


# --------------------------------------------------------------------- the adapter
def read_selftest(path: str | os.PathLike) -> tuple[str, float] | None:
    """The overall result (``"PASS"``/``"FAIL"``) and the time (Unix s) of the self-test
    recorded in ``path`` (``selftest.json``, written by ``voxbox selftest``). The time is the
    file's ``time`` field, or its modification time when that is missing or unreadable.
    Never raises: a missing, unreadable or malformed file is None (logged at debug level)."""
    p = Path(os.fspath(path))
    try:
        st = p.stat()
        if st.st_size > _MAX_SELFTEST_BYTES:
            raise ValueError(f"larger than {_MAX_SELFTEST_BYTES} bytes")
        data = json.loads(p.read_bytes())
        result = data.get("result") if isinstance(data, dict) else None
        if result not in ("PASS", "FAIL"):
            raise ValueError(f"result is {result!r}, not PASS or FAIL")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueError
        log.debug("self-test file %s not used: %s", p, exc)
        return None
    at = st.st_mtime
    when = data.get("time")
    if isinstance(when, str):
        try:
            at = datetime.strptime(when, _SELFTEST_TIME_FORMAT).timestamp()
        except ValueError:
            pass
    return result, at


class MetricsWriter:
    """Writes a :class:`UnitMetrics` to the textfile collector's file (the adapter).

    Args:
        metrics: the core to read.
        path: the ``.prom`` file (``metrics.textfile``); its directory is created if needed.
        selftest_path: ``$STATE_DIRECTORY/selftest.json``; when given, each write first
            refreshes the self-test gauges from it (re-read only when the file changed), so
            a ``voxbox selftest`` run while the daemon runs or was stopped shows up.
    """

    def __init__(self, metrics: UnitMetrics, path: str | os.PathLike,
                 selftest_path: str | os.PathLike | None = None):
        self.metrics = metrics
        self.path = Path(os.fspath(path))
        self.selftest_path = None if selftest_path is None else Path(os.fspath(selftest_path))
        #: why the last write failed (``"<path>: <reason>"``), None after a success
        self.error: str | None = None
        self._selftest_key: tuple[int, int] | None = None

    def _refresh_selftest(self) -> None:
        if self.selftest_path is None:
            return
        try:
            st = self.selftest_path.stat()
            key = (st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        if key == self._selftest_key and key is not None:
            return
        self._selftest_key = key
        got = read_selftest(self.selftest_path) if key is not None else None
        if got is None:
            self.metrics.set_selftest(None)
        else:
            self.metrics.set_selftest(*got)

    def write(self) -> bool:
        """Snapshot, render and replace :attr:`path` atomically (blocking file I/O with
        fsyncs: call it from an executor, never from the audio path).

        Returns:
            True when written; False when the file could not be written (:attr:`error`
            says why; no temporary file remains, and :attr:`path` holds the previous file,
            or the complete new one when only the final directory fsync failed: never a
            torn file). Never raises :class:`OSError`.
        """
        self._refresh_selftest()
        data = render(self.metrics.snapshot())
        try:
            atomic_write(self.path, data, mode=0o644)
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            return False
        self.error = None
        return True
