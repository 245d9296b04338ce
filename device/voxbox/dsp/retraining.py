"""The echo canceller's retrainings (core): a new Speex canceller trained on the capture
front end's recent input, on any thread, then handed to
:meth:`voxbox.dsp.frontend.CaptureFrontEnd.adopt`; and the constants that size them.

:class:`voxbox.dsp.frontend.CaptureFrontEnd` keeps the history, decides when a retraining
is due and adopts it; this module holds the pure computation, so the daemon can run it off
its capture thread (``ctypes`` releases the GIL in each Speex call).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from voxbox.dsp.speexdsp import EchoCanceller

__all__ = ["REALIGN_HISTORY_MS", "REALIGN_PASSES", "EARLY_RETRAIN_PASSES", "EARLY_RETRAIN_FAR_SHARE",
           "EARLY_RETRAIN_DT_MAX", "EARLY_RETRAIN_DT_SHARE", "EARLY_RETRAIN_MAX_FAR_S", "Retraining"]

Int16Array = npt.NDArray[np.int16]

#: the echo canceller's input kept for :meth:`voxbox.dsp.frontend.CaptureFrontEnd.realign`, ms, and the passes
#: of the retraining over it (its CPU is their product: one Speex frame per history frame
#: and pass, 250 at the defaults, off the capture thread). Chosen on the room family's
#: tuning half (``tests/benchmarks/test_realign_bench.py``: the packaged start-up cue on a
#: line 40 ms off, retrained at the move; the canceller's output over the first second of
#: the reply, median / worst decile): 1 s and 1 pass 14.7 / 12.1 dB, 1 s and 3 passes
#: 19.9 / 17.0, 1.5 s and 2 passes 21.7 / 21.0, **2 s and 2 passes 22.7 / 21.4**, 2 s
#: and 3 passes 24.4 / 23.6; the filter kept 0.9 / -0.3; the cue heard once on the right
#: line 19.0 / 17.4.
REALIGN_HISTORY_MS = 2000
REALIGN_PASSES = 2

#: the early retraining of a young canceller (:meth:`voxbox.dsp.frontend.CaptureFrontEnd.prepare_early_retrain`):
#: its passes over the history, the share of the history's frames that must hold far-end
#: signal, and the share of them at most in which the residual echo suppressor's
#: double-talk measure (0..1) exceeds ``EARLY_RETRAIN_DT_MAX``. A young canceller's
#: misadjustment reads as double talk at times (measured: up to 0.7 s of its first 2 s
#: in a synthetic room), so a share, not any frame. Chosen on the room family's tuning
#: half (figures in :class:`voxbox.dsp.frontend.FrontEndSettings`).
EARLY_RETRAIN_PASSES = 4
EARLY_RETRAIN_FAR_SHARE = 0.75
EARLY_RETRAIN_DT_MAX = 0.5
EARLY_RETRAIN_DT_SHARE = 0.5
#: a canceller that has heard this much far end (s) without an early retraining has
#: learned from it: it is no longer young (a retraining on 2 s would replace more than it
#: adds)
EARLY_RETRAIN_MAX_FAR_S = 10.0


class Retraining:
    """A new echo canceller trained on a re-paired history (:meth:`voxbox.dsp.frontend.CaptureFrontEnd.prepare_realign`):
    pure computation on its own arrays, so :meth:`run` may go on any thread.

    Attributes:
        frames: Speex frames of history it trains on (each ``passes`` times).
        passes: how many times (``REALIGN_PASSES``; ``EARLY_RETRAIN_PASSES`` for an
            early retraining).
        canceller: the trained :class:`voxbox.dsp.speexdsp.EchoCanceller` once
            :meth:`run` returned (None before, and after :meth:`voxbox.dsp.frontend.CaptureFrontEnd.adopt`
            took it or :meth:`discard` closed it).
        done: :meth:`run` returned (a bool written last: poll it from another thread).
    """

    def __init__(self, frame_size: int, filter_length: int, sample_rate: int, mic: Int16Array,
                 ref: Int16Array, frames: int, generation: int, written: int,
                 passes: int = REALIGN_PASSES) -> None:
        self._args = (frame_size, filter_length, sample_rate)
        self.passes = passes
        self._mic, self._ref = mic, ref
        self.frames = frames
        self.generation = generation
        self.written = written
        self.canceller: EchoCanceller | None = None
        self.done = False

    def run(self) -> None:
        """Train the new canceller (``passes`` x 125 Speex frames at the defaults)."""
        f = self._args[0]
        ec = EchoCanceller(*self._args)
        out = np.zeros(f, dtype=np.int16)
        out_addr, ma, ra = out.ctypes.data, self._mic.ctypes.data, self._ref.ctypes.data
        step = f * self._mic.itemsize
        for _ in range(self.passes if self.frames else 0):
            for i in range(self.frames):
                ec._cancel_addr(ma + i * step, ra + i * step, out_addr)
        self.canceller = ec
        self.done = True

    def discard(self) -> None:
        """Close the canceller if nobody took it (idempotent)."""
        ec, self.canceller = self.canceller, None
        if ec is not None:
            ec.close()
