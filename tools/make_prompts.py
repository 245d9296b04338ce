"""Render the spoken prompts the unit plays on its own (no service needed) into
``device/voxbox/prompts/*.wav`` (16-bit mono, 24 kHz) with espeak-ng.

    .venv/bin/python tools/make_prompts.py

Run at build time; the WAVs are committed so a unit needs no speech synthesiser.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soxr

from voxbox.audio.speech import render_speech
from voxbox.audio.wavfile import write_wav

PROMPTS = {
    "offline": "I can't reach the service right now. I'll keep trying.",
    "error": "I can't use the service: this unit needs attention.",
    "session_lost": "Sorry, I lost the connection. Please say that again.",
}
VOICE = "en-us+f3"


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "device" / "voxbox" / "prompts"
    out.mkdir(exist_ok=True)
    for name, text in PROMPTS.items():
        x = render_speech(text, VOICE, rate_wpm=165).astype(np.float32)
        y = soxr.resample(x, 16000, 24000)
        y *= (10 ** (-6 / 20) * 32767) / max(1.0, float(np.max(np.abs(y))))  # peak -6 dBFS
        write_wav(out / f"{name}.wav", np.round(y).astype(np.int16), 24000)
        print(f"{name}: {y.size / 24000:.2f} s  {text!r}")


if __name__ == "__main__":
    main()
