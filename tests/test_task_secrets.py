"""`main -P executor=ray` and a team's server: the tracking credentials reach every task as its environment
(never as a param or a tag), and no message shows a store URI's password."""

import mlflow
import pytest

from distill import DistillError
from distill.pipeline import MainParams, executors, planner
from distill.pipeline.task_tracking import LoopbackServer

SECRETS = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "pw-Secret-41",
           "MLFLOW_TRACKING_TOKEN": "tok-Secret-42", "MLFLOW_TRACKING_INSECURE_TLS": "false",
           "MLFLOW_TRACKING_SERVER_CERT_PATH": "/etc/team/ca.pem",
           "MLFLOW_TRACKING_CLIENT_CERT_PATH": "/etc/team/me.pem"}


def test_tasks_get_credentials_runs_keep_none(tracking, monkeypatch):
    """Every task gets the tracking credentials, and no run records them."""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    p = MainParams(preset="offline", limit=4, train_limit=16, n=12, executor="ray")
    grid = planner.resolve_grid(p)
    envs = []

    def launch(step, params, env):  # the Ray task's arguments, as submit() hands them over
        envs.append(env)
        return step.name

    def next_result(handles):
        return handles[0], {"run_id": "f" * 32, "reused": False, "error": None, "seconds": 0.0}

    main = executors.run_steps(planner.plan(p, grid), p, grid, launch, next_result, "http://127.0.0.1:1", n_nodes=1)
    assert len(envs) == 18 and all({k: e.get(k) for k in SECRETS} == SECRETS for e in envs)
    run = mlflow.get_run(main)
    recorded = " ".join([*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.tags])
    assert not any(v in recorded for v in ("pw-Secret-41", "tok-Secret-42"))


def test_dead_store_named_without_password():
    """A store that will not serve is named without its password."""
    # mysql: this environment has no MySQL driver, so the server stops within seconds (a PostgreSQL URL is retried
    # by MLflow for ~100 s first); the message and the server's last lines are shown either way
    server = LoopbackServer("mysql://alice:pw-Secret-41@127.0.0.1:1/mlflow")
    server.__enter__()
    try:
        with pytest.raises(DistillError) as e:
            server.wait()
    finally:
        server.__exit__()
    message = str(e.value)
    assert "could not start an mlflow server over mysql://alice:***@127.0.0.1:1/mlflow" in message
    assert "pw-Secret-41" not in message


def test_local_store_on_cluster_refused():
    """The refusal of a local store on a cluster names it without a password."""
    from distill.pipeline.task_tracking import tracking_for_tasks

    with pytest.raises(DistillError) as e:
        tracking_for_tasks("file:///srv/mlruns", "ray://admin:ray-Secret-43@head:10001")
    assert "ray-Secret-43" not in str(e.value) and "ray://admin:***@head:10001" in str(e.value)
