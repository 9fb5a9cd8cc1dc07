"""What a failed step's line tells the user to do next: "type the same command again" only where that can succeed.

A refusal (a DistillError: a missing input, a bad value, a run that is not what was asked for) repeats on the
same command, adding a FAILED run each time; its own line says what to change. A crash or a lost process
(anything else) may well not repeat, and the rerun continues from the finished steps.
"""

from __future__ import annotations

AGAIN = "type the same command again to continue from there"
FIX_FIRST = "fix that first (the same command again would fail the same way); the finished steps are kept"


def after_failure(refused: bool) -> str:
    return FIX_FIRST if refused else AGAIN
