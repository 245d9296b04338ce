"""Link supervision: when to connect, back off, give up fast retries, roll the session
over, and call a silent socket stalled. A pure core (numbers and events in, decisions out;
the caller passes ``time.monotonic()`` seconds); the websockets adapter is in
:mod:`voxbox.daemon`.

Rules (issue "A link that never strands the user"; realtime-device-notes.md, "Sessions,
limits and faults"):

- Transient failures (connection refused, DNS, TLS, HTTP 5xx, a dropped socket, close
  1001/1011): exponential backoff with *full jitter*, ``uniform(0, min(cap, initial * 2**n))``,
  ``n`` counting failures since the last session that became ready.
- Fatal answers (HTTP 401/403, close 3000/4000, ``invalid_api_key``,
  ``insufficient_quota``, ...): no hammering. The next attempt waits ``fatal_retry_s``
  (default 300 s) — retrying at all covers a key rotated or a quota topped up meanwhile.
- Session limit: the service ends a session after a maximum duration (15/30/60 min over
  its history). A session older than ``rollover_s`` is replaced by a fresh one, only when
  the conversation is idle, so a reply is never cut.
- Stall: during a turn, no sign of life from the service (a server event, or the pong
  to a ping the adapter sends every second) for ``stall_s`` means the socket is dead even
  if TCP says otherwise: replace it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["LinkSupervisor", "default_rollover_s"]


def default_rollover_s(dialect: str) -> float:
    """Default session age (s) at which to roll over: 25 min for the beta-era dialects
    (session limit 30 min), 55 min for GA (limit 60 min)."""
    return 55 * 60.0 if dialect == "openai-ga" else 25 * 60.0


@dataclass
class LinkSupervisor:
    """Args:
        initial_s: first backoff bound (s).
        cap_s: backoff cap (s).
        fatal_retry_s: wait after a fatal answer (s).
        rollover_s: session age that triggers a rollover between turns (s; 0 = never).
        stall_s: silence from the service during a turn that counts as a stall (s).
        rng: random source for the jitter (seeded in tests).
    """

    initial_s: float = 0.5
    cap_s: float = 30.0
    fatal_retry_s: float = 300.0
    rollover_s: float = 0.0
    stall_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    fatal: bool = False
    cause: str = ""
    session_started: float | None = None
    last_event: float = 0.0
    connects: int = 0
    #: when the link went down (the first failure since the last ready session), or None
    down_since: float | None = None
    #: we are closing the session ourselves to roll over (see :meth:`start_rollover`)
    rolling: bool = False

    def __post_init__(self) -> None:
        for name in ("initial_s", "cap_s", "fatal_retry_s", "stall_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LinkSupervisor.{name} must be > 0, got {getattr(self, name)!r}")
        if self.rollover_s < 0:
            raise ValueError(f"LinkSupervisor.rollover_s must be >= 0, got {self.rollover_s!r}")

    # ---- connection lifecycle ----------------------------------------------------------
    def connected(self, t: float) -> None:
        """The socket is open (handshake done)."""
        self.connects += 1
        self.last_event = t

    def session_ready(self, t: float) -> None:
        """``session.updated`` acknowledged the configuration: the link is healthy."""
        self.failures = 0
        self.fatal = False
        self.cause = ""
        self.session_started = t
        self.last_event = t
        self.down_since = None

    def event(self, t: float) -> None:
        """Any server message, or a pong, arrived."""
        self.last_event = t

    def failed(self, t: float, cause: str, fatal: bool = False) -> float:
        """The attempt failed or the session ended. Returns how long to wait (s) before
        the next attempt."""
        self._down(t, cause)
        if fatal:
            self.fatal = True
            return self.fatal_retry_s
        self.fatal = False
        bound = min(self.cap_s, self.initial_s * (2 ** min(self.failures, 30)))
        self.failures += 1
        return self.rng.uniform(0.0, bound)

    def ended_by_service(self, t: float, cause: str) -> float:
        """The service ended the session at its limit (``session_expired``, close 1001):
        reconnect at once. Not a failure: the backoff does not grow."""
        self._down(t, cause)
        return 0.0

    def _down(self, t: float, cause: str) -> None:
        self.session_started = None
        self.cause = cause
        if self.down_since is None:
            self.down_since = t

    def start_rollover(self) -> None:
        """We are closing the session to roll over (after :meth:`should_roll_over`)."""
        self.rolling = True

    def ended_for_rollover(self) -> float:
        """The session we closed to roll over has ended: reconnect at once."""
        self.session_started = None
        self.rolling = False
        self.cause = "session rollover"
        return 0.0

    # ---- decisions ---------------------------------------------------------------------
    def should_roll_over(self, t: float, idle: bool) -> bool:
        """Time to replace the session: older than ``rollover_s`` and the conversation is
        idle (no turn, no reply playing, no follow-up window)."""
        return (self.rollover_s > 0 and idle and self.session_started is not None
                and t - self.session_started >= self.rollover_s)

    def stalled(self, t: float, waiting_on_service: bool) -> bool:
        """No server event or pong for ``stall_s`` while a turn is on."""
        return waiting_on_service and self.session_started is not None and t - self.last_event >= self.stall_s
