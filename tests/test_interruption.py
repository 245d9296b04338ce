"""The interruption check core (voxbox.duplex.interruption), frame by frame."""

import math

import pytest

from voxbox.duplex.interruption import CheckSettings, InterruptionCheck, Verdict

FRAME_MS = 16.0
SPEECH = (0.9, -30.0, -70.0)
QUIET = (0.05, -68.0, -70.0)


def run(check, frames):
    for i, f in enumerate(frames):
        v = check.push(*f)
        if v is not None:
            return i, v
    return None, None


def test_nothing_happens_without_a_check():
    c = InterruptionCheck(FRAME_MS)
    assert c.push(*SPEECH) is None and not c.active


def test_the_user_still_talking_confirms_after_the_settle_time():
    c = InterruptionCheck(FRAME_MS, CheckSettings(settle_ms=96, window_ms=256, need=0.4))
    c.start()
    i, v = run(c, [SPEECH] * 40)
    # 6 frames of settle, then 7 of 16 judged frames (ceil(0.4 * 16)) must speak
    assert v is Verdict.CONFIRMED and i == 6 + 7 - 1
    assert not c.active


def test_silence_after_the_pause_was_the_echo():
    c = InterruptionCheck(FRAME_MS, CheckSettings(settle_ms=96, window_ms=256, need=0.4))
    c.start()
    i, v = run(c, [QUIET] * 40)
    # rejected as soon as the rest of the window cannot reach 7 spoken frames
    assert v is Verdict.REJECTED and i == 6 + (16 - 7)


def test_speech_during_the_settle_time_does_not_count():
    c = InterruptionCheck(FRAME_MS, CheckSettings(settle_ms=96, window_ms=256, need=0.4))
    c.start()
    i, v = run(c, [SPEECH] * 6 + [QUIET] * 40)
    assert v is Verdict.REJECTED


def test_loud_noise_without_speech_and_quiet_speech_below_the_floor_do_not_confirm():
    c = InterruptionCheck(FRAME_MS)
    c.start()
    assert run(c, [(0.1, -20.0, -70.0)] * 80)[1] is Verdict.REJECTED
    c.start()
    assert run(c, [(0.95, -66.0, -70.0)] * 80)[1] is Verdict.REJECTED
    c.start()
    assert run(c, [(math.nan, -30.0, -70.0)] * 80)[1] is Verdict.REJECTED


def test_judging_waits_for_the_far_end_to_go_quiet():
    c = InterruptionCheck(FRAME_MS, CheckSettings(settle_ms=96, window_ms=256, need=0.4))
    c.start()
    # the device still plays what it held for 10 frames: the echo is not judged
    for _ in range(10):
        assert c.push(*SPEECH, far=True) is None
    i, v = run(c, [QUIET] * 40)
    assert v is Verdict.REJECTED and i == 6 + 9
    # a far end that never goes quiet: rejected after max_wait_ms
    c = InterruptionCheck(FRAME_MS, CheckSettings(max_wait_ms=160))
    c.start()
    verdicts = [c.push(*SPEECH, far=True) for _ in range(12)]
    assert verdicts[9] is Verdict.REJECTED and not c.active


def test_cancel_and_restart():
    c = InterruptionCheck(FRAME_MS)
    c.start()
    c.push(*SPEECH)
    c.cancel()
    assert c.push(*SPEECH) is None
    c.start()
    assert run(c, [SPEECH] * 40)[1] is Verdict.CONFIRMED


@pytest.mark.parametrize("kw, name", [({"settle_ms": -1}, "settle_ms"), ({"window_ms": 0}, "window_ms"),
                                      ({"need": 1.5}, "need"), ({"vad_min": float("nan")}, "vad_min"),
                                      ({"level_db": -3}, "level_db")])
def test_bad_settings_are_named(kw, name):
    with pytest.raises(ValueError, match=name):
        CheckSettings(**kw)


def test_bad_frame_duration():
    with pytest.raises(ValueError, match="frame_ms"):
        InterruptionCheck(0)


def test_speech_the_canceller_still_sees_echo_in_does_not_confirm():
    """Closed loop, +6/+10 dB, strongly nonlinear loudspeakers: the checks that confirmed on
    the unit's own voice heard speech-like frames (VAD 0.75-0.93, 15-50 dB over the floor)
    with the RES statistic at -16 to -5 dB: the canceller's echo estimate was above them."""
    c = InterruptionCheck(FRAME_MS)
    c.start()
    assert run(c, [(0.93, -48.0, -107.0, False, -10.2)] * 80)[1] is Verdict.REJECTED
    c.start()
    assert run(c, [(0.93, -48.0, -107.0, False, 5.9)] * 80)[1] is Verdict.REJECTED
    c.start()  # the user, with the echo estimate decayed
    assert run(c, [(0.93, -30.0, -107.0, False, 25.0)] * 40)[1] is Verdict.CONFIRMED
    c = InterruptionCheck(FRAME_MS, CheckSettings(ratio_db=-math.inf))  # the statistic not used
    c.start()
    assert run(c, [(0.93, -48.0, -107.0, False, -10.2)] * 40)[1] is Verdict.CONFIRMED


@pytest.mark.parametrize("bad", [math.nan, math.inf, "6", True])
def test_ratio_db_setting_is_checked(bad):
    with pytest.raises(ValueError, match="ratio_db"):
        CheckSettings(ratio_db=bad)
