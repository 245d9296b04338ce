"""Command line entry point (placeholder until the daemon lands)."""
import sys


def main(argv: list[str] | None = None) -> int:
    print("voxbox: not yet", file=sys.stderr)
    return 1
