"""Checks of the values a user typed, in one place, so every phase refuses a bad value the same way
and before any model loads."""

from __future__ import annotations

from distill import DistillError


def check_positive(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if value is None or value <= 0:
        raise DistillError(f"{name} must be > 0 (got {value})")
    return value
