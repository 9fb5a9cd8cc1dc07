"""distill.tracking.registry on its own: the names it registers under, and nothing registered before the
load-back check.

The whole path (sft registers, evaluate notes the accuracy) runs in tests/test_sft.py and tests/test_students.py.
"""

import pytest

from distill import DistillError
from distill.tracking.registry import alias_for, logged_model_name, register_student, registered_name
from tests.test_bad_input import _nan_student


def test_names_and_aliases():
    assert registered_name("qwen2.5-0.5b", "paper") == "student-qwen2.5-0.5b"  # the paper's names carry no prefix
    assert registered_name("Qwen/Qwen2.5-0.5B", "offline") == "offline-student-Qwen-Qwen2.5-0.5B"
    assert logged_model_name("qwen2.5-0.5b", "7B+72B", 42) == "student-qwen2_5-0_5b-7B_72B-seed42"
    assert alias_for("7B+72B") == "teacher-7b-72b" and alias_for("72B") == "teacher-72b"
    with pytest.raises(DistillError, match="one name or two"):
        alias_for("7B+32B+72B")


def test_failed_load_back_not_registered(tracking, tmp_path, tiny_student):
    """A student that fails the load back check is not registered."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.tracking.registry import log_student

    folder = _nan_student(tiny_student, tmp_path / "nan-student")
    with mlflow.start_run() as run:
        info = log_student(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                           "qwen2.5-0.5b", "7B", 42)
        with pytest.raises(DistillError, match="nothing was registered"):
            register_student(info.model_uri, "qwen2.5-0.5b", "7B", 42, "offline", run.info.run_id)
    assert MlflowClient().search_registered_models() == []
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["distill.logged_model"] == "student-qwen2_5-0_5b-7B-seed42" and "distill.registered_model" not in tags


# Through the real `sft` entry point, on a store where a run on the preset's full data and schedule holds the aliases.
NAME = "offline-student-qwen2.5-0.5b"
SFT = ("sft", "--teacher", "7B", "--student", "qwen2.5-0.5b")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from tests.conftest import run_entry

    root = tmp_path_factory.mktemp("registry")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    run_entry(*SFT, env=env, cwd=root)  # translate, 7B, 72B, select, sft: all the preset's defaults
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    yield {"root": root, "env": env, "client": client, "v1": client.get_model_version_by_alias(NAME, "teacher-7b")}


@pytest.mark.slow  # the sft entry point builds the whole upstream first (the `full` fixture)
@pytest.mark.parametrize("args,reason", [
    (("--limit", "8"), "limit=8 of 32 examples"),
    (("--num_train_epochs", "1"), "num_train_epochs=1 (preset: 2)"),
])
def test_smoke_run_keeps_alias(full, args, reason):
    """A smoke run registers without moving the alias."""
    from tests.conftest import run_entry

    client = full["client"]
    proc = run_entry(*SFT, *args, env=full["env"], cwd=full["root"])
    out = proc.stdout + proc.stderr
    [version] = [v for v in client.search_model_versions(f"name = '{NAME}'") if v.tags.get("smoke") == reason]
    # before: the smoke run's version took @teacher-7b, the alias the README says to pull
    assert f"registered models:/{NAME}/{version.version} without moving @teacher-7b: a smoke run ({reason})" in out, \
        out[-3000:]
    for alias in ("teacher-7b", "teacher-7b-seed42"):
        assert client.get_model_version_by_alias(NAME, alias).version == full["v1"].version
    assert client.get_run(version.run_id).data.tags["distill.model_uri"] == f"models:/{NAME}/{version.version}"
    assert "A smoke run" in version.description


def _killed_after_registering(full, seed: str) -> str:
    """A smoke sft of this seed killed (SIGKILL, its process group) right after it registered its version
    (tests/kill_after_register.py); its run id."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    before = {v.version for v in full["client"].search_model_versions(f"name = '{NAME}'")}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_after_register.py"),
                           str(ROOT / "entrypoints" / "sft.py"), *SFT[1:], "--limit", "8", "--seed", seed],
                          env={**os.environ, **full["env"]}, cwd=full["root"], start_new_session=True,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    [new] = [v for v in full["client"].search_model_versions(f"name = '{NAME}'") if v.version not in before]
    return new.run_id


@pytest.mark.slow
def test_killed_trys_version_deleted(full):
    """A version registered by a try killed before it finished is deleted by the next try."""
    from tests.conftest import run_entry

    client = full["client"]
    killed = _killed_after_registering(full, "7")
    assert client.get_run(killed).info.status == "RUNNING"  # dead, not marked yet
    assert [v.version for v in client.search_model_versions(f"run_id = '{killed}'")]  # the orphan, as before

    again = run_entry(*SFT, "--limit", "8", "--seed", "7", env=full["env"], cwd=full["root"])
    out = again.stdout + again.stderr
    # before: the dead try's version stayed registered, READY and tagged, from a run that never finished
    assert f"registered by run {killed}, which did not finish" in out, out[-3000:]
    assert client.search_model_versions(f"run_id = '{killed}'") == []
    for v in client.search_model_versions(f"name = '{NAME}'"):
        assert client.get_run(v.run_id).info.status == "FINISHED", (v.version, v.run_id)
