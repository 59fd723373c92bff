"""Cobalt: lifelong treatment schedules for vitamin B12 deficiency."""

__version__ = "0.2.0"
