"""Audio devices and buffers: ALSA loops, rings, WAV files, volume, earcons, the jitter buffer, speech rendering."""
