"""Tests for the capture front end (voxbox.dsp.frontend): re-framing, latency, determinism,
echo reduction and near-end transparency."""

from __future__ import annotations

import dataclasses
import time
import tracemalloc

import numpy as np
import pytest

from voxbox.dsp.frontend import CaptureFrontEnd, FrontEndSettings
from voxbox.dsp.res import ResSettings

SR = 16000  # Hz
BLOCK = 160  # samples (10 ms, the capture period)


from synth import power, room_ir, speechlike  # noqa: E402  (tests/ is on sys.path)


def echo_scene(seconds: int, seed: int, near_from_s: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mic, ref, near) int16: echo of a speech-like far end, optional near-end talker."""
    n = SR * seconds
    ref = speechlike(n, seed) * 12000
    mic = np.convolve(ref, room_ir(seed + 1))[:n] + np.random.default_rng(seed + 2).standard_normal(n) * 10
    near = np.zeros(n)
    if near_from_s is not None:
        start = int(near_from_s * SR)
        near[start:] = speechlike(n - start, seed + 3) * 6000
    mic = np.clip(mic + near, -32768, 32767)
    return mic.astype(np.int16), ref.astype(np.int16), near.astype(np.int16)


def stream(fe: CaptureFrontEnd, mic: np.ndarray, ref: np.ndarray, blocks: tuple[int, ...] = (BLOCK,)) -> np.ndarray:
    outs, i, k = [], 0, 0
    while i < len(mic):
        b = blocks[k % len(blocks)]
        out = fe.process(mic[i : i + b], ref[i : i + b])
        assert out.dtype == np.int16 and out.shape == (len(mic[i : i + b]),)
        outs.append(out)
        i, k = i + b, k + 1
    return np.concatenate(outs)


def best_lag(y: np.ndarray, x: np.ndarray) -> int:
    """Lag (samples) maximising |xcorr| of y against x (y delayed by lag > 0)."""
    n = len(x) + len(y)
    c = np.fft.irfft(np.fft.rfft(y.astype(float), n) * np.conj(np.fft.rfft(x.astype(float), n)), n)
    lag = int(np.argmax(np.abs(c)))
    return lag if lag < len(y) else lag - n


# -- settings -----------------------------------------------------------------------------
def test_the_daemons_default_config_runs_the_front_end_the_benches_measure() -> None:
    """Each tuning default is written twice, in ``voxbox.config.FrontEnd`` (the daemon's)
    and in ``FrontEndSettings`` (the benches' and ``voxbox dsp``'s): a default changed in
    one place only would leave the benches' figures describing a front end no unit runs."""
    from voxbox.config import parse_config
    from voxbox.dsp.frontend import frontend_settings

    assert frontend_settings(parse_config({"realtime": {"url": "local"}})) == FrontEndSettings()


def test_settings_defaults_and_frozen() -> None:
    s = FrontEndSettings()
    assert (s.frame_size, s.filter_ms, s.noise_suppress_db, s.echo_suppress_db) == (256, 200, -25, -60)
    assert (s.echo_suppress_active_db, s.agc, s.sample_rate) == (-2, False, 16000)
    assert (s.residual_echo, s.highpass_hz, s.res) == (True, 0, ResSettings())
    assert s.filter_length == 3200
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.frame_size = 160  # type: ignore[misc]


@pytest.mark.parametrize(
    "field, value",
    [("frame_size", 0), ("filter_ms", -5), ("sample_rate", 0), ("noise_suppress_db", 5),
     ("echo_suppress_db", 1), ("echo_suppress_active_db", 3), ("frame_size", 256.0), ("agc", 1),
     ("residual_echo", 1), ("res", {"floor_db": -40}), ("highpass_hz", -1), ("highpass_hz", 8000),
     ("highpass_hz", 80.0)],
)
def test_settings_validation_names_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        FrontEndSettings(**{field: value})


# -- re-framing, latency, determinism --------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 100, 160, 255, 256, 257, 1000, 4096])
def test_process_returns_exactly_n_samples(n: int) -> None:
    rng = np.random.default_rng(n)
    with CaptureFrontEnd() as fe:
        for _ in range(5):
            mic = (rng.standard_normal(n) * 1000).astype(np.int16)
            out = fe.process(mic, np.zeros(n, dtype=np.int16))
            assert out.dtype == np.int16 and out.shape == (n,)
        assert fe.samples_processed == 5 * n
        assert fe.frames_processed == 5 * n // 256


def test_latency_is_fixed_and_reported() -> None:
    mic = (speechlike(SR * 4, seed=40) * 8000).astype(np.int16)  # near end only
    ref = np.zeros_like(mic)
    with CaptureFrontEnd() as fe:
        # re-framing + preprocessor + residual echo suppressor
        assert fe.latency_samples == 3 * 256 - 1
        out = stream(fe, mic, ref)
    assert not out[: fe.reframe_latency_samples].any()  # primed zeros
    assert best_lag(out, mic) == fe.latency_samples


@pytest.mark.parametrize("kw, latency", [({"residual_echo": False}, 2 * 256 - 1),
                                         ({"residual_echo": False, "highpass_hz": 100}, 2 * 256 - 1),
                                         ({"highpass_hz": 100}, 3 * 256 - 1)])
def test_latency_with_stages_switched(kw: dict, latency: int) -> None:
    mic = (speechlike(SR * 3, seed=41) * 8000).astype(np.int16)
    with CaptureFrontEnd(FrontEndSettings(**kw)) as fe:
        assert fe.latency_samples == latency
        out = stream(fe, mic, np.zeros_like(mic))
    assert best_lag(out, mic) == latency


def test_bit_identical_repeated_runs_and_reset() -> None:
    mic, ref, _ = echo_scene(6, seed=50, near_from_s=3.0)
    with CaptureFrontEnd() as a, CaptureFrontEnd() as b:
        first = stream(a, mic, ref)
        assert np.array_equal(first, stream(b, mic, ref))
        a.reset()
        assert a.frames_processed == 0 and a.samples_processed == 0
        assert np.array_equal(first, stream(a, mic, ref))


def test_output_independent_of_block_size() -> None:
    """The daemon (10 ms blocks) and an offline tool (any chunks) agree bit for bit."""
    mic, ref, _ = echo_scene(5, seed=60, near_from_s=2.0)
    with CaptureFrontEnd() as a, CaptureFrontEnd() as b, CaptureFrontEnd() as c:
        blocks = stream(a, mic, ref)
        odd = stream(b, mic, ref, blocks=(1, 7, 333, 160, 4096, 255))
        whole = c.process(mic, ref)
    assert np.array_equal(blocks, odd)
    assert np.array_equal(blocks, whole)


@pytest.mark.parametrize("kw", [{"highpass_hz": 100}, {"residual_echo": False}, {"agc": True, "highpass_hz": 80}])
def test_output_independent_of_block_size_all_stages(kw: dict) -> None:
    mic, ref, _ = echo_scene(4, seed=61, near_from_s=2.0)
    s = FrontEndSettings(**kw)
    with CaptureFrontEnd(s) as a, CaptureFrontEnd(s) as b:
        blocks = stream(a, mic, ref)
        odd = stream(b, mic, ref, blocks=(1, 7, 333, 160, 4096, 255))
        a.reset()
        again = a.process(mic, ref)
    assert np.array_equal(blocks, odd)
    assert np.array_equal(blocks, again)


def test_residual_echo_stage_adds_suppression() -> None:
    """A distorting loudspeaker leaves a residual the linear canceller cannot remove."""
    n = SR * 12
    ref = (speechlike(n, 81) * 16000).astype(np.int16)
    u = ref / 32768.0
    played = (np.tanh(2.0 * u) / 2.0 + 0.1 * u * u) * 32768.0
    noise = np.random.default_rng(82).standard_normal(n) * 3
    mic = np.clip(np.convolve(played, room_ir(83))[:n] + noise, -32768, 32767).astype(np.int16)
    outs = {}
    for on in (False, True):
        with CaptureFrontEnd(FrontEndSettings(residual_echo=on)) as fe:
            outs[on] = (stream(fe, mic, ref), fe.latency_samples)
    s = slice(8 * SR, 12 * SR - 1024)
    erle = {on: 10 * np.log10(power(mic[s]) / max(power(o[lat:][s]), 1e-3)) for on, (o, lat) in outs.items()}
    print(f"ERLE without / with the residual echo suppressor: {erle[False]:.1f} / {erle[True]:.1f} dB")
    assert erle[True] > erle[False] + 3.0


def test_rejects_wrong_inputs() -> None:
    good = np.zeros(BLOCK, dtype=np.int16)
    with CaptureFrontEnd() as fe:
        with pytest.raises(ValueError, match="int16"):
            fe.process(good.astype(np.float32), good)
        with pytest.raises(ValueError, match="int16"):
            fe.process(good, good.astype(np.int32))
        with pytest.raises(ValueError, match=r"expected shape \(n,\), got \(2, 80\)"):
            fe.process(good.reshape(2, 80), good)
        with pytest.raises(ValueError, match=r"expected shape \(160,\).*got \(159,\)"):
            fe.process(good, good[:159])
        with pytest.raises(ValueError, match="ndarray"):
            fe.process([0] * BLOCK, good)  # type: ignore[arg-type]
        assert fe.samples_processed == 0


def test_close_idempotent_and_blocks_use() -> None:
    fe = CaptureFrontEnd()
    fe.close()
    fe.close()
    assert fe.closed
    x = np.zeros(BLOCK, dtype=np.int16)
    with pytest.raises(ValueError, match="closed"):
        fe.process(x, x)
    with pytest.raises(ValueError, match="closed"):
        fe.reset()


def test_no_per_block_allocation_growth() -> None:
    mic, ref, _ = echo_scene(2, seed=70)
    with CaptureFrontEnd() as fe:
        stream(fe, mic, ref)  # warm up
        tracemalloc.start()
        try:
            base = tracemalloc.take_snapshot()
            for i in range(0, len(mic), BLOCK):
                fe.process(mic[i : i + BLOCK], ref[i : i + BLOCK])
            grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
        finally:
            tracemalloc.stop()
    assert grown < 16 * 1024, f"{grown} bytes retained after 200 blocks"


# -- audio quality -------------------------------------------------------------------------
def test_echo_reduced_after_convergence() -> None:
    mic, ref, _ = echo_scene(12, seed=80)
    with CaptureFrontEnd() as fe:
        out = stream(fe, mic, ref)
        lat = fe.latency_samples
    s = slice(8 * SR, 12 * SR - lat)
    erle = 10 * np.log10(power(mic[s]) / max(power(out[lat:][s]), 1e-3))
    print(f"front end ERLE {erle:.1f} dB")
    assert erle > 20.0  # AEC alone gives > 15 dB; the linked preprocessor adds more


def test_near_end_only_passes() -> None:
    n = SR * 8
    near = (speechlike(n, seed=90) * 8000).astype(np.int16)
    ref = np.zeros(n, dtype=np.int16)
    with CaptureFrontEnd() as fe:
        out = stream(fe, near, ref)
        lat = fe.latency_samples
    s = slice(2 * SR, n - lat)
    loss = 10 * np.log10(power(near[s]) / power(out[lat:][s]))
    print(f"near-end loss {loss:.2f} dB")
    assert loss < 6.0


def test_double_talk_keeps_near_end() -> None:
    mic, ref, near = echo_scene(14, seed=100, near_from_s=8.0)
    with CaptureFrontEnd() as fe:
        out = stream(fe, mic, ref)
        lat = fe.latency_samples
    s = slice(10 * SR, 14 * SR - lat)
    y, x = out[lat:][s].astype(float), near[s].astype(float)
    corr = float(np.dot(y, x) / np.sqrt(np.dot(y, y) * np.dot(x, x)))
    loss = 10 * np.log10(power(near[s]) / power(out[lat:][s]))
    print(f"double talk: corr {corr:.3f}, near-end loss {loss:.2f} dB")
    assert corr > 0.7
    assert loss < 10.0


# -- on-demand benchmark -------------------------------------------------------------------
@pytest.mark.benchmark
def test_benchmark_cpu_per_audio_second() -> None:
    mic, ref, _ = echo_scene(60, seed=110, near_from_s=30.0)
    with CaptureFrontEnd() as fe:
        t0 = time.process_time()
        stream(fe, mic, ref)
        cpu = time.process_time() - t0
    print(f"CaptureFrontEnd: {cpu / 60:.5f} CPU s per audio s ({BLOCK}-sample blocks)")


# -- wake tap (second output before the residual echo suppressor) ------------------------
def stream_tap(fe: CaptureFrontEnd, mic: np.ndarray, ref: np.ndarray,
               blocks: tuple[int, ...] = (BLOCK,)) -> tuple[np.ndarray, np.ndarray]:
    outs, taps, i, j = [], [], 0, 0
    while i < mic.shape[0]:
        n = blocks[j % len(blocks)]
        outs.append(fe.process(mic[i : i + n], ref[i : i + n]))
        assert fe.wake_tap is not None and fe.wake_tap.dtype == np.int16
        assert fe.wake_tap.shape == outs[-1].shape
        taps.append(fe.wake_tap)
        i += n
        j += 1
    return np.concatenate(outs), np.concatenate(taps)


@pytest.mark.parametrize("tap", ["aec", "pp"])
def test_wake_tap_leaves_main_output_unchanged(tap: str) -> None:
    mic, ref, _ = echo_scene(5, seed=70, near_from_s=2.0)
    with CaptureFrontEnd() as plain, CaptureFrontEnd(wake_tap=tap) as tapped:
        assert plain.wake_tap is None
        main = stream(plain, mic, ref)
        out, _ = stream_tap(tapped, mic, ref)
        assert tapped.latency_samples == plain.latency_samples
    assert np.array_equal(main, out)


@pytest.mark.parametrize("tap, kw", [("aec", {}), ("pp", {}), ("aec", {"residual_echo": False}),
                                     ("pp", {"residual_echo": False}), ("aec", {"highpass_hz": 100})])
def test_wake_tap_block_size_independent_and_deterministic(tap: str, kw: dict) -> None:
    mic, ref, _ = echo_scene(4, seed=71, near_from_s=2.0)
    s = FrontEndSettings(**kw)
    with CaptureFrontEnd(s, wake_tap=tap) as a, CaptureFrontEnd(s, wake_tap=tap) as b:
        o1, t1 = stream_tap(a, mic, ref)
        o2, t2 = stream_tap(b, mic, ref, blocks=(1, 7, 333, 160, 4096, 255))
        a.reset()
        assert a.wake_tap is None
        o3 = a.process(mic, ref)
        t3 = a.wake_tap
    assert np.array_equal(o1, o2) and np.array_equal(o1, o3)
    assert np.array_equal(t1, t2) and np.array_equal(t1, t3)
    assert not np.array_equal(t1, o1) or not s.residual_echo and tap == "pp"


@pytest.mark.parametrize("tap", ["aec", "pp"])
def test_wake_tap_latency_matches_main_output(tap: str) -> None:
    """The tap is delayed to the main output's latency: the two streams are aligned."""
    mic = (speechlike(SR * 3, seed=72) * 8000).astype(np.int16)  # near end only
    with CaptureFrontEnd(wake_tap=tap) as fe:
        out, t = stream_tap(fe, mic, np.zeros_like(mic))
        lat = fe.latency_samples
    assert best_lag(t, mic) == lat
    assert not t[: fe.reframe_latency_samples].any()
    if tap == "aec":  # no far end: the canceller passes the microphone through (DC notch aside)
        seg = slice(lat + SR, lat + 2 * SR)
        assert np.corrcoef(t[seg].astype(float), mic[SR : 2 * SR].astype(float))[0, 1] > 0.95


def test_wake_tap_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="wake_tap"):
        CaptureFrontEnd(wake_tap="res")


def test_the_observer_hears_the_detection_track_not_the_uplink() -> None:
    """The near-end (barge-in) detector gets the residual echo suppressor's detection
    track: frame for frame what a front end whose one track has that tuning
    (``res_detect``) puts out, statistic included, while the uplink differs in double
    talk (the main track keeps more of the near end)."""
    mic, ref, _ = echo_scene(8, seed=71, near_from_s=4.0)
    seen: dict[str, list] = {"two": [], "one": []}

    def recorder(key: str):
        return lambda frame, ratio_db, far: seen[key].append((frame.copy(), ratio_db, far))

    two = CaptureFrontEnd()
    one = CaptureFrontEnd(dataclasses.replace(FrontEndSettings(), res=FrontEndSettings().res_detect))
    two.observer, one.observer = recorder("two"), recorder("one")
    with two, one:
        up_two, up_one = stream(two, mic, ref), stream(one, mic, ref)
    assert len(seen["two"]) == len(seen["one"]) > 0
    for (fa, ra, xa), (fb, rb, xb) in zip(seen["two"], seen["one"]):
        assert np.array_equal(fa, fb) and xa == xb and (ra == rb or not (np.isfinite(ra) or np.isfinite(rb)))
    assert not np.array_equal(up_two, up_one)


# -- realign: the canceller re-learns a moved reference line at once ------------------------
def _erle_after_move(realign: bool | None, shift: int = 320) -> float:
    """ERLE (dB) of the canceller's output (the wake tap) over the 0.6 s after the line
    moved by ``shift`` samples, the echo path itself unchanged: before the move the
    reference came ``shift`` samples too early (the line too short), after it, right.
    ``realign`` None: the line was right all along. Without the early retraining, which
    would also come in the first 3 s (it has tests of its own)."""
    mic, ref, _ = echo_scene(5, seed=90)
    tm = 3 * SR
    wrong = ref.copy()
    if realign is not None:  # before the move: wrong(t) = ref(t + shift); after it ref(t) = wrong(t - shift)
        wrong[:tm] = ref[shift : tm + shift]
    with CaptureFrontEnd(FrontEndSettings(early_retrain=False), wake_tap="aec") as fe:
        taps = []
        for i in range(0, mic.shape[0], BLOCK):
            if i == tm and realign:
                assert fe.realign(shift) > 0
            fe.process(mic[i : i + BLOCK], wrong[i : i + BLOCK])
            taps.append(fe.wake_tap)
        lat = fe.latency_samples
    tap = np.concatenate(taps)[lat:]
    s = slice(tm, tm + int(0.6 * SR))
    return 10 * np.log10(power(mic[s]) / max(power(tap[s]), 1e-3))


def test_realign_cancels_at_once_on_a_moved_line_as_if_it_had_been_right() -> None:
    """The filter learned the echo on a line 20 ms off; the line moves to the right one.
    Kept, the filter cancels nothing for a while; retrained on its recent input re-paired
    at the new line, it cancels like one that learned on the right line."""
    kept, realigned, right = _erle_after_move(False), _erle_after_move(True), _erle_after_move(None)
    print(f"ERLE 0-0.6 s after the move: kept {kept:.1f} dB, realigned {realigned:.1f} dB, right line {right:.1f} dB")
    assert kept < 6.0
    assert realigned > right - 3.0 and realigned > kept + 10.0


@pytest.mark.parametrize("shift", [-400, 0, 400])
def test_realign_keeps_its_history_on_the_new_line_and_its_output_ring(shift: int) -> None:
    """After a realign the history holds the re-paired frames (a later move re-pairs them
    again); the output stream keeps its length and latency; forget_history and reset
    empty the history; a closed front end refuses."""
    mic, ref, _ = echo_scene(3, seed=91)
    fe = CaptureFrontEnd()
    out = stream(fe, mic, ref)
    assert out.shape == mic.shape
    rows = fe._hist_mic.shape[0]
    n = fe.realign(shift)
    assert n == min(rows, (rows * fe.frame_size - abs(shift)) // fe.frame_size)
    assert fe.realign(-shift) == (n * fe.frame_size - abs(shift)) // fe.frame_size
    assert fe.process(mic[:BLOCK], ref[:BLOCK]).shape == (BLOCK,)
    job = fe.prepare_realign(shift)
    fe.forget_history()  # a device gap after the move: the retraining is stale
    job.run()
    assert fe.adopt(job) == -1 and job.canceller is None
    assert fe.realign(shift) == 0  # nothing to re-pair: the canceller starts afresh
    stream(fe, mic[: SR // 2], ref[: SR // 2])
    fe.reset()
    assert fe.realign(shift) == 0
    fe.close()
    with pytest.raises(ValueError, match="closed"):
        fe.realign(shift)


def test_a_retraining_run_elsewhere_catches_up_with_the_frames_since_the_move() -> None:
    """The daemon trains the new canceller off its capture thread while frames go on
    through the old one; at adopt the new one runs the frames since the move first, and
    cancels as well as one retrained on the spot."""
    shift = 320
    mic, ref, _ = echo_scene(5, seed=90)
    tm = 3 * SR
    wrong = ref.copy()
    wrong[:tm] = ref[shift : tm + shift]
    outs = {}
    for mode in ("now", "later"):
        with CaptureFrontEnd(wake_tap="aec") as fe:
            taps, job = [], None
            for i in range(0, mic.shape[0], BLOCK):
                if i == tm:
                    if mode == "now":
                        fe.realign(shift)
                    else:
                        job = fe.prepare_realign(shift)
                if job is not None and i == tm + 8 * BLOCK:  # 80 ms later
                    job.run()
                    assert fe.adopt(job) == 5  # 80 ms of 16 ms frames
                    job = None
                fe.process(mic[i : i + BLOCK], wrong[i : i + BLOCK])
                taps.append(fe.wake_tap)
            lat = fe.latency_samples
        outs[mode] = np.concatenate(taps)[lat:]
    s = slice(tm + int(0.2 * SR), tm + int(0.8 * SR))
    erle = {k: 10 * np.log10(power(mic[s]) / max(power(v[s]), 1e-3)) for k, v in outs.items()}
    print(f"ERLE 0.2-0.8 s after the move: {erle}")
    assert erle["later"] > erle["now"] - 2.0


# -- the early retraining of a young canceller ----------------------------------------------------
def _young_run(settings: FrontEndSettings, mic: np.ndarray, ref: np.ndarray, block: int = BLOCK):
    """(wake tap output aligned to the input, the sample at which the canceller stopped
    being young or None)."""
    with CaptureFrontEnd(settings, wake_tap="aec") as fe:
        taps, when, young = [], None, fe.young
        for i in range(0, mic.shape[0], block):
            fe.process(mic[i : i + block], ref[i : i + block])
            taps.append(fe.wake_tap)
            if when is None and young and not fe.young:
                when = i + block
        lat = fe.latency_samples
    return np.concatenate(taps)[lat:], when


def test_a_young_canceller_is_retrained_once_on_its_first_far_end() -> None:
    """Once it has 2 s of far end behind it, the canceller is retrained on them four times
    over, inside process(), once; it cancels better than the one that heard them once."""
    mic, ref, _ = echo_scene(6, seed=91)
    on, when = _young_run(FrontEndSettings(), mic, ref)
    off, never = _young_run(FrontEndSettings(early_retrain=False), mic, ref)
    assert never is None
    assert when is not None and 2.0 * SR <= when <= 2.6 * SR, when
    s = slice(when, when + int(1.5 * SR))
    erle = {k: 10 * np.log10(power(mic[s]) / max(power(v[s]), 1e-3)) for k, v in (("on", on), ("off", off))}
    print(f"retrained at {when / SR:.2f} s; canceller ERLE over the next 1.5 s: {erle}")
    assert erle["on"] > erle["off"] + 2.0


def test_no_early_retraining_while_the_user_talks_and_a_reset_makes_the_canceller_young() -> None:
    """A history with the user in it (the residual echo suppressor's double talk) is not
    trained on: the canceller would learn the voice as echo. reset() starts afresh."""
    mic, ref, _ = echo_scene(4, seed=92, near_from_s=0.5)
    with CaptureFrontEnd() as fe:
        stream(fe, mic, ref)
        assert fe.young and not fe.retrain_due
        fe.reset()
        mic, ref, _ = echo_scene(4, seed=92)
        stream(fe, mic, ref)
        assert not fe.young
        fe.reset()
        assert fe.young and not fe.retrain_due


def test_a_canceller_that_learned_through_double_talk_is_not_retrained_late() -> None:
    """The user talks from the start, and the daemon (its near-end detector hearing them)
    never takes the early retraining; after ``EARLY_RETRAIN_MAX_FAR_S`` of far end the
    canceller has learned without it and is no longer young, so a quiet stretch later
    does not replace it with one trained on 2 s."""
    from voxbox.dsp.frontend import EARLY_RETRAIN_MAX_FAR_S

    secs = int(EARLY_RETRAIN_MAX_FAR_S) + 2
    mic, ref, _ = echo_scene(secs, seed=92, near_from_s=0.0)
    with CaptureFrontEnd() as fe:
        fe.early_retrain_inline = False
        young = []
        for i in range(0, mic.shape[0], SR):
            stream(fe, mic[i : i + SR], ref[i : i + SR])
            young.append(fe.young)
        assert young[0] and not young[-1]
        assert young.index(False) in (int(EARLY_RETRAIN_MAX_FAR_S) - 1, int(EARLY_RETRAIN_MAX_FAR_S))
        mic, ref, _ = echo_scene(3, seed=93)
        stream(fe, mic, ref)
        assert not fe.young and not fe.retrain_due


def test_the_early_retraining_replays_bit_for_bit_from_its_steps() -> None:
    """Taken inside process() or replayed from a recording's steps at the same frame
    (``run_frontend`` with ``early`` and ``adopt``), the output is the same; with steps
    and none of them, there is no retraining."""
    from voxbox.dsp.frontend import run_frontend

    mic, ref, _ = echo_scene(4, seed=93)
    f = FrontEndSettings().frame_size
    with CaptureFrontEnd() as fe:
        inline = run_frontend(fe, mic, ref, f)
    _, when = _young_run(FrontEndSettings(), mic, ref, block=f)
    assert when is not None
    with CaptureFrontEnd() as fe:
        replayed = run_frontend(fe, mic, ref, f, [(when, "early", 0), (when, "adopt", 0)])
    with CaptureFrontEnd() as fe:
        none = run_frontend(fe, mic, ref, f, [])
        assert fe.young
    assert np.array_equal(inline, replayed)
    assert not np.array_equal(inline, none)
