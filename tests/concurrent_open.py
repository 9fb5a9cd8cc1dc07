"""Start several processes that open the same empty storage at the same instant, as sweep workers and
`main`'s phases do, and print what each got (JSON: one list per storage, "ok" or the error).

    python tests/concurrent_open.py N optuna:URL mlflow:URL mlflowcli:URL bare:URL ...

Run as a fresh process of its own: it imports the libraries once and forks N workers per URL, released
together by a barrier (a fork from pytest's process could inherit other tests' threads and locks).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def open_optuna(url: str, worker: int) -> None:
    """What a sweep worker does first: create or load the study (distill.phases.sweep.open_study)."""
    import optuna

    from distill.phases.sweep import open_study

    study = open_study(url, "concurrent", optuna.samplers.TPESampler(seed=worker), optuna.pruners.NopPruner())
    trial = study.ask()
    study.tell(trial, float(worker))


def open_mlflow(url: str, worker: int) -> None:
    """What every phase does first (distill.cli.run_phase), on a tracking URI that is the database itself;
    then one run, to show the store works."""
    import mlflow

    from distill.config.presets import load_preset
    from distill.tracking import store

    os.environ["MLFLOW_TRACKING_URI"] = url
    mlflow.set_tracking_uri(url)
    store.ensure_tracking_reachable()
    store.ensure_tracking_store()
    store.use_preset_experiment(load_preset("offline"))
    with mlflow.start_run():
        mlflow.log_param("worker", worker)


def open_mlflow_cli(url: str, worker: int) -> None:
    """What `mlflow run` does before any project code: open the store through MLflow's own client (whatever
    builder MLflow has for the scheme), find its experiment, make its run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    client.search_experiments(max_results=1)
    run = client.create_run("0")
    client.set_terminated(run.info.run_id)


def open_bare(url: str, worker: int) -> None:
    """MLflow's SQLite store built directly, as MLflow builds it without distill: no lock, no repair (a way to
    make the half-migrated stores MLflow leaves, for real)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(url, "./mlruns").search_experiments(max_results=1)


OPEN = {"optuna": open_optuna, "mlflow": open_mlflow, "mlflowcli": open_mlflow_cli, "bare": open_bare}


def _worker(kind: str, url: str, worker: int, barrier, results) -> None:
    barrier.wait()
    try:
        OPEN[kind](url, worker)
        results.put((worker, "ok"))
    except BaseException as e:  # noqa: BLE001 - reported to the test, which shows it
        results.put((worker, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"))


def main(n: int, rounds: list[str]) -> list[list[str]]:
    """One round per `kind:URL` (a kind of OPEN), one after another."""
    import logging

    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import mlflow.tracking._tracking_service.utils  # noqa: F401 - its store builders, entry points included
    import optuna  # noqa: F401 - imported once here, before the forks

    import distill.phases.sweep  # noqa: F401
    from distill.tracking import store  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = mp.get_context("fork")
    out = []
    for kind, url in (r.split(":", 1) for r in rounds):
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(kind, url, i, barrier, results)) for i in range(n)]
        for p in procs:
            p.start()
        got = dict(results.get(timeout=300) for _ in procs)
        for p in procs:
            p.join()
        out.append([got[i] for i in range(n)])
    return out


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2:])))
