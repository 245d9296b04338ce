"""Wake word while the unit talks: barge-in detection and self-trigger, car and kiosk rooms.

Run (about 9 min on an idle 2-core machine, single process; ~2.5 min with
VOXBOX_WAKE_PLACEMENTS=1 VOXBOX_WAKE_SELF_STREAMS=1; not part of the default
test run):

    .venv/bin/python -m pytest -o addopts="-ra --timeout=1800" -m benchmark -s \
        tests/benchmarks/test_wake_bench.py

Rooms, echo path and noise are those of the front-end benchmark (``rooms.py``): the same
room impulse responses (placement variants included), the same Hammerstein echo path
(``rooms.loudspeaker`` nonlinearity, loudspeaker high-pass, room IR, system lead: the
reference handed to the canceller *leads* its echo by 10-20 ms plus the flight time), the
echo at ``echo_dbfs`` (active RMS) and the rooms' background noise (engine / babble at
``bg_noise_dbfs``) plus microphone self-noise.

Every stream starts with ``PREROLL_S`` of the idle device (room noise, reference zeros:
the playback loop writes silence continuously), then the unit starts its reply at t = 0.
The front end (``CaptureFrontEnd(FrontEndSettings())``: always the defaults, so the
benchmark follows the current front end) gets the whole stream in 10 ms blocks with the
played far end as reference and a *fresh* state, so the canceller is unconverged when the
reply starts (the first reply after boot: the worst case). Its output is aligned to the
input (``latency_samples`` removed).

"FE on" is the daemon's wake path (:class:`WakePath`): the front end's wake tap
(``CaptureFrontEnd(..., wake_tap=WAKE_TAP)``, the signal before the residual echo
suppressor, at the same latency as the uplink output) and the block's reference go into
one :class:`voxbox.wake.detector.PlaybackAwareWake` (defaults) in 10 ms blocks, as
``Daemon._on_capture_frame`` feeds it. "uplink" (diagnostic) is the wake path before
that: the front end's uplink output into one plain detector. The plain detector (``WakeWordDetector`` with the
``hey_jarvis`` model, default threshold 0.5 and 1.5 s refractory time) runs continuously
over each stream (``reset()`` between streams, on a clock that never goes back so a
refractory time cannot leak from one stream to the next).

1. Detection during playback (barge-in). The unit speaks continuous reply speech
   (``rooms.FAR_TEXTS`` in ``rooms.FAR_VOICE``); the user (``USER_VOICES``, ten espeak-ng
   voices, at the room's talker position, reverberant) says "Hey Jarvis" once in the
   first 2 s after playback starts and ``LATER_PER_STREAM`` times later (3.5 s apart).
   Each wake word is scaled so that the echo at the microphone is ``RATIOS_DB`` (6, 8 or
   10 dB, cycled) above the user's voice in energy over the wake-word span (start to end
   of the spoken phrase at the microphone); the measured ratios are printed. One stream
   per (room, placement, voice). A wake word counts as detected when the detector fires
   within [wake start, wake end + 1 s]. The same streams are scored with the user alone
   (echo removed: validates the set-up), the raw microphone (front end off), the plain
   Speex echo canceller without preprocessor or post-filter (the front-end benchmark's
   "speex AEC"; a diagnostic that separates what the linear canceller leaves from what
   the front end's suppressors do to the user's voice), the front end's uplink output
   (diagnostic) and the wake path (front end on). "max score" is the highest detector score inside the
   window, averaged over wake words. Diagnostics for the misses: echo attenuation of the
   front end over the wake-word span, and the residual echo-to-user ratio after it, both
   from a second front-end run on the same stream without the user (echo + noise only).
   "first 2 s, warm": the first-2-s wake words again, with the canceller (AEC, FE on)
   converged on a previous 6 s reply that ended 3.5 s before (the unit has talked before):
   separates "canceller not converged yet" from everything else. "all, device": the
   first-2-s wake words warm, the later ones as they are -- the daemon runs the canceller
   continuously, so only the first reply after boot meets a cold canceller.
2. Self-trigger. The unit's replies contain "hey jarvis" (``WAKE_REPLY_TEXTS``, in the
   reply voice) between ordinary reply sentences, ``SELF_STREAMS`` streams of
   ``SELF_STREAM_S`` per room (10 min of reply audio in all, some streams start with a
   wake phrase in the first 2 s); no user. Every detection is a false wake; those not
   within a sentence containing the wake phrase are false wakes on ordinary speech.
3. CPU seconds (process time, all threads) and wall time of the whole module.

Knobs (environment): ``VOXBOX_WAKE_PLACEMENTS`` (default 3 per room),
``VOXBOX_WAKE_SELF_STREAMS`` (default 5 per room).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy.signal import fftconvolve

from voxbox.audio.speech import render_speech
from voxbox.dsp.frontend import CaptureFrontEnd, FrontEndSettings
from voxbox.wake.detector import CHUNK_SAMPLES, PlaybackAwareWake, WakeWordDetector

# rooms.py's private helpers are used on purpose: the echo path, the noise and the
# level scaling must be exactly those of the front-end benchmark.
from .rooms import (
    FAR_TEXTS,
    FAR_VOICE,
    ROOMS,
    SR,
    RoomSpec,
    _echo,
    _room_noise,
    _scale_to,
    _trim,
    active_mask,
    frame_powers,
    room_irs,
    variant,
)
from .test_frontend_bench import speex_aec_only

pytestmark = pytest.mark.benchmark

BLOCK = 160  # capture period (10 ms)
MODEL = "hey_jarvis"
WAKE_TEXT = "Hey Jarvis"
PREROLL_S = 1.5  # idle device before the reply starts (reference zeros)
WARM_REPLY_S = 6.0  # "warm" variant of the first-2-s wake words: a previous reply of 6 s ...
WARM_S = 8.0  # ... at the start of 8 s prepended to the stream (then the stream's pre-roll)
EARLY_S = 2.0  # "first 2 s after playback starts"
WINDOW_AFTER_S = 1.0  # a detection counts until wake end + 1 s
GOAL_PCT = 90.0  # detection rate with the front end on
MAX_LISTED = 30  # missed wake words listed under the table

PLACEMENTS = int(os.environ.get("VOXBOX_WAKE_PLACEMENTS", "3"))
SELF_STREAMS = int(os.environ.get("VOXBOX_WAKE_SELF_STREAMS", "5"))
SELF_STREAM_S = 60.0

# The users: ten espeak-ng voices (none is the reply voice en-us+f3).
# espeak-ng 1.51 ignores a "+variant" on plain "en-gb" ("en-gb+m3" renders exactly like
# "en-gb"), so the variants here are on voices where they take effect: ten distinct voices.
USER_VOICES = (
    "en-us", "en-gb", "en-us+m1", "en-us+m7", "en-gb-scotland+f4",
    "en-us+f5", "en-gb-x-rp+m4", "en-us+f2", "en-us-nyc+m2", "en-gb-x-rp+f3",
)
USER_RATES = (140, 150, 160)  # words per minute, cycled
RATIOS_DB = (6.0, 8.0, 10.0)  # echo-to-user ratio over the wake-word span, cycled
EARLY_STARTS = (0.2, 0.5, 0.8, 1.1, 1.4)  # wake start in the first 2 s (s after playback start)
LATER_FIRST_S = 3.5  # first later wake word (plus jitter)
LATER_STEP_S = 3.5
LATER_PER_STREAM = 4
REPLY_RATE = 165  # rooms.speech_track's default
REPLY_GAP_S = 0.4

# Replies that contain the wake word (reply voice), mixed with ordinary reply speech.
WAKE_REPLY_TEXTS = (
    "I tried it yesterday, and then I said hey jarvis, play some music, and it started right away.",
    "In the film the inventor walks into his workshop and says hey jarvis, run the diagnostics.",
    "Hey Jarvis is the phrase that wakes me up. Say hey jarvis, wait for the light, and ask your question.",
    "My favourite story is the one where everybody in the house shouts hey jarvis at the butler.",
    "You asked how to start me. Just say hey jarvis, and then tell me what you need.",
)


# -- signals -----------------------------------------------------------------------------
def _i16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def _noise(spec: RoomSpec, n: int, seed: int) -> np.ndarray:
    """Room background noise + microphone self-noise, as in rooms.scenarios (fst/dt)."""
    rng = np.random.default_rng(seed)
    s1, s2 = (int(v) for v in rng.integers(0, 2**31, size=2))
    room = _room_noise(spec, n, s1) * 32768.0 * 10 ** (spec.bg_noise_dbfs / 20)
    self_noise = np.random.default_rng(s2).standard_normal(n) * 32768.0 * 10 ** (spec.self_noise_dbfs / 20)
    return room + self_noise


def _reply_track(texts: list[str], n_play: int, lead: int) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Reply sentences back to back from t = 0 (sample ``lead``), cut at ``n_play`` samples
    of playback; scaled like rooms' far track. Returns the int16-valued float track and
    (text, start s, end s) of each sentence (relative to playback start)."""
    out = np.zeros(lead + n_play)
    segs = []
    pos, i = 0, 0
    while pos < n_play:
        text = texts[i % len(texts)]
        s = _trim(render_speech(text, voice=FAR_VOICE, rate_wpm=REPLY_RATE)).astype(np.float64)
        take = min(s.shape[0], n_play - pos)
        out[lead + pos : lead + pos + take] = s[:take]
        segs.append((text, pos / SR, (pos + take) / SR))
        pos += s.shape[0] + int(REPLY_GAP_S * SR)
        i += 1
    return out, segs


@dataclass
class Wake:
    room: str
    placement: int
    voice: str
    start: float  # s after playback start
    end: float
    target_db: float
    ratio_db: float = math.nan  # echo-to-user energy over the span, at the microphone
    ratio_active_db: float = math.nan  # same, on the user's active 10 ms frames only
    fe_atten_db: float = math.nan  # echo attenuation of the front end over the span (echo-only run)
    resid_db: float = math.nan  # residual echo (+noise) after the front end to user, over the span
    hit: dict[str, bool] = field(default_factory=dict)
    max_score: dict[str, float] = field(default_factory=dict)

    @property
    def early(self) -> bool:
        return self.start < EARLY_S


@dataclass
class Stream:
    spec: RoomSpec
    ref: np.ndarray  # int16, played far end (the canceller's reference)
    mic: np.ndarray  # int16, echo + user + noise
    alone: np.ndarray  # int16, user + noise (no echo)
    echo_mic: np.ndarray  # int16, echo + noise (no user)
    echo: np.ndarray  # float, echo component
    near: np.ndarray  # float, user component (reverberant)
    wakes: list[Wake]
    # warm variant, up to 1.5 s after the early wake word's window: WARM_S of a previous
    # reply (the canceller converges on it) prepended to the stream
    warm_ref: np.ndarray | None = None
    warm_mic: np.ndarray | None = None

    @property
    def t0(self) -> float:  # time of sample 0 relative to playback start
        return -PREROLL_S


def playback_stream(spec: RoomSpec, k: int, v: int) -> Stream:
    """Barge-in stream for room placement ``k`` and user voice index ``v``."""
    rng = np.random.default_rng(spec.seed * 7919 + 131 * k + v)
    voice = USER_VOICES[v]
    lead = int(PREROLL_S * SR)
    starts = [EARLY_STARTS[(v + k) % len(EARLY_STARTS)]]
    starts += [LATER_FIRST_S + i * LATER_STEP_S + float(rng.uniform(0.0, 0.8)) for i in range(1, LATER_PER_STREAM + 1)]
    play_s = starts[-1] + 1.5 + WINDOW_AFTER_S + 0.5
    n_play = int(play_s * SR)
    n = lead + n_play
    rot = (v + 2 * k) % len(FAR_TEXTS)
    far, _ = _reply_track(list(FAR_TEXTS[rot:] + FAR_TEXTS[:rot]), n_play, lead)
    far = _i16(_scale_to(far, spec.far_dbfs)).astype(np.float64)
    echo, gain = _echo(spec, far, None, None)  # at the room's echo level (active RMS)
    h = room_irs(spec)["talker"]
    near = np.zeros(n)
    wakes = []
    for i, st in enumerate(starts):
        rate = USER_RATES[(i + v) % len(USER_RATES)]
        target = RATIOS_DB[(i + v + k) % len(RATIOS_DB)]
        clip = _trim(render_speech(WAKE_TEXT, voice=voice, rate_wpm=rate)).astype(np.float64)
        a = lead + int(round(st * SR))
        b = a + clip.shape[0]
        u = fftconvolve(clip, h)[: n - a]
        e_echo = float(np.sum(echo[a:b] ** 2))
        e_user = float(np.sum(u[: b - a] ** 2))
        u *= math.sqrt(e_echo / e_user * 10 ** (-target / 10))
        near[a : a + u.shape[0]] += u
        wakes.append(Wake(spec.name, k, voice, st, st + clip.shape[0] / SR, target))
    noise = _noise(spec, n, spec.seed * 7919 + 131 * k + v)
    for w in wakes:  # measured echo-to-user ratios, from the final components
        a, b = lead + int(round(w.start * SR)), lead + int(round(w.end * SR))
        w.ratio_db = 10 * math.log10(np.sum(echo[a:b] ** 2) / np.sum(near[a:b] ** 2))
        act = active_mask(near[a:b], 20.0)
        pe, pn = frame_powers(echo[a:b]), frame_powers(near[a:b])
        w.ratio_active_db = 10 * math.log10(np.sum(pe[act]) / np.sum(pn[act]))
    # warm variant: a previous reply (other sentences) ends 3.5 s before this one starts
    w_n = int(WARM_S * SR)
    n_cut = lead + int(round((wakes[0].end + WINDOW_AFTER_S + 1.5) * SR))
    rot = (rot + 3) % len(FAR_TEXTS)
    prev, _ = _reply_track(list(FAR_TEXTS[rot:] + FAR_TEXTS[:rot]), int(WARM_REPLY_S * SR), 0)
    prev = _i16(_scale_to(prev, spec.far_dbfs)).astype(np.float64)
    ref_w = np.concatenate([prev, np.zeros(w_n - prev.shape[0]), far[:n_cut]])
    echo_w, _ = _echo(spec, ref_w, None, gain)
    noise_w = np.concatenate([_noise(spec, w_n, spec.seed * 7919 + 131 * k + v + 7), noise[:n_cut]])
    mic_w = echo_w + np.concatenate([np.zeros(w_n), near[:n_cut]]) + noise_w
    return Stream(spec, _i16(far), _i16(echo + near + noise), _i16(near + noise), _i16(echo + noise),
                  echo, near, wakes, _i16(ref_w), _i16(mic_w))


@dataclass
class SelfStream:
    spec: RoomSpec
    ref: np.ndarray
    mic: np.ndarray  # echo + noise
    segs: list[tuple[str, float, float]]

    @property
    def wake_phrases(self) -> int:
        return sum(t.lower().count("hey jarvis") for t, a, b in self.segs if b - a > 0)

    @property
    def reply_s(self) -> float:
        return (self.mic.shape[0] - int(PREROLL_S * SR)) / SR


def self_stream(spec: RoomSpec, j: int) -> SelfStream:
    """Self-trigger stream ``j`` of a room: wake-word replies alternating with ordinary
    replies (rotated per stream, so even ``j`` start with a wake-word reply)."""
    texts: list[str] = []
    for i in range(max(len(WAKE_REPLY_TEXTS), len(FAR_TEXTS))):
        texts.append(WAKE_REPLY_TEXTS[(i + j) % len(WAKE_REPLY_TEXTS)])
        texts.append(FAR_TEXTS[(i + 2 * j) % len(FAR_TEXTS)])
    if j % 2:
        texts = texts[1:] + texts[:1]
    lead = int(PREROLL_S * SR)
    n_play = int(SELF_STREAM_S * SR)
    far, segs = _reply_track(texts, n_play, lead)
    far = _i16(_scale_to(far, spec.far_dbfs)).astype(np.float64)
    k = j % max(PLACEMENTS, 1)
    sp = variant(spec, k)
    echo, _ = _echo(sp, far, None, None)
    noise = _noise(sp, far.shape[0], sp.seed * 104729 + j)
    return SelfStream(sp, _i16(far), _i16(echo + noise), segs)


# -- processing --------------------------------------------------------------------------
CPU: dict[str, float] = {"fe": 0.0, "detector": 0.0, "signals": 0.0, "wake": 0.0}
AUDIO_S: dict[str, float] = {"detector": 0.0, "wake": 0.0}  # audio seconds scored


def run_frontend(mic: np.ndarray, ref: np.ndarray, factory=None) -> np.ndarray:
    """Whole stream through a fresh default front end (or ``factory()``) in 10 ms blocks;
    output aligned to the input (latency removed), int16."""
    fe = CaptureFrontEnd(FrontEndSettings()) if factory is None else factory()
    lat = int(fe.latency_samples)
    n = mic.shape[0]
    m = np.concatenate([mic, np.zeros(lat, dtype=np.int16)])
    r = np.concatenate([ref, np.zeros(lat, dtype=np.int16)])
    c0 = time.process_time()
    outs = [fe.process(m[i : i + BLOCK], r[i : i + BLOCK]) for i in range(0, m.shape[0], BLOCK)]
    CPU["fe"] += time.process_time() - c0
    close = getattr(fe, "close", None)
    if close is not None:
        close()
    return np.concatenate(outs)[lat : lat + n]


WAKE_TAP = "aec"  # the front end's wake tap the daemon feeds to the detector


class WakePath:
    """The daemon's wake path: ``CaptureFrontEnd(FrontEndSettings(), wake_tap=WAKE_TAP)``
    in 10 ms blocks; every block's ``wake_tap`` and the block's reference go into one
    :class:`PlaybackAwareWake` (defaults; ``playing`` derived from the reference) at the
    block's capture time, as ``Daemon._on_capture_frame`` does. Detection times are
    moved back by the front end's latency (the tap lags the microphone by it) so they
    are on the stream's timeline; the uplink output is returned aligned for the "FE
    uplink" diagnostic. One detector pair over many streams, reset between streams on
    a clock that only goes forward."""

    def __init__(self) -> None:
        self.det = PlaybackAwareWake(MODEL)
        self.clock = 1000.0

    def run(self, mic: np.ndarray, ref: np.ndarray, t0: float):
        """-> (detection times, chunk end times, chunk mic scores, uplink output aligned)."""
        d = self.det
        d.reset()
        fe = CaptureFrontEnd(FrontEndSettings(), wake_tap=WAKE_TAP)
        lat = int(fe.latency_samples)
        n = mic.shape[0]
        m = np.concatenate([mic, np.zeros(lat, dtype=np.int16)])
        r = np.concatenate([ref, np.zeros(lat, dtype=np.int16)])
        base = self.clock
        outs, dets, ends, scores = [], [], [], []
        chunks = d.mic.chunks
        cfe = cw = 0.0
        for i in range(0, m.shape[0], BLOCK):
            c0 = time.process_time()
            outs.append(fe.process(m[i : i + BLOCK], r[i : i + BLOCK]))
            c1 = time.process_time()
            det = d.process(fe.wake_tap, r[i : i + BLOCK], base + i / SR)
            cw += time.process_time() - c1
            cfe += c1 - c0
            if d.mic.chunks != chunks:
                chunks = d.mic.chunks
                ends.append(t0 + (i + BLOCK - lat) / SR)
                scores.append(d.last_score)
            if det is not None:
                dets.append(det.t - base + t0 - lat / SR)
        fe.close()
        CPU["fe"] += cfe
        CPU["wake"] += cw
        AUDIO_S["wake"] += m.shape[0] / SR
        self.clock = base + m.shape[0] / SR + 10.0
        return dets, np.asarray(ends), np.asarray(scores), np.concatenate(outs)[lat : lat + n]


class Scorer:
    """One detector over many streams: reset between streams, on a clock that only goes
    forward (so the refractory time of one stream cannot suppress the next)."""

    def __init__(self) -> None:
        self.det = WakeWordDetector(MODEL)
        self.clock = 1000.0

    def run(self, x: np.ndarray, t0: float) -> tuple[list[float], np.ndarray, np.ndarray]:
        """Detection times, chunk end times and chunk scores (times relative to the
        stream's ``t0``-based timeline)."""
        d = self.det
        d.reset()
        base = self.clock
        dets, ends, scores = [], [], []
        c0 = time.process_time()
        for i in range(0, x.shape[0] - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
            r = d.process(x[i : i + CHUNK_SAMPLES], base + i / SR)
            ends.append(t0 + (i + CHUNK_SAMPLES) / SR)
            scores.append(d.last_score)
            if r is not None:
                dets.append(r.t - base + t0)
        CPU["detector"] += time.process_time() - c0
        AUDIO_S["detector"] += x.shape[0] / SR
        self.clock = base + x.shape[0] / SR + 10.0
        return dets, np.asarray(ends), np.asarray(scores)


# user alone (no echo), front end off (raw mic), the plain Speex echo canceller (diagnostic:
# the front-end benchmark's "speex AEC", no preprocessor/post-filter), the front end's
# uplink output into one plain detector (diagnostic: the wake path before the wake tap),
# front end on = the daemon's wake path (WakePath: wake tap + PlaybackAwareWake)
CONFIGS = ("alone", "off", "aec", "uplink", "on")
SELF_CONFIGS = ("off", "uplink", "on")


def _score(s: Stream, wakes: list[Wake], cfg: str, dets, ends, scores) -> list[float]:
    used = set()
    for w in wakes:
        lo, hi = w.start, w.end + WINDOW_AFTER_S
        inside = [t for t in dets if lo <= t <= hi]
        used.update(inside)
        w.hit[cfg] = bool(inside)
        sel = (ends >= lo) & (ends <= hi)
        w.max_score[cfg] = float(scores[sel].max()) if sel.any() else 0.0
    return [t for t in dets if t not in used]


def score_stream(scorer: Scorer, path: WakePath, s: Stream) -> dict[str, list[float]]:
    """Fill each wake's hit/max_score per config (and the warm variant's); return the
    false wakes (detections outside every window) per config, as their times."""
    lead = int(PREROLL_S * SR)
    dets, ends, scores, fe_out = path.run(s.mic, s.ref, s.t0)
    false = {"on": _score(s, s.wakes, "on", dets, ends, scores)}
    aec_out = run_frontend(s.mic, s.ref, speex_aec_only)
    fe_echo = run_frontend(s.echo_mic, s.ref).astype(np.float64)
    for w in s.wakes:
        a, b = lead + int(round(w.start * SR)), lead + int(round(w.end * SR))
        e_out = float(np.sum(fe_echo[a:b] ** 2))
        w.fe_atten_db = 10 * math.log10(np.sum(s.echo_mic[a:b].astype(np.float64) ** 2) / max(e_out, 1e-9))
        w.resid_db = 10 * math.log10(max(e_out, 1e-9) / np.sum(s.near[a:b] ** 2))
    for cfg, x in (("alone", s.alone), ("off", s.mic), ("aec", aec_out), ("uplink", fe_out)):
        false[cfg] = _score(s, s.wakes, cfg, *scorer.run(x, s.t0))
    # first-2-s wake words with a warm canceller (previous reply): AEC, uplink, wake path
    if s.warm_mic is not None:
        w_n = int(WARM_S * SR)
        early = [w for w in s.wakes if w.early]
        x = run_frontend(s.warm_mic, s.warm_ref, speex_aec_only)[w_n:]
        _score(s, early, "aec_warm", *scorer.run(x, s.t0))
        dets, ends, scores, up = path.run(s.warm_mic, s.warm_ref, s.t0 - WARM_S)
        keep = ends >= s.t0
        _score(s, early, "on_warm", [t for t in dets if t >= s.t0], ends[keep], scores[keep])
        _score(s, early, "uplink_warm", *scorer.run(up[w_n:], s.t0))
    return false


# -- tables ------------------------------------------------------------------------------
def _pct(ws: list[Wake], cfg: str) -> float:
    return 100.0 * sum(w.hit[cfg] for w in ws) / len(ws) if ws else math.nan


def _mean(vals) -> float:
    vals = list(vals)
    return float(np.mean(vals)) if vals else math.nan


def detection_table(wakes: list[Wake], false: dict[str, dict[str, int]], minutes: dict[str, float]) -> str:
    rooms = [r.name for r in ROOMS]
    groups: list[tuple[str, str, list[Wake]]] = []
    warm = f"first {EARLY_S:g} s, warm*"
    device = "all, device**"
    for w in wakes:  # the device figure: first-2-s wake words with the warm canceller
        for c in ("aec", "uplink", "on"):
            if w.early and f"{c}_warm" in w.hit:
                w.hit[f"{c}_dev"], w.max_score[f"{c}_dev"] = w.hit[f"{c}_warm"], w.max_score[f"{c}_warm"]
            else:
                w.hit[f"{c}_dev"], w.max_score[f"{c}_dev"] = w.hit[c], w.max_score[c]
    for room in [*rooms, "all"]:
        ws = [w for w in wakes if room == "all" or w.room == room]
        groups.append((room, f"first {EARLY_S:g} s", [w for w in ws if w.early]))
        groups.append((room, warm, [w for w in ws if w.early and "on_warm" in w.hit]))
        groups.append((room, f"after {EARLY_S:g} s", [w for w in ws if not w.early]))
        groups.append((room, "all", ws))
        groups.append((room, device, ws))
    for r in RATIOS_DB:
        groups.append(("all", f"echo/user {r:g} dB", [w for w in wakes if w.target_db == r]))
    head = (f"{'room':<6} {'wake words':<17} {'n':>4}  {'alone %':>8} {'FE off %':>9} {'AEC %':>6} "
            f"{'uplink %':>8} {'FE on %':>8} {'on|alone':>8}   "
            f"{'max score alone/off/AEC/upl/on':>30}   {'E/U dB':>7} {'FE atten':>8} {'resid/U':>8}   goal FE on")
    lines = [
        f"== wake word while the unit talks: detection rate ({MODEL}, threshold 0.5, "
        f"window [start, end + {WINDOW_AFTER_S:g} s]) ==",
        f"{len(USER_VOICES)} user voices x {PLACEMENTS} placements per room x {1 + LATER_PER_STREAM} wake words "
        f"per stream (1 in the first {EARLY_S:g} s of playback); reply: {FAR_VOICE}, "
        f"echo at the room's echo level; fresh front end at {PREROLL_S:g} s before playback starts",
        f"FE on = the daemon's wake path: the front end's wake tap ({WAKE_TAP!r}, before the residual echo "
        "suppressor) into PlaybackAwareWake (defaults: threshold 0.5 on one chunk, or 0.2 on 2 consecutive chunks "
        "while the unit plays; detections near a detection of the same model on the reference are dropped); uplink = the front end's uplink output "
        "into one plain detector at 0.5 (the wake path before this change; diagnostic)",
        "alone = the user without the echo (set-up check); AEC = plain Speex echo canceller, no "
        "preprocessor (diagnostic); on|alone = FE on among the wake words detected alone; E/U = echo-to-user energy ratio over the wake-word span at the mic; "
        "FE atten = echo attenuation of the front end over the span, resid/U = residual echo (+noise) "
        "after the front end to user (both from a front-end run without the user)",
        f"* warm: the same wake words with the canceller (AEC, FE on) converged on a previous "
        f"{WARM_REPLY_S:g} s reply that ended {WARM_S - WARM_REPLY_S + PREROLL_S:g} s before this one started",
        "** device: the first-2-s wake words warm, the others as they are: the daemon runs the canceller "
        "continuously (silence is played between replies), so only the first reply after boot meets a "
        "cold canceller; this is the figure that applies to a unit in use",
        head,
        "-" * len(head),
    ]
    for room, label, ws in groups:
        if not ws:
            continue
        cm = {c: c for c in CONFIGS}
        if label == warm:
            cm.update(aec="aec_warm", uplink="uplink_warm", on="on_warm")
        if label == device:
            cm.update(aec="aec_dev", uplink="uplink_dev", on="on_dev")
        sc = "/".join(f"{_mean(w.max_score[cm[c]] for w in ws):.2f}" for c in CONFIGS)
        on = _pct(ws, cm["on"])
        on_alone = _pct([w for w in ws if w.hit["alone"]], cm["on"])
        if _pct(ws, "alone") >= GOAL_PCT:
            goal = f">= {GOAL_PCT:g} %" + ("" if on >= GOAL_PCT else " ✗")
        else:  # the room caps the detector even without echo (kiosk reverb): judge on|alone
            goal = f"on|alone >= {GOAL_PCT:g} %" + ("" if on_alone >= GOAL_PCT else " ✗")
        if label == warm or not (label in ("all", device) or room == "all"):
            goal = ""
        diag = (f"{_mean(w.fe_atten_db for w in ws):>8.1f} {_mean(w.resid_db for w in ws):>+8.1f}"
                if label != warm else f"{'-':>8} {'-':>8}")
        lines.append(
            f"{room:<6} {label:<17} {len(ws):>4}  {_pct(ws, 'alone'):>8.1f} {_pct(ws, 'off'):>9.1f} "
            f"{_pct(ws, cm['aec']):>6.1f} {_pct(ws, cm['uplink']):>8.1f} {on:>8.1f} "
            f"{on_alone:>8.1f}   "
            f"{sc:>30}   "
            f"{_mean(w.ratio_db for w in ws):>7.1f} {diag}   {goal}"
        )
    r = np.array([w.ratio_db for w in wakes])
    ra = np.array([w.ratio_active_db for w in wakes])
    lines.append(
        f"measured echo-to-user ratio over the wake-word span: mean {r.mean():.1f} dB, min {r.min():.1f}, "
        f"max {r.max():.1f} (on the user's active 10 ms frames: mean {ra.mean():.1f}, "
        f"min {ra.min():.1f}, max {ra.max():.1f})"
    )
    for room in rooms:
        lines.append(
            f"false wakes outside the windows, {room}: user alone {false[room]['alone']}, FE off "
            f"{false[room]['off']}, AEC {false[room]['aec']}, uplink {false[room]['uplink']}, "
            f"FE on {false[room]['on']} "
            f"(in {minutes[room]:.1f} min of stream)"
        )
    missed = [w for w in wakes if not w.hit["on"]]
    if missed:
        lines.append("missed with the front end on (room/placement voice start ratio max-score FE-atten):")
        for w in missed[:MAX_LISTED]:
            lines.append(
                f"  {w.room}/{w.placement} {w.voice:<18} start {w.start:5.2f} s  E/U {w.ratio_db:4.1f} dB  "
                f"score {w.max_score['on']:.2f} (off {w.max_score['off']:.2f}, alone {w.max_score['alone']:.2f})  FE atten {w.fe_atten_db:5.1f} dB"
            )
        if len(missed) > MAX_LISTED:
            lines.append(f"  ... and {len(missed) - MAX_LISTED} more")
    return "\n".join(lines)


# -- runs --------------------------------------------------------------------------------
ELAPSED: dict[str, float] = {}
T_START = {"wall": 0.0, "cpu": 0.0}


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    T_START["wall"], T_START["cpu"] = time.monotonic(), time.process_time()
    return Scorer()


@pytest.fixture(scope="module")
def path() -> WakePath:
    return WakePath()


@pytest.fixture(scope="module")
def playback(scorer: Scorer, path: WakePath):
    t0 = time.monotonic()
    wakes: list[Wake] = []
    false: dict[str, dict[str, int]] = {}
    minutes: dict[str, float] = {}
    for spec in ROOMS:
        false[spec.name] = {c: 0 for c in CONFIGS}
        minutes[spec.name] = 0.0
        for k in range(PLACEMENTS):
            sp = variant(spec, k)
            for v in range(len(USER_VOICES)):
                c0 = time.process_time()
                s = playback_stream(sp, k, v)
                CPU["signals"] += time.process_time() - c0
                f = score_stream(scorer, path, s)
                for c in CONFIGS:
                    false[spec.name][c] += len(f[c])
                minutes[spec.name] += s.mic.shape[0] / SR / 60
                wakes.extend(s.wakes)
    ELAPSED["playback"] = time.monotonic() - t0
    return wakes, false, minutes


@pytest.fixture(scope="module")
def self_trigger(scorer: Scorer, path: WakePath):
    t0 = time.monotonic()
    res = {}
    for spec in ROOMS:
        r = {"minutes": 0.0, "phrases": 0, "ordinary": {}}
        for cfg in SELF_CONFIGS:
            r[cfg], r[f"max_{cfg}"], r["ordinary"][cfg] = [], 0.0, 0
        for j in range(SELF_STREAMS):
            c0 = time.process_time()
            s = self_stream(spec, j)
            CPU["signals"] += time.process_time() - c0
            dets, _, scores, fe_out = path.run(s.mic, s.ref, -PREROLL_S)
            runs = {"on": (dets, scores)}
            for cfg, x in (("off", s.mic), ("uplink", fe_out)):
                d, _, sc = scorer.run(x, -PREROLL_S)
                runs[cfg] = (d, sc)
            for cfg, (d, sc) in runs.items():
                r[cfg] += [(j, t) for t in d]
                r[f"max_{cfg}"] = max(r[f"max_{cfg}"], float(sc.max()))
                # a false wake during (or up to 1 s after) a sentence without the wake phrase
                r["ordinary"][cfg] += sum(
                    1 for t in d if not any("hey jarvis" in tx.lower() and a <= t <= b + WINDOW_AFTER_S
                                            for tx, a, b in s.segs))
            r["minutes"] += s.reply_s / 60
            r["phrases"] += s.wake_phrases
        res[spec.name] = r
    # the wake phrases of the replies, played dry (no room): does the model hear them?
    dry_hits, dry_n = 0, 0
    for text in WAKE_REPLY_TEXTS:
        x = _trim(render_speech(text, voice=FAR_VOICE, rate_wpm=REPLY_RATE))
        x = np.concatenate([np.zeros(int(PREROLL_S * SR), dtype=np.int16), x, np.zeros(SR, dtype=np.int16)])
        dets, _, _ = scorer.run(x, 0.0)
        dry_hits += min(len(dets), text.lower().count("hey jarvis"))
        dry_n += text.lower().count("hey jarvis")
    res["dry"] = (dry_hits, dry_n)
    ELAPSED["self"] = time.monotonic() - t0
    return res


def test_detection_during_playback(playback) -> None:
    wakes, false, minutes = playback
    print()
    print(detection_table(wakes, false, minutes))
    print(f"(playback streams: signal generation + front end + detector {ELAPSED['playback']:.1f} s)")
    # sanity of the set-up: the user's wake words alone are heard; the ratios are as designed
    assert _pct(wakes, "alone") >= 90.0, _pct(wakes, "alone")
    r = np.array([w.ratio_db for w in wakes])
    assert np.all((r >= min(RATIOS_DB) - 0.5) & (r <= max(RATIOS_DB) + 0.5)), (r.min(), r.max())
    assert any(w.early for w in wakes) and any(not w.early for w in wakes)


def test_self_trigger(self_trigger) -> None:
    res = self_trigger
    rooms = [r.name for r in ROOMS]
    head = f"{'room':<6} {'reply min':>9} {'wake phrases':>12} {'false wakes FE off':>19} {'uplink':>7} {'FE on':>6}   " \
           f"{'on ordinary speech off/upl/on':>29}   {'max score off/upl/on':>20}   goal FE on"
    lines = ["== self-trigger: the unit's own reply contains 'hey jarvis' (no user) ==",
             f"{SELF_STREAMS} streams of {SELF_STREAM_S:g} s per room (fresh front end each, "
             f"{PREROLL_S:g} s idle before the reply); reply voice {FAR_VOICE}; FE on = the daemon's wake path "
             "(wake tap + PlaybackAwareWake), uplink = front-end uplink output into one plain detector "
             "(diagnostic); 'on ordinary speech' = the false wakes not within a sentence with the wake phrase "
             f"(+{WINDOW_AFTER_S:g} s)", head, "-" * len(head)]
    tot = {"minutes": 0.0, "phrases": 0, **{c: 0 for c in SELF_CONFIGS}, **{f"o_{c}": 0 for c in SELF_CONFIGS}}
    for room in rooms:
        r = res[room]
        mark = "" if len(r["on"]) == 0 and r["ordinary"]["on"] == 0 else " ✗"
        o = r["ordinary"]
        lines.append(f"{room:<6} {r['minutes']:>9.1f} {r['phrases']:>12} {len(r['off']):>19} {len(r['uplink']):>7} "
                     f"{len(r['on']):>6}   {o['off']:>19}/{o['uplink']}/{o['on']}   "
                     f"{r['max_off']:>10.2f}/{r['max_uplink']:.2f}/{r['max_on']:.2f}       0{mark}")
        for key in ("minutes", "phrases"):
            tot[key] += r[key]
        for c in SELF_CONFIGS:
            tot[c] += len(r[c])
            tot[f"o_{c}"] += o[c]
    mark = "" if tot["on"] == 0 else " ✗"
    lines.append(f"{'all':<6} {tot['minutes']:>9.1f} {tot['phrases']:>12} {tot['off']:>19} {tot['uplink']:>7} "
                 f"{tot['on']:>6}   {tot['o_off']:>19}/{tot['o_uplink']}/{tot['o_on']}   {'':>20}       0{mark}")
    for room in rooms:
        on = res[room]["on"]
        if on:
            early = sum(1 for _, t in on if t < EARLY_S)
            lines.append(f"FE-on false wakes in {room} (stream, s after playback start): "
                         + ", ".join(f"{j}:{t:.2f}" for j, t in on) + f"  ({early} in the first {EARLY_S:g} s)")
    dh, dn = res["dry"]
    lines.append(f"wake phrases of the replies played dry (no room, no front end): {dh} of {dn} detected")
    print()
    print("\n".join(lines))
    print(f"(self-trigger streams: {ELAPSED['self']:.1f} s)")
    # the reply's wake phrases are wake words the model hears (at 165 wpm in the reply voice
    # some score below the threshold even dry)
    assert dn > 0 and dh >= 0.5 * dn, (dh, dn)


def test_runtime(playback, self_trigger) -> None:
    wall = time.monotonic() - T_START["wall"]
    cpu = time.process_time() - T_START["cpu"]
    print()
    print(f"CPU {cpu:.1f} s (process time, all threads; plain detector {CPU['detector']:.1f} s, wake path "
          f"detectors {CPU['wake']:.1f} s, front end {CPU['fe']:.1f} s, signal generation "
          f"{CPU['signals']:.1f} s), wall {wall:.1f} s")
    one = CPU["detector"] / max(AUDIO_S["detector"], 1e-9)
    two = CPU["wake"] / max(AUDIO_S["wake"], 1e-9)
    print(f"CPU per audio second: one plain detector {100 * one:.1f} % of a core, PlaybackAwareWake "
          f"(mic + reference detector) {100 * two:.1f} % of a core (+{100 * (two - one):.1f} %)")
