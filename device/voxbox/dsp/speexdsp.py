"""Thin, typed ctypes binding of the system libspeexdsp (echo canceller, preprocessor).

Adapter module: it owns the C library handle and the native states. The library is
loaded lazily on first use, so importing this module never fails; creating an object
when the library is missing raises :class:`SpeexDSPError`.

Audio contract: mono ``numpy.int16`` arrays of shape ``(frame_size,)`` (samples), at
the sample rate (Hz) given to the constructor. Buffers are passed to C by pointer;
nothing is copied or converted per sample in Python.

Native state lifetime: every object has ``close()`` (idempotent), is a context manager,
and frees its state from ``__del__`` as a safety net. A :class:`Preprocessor` linked to
an :class:`EchoCanceller` keeps the canceller alive, and closing the canceller first
unlinks it from every preprocessor, so the preprocessor never reads a freed echo state.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import weakref
from typing import Any

import numpy as np
import numpy.typing as npt

from voxbox.errors import SpeexDSPError  # noqa: F401 (re-exported)

__all__ = [
    "SpeexDSPError",
    "EchoCanceller",
    "Preprocessor",
    "load_library",
]

Int16Array = npt.NDArray[np.int16]

LIBRARY_NAME = "speexdsp"
LIBRARY_FALLBACK = "libspeexdsp.so.1"
DEBIAN_PACKAGE = "libspeexdsp1"

# speex/speex_echo.h
SPEEX_ECHO_GET_FRAME_SIZE = 3
SPEEX_ECHO_SET_SAMPLING_RATE = 24
SPEEX_ECHO_GET_SAMPLING_RATE = 25
SPEEX_ECHO_GET_IMPULSE_RESPONSE_SIZE = 27
SPEEX_ECHO_GET_IMPULSE_RESPONSE = 29

# speex/speex_preprocess.h
SPEEX_PREPROCESS_SET_DENOISE = 0
SPEEX_PREPROCESS_GET_DENOISE = 1
SPEEX_PREPROCESS_SET_AGC = 2
SPEEX_PREPROCESS_GET_AGC = 3
SPEEX_PREPROCESS_SET_VAD = 4
SPEEX_PREPROCESS_GET_VAD = 5
SPEEX_PREPROCESS_SET_AGC_LEVEL = 6  # float
SPEEX_PREPROCESS_GET_AGC_LEVEL = 7  # float
SPEEX_PREPROCESS_SET_NOISE_SUPPRESS = 18
SPEEX_PREPROCESS_GET_NOISE_SUPPRESS = 19
SPEEX_PREPROCESS_SET_ECHO_SUPPRESS = 20
SPEEX_PREPROCESS_GET_ECHO_SUPPRESS = 21
SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE = 22
SPEEX_PREPROCESS_GET_ECHO_SUPPRESS_ACTIVE = 23
SPEEX_PREPROCESS_SET_ECHO_STATE = 24
SPEEX_PREPROCESS_GET_ECHO_STATE = 25
SPEEX_PREPROCESS_GET_PROB = 45


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def _declare(lib: ctypes.CDLL) -> None:
    vp, c_int = ctypes.c_void_p, ctypes.c_int
    signatures: dict[str, tuple[list[Any], Any]] = {
        "speex_echo_state_init": ([c_int, c_int], vp),
        "speex_echo_state_destroy": ([vp], None),
        "speex_echo_state_reset": ([vp], None),
        "speex_echo_cancellation": ([vp, vp, vp, vp], None),
        "speex_echo_ctl": ([vp, c_int, vp], c_int),
        "speex_preprocess_state_init": ([c_int, c_int], vp),
        "speex_preprocess_state_destroy": ([vp], None),
        "speex_preprocess_run": ([vp, vp], c_int),
        "speex_preprocess_ctl": ([vp, c_int, vp], c_int),
    }
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)  # AttributeError -> reported by load_library
        fn.argtypes = argtypes
        fn.restype = restype


def load_library() -> ctypes.CDLL:
    """Load libspeexdsp once and declare the function signatures.

    Looks the library up with ``ctypes.util.find_library("speexdsp")`` and falls back
    to ``libspeexdsp.so.1``.

    Raises:
        SpeexDSPError: the library cannot be loaded or lacks a needed symbol; the
            message names the library and the Debian package ``libspeexdsp1``.
    """
    global _lib
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        candidates = [c for c in (ctypes.util.find_library(LIBRARY_NAME), LIBRARY_FALLBACK) if c]
        errors: list[str] = []
        for name in dict.fromkeys(candidates):
            try:
                lib = ctypes.CDLL(name)
                _declare(lib)
            except (OSError, AttributeError) as exc:
                errors.append(f"{name}: {exc}")
                continue
            _lib = lib
            return lib
        raise SpeexDSPError(
            "cannot load libspeexdsp (tried "
            + ", ".join(candidates)
            + "): install the Debian package "
            + DEBIAN_PACKAGE
            + " (apt install "
            + DEBIAN_PACKAGE
            + ")"
            + (f"; {'; '.join(errors)}" if errors else "")
        )


def _check_frame(name: str, arr: object, frame_size: int, *, writable: bool = False) -> Int16Array:
    """Validate a 1-D int16 frame of ``frame_size`` samples; return a C-contiguous view.

    Raises:
        ValueError: not an ndarray, wrong dtype or shape, or (``writable``) not a
            writable C-contiguous array.
    """
    if not isinstance(arr, np.ndarray):
        raise ValueError(
            f"{name}: expected numpy.ndarray of int16 with shape ({frame_size},), "
            f"got {type(arr).__name__}"
        )
    if arr.dtype != np.int16:
        raise ValueError(f"{name}: expected dtype int16, got {arr.dtype}")
    if arr.shape != (frame_size,):
        raise ValueError(f"{name}: expected shape ({frame_size},), got {arr.shape}")
    if writable:
        if not (arr.flags.c_contiguous and arr.flags.writeable):
            raise ValueError(f"{name}: expected a writable C-contiguous array")
        return arr
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class NativeState:
    """Context manager and finaliser for objects that own native state: both call
    :meth:`close`, which subclasses make idempotent. Subclasses keep the native pointer
    in ``_state`` (None once closed)."""

    _state: int | None = None

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._state is None

    def _handle(self) -> int:
        """The native pointer. Raises ValueError naming the class when closed."""
        state = self._state
        if state is None:
            raise ValueError(f"{type(self).__name__} is closed")
        return state

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: never raise from a finalizer
            pass


class EchoCanceller(NativeState):
    """Speex MDF acoustic echo canceller (``SpeexEchoState``), one mono channel.

    Args:
        frame_size: samples per call (10–20 ms recommended; 256 at 16 kHz is 16 ms).
        filter_length: echo tail to cancel, in samples (e.g. 200 ms = 3200 at 16 kHz).
        sample_rate: sample rate in Hz (set with ``SPEEX_ECHO_SET_SAMPLING_RATE``).

    Raises:
        ValueError: a non-positive argument.
        SpeexDSPError: library missing, or ``speex_echo_state_init`` returned NULL.
    """

    def __init__(self, frame_size: int, filter_length: int, sample_rate: int) -> None:
        self._state: int | None = None  # set first so __del__ is safe on failure
        self.frame_size = _positive_int("frame_size", frame_size)
        self.filter_length = _positive_int("filter_length", filter_length)
        self.sample_rate = _positive_int("sample_rate", sample_rate)
        lib = load_library()
        state = lib.speex_echo_state_init(self.frame_size, self.filter_length)
        if not state:
            raise SpeexDSPError("speex_echo_state_init returned NULL")
        self._lib = lib
        self._state = state
        self._linked: weakref.WeakSet[Preprocessor] = weakref.WeakSet()
        rate = ctypes.c_int32(self.sample_rate)
        if lib.speex_echo_ctl(state, SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate)) != 0:
            self.close()
            raise SpeexDSPError("speex_echo_ctl(SPEEX_ECHO_SET_SAMPLING_RATE) failed")

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        """Free the native state (idempotent). Unlinks any linked :class:`Preprocessor`."""
        state = self._state
        if state is None:
            return
        for pre in list(self._linked):
            pre._unlink_from(self)
        self._linked.clear()
        self._state = None
        self._lib.speex_echo_state_destroy(state)

    # -- processing ------------------------------------------------------------------
    def reset(self) -> None:
        """Reset the adaptive filter to its initial state (``speex_echo_state_reset``).

        Raises:
            ValueError: the canceller is closed.
        """
        self._lib.speex_echo_state_reset(self._handle())

    def cancel(self, mic: Int16Array, ref: Int16Array, out: Int16Array | None = None) -> Int16Array:
        """Remove the echo of ``ref`` from ``mic`` for one frame.

        Args:
            mic: microphone frame, int16, shape ``(frame_size,)``.
            ref: far-end (played) frame aligned to ``mic``, int16, shape ``(frame_size,)``.
                The reference should lead its echo in ``mic`` (echo path delay ≥ 0).
            out: optional preallocated writable C-contiguous int16 ``(frame_size,)``
                array; may be ``mic`` itself. A new array is allocated when omitted.

        Returns:
            The echo-cancelled frame (``out`` when given), int16, shape ``(frame_size,)``.

        Raises:
            ValueError: wrong type, dtype or shape (the message names the expected and
                the given shape), or the canceller is closed.
        """
        state = self._handle()
        n = self.frame_size
        mic = _check_frame("mic", mic, n)
        ref = _check_frame("ref", ref, n)
        if out is None:
            out = np.empty(n, dtype=np.int16)
        else:
            out = _check_frame("out", out, n, writable=True)
        self._lib.speex_echo_cancellation(state, mic.ctypes.data, ref.ctypes.data, out.ctypes.data)
        return out

    def impulse_response(self, out: npt.NDArray[np.int32] | None = None) -> npt.NDArray[np.int32]:
        """The adaptive filter's current impulse response, reference to microphone
        (``SPEEX_ECHO_GET_IMPULSE_RESPONSE``, libspeexdsp ``mdf.c``: the inverse FFT of
        each partition's weights, scaled by 32767).

        Args:
            out: optional preallocated C-contiguous int32 array of
                ``(impulse_response_size,)`` samples.

        Returns:
            int32 ``(impulse_response_size,)``, in an arbitrary scale (proportional to
            the filter taps); all zeros before the filter has adapted.

        Raises:
            ValueError: ``out`` has the wrong dtype or shape, or the canceller is closed.
        """
        state = self._handle()
        n = self.impulse_response_size
        if out is None:
            out = np.zeros(n, dtype=np.int32)
        elif (not isinstance(out, np.ndarray) or out.dtype != np.int32 or out.shape != (n,)
              or not out.flags.c_contiguous or not out.flags.writeable):
            raise ValueError(f"out: expected a writable C-contiguous int32 array of shape ({n},)")
        if self._lib.speex_echo_ctl(state, SPEEX_ECHO_GET_IMPULSE_RESPONSE, out.ctypes.data) != 0:
            raise SpeexDSPError("speex_echo_ctl(SPEEX_ECHO_GET_IMPULSE_RESPONSE) failed")
        return out

    @property
    def impulse_response_size(self) -> int:
        """Samples in :meth:`impulse_response` (``SPEEX_ECHO_GET_IMPULSE_RESPONSE_SIZE``:
        the filter length rounded up to whole frames)."""
        size = getattr(self, "_ir_size", None)
        if size is None:
            v = ctypes.c_int32(0)
            if self._lib.speex_echo_ctl(self._handle(), SPEEX_ECHO_GET_IMPULSE_RESPONSE_SIZE, ctypes.byref(v)) != 0:
                raise SpeexDSPError("speex_echo_ctl(SPEEX_ECHO_GET_IMPULSE_RESPONSE_SIZE) failed")
            size = self._ir_size = int(v.value)
        return size

    def _cancel_addr(self, mic_addr: int, ref_addr: int, out_addr: int) -> None:
        """Unchecked fast path for callers that own validated buffers (addresses of
        C-contiguous int16 arrays of ``frame_size`` samples)."""
        self._lib.speex_echo_cancellation(self._state, mic_addr, ref_addr, out_addr)

    def __repr__(self) -> str:
        return (
            f"EchoCanceller(frame_size={self.frame_size}, filter_length={self.filter_length}, "
            f"sample_rate={self.sample_rate}{', closed' if self.closed else ''})"
        )


class Preprocessor(NativeState):
    """Speex preprocessor (``SpeexPreprocessState``): denoise, residual echo suppression,
    AGC and VAD on one mono channel.

    Args:
        frame_size: samples per :meth:`run` call; must equal the linked canceller's.
        sample_rate: sample rate in Hz.

    Raises:
        ValueError: a non-positive argument.
        SpeexDSPError: library missing, or ``speex_preprocess_state_init`` returned NULL.

    Note: libspeexdsp 1.2 only applies its spectral gain (noise *and* residual echo
    suppression) when ``denoise`` is on.
    """

    def __init__(self, frame_size: int, sample_rate: int) -> None:
        self._state: int | None = None
        self.frame_size = _positive_int("frame_size", frame_size)
        self.sample_rate = _positive_int("sample_rate", sample_rate)
        lib = load_library()
        state = lib.speex_preprocess_state_init(self.frame_size, self.sample_rate)
        if not state:
            raise SpeexDSPError("speex_preprocess_state_init returned NULL")
        self._lib = lib
        self._state = state
        self._echo: EchoCanceller | None = None

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        """Free the native state (idempotent). The linked canceller stays open."""
        state = self._state
        if state is None:
            return
        echo, self._echo = self._echo, None
        if echo is not None:
            echo._linked.discard(self)
        self._state = None
        self._lib.speex_preprocess_state_destroy(state)

    # -- ctl helpers -----------------------------------------------------------------
    def _ctl(self, request: int, ptr: Any) -> None:
        if self._lib.speex_preprocess_ctl(self._handle(), request, ptr) != 0:
            raise SpeexDSPError(f"speex_preprocess_ctl request {request} failed")

    def _get_int(self, request: int) -> int:
        v = ctypes.c_int32(0)
        self._ctl(request, ctypes.byref(v))
        return v.value

    def _set_int(self, request: int, value: int) -> None:
        self._ctl(request, ctypes.byref(ctypes.c_int32(int(value))))

    @staticmethod
    def _db(name: str, value: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value > 0:
            raise ValueError(f"{name} is an attenuation in dB and must be an int <= 0, got {value!r}")
        return int(value)

    # -- settings --------------------------------------------------------------------
    @property
    def denoise(self) -> bool:
        """Noise suppression on/off (also gates residual echo suppression)."""
        return bool(self._get_int(SPEEX_PREPROCESS_GET_DENOISE))

    @denoise.setter
    def denoise(self, on: bool) -> None:
        self._set_int(SPEEX_PREPROCESS_SET_DENOISE, 1 if on else 0)

    @property
    def noise_suppress(self) -> int:
        """Maximum noise attenuation in dB (int <= 0; library default -15)."""
        return self._get_int(SPEEX_PREPROCESS_GET_NOISE_SUPPRESS)

    @noise_suppress.setter
    def noise_suppress(self, db: int) -> None:
        self._set_int(SPEEX_PREPROCESS_SET_NOISE_SUPPRESS, self._db("noise_suppress", db))

    @property
    def echo_suppress(self) -> int:
        """Maximum residual echo attenuation in dB (int <= 0; library default -40)."""
        return self._get_int(SPEEX_PREPROCESS_GET_ECHO_SUPPRESS)

    @echo_suppress.setter
    def echo_suppress(self, db: int) -> None:
        self._set_int(SPEEX_PREPROCESS_SET_ECHO_SUPPRESS, self._db("echo_suppress", db))

    @property
    def echo_suppress_active(self) -> int:
        """Maximum residual echo attenuation in dB while the near end talks (int <= 0;
        library default -15)."""
        return self._get_int(SPEEX_PREPROCESS_GET_ECHO_SUPPRESS_ACTIVE)

    @echo_suppress_active.setter
    def echo_suppress_active(self, db: int) -> None:
        self._set_int(
            SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE, self._db("echo_suppress_active", db)
        )

    @property
    def agc(self) -> bool:
        """Automatic gain control on/off."""
        return bool(self._get_int(SPEEX_PREPROCESS_GET_AGC))

    @agc.setter
    def agc(self, on: bool) -> None:
        self._set_int(SPEEX_PREPROCESS_SET_AGC, 1 if on else 0)

    @property
    def agc_level(self) -> float:
        """AGC target level (float, int16 amplitude scale 1..32768; library default 8000)."""
        v = ctypes.c_float(0.0)
        self._ctl(SPEEX_PREPROCESS_GET_AGC_LEVEL, ctypes.byref(v))
        return float(v.value)

    @agc_level.setter
    def agc_level(self, level: float) -> None:
        if not 1.0 <= float(level) <= 32768.0:
            raise ValueError(f"agc_level must be in [1, 32768], got {level!r}")
        self._ctl(SPEEX_PREPROCESS_SET_AGC_LEVEL, ctypes.byref(ctypes.c_float(float(level))))

    @property
    def vad(self) -> bool:
        """Voice activity detection on/off; when off :meth:`run` always returns True."""
        return bool(self._get_int(SPEEX_PREPROCESS_GET_VAD))

    @vad.setter
    def vad(self, on: bool) -> None:
        # libspeexdsp prints "The VAD has been replaced by a hack ..." to stderr on
        # every SET_VAD, so only call it when the value actually changes.
        if bool(on) != self.vad:
            self._set_int(SPEEX_PREPROCESS_SET_VAD, 1 if on else 0)

    @property
    def speech_probability(self) -> int:
        """Speech probability of the last frame, in percent (0..100)."""
        return self._get_int(SPEEX_PREPROCESS_GET_PROB)

    # -- echo link -------------------------------------------------------------------
    @property
    def echo(self) -> EchoCanceller | None:
        """The linked echo canceller, or None."""
        return self._echo

    def link_echo(self, canceller: EchoCanceller | None) -> None:
        """Link the echo canceller for residual echo suppression
        (``SPEEX_PREPROCESS_SET_ECHO_STATE``); ``None`` unlinks.

        Run the canceller on each frame before :meth:`run` on its output.

        Raises:
            ValueError: frame size or sample rate differs from the canceller's, or
                either object is closed.
        """
        self._handle()
        if canceller is None:
            self._unlink_from(self._echo)
            return
        if canceller.frame_size != self.frame_size:
            raise ValueError(
                f"frame_size mismatch: preprocessor {self.frame_size}, "
                f"echo canceller {canceller.frame_size}"
            )
        if canceller.sample_rate != self.sample_rate:
            raise ValueError(
                f"sample_rate mismatch: preprocessor {self.sample_rate} Hz, "
                f"echo canceller {canceller.sample_rate} Hz"
            )
        echo_state = canceller._handle()
        if self._echo is not None and self._echo is not canceller:
            self._echo._linked.discard(self)
        self._ctl(SPEEX_PREPROCESS_SET_ECHO_STATE, echo_state)
        self._echo = canceller
        canceller._linked.add(self)

    def _unlink_from(self, canceller: EchoCanceller | None) -> None:
        if canceller is None or self._echo is not canceller:
            return
        self._echo = None
        canceller._linked.discard(self)
        if self._state is not None:
            self._lib.speex_preprocess_ctl(self._state, SPEEX_PREPROCESS_SET_ECHO_STATE, None)

    # -- processing ------------------------------------------------------------------
    def run(self, frame: Int16Array) -> bool:
        """Process one frame in place.

        Args:
            frame: writable C-contiguous int16 array, shape ``(frame_size,)``.

        Returns:
            The VAD decision (True = speech); always True when ``vad`` is off.

        Raises:
            ValueError: wrong type, dtype, shape or layout, or the preprocessor is closed.
        """
        state = self._handle()
        frame = _check_frame("frame", frame, self.frame_size, writable=True)
        return bool(self._lib.speex_preprocess_run(state, frame.ctypes.data))

    def _run_addr(self, addr: int) -> int:
        """Unchecked fast path: run in place on a validated buffer address."""
        return self._lib.speex_preprocess_run(self._state, addr)

    def __repr__(self) -> str:
        return (
            f"Preprocessor(frame_size={self.frame_size}, sample_rate={self.sample_rate}"
            f"{', linked' if self._echo is not None else ''}{', closed' if self.closed else ''})"
        )
