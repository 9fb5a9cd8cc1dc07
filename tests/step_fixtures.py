"""A phase for tests/test_steps.py that finishes, raises, or dies in the middle of its run."""

import os
from dataclasses import dataclass

from distill import DistillError, tracking


@dataclass
class FixtureParams:
    how: str = "finish"


def run(p: FixtureParams) -> str:
    with tracking.phase_run("select", {"preset": "offline", "how": p.how, "pid": os.getpid()}, reuse=False) as pr:
        if p.how == "die":
            os._exit(9)  # a kill -9, an OOM kill: no exception, no message
        if p.how == "raise":
            raise ValueError("boom")
        if p.how == "refuse":
            raise DistillError("n must be > 0 (got 0)")
        return pr.run_id
