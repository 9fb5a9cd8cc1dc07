"""MLflow's SQLite tracking store, built under the project's lock, repaired if half-made, with its artifacts
beside the database file.

Registered for the `sqlite` scheme through MLflow's `mlflow.tracking_store` entry points (pyproject.toml), so
every MLflow process of this environment builds its SQLite stores here: `mlflow run` itself, which opens the
store before any project code runs (two `mlflow run` typed at once on a new file otherwise both die in
MLflow's migrations and leave the file half-migrated), `mlflow ui`, `mlflow server` and the project's
own processes alike.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from distill.tracking.schema_lock import sqlite_lock, sqlite_path

console = logging.getLogger(__name__)

ARTIFACTS = "mlruns"  # the folder beside the database file: ./mlflow.db keeps ./mlruns, as MLflow's default


def artifact_root(store_uri: str) -> str:
    """Where a SQLite store's new experiments keep their artifacts: `mlruns` beside the database file, never
    the folder a command was typed in (an experiment's location is fixed when it is created)."""
    return str(Path(sqlite_path(store_uri)).parent / ARTIFACTS)  # a path, as MLflow's own default root


def _workspaces() -> bool:
    return os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").lower() in ("1", "true")


def _repaired_then(store_uri: str, make):
    """`make()` (MLflow's store, which creates and migrates the tables) under the creation lock, after a
    half-made file is repaired: the one path of the tracking and the registry store."""
    from distill.tracking.sqlite_repair import repair

    with sqlite_lock(store_uri):
        done = repair(store_uri)
        if done:
            console.warning(done)
        return make()


def build(store_uri: str, artifact_uri: str | None = None):
    """MLflow's store builder for `sqlite:` URIs (what mlflow.tracking._tracking_service.utils registers for
    it), under schema_lock.sqlite_lock. An artifact root given (`mlflow server --default-artifact-root`, or
    the server's own) is kept; otherwise it is artifact_root(store_uri)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as cls

    if artifact_uri is None:
        artifact_uri = os.environ.get("_MLFLOW_SERVER_ARTIFACT_ROOT") or artifact_root(store_uri)
    if _workspaces():
        from mlflow.store.tracking.sqlalchemy_workspace_store import WorkspaceAwareSqlAlchemyStore as cls
    return _repaired_then(store_uri, lambda: cls(store_uri, artifact_uri))


def build_registry(store_uri: str):
    """MLflow's model registry store for `sqlite:` URIs (an `mlflow.model_registry_store` entry point): it
    creates and migrates the same tables as the tracking store, so it is built under the same lock."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as cls

    if _workspaces():
        from mlflow.store.model_registry.sqlalchemy_workspace_store import WorkspaceAwareSqlAlchemyStore as cls
    return _repaired_then(store_uri, lambda: cls(store_uri))
