"""A team's tracking server with MLflow's own authentication (`mlflow server --app-name basic-auth`) over
PostgreSQL, set up as README "A team's set-up" shows: phases run with credentials from the environment; a
user without write permission on the experiment, no credentials, or a wrong password each get one line and
exit 2 within seconds, and nothing is written; no password lands in the store, the artifacts or the output.
Skipped, with the reason, where PostgreSQL cannot start."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow  # a team's server (basic-auth over PostgreSQL) and users' phases in processes: ~2 min

USERS = ("alice", "bob", "carol")  # alice: EDIT on the experiment; carol: READ; bob: nothing
EXPERIMENT = "distill-offline"
ENV_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def auth_config(database_uri: str) -> str:
    """basic_auth.ini as README shows it; the admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD."""
    return ("[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = {database_uri}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 60\n")


@contextlib.contextmanager
def start_auth_server(root: Path, backend_store_uri: str, env: dict):
    """`mlflow server --app-name basic-auth` on 127.0.0.1 with a proxied artifact store under root."""
    import requests

    from distill.pipeline.executors import stop_process_group

    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", backend_store_uri,
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                if requests.get(uri + "/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("mlflow server --app-name basic-auth did not start: "
                                   + (root / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield uri
    finally:
        stop_process_group(proc, grace=5)  # its state is in PostgreSQL; a worker that lingers is killed
        log.close()


@contextlib.contextmanager
def signed_in(username: str, password: str):
    """This process's MLflow requests as `username` (MLflow reads the variables at each request)."""
    old = {k: os.environ.get(k) for k in ENV_CREDENTIALS}
    os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    os.environ.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def team(postgres, tmp_path_factory):
    """The server, its users (random passwords, so that a grep finds only real leaks) and the grants:
    as its admin would set them up (README)."""
    from mlflow.server import get_app_client
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("team-server")
    backend = postgres.create_database("team_mlflow")
    (root / "basic_auth.ini").write_text(auth_config(postgres.create_database("team_auth")))
    passwords = {u: f"{u}-{secrets.token_urlsafe(16)}" for u in ("admin", *USERS)}
    env = {k: v for k, v in os.environ.items() if k not in ENV_CREDENTIALS}
    env |= {"MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": passwords["admin"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runner: ~10 processes no phase needs
    with start_auth_server(root, backend, env) as uri:
        with signed_in("admin", passwords["admin"]):
            auth = get_app_client("basic-auth", tracking_uri=uri)
            for user in USERS:
                auth.create_user(user, passwords[user])
            experiment_id = MlflowClient(uri).create_experiment(EXPERIMENT)
            auth.grant_user_permission("alice", "experiment", experiment_id, "EDIT")
            auth.grant_user_permission("carol", "experiment", experiment_id, "READ")
        yield {"uri": uri, "root": root, "db": "team_mlflow", "passwords": passwords, "experiment_id": experiment_id,
               "outputs": []}


def run_phase_as(team, user: str | None, password: str | None, phase: str, *args: str, cwd: Path):
    """An entry point in a fresh process, with credentials (or none) in its environment only; its output is
    kept for the password grep."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_CREDENTIALS}
    env["MLFLOW_TRACKING_URI"] = team["uri"]
    if user:
        env |= {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "entrypoints" / f"{phase}.py"), *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    team["outputs"] += [proc.stdout, proc.stderr]
    return proc, time.perf_counter() - t0


def store_counts(postgres, team) -> dict:
    """Everything a phase could have written: rows of the tables it writes, and artifact files."""
    tables = ("experiments", "runs", "params", "tags", "experiment_tags", "metrics", "inputs", "datasets",
              "registered_models", "model_versions", "logged_models", "trace_info")
    counts = {t: postgres.query(team["db"], f"SELECT count(*) FROM {t}")[0][0] for t in tables}
    counts["artifact files"] = sorted(str(p) for p in (team["root"] / "artifacts").rglob("*") if p.is_file())
    return counts


@pytest.fixture(scope="module")
def alice_ran(team, tmp_path_factory):
    """translate and one teacher, by the user granted EDIT, through the authenticated server."""
    cwd = tmp_path_factory.mktemp("alice")
    pw = team["passwords"]["alice"]
    translate, _ = run_phase_as(team, "alice", pw, "translate", "--preset", "offline", "--limit", "8", cwd=cwd)
    assert translate.returncode == 0, translate.stderr[-3000:]
    teacher, _ = run_phase_as(team, "alice", pw, "teacher", "--preset", "offline", "--teacher", "7B",
                              "--max_new_tokens", "8", cwd=cwd)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    return translate, teacher


def test_granted_user_runs_phases(postgres, team, alice_ran):
    """A granted user runs phases with credentials from the environment."""
    rows = postgres.query(team["db"], "SELECT r.run_uuid, r.status, r.experiment_id, t.value FROM runs r "
                                      "JOIN tags t ON t.run_uuid = r.run_uuid WHERE t.key = 'distill.phase'")
    assert sorted(phase for *_, phase in rows) == ["teacher", "translate"]
    assert all(status == "FINISHED" and str(exp) == team["experiment_id"] for _, status, exp, _ in rows)
    teacher_run = next(run for run, *_, phase in rows if phase == "teacher")
    # the teacher read the translation through the server, and wrote its answers there
    translated = postgres.query(team["db"], "SELECT value FROM tags WHERE run_uuid = %s AND key = "
                                            "'distill.translation_run_id'", teacher_run)[0][0]
    assert translated == next(run for run, *_, phase in rows if phase == "translate")
    files = list((team["root"] / "artifacts").rglob("*.jsonl"))
    assert any(teacher_run in str(p) for p in files) and any(translated in str(p) for p in files)
    # the experiment the admin made got the preset's description from the first phase
    note = postgres.query(team["db"], "SELECT value FROM experiment_tags WHERE experiment_id = %s AND key = "
                                      "'mlflow.note.content'", int(team["experiment_id"]))
    assert note and note[0][0].startswith("**distill**, preset `offline`")
    # a plain `mlflow run` makes its own run in Default first, where alice has no grant: hence README's
    # `mlflow run --experiment-name distill-<preset>`
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with signed_in("alice", team["passwords"]["alice"]), pytest.raises(MlflowException, match="403"):
        MlflowClient(team["uri"]).create_run("0")


@pytest.fixture(scope="module")
def refused(postgres, team, alice_ran, tmp_path_factory):
    """The same phase tried by each user the server must stop, all at once (each a fresh process), with the
    store's contents before and after."""
    cwd = tmp_path_factory.mktemp("refused")
    before = store_counts(postgres, team)
    pw = team["passwords"]
    tries = {"bob (no permission)": ("bob", pw["bob"]), "carol (READ)": ("carol", pw["carol"]),
             "no credentials": (None, None), "wrong password": ("alice", "not-" + pw["alice"])}
    with ThreadPoolExecutor(len(tries)) as pool:
        futures = {name: pool.submit(run_phase_as, team, user, password, "translate", "--preset", "offline",
                                     "--limit", "4", cwd=cwd) for name, (user, password) in tries.items()}
        results = {name: f.result() for name, f in futures.items()}
    return before, store_counts(postgres, team), results


def test_refused_user_gets_one_line(team, refused):
    """A refused user gets one line within seconds and nothing is written."""
    before, after, results = refused
    uri = team["uri"]
    expected = {
        "bob (no permission)": f"error: user 'bob' has no permission on the experiment '{EXPERIMENT}' at {uri}",
        "carol (READ)": f"error: user 'carol' may not write to the experiment '{EXPERIMENT}' at {uri} "
                        "(permission READ)",
        "no credentials": f"error: the MLflow tracking server at {uri} asks who you are: set MLFLOW_TRACKING_USERNAME",
        "wrong password": f"error: the MLflow tracking server at {uri} refused user 'alice': "
                          "wrong user name or password",
    }
    for name, (proc, seconds) in results.items():
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected[name]), (name, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr
        assert seconds < 60, (name, seconds)  # Python and MLflow imports; MLflow's own retries took minutes
    assert after == before  # no experiment, run, param, tag, dataset, model or artifact file more


def database_text(postgres, db: str) -> str:
    """Every row of every table of `db` as text (PostgreSQL's row-to-text cast: all columns, bytea in hex)."""
    tables = [t for (t,) in postgres.query(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert tables
    return "\n".join(row for t in tables for (row,) in postgres.query(db, f'SELECT x::text FROM "{t}" x'))


def test_no_password_lands_anywhere(postgres, team, alice_ran, refused):
    """No password lands in the store the artifacts or any output."""
    store = database_text(postgres, team["db"])  # params, tags, metrics, inputs, traces, ...
    users = database_text(postgres, "team_auth")  # the auth app's own store: password hashes only
    assert "distill.phase" in store and "alice" in users and len(team["outputs"]) == 12  # what is searched is there
    artifacts = [p.read_bytes() for p in (team["root"] / "artifacts").rglob("*") if p.is_file()]
    assert artifacts
    server_log = (team["root"] / "server.log").read_text()
    for password in [*team["passwords"].values(), "not-" + team["passwords"]["alice"]]:
        for text in (store, users):
            assert password not in text and password.encode().hex() not in text
        assert not any(password.encode() in blob for blob in artifacts)
        assert not any(password in out for out in team["outputs"])  # every line the phases printed
        assert password not in server_log
