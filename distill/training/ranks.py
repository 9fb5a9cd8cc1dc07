"""The processes of one launch (torchrun, `accelerate launch`): who is rank 0, and what rank 0 tells the rest.

Only rank 0 talks to MLflow. It decides what the launch does (reuse a finished run, or train, resuming
from which checkpoint, on which rows) and sends that decision to every other rank, which then trains
without reading the store. A single process (no launcher) is world size 1 and sends nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from datetime import timedelta

from distill import DistillError

# As long as HF Trainer waits in a collective (TrainingArguments.ddp_timeout): rank 0 may spend a while in
# MLflow (a reuse lookup, a checkpoint download) while the other ranks wait for its decision.
TIMEOUT_S = 1800


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    return rank() == 0


def _process_group() -> None:
    """The launch's default process group, set up as HF Trainer would find it (it reuses one that exists):
    gloo on a CPU; NCCL for GPU tensors with gloo beside it for CPU objects (what accelerate itself asks
    for under FSDP with full state dicts)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "cuda:nccl,cpu:gloo" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=TIMEOUT_S))


def end_follower() -> None:
    """A rank other than 0 that has trained ends here, without the interpreter's shutdown. That shutdown, while
    rank 0 is still logging and registering the student, killed a finished rank with SIGABRT (`terminate called
    without an active exception`: a thread stopped inside C++ code as Python finalizes) in about 1 launch in 4
    of tests/test_sft_multiprocess.py on 2 CPUs, and the launcher then failed the whole launch. Such a rank holds
    nothing to save: it never writes to MLflow, and Trainer has written its files."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def share_from_main(value=None):
    """Rank 0's `value` on every rank (pickled, sent over the CPU backend); `value` itself in one process."""
    if world_size() <= 1:
        return value
    import torch
    import torch.distributed as dist

    _process_group()
    box = [value if is_main_process() else None]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


class LaunchStopped(DistillError):
    """The launcher stopped this rank (torchrun sends SIGTERM to every rank once one has failed)."""


_training = threading.Event()


def fail_on_sigterm() -> None:
    """Rank 0 of a launch: the launcher's SIGTERM during training raises LaunchStopped, so that MLflow's run
    context marks the run FAILED instead of the process vanishing with its run left RUNNING. Elsewhere it
    is let pass: rank 0 is then already ending its run (a peer's death broke a collective first, and an
    exception raised inside MLflow's end_run would leave the run RUNNING), or is past the collectives."""
    if world_size() <= 1 or not is_main_process() or threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        if _training.is_set():
            _training.clear()
            raise LaunchStopped("rank 0 stopped by the launcher (SIGTERM): another rank of the launch failed")

    signal.signal(signal.SIGTERM, stop)


@contextlib.contextmanager
def training():
    """The span in which the launcher's SIGTERM stops rank 0 (see fail_on_sigterm)."""
    _training.set()
    try:
        yield
    finally:
        _training.clear()
