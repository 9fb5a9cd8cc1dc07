"""The tracking store a command writes to: reachable, signed in to, created once, and the preset's experiment
active and writable."""

from __future__ import annotations

import logging
import os

from distill import DistillError
from distill.tracking import lineage, server_auth, ui_links
from distill.tracking.redact import redact_uri
from distill.tracking.schema_lock import creation_lock, dialect, sqlite_lock
from distill.tracking.store_uri import check_tracking_uri, scheme, store_open_failed


def ensure_tracking_reachable() -> None:
    """A down tracking server otherwise costs minutes of retries and a deep traceback; one that wants a
    password it was not given (or refuses the one it was) a traceback at the first write."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        check_tracking_uri(uri)  # a URI MLflow cannot store to: by name, before any work
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5)
    except requests.RequestException as e:
        raise DistillError(
            f"cannot reach the MLflow tracking server at {redact_uri(uri)} ({type(e).__name__}); "
            "start it (mlflow server ...) or unset MLFLOW_TRACKING_URI to use ./mlflow.db"
        ) from None
    server_auth.signed_in_user(uri)  # once per process and user


def setup_lock(uri: str):
    """Held while a SQLite store's tables are set up (ensure_tracking_store). Two processes that start at
    once on a brand-new file otherwise both run MLflow's table setup and one of them crashes; and a process
    that ends another (the step server, killed when `main` ends) waits here so as not to cut a setup short."""
    return sqlite_lock(uri)


def ensure_tracking_store() -> None:
    """Create a database tracking store (SQLite, or PostgreSQL opened directly) once, under
    schema_lock.creation_lock: processes that start at once on an empty database all succeed. A SQLite store
    MLflow left half-created or half-migrated is repaired first (distill.tracking.sqlite_store); a store
    MLflow refuses to open (a folder store, a file that is no database) is one line naming it."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if dialect(uri) not in ("sqlite", "postgresql") and scheme(uri) not in ("", "file"):
        return
    from mlflow.tracking import MlflowClient

    from distill.tracking import sqlite_store

    quiet = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow database tables..."
    level = quiet.level
    with creation_lock(uri):
        try:
            quiet.setLevel(logging.WARNING)
            if dialect(uri) == "sqlite":  # repaired if need be, created with its artifacts beside the file,
                sqlite_store.build(uri)  # also where an older install of distill has no MLflow entry point yet
            client = MlflowClient(uri)  # each store is made (its tables set up) at its first use, then kept
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        except DistillError:
            raise
        except Exception as e:  # noqa: BLE001 - MLflow's refusal, whatever its type: one line naming the store
            raise store_open_failed(uri, e) from None
        finally:
            quiet.setLevel(level)


def warm_tracking_store() -> None:
    """For the process `main`'s steps fork from (distill.pipeline.fork_server): set up the SQLite store and make
    the reads every step makes, so that each step inherits MLflow's store and SQLAlchemy's compiled
    statements instead of building them again (~0.15 s a step). Then every connection is closed: none
    may cross a fork. Public APIs only: the engines are those SQLAlchemy reports connecting."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return
    from mlflow.tracking import MlflowClient
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    engines = set()

    def seen(connection) -> None:
        engines.add(connection.engine)

    event.listen(Engine, "engine_connect", seen)
    try:
        ensure_tracking_store()  # under the same lock as the parent's: a brand-new file is set up once
        client = MlflowClient(uri)
        ids = [e.experiment_id for e in client.search_experiments(max_results=1)]
        for status in ("FINISHED", "RUNNING", None):  # the shapes of lineage's searches
            found = lineage.search_phase_runs(status=status, tags={lineage.CACHE_KEY: "warm-up"},
                                              experiment_ids=ids, max_results=1)
        for run in client.search_runs(ids, max_results=1) or found:
            client.get_run(run.info.run_id)
        client.search_model_versions("name = 'warm-up'", max_results=1)
    finally:
        event.remove(Engine, "engine_connect", seen)
        for engine in engines:
            engine.dispose()


NOTE = "mlflow.note.content"  # an experiment's description in the UI


def experiment_name(preset_name: str) -> str:
    """Every preset's runs in an experiment of their own: `distill-offline`, `distill-paper`."""
    return f"distill-{preset_name}"


def create_experiment(client, uri: str, name: str, note: str) -> None:
    """A SQLite store's new experiment keeps its artifacts beside the database file
    (distill.tracking.sqlite_store.artifact_root), never in the folder the command runs in; a server's or
    PostgreSQL's, where the server or MLflow says."""
    if dialect(uri) != "sqlite":
        client.create_experiment(name, tags={NOTE: note})
        return
    from mlflow.entities import ExperimentTag

    from distill.tracking import sqlite_store

    sqlite_store.build(uri).create_experiment(name, tags=[ExperimentTag(NOTE, note)])


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
    uri = mlflow.get_tracking_uri()
    served = uri.startswith(("http://", "https://"))  # a server may let this user in but not write here
    if os.environ.get("MLFLOW_RUN_ID") or mlflow.active_run():
        return None  # the run exists already, in the experiment it chose
    chosen = os.environ.get("MLFLOW_EXPERIMENT_NAME"), os.environ.get("MLFLOW_EXPERIMENT_ID")
    if any(chosen):
        if served:
            server_auth.check_can_write(uri, chosen[0] or None, None if chosen[0] else chosen[1])
        return None
    if served:
        server_auth.check_can_write(uri, name)
    exp = client.get_experiment_by_name(name)
    note = (f"**distill**, preset `{preset.name}`: {(preset.description or '').strip()}\n\n"
            "Every step of `main` is a nested run under its `main-...` run; the main run's description "
            "has Table 1 and a link to the report run (`report.md`). Compare student evaluations with "
            "the params `teacher`, `student`, `seed`, `role`; `accuracy` is in percent.")
    if exp is not None and NOTE not in exp.tags:  # made by a server's admin, to grant it (README "A team's set-up")
        client.set_experiment_tag(exp.experiment_id, NOTE, note)
    if exp is None:
        try:
            create_experiment(client, uri, name, note)
        except Exception as e:  # noqa: BLE001 - another process created it first, or this user may not
            if client.get_experiment_by_name(name) is None:
                reason = getattr(e, "message", str(e)).splitlines()[0]
                raise DistillError(f"cannot create the experiment {name!r} at {redact_uri(uri)} ({reason})") from None
    if exp is None or ui_links.EXPERIMENT_KIND_TAG not in exp.tags:  # the preset's experiment is this project's
        exp = exp or client.get_experiment_by_name(name)
        ui_links.label_experiment(client, exp.experiment_id, created=True)
    os.environ["MLFLOW_EXPERIMENT_NAME"] = name  # step processes and Ray tasks inherit it
    mlflow.set_experiment(name)
    return name
