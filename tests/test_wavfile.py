"""``voxbox.audio.wavfile``: the package's one WAV reader/writer."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import write_raw_wav
from voxbox.audio.wavfile import WavError, read_pcm16_mono, read_wav, write_wav


def test_read_pcm16_mono_round_trips_write_wav(tmp_path):
    x = (np.arange(-800, 800, dtype=np.int16) * 37).astype(np.int16)
    write_wav(tmp_path / "x.wav", x, 24000)
    y, rate = read_pcm16_mono(tmp_path / "x.wav", "x")
    assert rate == 24000 and y.dtype == np.int16 and y.shape == x.shape
    assert np.array_equal(y, x)
    y[0] = 1  # a copy, writable, not a view of the file's buffer
    w = read_wav(tmp_path / "x.wav", "x")
    assert w.width == 2 and w.channels == 1 and np.array_equal(w.pcm[:, 0], x)


def test_read_pcm16_mono_rejects_other_widths_and_channels_naming_the_file(tmp_path):
    p8 = write_raw_wav(tmp_path / "u8.wav", bytes(range(100)), 16000, 1, 1)
    with pytest.raises(WavError, match=r"^--mic u8: expected 16-bit PCM, got 8-bit samples$"):
        read_pcm16_mono(p8, "--mic u8")
    p24 = write_raw_wav(tmp_path / "s24.wav", bytes(300), 16000, 3, 1)
    with pytest.raises(WavError, match=r"expected 16-bit PCM, got 24-bit samples"):
        read_pcm16_mono(p24, "s24")
    st = write_raw_wav(tmp_path / "st.wav", np.zeros(200, "<i2").tobytes(), 16000, 2, 2)
    with pytest.raises(WavError, match=r"^st: expected mono, got 2 channels$"):
        read_pcm16_mono(st, "st")
    with pytest.raises(WavError, match=r"^nope: not found$"):
        read_pcm16_mono(tmp_path / "nope.wav", "nope")
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all")
    with pytest.raises(WavError, match=r"^junk: not a PCM WAV file"):
        read_pcm16_mono(tmp_path / "junk.wav", "junk")
