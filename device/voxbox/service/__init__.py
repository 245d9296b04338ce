"""The daemon: wiring of the parts, audio threads, health and watchdog."""
