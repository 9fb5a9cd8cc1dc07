"""What every benchmark script shares: offline environment, import path, output folder, logging,
and a throw-away MLflow tracking store."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "1")  # no background request (a lent GPU machine has no network)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scripts run as `python bench/<name>.py` from anywhere
    sys.path.insert(0, str(ROOT))

OUT_DIR = ROOT / "bench" / "out"
now = time.perf_counter


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def temp_tracking_store(prefix: str, keep: bool = False):
    """A fresh sqlite store in a temp folder, made current (and the working folder) for the block."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        yield tmp
    finally:
        os.chdir(cwd)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
