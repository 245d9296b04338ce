"""A closed acoustic loop for the real daemon: what the unit plays comes back into its
microphone through a room and a loudspeaker, in real time (shared by the end-to-end test
and the closed-loop benchmark).

- Room: a pyroomacoustics image-source impulse response, speaker to microphone, at 16 kHz
  (the flight time included; pyroomacoustics' 40-sample fractional-delay offset removed).
- Loudspeaker: a soft clipper at its drive level (``tanh``), plus a small even-order term.
- Levels: the echo is set relative to the user's voice at the microphone (dB; "+6 dB" =
  the echo of the reply is 6 dB louder than the user), both as RMS over active 10 ms
  frames, computed offline through the same room and loudspeaker.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

SR = 16000


@dataclass(frozen=True)
class EchoRoom:
    """One room: ``dims`` (m), ``rt60`` (s), speaker-microphone ``distance_m``,
    loudspeaker ``drive`` (tanh input gain: 1 = mild, 3 = strong distortion) and the
    system ``delay_ms`` (playback + capture buffering the echo adds after the speaker)."""

    name: str
    dims: tuple[float, float, float]
    rt60: float
    distance_m: float
    drive: float
    delay_ms: float
    seed: int = 0


CAR = EchoRoom("car", (2.4, 1.5, 1.2), 0.15, 0.15, 1.5, 20.0, seed=3)


@functools.lru_cache(maxsize=16)
def room_ir(room: EchoRoom) -> np.ndarray:
    """The speaker-to-microphone impulse response of ``room`` at 16 kHz, float64, peak-free
    of pyroomacoustics' fixed offset."""
    import pyroomacoustics as pra

    rng = np.random.default_rng(room.seed)
    e_abs, max_order = pra.inverse_sabine(room.rt60, list(room.dims))
    r = pra.ShoeBox(list(room.dims), fs=SR, materials=pra.Material(e_abs), max_order=min(max_order, 40))
    mic = np.array([room.dims[0] * rng.uniform(0.35, 0.65), room.dims[1] * rng.uniform(0.3, 0.7),
                    room.dims[2] * rng.uniform(0.55, 0.75)])
    v = rng.normal(size=3)
    v /= np.linalg.norm(v)
    spk = mic + room.distance_m * v
    spk = np.clip(spk, 0.05, np.array(room.dims) - 0.05)
    r.add_source(spk)
    r.add_microphone(mic)
    r.compute_rir()
    h = np.asarray(r.rir[0][0], dtype=np.float64)
    off = pra.constants.get("frac_delay_length") // 2
    return h[off:].copy()


def loudspeaker(drive: float):
    """The loudspeaker's nonlinearity for ``drive`` (a callable on float samples)."""

    def nl(x: np.ndarray) -> np.ndarray:
        y = np.tanh(drive * x) / np.tanh(drive)
        return y + 0.02 * y * y
    return nl


def active_rms_db(x: np.ndarray, frame: int = 160, within_db: float = 30.0) -> float:
    """RMS over 10 ms frames within ``within_db`` of the loudest frames, dBFS (int16)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x) // frame
    p = np.mean(x[:n * frame].reshape(n, frame) ** 2, axis=1) + 1e-9
    top = np.percentile(p, 95)
    act = p[p >= top * 10 ** (-within_db / 10)]
    return float(10 * np.log10(np.mean(act) / 32768.0 ** 2))


def echo_gain_db(reply16: np.ndarray, room: EchoRoom, user_dbfs: float, echo_rel_db: float) -> float:
    """The rig's echo gain (dB) that puts the echo of ``reply16`` (what the speaker plays,
    resampled to 16 kHz) ``echo_rel_db`` above a user speaking at ``user_dbfs``."""
    from scipy.signal import oaconvolve

    v = loudspeaker(room.drive)(np.asarray(reply16, dtype=np.float64) / 32768.0)
    e = oaconvolve(v, room_ir(room)) * 32768.0
    return user_dbfs + echo_rel_db - active_rms_db(e)


def to24k(x16: np.ndarray) -> np.ndarray:
    import soxr

    return soxr.resample(np.asarray(x16, dtype=np.int16), SR, 24000).astype(np.int16)
