"""Playback underruns a device does not report: the pure core with a fake clock, then the
real PlaybackLoop on the file-plugin rig, whose speaker plays silence unreported."""

from __future__ import annotations

import time

import numpy as np
import pytest

from voxbox.audio.underrun import UnderrunInference

RATE, PERIOD = 24000, 240
P_S = PERIOD / RATE  # 10 ms


def _card(stalls: dict[int, float], n: int = 600, buffer_periods: int = 4, late: dict[int, float] | None = None,
          ppm: float = 0.0, rate: int = RATE):
    """A card with ``buffer_periods`` periods of buffer, consuming at ``rate`` * (1 + ppm),
    written by a blocking writer that stalls ``stalls[i]`` s before write ``i`` and
    returns ``late[i]`` s late from write ``i``. Yields (t_call, t_return, written,
    silence played so far in samples)."""
    late = late or {}
    r = rate * (1 + ppm * 1e-6)
    cap = buffer_periods * PERIOD
    t, played, written, silence = 0.0, 0.0, 0, 0.0
    fill = 0.0  # samples queued in the device at time t

    def advance(to: float):
        nonlocal t, fill, silence
        dt = to - t
        drained = r * dt
        if drained > fill:
            silence += drained - fill
            fill = 0.0
        else:
            fill -= drained
        t = to

    for i in range(n):
        if i in stalls:
            advance(t + stalls[i])
        t_call = t
        # block until a period fits
        if fill + PERIOD > cap:
            advance(t + (fill + PERIOD - cap) / r)
        fill += PERIOD
        written += PERIOD
        t_ret = t + late.get(i, 0.0)
        advance(t_ret)
        yield t_call, t_ret, written, silence


def _run(inf: UnderrunInference, gen) -> tuple[list[int], float]:
    found, silence = [], 0.0
    for t_call, t_ret, w, s in gen:
        g = inf.wrote(t_call, t_ret, w)
        if g:
            found.append(g)
        silence = s
    return found, silence


def test_steady_writer_reports_nothing_even_with_drift_and_late_returns():
    late = {i: 0.015 for i in range(50, 600, 37)}  # single returns 15 ms late
    for ppm in (-1000.0, 0.0, 1000.0):
        found, silence = _run(UnderrunInference(RATE, PERIOD), _card({}, n=3000, late=late, ppm=ppm))
        assert silence == 0 and found == []


def test_a_stall_the_buffer_covers_is_not_an_underrun():
    found, silence = _run(UnderrunInference(RATE, PERIOD), _card({100: 0.035, 300: 0.038}))
    assert silence == 0 and found == []


@pytest.mark.parametrize("stall_s", [0.07, 0.12, 0.3])
def test_a_stall_past_the_buffer_is_reported_once_with_its_size(stall_s):
    found, silence = _run(UnderrunInference(RATE, PERIOD), _card({200: stall_s}))
    assert silence > 0
    assert len(found) == 1
    assert abs(found[0] - silence) <= PERIOD  # within a period of the silence played


def test_two_underruns_each_reported_and_reset_forgets_the_fill():
    inf = UnderrunInference(RATE, PERIOD)
    found, silence = _run(inf, _card({100: 0.1, 400: 0.2}))
    assert len(found) == 2 and abs(sum(found) - silence) <= 2 * PERIOD
    assert inf.count == 2 and inf.samples == sum(found)
    inf.reset()
    assert inf.wrote(0.0, 0.01, 240) == 0  # the first write after a reset only starts the clock


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="period"):
        UnderrunInference(RATE, 0)
    with pytest.raises(ValueError, match="confirm"):
        UnderrunInference(RATE, PERIOD, confirm=0)


# -- the real PlaybackLoop on the rig --------------------------------------------------------
def _rig_run(tmp_path, monkeypatch, stalls: dict[int, float], seconds: float = 2.0, channels: int = 1):
    from voxbox.audio.alsa import PlaybackLoop
    from voxbox.sim.rig import FileDeviceRig

    rig = FileDeviceRig(tmp_path / "rig", speaker_channels=channels)
    for k, v in rig.env.items():  # this test only: ALSA reads them at the next open
        monkeypatch.setenv(k, v)
    spk = rig.speaker(slack_periods=2)
    calls = iter(range(10**9))

    def source():
        i = next(calls)
        if i in stalls:
            time.sleep(stalls[i])
        return np.full(PERIOD, 1000, np.int16)

    kinds: list[str] = []
    loop = PlaybackLoop(rig.SPEAKER, source, None, on_xrun=kinds.append, probe=False)
    try:
        loop.start()
        time.sleep(seconds)
        assert loop.stop(timeout=2.0)
    finally:
        rig.close()
    return loop, spk, kinds


def test_rig_steady_playback_infers_nothing(tmp_path, monkeypatch):
    loop, spk, kinds = _rig_run(tmp_path, monkeypatch, {})
    assert kinds == [] and loop.inferred.count == 0
    assert loop.frames_written > 100


def test_rig_stall_past_the_buffer_is_reported_as_an_underrun(tmp_path, monkeypatch):
    """The writer stalls 200 ms: the rig's speaker plays silence it cannot report, the
    loop infers it and reports it like a card's underrun, with about its size."""
    loop, spk, kinds = _rig_run(tmp_path, monkeypatch, {100: 0.2})
    played = sum(n for _, n in spk.underruns)
    assert played > 0, "the rig played no silence: the stall was covered"
    assert kinds == ["underrun_inferred"]
    assert abs(loop.inferred.samples - played) <= 3 * PERIOD
