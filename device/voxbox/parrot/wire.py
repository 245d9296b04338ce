"""The local Realtime server's wire facts: the audio rate, the size limits and the ids.

- ``OUTPUT_RATE``: 24 000 Hz, the Realtime PCM16 rate (mono, little-endian int16) of reply
  audio and of the GA / beta input audio (digest "Audio");
- ``MAX_APPEND_BYTES``: bytes of audio one ``input_audio_buffer.append`` may carry (15 MiB);
  ``WS_MAX_SIZE``: the largest WebSocket message accepted (bytes);
- ``MIN_COMMIT_MS``: the shortest buffer a commit accepts (ms);
- ``new_id``: ids in the shape of the real service's (``prefix_`` + 22 base62 characters).

The digest is /work/shared/reference/realtime-device-notes.md.
"""
from __future__ import annotations

import uuid

OUTPUT_RATE = 24_000                      # Realtime PCM16 rate (digest "Audio")
MAX_APPEND_BYTES = 15 * 1024 * 1024       # one append carries at most 15 MiB of audio (digest)
# 15 MiB of audio is 20 MiB of base64 plus JSON: accept a little more than that.
WS_MAX_SIZE = 24 * 1024 * 1024
MIN_COMMIT_MS = 100                       # commit of < 100 ms -> input_audio_buffer_commit_empty

# --------------------------------------------------------------------------------------
# ids
# --------------------------------------------------------------------------------------
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str) -> str:
    """``prefix_`` + 22 base62 characters (the shape of real ids, e.g. ``event_…``)."""
    n = uuid.uuid4().int
    chars = []
    for _ in range(22):
        n, r = divmod(n, 62)
        chars.append(_B62[r])
    return f"{prefix}_{''.join(chars)}"
