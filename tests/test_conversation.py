"""The attention state machine, driven with a fake clock."""
from voxbox.conversation import ClearInput, Conversation, Interrupt, ResetWake, State


def up():
    c = Conversation(listen_timeout_s=8, follow_up_s=6, thinking_timeout_s=20)
    c.link_up(0.0)
    assert c.state is State.IDLE and not c.uplink_open
    return c


def test_full_turn_with_follow_up_and_timeout():
    c = up()
    assert c.wake(1.0) == [ResetWake()]
    assert c.state is State.LISTENING and c.uplink_open and c.turn == 1
    c.speech_started(1.5)
    c.speech_stopped(3.0)
    assert c.state is State.THINKING and c.uplink_open
    c.response_started(3.1)
    c.playback_started(3.4)
    assert c.state is State.SPEAKING
    c.response_done(3.6, "completed")
    assert c.state is State.SPEAKING  # still playing out
    c.playback_drained(6.0)
    assert c.state is State.FOLLOW_UP and c.uplink_open
    assert c.tick(11.9) == [] and c.state is State.FOLLOW_UP
    assert c.tick(12.0) == [ClearInput()] and c.state is State.IDLE and not c.uplink_open
    causes = [t.cause for t in c.transitions]
    assert causes == ["session ready", "wake word", "end of speech", "reply audio",
                      "reply finished", "follow-up window closed"]


def test_follow_up_speech_starts_new_turn_without_wake_word():
    c = up()
    c.tap(0.1)
    c.speech_stopped(1)
    c.playback_started(1.2)
    c.response_done(1.3, "completed")
    c.playback_drained(2)
    c.speech_started(3)
    assert c.state is State.LISTENING and c.turn == 2


def test_barge_in_by_tap_wake_and_server():
    for trigger, by_server in (("tap", False), ("wake", False), ("speech_started", True)):
        c = up()
        c.wake(0)
        c.speech_stopped(1)
        c.playback_started(2)
        acts = getattr(c, trigger)(2.5)
        assert Interrupt(acts[0].cause, by_server) == acts[0]
        assert c.state is State.LISTENING and c.uplink_open


def test_listen_timeout_and_cancel_tap():
    c = up()
    c.wake(0)
    assert c.tick(7.9) == [] and c.state is State.LISTENING
    assert c.tick(8.0) == [ClearInput()] and c.state is State.IDLE
    c.tap(9)
    assert c.tap(9.5) == [ClearInput(), ResetWake()] and c.state is State.IDLE


def test_link_down_while_speaking_interrupts_and_goes_offline():
    c = up()
    c.wake(0)
    c.speech_stopped(1)
    c.playback_started(2)
    acts = c.link_down(3, "connection dropped")
    assert isinstance(acts[0], Interrupt) and c.state is State.OFFLINE and not c.uplink_open
    assert c.wake(4) == [ResetWake()] and c.state is State.OFFLINE
    c.link_up(5)
    assert c.state is State.IDLE


def test_response_without_audio_ends_turn():
    c = Conversation(follow_up_s=0)
    c.link_up(0)
    c.wake(0)
    c.speech_stopped(1)
    c.response_done(2, "failed")
    assert c.state is State.IDLE


def test_thinking_timeout():
    c = up()
    c.wake(0)
    c.speech_stopped(1)
    c.tick(21)
    assert c.state is State.IDLE
