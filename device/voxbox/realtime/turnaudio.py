"""The user's audio of the current turn, kept on the unit so that a turn cut by a link
loss can be sent again into the next session (:class:`voxbox.conversation.machine.ResendTurn`).

A pure core fed on the event loop with the uplink blocks (PCM16 little-endian mono at
24 kHz, the bytes of one ``input_audio_buffer.append``). It never outlives the turn:

- ``begin()`` at a new turn (the wake word, a tap, a hold, follow-up speech): recording
  starts with the pre-roll, the last ``preroll_s`` of uplink audio before the turn (in
  the follow-up window or during a reply the uplink is already open, and the user's first
  syllable comes before the service says it heard speech);
- ``freeze()`` once the question is complete (the turn is committed): later uplink audio
  is not part of it;
- ``clear()`` when the turn ends (answered, abandoned, muted, lost): nothing is kept;
- ``restore()`` when a new turn turns out not to be one (a false interruption: the reply
  resumes): the question whose reply is playing comes back.

Bounded: at most ``max_s`` of audio (the oldest is dropped past it, and ``overflowed`` is
set) and ``preroll_s`` of pre-roll.
"""

from __future__ import annotations

from collections import deque

__all__ = ["TurnAudio"]


class TurnAudio:
    """Args:
        rate: sample rate of the blocks (Hz).
        max_s: longest question kept (s).
        preroll_s: audio kept before the turn begins (s; 0 = none).

    Raises:
        ValueError: ``rate`` or ``max_s`` <= 0 or ``preroll_s`` < 0 (named).
    """

    def __init__(self, rate: int = 24000, max_s: float = 30.0, preroll_s: float = 1.0):
        if rate <= 0 or max_s <= 0 or preroll_s < 0:
            raise ValueError(f"TurnAudio: need rate > 0, max_s > 0, preroll_s >= 0; got {rate}, {max_s}, {preroll_s}")
        self.rate = rate
        self._max = int(max_s * rate) * 2  # bytes
        self._pre_max = int(preroll_s * rate) * 2
        self._blocks: deque[bytes] = deque()
        self._bytes = 0
        self._pre: deque[bytes] = deque()
        self._pre_bytes = 0
        self._prev: tuple[deque[bytes], int, bool, bool] | None = None
        #: recording the turn's audio (between begin and freeze/clear)
        self.recording = False
        #: the question is complete (frozen): kept, no longer growing
        self.frozen = False
        #: the oldest audio was dropped past ``max_s``
        self.overflowed = False

    def feed(self, block: bytes) -> None:
        """One uplink block: part of the question while recording, pre-roll otherwise."""
        if self.recording:
            self._blocks.append(block)
            self._bytes += len(block)
            while self._bytes > self._max and len(self._blocks) > 1:
                self._bytes -= len(self._blocks.popleft())
                self.overflowed = True
        elif self._pre_max and not self.frozen:
            self._pre.append(block)
            self._pre_bytes += len(block)
            while self._pre_bytes > self._pre_max and self._pre:
                self._pre_bytes -= len(self._pre.popleft())

    def begin(self) -> None:
        """A new turn: the earlier question is set aside (see :meth:`restore`); the
        pre-roll becomes the new one's beginning."""
        self._prev = (self._blocks, self._bytes, self.frozen, self.overflowed) if self.frozen else None
        self._blocks = self._pre
        self._bytes = self._pre_bytes
        self._pre = deque()
        self._pre_bytes = 0
        self.recording, self.frozen, self.overflowed = True, False, False

    def freeze(self) -> None:
        """The question is complete: keep it as it is."""
        if self.recording:
            self.recording = False
            self.frozen = True

    def restore(self) -> None:
        """The turn begun last was not one (a false interruption): back to the question
        set aside by :meth:`begin`, frozen (nothing if there was none)."""
        if self._prev is None:
            return
        self._blocks, self._bytes, self.frozen, self.overflowed = self._prev
        self._prev = None
        self.recording = False

    def clear(self) -> None:
        """The turn is over (or muted): forget its audio and the pre-roll."""
        self._prev = None
        self._blocks = deque()
        self._bytes = 0
        self._pre = deque()
        self._pre_bytes = 0
        self.recording = self.frozen = self.overflowed = False

    @property
    def samples(self) -> int:
        """Samples of the question kept."""
        return self._bytes // 2

    def chunks(self, max_ms: int = 1000) -> list[bytes]:
        """The question's audio as consecutive chunks of at most ``max_ms`` (bytes, in
        order; a block longer than ``max_ms`` stays whole)."""
        limit = max(2, self.rate * max_ms // 1000 * 2)
        out: list[bytes] = []
        cur: list[bytes] = []
        n = 0
        for b in self._blocks:
            if cur and n + len(b) > limit:
                out.append(b"".join(cur))
                cur, n = [], 0
            cur.append(b)
            n += len(b)
        if cur:
            out.append(b"".join(cur))
        return out
