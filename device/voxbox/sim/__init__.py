"""Simulation rigs: ALSA file devices, the daemon harness, the demo."""
