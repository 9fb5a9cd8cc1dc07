"""The tracking store a command writes to: reachable, created once, and the preset's experiment active."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from distill import DistillError, lineage


def ensure_tracking_reachable() -> None:
    """A down tracking server otherwise costs minutes of retries and a deep traceback."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5)
    except requests.RequestException as e:
        raise DistillError(
            f"cannot reach the MLflow tracking server at {uri} ({type(e).__name__}); "
            "start it (mlflow server ...) or unset MLFLOW_TRACKING_URI to use ./mlflow.db"
        ) from None


def ensure_tracking_store() -> None:
    """Create a SQLite tracking store once, under a file lock: two processes that start at once on a
    brand-new file otherwise both run MLflow's table setup and one of them crashes."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    import fcntl
    import logging

    from mlflow.tracking import MlflowClient

    db = os.path.abspath(uri.removeprefix("sqlite:///").split("?")[0] or "mlflow.db")
    lock = Path(tempfile.gettempdir()) / f"distill-store-{hashlib.sha256(db.encode()).hexdigest()[:16]}.lock"
    quiet = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow database tables..."
    level = quiet.level
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            quiet.setLevel(logging.WARNING)
            client = MlflowClient(uri)  # each store is made (its tables set up) at its first use, then kept
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        finally:
            quiet.setLevel(level)
            fcntl.flock(f, fcntl.LOCK_UN)



def experiment_name(preset_name: str) -> str:
    """Every preset's runs in an experiment of their own: `distill-offline`, `distill-paper`."""
    return f"distill-{preset_name}"


def use_preset_experiment(preset) -> str | None:
    """Make `distill-<preset>` the active experiment (created with a description) unless the user chose
    one (MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID, `mlflow run --experiment-name`, whose run is
    MLFLOW_RUN_ID). Reuse lookups, report inputs and step processes all search the active experiment."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name = experiment_name(preset.name)
    client = MlflowClient()
    cli_run = os.environ.get("MLFLOW_RUN_ID")
    if cli_run and os.environ.get("MLFLOW_EXPERIMENT_ID") == "0" and not os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        # `mlflow run` without --experiment-name made its run in Default: that run says where the work went
        client.set_tag(cli_run, lineage.EXPERIMENT, name)
        client.set_tag(cli_run, "mlflow.note.content", f"This `mlflow run` logged its runs into the experiment "
                       f"`{name}` (one per preset); `--experiment-name` chooses another.")
        os.environ.pop("MLFLOW_RUN_ID")
        os.environ.pop("MLFLOW_EXPERIMENT_ID")
    if any(os.environ.get(v) for v in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")) \
            or mlflow.active_run():
        return None
    exp = client.get_experiment_by_name(name)
    if exp is None:
        note = (f"**distill**, preset `{preset.name}`: {(preset.description or '').strip()}\n\n"
                "Every step of `main` is a nested run under its `main-...` run; the main run's description "
                "has Table 1 and a link to the report run (`report.md`). Compare student evaluations with "
                "the params `teacher`, `student`, `seed`, `role`; `accuracy` is in percent.")
        try:
            client.create_experiment(name, tags={"mlflow.note.content": note})
        except Exception:  # noqa: BLE001 - another process created it first
            pass
    os.environ["MLFLOW_EXPERIMENT_NAME"] = name  # step processes and Ray tasks inherit it
    mlflow.set_experiment(name)
    return name

