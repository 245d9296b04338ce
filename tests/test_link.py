"""Link supervision core, driven with a fake clock."""
import random

import pytest

from voxbox.realtime.link import LinkSupervisor, default_rollover_s, expiry_margin_s


def sup(**kw):
    return LinkSupervisor(rng=random.Random(1), **kw)


def test_backoff_is_full_jitter_exponential_and_capped():
    s = sup(initial_s=0.5, cap_s=30.0)
    bounds = [min(30.0, 0.5 * 2 ** n) for n in range(10)]
    delays = [s.failed(float(n), "connection refused") for n in range(10)]
    assert all(0 <= d <= b for d, b in zip(delays, bounds))
    assert max(delays[-4:]) > 5  # it does grow
    # many draws at the cap stay under it and spread over it (full jitter, not equal jitter)
    draws = [s.failed(0, "x") for _ in range(500)]
    assert max(draws) <= 30.0 and min(draws) < 3.0


def test_a_ready_session_does_not_reset_the_backoff_a_healthy_one_does():
    s = sup(initial_s=0.5, cap_s=30.0, healthy_s=30.0)
    for n in range(5):  # accepted, then closed with 1011 at once: the backoff keeps growing
        s.session_ready(10.0 * n)
        s.failed(10.0 * n + 0.1, "closed by the service (1011 server error)")
    assert s.failures == 5
    s.session_ready(100.0)
    assert s.failed(131.0, "dropped") <= 0.5 and s.failures == 1  # it had lived 31 s
    s.session_ready(200.0)
    s.healthy()  # a completed turn proves the link too
    assert s.failures == 0


def test_connection_budget_bounds_a_storm_whatever_the_jitter():
    s = sup(initial_s=0.01, cap_s=0.02, max_connects_per_min=6)
    t, attempts = 0.0, []
    while t < 60.0:
        s.connected(t)
        attempts.append(t)
        s.session_ready(t + 0.01)
        t += 0.02 + s.failed(t + 0.02, "closed by the service (1011)")
    assert len(attempts) == 6, attempts
    assert s.budget_wait(attempts[-1]) == pytest.approx(60.0 - attempts[-1] + attempts[0])
    # attempts that never reach the service (refused, no network) are paced by the backoff only
    s = sup(initial_s=0.01, cap_s=0.02, max_connects_per_min=6)
    assert max(s.failed(float(n), "connection refused") for n in range(100)) <= 0.02


def test_fatal_answers_wait_the_slow_interval():
    s = sup(fatal_retry_s=300)
    assert s.failed(0, "HTTP 401 at handshake", fatal=True) == 300
    assert s.fatal and s.cause == "HTTP 401 at handshake"
    assert s.failed(300, "invalid_api_key", fatal=True) == 300  # every time, no speed-up


def test_rollover_only_between_turns_after_the_age():
    s = sup(rollover_s=1500)
    s.connected(0)
    s.session_ready(1)
    assert not s.should_roll_over(1000, idle=True)
    assert not s.should_roll_over(1600, idle=False)  # a turn is running: wait
    assert s.should_roll_over(1600, idle=True)
    assert s.ended_for_rollover() == 0.0 and not s.should_roll_over(1700, idle=True)
    assert default_rollover_s("openai-ga") == 3300 and default_rollover_s("openai-beta") == 1500
    assert sup(rollover_s=0).should_roll_over(1e9, idle=True) is False


def test_rollover_before_the_services_expires_at():
    s = sup(fallback_rollover_s=3300)
    s.session_ready(100.0, expires_at=160.0)  # the service ends it 60 s from now
    assert s.rollover_at == pytest.approx(160.0 - expiry_margin_s(60.0)) and s.rollover_at < 160.0
    assert not s.should_roll_over(140.0, idle=True) and s.should_roll_over(146.0, idle=True)
    s.session_ready(0.0)  # no expires_at: the dialect's period
    assert s.rollover_at == 3300.0
    s = sup(rollover_s=4.0, fallback_rollover_s=3300)
    s.session_ready(0.0, expires_at=3600.0)  # a shorter configured age wins
    assert s.rollover_at == 4.0
    assert expiry_margin_s(3600) == 120 and expiry_margin_s(1) == 5
    assert LinkSupervisor.expires_in(1000 + 60, 1000.0) == 60.0
    for bad in (None, "1060", True, 1000 - 5, 1000 + 5 * 3600, float("nan")):
        assert LinkSupervisor.expires_in(bad, 1000.0) is None


def test_quiet_is_not_a_stall_an_unanswered_ping_is():
    s = sup(stall_s=10)
    s.connected(0)
    s.session_ready(0)
    assert not s.stalled(3600)  # an hour of quiet: nothing outstanding, nothing wrong
    s.ping_sent(3600)
    s.pong(3600.05)
    assert not s.stalled(3700)
    s.ping_sent(3700)
    s.ping_sent(3701)  # the oldest unanswered ping counts
    assert not s.stalled(3709.9) and s.stalled(3710)
    s.event(3705)  # ... unless the service showed life meanwhile
    assert not s.stalled(3714) and s.stalled(3715)


def test_bad_arguments_named():
    with pytest.raises(ValueError, match="stall_s"):
        LinkSupervisor(stall_s=0)
    with pytest.raises(ValueError, match="max_connects_per_min"):
        LinkSupervisor(max_connects_per_min=0)


def test_service_ended_session_and_down_since_marks_the_outage():
    sup = LinkSupervisor(initial_s=1.0, cap_s=8.0, rng=random.Random(1))
    sup.session_ready(0.0)
    assert sup.ended_by_service(40.0, "session expired") == 0.0  # a healthy session: at once
    assert sup.failures == 0 and sup.down_since == 40.0 and sup.session_started is None
    sup.failed(41.0, "connection refused")  # a failed attempt later: the outage began at 40
    assert sup.failures == 1 and sup.down_since == 40.0
    sup.session_ready(42.0)
    assert sup.down_since is None
    sup.ended_by_service(43.0, "session expired")  # expired 1 s after it began: a failure
    assert sup.failures == 2
    sup.start_rollover()
    assert sup.rolling and sup.ended_for_rollover() == 0.0 and not sup.rolling
