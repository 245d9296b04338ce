"""Simulated car and kiosk scenarios for the capture front-end benchmark (16 kHz).

Deterministic: pyroomacoustics' image-source method (no random ISM, no ray tracing),
seeded numpy generators, cached espeak-ng speech (``voxbox.audio.speech.render_speech``).

Echo path model (Hammerstein): far-end int16 (the reference the canceller gets) ->
mildly nonlinear loudspeaker (tanh soft clipping + a small 2nd-order term) -> small
loudspeaker's 2nd-order high-pass -> room impulse response speaker->mic -> system delay.
The reference always *leads* its echo: the echo reaches the microphone
``system_lead_ms`` (10-20 ms, the playback/capture buffering a real device has) plus
the acoustic flight time after the reference sample is handed to the canceller.
pyroomacoustics' fixed 40-sample fractional-delay offset is removed from every RIR so the
lead is exactly what the spec says.

Scenarios (ICASSP AEC-challenge style), each a :class:`Scenario`:
- ``fst``: far-end single talk (12 s), quiet background;
- ``epc``: far-end single talk with an echo-path change (the device is moved and turned
  in the room) at 6 s, 20 ms cross-fade between the two echo paths;
- ``dt``: double talk: far end for 12 s, near-end talker from 4 s on (the first 4 s
  let the canceller converge, as on a device that has been talking);
- ``nst``: near-end single talk in loud room noise (engine / babble), reference silent
  (the playback loop writes zeros), 2 s of noise before the talker starts.

Each room has deterministic placement variants (:func:`variant`): the device and the
talker moved by up to ``jitter_m`` per axis, other noise seeds, other sentences.

Levels (RMS over active 10 ms frames, dBFS re int16 full scale): echo at the microphone
``echo_dbfs``; near-end talker ``echo_dbfs + ser_db``; background noise ``bg_noise_dbfs``
in fst/epc/dt; ``noisy_snr_db`` below the near-end level in nst; microphone self-noise
(white) at ``self_noise_dbfs``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np
import pyroomacoustics as pra
from scipy.signal import butter, fftconvolve, lfilter

from voxbox.audio.speech import render_speech

__all__ = ["SR", "FRAME", "RoomSpec", "Scenario", "ROOMS", "variant", "scenarios", "room_irs", "active_rms"]

SR = 16_000  # Hz
FRAME = 160  # 10 ms analysis frame for levels and activity
_PRA_DELAY = pra.constants.get("frac_delay_length") // 2  # 40 samples added by pyroomacoustics

FAR_TEXTS = (
    "Sure. Tomorrow will start cloudy with light rain in the morning, clearing by the afternoon, with a high of eighteen degrees.",
    "I have added milk, eggs and two loaves of bread to your shopping list. Would you like me to remind you when you get to the store?",
    "The next train to the city centre leaves from platform four in twelve minutes. There is a short delay on the northern line.",
    "Here is a quick recipe. Fry the onions until golden, add the tomatoes and the spices, and let everything simmer for twenty minutes.",
    "Your meeting with the design team has been moved to Thursday at three o'clock. I have sent the new invitation to everyone.",
    "The museum is open every day except Monday, from ten in the morning until six in the evening. Entry is free on the first Sunday.",
)
NEAR_TEXTS = (
    "Can you find a charging station near the next exit, please?",
    "What time does the pharmacy on Main Street close tonight?",
    "Call my sister and tell her I will be twenty minutes late.",
    "Play something relaxing, and turn the volume down a little.",
    "How long will it take to get to the airport from here?",
    "Remind me to buy flowers on the way home tomorrow.",
)
BABBLE_TEXTS = (
    "We should meet at the cafe after the lecture if you have time.",
    "I think the blue one looks better, but the price is too high.",
    "Did you see the match last night? It went to extra time again.",
    "The printer on the second floor has been broken for a week now.",
    "My brother is moving to a new flat near the river next month.",
    "Could you hold the door? I have got too many bags to carry.",
    "They said the concert was sold out, so we watched a film instead.",
    "Let us take the early bus, the traffic gets terrible after eight.",
)
FAR_VOICE = "en-us+f3"  # the assistant's reply voice
NEAR_VOICE = "en-gb+m3"  # the user
BABBLE_VOICES = ("en-us+m1", "en-gb+f2", "en-us+m7", "en-gb-scotland+f4", "en-029+m2", "en-us+f5")


@dataclass(frozen=True)
class RoomSpec:
    """One simulated room with the device (loudspeaker + microphone) in it.

    Positions in metres; ``*_b`` are the device after the echo-path change.
    """

    name: str
    dims: tuple[float, float, float]
    rt60: float  # s, target (Sabine inversion, then one measured correction step)
    mic: tuple[float, float, float]
    speaker: tuple[float, float, float]
    mic_b: tuple[float, float, float]
    speaker_b: tuple[float, float, float]
    talker: tuple[float, float, float]
    noise_kind: str  # "engine" or "babble"
    system_lead_ms: float  # reference lead over the echo, on top of the flight time
    babble_sources: tuple[tuple[float, float, float], ...] = ()
    echo_dbfs: float = -24.0
    ser_db: float = -5.0  # near-end level re echo level (signal-to-echo ratio)
    bg_noise_dbfs: float = -64.0
    noisy_snr_db: float = 5.0
    self_noise_dbfs: float = -78.0
    far_dbfs: float = -20.0  # playback level of the far end (active RMS)
    seed: int = 0
    variant: int = 0  # 0 = the positions above; see variant()
    jitter_m: float = 0.05  # position jitter of variants > 0


ROOMS: tuple[RoomSpec, ...] = (
    RoomSpec(
        name="car",
        dims=(1.5, 1.4, 1.2),
        rt60=0.10,
        # device on the dashboard centre, loudspeaker 15 cm from the microphone
        mic=(0.25, 0.70, 0.80),
        speaker=(0.25, 0.85, 0.80),
        # moved 20 cm and turned 90 degrees (e.g. pushed into the cup holder area)
        mic_b=(0.40, 0.55, 0.70),
        speaker_b=(0.55, 0.55, 0.70),
        talker=(0.85, 0.40, 0.95),  # driver, ~0.7 m
        noise_kind="engine",
        system_lead_ms=12.0,
        seed=11,
    ),
    RoomSpec(
        name="kiosk",
        dims=(4.0, 3.0, 2.7),
        rt60=0.40,
        # kiosk unit 0.6 m off the wall, loudspeaker 20 cm beside the microphone
        mic=(0.60, 1.50, 1.40),
        speaker=(0.60, 1.70, 1.40),
        mic_b=(1.20, 2.20, 1.30),
        speaker_b=(1.40, 2.20, 1.30),
        talker=(1.60, 1.35, 1.60),  # customer, ~1.0 m
        noise_kind="babble",
        system_lead_ms=16.0,
        jitter_m=0.15,
        babble_sources=(
            (2.6, 0.6, 1.6),
            (3.4, 2.4, 1.5),
            (2.2, 2.6, 1.7),
            (3.6, 1.2, 1.6),
            (1.8, 0.4, 1.5),
            (3.0, 1.8, 1.2),
        ),
        seed=23,
    ),
)


def variant(spec: RoomSpec, k: int) -> RoomSpec:
    """Variant ``k`` of a room: ``k = 0`` is ``spec``; others move the device (mic and
    loudspeaker together, before and after the change) and the talker by up to
    ``jitter_m`` per axis, reseed the noise and rotate the sentences (deterministic)."""
    if k == 0:
        return spec
    rng = np.random.default_rng(spec.seed * 1000 + k)
    lo, hi = np.full(3, 0.1), np.asarray(spec.dims) - 0.1

    def move(*pts):  # one rigid shift for all points, kept inside the room
        p = np.asarray(pts, dtype=np.float64)
        d = np.clip(rng.uniform(-spec.jitter_m, spec.jitter_m, 3), (lo - p).max(axis=0), (hi - p).min(axis=0))
        return tuple(tuple(float(v) for v in q + d) for q in p)

    mic, speaker = move(spec.mic, spec.speaker)
    mic_b, speaker_b = move(spec.mic_b, spec.speaker_b)
    (talker,) = move(spec.talker)
    return replace(spec, mic=mic, speaker=speaker, mic_b=mic_b, speaker_b=speaker_b, talker=talker,
                   seed=spec.seed + 101 * k, variant=k)


@dataclass
class Scenario:
    """One benchmark file. Signals are float64 in int16 units except ``mic``/``ref``."""

    room: str
    kind: str  # fst | epc | dt | nst
    mic: np.ndarray  # int16, what the capture gets
    ref: np.ndarray  # int16, far-end reference handed to the canceller (leads the echo)
    echo: np.ndarray  # echo component at the microphone
    near: np.ndarray  # clean near-end speech at the microphone (reverberant, no noise)
    noise: np.ndarray  # room noise + microphone self-noise at the microphone
    change_s: float | None = None  # echo-path change time (epc)
    near_start_s: float | None = None  # near-end talker start (dt, nst)
    info: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.mic.shape[0] / SR


# -- signal helpers ----------------------------------------------------------------------
def frame_powers(x: np.ndarray) -> np.ndarray:
    n = x.shape[0] // FRAME
    y = np.asarray(x[: n * FRAME], dtype=np.float64).reshape(n, FRAME)
    return np.mean(y * y, axis=1)


def active_mask(x: np.ndarray, below_db: float = 30.0) -> np.ndarray:
    """10 ms frames whose power is within ``below_db`` of the loud (95th pct) frames."""
    p = frame_powers(x)
    if not np.any(p > 0):
        return np.zeros_like(p, dtype=bool)
    return p >= np.percentile(p, 95) * 10 ** (-below_db / 10)


def active_rms(x: np.ndarray) -> float:
    p = frame_powers(x)
    m = active_mask(x, 20.0)
    return float(np.sqrt(np.mean(p[m]))) if m.any() else 0.0


def _scale_to(x: np.ndarray, dbfs: float) -> np.ndarray:
    r = active_rms(x)
    return x * (32768.0 * 10 ** (dbfs / 20) / r) if r > 0 else x


def _trim(x: np.ndarray, floor: int = 64) -> np.ndarray:
    idx = np.flatnonzero(np.abs(x.astype(np.int32)) > floor)
    return x if idx.size == 0 else x[idx[0] : idx[-1] + 1]


def speech_track(texts, voice: str, seconds: float, start_s: float = 0.0, end_s: float | None = None,
                 gap_s: float = 0.4, rate_wpm: int = 165) -> np.ndarray:
    """Sentences spoken back to back (``gap_s`` apart) from ``start_s`` to ``end_s``."""
    n = int(round(seconds * SR))
    out = np.zeros(n)
    pos, end = int(start_s * SR), int((end_s if end_s is not None else seconds) * SR)
    i = 0
    while pos < end:
        s = _trim(render_speech(texts[i % len(texts)], voice=voice, rate_wpm=rate_wpm)).astype(np.float64)
        take = min(s.shape[0], end - pos)
        out[pos : pos + take] = s[:take]
        pos += s.shape[0] + int(gap_s * SR)
        i += 1
    return out


def loudspeaker(x: np.ndarray, drive: float = 1.5, h2: float = 0.05, hp_hz: float = 150.0) -> np.ndarray:
    """Mild loudspeaker nonlinearity: tanh soft clipping + 2nd-order term, then the small
    driver's 2nd-order high-pass. Input/output in int16 units."""
    u = x / 32768.0
    y = np.tanh(drive * u) / drive + h2 * u * u
    b, a = butter(2, hp_hz, btype="highpass", fs=SR)
    return lfilter(b, a, y) * 32768.0


def engine_noise(n: int, seed: int) -> np.ndarray:
    """Car cabin noise, unit RMS: brown rumble (20-200 Hz) + firing harmonics around
    30-120 Hz with slow rpm drift + a little pink-ish road noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    brown = np.cumsum(rng.standard_normal(n))
    b, a = butter(2, [20.0, 200.0], btype="bandpass", fs=SR)
    brown = lfilter(b, a, brown)
    brown /= np.std(brown)
    f0 = 30.0 * (1.0 + 0.03 * np.sin(2 * np.pi * 0.15 * t + rng.uniform(0, 6)))  # ~1800 rpm, half order
    phase = 2 * np.pi * np.cumsum(f0) / SR
    harm = sum(amp * np.sin(k * phase + rng.uniform(0, 6)) for k, amp in ((1, 1.0), (2, 0.8), (3, 0.4), (4, 0.5)))
    harm /= np.std(harm)
    road = rng.standard_normal(n)
    b, a = butter(1, 400.0, btype="lowpass", fs=SR)
    road = lfilter(b, a, road)
    road /= np.std(road)
    x = brown + 0.7 * harm + 0.15 * road
    return x / np.std(x)


def _rirs(spec: RoomSpec, rt60_param: float, pairs) -> list[np.ndarray]:
    e_abs, max_order = pra.inverse_sabine(rt60_param, list(spec.dims))
    out = []
    for src, mic in pairs:
        room = pra.ShoeBox(list(spec.dims), fs=SR, materials=pra.Material(e_abs), max_order=max_order,
                           air_absorption=False, use_rand_ism=False)
        room.add_source(list(src))
        room.add_microphone(list(mic))
        room.compute_rir()
        out.append(np.asarray(room.rir[0][0], dtype=np.float64)[_PRA_DELAY:])
    return out


@functools.lru_cache(maxsize=None)
def room_irs(spec: RoomSpec) -> dict:
    """RIRs (40-sample pyroomacoustics offset removed): echo path A and B, talker, babble
    sources; RT60 corrected once towards the target (measured on the talker RIR)."""
    (talker,) = _rirs(spec, spec.rt60, [(spec.talker, spec.mic)])
    measured = pra.experimental.measure_rt60(talker, fs=SR, decay_db=30)
    param = spec.rt60 * spec.rt60 / measured if measured > 0 else spec.rt60
    pairs = [(spec.speaker, spec.mic), (spec.speaker_b, spec.mic_b), (spec.talker, spec.mic)]
    pairs += [(s, spec.mic) for s in spec.babble_sources]
    irs = _rirs(spec, param, pairs)
    rt60 = pra.experimental.measure_rt60(irs[2], fs=SR, decay_db=30)
    return {"echo_a": irs[0], "echo_b": irs[1], "talker": irs[2], "babble": irs[3:], "rt60": rt60}


def _babble(spec: RoomSpec, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    irs = room_irs(spec)["babble"]
    total = np.zeros(n)
    for i, h in enumerate(irs):
        voice = BABBLE_VOICES[i % len(BABBLE_VOICES)]
        texts = BABBLE_TEXTS[i % len(BABBLE_TEXTS):] + BABBLE_TEXTS[: i % len(BABBLE_TEXTS)]
        off = rng.uniform(0, 2.0)
        s = speech_track(texts, voice, n / SR + off, gap_s=float(rng.uniform(0.2, 0.6)))
        s = s[int(off * SR) : int(off * SR) + n]
        s = s / (active_rms(s) or 1.0)
        total += fftconvolve(s, h)[:n]
    return total / np.std(total)


def _room_noise(spec: RoomSpec, n: int, seed: int) -> np.ndarray:
    """Unit-RMS room noise of the room's kind."""
    return engine_noise(n, seed) if spec.noise_kind == "engine" else _babble(spec, n, seed)


def _delay(x: np.ndarray, d: int) -> np.ndarray:
    return np.concatenate([np.zeros(d), x[: x.shape[0] - d]])


def _echo(spec: RoomSpec, far: np.ndarray, change_s: float | None, gain: float | None) -> tuple[np.ndarray, float]:
    """Echo at the mic for the far-end ``far`` (int16 units); returns (echo, gain)."""
    irs = room_irs(spec)
    n = far.shape[0]
    ls = loudspeaker(far)
    d = int(round(spec.system_lead_ms * SR / 1000))
    ea = _delay(fftconvolve(ls, irs["echo_a"])[:n], d)
    if change_s is None:
        e = ea
    else:
        eb = _delay(fftconvolve(ls, irs["echo_b"])[:n], d)
        c, w = int(change_s * SR), int(0.02 * SR)
        fade = np.clip((np.arange(n) - c) / w, 0.0, 1.0)
        e = ea * (1 - fade) + eb * fade
    if gain is None:
        gain = 32768.0 * 10 ** (spec.echo_dbfs / 20) / active_rms(ea)
    return e * gain, gain


def _mix(echo: np.ndarray, near: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.clip(np.round(echo + near + noise), -32768, 32767).astype(np.int16)


def _info(spec: RoomSpec, far: np.ndarray) -> dict:
    """Echo-path facts for the header: measured RT60, NL distortion ratio, misalignment of
    the echo-path change, reference lead."""
    irs = room_irs(spec)
    n = far.shape[0]
    ha, hb = irs["echo_a"], irs["echo_b"]
    L = max(ha.shape[0], hb.shape[0])
    pa, pb = np.pad(ha, (0, L - ha.shape[0])), np.pad(hb, (0, L - hb.shape[0]))
    mis = 10 * np.log10(np.sum((pa - pb) ** 2) / np.sum(pa**2))
    b, a = butter(2, 150.0, btype="highpass", fs=SR)
    lin = lfilter(b, a, far)
    nl = loudspeaker(far)
    g = float(np.dot(nl, lin) / np.dot(lin, lin))
    ndr = 10 * np.log10(np.sum((g * lin) ** 2) / np.sum((nl - g * lin) ** 2))
    onset = int(np.argmax(np.abs(ha) > 0.5 * np.max(np.abs(ha))))
    lead_ms = spec.system_lead_ms + onset / SR * 1000
    # fraction of echo-path energy beyond a 200 ms filter (counting the system lead)
    d = int(round(spec.system_lead_ms * SR / 1000))
    cut = max(0, 3200 - d)
    tail_db = 10 * np.log10(max(np.sum(ha[cut:] ** 2), 1e-30) / np.sum(ha**2))
    return {"rt60": irs["rt60"], "ndr_db": ndr, "misalign_db": mis, "lead_ms": lead_ms,
            "tail_db": tail_db, "n": n}


@functools.lru_cache(maxsize=None)
def scenarios(spec: RoomSpec) -> dict[str, Scenario]:
    """The four scenarios of one room (deterministic, cached)."""
    rng = np.random.default_rng(spec.seed)
    seeds = rng.integers(0, 2**31, size=16)
    sn = lambda x, db: x * 32768.0 * 10 ** (db / 20)  # noqa: E731  unit-RMS -> dBFS
    near_db = spec.echo_dbfs + spec.ser_db
    out: dict[str, Scenario] = {}

    def far_track(seconds: float, rot: int) -> np.ndarray:
        rot = (rot + spec.variant) % len(FAR_TEXTS)
        texts = FAR_TEXTS[rot:] + FAR_TEXTS[:rot]
        f = _scale_to(speech_track(texts, FAR_VOICE, seconds, start_s=0.1), spec.far_dbfs)
        return np.clip(np.round(f), -32768, 32767)

    def self_noise(n: int, seed: int) -> np.ndarray:
        return sn(np.random.default_rng(seed).standard_normal(n), spec.self_noise_dbfs)

    # far-end single talk
    secs = 12.0
    n = int(secs * SR)
    far = far_track(secs, 0)
    echo, gain = _echo(spec, far, None, None)
    noise = sn(_room_noise(spec, n, int(seeds[0])), spec.bg_noise_dbfs) + self_noise(n, int(seeds[1]))
    info = _info(spec, far)
    info["enr_db"] = 10 * np.log10(active_rms(echo) ** 2 / np.mean(noise**2))
    out["fst"] = Scenario(spec.name, "fst", _mix(echo, 0 * echo, noise), far.astype(np.int16), echo, np.zeros(n),
                          noise, info=info)

    # echo-path change at 6 s (same acoustic gain as path A)
    far = far_track(secs, 2)
    echo, _ = _echo(spec, far, 6.0, gain)
    noise = sn(_room_noise(spec, n, int(seeds[2])), spec.bg_noise_dbfs) + self_noise(n, int(seeds[3]))
    out["epc"] = Scenario(spec.name, "epc", _mix(echo, 0 * echo, noise), far.astype(np.int16), echo, np.zeros(n),
                          noise, change_s=6.0, info=info)

    # double talk: far end throughout, near end from 4 s
    far = far_track(secs, 4)
    echo, _ = _echo(spec, far, None, gain)
    v = spec.variant % len(NEAR_TEXTS)
    ns = speech_track(NEAR_TEXTS[v:] + NEAR_TEXTS[:v], NEAR_VOICE, secs, start_s=4.0, end_s=11.6, gap_s=0.3)
    near = _scale_to(fftconvolve(ns, room_irs(spec)["talker"])[:n], near_db)
    noise = sn(_room_noise(spec, n, int(seeds[4])), spec.bg_noise_dbfs) + self_noise(n, int(seeds[5]))
    out["dt"] = Scenario(spec.name, "dt", _mix(echo, near, noise), far.astype(np.int16), echo, near, noise,
                         near_start_s=4.0, info=info)

    # near-end single talk in loud noise, reference silent
    secs = 10.0
    n = int(secs * SR)
    v = (spec.variant + 3) % len(NEAR_TEXTS)
    ns = speech_track(NEAR_TEXTS[v:] + NEAR_TEXTS[:v], NEAR_VOICE, secs, start_s=2.0, end_s=9.6, gap_s=0.5)
    near = _scale_to(fftconvolve(ns, room_irs(spec)["talker"])[:n], near_db)
    noise = sn(_room_noise(spec, n, int(seeds[6])), near_db - spec.noisy_snr_db) + self_noise(n, int(seeds[7]))
    out["nst"] = Scenario(spec.name, "nst", _mix(0 * near, near, noise), np.zeros(n, dtype=np.int16), np.zeros(n),
                          near, noise, near_start_s=2.0, info=info)
    return out
