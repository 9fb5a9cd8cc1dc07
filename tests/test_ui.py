"""The MLflow UI a researcher lands on: the link `main` prints opens, in a fresh browser profile, on the study in
Model training mode (Runs, Models, Model registry; not the GenAI Overview), with Table 1 and the registered
students."""

import os
import re
import shlex
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import ROOT, free_port, run_entry

sys.path.insert(0, str(ROOT / "bench"))
from _browser import browser_page, missing  # noqa: E402
from ui_check import model_training_sidebar  # noqa: E402

from distill.tracking import ui_links  # noqa: E402


def test_where_to_look_names_page_or_command(tmp_path, monkeypatch):
    """Where to look names the server page or the command that serves the store."""
    route = ui_links.run_page("3", "abc")
    assert ui_links.where_to_look("https://u:secret@mlflow.example/", route) == \
        "open in the MLflow UI: https://u:***@mlflow.example/#/experiments/3/runs/abc?workflowType=machine_learning"
    monkeypatch.chdir(tmp_path)
    assert ui_links.where_to_look("sqlite:///mlflow.db", route) == (
        f"to see it: mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}   then open "
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning")


def _serve(command: str, port: int, cwd):
    """`mlflow ui` as main printed it, on a free port; waits until it answers."""
    args = shlex.split(command)
    assert args[:2] == ["mlflow", "ui"], command
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", *args[2:], "--host", "127.0.0.1",
                             "--port", str(port)],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    os.killpg(proc.pid, 9)
    raise AssertionError("mlflow ui did not start")


@pytest.mark.slow
def test_main_link_opens_model_training_mode(tmp_path):
    """The link main prints opens the study in model training mode."""
    if missing():
        pytest.skip(missing())
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_entry("main", "--preset", "offline", "--students", "qwen2.5-0.5b", "--limit", "4",
                     "--train_limit", "16", "--n", "12", env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    last = [line for line in proc.stderr.splitlines() if line.startswith("[distill]")][-1]
    found = re.fullmatch(r"\[distill\] main: to see it: (mlflow ui --backend-store-uri \S+)   then open "
                         r"http://127\.0\.0\.1:5000/(#/experiments/\d+/runs/[0-9a-f]{32}\?workflowType=machine_learning)",
                         last)
    assert found, last
    command, route = found.groups()
    exp = mlflow.MlflowClient(uri).get_experiment_by_name("distill-offline")
    assert exp.tags[ui_links.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert ui_links.STUDY_VIEW_TAG in exp.tags
    sft = mlflow.MlflowClient(uri).search_runs([exp.experiment_id], "tags.`distill.phase` = 'sft'")
    assert sorted(r.info.run_name for r in sft) == ["sft-72B-qwen2.5-0.5b-seed42", "sft-7B-qwen2.5-0.5b-seed42"]

    port = free_port()
    server = _serve(command, port, tmp_path)
    try:
        with browser_page() as (page, _):
            page.goto(f"http://127.0.0.1:{port}/{route}")
            page.get_by_role("heading", name="Table 1: student accuracy by teacher (%)").wait_for(timeout=60_000)
            nav = page.locator("nav").first.inner_text()
            assert model_training_sidebar(nav) and {"Runs", "Models"} <= set(nav.split("\n")), nav
            assert page.get_by_text("main-offline").first.is_visible()

            expand = page.get_by_label("Expand description")  # a long description starts folded
            if expand.count():
                expand.first.click()
            with page.context.expect_page() as opened:  # MLflow opens a description's links in a new tab
                page.get_by_role("link", name="student evaluations by teacher").click()
            runs = opened.value
            runs.get_by_text("Group: 7B").wait_for(timeout=60_000)  # the students, grouped by teacher
            assert runs.get_by_text("Group: 72B").first.is_visible()
            assert model_training_sidebar(runs.locator("nav").first.inner_text())

            with page.context.expect_page() as opened:
                page.get_by_role("link", name="offline-student-qwen2.5-0.5b").click()
            models = opened.value
            models.get_by_text("Version 2").first.wait_for(timeout=60_000)  # a version per teacher (smoke runs here:
            assert models.get_by_text("Version 1").first.is_visible()      # registered, tagged, no alias moved)
            assert model_training_sidebar(models.locator("nav").first.inner_text())
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
