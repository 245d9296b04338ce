"""Voxbox: a voice appliance daemon."""

__version__ = "0.1.0"
