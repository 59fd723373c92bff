"""Cobalt: lifelong treatment schedules for vitamin B12 deficiency."""
