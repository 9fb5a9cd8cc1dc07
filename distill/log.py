"""The package's console lines (`[distill] ...` on stderr) through `logging`, at a rank-aware level.

Every module logs to `logging.getLogger(__name__)`; the handler sits on the package's logger
`distill`, the way transformers configures its own library logger: a phase called as a library
function prints what its entry point prints. The level follows the launcher, as TRL's and
open-r1's scripts do: INFO on the main process (rank 0), WARNING on the others, DEBUG with
`-P verbose=true` (DISTILL_VERBOSE=1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

FORMAT = "[distill] %(message)s"


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (a test's capture, a step process's)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; sys.stderr is looked up at each line instead
        pass


def process_rank() -> int:
    """This process's rank under torchrun/accelerate (RANK, LOCAL_RANK), or accelerate's if it is set up; else 0."""
    for key in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(key, "").strip()
        if value.isdigit():
            return int(value)
    state = sys.modules.get("accelerate.state")
    if state is not None and getattr(state.PartialState, "_shared_state", None):
        return state.PartialState().process_index
    return 0


def console_level() -> int:
    if process_rank() != 0:
        return logging.WARNING
    return logging.DEBUG if os.environ.get("DISTILL_VERBOSE") == "1" else logging.INFO


def setup_logging() -> logging.Logger:
    """The `distill` logger with its one stderr handler, at the level this process's rank and verbosity ask
    for. Idempotent: called again (by the CLI after `--verbose`, in a step process) it only resets the level."""
    logger = logging.getLogger("distill")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    logger.setLevel(console_level())
    logger.propagate = False  # a root handler set up by someone else would print every line twice
    return logger


# Progress bars of work that takes no time worth watching (MLflow's artifact up- and downloads, the
# Hub's and transformers' "Writing model shards", TRL's dataset maps before training); generation and
# training keep theirs.
QUIET_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
# Library lines that say nothing to this study's user: a local student has no Hub model card or license,
# where MLflow resolved a `models:/` URI, and how transformers sorts checkpoints on this file system.
QUIET_LOGGERS = ("mlflow.transformers", "transformers.trainer_utils")


def _not_store_full(record: logging.LogRecord) -> bool:
    """MLflow logs every failed write of a full SQLite store with its traceback, then raises it: the
    CLI says it once (distill.disk_full)."""
    from distill.disk_full import STORE_FULL

    return STORE_FULL not in record.getMessage() and not (record.exc_info and STORE_FULL in str(record.exc_info[1]))


def quiet_loggers() -> None:
    """Raise QUIET_LOGGERS to errors only, unless verbose. Per process: `main`'s and each step's."""
    if os.environ.get("DISTILL_VERBOSE") != "1":
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        store_log = logging.getLogger("mlflow.store.db.utils")
        if _not_store_full not in store_log.filters:
            store_log.addFilter(_not_store_full)


@contextlib.contextmanager
def quiet_mlflow_prints():
    """MLflow's own prints (`Successfully registered model ...`, `Created version ...`) off inside, unless
    verbose; the step prints its one line with the registered version itself."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    was = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = os.environ.get("DISTILL_VERBOSE") == "1" and was
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = was
