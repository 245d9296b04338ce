"""A randomized family of simulated cars and kiosks for the capture front end (16 kHz).

The fixed rooms of :mod:`tests.benchmarks.rooms` are what the front end was tuned on; this
module draws many other rooms from seeds, so settings can be tuned on one half and judged
on the other half, which the tuning never saw.

Halves (fixed by seed, never mixed):

- ``TUNING``: seeds 0..N-1 (rooms ``t00``, ``t01``, ...): tune on these only;
- ``REPORTING``: seeds 100..100+N-1 (rooms ``r100``, ...): report on these only;

with ``N = 12`` (24 rooms in all; ``VOXBOX_FAMILY_N`` changes it, at most 100). A room is a
pure function of its seed: ``family_room(seed)``.

Each room (:class:`FamilyRoom`, a :class:`~tests.benchmarks.rooms.RoomSpec` with more
fields) draws, from ``numpy.random.default_rng([seed, 15])``:

- kind: car or kiosk, stratified: ``(seed + seed // 4) % 2`` (0 = car), so every block of
  four seeds holds two of each;
- geometry: car cabin 1.5-2.2 x 1.3-1.55 x 1.05-1.3 m, device on the dashboard, driver
  0.45-0.9 m away; kiosk 3-6 x 2.5-5 x 2.5-3.2 m, device 0.3-0.8 m off a wall, customer
  0.7-1.5 m away. Loudspeaker-microphone distance 8-30 cm, any orientation;
- RT60 (s, target): car 0.10-0.25, kiosk 0.20-0.60 (the whole family spans 0.1-0.6);
- echo-path change: the device (microphone and loudspeaker together, same distance) is
  moved 10-30 cm (car) or 20-100 cm (kiosk) and turned to a new random orientation;
- loudspeaker nonlinearity, stratified by ``seed % 4``: ``none``, ``mild`` (tanh soft clip,
  drive 1.5-2.5, + 2nd-order term 0.03-0.08), ``strong`` (tanh, drive 3-4.5, + 0.05-0.12 x
  2nd order) or ``clip`` (hard clip at 0.15-0.30 of full scale, i.e. 3.5-9.5 dB above the
  far end's active RMS). Distortion (linear echo over the rest, printed per room): mild
  about 17-27 dB, strong and clip about 8-15 dB. Memoryless, on float samples in [-1, 1]; the small driver's
  2nd-order 150 Hz high-pass follows it (folded into the echo impulse response);
- system delay (ms, the playback + capture buffering between the reference handed to the
  canceller and the loudspeaker): 10-120 ms;
- voices (espeak-ng, ``voxbox.audio.speech.render_speech``, cached): one of ``FAR_VOICES`` for
  the far end (the assistant), one of ``NEAR_VOICES`` for the near end (the user);
  sentences of :mod:`rooms` in a rotated order;
- background noise: car ``engine`` (rooms' engine noise: low-pass rumble + firing
  harmonics), ``hvac`` (pink noise 40-4000 Hz + fan blade tones) or ``white``; kiosk
  ``babble`` (rooms' babble from 4-6 espeak-ng talkers in the room), ``hvac`` or
  ``white``. Level (RMS, dBFS) -66..-56 (white: -74..-66, "at low level");
- levels: far end played at -20 dBFS (active RMS); echo at the microphone -30..-18 dBFS;
  near-end talker 0-10 dB *below* the echo (``ser_db`` -10..0: in a car the loudspeaker
  is 10-20 cm from the microphone, the driver 0.5-0.9 m).

Alignment of the reference (system delay): on the device the daemon's echo-delay
aligner (``voxbox.dsp.align.ReferenceAligner``, config ``frontend.reference_lead_ms``, 10 ms
by default) delays the reference so that it leads the echo's direct-path peak by
``reference_lead_ms`` whatever the system delay is. The scenarios model that: the
reference leads the echo by ``lead_ms`` (10 ms) plus a residual alignment error
``align_error_ms`` drawn per room in -3..+3 ms (the aligner's dead band), i.e. the
RoomSpec field ``system_lead_ms`` (lead on top of the acoustic flight time) is
``lead_ms + align_error_ms - flight time``. ``scenarios(room, aligned=False)`` instead
gives the raw system delay (the reference leads by ``system_delay_ms`` + flight time; an
unaligned device). The raw system delay is also what :func:`echo_path` returns, for the
closed-loop daemon benchmark, where the daemon's own aligner has to find it.

Scenarios: ``fst``, ``epc`` and ``dt`` as in :mod:`rooms` (12 s each, 16 kHz; echo-path
change at 6 s with a 20 ms cross-fade; near end from 4 s). The near-end single talk
(``nst``) of :mod:`rooms` is not built here. Signals and level conventions as in
:class:`rooms.Scenario` (float64 in int16 units; ``mic``/``ref`` int16).

Reused from :mod:`rooms` (imported, not copied): ``RoomSpec``, ``Scenario``, RIR generation
with pyroomacoustics' image-source method with one RT60 correction step and the removal
of its 40-sample fractional-delay offset (``room_irs``), level helpers, speech tracks,
engine noise and babble.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, fftconvolve, lfilter

from voxbox.audio.speech import pink_noise

from .rooms import (
    FAR_TEXTS,
    NEAR_TEXTS,
    SR,
    RoomSpec,
    Scenario,
    _babble,
    _mix,
    _scale_to,
    active_rms,
    engine_noise,
    room_irs,
    speech_track,
)

__all__ = [
    "SR", "LEAD_MS", "FAR_VOICES", "NEAR_VOICES", "NONLINEARITIES", "FamilyRoom", "family_room",
    "TUNING", "REPORTING", "echo_path", "scenarios", "describe",
]

N_PER_HALF = int(os.environ.get("VOXBOX_FAMILY_N", "12"))
TUNING_SEEDS = tuple(range(N_PER_HALF))
REPORTING_SEEDS = tuple(range(100, 100 + N_PER_HALF))
assert N_PER_HALF <= 100, "the halves would overlap"

LEAD_MS = 10.0  # config frontend.reference_lead_ms (default): the aligner's target lead
ALIGN_ERROR_MS = 3.0  # residual alignment error drawn in +-this (the aligner's dead band)
SPEAKER_HP_HZ = 150.0  # the small driver's 2nd-order high-pass (as rooms.loudspeaker)

FAR_VOICES = ("en-us+f3", "en-gb+f4", "en-us+m3", "en-gb-x-rp+f2", "en-us+m6")
NEAR_VOICES = ("en-gb+m3", "en-us+m1", "en-gb-scotland+f2", "en-029+m4", "en-us+f4", "en-gb-x-gbcwmd+m2")
NONLINEARITIES = ("none", "mild", "strong", "clip")


@dataclass(frozen=True)
class FamilyRoom(RoomSpec):
    """A drawn room (see the module docstring). ``RoomSpec.system_lead_ms`` holds the
    aligned lead on top of the flight time (ms); the raw system delay is ``system_delay_ms``."""

    kind: str = "car"  # car | kiosk
    nonlinearity: str = "mild"  # none | mild | strong | clip
    nl_drive: float = 1.5  # tanh drive (mild/strong)
    nl_h2: float = 0.05  # 2nd-order term (mild/strong)
    nl_clip: float = 1.0  # hard-clip level, fraction of full scale (clip)
    system_delay_ms: float = 40.0  # raw playback+capture delay, ms
    lead_ms: float = LEAD_MS  # aligner target lead, ms
    align_error_ms: float = 0.0  # residual alignment error, ms (+ = reference leads more)
    far_voice: str = FAR_VOICES[0]
    near_voice: str = NEAR_VOICES[0]
    text_rot: int = 0  # rotation of the sentence lists

    @property
    def distance_m(self) -> float:
        """Loudspeaker-microphone distance, m."""
        return float(np.linalg.norm(np.subtract(self.speaker, self.mic)))


# -- loudspeaker nonlinearity (memoryless, float in [-1, 1]) -------------------------------
def _nl_none(u: np.ndarray) -> np.ndarray:
    return np.asarray(u, dtype=np.float64)


def _nl_tanh(u: np.ndarray, drive: float, h2: float) -> np.ndarray:
    u = np.asarray(u, dtype=np.float64)
    return np.tanh(drive * u) / drive + h2 * u * u


def _nl_clip(u: np.ndarray, level: float) -> np.ndarray:
    return np.clip(np.asarray(u, dtype=np.float64), -level, level)


def nonlinearity(room: FamilyRoom):
    """The room's loudspeaker nonlinearity: a picklable, memoryless callable on float
    samples in [-1, 1] (full scale = 1) returning float samples of the same shape."""
    if room.nonlinearity == "none":
        return _nl_none
    if room.nonlinearity in ("mild", "strong"):
        return functools.partial(_nl_tanh, drive=room.nl_drive, h2=room.nl_h2)
    if room.nonlinearity == "clip":
        return functools.partial(_nl_clip, level=room.nl_clip)
    raise ValueError(f"unknown nonlinearity {room.nonlinearity!r}")


# -- drawing rooms --------------------------------------------------------------------------
def _direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _inside(p, dims, margin: float = 0.05) -> bool:
    return bool(np.all(np.asarray(p) >= margin) and np.all(np.asarray(p) <= np.asarray(dims) - margin))


def _speaker_at(rng, mic, dist, dims) -> tuple[float, ...]:
    """A loudspeaker ``dist`` m from ``mic`` in a random direction, inside the room."""
    while True:
        s = np.asarray(mic) + dist * _direction(rng)
        if _inside(s, dims):
            return tuple(float(v) for v in s)


def _pt(p) -> tuple[float, ...]:
    return tuple(float(v) for v in p)


@functools.cache
def family_room(seed: int) -> FamilyRoom:
    """The room drawn from ``seed`` (deterministic; see the module docstring)."""
    rng = np.random.default_rng([seed, 15])
    kind = ("car", "kiosk")[(seed + seed // 4) % 2]
    nl = NONLINEARITIES[seed % 4]
    dist = float(rng.uniform(0.08, 0.30))
    if kind == "car":
        dims = (rng.uniform(1.5, 2.2), rng.uniform(1.3, 1.55), rng.uniform(1.05, 1.3))
        rt60 = float(rng.uniform(0.10, 0.25))
        mic = np.array([rng.uniform(0.15, 0.4), rng.uniform(0.35, dims[1] - 0.35), rng.uniform(0.7, 0.95)])
        move = rng.uniform(0.10, 0.30)
        talker = mic + np.array([rng.uniform(0.4, 0.75), rng.uniform(-0.35, 0.35), rng.uniform(0.05, 0.3)])
        noise_kind = ("engine", "hvac", "white")[int(rng.integers(3))]
        babble_sources: tuple = ()
    else:
        dims = (rng.uniform(3.0, 6.0), rng.uniform(2.5, 5.0), rng.uniform(2.5, 3.2))
        rt60 = float(rng.uniform(0.20, 0.60))
        mic = np.array([rng.uniform(0.3, 0.8), rng.uniform(0.8, dims[1] - 0.8), rng.uniform(1.2, 1.6)])
        move = rng.uniform(0.20, 1.00)
        r, ang = rng.uniform(0.7, 1.5), rng.uniform(-0.8, 0.8)
        talker = mic + np.array([r * np.cos(ang), r * np.sin(ang), rng.uniform(-0.1, 0.3)])
        noise_kind = ("babble", "hvac", "white")[int(rng.integers(3))]
        srcs = []
        for _ in range(int(rng.integers(4, 7))):
            while True:
                p = np.array([rng.uniform(0.3, dims[0] - 0.3), rng.uniform(0.3, dims[1] - 0.3), rng.uniform(1.2, 1.8)])
                if np.linalg.norm(p - mic) >= 1.2:
                    srcs.append(_pt(p))
                    break
        babble_sources = tuple(srcs)
    dims = _pt(dims)
    talker = np.clip(talker, 0.1, np.asarray(dims) - 0.1)
    speaker = _speaker_at(rng, mic, dist, dims)
    while True:  # the moved device: same distance, new place and orientation
        mic_b = mic + move * _direction(rng) * np.array([1.0, 1.0, 0.5])
        if _inside(mic_b, dims, 0.1):
            break
    speaker_b = _speaker_at(rng, mic_b, dist, dims)
    drive, h2, clip = 1.0, 0.0, 1.0
    if nl == "mild":
        drive, h2 = float(rng.uniform(1.5, 2.5)), float(rng.uniform(0.03, 0.08))
    elif nl == "strong":
        drive, h2 = float(rng.uniform(3.0, 4.5)), float(rng.uniform(0.05, 0.12))
    elif nl == "clip":
        clip = float(rng.uniform(0.15, 0.30))
    system_delay = float(rng.uniform(10.0, 120.0))
    err = float(rng.uniform(-ALIGN_ERROR_MS, ALIGN_ERROR_MS))
    flight_ms = dist / 343.0 * 1000
    bg = float(rng.uniform(-74.0, -66.0) if noise_kind == "white" else rng.uniform(-66.0, -56.0))
    return FamilyRoom(
        name=f"{'t' if seed < 100 else 'r'}{seed:02d}",
        dims=dims, rt60=rt60, mic=_pt(mic), speaker=speaker, mic_b=_pt(mic_b), speaker_b=speaker_b,
        talker=_pt(talker), noise_kind=noise_kind, babble_sources=babble_sources,
        system_lead_ms=LEAD_MS + err - flight_ms,
        echo_dbfs=float(rng.uniform(-30.0, -18.0)), ser_db=float(rng.uniform(-10.0, 0.0)),
        bg_noise_dbfs=bg, far_dbfs=-20.0, seed=seed,
        kind=kind, nonlinearity=nl, nl_drive=drive, nl_h2=h2, nl_clip=clip,
        system_delay_ms=system_delay, lead_ms=LEAD_MS, align_error_ms=err,
        far_voice=FAR_VOICES[int(rng.integers(len(FAR_VOICES)))],
        near_voice=NEAR_VOICES[int(rng.integers(len(NEAR_VOICES)))],
        text_rot=int(rng.integers(len(FAR_TEXTS))),
    )


TUNING: list[FamilyRoom] = [family_room(s) for s in TUNING_SEEDS]
REPORTING: list[FamilyRoom] = [family_room(s) for s in REPORTING_SEEDS]


# -- echo path --------------------------------------------------------------------------------
def _far_track(room: FamilyRoom, seconds: float, rot: int) -> np.ndarray:
    """Far-end speech (int16 units, integer valued) at ``room.far_dbfs`` active RMS."""
    rot = (rot + room.text_rot) % len(FAR_TEXTS)
    texts = FAR_TEXTS[rot:] + FAR_TEXTS[:rot]
    f = _scale_to(speech_track(texts, room.far_voice, seconds, start_s=0.1), room.far_dbfs)
    return np.clip(np.round(f), -32768, 32767)


def _speaker_out(room: FamilyRoom, far: np.ndarray) -> np.ndarray:
    """The nonlinearity on the far end (int16 units in and out)."""
    return nonlinearity(room)(far / 32768.0) * 32768.0


def _unit_irs(room: FamilyRoom) -> tuple[np.ndarray, np.ndarray]:
    """Driver high-pass * room RIR (speaker->mic, flight time included, unscaled), for the
    device before (a) and after (b) the echo-path change."""
    irs = room_irs(room)
    b, a = butter(2, SPEAKER_HP_HZ, btype="highpass", fs=SR)
    return tuple(lfilter(b, a, np.concatenate([h, np.zeros(800)])) for h in (irs["echo_a"], irs["echo_b"]))


@functools.cache
def _echo_gain(room: FamilyRoom) -> float:
    """Gain that puts the echo of the fst far end at ``room.echo_dbfs`` (active RMS)."""
    far = _far_track(room, 12.0, 0)
    ha, _ = _unit_irs(room)
    e = fftconvolve(_speaker_out(room, far), ha)[: far.shape[0]]
    return 32768.0 * 10 ** (room.echo_dbfs / 20) / active_rms(e)


def echo_path(room: FamilyRoom) -> tuple[np.ndarray, object, float]:
    """The echo path for a closed-loop benchmark: ``(rir_16k, nonlinearity, system_delay_ms)``.

    The echo at the microphone (float, full scale = 1) of a played far end ``x`` (float in
    [-1, 1]) is ``rir_16k * nonlinearity(x)`` (convolution) delayed by ``system_delay_ms``.

    - ``rir_16k``: float64 speaker->microphone impulse response at 16 kHz of the device's
      first placement (before the echo-path change): the driver's 150 Hz high-pass
      followed by the room RIR, acoustic flight time included, *without* the system delay,
      scaled so that far-end speech played at ``room.far_dbfs`` (active RMS) gives an echo
      at ``room.echo_dbfs``;
    - ``nonlinearity``: memoryless (so it may run block by block), picklable;
    - ``system_delay_ms``: the raw playback+capture delay (10-120 ms); the daemon's
      aligner is expected to find it.
    """
    ha, _ = _unit_irs(room)
    return ha * _echo_gain(room), nonlinearity(room), float(room.system_delay_ms)


def _delay(x: np.ndarray, d: int) -> np.ndarray:
    return np.concatenate([np.zeros(d), x[: x.shape[0] - d]])


def _echo(room: FamilyRoom, far: np.ndarray, change_s: float | None, aligned: bool) -> np.ndarray:
    """Echo at the microphone (int16 units) for the far end ``far`` (int16 units), delayed
    relative to the reference as the canceller sees it."""
    n = far.shape[0]
    ls = _speaker_out(room, far)
    ha, hb = _unit_irs(room)
    lead_ms = room.system_lead_ms if aligned else room.system_delay_ms
    d = int(round(lead_ms * SR / 1000))
    e = fftconvolve(ls, ha)[:n]
    if change_s is not None:
        eb = fftconvolve(ls, hb)[:n]
        c, w = int(change_s * SR), int(0.02 * SR)
        fade = np.clip((np.arange(n) - c) / w, 0.0, 1.0)
        e = e * (1 - fade) + eb * fade
    return _delay(e, d) * _echo_gain(room)


def hvac_noise(n: int, seed: int) -> np.ndarray:
    """Ventilation noise, unit RMS: pink noise 40-4000 Hz + fan blade-pass tones."""
    rng = np.random.default_rng(seed)
    x = pink_noise(n, 0.0, seed, band=(40.0, 4000.0)) / 32768.0
    t = np.arange(n) / SR
    f0 = rng.uniform(80.0, 160.0)
    tones = sum(a * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) for k, a in ((1, 0.3), (2, 0.15), (3, 0.08)))
    x = x + tones
    return x / np.std(x)


def room_noise(room: FamilyRoom, n: int, seed: int) -> np.ndarray:
    """Unit-RMS background noise of the room's kind."""
    if room.noise_kind == "engine":
        return engine_noise(n, seed)
    if room.noise_kind == "babble":
        return _babble(room, n, seed)
    if room.noise_kind == "hvac":
        return hvac_noise(n, seed)
    if room.noise_kind == "white":
        return np.random.default_rng(seed).standard_normal(n)
    raise ValueError(f"unknown noise kind {room.noise_kind!r}")


@functools.cache
def _ndr_db(room: FamilyRoom) -> float:
    """Loudspeaker distortion: linear part over the rest (dB) on the fst far end."""
    far = _far_track(room, 12.0, 0)
    nl = _speaker_out(room, far)
    g = float(np.dot(nl, far) / np.dot(far, far))
    err = float(np.sum((nl - g * far) ** 2))
    return 10 * np.log10(np.sum((g * far) ** 2) / err) if err > 0 else float("inf")


@functools.cache
def scenarios(room: FamilyRoom, aligned: bool = True) -> dict[str, Scenario]:
    """The ``fst``, ``epc`` and ``dt`` scenarios of ``room`` (deterministic, cached)."""
    rng = np.random.default_rng(room.seed)
    seeds = rng.integers(0, 2**31, size=8)
    sn = lambda x, db: x * 32768.0 * 10 ** (db / 20)  # unit-RMS -> dBFS
    secs = 12.0
    n = int(secs * SR)

    def noise(k: int) -> np.ndarray:
        self_noise = sn(np.random.default_rng(int(seeds[2 * k + 1])).standard_normal(n), room.self_noise_dbfs)
        return sn(room_noise(room, n, int(seeds[2 * k])), room.bg_noise_dbfs) + self_noise

    out: dict[str, Scenario] = {}
    info = describe(room)
    far = _far_track(room, secs, 0)
    echo = _echo(room, far, None, aligned)
    nz = noise(0)
    info = dict(info, enr_db=float(10 * np.log10(active_rms(echo) ** 2 / np.mean(nz**2))))
    out["fst"] = Scenario(room.name, "fst", _mix(echo, 0 * echo, nz), far.astype(np.int16), echo, np.zeros(n), nz,
                          info=info)
    far = _far_track(room, secs, 2)
    echo = _echo(room, far, 6.0, aligned)
    nz = noise(1)
    out["epc"] = Scenario(room.name, "epc", _mix(echo, 0 * echo, nz), far.astype(np.int16), echo, np.zeros(n), nz,
                          change_s=6.0, info=info)
    far = _far_track(room, secs, 4)
    echo = _echo(room, far, None, aligned)
    v = room.text_rot % len(NEAR_TEXTS)
    ns = speech_track(NEAR_TEXTS[v:] + NEAR_TEXTS[:v], room.near_voice, secs, start_s=4.0, end_s=11.6, gap_s=0.3)
    near = _scale_to(fftconvolve(ns, room_irs(room)["talker"])[:n], room.echo_dbfs + room.ser_db)
    nz = noise(2)
    out["dt"] = Scenario(room.name, "dt", _mix(echo, near, nz), far.astype(np.int16), echo, near, nz,
                         near_start_s=4.0, info=info)
    return out


def describe(room: FamilyRoom) -> dict:
    """Facts for a table header: measured RT60 (s), distortion (dB), echo-path change
    misalignment (dB), lead of the reference over the echo peak (ms, aligned), echo-path
    energy beyond a 200 ms filter (dB re total)."""
    irs = room_irs(room)
    ha, hb = _unit_irs(room)
    L = max(ha.shape[0], hb.shape[0])
    ha, hb = np.pad(ha, (0, L - ha.shape[0])), np.pad(hb, (0, L - hb.shape[0]))
    mis = 10 * np.log10(np.sum((ha - hb) ** 2) / np.sum(ha**2))
    onset = int(np.argmax(np.abs(ha)))
    d = int(round(room.system_lead_ms * SR / 1000))
    cut = max(0, 3200 - d)
    tail_db = 10 * np.log10(max(np.sum(ha[cut:] ** 2), 1e-30) / np.sum(ha**2))
    return {"rt60": float(irs["rt60"]), "ndr_db": _ndr_db(room), "misalign_db": float(mis),
            "lead_ms": room.system_lead_ms + onset / SR * 1000, "tail_db": float(tail_db)}

