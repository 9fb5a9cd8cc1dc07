"""`python tests/kill_after_register.py entrypoints/sft.py ARGS`: the entry point as a user runs it, its whole process
group killed with SIGKILL the moment its student's version is registered: a try that dies after registering and
before its run ends, at a moment a poll from outside cannot catch reliably. Steps fork from this process
(DISTILL_STEP_START_METHOD=fork) so that they carry the hook."""

import os
import runpy
import signal
import sys

from distill.tracking import registry

_register_once = registry.register_once


def _register_then_die(*args, **kwargs):
    _register_once(*args, **kwargs)
    os.killpg(os.getpgrp(), signal.SIGKILL)


registry.register_once = _register_then_die
os.environ["DISTILL_STEP_START_METHOD"] = "fork"
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
