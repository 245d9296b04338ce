"""The attention state machine, driven with a fake clock."""
from voxbox.conversation.machine import (
    ClearInput,
    Conversation,
    Earcon,
    EndPushToTalk,
    Interrupt,
    PauseReply,
    Prompt,
    ResendTurn,
    ResetWake,
    ResumeReply,
    SetMuted,
    StartPushToTalk,
    State,
)
from voxbox.gpio.gestures import ButtonGestures, Gesture


def no_cues(actions):
    return [a for a in actions if not isinstance(a, Earcon)]


def cues(actions):
    return [a.name for a in actions if isinstance(a, Earcon)]


def up():
    c = Conversation(listen_timeout_s=8, follow_up_s=6, thinking_timeout_s=20)
    c.link_up(0.0)
    assert c.state is State.IDLE and not c.uplink_open
    return c


def test_full_turn_with_follow_up_and_timeout():
    c = up()
    assert c.wake(1.0) == [Earcon("wake"), ResetWake()]
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
    assert no_cues(c.tick(12.0)) == [ClearInput()] and c.state is State.IDLE and not c.uplink_open
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
        c.resume_false_interruptions = False
        c.wake(0)
        c.speech_stopped(1)
        c.playback_started(2)
        acts = no_cues(getattr(c, trigger)(2.5))
        assert Interrupt(acts[0].cause, by_server) == acts[0]
        assert c.state is State.LISTENING and c.uplink_open


def test_listen_timeout_and_cancel_tap():
    c = up()
    c.wake(0)
    assert c.tick(7.9) == [] and c.state is State.LISTENING
    assert c.tick(8.0) == [Earcon("end"), ClearInput()] and c.state is State.IDLE
    c.tap(9)
    assert c.tap(9.5) == [Earcon("end"), ClearInput(), ResetWake()] and c.state is State.IDLE


def test_link_down_while_idle_goes_offline_and_prompts():
    c = up()
    c.link_down(3, "connection dropped")
    assert c.state is State.OFFLINE and not c.uplink_open and not c.holding
    assert c.wake(4) == [ResetWake(), Prompt("offline")] and c.state is State.OFFLINE
    assert c.tap(4) == [Prompt("offline")] and c.ptt_start(4) == [Prompt("offline")]
    assert c.link_up(5) == [] and c.state is State.IDLE


def test_reply_cut_by_a_drop_is_held_and_asked_for_again():
    c = up()
    c.wake(0)
    c.speech_stopped(1)
    c.response_started(1.5)
    c.playback_started(2)
    acts = c.link_down(3, "connection dropped")
    assert isinstance(acts[0], Interrupt) and c.state is State.THINKING and c.holding and c.uplink_open
    assert c.tick(7.9) == []  # held: no timeout, no prompt
    assert c.link_up(4) == [ResendTurn(commit=True)] and c.state is State.THINKING and not c.holding
    c.response_started(4.2)
    c.playback_started(4.5)
    c.response_done(5, "completed")
    c.playback_drained(6)
    assert c.state is State.FOLLOW_UP


def test_question_cut_while_being_asked_goes_on_in_the_next_session():
    c = up()
    c.wake(0)
    c.speech_started(0.5)
    assert c.link_down(0.8, "session expired") == [] and c.state is State.LISTENING and c.holding
    c.link_down(0.9, "connect failed")  # a failed attempt later keeps the hold
    assert c.link_up(1.0) == [ResendTurn(commit=False)] and c.state is State.LISTENING
    assert c.tick(8.9) == [] and c.tick(9.0) != []  # the listen timeout runs from link_up


def test_push_to_talk_held_through_a_drop():
    c = up()
    c.ptt_start(0)
    c.link_down(0.5, "connection dropped")
    assert c.link_up(0.6) == [ResendTurn(commit=False, push_to_talk=True)]
    assert no_cues(c.ptt_end(2)) == [EndPushToTalk()]


def test_a_complete_reply_plays_on_while_the_link_is_down():
    c = up()
    c.wake(0)
    c.speech_stopped(1)
    c.response_started(1.5)
    c.playback_started(2)
    c.response_done(2.5, "completed")  # all of the reply's audio is here
    assert c.link_down(3, "connection dropped") == [] and c.state is State.SPEAKING
    c.playback_drained(6)
    assert c.state is State.OFFLINE and not c.holding
    assert c.link_up(7) == [] and c.state is State.IDLE


def test_a_long_outage_loses_the_turn_and_says_so_at_once():
    c = up()
    c.wake(0)
    c.speech_stopped(1)
    c.link_down(2, "connection dropped")
    acts = c.tick(2 + c.resume_turn_s)
    assert Prompt("session_lost") in acts and ClearInput() in acts and c.state is State.OFFLINE
    assert not c.holding and Prompt("session_lost") not in c.link_up(9) and c.state is State.IDLE


def test_with_resume_off_a_lost_turn_is_told_once_when_the_link_is_back():
    c = Conversation(listen_timeout_s=8, follow_up_s=6, thinking_timeout_s=20, resume_turn_s=0)
    c.link_up(0.0)
    c.wake(0)
    c.speech_stopped(1)
    c.link_down(2, "session expired")
    assert c.state is State.OFFLINE
    c.link_down(3, "connect failed")  # a failed attempt later keeps the lost turn
    assert c.link_up(4)[-1] == Prompt("session_lost") and c.state is State.IDLE
    c.link_down(5, "connection dropped")  # idle: no turn lost
    assert Prompt("session_lost") not in c.link_up(6)


def test_mute_and_fatal_end_a_held_turn():
    c = up()
    c.wake(0)
    c.link_down(0.5, "connection dropped")
    c.toggle_mute(0.6)
    assert c.state is State.MUTED and not c.holding
    c.toggle_mute(0.7)
    c2 = up()
    c2.wake(0)
    c2.link_down(0.5, "connection dropped")
    c2.fatal(0.6, "invalid_api_key")
    assert c2.state is State.ERROR and not c2.holding


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


def speaking(c=None):
    c = c or up()
    c.wake(0)
    c.speech_started(0.5, 500)
    c.speech_stopped(1, 1500)
    c.response_started(1.1)
    c.playback_started(1.2)
    assert c.state is State.SPEAKING
    return c


def test_false_interruption_resumes_the_reply():
    c = speaking()
    turn = c.turn
    assert no_cues(c.speech_started(2.0, 4000)) == [PauseReply()]
    assert c.state is State.LISTENING and c.interruption_pending
    acts = c.speech_stopped(2.3, 4200)  # 200 ms of "speech": a cough
    assert acts == [ResumeReply()] and c.state is State.SPEAKING and c.turn == turn
    assert c.transitions[-1].cause == "false interruption (200 ms of speech): reply resumed"
    c.response_done(2.4, "cancelled")
    c.playback_drained(4)
    assert c.state is State.FOLLOW_UP


def test_real_interruption_is_confirmed_at_end_of_speech_or_new_response():
    c = speaking()
    c.speech_started(2.0, 4000)
    acts = c.speech_stopped(3.5, 5500)
    assert no_cues(acts) == [Interrupt("user speech", by_server=True)] and c.state is State.THINKING
    assert not c.interruption_pending
    c = speaking()
    c.speech_started(2.0, 4000)
    assert c.response_started(2.2) == [Interrupt("user speech", by_server=True)]
    c = speaking()
    c.speech_started(2.0, 4000)  # the user keeps talking past the listen timeout
    assert no_cues(c.tick(10.0)) == [Interrupt("user speech", by_server=True)]
    # a tap or the wake word while paused is a confirmed local barge-in
    c = speaking()
    c.speech_started(2.0, 4000)
    assert no_cues(c.tap(2.1)) == [Interrupt("button tap", by_server=False)]


def test_push_to_talk_turn_and_hold_across_a_reply():
    c = up()
    acts = c.ptt_start(1.0)
    assert no_cues(acts) == [ResetWake(), StartPushToTalk()] and cues(acts) == ["wake"]
    assert c.state is State.LISTENING and c.push_to_talk and c.uplink_open
    assert c.tick(30) == []  # no listen timeout while held
    c.speech_started(2, 1000)
    assert c.speech_stopped(3, 2000) == [] and c.state is State.LISTENING  # VAD off: ignore
    acts = c.ptt_end(31)
    assert no_cues(acts) == [EndPushToTalk()] and c.state is State.THINKING and not c.push_to_talk
    c.response_started(31.1)
    c.playback_started(31.3)
    assert c.state is State.SPEAKING
    # hold across the reply: the press interrupts it and takes the floor
    acts = c.ptt_start(32)
    assert no_cues(acts)[0] == Interrupt("push-to-talk", by_server=False)
    assert StartPushToTalk() in acts and c.state is State.LISTENING
    c.playback_started(32.05)  # a late period of the old reply must not steal the floor
    assert c.state is State.LISTENING
    assert no_cues(c.ptt_end(34)) == [EndPushToTalk()]


def test_gestures_drive_push_to_talk_and_a_short_press_is_a_tap():
    g = ButtonGestures(debounce_s=0.02, hold_s=0.15, long_hold_s=5.0)
    assert g.edge(True, 0.0) == [] and g.tick(0.1) == []
    assert g.edge(False, 0.12) == [] and g.tick(0.15) == [Gesture.TAP]  # 120 ms press
    g.edge(True, 1.0)
    assert g.tick(1.2) == [Gesture.HOLD_START]
    g.edge(False, 3.0)
    assert g.tick(3.05) == [Gesture.HOLD_END]
    # a 5 ms glitch is not a press
    g.edge(True, 4.0)
    g.edge(False, 4.005)
    assert g.tick(4.1) == [] and not g.pressed
    # bounce on press: the first stable level counts once
    for k in range(5):
        g.edge(k % 2 == 0, 5.0 + k * 0.003)
    assert g.tick(5.2) == [Gesture.HOLD_START]


def test_mute_blocks_everything_and_unmute_returns_to_the_link_state():
    c = speaking()
    acts = c.toggle_mute(3)
    assert Interrupt("microphone muted", by_server=False) in acts and ClearInput() in acts
    assert SetMuted(True) in acts and cues(acts) == ["mute"]
    assert c.state is State.MUTED and not c.uplink_open
    assert c.wake(4) == [ResetWake()] and c.state is State.MUTED
    assert c.tap(4) == [Earcon("mute")] and c.ptt_start(4) == [Earcon("mute")]
    c.link_down(5, "connection dropped")
    assert c.state is State.MUTED  # muted wins, the link state is remembered
    acts = c.toggle_mute(6)
    assert c.state is State.OFFLINE and SetMuted(False) in acts
    c.link_up(7)
    c.toggle_mute(8)
    assert c.state is State.MUTED
    c.link_up(9)  # a reconnect while muted keeps it muted
    assert c.state is State.MUTED
    c.toggle_mute(10)
    assert c.state is State.IDLE


def test_restore_muted_and_unprovisioned():
    c = Conversation()
    c.restore_muted(0)
    assert c.state is State.MUTED and c.muted
    c = Conversation()
    c.unprovisioned(0, "no credential")
    assert c.state is State.UNPROVISIONED and not c.uplink_open
    assert c.tap(1) == [Earcon("error")]
    c.link_up(2)
    assert c.state is State.IDLE


def test_error_state_plays_the_error_cue_once():
    c = up()
    assert cues(c.fatal(1, "invalid_api_key")) == ["error"]
    assert cues(c.fatal(2, "invalid_api_key")) == []


def test_every_transition_logged_once_with_its_cause():
    c = speaking()
    c.speech_started(2.0, 4000)
    c.speech_stopped(2.2, 4100)
    c.toggle_mute(3)
    c.toggle_mute(4)
    pairs = [(t.old, t.new) for t in c.transitions]
    assert all(a is not b for a, b in pairs)
    assert all(t.cause for t in c.transitions)


def local():
    c = Conversation(listen_timeout_s=8, follow_up_s=6, thinking_timeout_s=20, local_barge_in=True,
                     barge_in_on_speech=False)
    c.link_up(0.0)
    c.wake(1.0)
    c.speech_started(1.5)
    c.speech_stopped(3.0)
    c.response_started(3.1)
    return c


def test_local_barge_in_the_device_decides_during_the_reply():
    c = local()
    c.playback_started(3.4)
    assert c.state is State.SPEAKING
    # the service's VAD hears the echo: ignored while the reply plays
    assert c.speech_started(4.0) == [] and c.state is State.SPEAKING
    # the device's near-end detector hears the user: the reply pauses, kept
    acts = no_cues(c.near_end_speech(4.5))
    assert acts == [PauseReply()] and c.interruption_pending
    assert c.state is State.LISTENING and c.turn == 2
    assert c.near_end_speech(4.6) == []  # one pause at a time
    # with the speaker quiet the user still talks: final, the client cancels
    assert c.near_end_confirmed(4.9) == [Interrupt("near-end speech", by_server=False)]
    assert not c.interruption_pending and c.near_end_confirmed(5.0) == []
    # the service then hears the user's question
    c.speech_started(4.7)
    c.speech_stopped(6.0)
    assert c.state is State.THINKING


def test_local_barge_in_ignores_the_detector_outside_a_reply():
    c = local()
    assert c.state is State.THINKING
    assert c.near_end_speech(3.2) == []
    c.playback_started(3.4)
    c.response_done(3.5, "completed")
    c.playback_drained(6.0)
    assert c.state is State.FOLLOW_UP and c.near_end_speech(6.1) == []


def test_local_barge_in_user_talks_on_while_the_unit_thinks():
    c = local()
    acts = no_cues(c.speech_started(3.3))
    assert acts == [Interrupt("user speech", by_server=False)] and c.state is State.LISTENING


def test_local_barge_in_on_the_echo_resumes_the_reply():
    c = local()
    c.playback_started(3.4)
    assert no_cues(c.near_end_speech(4.5)) == [PauseReply()]
    acts = c.near_end_rejected(4.9)
    assert acts == [ResumeReply()] and c.state is State.SPEAKING and c.turn == 1
    assert c.near_end_rejected(5.0) == []
    c.response_done(5.5, "completed")
    c.playback_drained(9.0)
    assert c.state is State.FOLLOW_UP
