"""Tests for the ctypes binding of libspeexdsp (voxbox.dsp.speexdsp)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from voxbox.dsp import speexdsp
from voxbox.dsp.speexdsp import EchoCanceller, Preprocessor, SpeexDSPError

SR = 16000  # Hz
FRAME = 256  # samples
FILTER = 3200  # samples (200 ms)


from synth import power, room_ir, speechlike  # noqa: E402  (tests/ is on sys.path)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def run_aec(mic: np.ndarray, ref: np.ndarray, frame: int = FRAME) -> np.ndarray:
    out = np.empty(len(mic) // frame * frame, dtype=np.int16)
    with EchoCanceller(frame, FILTER, SR) as ec:
        for i in range(0, len(out), frame):
            ec.cancel(mic[i : i + frame], ref[i : i + frame], out=out[i : i + frame])
    return out


# -- library loading -------------------------------------------------------------------
def test_error_is_oserror() -> None:
    assert issubclass(SpeexDSPError, OSError)


def test_missing_library_names_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speexdsp, "_lib", None)
    monkeypatch.setattr(speexdsp.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(speexdsp, "LIBRARY_FALLBACK", "libspeexdsp-does-not-exist.so.9")
    with pytest.raises(SpeexDSPError) as info:
        EchoCanceller(FRAME, FILTER, SR)
    msg = str(info.value)
    assert "libspeexdsp" in msg and "libspeexdsp1" in msg
    with pytest.raises(SpeexDSPError):
        Preprocessor(FRAME, SR)


def test_library_loads() -> None:
    lib = speexdsp.load_library()
    assert lib is speexdsp.load_library()


# -- lifecycle -----------------------------------------------------------------------------
def test_create_destroy_does_not_leak() -> None:
    """A leaked echo+preprocessor pair costs ~136 KiB, so 2000 leaks would be ~270 MB."""
    x = np.zeros(FRAME, dtype=np.int16)

    def cycle(i: int) -> None:
        if i % 3 == 0:  # explicit close
            ec, pp = EchoCanceller(FRAME, FILTER, SR), Preprocessor(FRAME, SR)
            pp.link_echo(ec)
            pp.run(ec.cancel(x, x))
            ec.close()  # closing the canceller first must unlink it
            pp.close()
        elif i % 3 == 1:  # context managers
            with EchoCanceller(FRAME, FILTER, SR) as ec, Preprocessor(FRAME, SR) as pp:
                pp.link_echo(ec)
                pp.run(ec.cancel(x, x))
        else:  # finalizers only
            ec, pp = EchoCanceller(FRAME, FILTER, SR), Preprocessor(FRAME, SR)
            pp.link_echo(ec)
            pp.run(ec.cancel(x, x))
            del ec, pp

    for i in range(100):  # warm up allocator and caches
        cycle(i)
    gc.collect()
    before = rss_bytes()
    for i in range(2000):
        cycle(i)
    gc.collect()
    grown = rss_bytes() - before
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 2000 cycles"


def test_close_is_idempotent_and_blocks_use() -> None:
    ec = EchoCanceller(FRAME, FILTER, SR)
    pp = Preprocessor(FRAME, SR)
    ec.close()
    ec.close()
    pp.close()
    pp.close()
    assert ec.closed and pp.closed
    x = np.zeros(FRAME, dtype=np.int16)
    with pytest.raises(ValueError, match="closed"):
        ec.cancel(x, x)
    with pytest.raises(ValueError, match="closed"):
        ec.reset()
    with pytest.raises(ValueError, match="closed"):
        pp.run(x)
    with pytest.raises(ValueError, match="closed"):
        pp.denoise = True


@pytest.mark.parametrize(
    "args", [(0, FILTER, SR), (FRAME, 0, SR), (FRAME, FILTER, -1), (FRAME, FILTER, 16000.0)]
)
def test_constructor_rejects_bad_arguments(args: tuple) -> None:
    with pytest.raises(ValueError):
        EchoCanceller(*args)


# -- argument checking ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, fragment",
    [
        (np.zeros(FRAME - 1, dtype=np.int16), "got (255,)"),
        (np.zeros(160, dtype=np.int16), "got (160,)"),
        (np.zeros((2, FRAME), dtype=np.int16), "got (2, 256)"),
        (np.zeros(FRAME, dtype=np.float32), "got float32"),
        (np.zeros(FRAME, dtype=np.int32), "got int32"),
        ([0] * FRAME, "got list"),
    ],
)
def test_cancel_rejects_wrong_frames(bad: object, fragment: str) -> None:
    good = np.zeros(FRAME, dtype=np.int16)
    with EchoCanceller(FRAME, FILTER, SR) as ec:
        for args in ((bad, good), (good, bad)):
            with pytest.raises(ValueError) as info:
                ec.cancel(*args)  # type: ignore[arg-type]
            assert fragment in str(info.value)
            if "got (" in fragment:
                assert "expected shape (256,)" in str(info.value)
        with pytest.raises(ValueError, match=r"expected shape \(256,\)"):
            ec.cancel(good, good, out=np.zeros(FRAME + 1, dtype=np.int16))


def test_preprocessor_rejects_wrong_frames() -> None:
    with Preprocessor(FRAME, SR) as pp:
        with pytest.raises(ValueError, match=r"expected shape \(256,\), got \(160,\)"):
            pp.run(np.zeros(160, dtype=np.int16))
        with pytest.raises(ValueError, match="int16"):
            pp.run(np.zeros(FRAME, dtype=np.float64))
        ro = np.zeros(FRAME, dtype=np.int16)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="writable"):
            pp.run(ro)
        with pytest.raises(ValueError, match="writable"):
            pp.run(np.zeros(2 * FRAME, dtype=np.int16)[::2])


def test_cancel_accepts_strided_input_and_out_buffer() -> None:
    rng = np.random.default_rng(0)
    mic = (rng.standard_normal(2 * FRAME) * 3000).astype(np.int16)
    ref = (rng.standard_normal(FRAME) * 3000).astype(np.int16)
    with EchoCanceller(FRAME, FILTER, SR) as a, EchoCanceller(FRAME, FILTER, SR) as b:
        r1 = a.cancel(np.ascontiguousarray(mic[::2]), ref)
        out = np.empty(FRAME, dtype=np.int16)
        r2 = b.cancel(mic[::2], ref, out=out)
        assert r2 is out
        assert r1.dtype == np.int16 and r1.shape == (FRAME,)
        assert np.array_equal(r1, r2)


def test_cancel_in_place_matches_out_of_place() -> None:
    rng = np.random.default_rng(1)
    with EchoCanceller(FRAME, FILTER, SR) as a, EchoCanceller(FRAME, FILTER, SR) as b:
        for _ in range(50):
            m = (rng.standard_normal(FRAME) * 3000).astype(np.int16)
            r = (rng.standard_normal(FRAME) * 3000).astype(np.int16)
            m2 = m.copy()
            assert np.array_equal(a.cancel(m, r), b.cancel(m2, r, out=m2))


# -- preprocessor settings and echo link ---------------------------------------------------
def test_preprocessor_settings_round_trip() -> None:
    with Preprocessor(FRAME, SR) as pp:
        pp.denoise = True
        pp.noise_suppress = -25
        pp.echo_suppress = -60
        pp.echo_suppress_active = -30
        pp.agc = True
        pp.agc_level = 12000
        assert (pp.denoise, pp.noise_suppress, pp.echo_suppress, pp.echo_suppress_active) == (
            True, -25, -60, -30,
        )
        assert pp.agc is True and pp.agc_level == pytest.approx(12000)
        pp.agc = False
        assert pp.agc is False
        assert pp.vad is False
        pp.vad = True
        assert pp.vad is True
        for name in ("noise_suppress", "echo_suppress", "echo_suppress_active"):
            with pytest.raises(ValueError, match=name):
                setattr(pp, name, 10)
        with pytest.raises(ValueError, match="agc_level"):
            pp.agc_level = 0


def test_run_returns_vad_flag() -> None:
    x = (speechlike(SR * 2, seed=3) * 10000).astype(np.int16)
    with Preprocessor(FRAME, SR) as pp:
        assert pp.run(np.zeros(FRAME, dtype=np.int16)) is True  # VAD off: always True
        pp.vad = True
        flags = []
        for i in range(0, len(x) - FRAME + 1, FRAME):
            flags.append(pp.run(x[i : i + FRAME].copy()))
        for _ in range(40):
            flags.append(pp.run(np.zeros(FRAME, dtype=np.int16)))
        assert all(isinstance(f, bool) for f in flags)
        assert not flags[-1]  # digital silence is not speech
        assert 0 <= pp.speech_probability <= 100


def test_link_echo_checks_and_unlinks_on_close() -> None:
    ec = EchoCanceller(FRAME, FILTER, SR)
    with Preprocessor(160, SR) as other:
        with pytest.raises(ValueError, match="frame_size"):
            other.link_echo(ec)
    with Preprocessor(FRAME, 8000) as other:
        with pytest.raises(ValueError, match="sample_rate"):
            other.link_echo(ec)
    pp = Preprocessor(FRAME, SR)
    pp.denoise = True
    pp.link_echo(ec)
    assert pp.echo is ec
    x = np.zeros(FRAME, dtype=np.int16)
    pp.run(ec.cancel(x, x))
    ec.close()
    assert pp.echo is None  # the canceller unlinked itself: no dangling echo state
    pp.run(x)
    pp.link_echo(None)
    pp.close()


# -- echo cancellation ---------------------------------------------------------------------
def test_echo_canceller_reduces_synthetic_echo() -> None:
    n = SR * 12
    ref = speechlike(n, seed=10) * 12000
    echo = np.convolve(ref, room_ir(seed=11, delay_ms=5))[:n]
    noise = np.random.default_rng(12).standard_normal(n) * 10
    mic = np.clip(echo + noise, -32768, 32767).astype(np.int16)
    out = run_aec(mic, ref.astype(np.int16))
    s = slice(8 * SR, 12 * SR)  # after convergence
    erle = 10 * np.log10(power(mic[s]) / power(out[s]))
    print(f"EchoCanceller ERLE {erle:.1f} dB")
    assert erle > 15.0


def test_echo_canceller_passes_near_end() -> None:
    n = SR * 8
    near = (speechlike(n, seed=20) * 8000).astype(np.int16)
    ref = (np.random.default_rng(21).standard_normal(n) * 300).astype(np.int16)  # no echo
    out = run_aec(near, ref)
    s = slice(2 * SR, len(out))
    loss = 10 * np.log10(power(near[s]) / power(out[s]))
    print(f"near-end loss {loss:.2f} dB")
    assert abs(loss) < 2.0
    # no added delay: output is the input (minus DC / tiny filter residue)
    corr = np.dot(out[s].astype(float), near[s].astype(float)) / np.sqrt(
        power(out[s]) * power(near[s])
    ) / len(out[s])
    assert corr > 0.9


def test_reset_restarts_adaptation() -> None:
    n = SR * 4
    ref = (speechlike(n, seed=30) * 12000).astype(np.int16)
    mic = np.convolve(ref.astype(float), room_ir(seed=31))[:n].astype(np.int16)
    with EchoCanceller(FRAME, FILTER, SR) as ec:
        first = [ec.cancel(mic[i : i + FRAME], ref[i : i + FRAME]) for i in range(0, n - FRAME + 1, FRAME)]
        ec.reset()
        again = [ec.cancel(mic[i : i + FRAME], ref[i : i + FRAME]) for i in range(0, n - FRAME + 1, FRAME)]
    # after reset the canceller starts from scratch: the early frames leak echo again
    early = slice(0, 10)
    assert power(np.concatenate(again[early])) > 10 * power(np.concatenate(first[-10:]))
