"""main -P executor=ray: the grid's steps as Ray tasks, with the sequential executor's runs, reuse and failures."""

import json
import re
import shutil

import mlflow
import pytest
import requests
import yaml

from distill import DistillError
from distill.config.presets import PRESET_DIR
from distill.pipeline import MainParams, run as run_main
from tests.conftest import run_entry

SEQUENTIAL_PHASES = sorted(["translate", "teacher", "teacher", "evaluate", "evaluate", "select", "sft", "sft",
                            "evaluate", "evaluate", "evaluate", "tokens", "report"])  # tests/test_main.py
ARGS = ("--limit", "4", "--train_limit", "16", "--n", "12")


def test_local_store_not_shared_with_ray(tmp_path, tracking):
    """A local store is not shared with a Ray cluster."""
    with pytest.raises(DistillError, match="needs a tracking server every node reaches"):
        run_main(MainParams(preset="offline", executor="ray", ray_address="ray://10.0.0.1:10001"))
    with pytest.raises(DistillError, match="unknown executor 'dask'; choose one of sequential, ray"):
        run_main(MainParams(preset="offline", executor="dask"))


@pytest.mark.slow
def test_ray_main_matches_sequential_runs(tmp_path):
    """Ray main makes the sequential runs over a loopback server."""
    pytest.importorskip("ray")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    first = run_entry("main", "--preset", "offline", "--students", "qwen2.5-0.5b", *ARGS, "--executor", "ray",
                      env=env, cwd=tmp_path)
    served = re.search(r"serving sqlite:///\S+ at (http://127\.0\.0\.1:\d+) for the Ray tasks", first.stderr)
    assert served, first.stderr[-3000:]
    with pytest.raises(requests.RequestException):  # the loopback server is stopped with main
        requests.get(served.group(1) + "/health", timeout=2)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        mains = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`distill.phase` = 'main'",
                                   output_format="list")
        assert len(mains) == 1 and mains[0].info.status == "FINISHED"
        assert mains[0].data.params["executor"] == "ray"
        ray_key = mains[0].data.tags["distill.cache_key"]  # as the sequential main's: a killed one is found dead
        assert float(mains[0].data.tags["distill.heartbeat"]) > 0
        children = mlflow.search_runs(search_all_experiments=True,
                                      filter_string=f"tags.mlflow.parentRunId = '{mains[0].info.run_id}'",
                                      output_format="list")
        assert sorted(c.data.tags["distill.phase"] for c in children) == SEQUENTIAL_PHASES
        assert all(c.info.status == "FINISHED" for c in children)
        # artifacts where the embedded store puts them, ./mlruns
        assert all(c.info.artifact_uri.removeprefix("file://").startswith(str(tmp_path / "mlruns")) for c in children)
        steps = json.loads(mlflow.artifacts.load_text(f"runs:/{mains[0].info.run_id}/steps.json"))["steps"]
        assert len(steps) == 13 and not any(s["reused"] for s in steps)
        report = mains[0].data.tags["distill.report_run_id"]
        assert mlflow.get_run(report).data.tags["distill.phase"] == "report"
        # the sequential executor finds every step done: same parameters, inputs and code, so the same runs
        second = run_entry("main", "--preset", "offline", "--students", "qwen2.5-0.5b", *ARGS, env=env, cwd=tmp_path)
        mains = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`distill.phase` = 'main'",
                                   output_format="list")
        assert mains[0].data.metrics["steps_reused"] == mains[0].data.metrics["steps"] == 13, second.stderr[-2000:]
        assert mains[0].data.tags["distill.report_run_id"] == report
        assert mains[0].data.tags["distill.cache_key"] == ray_key and mains[0].data.params["executor"] == "sequential"
    finally:
        mlflow.set_tracking_uri(None)


def _preset_with_broken_student(tmp_path):
    """The offline preset with a second student whose weights file is garbage: its steps fail, the rest do not."""
    from distill.local_models.tiny import tiny_model_dir

    broken = tmp_path / "broken-student"
    good = tiny_model_dir("tiny:student-llm-jp-3.1-1.8b")
    shutil.copytree(good, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    preset = yaml.safe_load((PRESET_DIR / "offline.yaml").read_text())
    preset["students"]["broken"] = {"model": str(broken)}
    preset["grid"]["students"] = ["qwen2.5-0.5b", "broken"]
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(preset, allow_unicode=True))
    return path, broken, good


@pytest.mark.slow
def test_ray_main_failed_step_then_continue(postgres, tmp_path):
    """Ray main on a PostgreSQL server names a failed step finishes the rest and continues."""
    pytest.importorskip("ray")
    from tests.conftest import start_mlflow_server

    preset, broken, good = _preset_with_broken_student(tmp_path)
    scratch = tmp_path / "scratch"  # each task in an empty folder of its own: as on nodes that share no disk
    scratch.mkdir()
    with start_mlflow_server(tmp_path, postgres.create_database("mlflow_ray")) as uri:
        env = {"MLFLOW_TRACKING_URI": uri, "DISTILL_TASK_SCRATCH": str(scratch)}
        args = ("main", "--preset", str(preset), *ARGS, "--executor", "ray")
        first = run_entry(*args, env=env, cwd=tmp_path, check=False)
        assert first.returncode == 2, first.stderr[-3000:]
        err = first.stderr.strip().splitlines()[-1]
        assert re.search(r"step sft \S+ -> broken \(seed 42\) failed \(run [0-9a-f]{32}\)", err), err
        assert "type the same command again to continue" in err and "Traceback" not in first.stderr
        mlflow.set_tracking_uri(uri)
        try:
            main = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`distill.phase` = 'main'",
                                      output_format="list")[0]
            assert main.info.status == "FAILED"
            children = mlflow.search_runs(search_all_experiments=True,
                                          filter_string=f"tags.mlflow.parentRunId = '{main.info.run_id}'",
                                          output_format="list")
            failed_ids = set(re.findall(r"failed \(run ([0-9a-f]{32})\)", err))
            assert failed_ids and failed_ids <= {c.info.run_id for c in children if c.info.status == "FAILED"}
            finished = {(c.data.tags["distill.phase"], c.data.tags.get("distill.student")) for c in children
                        if c.info.status == "FINISHED"}
            # what does not depend on the broken student finished: its sft and evaluations, teachers, select, tokens
            assert ("sft", "qwen2.5-0.5b") in finished and ("evaluate", "qwen2.5-0.5b") in finished
            assert {"translate", "teacher", "select", "tokens"} <= {ph for ph, _ in finished}
            assert not any(ph == "report" for ph, _ in finished)
            n_finished = len([c for c in children if c.info.status == "FINISHED"])
            # every artifact went through the server's proxied store, and every task had a folder of its own
            assert all(c.info.artifact_uri.startswith("mlflow-artifacts:/") for c in children)
            assert len(list(scratch.glob("task-*"))) >= len(children)

            # fixed, typed again: the finished steps are reused, the rest run, the report is made
            shutil.rmtree(broken)
            shutil.copytree(good, broken)
            second = run_entry(*args, env=env, cwd=tmp_path)
            main = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`distill.phase` = 'main'",
                                      output_format="list")[0]
            assert main.info.status == "FINISHED"
            assert main.data.metrics["steps_reused"] == n_finished, second.stderr[-2000:]
            # translate, 2 teachers, their 2 evaluations, select, 4 sft, 4 evaluations, 2 baselines, tokens, report
            assert main.data.metrics["steps"] == 18
            assert "distill.report_run_id" in main.data.tags
        finally:
            mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_gpu_step_worker_exits_after_task(tmp_path):
    """A GPU steps worker exits after its task."""
    ray = pytest.importorskip("ray")
    from distill.phases.select import SelectParams
    from distill.pipeline.executors import execute_step, execute_step_in_fresh_worker

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=1)
    try:
        fresh = ray.remote(max_calls=1)(execute_step_in_fresh_worker)
        kept = ray.remote(execute_step)
        bad = SelectParams(teacher_runs="0" * 32)
        fresh_runs = [ray.get(fresh.remote("select", bad, env)) for _ in range(2)]
        kept_runs = [ray.get(kept.remote("select", bad, env)) for _ in range(2)]
    finally:
        ray.shutdown()
    # the phase's own error comes back as a value, for the driver to name the step
    assert all("no MLflow run with id '000" in r["error"] and r["run_id"] is None for r in fresh_runs + kept_runs)
    assert fresh_runs[0]["pid"] != fresh_runs[1]["pid"]      # max_calls=1: a new process for every GPU task
    assert kept_runs[0]["pid"] == kept_runs[1]["pid"]        # CPU steps keep their worker (imports paid once)
