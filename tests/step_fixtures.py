"""A phase for tests/test_steps.py that finishes, raises, or dies in the middle of its run."""

import os
import subprocess
import sys
import time
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
        if p.how in ("leave", "hold"):
            start_grandchild()
            if p.how == "hold":
                time.sleep(300)
        return pr.run_id


# Like vLLM's EngineCore: a non-daemon process that neither watches its parent nor stops at ^C.
GRANDCHILD = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(300)"


def start_grandchild() -> None:
    """Start it and write '<step pid> <grandchild pid>' to $DISTILL_TEST_PIDS."""
    child = subprocess.Popen([sys.executable, "-c", GRANDCHILD])
    path = os.environ["DISTILL_TEST_PIDS"]
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.replace(path + ".tmp", path)
