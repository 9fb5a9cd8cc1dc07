"""`main -P plan=true` prices the run before a GPU is rented (distill.estimates, distill.pipeline.priced_plan),
and every step of a real run logs what it cost beside what the plan expected (distill.pipeline.step_time)."""

import math
import re

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from distill import DistillError, pipeline
from distill.cli import parse_params
from distill.config.presets import load_preset
from distill.estimates import throughput
from distill.estimates.measured import Rates
from distill.estimates.sizes import PUBLISHED_PARAMS
from distill.estimates.steps import StepEstimate, estimate
from distill.phases.report import ReportParams, run as report
from distill.pipeline import MainParams, planner, priced_plan
from tests import step_fixtures
from tests.conftest import ROOT
from tests.step_fixtures import FixtureParams
from tests.test_report import Store, artifacts, first

SEVEN_B = "Qwen/Qwen2.5-7B-Instruct"


def _rows(stdout: str) -> dict[str, list[str]]:
    """The plan's step rows: name -> [action, GPUs, GPU-h, disk, download, (cost,) basis]."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith(("  run    ", "  reuse  ")):
            action, name, *cols = re.split(r" {2,}", line.strip())
            out[name] = [action, *cols]
    return out


def _total(stdout: str, pattern: str) -> float:
    return float(re.search(pattern, stdout).group(1).replace(",", ""))


def _earlier_runs(uri: str) -> dict[str, str]:
    """An evaluation of the 7B teacher and an sft of qwen2.5-0.5b, logged the way `evaluate` and `sft` log them."""
    mlflow.set_tracking_uri(uri)
    ids = {}
    with mlflow.start_run(tags={"distill.phase": "evaluate", "distill.model": "7B"}) as run:
        mlflow.log_params({"preset": "paper", "backend": "vllm", "model_source": SEVEN_B, "student": ""})
        mlflow.log_metrics({"tokens_per_second": 1000.0, "model_load_seconds": 10.0})
        ids["evaluate"] = run.info.run_id
    # a rehearsal's rate is no GPU's: not used
    with mlflow.start_run(tags={"distill.phase": "evaluate", "distill.rehearsal": "true"}):
        mlflow.log_params({"preset": "paper", "backend": "vllm", "model_source": "Qwen/Qwen2.5-14B-Instruct"})
        mlflow.log_metrics({"tokens_per_second": 5.0, "model_load_seconds": 1.0})
    with mlflow.start_run(tags={"distill.phase": "sft", "distill.student": "qwen2.5-0.5b"}) as run:
        mlflow.log_params({"preset": "paper"})
        mlflow.log_metrics({"train_tokens_per_second": 50_000.0})
        ids["sft"] = run.info.run_id
    mlflow.set_tracking_uri(None)
    return ids


def test_paper_plan_priced_on_cpu(tmp_path, monkeypatch, cli):
    """The paper plan is priced on a CPU from assumptions and measured rates.

    `main --plan true` through the CLI in this process (tests/test_upstream.py types plans as a user would)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    earlier = _earlier_runs(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hub cache
    monkeypatch.chdir(tmp_path)
    proc = cli("main", "--preset", "paper", "--plan", "true", "--gpu_hour_price", "2.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    rows = _rows(out)
    assert out.splitlines()[0] == "main: 48 steps, 48 to run, 0 reused" and len(rows) == 48, out

    # measured rates replace the assumption, and say so; a rehearsal's rate does not count
    seven = (10 + 7473 * throughput.TOKENS_PER_ANSWER / 1000) / 3600
    assert rows["teacher 7B"][1:3] == ["1", f"{seven:.2f}"]
    assert rows["teacher 7B"][-1] == f"measured: tokens_per_second 1,000 of run {earlier['evaluate'][:8]}"
    sft = (throughput.SFT_LOAD_SECONDS + 5000 * 2 * throughput.SFT_TOKENS_PER_EXAMPLE / 50_000) / 3600
    assert rows["sft 72B -> qwen2.5-0.5b (seed 42)"][2] == f"{sft:.2f}"
    assert rows["sft 72B -> qwen2.5-0.5b (seed 42)"][-1].endswith(f"of run {earlier['sft'][:8]}")
    assert rows["teacher 14B"][-1] == "assumed" and rows["teacher 72B"][1] == "4"

    # the totals are the rows' sums; the cost is GPU-hours x the price
    gpu_h = _total(out, r"at most 4 GPUs at once: ([\d.,]+) GPU-hours")
    assert math.isclose(sum(float(r[2]) for r in rows.values()), gpu_h, abs_tol=0.005 * len(rows))
    cost = _total(out, r"cost: ([\d.,]+) \(")
    assert math.isclose(cost, gpu_h * 2.5, abs_tol=0.02)
    assert math.isclose(sum(float(r[5]) for r in rows.values()), cost, abs_tol=0.005 * len(rows))
    # every model downloaded once, at the first step that loads it, at 2 bytes a parameter
    download = _total(out, r"download: ([\d.,]+) GB")
    assert math.isclose(download, 2 * sum(PUBLISHED_PARAMS.values()) / 1e9, abs_tol=0.1)
    assert math.isclose(sum(float(r[4]) for r in rows.values()), download, abs_tol=0.05 * len(rows))
    assert rows["teacher 7B"][4] == "15.2" and rows["evaluate teacher 7B"][4] == "0"
    assert "9 models" in out and "6 of 48 steps timed by an earlier run's measured rate, 42 by the assumptions" in out
    # no Hub: the inputs that are not here are said once, and the steps counted as to run
    assert ("not checked for reuse (a plan asks the Hub nothing; this input is not on this machine), so counted as "
            "to run: translate: could not load openai/gsm8k") in out
    assert proc.stderr.count("Retrying") == 0


def test_no_price_no_cost(tmp_path):
    """Without a price there is no cost and the rehearsal needs no GPU."""
    p = MainParams(preset="paper", rehearsal=True, backend="transformers")  # as docs/rehearsal.md runs it
    grid = planner.resolve_grid(p, hardware=False)
    steps = planner.plan(p, grid)
    status = [planner.Pending(s, None) for s in steps]
    lines = priced_plan.table("main", status, estimate(steps, grid, p), None)
    assert "cost" not in "\n".join(lines)
    assert "totals: 48 steps to run, at most 0 GPUs at once: 0.00 GPU-hours" in lines[-4]
    assert "download: 0.0 GB" in lines[-3]


def test_reused_step_costs_nothing():
    """A reused step costs nothing and its model is downloaded by the next step that loads it."""
    p = MainParams(preset="paper")
    pr = load_preset("paper")
    grid = planner.Grid(pr, list(pr.grid.teachers), list(pr.grid.students), [42], pr.backend, None, False)
    steps = planner.plan(p, grid)
    reused = {"translate": "a" * 32, "teacher 7B": "b" * 32}
    status = [planner.Pending(s, reused.get(s.name)) for s in steps]
    to_run = {s.name for s in steps if s.name not in reused}
    est = estimate(steps, grid, p, Rates({}, {}), to_run=to_run)
    everything = estimate(steps, grid, p, Rates({}, {}))
    lines = priced_plan.table("main", status, est, 2.0)
    rows = _rows("\n".join(lines))
    assert rows["teacher 7B"] == ["reuse", "1", "0", "0", "0", "0.00", f"run {'b' * 32}"]
    assert est["evaluate teacher 7B"].downloads == [SEVEN_B] and everything["evaluate teacher 7B"].downloads == []
    gpu_h = sum(e.gpu_seconds for n, e in everything.items() if n not in reused) / 3600
    total = next(line for line in lines if line.startswith("totals:"))
    assert f"46 steps to run, at most 4 GPUs at once: {gpu_h:,.2f} GPU-hours" in total
    assert f"cost: {gpu_h * 2:,.2f} ({gpu_h:,.2f} GPU-hours x 2 a GPU-hour)" in "\n".join(lines)


RULE = "gpu_hour_price must be a finite number >= 0 (a price per GPU-hour)"


@pytest.mark.parametrize("value,message", [
    ("-1", f"{RULE} (got -1.0); leave it out for the default"),
    ("nan", f"{RULE} (got nan); leave it out for the default"),
    ("two", "gpu_hour_price: expected a number, got 'two'"),
])
def test_a_bad_price_is_refused_by_name(value, message):
    with pytest.raises(DistillError) as e:
        parse_params(MainParams, ["--gpu_hour_price", value], builds="")
    assert str(e.value) == message
    assert parse_params(MainParams, ["--gpu_hour_price", "2.5"]).gpu_hour_price == 2.5


@pytest.fixture
def steps(tracking, monkeypatch):  # noqa: F811 - conftest's tracking store
    monkeypatch.setattr(pipeline, "ISOLATED", pipeline.ISOLATED | {"tests.step_fixtures"})
    import multiprocessing

    with mlflow.start_run(run_name="main") as main:
        guess = {"fixture": StepEstimate(gpus=0, seconds=30.0, disk_gb=0.0)}
        yield pipeline.Steps(multiprocessing.get_context("fork"), main.info.run_id, estimates=guess)


def test_step_logs_time_and_estimate(steps, monkeypatch):
    """A step that ran logs its wall time GPU seconds and estimate."""
    run_id = steps("fixture", step_fixtures.run, FixtureParams())  # in a process of its own, on CPU
    m = mlflow.get_run(run_id).data.metrics
    assert 0 < m["wall_seconds"] < 300 and m["gpus"] == 0 and m["gpu_seconds"] == 0
    assert m["estimated_wall_seconds"] == 30 and m["estimated_gpu_seconds"] == 0
    # a step holding 2 GPUs (here, in this process: nothing asks a real GPU): GPU-seconds are wall time x 2
    monkeypatch.setattr(pipeline, "ISOLATED", pipeline.ISOLATED - {"tests.step_fixtures"})
    run_id = steps("held", step_fixtures.run, FixtureParams(), gpus=2)
    m = mlflow.get_run(run_id).data.metrics
    assert m["gpus"] == 2 and m["gpu_seconds"] == pytest.approx(2 * m["wall_seconds"])
    assert "estimated_wall_seconds" not in m  # no estimate for it: none logged


def test_report_cost_beside_estimate(tracking, tmp_path):
    """The report sets each phase's cost beside its estimate.

    The runs behind the report, found through their upstream tags, as `main`'s steps logged them."""
    s = Store()
    timed = lambda wall, gpus, est=None: {"wall_seconds": wall, "gpus": gpus, "gpu_seconds": wall * gpus,  # noqa: E731
                                          **({"estimated_wall_seconds": est, "estimated_gpu_seconds": est * gpus}
                                             if est else {})}
    translation = s.run("translate", {}, timed(3600, 4, 1800))
    teacher = s.run("teacher", {"distill.translation_run_id": translation}, timed(1800, 1, 1800))
    select = s.run("select", {"distill.teacher_run_ids": f'{{"7B": "{teacher}"}}'}, timed(60, 0, 60))
    sft = s.run("sft", {"distill.select_run_id": select, "distill.student": "qwen2.5-0.5b"}, timed(900, 1))
    s.run("sft", {"distill.select_run_id": select}, timed(5000, 1, 10))   # not behind this report: not counted
    evaluation = s.evaluate(first(20), "7B", "qwen2.5-0.5b")
    MlflowClient().set_tag(evaluation, "distill.sft_run_id", sft)
    local = artifacts(report(ReportParams(preset="offline", eval_set="mgsm-ja")), tmp_path)
    table = pd.read_csv(f"{local}/tables/estimated_vs_actual.csv").set_index("phase")
    assert list(table.index) == ["translate", "teacher", "select", "sft", "evaluate"]
    assert table.loc["translate", "actual_gpu_h"] == 4 and table.loc["translate", "estimated_gpu_h"] == 2
    assert table.loc["translate", "actual_over_estimated_wall"] == 2
    assert table.loc["select", "actual_gpu_h"] == 0 and table.loc["select", "actual_wall_min"] == 1
    assert table.loc["sft", "timed"] == 1 and table.loc["sft", "estimated"] == 0          # no estimate: none compared
    assert table.loc["sft", "actual_gpu_h"] == 0.25 and math.isnan(table.loc["sft", "estimated_gpu_h"])
    assert table.loc["evaluate", "runs"] == 1 and table.loc["evaluate", "timed"] == 0     # made alone: not timed
    md = open(f"{local}/report.md", encoding="utf-8").read()
    assert "## Estimated vs actual cost per phase" in md
    assert "| translate | 1 | 1 | 1 | 60.0 | 4.000 | 30.0 | 2.000 | 2.00 |" in md


def test_preset_price_default_and_checked(tmp_path, monkeypatch, cli):
    """A preset's price is the default and checked by the same rule."""
    from distill.config.params import check_preset

    text = (ROOT / "distill/presets/offline.yaml").read_text()
    assert "  gpu_hour_price: null\n" in text
    (tmp_path / "priced.yaml").write_text(text.replace("  gpu_hour_price: null\n", "  gpu_hour_price: 3\n"))
    (tmp_path / "negative.yaml").write_text(text.replace("  gpu_hour_price: null\n", "  gpu_hour_price: -3\n"))
    with pytest.raises(DistillError, match=r"negative.yaml.*grid.gpu_hour_price must be a finite number >= 0"):
        check_preset(load_preset(str(tmp_path / "negative.yaml")), [MainParams])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    proc = cli("main", "--preset", "priced.yaml", "--plan", "true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "  cost: 0.00 (0.00 GPU-hours x 3 a GPU-hour)" in proc.stdout.splitlines(), proc.stdout


def test_target_alone_logs_time(tracking):
    """An entry points target run alone logs its time too.

    `-e sft` whose upstream is all reused runs its target here, not through the step executor: timed the same."""
    from distill.pipeline import upstream

    run_id = upstream.timed_alone(step_fixtures.run, planner.Step("fixture", "select", FixtureParams(), gpus=1),
                                  FixtureParams())
    m = mlflow.get_run(run_id).data.metrics
    assert m["gpus"] == 1 and m["wall_seconds"] > 0 and m["gpu_seconds"] == m["wall_seconds"]
