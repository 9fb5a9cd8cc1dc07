"""Reuse checks what it reuses: a FINISHED run whose files were deleted is redone (with a line saying why), and
the alias `@teacher-7b` never points at a version without files. Through the real `sft` entry point, which builds
its upstream (translate, two teachers, select) as `main` does."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow.tracking import MlflowClient

from distill.tracking import lineage
from tests.conftest import run_entry

pytestmark = pytest.mark.slow  # the sft entry point building its whole upstream, three times

NAME = "offline-student-qwen2.5-0.5b"
SFT = ("sft", "--teacher", "7B", "--student", "qwen2.5-0.5b")


def _path(uri: str) -> Path:
    return Path(urlparse(uri).path if uri.startswith("file:") else uri)


def _finished(client, phase: str) -> list:
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, f"tags.`{lineage.PHASE}` = '{phase}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The preset's full data and schedule (the alias moves for it): translate -> 7B, 72B -> select -> sft."""
    root = tmp_path_factory.mktemp("lost-artifacts")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    first = run_entry(*SFT, env=env, cwd=root)
    yield {"root": root, "env": env, "client": MlflowClient(env["MLFLOW_TRACKING_URI"]), "first": first}


def test_deleted_model_trained_again(study):
    """An sft run whose model was deleted is trained again and the alias follows."""
    client = study["client"]
    [old] = _finished(client, "sft")
    model = client.get_logged_model(old.data.tags[lineage.MODEL_ID])
    shutil.rmtree(_path(old.info.artifact_uri), ignore_errors=True)
    shutil.rmtree(_path(model.artifact_location))
    assert client.get_model_version_by_alias(NAME, "teacher-7b").run_id == old.info.run_id  # points at nothing now

    again = run_entry(*SFT, env=study["env"], cwd=study["root"])
    out = again.stdout + again.stderr
    # before: "5 steps, 5 reused", the broken run reused and @teacher-7b left on a version with no files
    assert f"sft run {old.info.run_id} is not reused: its model files are gone" in out, out[-3000:]
    assert "training again" in out
    new = _finished(client, "sft")[0]
    assert new.info.run_id != old.info.run_id
    version = client.get_model_version_by_alias(NAME, "teacher-7b")
    assert version.run_id == new.info.run_id
    assert client.get_model_version_by_alias(NAME, "teacher-7b-seed42").version == version.version
    assert ({f.path for f in client.list_logged_model_artifacts(new.data.tags[lineage.MODEL_ID])}
            >= {"MLmodel", "model"})
    tags = client.get_run(old.info.run_id).data.tags  # set aside for good: no search by key finds it
    assert "model files are gone" in tags["distill.artifacts_missing"] and lineage.CACHE_KEY not in tags
    assert "files_missing" in client.get_model_version(NAME, client.search_model_versions(
        f"run_id = '{old.info.run_id}'")[0].version).tags

    third = run_entry(*SFT, env=study["env"], cwd=study["root"])  # whole again: everything reused
    assert "not reused" not in third.stdout + third.stderr
    assert [r.info.run_id for r in _finished(client, "sft")] == [new.info.run_id]  # the old one is out of searches


def test_deleted_select_selected_again(study):
    """A select run whose folder was deleted is selected again."""
    client = study["client"]
    [old] = _finished(client, "select")
    shutil.rmtree(_path(old.info.artifact_uri))

    again = run_entry(*SFT, env=study["env"], cwd=study["root"], check=False)
    out = again.stdout + again.stderr
    # before: sft failed on the missing train/7B.jsonl and said "type the same command again", forever
    assert again.returncode == 0, out[-3000:]
    assert f"select run {old.info.run_id} is not reused: its artifacts dev.jsonl, train/7B.jsonl, " \
           "train/72B.jsonl are gone" in out, out[-3000:]
    new = _finished(client, "select")[0]
    assert new.info.run_id != old.info.run_id
    latest = _finished(client, "sft")[0]
    assert latest.data.tags["distill.select_run_id"] == new.info.run_id
    assert client.get_model_version_by_alias(NAME, "teacher-7b").run_id == latest.info.run_id
    assert not client.search_runs([old.info.experiment_id], "attributes.status = 'FAILED'")


def test_refused_step_says_what_to_do(study):
    """A step refused says what to do not to type the same command again."""
    client = study["client"]
    select = _finished(client, "select")[0]
    shutil.rmtree(_path(select.info.artifact_uri))  # named by the user: refused, not redone behind their back
    proc = run_entry(*SFT, "--select_run", select.info.run_id, "--seed", "3", env=study["env"], cwd=study["root"],
                     check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    # before: "...; type the same command again to continue from there", which fails the same way forever
    assert f"run {select.info.run_id} has no artifact 'train/7B.jsonl'" in line, line
    assert "type the same command again" not in line, line  # refused before any step: it says what to do instead
    assert "name another run, or name none to have it found or made again" in line, line
