"""Shared fixtures: tiny models built once per session, a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
from distill.config.environment import offline_env  # noqa: E402  (light: yaml and the preset dataclasses)

offline_env(force=True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DISTILL_HOME", str(ROOT / ".distill" / "test-home"))
os.environ.setdefault("DISTILL_HEARTBEAT_S", "1")        # a killed run is seen dead in seconds, not minutes
os.environ.setdefault("DISTILL_CLAIM_SETTLE_S", "0.1")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_RUN_ID", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_mlflow_server(root: Path, backend_store_uri: str | None = None):
    """A real `mlflow server` on 127.0.0.1 with a proxied artifact store under root; yields its URI."""
    import requests

    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,  # uvicorn and its workers
        # no GenAI job runner: its 8 huey processes cost ~24 s of CPU to start, and no test submits a job
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(uri + "/health", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise RuntimeError((root / "server.log").read_text())
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, 9)
        raise RuntimeError("mlflow server did not start: " + (root / "server.log").read_text()[-2000:])
    try:
        yield uri
    finally:
        from distill.pipeline.executors import stop_process_group

        stop_process_group(proc)
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real tracking server with a sqlite backend and a proxied artifact store."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL on 127.0.0.1 (tests/postgres_server.py), or a skip that says why none can start."""
    from tests.postgres_server import Unavailable, start

    try:
        server = start()
    except Unavailable as e:
        pytest.skip(f"PostgreSQL cannot start here: {e}")
    yield server
    server.stop()


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """An embedded sqlite store of the test's own, made current in this process."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def tiny_student():
    from distill.local_models.tiny import tiny_model_dir

    return tiny_model_dir("tiny:student-qwen2.5-0.5b")


@pytest.fixture(scope="session")
def tiny_teacher():
    from distill.local_models.tiny import tiny_model_dir

    return tiny_model_dir("tiny:teacher-7b")


@pytest.fixture(scope="module")
def mini_study(request, tmp_path_factory):
    """translate -> teachers 7B and 72B -> select (tests/mini_study.py), once per module in a store of its own that
    stays current while the module's tests run: {"root", "uri", "translate", "7B", "72B", "select"}. A module sets
    its sizes with `MINI_STUDY = Sizes(...)`."""
    from tests.mini_study import Sizes, build, current_store

    root = tmp_path_factory.mktemp("mini-study")
    with current_store(f"sqlite:///{root / 'mlflow.db'}", root) as uri:
        yield {"root": root, "uri": uri, **build(getattr(request.module, "MINI_STUDY", Sizes()))}


def run_entry(phase: str, *args: str, env: dict | None = None, cwd: Path | None = None, check: bool = True):
    """Run an entry-point script as a user would (fresh process), returning the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / "entrypoints" / f"{phase}.py"), *args],
                          capture_output=True, text=True, env=full_env, cwd=cwd, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{phase} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture
def cli(capsys, monkeypatch):
    """The CLI in this process, for a refusal whose process is not what is tested (a fresh interpreter costs
    ~5 s of imports): `cli(phase, *args)` -> a CompletedProcess as run_entry's (exit status, stdout, stderr).
    What the CLI sets for its process (quiet and offline variables, the preset's experiment, the quieted
    loggers) is undone afterwards. `main` checks the preset's sft: block in this process too, not in the child
    its own process (which imports no TRL) starts for it. Each kind of refusal keeps a test through run_entry."""
    import logging

    import mlflow.tracking.fluent

    from distill import cli as cli_module
    from distill.log import QUIET_LOGGERS

    check_sft_block = cli_module.check_sft_block
    monkeypatch.setattr(cli_module, "check_sft_block", lambda preset, name, in_a_child: check_sft_block(
        preset, name, in_a_child=False))
    saved_env = dict(os.environ)
    saved_levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}

    def call(phase: str, *args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            cli_module.run_phase(phase, list(args))
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([phase, *args], code, out, err)

    yield call
    os.environ.clear()
    os.environ.update(saved_env)
    mlflow.tracking.fluent._active_experiment_id = None  # set_experiment's choice outlives the store it was in
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)
