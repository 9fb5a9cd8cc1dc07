"""A student comes back in one line: the pull-back snippet of docs/sft.md, `-e evaluate -P model=models:/...`, and
`python -m distill.students`, against a store where a real tiny `sft` registered a student (typed `7b`)."""

from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from distill.phases.sft import SftParams, run as sft
from distill.students import DASH, main as students_main
from tests.conftest import ROOT
from tests.mini_study import Sizes

pytestmark = pytest.mark.slow  # a registered student on the preset's full data, then `mlflow run`: ~5 min

NAME = "offline-student-qwen2.5-0.5b"
SFT_PAGE = (ROOT / "docs" / "sft.md").read_text(encoding="utf-8")  # what the docs tell a user to type


# the preset's full data (and, in `sft`, its schedule), so that the aliases move: a smoke run's version takes none
MINI_STUDY = Sizes(limit=None, max_new_tokens=8, n=None, dev_size=None)


@pytest.fixture(scope="module")
def store(mini_study):
    """The mini-study, then the sft of qwen2.5-0.5b on teacher `7b` (as typed in the issue), registered."""
    # before: "no FINISHED select run has a training set for 7b", though the preset's 7B has one
    return {**mini_study, "sft": sft(SftParams(teacher="7b", student="Qwen2.5-0.5B"))}


def _user_env() -> dict:
    """A user's shell in the study's folder: no MLFLOW_TRACKING_URI, so ./mlflow.db; the venv on PATH."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return env


def test_typed_7b_is_7B(store):
    """A name typed 7B is the preset's 7B everywhere."""
    run = mlflow.get_run(store["sft"])
    assert run.data.params["teacher"] == "7B" and run.data.tags["distill.teacher"] == "7B"
    assert run.data.params["student"] == "qwen2.5-0.5b" and run.data.tags["distill.student"] == "qwen2.5-0.5b"
    version = MlflowClient().get_model_version_by_alias(NAME, "teacher-7b")
    assert version.run_id == store["sft"] and version.tags["teacher"] == "7B"
    assert run.data.tags["distill.logged_model"] == "student-qwen2_5-0_5b-7B-seed42"
    # typed in another case and width, it is the same work: reused, not trained again
    assert sft(SftParams(teacher="７Ｂ", student="qwen2.5-0.5b")) == store["sft"]
    assert len(MlflowClient().search_model_versions(f"name = '{NAME}'")) == 1


def _readme_pull_back_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", SFT_PAGE, re.S)
    found = [b for b in blocks if "mlflow.transformers.load_model(" in b]
    assert len(found) == 1, "the sft page shows one pull-back snippet"
    return found[0]


@pytest.fixture
def users_folder(store, monkeypatch):
    """This process as a user's Python in the study's folder: no tracking URI set, so ./mlflow.db."""
    monkeypatch.chdir(store["root"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(None)
    yield store
    mlflow.set_tracking_uri(store["uri"])


def test_readme_snippet_generates(users_folder, capsys):
    """The README's snippet pulls the student back and generates."""
    snippet = _readme_pull_back_snippet()
    assert f'"models:/{NAME}@teacher-7b"' in snippet
    exec(compile(snippet, "docs/sft.md", "exec"), {"__name__": "__main__"})
    assert mlflow.get_tracking_uri() == f"sqlite:///{users_folder['root'] / 'mlflow.db'}"
    assert capsys.readouterr().out.strip(), "the snippet printed no generated text"


def _table(args: list[str], capsys) -> list[list[str]]:
    assert students_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    return [re.split(r"\s{2,}", line) for line in lines[2:]]  # header, rule, rows


def test_listed_then_evaluated(store, capsys, monkeypatch):
    """Students are listed then evaluated through mlflow run as the README says."""
    uri = f"models:/{NAME}@teacher-7b"
    rows = _table(["--preset", "offline"], capsys)
    assert rows == [[NAME, "1", "7B", "42", DASH, "teacher-7b, teacher-7b-seed42", uri]]
    assert _table(["--teacher", "７ｂ", "--name", "qwen2.5-0.5b"], capsys) == rows
    assert (students_main(["--teacher", "72B"]) == 0
            and "no registered students (teacher=72B)" in capsys.readouterr().out)

    # the sft page's line, as typed, in the study's folder (a short evaluation: limit and max_new_tokens added)
    lines = [line for line in SFT_PAGE.splitlines() if "-e evaluate" in line and f"model={uri}" in line]
    assert lines, f"docs/sft.md shows `mlflow run . -e evaluate ... -P model={uri}`"
    typed = shlex.split(re.search(r"`(mlflow run [^`]*)`", lines[0]).group(1))
    assert typed[:3] == ["mlflow", "run", "."] and "--env-manager" in typed
    command = [sys.executable, "-m", "mlflow", "run", str(ROOT), *typed[3:], "-P", "limit=3", "-P", "max_new_tokens=4"]
    proc = subprocess.run(command, cwd=store["root"], env=_user_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [evaluation] = mlflow.search_runs(experiment_names=["distill-offline"], output_format="list",
                                      filter_string="tags.`distill.phase` = 'evaluate'")
    assert (evaluation.data.tags["distill.sft_run_id"] == store["sft"]
            and evaluation.data.tags["distill.teacher"] == "7B")
    accuracy = f"{evaluation.data.metrics['accuracy']:.2f}"

    monkeypatch.setattr(sys, "argv", ["distill.students"])
    with pytest.raises(SystemExit) as exit_status:  # `python -m distill.students`, in this process
        runpy.run_module("distill.students", run_name="__main__")
    assert exit_status.value.code == 0
    header, rule, row = capsys.readouterr().out.splitlines()
    assert re.split(r"\s{2,}", header) == ["registered name", "version", "teacher", "seed", "accuracy", "aliases",
                                           "uri"]
    assert re.split(r"\s{2,}", row) == [NAME, "1", "7B", "42", accuracy, "teacher-7b, teacher-7b-seed42", uri]


def test_no_store_says_where_it_looked(tmp_path, capsys, monkeypatch):
    """Students without a store says where it looked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(None)
    try:
        assert students_main([]) == 2
    finally:
        mlflow.set_tracking_uri(before)
    assert f"no tracking store at {tmp_path / 'mlflow.db'}" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
