"""A phase for tests/test_steps.py that finishes, raises, or dies in the middle of its run."""

import os
from dataclasses import dataclass

from distill import DistillError
from distill.tracking import phase_runs


@dataclass
class FixtureParams:
    how: str = "finish"
    upstream: str = ""  # a run id, as a phase's input: `main` knows whether it made it just now


def run(p: FixtureParams) -> str:
    params = {"preset": "offline", "how": p.how, "pid": os.getpid(), "fresh_inputs": phase_runs.FRESH_INPUTS,
              "cuda_visible_devices": repr(os.environ.get("CUDA_VISIBLE_DEVICES"))}  # what this process was given
    with phase_runs.phase_run("select", params, upstream={"upstream": p.upstream}, reuse=False) as pr:
        if p.how == "die":
            os._exit(9)  # a kill -9, an OOM kill: no exception, no message
        if p.how == "raise":
            raise ValueError("boom")
        if p.how == "refuse":
            raise DistillError("n must be > 0 (got 0)")
        return pr.run_id
