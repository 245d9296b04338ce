"""Link supervision: when to connect, back off, give up fast retries, roll the session
over, and call a silent socket stalled. A pure core (numbers and events in, decisions out;
the caller passes ``time.monotonic()`` seconds); the websockets adapter is in
:mod:`voxbox.service.daemon`.

Rules (realtime-device-notes.md, "Sessions, limits and faults"):

- Transient failures (connection refused, DNS, TLS, HTTP 5xx, a dropped socket, close
  1001/1011, no ``session.created`` in time): exponential backoff with *full jitter*,
  ``uniform(0, min(cap, initial * 2**n))``, ``n`` counting failures since the last
  *healthy* session. A session is healthy once it stayed up ``healthy_s`` (30 s) or
  carried a completed turn; ``session.created``/``session.updated`` alone prove nothing (a
  service that accepts the session and then closes with 1011 would otherwise be hammered
  several times a second, forever).
- A connection budget on top: at most ``max_connects_per_min`` connections that the
  service accepted (handshake done) in any 60 s, so a fleet of units never storms a
  service that accepts and then fails, whatever the jitter draws. Attempts that never
  reach it (no network, DNS, connection refused: a tunnel) cost the service nothing and
  are paced by the backoff alone, so the unit is back within seconds of the network.
- Fatal answers (HTTP 401/403, close 3000/4000, ``invalid_api_key``,
  ``insufficient_quota``, ...): no hammering. The next attempt waits ``fatal_retry_s``
  (default 300 s); retrying at all covers a key rotated or a quota topped up meanwhile.
- Session limit: the service ends a session after a maximum duration (15/30/60 min over
  its history) and says when in ``session.created`` (``session.expires_at``, epoch s).
  The session is replaced at the first idle moment after ``expires_at`` less a margin
  (:func:`expiry_margin_s`), or after ``rollover_s`` if configured shorter; without an
  ``expires_at``, after the dialect's ``fallback_rollover_s``.
- Liveness: the adapter pings the service (every second during a turn, every
  ``idle ping`` interval otherwise) and reports each ping and pong. A stall is a ping left
  unanswered, with no other sign of life (a server event), for ``stall_s``: a quiet idle
  period is never a stall, and the socket is replaced only when it is really dead.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

__all__ = ["LinkSupervisor", "default_rollover_s", "expiry_margin_s", "BUDGET_WINDOW_S"]

BUDGET_WINDOW_S = 60.0
"""The window of the connection budget (s)."""

EXPIRES_MIN_S = 10.0
EXPIRES_MAX_S = 4 * 3600.0
"""An ``expires_at`` outside (10 s, 4 h] from now by the unit's clock is not believed (a Pi
without a real-time clock runs on a wrong date until NTP has synchronised)."""


def default_rollover_s(dialect: str) -> float:
    """Default session age (s) at which to roll over when the service gives no
    ``expires_at``: 25 min for the beta-era dialects (session limit 30 min), 55 min for GA
    (limit 60 min)."""
    return 55 * 60.0 if dialect == "openai-ga" else 25 * 60.0


def expiry_margin_s(lifetime_s: float) -> float:
    """How long before the service's ``expires_at`` to roll over (s): a quarter of the
    session's remaining lifetime, at least 5 s and at most 120 s (60 s -> 15 s; 30 min and
    60 min -> 2 min), so a turn that starts just before the margin can still finish."""
    return min(120.0, max(5.0, 0.25 * lifetime_s))


@dataclass
class LinkSupervisor:
    """Args:
        initial_s: first backoff bound (s).
        cap_s: backoff cap (s).
        fatal_retry_s: wait after a fatal answer (s).
        rollover_s: configured session age that triggers a rollover between turns (s;
            0 = none configured).
        fallback_rollover_s: rollover age when the service gives no ``expires_at`` and none
            is configured (s; 0 = never).
        stall_s: a ping unanswered this long, with no server event meanwhile, is a stall (s).
        healthy_s: a session up this long resets the backoff (s).
        max_connects_per_min: accepted connections (handshake done) allowed in any 60 s.
        rng: random source for the jitter (seeded in tests).

    Raises:
        ValueError: a duration <= 0 (rollover ages < 0), or ``max_connects_per_min`` < 1;
            the message names the argument.
    """

    initial_s: float = 0.5
    cap_s: float = 30.0
    fatal_retry_s: float = 300.0
    rollover_s: float = 0.0
    fallback_rollover_s: float = 0.0
    stall_s: float = 10.0
    healthy_s: float = 30.0
    max_connects_per_min: int = 6
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    fatal: bool = False
    cause: str = ""
    session_started: float | None = None
    #: when to roll the current session over (monotonic s), None: never
    rollover_at: float | None = None
    connects: int = 0
    #: when the link went down (the first failure since the last ready session), or None
    down_since: float | None = None
    #: we are closing the session ourselves to roll over (see :meth:`start_rollover`)
    rolling: bool = False
    #: the unanswered ping's clock (sent, or the last server event since), or None
    ping_out: float | None = None

    def __post_init__(self) -> None:
        for name in ("initial_s", "cap_s", "fatal_retry_s", "stall_s", "healthy_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LinkSupervisor.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("rollover_s", "fallback_rollover_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"LinkSupervisor.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_connects_per_min < 1:
            raise ValueError(f"LinkSupervisor.max_connects_per_min must be >= 1, got {self.max_connects_per_min!r}")
        self._connects: deque[float] = deque(maxlen=self.max_connects_per_min)

    # ---- connection lifecycle ----------------------------------------------------------
    def connected(self, t: float) -> None:
        """The socket is open (handshake done): counted against the connection budget."""
        self.connects += 1
        self._connects.append(t)
        self.ping_out = None

    def session_ready(self, t: float, expires_at: float | None = None) -> None:
        """``session.updated`` acknowledged the configuration. ``expires_at``: when the
        service will end the session (monotonic s, from ``session.created``'s
        ``expires_at``), if it said. Does not reset the backoff (see :meth:`healthy`)."""
        self.fatal = False
        self.cause = ""
        self.session_started = t
        self.down_since = None
        self.ping_out = None
        at = []
        if self.rollover_s > 0:
            at.append(t + self.rollover_s)
        if expires_at is not None:
            at.append(expires_at - expiry_margin_s(expires_at - t))
        elif self.fallback_rollover_s > 0:
            at.append(t + self.fallback_rollover_s)
        self.rollover_at = min(at) if at else None

    def healthy(self) -> None:
        """The session carried a completed turn: the link works, reset the backoff."""
        self.failures = 0

    def _lived(self, t: float) -> float:
        return 0.0 if self.session_started is None else t - self.session_started

    def event(self, t: float) -> None:
        """A server message arrived: the link is alive (an unanswered ping's clock restarts)."""
        if self.ping_out is not None:
            self.ping_out = t

    def ping_sent(self, t: float) -> None:
        """The adapter sent a ping (the oldest unanswered one counts)."""
        if self.ping_out is None:
            self.ping_out = t

    def pong(self, t: float) -> None:
        """The pong to the outstanding ping arrived."""
        self.ping_out = None

    def failed(self, t: float, cause: str, fatal: bool = False) -> float:
        """The attempt failed or the session ended. Returns how long to wait (s) before
        the next attempt: the full-jitter backoff, or ``fatal_retry_s``, and never less
        than the connection budget demands."""
        if self._lived(t) >= self.healthy_s:
            self.failures = 0
        self._down(t, cause)
        if fatal:
            self.fatal = True
            return max(self.fatal_retry_s, self.budget_wait(t))
        self.fatal = False
        bound = min(self.cap_s, self.initial_s * (2 ** min(self.failures, 30)))
        self.failures += 1
        return max(self.rng.uniform(0.0, bound), self.budget_wait(t))

    def ended_by_service(self, t: float, cause: str) -> float:
        """The service ended the session at its limit (``session_expired``, close 1001):
        reconnect at once, not a failure, if the session had been healthy; a session that
        ends so within ``healthy_s`` is a failure like any other (no storm)."""
        if self._lived(t) < self.healthy_s:
            return self.failed(t, cause)
        self.failures = 0
        self._down(t, cause)
        return self.budget_wait(t)

    def budget_wait(self, t: float) -> float:
        """Seconds from ``t`` until another connection fits the budget (0 if it does)."""
        if len(self._connects) < self.max_connects_per_min:
            return 0.0
        return max(0.0, self._connects[0] + BUDGET_WINDOW_S - t)

    def _down(self, t: float, cause: str) -> None:
        self.session_started = None
        self.rollover_at = None
        self.ping_out = None
        self.cause = cause
        if self.down_since is None:
            self.down_since = t

    def start_rollover(self) -> None:
        """We are closing the session to roll over (after :meth:`should_roll_over`)."""
        self.rolling = True

    def ended_for_rollover(self) -> float:
        """The session we closed to roll over has ended: reconnect at once."""
        self.session_started = None
        self.rollover_at = None
        self.ping_out = None
        self.rolling = False
        self.cause = "session rollover"
        return 0.0

    # ---- decisions ---------------------------------------------------------------------
    def should_roll_over(self, t: float, idle: bool) -> bool:
        """Time to replace the session: past its rollover time and the conversation is
        idle (no turn, no reply playing, no follow-up window)."""
        return (idle and self.session_started is not None and self.rollover_at is not None
                and t >= self.rollover_at)

    def stalled(self, t: float) -> bool:
        """A ping has gone unanswered, with no server event either, for ``stall_s``."""
        return self.session_started is not None and self.ping_out is not None and t - self.ping_out >= self.stall_s

    @staticmethod
    def expires_in(expires_at_epoch: object, now_epoch: float) -> float | None:
        """Seconds until the service's ``expires_at`` (epoch s) by this unit's wall clock,
        or None when absent or not believable (outside (10 s, 4 h]: a wrong clock)."""
        if not isinstance(expires_at_epoch, (int, float)) or isinstance(expires_at_epoch, bool):
            return None
        left = float(expires_at_epoch) - now_epoch
        if not math.isfinite(left) or not EXPIRES_MIN_S < left <= EXPIRES_MAX_S:
            return None
        return left
