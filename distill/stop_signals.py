"""SIGTERM stops a command as ^C does: the runs in progress are ended, finished work is kept.

Slurm and Kubernetes preempt a job with SIGTERM. Left at its default, SIGTERM ends the process where it stands:
its runs stay RUNNING until a later try notices, and multiprocessing's resource tracker reports what it leaked.
Raised as KeyboardInterrupt (Terminated) in the main thread instead, it unwinds like ^C: every run context ends
its run, the process that waits for a step passes the stop on to the step's process group
(distill.pipeline.steps), and the command exits with 143 (128 + SIGTERM) after one line, 130 after a ^C.
"""

from __future__ import annotations

import signal
import threading

SIGTERM_EXIT = 128 + signal.SIGTERM  # 143
SIGINT_EXIT = 128 + signal.SIGINT    # 130


class Terminated(KeyboardInterrupt):
    """The process was asked to stop with SIGTERM."""


_stopping = False


def _on_sigterm(signum, frame):
    global _stopping
    if _stopping:  # already unwinding (a ^C, or `mlflow run` passing its ^C on as SIGTERM): let that finish
        return
    _stopping = True
    raise Terminated


def _on_sigint(signum, frame):
    global _stopping
    _stopping = True
    raise KeyboardInterrupt  # every ^C, as Python's own handler: a second one still cuts a slow cleanup short


def _on_first_sigint(signum, frame):
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise KeyboardInterrupt


def stop_like_ctrl_c(repeat_sigint: bool = True):
    """From now on SIGTERM interrupts this process as ^C does (once; a later SIGTERM while it unwinds is let
    pass). `repeat_sigint=False`: so does ^C (a step process, which a scheduler's SIGTERM and its waiter's ^C
    may both reach; its waiter kills it if it does not end). Only the main thread can install handlers;
    elsewhere nothing changes. The handlers it replaced, for restore."""
    global _stopping
    if threading.current_thread() is not threading.main_thread():
        return None
    _stopping = False
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, _on_sigint if repeat_sigint else _on_first_sigint)
    signal.signal(signal.SIGTERM, _on_sigterm)
    return before


def restore(before) -> None:
    """The handlers stop_like_ctrl_c replaced (a command run inside another program: a test, a notebook)."""
    if before is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return SIGTERM_EXIT if isinstance(interrupt, Terminated) else SIGINT_EXIT


def stopped_line(interrupt: KeyboardInterrupt, what: str) -> str:
    """The one line a stopped command prints."""
    how = "stopped by SIGTERM" if isinstance(interrupt, Terminated) else "interrupted"
    return f"{how}: finished work of {what} is kept; run the same command again to continue"


def how_stopped(interrupt: KeyboardInterrupt) -> str:
    """Why a run ended KILLED (lineage.KILLED_REASON)."""
    return "stopped by SIGTERM" if isinstance(interrupt, Terminated) else "interrupted (^C)"
