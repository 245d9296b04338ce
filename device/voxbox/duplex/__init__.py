"""Full duplex: near-end detector, interruption check, uplink gate (barge-in decisions while the unit talks)."""
