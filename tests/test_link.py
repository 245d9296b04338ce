"""Link supervision core, driven with a fake clock."""
import random

import pytest

from voxbox.link import LinkSupervisor, default_rollover_s


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
    s.session_ready(100)
    assert s.failures == 0 and s.failed(101, "dropped") <= 0.5


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


def test_stall_only_while_waiting_on_the_service():
    s = sup(stall_s=10)
    s.connected(0)
    s.session_ready(0)
    s.event(5)
    assert not s.stalled(14, waiting_on_service=True)
    assert s.stalled(15, waiting_on_service=True)
    assert not s.stalled(100, waiting_on_service=False)  # idle: silence is normal


def test_bad_arguments_named():
    with pytest.raises(ValueError, match="stall_s"):
        LinkSupervisor(stall_s=0)


def test_service_ended_session_is_not_a_failure_and_down_since_marks_the_outage():
    sup = LinkSupervisor(initial_s=1.0, cap_s=8.0, rng=random.Random(1))
    sup.session_ready(0.0)
    assert sup.ended_by_service(10.0, "session expired") == 0.0
    assert sup.failures == 0 and sup.down_since == 10.0 and sup.session_started is None
    sup.failed(11.0, "connection refused")  # a failed attempt later: the outage began at 10
    assert sup.failures == 1 and sup.down_since == 10.0
    sup.session_ready(12.0)
    assert sup.down_since is None
    sup.start_rollover()
    assert sup.rolling and sup.ended_for_rollover() == 0.0 and not sup.rolling and sup.down_since is None
