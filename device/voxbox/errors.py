"""Voxbox's errors: one hierarchy, and the process exit codes.

After gpiozero's ``exc.py``: every error Voxbox raises derives from :class:`VoxboxError`,
grouped by what the caller does about it, and each class also inherits the built-in
exception callers caught before there was a hierarchy (``ConfigError`` is a
``ValueError``, ``AudioDeviceError`` a ``RuntimeError``, ``SpeexDSPError`` an
``OSError``), so ``except ValueError`` still works. The modules that raise them
re-export them (``from voxbox.config import ConfigError`` keeps working).

::

    VoxboxError
    ├── ConfigurationError            the unit cannot run as configured: exit EXIT_CONFIG
    │   ├── ConfigError               bad configuration file or key (ValueError)
    │   ├── UnsupportedFeature        a [realtime] feature its dialect lacks (ValueError)
    │   ├── WakeModelError            wake-word model missing or unloadable (ValueError)
    │   └── CredentialError           no usable API key (RuntimeError)
    │       ├── CredentialUnreadable  a credential file that cannot be read
    │       └── CredentialInvalid     a malformed credential (names the source, never the value)
    ├── AudioError
    │   ├── AudioDeviceError          an ALSA PCM cannot be opened or used (RuntimeError)
    │   │   └── DeviceBlockedError    its open did not return in time
    │   ├── VolumeError               an ALSA mixer control (RuntimeError)
    │   ├── WavError                  a WAV file (ValueError)
    │   ├── EarconError               an earcon (ValueError)
    │   └── SpeechError               espeak-ng missing or failed (RuntimeError)
    ├── SpeexDSPError                 libspeexdsp missing, or a native call failed (OSError)
    ├── RealtimeError
    │   ├── ProtocolError             a server message that is not a JSON object with a type (ValueError)
    │   └── BrokerError               the token broker gave no token (RuntimeError)
    ├── ToolError                     a tool the model called failed as expected
    └── FieldToolError                installer and technician tools
        ├── DspError                  bad input for ``voxbox dsp`` (ValueError)
        ├── ProvisionError            a fleet file, CSV or unit (ValueError)
        ├── FirstBootError            the first-boot bundle (RuntimeError)
        └── ReportError               the support report (RuntimeError)
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "EXIT_OK", "EXIT_FAILURE", "EXIT_CONFIG",
    "VoxboxError", "ConfigurationError", "ConfigError", "UnsupportedFeature", "WakeModelError",
    "CredentialError", "CredentialUnreadable", "CredentialInvalid",
    "AudioError", "AudioDeviceError", "DeviceBlockedError", "VolumeError", "WavError", "EarconError",
    "SpeechError", "SpeexDSPError", "RealtimeError", "ProtocolError", "BrokerError", "ToolError",
    "FieldToolError", "DspError", "ProvisionError", "FirstBootError", "ReportError",
]

EXIT_OK = 0
EXIT_FAILURE = 1
#: EX_CONFIG (sysexits.h): systemd's ``RestartPreventExitStatus=`` lists it, so a unit
#: that cannot run as configured is not restarted in a loop
EXIT_CONFIG = 78


class VoxboxError(Exception):
    """Base of every error Voxbox raises on purpose."""


# ------------------------------------------------------------------ configuration
class ConfigurationError(VoxboxError):
    """The unit cannot run as configured: ``voxbox run`` and ``check-config`` log the
    message and exit with :data:`EXIT_CONFIG`."""

    exit_code = EXIT_CONFIG


class ConfigError(ConfigurationError, ValueError):
    """The configuration cannot be used. The message names every bad key."""


class UnsupportedFeature(ConfigurationError, ValueError):
    """The ``[realtime]`` configuration asks for a feature its dialect does not have.

    The message names every offending key (``realtime.noise_reduction``) with the value
    given, the dialect, and the values that dialect accepts.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class WakeModelError(ConfigurationError, ValueError):
    """A wake-word model (or the feature models) could not be found or loaded."""


class CredentialError(ConfigurationError, RuntimeError):
    """No usable API key was found. The message says where Voxbox looked."""


class CredentialUnreadable(CredentialError):
    """A credential file exists but cannot be read.

    Attributes:
        path: the file.
        reason: why (``strerror``, e.g. "Permission denied").
    """

    def __init__(self, path: Path | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read credential {path}: {reason}")


class CredentialInvalid(CredentialError):
    """A credential is present but malformed (:func:`voxbox.host.credentials.check_secret_value`):
    a configuration error, not a credential still to come. The message names the source,
    never the value.

    Attributes:
        source: where the value came from (``credential voxbox-api-key (/path)`` or
            ``environment variable VOXBOX_API_KEY``).
    """

    def __init__(self, source: str, problem: str):
        self.source = source
        super().__init__(f"{source}: {problem}")


# ------------------------------------------------------------------ audio
class AudioError(VoxboxError):
    """Audio devices, mixer controls and audio files."""


def _reason(detail: str) -> str:
    d = detail.lower()
    if "no such file or directory" in d or "no such device" in d or "unknown pcm" in d:
        return "missing"
    if "device or resource busy" in d:
        return "busy"
    return "unusable"


class AudioDeviceError(AudioError, RuntimeError):
    """An ALSA PCM could not be opened or used. Names the device and the PCMs available.

    Attributes: ``device`` (the PCM name), ``kind`` ("capture"/"playback"), ``detail``
    (ALSA's words), ``available`` (PCM names ALSA lists for ``kind``; empty when not
    known) and ``reason``: ``"missing"`` (no such PCM, card or device node: it may appear
    later, e.g. a USB card not enumerated yet), ``"busy"`` (another program has it),
    ``"blocked"`` (:class:`DeviceBlockedError`), ``"unusable"`` (anything else, e.g. a
    format the device refuses).
    """

    def __init__(self, device: str, kind: str, detail: str, available: list[str] | None = None):
        self.device = device
        self.kind = kind
        self.detail = detail
        self.available = list(available or [])
        self.reason = _reason(detail)
        tail = ""
        if available is not None:
            avail = ", ".join(self.available) if self.available else "(none)"
            tail = f"; available {kind} PCMs: {avail}"
        super().__init__(f"cannot open ALSA {kind} device {device!r}: {detail}{tail}")


class DeviceBlockedError(AudioDeviceError):
    """Opening the device did not return within the probe's timeout (s in ``timeout_s``):
    its driver or an ALSA plugin blocks (a stuck USB device, a FIFO with no peer)."""

    def __init__(self, device: str, kind: str, timeout_s: float):
        self.timeout_s = timeout_s
        super().__init__(device, kind, f"the open did not return within {timeout_s:g} s "
                         "(the driver or an ALSA plugin blocks)")
        self.reason = "blocked"


class VolumeError(AudioError, RuntimeError):
    """An ALSA mixer control could not be opened or used; names the control and device."""

    def __init__(self, control: str, device: str, detail: str):
        self.control = control
        self.device = device
        self.detail = detail
        super().__init__(f"ALSA mixer control {control!r} on device {device!r}: {detail}")


class WavError(AudioError, ValueError):
    """A WAV file could not be read; the message starts with what was being read."""


class EarconError(AudioError, ValueError):
    """An earcon could not be loaded; the message names the file (and the cue)."""


class SpeechError(AudioError, RuntimeError):
    """espeak-ng is missing or failed."""


class SpeexDSPError(VoxboxError, OSError):
    """libspeexdsp is missing, or a native call failed (NULL state, unknown ctl request)."""


# ------------------------------------------------------------------ the service link
class RealtimeError(VoxboxError):
    """The Realtime service or its token broker."""


class ProtocolError(RealtimeError, ValueError):
    """A server message that is not a JSON object with a string ``type``."""


class BrokerError(RealtimeError, RuntimeError):
    """The broker gave no token. ``fatal``: do not retry soon (slow retry + error state).

    Attributes:
        url: the broker URL (no query, no user info).
        status: the HTTP status, or None when there was no HTTP answer.
        cause: a short description (never contains a secret).
        fatal: True for refusals and configuration errors, False for transient failures.
        retry_after: seconds from ``Retry-After`` when the broker sent it, else None.
    """

    def __init__(self, url: str, cause: str, *, status: int | None = None, fatal: bool = False,
                 retry_after: float | None = None):
        self.url = url
        self.status = status
        self.cause = cause
        self.fatal = fatal
        self.retry_after = retry_after
        what = f"HTTP {status}: {cause}" if status is not None else cause
        super().__init__(f"token broker {url}: {what}" + (" (fatal)" if fatal else ""))


class ToolError(VoxboxError):
    """Raise from a tool to return ``{"error": str(exc)}`` to the model without a traceback
    in the journal (an expected failure, e.g. "no such room")."""


# ------------------------------------------------------------------ field tools
class FieldToolError(VoxboxError):
    """An installer's or technician's tool cannot do what was asked; the message says
    where and why."""


class DspError(FieldToolError, ValueError):
    """Bad input for ``voxbox dsp``; the message names the file or option."""


class ProvisionError(FieldToolError, ValueError):
    """A fleet file, CSV or unit cannot be provisioned. The message says where and why."""


class FirstBootError(FieldToolError, RuntimeError):
    """The bundle cannot be installed. The message says why; nothing was changed."""


class ReportError(FieldToolError, RuntimeError):
    """The archive could not be written, or failed the secret check (it is deleted)."""
