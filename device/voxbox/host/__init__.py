"""The machine the daemon runs on: systemd notify and journald, journal field ids, credentials, state files, fleet metrics."""
