"""Local wake word (openWakeWord models on LiteRT)."""
