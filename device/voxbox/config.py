"""Voxbox configuration: one TOML file, validated at start.

The file (default ``/etc/voxbox/config.toml``) has the tables ``[realtime]``, ``[audio]``,
``[frontend]``, ``[barge_in]``, ``[wake]``, ``[gpio]``, ``[conversation]``, ``[earcons]``,
``[tools]``, ``[broker]``, ``[metrics]`` and ``[log]``. Every key is
optional except where noted; unknown keys are errors (a typo must not silently fall back to
a default on a unit in the field). Validation is done by pydantic; :func:`load_config`
turns its errors into one :class:`ConfigError` whose message names each offending key
(``realtime.dialect``) with the value given and the values allowed.

The API key is never part of this file: see :mod:`voxbox.host.credentials`.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import tomllib
import typing
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from voxbox.errors import ConfigError  # noqa: F401 (re-exported)

DEFAULT_CONFIG_PATH = Path("/etc/voxbox/config.toml")

Dialect = Literal["openai-ga", "openai-beta", "azure-voicelive"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TurnDetection(_Section):
    """Server-side turn detection (``session.audio.input.turn_detection`` in GA,
    ``session.turn_detection`` in beta and Voice Live).

    ``type = "none"`` is push-to-talk: the client commits the input buffer and asks for
    the response itself.
    """

    type: Literal[
        "server_vad", "semantic_vad", "azure_semantic_vad", "azure_semantic_vad_multilingual", "none"
    ] = "server_vad"
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    prefix_padding_ms: Annotated[int, Field(ge=0, le=5000)] = 300
    silence_duration_ms: Annotated[int, Field(ge=0, le=10000)] = 500
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    interrupt_response: bool = True
    #: Voice Live ``azure_semantic_vad*`` only: semantic end-of-utterance detection
    #: (``end_of_utterance_detection``), which waits out mid-sentence pauses
    end_of_utterance: bool = False


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_broker_url(url: str) -> str | None:
    """Why ``url`` cannot be a token-broker URL, or None when it can. Pure (no I/O).

    The rule :class:`voxbox.realtime.broker.TokenBroker` enforces (and the configuration validates with): scheme
    ``https``, or ``http`` only to a loopback host (``localhost``, 127.0.0.0/8, ``::1``);
    a host; a valid port; no user info (it would be a second secret, in clear in the
    config). The message names the URL without user info or query.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
        shown = public_url(url)
    except ValueError as exc:
        shown = re.sub(r"//[^/?#@]*@", "//", re.split(r"[?#]", url, maxsplit=1)[0])
        return f"broker url {shown!r} is not a valid URL: {exc}"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"broker url must be https://host/...: {shown!r}"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return f"broker url {shown}: plain http is allowed only to a loopback address"
    if parts.username is not None or parts.password is not None:
        return f"broker url {shown}: user info in the URL is not allowed"
    return None


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment (for messages and logs)."""
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{p.port}" if p.port else "")
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


def _shown_url(url: str) -> str:
    """``url`` as an error message may show it: without user info, query or fragment
    (an Azure ``api-key=`` query parameter is a secret)."""
    head = url.split("?", 1)[0].split("#", 1)[0]
    scheme, sep, rest = head.partition("://")
    if sep:
        netloc, slash, path = rest.partition("/")
        head = f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"
    return head


def check_realtime_url(url: str) -> str | None:
    """Why ``url`` cannot be ``realtime.url``, or None when it can. Pure (no I/O).

    Allowed: ``"local"`` (the parrot server inside the daemon), ``wss://host/...``, and
    ``ws://`` only to a loopback host (``localhost``, 127.0.0.0/8, ``::1``): over plain
    ``ws://`` the API key (or token) and the audio would cross the network in clear text.
    The message shows the URL without user info or query.
    """
    if url == "local":
        return None
    shown = _shown_url(url)
    if not url.startswith(("ws://", "wss://")):
        return f"must be 'local' or start with wss:// (or ws:// to a loopback host), got {shown!r}"
    try:
        host = urlsplit(url).hostname
    except ValueError as exc:
        return f"{shown!r} is not a valid URL: {exc}"
    if not host:
        return f"{shown!r} has no host"
    if url.startswith("ws://") and not is_loopback_host(host):
        return (f"{shown!r} uses plain ws:// to {host}, which would send the API key and the "
                "audio unencrypted: use wss:// (ws:// is allowed only to a loopback host: "
                "localhost, 127.0.0.0/8, ::1)")
    return None


class Realtime(_Section):
    """Where and how to reach the Realtime service."""

    url: str = "wss://api.openai.com/v1/realtime"
    dialect: Dialect = "openai-ga"
    model: str = "gpt-realtime"
    deployment: str = ""
    api_version: str = ""
    auth: Literal["auto", "bearer", "api-key"] = "auto"
    instructions: str = (
        "You are a helpful voice assistant in a small device. Answer briefly, in one or two "
        "spoken sentences."
    )
    voice: str = "marin"
    turn_detection: TurnDetection = TurnDetection()
    transcription_model: str = ""
    #: service-side input noise reduction: GA ``audio.input.noise_reduction``
    #: (near_field / far_field), Voice Live ``input_audio_noise_reduction``
    #: (azure_deep_noise_suppression); "off" sends nothing
    noise_reduction: Literal["off", "near_field", "far_field", "azure_deep_noise_suppression"] = "off"
    #: Voice Live server echo cancellation (``input_audio_echo_cancellation``)
    server_echo_cancellation: bool = False
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    reconnect_initial_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: after a fatal answer (HTTP 401/403, close 3000/4000, invalid_api_key,
    #: insufficient_quota) the next attempt waits this long (s)
    fatal_retry_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    #: roll over to a fresh session at this age, between turns (s); default by dialect:
    #: 25 min for openai-beta and azure-voicelive, 55 min for openai-ga
    session_rollover_s: Annotated[float, Field(gt=0, le=86400)] | None = None
    #: a liveness ping unanswered this long, with no server event either, is a stall:
    #: the socket is replaced (s). Pings go every second in a turn, every 10 s otherwise.
    stall_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    #: a session that stayed up this long (or carried a completed turn) resets the
    #: reconnect backoff; session.created/updated alone do not (s)
    healthy_after_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: connections the service accepted (handshake done) allowed in any 60 s, whatever
    #: the backoff draws (attempts that never reach it are paced by the backoff alone)
    max_connects_per_min: Annotated[int, Field(ge=1, le=60)] = 6

    @model_validator(mode="after")
    def _url_scheme(self) -> "Realtime":
        why = check_realtime_url(self.url)
        if why:
            raise ValueError(f"realtime.url: {why}")
        return self


class Audio(_Section):
    """ALSA devices. Use stable names (``plughw:CARD=Device,DEV=0`` or a PCM defined in
    asound.conf), never card indexes, which change with USB enumeration order."""

    capture_device: str = "default"
    playback_device: str = "default"
    capture_rate: Literal[16000] = 16000
    playback_rate: Literal[16000, 24000, 48000] = 24000
    period_ms: Literal[10] = 10
    periods: Annotated[int, Field(ge=2, le=16)] = 4
    jitter_prebuffer_ms: Annotated[int, Field(ge=0, le=1000)] = 60
    #: reply-audio time-stretching in the jitter buffer (WSOLA expand to bridge short
    #: network gaps, accelerate to catch up): playback starts once 60 ms is queued and
    #: expand keeps the queue near the adaptive target; jitter_prebuffer_ms is not used.
    #: false = the adaptive-prebuffer buffer, bit-exact audio
    jitter_stretch: bool = True
    #: a fixed-depth jitter buffer of this many ms (no adaptation, no stretching); unset =
    #: adaptive
    jitter_fixed_ms: Annotated[int, Field(ge=0, le=1000)] | None = None
    #: bounds of the adaptive target (ms): the 95th percentile of the recent playback
    #: segments' requirements, clamped to [jitter_min_ms, jitter_max_ms]
    jitter_min_ms: Annotated[int, Field(ge=0, le=2000)] = 20
    jitter_max_ms: Annotated[int, Field(ge=0, le=2000)] = 600
    #: a capture stream of nothing but digital zeros for this long is a "deaf" microphone
    #: (a hardware mute switch, a dead codec): reported on the LED, in STATUS= and the
    #: journal (deaf_microphone), never restart-looped: the watchdog stays fed while
    #: frames come (s; 0 = off)
    deaf_after_s: Annotated[float, Field(ge=0, le=3600)] = 20.0
    #: ALSA mixer control for the volume (e.g. "PCM", "Speaker"); "" = software gain
    mixer: str = ""
    mixer_device: str = "default"
    #: volume at first start (percent); afterwards the last volume set is kept
    volume: Annotated[int, Field(ge=0, le=100)] = 70

    @model_validator(mode="after")
    def _jitter_bounds(self) -> "Audio":
        if self.jitter_min_ms > self.jitter_max_ms:
            raise ValueError(f"audio.jitter_min_ms ({self.jitter_min_ms}) must not exceed "
                             f"audio.jitter_max_ms ({self.jitter_max_ms})")
        return self


class FrontEnd(_Section):
    """Capture front end (libspeexdsp echo canceller + preprocessor)."""

    echo_cancel: bool = True
    frame_size: Literal[160, 256, 320, 512] = 256
    filter_ms: Annotated[int, Field(ge=20, le=1000)] = 200
    noise_suppress_db: Annotated[int, Field(ge=-60, le=0)] = -25
    echo_suppress_db: Annotated[int, Field(ge=-90, le=0)] = -60
    #: the preprocessor's residual echo attenuation while the user talks, dB: milder than
    #: Speex's -6, as voxbox's suppressor follows it (voxbox.dsp.frontend.FrontEndSettings)
    echo_suppress_active_db: Annotated[int, Field(ge=-90, le=0)] = -2
    agc: bool = False
    #: Voxbox's residual echo suppressor after the Speex preprocessor (voxbox.dsp.res)
    residual_echo: bool = True
    #: high-pass filter on the microphone before the canceller, Hz (0 = off)
    highpass_hz: Annotated[int, Field(ge=0, le=1000)] = 0
    #: identify the loudspeaker's saturation (a soft clipper, voxbox.dsp.loudspeaker) and
    #: feed the canceller the reference through it, so a loudspeaker driven into
    #: distortion (a car at speaking volume) leaves no echo the linear canceller cannot remove
    loudspeaker_model: bool = True
    #: retrain a young echo canceller once, on its first 2 s of far end four times over,
    #: so a user who talks over the first reply after a start is heard through a learned
    #: filter (voxbox.dsp.frontend.CaptureFrontEnd.prepare_early_retrain)
    early_retrain: bool = True
    reference_delay_ms: Annotated[int, Field(ge=0, le=500)] = 0
    """Extra delay (ms) applied to the far-end reference before the echo canceller, for
    playback paths that buffer more than ALSA reports (the reference must never arrive
    after its echo, and should lead it by as little as possible)."""
    #: measure the echo delay from normal playback (no chirp) and move the reference
    #: delay line so the reference leads the echo by reference_lead_ms
    track_echo_delay: bool = True
    reference_lead_ms: Annotated[float, Field(gt=0, le=100)] = 10.0
    #: resample the reference to the microphone's clock when the tracker measures drift
    #: (capture and playback on different sound cards)
    drift_compensation: bool = True
    #: seconds of microphone, reference and output kept in memory (0 = off); SIGUSR1
    #: writes them as WAV files under ``$STATE_DIRECTORY/recordings`` for ``voxbox dsp``
    record_s: Annotated[int, Field(ge=0, le=600)] = 0


class BargeIn(_Section):
    """Barge-in while the unit speaks (see voxbox.duplex.nearend and voxbox.duplex.uplinkgate)."""

    #: "local": the device decides whether the user talks over the reply (a near-end
    #: detector on the echo canceller's output that knows the echo estimate), stops the
    #: speaker, truncates at what was played and cancels the response itself; the
    #: service's interrupt_response is sent off, so echo it hears cannot cancel a reply.
    #: Needs frontend.echo_cancel and frontend.residual_echo (else "service" is used).
    #: "service": the service's VAD decides (realtime.turn_detection.interrupt_response).
    mode: Literal["local", "service"] = "local"
    #: local mode: while the unit speaks, periods without the user's voice go out as
    #: comfort noise at the measured noise floor, so the service never hears the echo
    uplink_gate: bool = True
    #: audio sent ahead of the user's first detected period when the gate opens, ms
    preroll_ms: Annotated[int, Field(ge=0, le=1000)] = 300
    #: the gate and the detector stay active this long after the speaker stops, ms
    tail_ms: Annotated[int, Field(ge=0, le=2000)] = 300


class Wake(_Section):
    """Local wake word (openWakeWord)."""

    enabled: bool = True
    model: str = "hey_jarvis"
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    refractory_s: Annotated[float, Field(ge=0.0, le=30.0)] = 1.5
    #: while the unit talks: listen on the echo canceller's output before the residual
    #: suppressor, ignore wake words the unit itself is saying (a second detector on the
    #: far-end reference), and accept a lower score confirmed over 2 chunks
    playback_aware: bool = True
    threshold_playback: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    #: while the unit plays, a wake word needs the near-end speech detector (local
    #: barge-in) to have heard the user within this many seconds: the reply's own residual
    #: echo can score like a wake word, the user's wake word is near-end speech.
    #: 0: no such condition
    playback_near_end_s: Annotated[float, Field(ge=0.0, le=10.0)] = 1.5


class Gpio(_Section):
    """Button and LED (BCM pin numbers)."""

    enabled: bool = True
    button: Annotated[int, Field(ge=0, le=27)] = 17
    led: Annotated[int, Field(ge=0, le=27)] = 12
    #: RGB LED pins (red, green, blue); when set, ``led`` is not used
    rgb_led: Annotated[list[Annotated[int, Field(ge=0, le=27)]], Field(min_length=3, max_length=3)] | None = None
    #: True for a common-cathode RGB LED or an LED wired pin → resistor → LED → GND
    led_active_high: bool = True
    pin_factory: Literal["auto", "mock"] = "auto"
    button_active_low: bool = True
    debounce_ms: Annotated[int, Field(ge=0, le=200)] = 20
    #: a press this long is a hold (push-to-talk); shorter releases are taps
    hold_ms: Annotated[int, Field(ge=100, le=5000)] = 150
    long_hold_ms: Annotated[int, Field(ge=1000, le=30000)] = 5000

    @model_validator(mode="after")
    def _distinct(self) -> "Gpio":
        if self.enabled and self.button == self.led:
            raise ValueError(f"gpio.button and gpio.led are the same pin (GPIO{self.led})")
        return self


class Conversation(_Section):
    """Conversation timing."""

    listen_timeout_s: Annotated[float, Field(gt=0, le=60)] = 8.0
    follow_up_s: Annotated[float, Field(ge=0, le=60)] = 6.0
    thinking_timeout_s: Annotated[float, Field(gt=0, le=120)] = 20.0
    #: pause the reply when the service hears speech over it, resume it if the speech was
    #: shorter than min_interruption_ms (a cough, a door): see voxbox.conversation.machine
    resume_false_interruptions: bool = True
    min_interruption_ms: Annotated[int, Field(ge=0, le=5000)] = 300
    #: a turn cut by a link loss is held this long for the next session, where the user's
    #: audio of the turn is sent again (and a cut reply asked for again); past it the turn
    #: is lost and the unit says so (s; 0 = never hold)
    resume_turn_s: Annotated[float, Field(ge=0, le=30)] = 5.0
    #: recent conversation carried into a new session (rollover or reconnect) as text
    context_turns: Annotated[int, Field(ge=0, le=50)] = 6
    context_chars: Annotated[int, Field(ge=0, le=100000)] = 4000
    #: file under $STATE_DIRECTORY keeping the mute state across restarts
    state_file: str = "state.json"


class Earcons(_Section):
    """Short cues: a packaged cue name (``wake``, ``end``, ``error``, ``mute``,
    ``unmute``, ``startup``), a path to a WAV file, or ``"off"``.

    ``startup`` plays once when audio starts: a 1.5 s chime over a soft noise swell that
    trains the echo canceller before the first reply (the first reply after boot then
    behaves like the tenth; off = no training)."""

    wake: str = "wake"
    end: str = "end"
    error: str = "error"
    mute: str = "mute"
    unmute: str = "unmute"
    startup: str = "startup"


class Broker(_Section):
    """Token-broker mode (voxbox.realtime.broker): before each session the unit asks the fleet's
    own HTTPS endpoint, with its per-unit secret (credential ``voxbox-unit-secret``), for
    a short-lived Realtime token, and never holds the account key. Off while ``url`` is
    empty."""

    url: str = ""
    #: this unit's id; "" = the serial in /etc/voxbox/identity.toml
    unit_id: str = ""
    #: PEM of the fleet CA, trusted instead of the system store ("" = system store)
    ca_file: str = ""
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    refresh_margin_s: Annotated[float, Field(ge=0, le=3600)] = 30.0

    @model_validator(mode="after")
    def _url(self) -> "Broker":
        why = check_broker_url(self.url) if self.url else None
        if why:
            raise ValueError(f"broker.url: {why}")
        return self


class Tools(_Section):
    """Function tools the model may call: built-ins ``set_volume``, ``get_time``,
    ``stop_conversation``, ``device_status`` and plug-ins of the ``voxbox.conversation.tools`` entry
    point group."""

    enabled: bool = True
    #: tool names to offer (empty = all installed)
    allow: list[str] = []


class Metrics(_Section):
    """Fleet metrics (voxbox.host.metrics): counters and gauges written atomically in the
    Prometheus text format for node_exporter's textfile collector. Off while ``textfile``
    is empty."""

    #: the ``.prom`` file to write, an absolute path inside the directory node_exporter
    #: reads (``--collector.textfile.directory``); "" = off
    textfile: str = ""
    #: time between two writes of the file (s, 1..3600)
    interval_s: Annotated[float, Field(ge=1, le=3600)] = 15.0

    @model_validator(mode="after")
    def _textfile(self) -> Metrics:
        if self.textfile:
            path = PurePosixPath(self.textfile)
            if not path.is_absolute():
                raise ValueError(f"metrics.textfile must be an absolute path, got {self.textfile!r}")
            if path.suffix != ".prom":
                raise ValueError("metrics.textfile must name a file ending in .prom (node_exporter's "
                                 f"textfile collector reads only those), got {self.textfile!r}")
        return self


class Log(_Section):
    """Logging. ``format = "auto"`` logs to journald under systemd, else to stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "text", "json", "journal"] = "auto"


class Config(_Section):
    """The whole configuration."""

    realtime: Realtime = Realtime()
    audio: Audio = Audio()
    frontend: FrontEnd = FrontEnd()
    barge_in: BargeIn = BargeIn()
    wake: Wake = Wake()
    gpio: Gpio = Gpio()
    conversation: Conversation = Conversation()
    earcons: Earcons = Earcons()
    tools: Tools = Tools()
    broker: Broker = Broker()
    metrics: Metrics = Metrics()
    log: Log = Log()


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{key}: {given!r} is not allowed; allowed values: {allowed}"
    msg = err["msg"]
    if kind.startswith("value_error"):
        msg = msg.removeprefix("Value error, ")
        return f"{key}: {msg}" if not msg.startswith(key) else msg
    return f"{key}: {msg} (got {given!r})"


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a parsed TOML document.

    Raises:
        ConfigError: naming every bad key, its value and what is allowed.
    """
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors(include_url=False)]
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_config(path: Path | str | None, overrides: list[str] = ()) -> Config:
    """Read and validate the TOML file at ``path`` (None: the defaults), with
    ``section.key=value`` overrides applied on top (see :func:`apply_overrides`) and
    validated like the file.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or has bad keys/values
            (including an override's).
    """
    if path is None:
        source = "defaults" + (" with " + " ".join(overrides) if overrides else "")
        return parse_config(apply_overrides({}, list(overrides)), source)
    path = Path(path)
    data = read_toml(path, "configuration file")
    if overrides:
        return parse_config(apply_overrides(data, list(overrides)), f"{path} with {' '.join(overrides)}")
    return parse_config(data, str(path))


def read_toml(path: str | Path, what: str, error: type[Exception] = ConfigError,
              missing: str | None = None) -> dict[str, Any]:
    """The TOML file at ``path`` as a dict (the configuration, a fleet file, a unit
    identity: every TOML file Voxbox reads goes through here).

    Raises:
        error (``ConfigError`` unless given): naming the file and ``what`` it is, when it
            is missing (``missing`` replaces the message then), unreadable or not TOML.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {missing or what + ' not found'}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: {what} is not valid TOML: {exc}") from None


def key_annotation(key: str) -> Any:
    """The annotation of config key ``a.b.c``, or None when there is no such key (or it
    names a whole table)."""
    model: Any = Config
    for part in key.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        f = model.model_fields.get(part)
        if f is None:
            return None
        model = f.annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return None
    return model


def _is_stringy(ann: Any) -> bool:
    if ann is str:
        return True
    if typing.get_origin(ann) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(ann))
    return False


def set_key(data: dict[str, Any], key: str, raw: str) -> None:
    """Set ``data[a][b][c]`` for key ``a.b.c`` from the text ``raw``, in place: kept as
    text for a string-typed key (``wake.model=123`` stays "123"), else parsed as a TOML
    value, falling back to the text (validation then names the key and shows it)."""
    value: Any = raw
    if not _is_stringy(key_annotation(key)):
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            pass
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (see :func:`set_key`) to a copy of ``data``.

    Raises:
        ConfigError: an override is not of the form ``key=value``.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        set_key(out, key.strip(), raw)
    return out
