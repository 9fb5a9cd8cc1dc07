"""report: Tables 1 and 3, paired tests, Fig. 1-3 and the Missing section from synthetic but real MLflow runs."""

import json
import math
import os
import re
from urllib.parse import quote, unquote

import mlflow
import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from scipy.stats import binomtest

from distill import DistillError
from distill.phases.report import ReportParams, holm, run as report
from distill.scoring.stats import accuracy_with_ci
from tests.conftest import run_entry

N = 50  # questions per evaluation
IDS = [f"mgsm-ja-{i}" for i in range(N)]


class Store:
    """Creates FINISHED runs the way the phases tag them, with explicit start times (newest = last made)."""

    def __init__(self):
        self.client = MlflowClient()
        self.t = 1_700_000_000_000

    def run(self, phase: str, tags: dict, metrics: dict | None = None, files: dict | None = None) -> str:
        self.t += 1000
        rid = self.client.create_run("0", start_time=self.t, tags={"distill.phase": phase, **tags}).info.run_id
        if metrics:
            self.client.log_batch(rid, metrics=[Metric(k, float(v), self.t, 0) for k, v in metrics.items()])
        for path, text in (files or {}).items():
            self.client.log_text(rid, text, path)
        self.client.set_terminated(rid, "FINISHED", end_time=self.t + 500)
        return rid

    def evaluate(self, correct: list[bool], teacher=None, student=None, seed="42", baseline=None,
                 eval_set="mgsm-ja", predictions=True, answer_line: list[bool] | None = None,
                 cut: list[bool] | None = None) -> str:
        """`answer_line`: the second reading's correctness (not logged when None); `cut`: a baseline's cut variant."""
        tags = {"distill.eval_set": eval_set, "distill.mode": "few-shot" if baseline else "zero-shot"}
        if teacher:
            tags["distill.teacher"] = teacher
        if student:
            tags["distill.student"] = student
        if teacher and student:
            tags.update({"distill.sft_run_id": "f" * 32, "distill.seed": seed})
        if baseline:
            tags["distill.baseline"] = baseline
        acc, lo, hi = accuracy_with_ci(correct)
        rows = [{"id": i, "question": f"問題 {i}", "output": "…解答: 1", "extracted": "1", "gold": "1" if c else "2",
                 "correct": c, "output_tokens": 12, "finish_reason": "stop"} for i, c in zip(IDS, correct)]
        files = ({"predictions.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)}
                 if predictions else {})
        metrics = {"accuracy": acc, "accuracy_ci_low": lo, "accuracy_ci_high": hi, "n_correct": sum(correct),
                   "n_total": len(correct)}
        if answer_line is not None:
            metrics["accuracy_answer_line"] = 100 * sum(answer_line) / len(answer_line)
        if cut is not None:
            metrics["accuracy_cut_at_next_question"] = 100 * sum(cut) / len(cut)
        return self.run("evaluate", tags, metrics, files)


def first(k: int, start: int = 0) -> list[bool]:
    """Questions start..start+k-1 right, the others wrong."""
    return [start <= i < start + k for i in range(N)]


def shared_plotlyjs_of(html: str) -> tuple[str, str, str]:
    """The run and path a figure's HTML fetches plotly.js from in the MLflow UI, and its address elsewhere."""
    m = re.search(r'"/get-artifact\?path=([^&"]+)&run_uuid=(\w+)":"([^"]*)"', html)
    assert m, html[:3000]
    return m.group(2), unquote(m.group(1)), m.group(3)


def plotly_js_logged(run_id: str, path: str) -> bool:
    """The run is the experiment's plotly.js: FINISHED, tagged, the file complete."""
    run, client = mlflow.get_run(run_id), MlflowClient()
    sizes = {f.path: f.file_size for f in client.list_artifacts(run_id, path.rsplit("/", 1)[0])}
    return (run.info.status == "FINISHED" and run.data.tags["distill.asset"] == "plotly.js"
            and "distill.phase" not in run.data.tags and sizes.get(path, 0) > 1_000_000)


def artifacts(run_id: str, tmp_path) -> str:
    return mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / f"art-{run_id[:6]}"))


@pytest.fixture
def study(tracking):
    s = Store()
    ids = {}
    s.evaluate(first(5), "7B", "qwen2.5-0.5b")                          # superseded by the newer one below
    ids["stale_errors"] = s.run("errors", {"distill.eval_run_id": "0" * 32})
    # answer_line: the second reading; it reverses 7B and 72B for qwen2.5-0.5b only
    ids["7B/0.5b"] = s.evaluate(first(20), "7B", "qwen2.5-0.5b", answer_line=first(20))       # 40 %
    ids["72B/0.5b"] = s.evaluate(first(15, start=10), "72B", "qwen2.5-0.5b",                  # 30 %, q10-q24
                                 answer_line=first(25, start=10))                              # answer line 50 %
    for seed, k in (("42", 15), ("43", 16), ("44", 17)):               # 30, 32, 34 %: mean 32, std 2
        s.evaluate(first(k), "14B", "qwen2.5-0.5b", seed=seed, answer_line=first(k))
    s.evaluate(first(18), "7B+72B", "qwen2.5-0.5b", answer_line=first(18))   # a mix teacher, 36 %
    s.evaluate(first(30), "7B", "qwen2.5-1.5b", seed="42", answer_line=first(30))   # 60 %
    s.evaluate(first(32), "7B", "qwen2.5-1.5b", seed="43", answer_line=first(32))   # 64 %
    s.evaluate(first(25), "72B", "qwen2.5-1.5b", seed="42", answer_line=first(25))  # 50 %
    s.evaluate(first(27), "72B", "qwen2.5-1.5b", seed="43", answer_line=first(27))  # 54 %
    s.evaluate(first(2), student="qwen2.5-0.5b", baseline="4-shot",     # 4 %; cut at the next question 24 %
               answer_line=first(10), cut=first(12))
    s.evaluate(first(40), teacher="7B")                                 # the teacher itself: 80 %
    s.evaluate(first(49), "32B", "qwen2.5-0.5b", eval_set="gsm8k-ja")   # another eval set: not in this report
    s.run("errors", {"distill.eval_run_id": ids["7B/0.5b"], "distill.teacher": "7B", "distill.student": "qwen2.5-0.5b",
                     "distill.seed": "42"},
          {"errors_semantic": 20, "errors_step_missing": 6, "errors_calculation": 4, "n_wrong": 30, "n_judged": 30,
           "errors_semantic_frac": 20 / 30, "errors_step_missing_frac": 0.2, "errors_calculation_frac": 4 / 30})
    # an errors run without the count metrics: the report counts its judgments.jsonl (20 A, 5 B, 9 C, 1 failed)
    judgments = [{"id": IDS[i], "category": c, "reason": "…"} for i, c in
                 enumerate(["A"] * 20 + ["B"] * 5 + ["C"] * 9 + [None])]
    s.run("errors", {"distill.eval_run_id": ids["72B/0.5b"], "distill.teacher": "72B",
                     "distill.student": "qwen2.5-0.5b", "distill.seed": "42"},
          files={"judgments.jsonl": "".join(json.dumps(j) + "\n" for j in judgments)})
    tokens = [{"teacher": t, "tokenizer": k, "id": f"train-{i}", "tokens": base + i, "steps": 3,
               "uses_decimal": t == "72B" and i % 2 == 0}
              for t, base in (("7B", 100), ("72B", 70)) for k in ("qwen2.5", "sarashina2.2") for i in range(10)]
    s.run("tokens", {"distill.select_run_id": "e" * 32}, {"tokens_mean.qwen2.5.7B": 104.5},
          {"token_counts.jsonl": "".join(json.dumps(r) + "\n" for r in tokens)})
    ids["tokens"] = s.run("tokens", {"distill.select_run_id": "e" * 32},
                          files={"token_counts.jsonl": "".join(json.dumps(r) + "\n" for r in tokens)})
    s.ids = ids
    return s


def test_tables_tests_figures_missing(study, tmp_path):
    """Report tables tests figures and missing."""
    run_id = report(ReportParams(preset="offline"))
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["distill.phase"] == "report"
    assert run.data.tags["distill.tokens_run_id"] == study.ids["tokens"]   # the newest tokens run
    assert run.data.params["eval_set"] == "mgsm-ja" and run.data.params["error_teachers"] == "7B,72B"
    local = artifacts(run_id, tmp_path)

    # Table 1: newest run wins, seeds averaged, only mgsm-ja, preset order plus the mix
    t1 = pd.read_csv(os.path.join(local, "tables", "table1.csv"), index_col=0)
    assert list(t1.index) == ["7B", "14B", "32B", "72B", "7B+72B", "mean", "4-shot", "4-shot, cut at next question"]
    assert list(t1.columns) == ["qwen2.5-0.5b", "qwen2.5-1.5b", "sarashina2.2-1b", "llm-jp-3.1-1.8b", "mean"]
    assert t1.loc["7B", "qwen2.5-0.5b"] == pytest.approx(40.0)
    assert t1.loc["14B", "qwen2.5-0.5b"] == pytest.approx(32.0)
    assert math.isnan(t1.loc["32B", "qwen2.5-0.5b"])                    # evaluated on gsm8k-ja only
    assert t1.loc["7B", "qwen2.5-1.5b"] == pytest.approx(62.0)
    assert t1.loc["7B", "mean"] == pytest.approx(51.0)                  # (40 + 62) / 2
    assert t1.loc["mean", "qwen2.5-0.5b"] == pytest.approx((40 + 32 + 30) / 3)   # preset teachers, no mix
    assert t1.loc["7B+72B", "qwen2.5-0.5b"] == pytest.approx(36.0)
    assert t1.loc["4-shot", "qwen2.5-0.5b"] == pytest.approx(4.0) and math.isnan(t1.loc["4-shot", "qwen2.5-1.5b"])
    assert t1.loc["4-shot, cut at next question", "qwen2.5-0.5b"] == pytest.approx(24.0)
    cells = pd.read_csv(os.path.join(local, "tables", "table1_cells.csv"))
    c14 = cells[(cells.teacher == "14B") & (cells.student == "qwen2.5-0.5b")].iloc[0]
    assert c14.n_seeds == 3 and c14.seeds == "42,43,44" and c14.accuracy_std == pytest.approx(2.0)
    assert c14.accuracy_min == pytest.approx(30) and c14.accuracy_max == pytest.approx(34)
    c7 = cells[(cells.teacher == "7B") & (cells.student == "qwen2.5-1.5b")].iloc[0]
    assert c7.accuracy_std == pytest.approx(math.sqrt(8))
    md1 = open(os.path.join(local, "tables", "table1.md"), encoding="utf-8").read()
    assert "32.00 ± 2.00 (n=3)" in md1 and "**40.00**" in md1 and "| 32B | — |" in md1

    # scoring robustness: Table 1 under both rules, and the rankings that change
    rb = pd.read_csv(os.path.join(local, "tables", "robustness.csv")).set_index(["row", "student"])
    assert rb.loc[("72B", "qwen2.5-0.5b"), "accuracy_paper"] == pytest.approx(30.0)
    assert rb.loc[("72B", "qwen2.5-0.5b"), "accuracy_answer_line"] == pytest.approx(50.0)
    assert rb.loc[("14B", "qwen2.5-0.5b"), "accuracy_answer_line"] == pytest.approx(32.0)   # mean over seeds
    assert rb.loc[("4-shot", "qwen2.5-0.5b"), "difference"] == pytest.approx(16.0)
    ranks = pd.read_csv(os.path.join(local, "tables", "robustness_rankings.csv")).set_index("student")
    assert ranks.loc["qwen2.5-0.5b", "ranking_paper"] == "7B > 7B+72B > 14B > 72B"
    assert ranks.loc["qwen2.5-0.5b", "ranking_answer_line"] == "72B > 7B > 7B+72B > 14B"
    assert bool(ranks.loc["qwen2.5-0.5b", "changed"]) and not bool(ranks.loc["qwen2.5-1.5b", "changed"])
    assert ranks.loc["mean", "ranking_paper"] == "7B > 14B > 72B"   # preset teachers over qwen2.5-0.5b, all have it
    assert run.data.metrics["n_ranking_changes"] == 2
    md_rb = open(os.path.join(local, "tables", "robustness.md"), encoding="utf-8").read()
    assert "| 72B | 30.00 / 50.00 | 52.00 / 52.00 |" in md_rb

    # Table 3
    t3 = pd.read_csv(os.path.join(local, "tables", "table3.csv"))
    assert list(t3.teacher) == ["7B", "14B", "32B", "72B"]
    assert (t3.accuracy[0] == pytest.approx(80.0) and t3.ci_low[0] < 80 < t3.ci_high[0]
            and t3.accuracy.isna().sum() == 3)

    # paired tests: exact discordant counts, difference and McNemar p
    pt = pd.read_csv(os.path.join(local, "tables", "paired_tests.csv"), dtype={"seeds": str, "mcnemar_seed": str})
    assert len(pt) == 6 + 1          # 0.5b: 4 teachers -> 6 pairs; 1.5b: 7B vs 72B
    r = pt[(pt.student == "qwen2.5-0.5b") & (pt.teacher_a == "7B") & (pt.teacher_b == "72B")].iloc[0]
    assert (r.only_a, r.only_b, r.n_questions) == (10, 5, 50)
    assert r["diff"] == pytest.approx(10.0) and r.ci_low <= 10 <= r.ci_high
    assert r.p_mcnemar == pytest.approx(binomtest(10, 15, 0.5).pvalue)
    assert 0 < r.p_bootstrap <= 1 and r.p_mcnemar_holm >= r.p_mcnemar
    r14 = pt[(pt.student == "qwen2.5-0.5b") & (pt.teacher_a == "7B") & (pt.teacher_b == "14B")].iloc[0]
    assert r14.seeds == "42" and (r14.only_a, r14.only_b) == (5, 0)    # the one seed both have
    r15 = pt[pt.student == "qwen2.5-1.5b"].iloc[0]
    assert r15.seeds == "42,43" and r15.mcnemar_seed == "42"           # two common seeds averaged
    assert r15["diff"] == pytest.approx(10.0) and (r15.only_a, r15.only_b) == (5, 0)
    assert r15.accuracy_a == pytest.approx(62.0) and r15.accuracy_b == pytest.approx(52.0)

    # errors: metrics of one run, judgments.jsonl of the other; the stale errors run ignored
    er = pd.read_csv(os.path.join(local, "tables", "errors.csv"))
    assert set(zip(er.teacher, er.student)) == {("7B", "qwen2.5-0.5b"), ("72B", "qwen2.5-0.5b")}
    e72 = er[er.teacher == "72B"].iloc[0]
    assert (e72.errors_semantic, e72.errors_step_missing, e72.errors_calculation, e72.n_judged, e72.n_wrong) == \
        (20, 5, 9, 34, 35)
    assert e72.errors_calculation_frac == pytest.approx(9 / 34)

    # figures: HTML that loads the experiment's one plotly.js (a run of its own), and a JSON twin holding the data
    assert not os.path.exists(os.path.join(local, "figures", "plotly.min.mjs"))    # not a copy per report
    for name in ("fig1_accuracy", "fig2_errors", "fig3_tokens"):
        html = open(os.path.join(local, "figures", f"{name}.html"), encoding="utf-8").read()
        assert re.search(r'<script[^>]*\bsrc="plotly\.min\.mjs"', html) and len(html) < 200_000  # a copy beside it
        # where the MLflow UI's blob: viewer and a browser fetch it
        asset_run, path, address = shared_plotlyjs_of(html)
        assert asset_run != run_id and path == "figures/plotly.min.mjs" and plotly_js_logged(asset_run, path)
        assert address.startswith("file://") and os.path.getsize(address.removeprefix("file://")) > 1_000_000
    fig1 = json.load(open(os.path.join(local, "figures", "fig1_accuracy.json")))
    bar = next(t for t in fig1["data"] if t["type"] == "bar" and t["name"] == "qwen2.5-0.5b")
    assert bar["x"] == ["7B", "14B", "32B", "72B", "7B+72B"]
    assert bar["y"][:2] == pytest.approx([40.0, 32.0]) and bar["y"][2] is None and bar["y"][3] == pytest.approx(30.0)
    assert bar["error_y"]["array"][0] > 0 and bar["error_y"]["arrayminus"][0] > 0
    assert bar["textposition"] == "outside" and bar["textfont"]["color"] == "#222"   # readable on any bar
    assert fig1["layout"]["yaxis"]["range"][0] == 0 and fig1["layout"]["yaxis"]["range"][1] > 40
    base = [t for t in fig1["data"] if t.get("name") == "4-shot baseline"]
    assert len(base) == 1 and base[0]["x"] == ["4-shot"] and base[0]["y"] == pytest.approx([4.0])
    dots = [t for t in fig1["data"] if t.get("name") == "one seed"]    # seed dots where a cell has several
    assert sorted(len(t["y"]) for t in dots) == [3, 4]
    fig2 = json.load(open(os.path.join(local, "figures", "fig2_errors.json")))
    b7 = next(t for t in fig2["data"] if t["name"] == "teacher 7B")
    assert b7["text"] == ["20", "6", "4"] and b7["y"] == pytest.approx([200 / 3, 20.0, 40 / 3])
    b72 = next(t for t in fig2["data"] if t["name"] == "teacher 72B")
    assert b72["text"] == ["20", "5", "9"]
    fig3 = json.load(open(os.path.join(local, "figures", "fig3_tokens.json")))
    boxes = [t for t in fig3["data"] if t["type"] == "box"]
    assert len(boxes) == 4 and sorted(len(b["y"]) for b in boxes) == [10] * 4
    assert fig3["layout"]["xaxis"]["ticktext"] == ["7B<br>mean 104.5", "72B<br>mean 74.5"]
    tok = pd.read_csv(os.path.join(local, "tables", "tokens.csv"))
    q = tok[(tok.tokenizer == "qwen2.5")].set_index("teacher")
    assert q.loc["7B", "tokens_mean"] == pytest.approx(104.5) and q.loc["72B", "uses_decimal_frac"] == 0.5

    # missing: 16 preset cells, 5 present
    missing = json.load(open(os.path.join(local, "missing.json"), encoding="utf-8"))
    cells_missing = {m["what"] for m in missing if m["kind"] == "cell"}
    assert (len(cells_missing) == 11 and "32B / qwen2.5-0.5b" in cells_missing
            and "7B / qwen2.5-0.5b" not in cells_missing)
    assert run.data.metrics["n_missing_cells"] == 11 and run.data.tags["distill.missing_cells"] == "11"
    kinds = {(m["kind"], m["what"]) for m in missing}
    assert ("teacher_eval", "14B") in kinds and ("baseline", "qwen2.5-1.5b") in kinds
    assert ("errors", "7B / qwen2.5-1.5b") in kinds and ("tokens", "tokenizer llm-jp-3.1") in kinds
    assert ("tokens", "14B") in kinds and ("seed", "7B / qwen2.5-0.5b") not in kinds
    md = open(os.path.join(local, "report.md"), encoding="utf-8").read()
    for text in ("## Table 1", "## Table 3", "## Paired tests", "## Missing", "32B / qwen2.5-0.5b",
                 f"(#/experiments/{run.info.experiment_id}/runs/{run_id}/artifactPath/figures/fig1_accuracy.html"
                 "?workflowType=machine_learning)",
                 "left out (the newest wins)", "qwen2.5-0.5b: best teacher 7B",
                 "## Scoring robustness",
                 "The teacher ranking changes under the answer-line rule for: qwen2.5-0.5b, mean.",
                 "4-shot, cut at next question"):
        assert text in md, text
    assert run.data.metrics["accuracy.7B.qwen2.5-0.5b"] == pytest.approx(40.0)
    assert run.data.metrics["accuracy_mean.7B_72B"] == pytest.approx(36.0)
    table = json.load(open(os.path.join(local, "tables", "paired_tests.json"), encoding="utf-8"))
    assert "p_mcnemar" in table["columns"] and len(table["data"]) == 7     # also an MLflow table
    inputs = json.load(open(os.path.join(local, "inputs.json")))
    assert study.ids["7B/0.5b"] in inputs["evaluate_students"] and len(inputs["evaluate_students"]) == 10


def test_empty_experiment_and_bad_input(tracking, tmp_path):
    """Empty experiment gives a finished report and bad input a clear error."""
    with pytest.raises(DistillError, match="unknown teacher '3B'.*known teachers: 7B, 14B, 32B, 72B"):
        report(ReportParams(error_teachers="7B,3B"))
    with pytest.raises(DistillError, match="no MLflow run with id"):
        report(ReportParams(tokens_run="0" * 32))
    assert not MlflowClient().search_runs(["0"])                   # nothing started
    run_id = report(ReportParams(preset="offline", error_teachers="7b,72B"))
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["n_missing_cells"] == 16
    assert run.data.params["error_teachers"] == "7B,72B"
    local = artifacts(run_id, tmp_path)
    md = open(os.path.join(local, "report.md"), encoding="utf-8").read()
    assert "no FINISHED tokens run" in md and "No paired test could be made" in md
    not_comparable = [line for line in md.splitlines() if line.startswith("Not comparable with the paper")]
    assert len(not_comparable) == 1 and "eval set mgsm-ja (the paper's: SakanaAI/gsm8k-ja-test_250-1319)" in \
        not_comparable[0] and "4 of the paper's 4 teachers not in the preset" in not_comparable[0]
    assert "- " + not_comparable[0] in md.split("## Summary")[1]       # also the summary's line
    assert not {k for k in run.data.metrics if k.startswith("n_claims")}   # no verdicts to sort by
    t1 = pd.read_csv(os.path.join(local, "tables", "table1.csv"), index_col=0)
    assert t1.drop(columns="mean").isna().all().all() and "| 72B | — | — | — | — |" in md
    fig1 = json.load(open(os.path.join(local, "figures", "fig1_accuracy.json")))
    assert fig1["layout"]["yaxis"]["range"] == [0, 10.0]   # in %, not 0-1, with nothing to show


def test_unreadable_predictions_and_reuse(tracking, tmp_path):
    s = Store()
    s.evaluate(first(20), "7B", "qwen2.5-0.5b")
    bad = s.evaluate(first(10), "72B", "qwen2.5-0.5b", predictions=False)
    first_id = report(ReportParams(reuse=True))
    local = artifacts(first_id, tmp_path)
    pt = pd.read_csv(os.path.join(local, "tables", "paired_tests.csv"))
    assert len(pt) == 1 and "predictions unreadable" in pt.note[0] and math.isnan(pt.p_mcnemar[0])
    missing = json.load(open(os.path.join(local, "missing.json")))
    assert any(m["kind"] == "predictions" and m["what"] == bad for m in missing)
    md = open(os.path.join(local, "report.md"), encoding="utf-8").read()
    assert "No teacher ranking could be compared under both rules." in md   # runs without the second reading
    assert report(ReportParams(reuse=True)) == first_id           # same input runs, same code: reused
    assert report(ReportParams()) != first_id                      # the default makes a new report
    s.evaluate(first(30), "14B", "qwen2.5-0.5b")
    assert report(ReportParams(reuse=True)) != first_id           # a new evaluation arrived


def test_a_narrowed_grid_and_a_tie(tracking, tmp_path):
    """A `main` of 2 teachers x 1 student: Table 1, Missing and the summary cover that grid, and a tie
    names no best."""
    s = Store()
    s.evaluate(first(10), "7B", "qwen2.5-0.5b")
    s.evaluate(first(10), "72B", "qwen2.5-0.5b")
    s.evaluate(first(30), "14B", "qwen2.5-1.5b")      # another study in the same experiment: not this grid
    run_id = report(ReportParams(teachers="7B,72b", students="qwen2.5-0.5b", seeds="42"))
    run = mlflow.get_run(run_id)
    assert run.data.metrics["n_missing_cells"] == 0 and run.data.params["teachers"] == "7B,72B"
    local = artifacts(run_id, tmp_path)
    t1 = pd.read_csv(os.path.join(local, "tables", "table1.csv"), index_col=0)
    assert list(t1.columns) == ["qwen2.5-0.5b", "mean"] and {"7B", "72B"} <= set(t1.index) and "14B" not in t1.index
    md = open(os.path.join(local, "report.md"), encoding="utf-8").read()
    assert "qwen2.5-0.5b: tie between 7B, 72B (20.00%)" in md and "best teacher" not in md.split("## Table 1")[0]
    assert "**20.00**" not in md and "over the teachers of this grid (7B, 72B" in md
    missing = json.load(open(os.path.join(local, "missing.json")))
    assert {m["what"] for m in missing if m["kind"] == "cell"} == set()
    assert {m["what"] for m in missing if m["kind"] == "teacher_eval"} == {"7B", "72B"}
    with pytest.raises(DistillError, match="unknown name '3B' in teachers; known teachers: 7B, 14B, 32B, 72B"):
        report(ReportParams(teachers="3B"))


def test_holm():
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])


def test_entry_point(tmp_path, monkeypatch, cli):
    """Through the CLI in this process; the entry point in processes of its own: the slow test below."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    proc = cli("report", "--preset", "offline", "--error_teachers", "7B,72B", "--upstream", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]  # the report of an empty store (with its upstream it would
    assert "16 missing" in proc.stderr                # build the grid first)


def test_mcnemar_matches_scipy():
    """Exact McNemar p matches SciPy binomtest."""
    from distill.scoring.stats import binomial_two_sided_half

    for n in [1, 2, 3, 7, 15, 40, 101, 400, 1319]:
        for k in sorted({0, 1, n // 3, n // 2, (n + 1) // 2, n - 1, n}):
            assert binomial_two_sided_half(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-9, abs=1e-300)
    assert binomial_two_sided_half(0, 0) == 1.0
    with pytest.raises(ValueError):
        binomial_two_sided_half(5, 3)


@pytest.mark.slow
def test_plotly_js_stored_once_served(mlflow_server, tmp_path):
    """plotly.js is stored once per experiment and served where the UI fetches it.

    Two reports through the real CLI on a real server: one plotly.js run between them, each report run ~80 KB
    instead of 4.9 MB, and the URL the UI's artifact viewer builds from the HTML serves the script."""
    import requests

    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    ids = [re.search(r"run (\w{32})",
                     run_entry("report", "--upstream", "false", env=env, cwd=tmp_path).stderr).group(1)
           for _ in range(2)]
    mlflow.set_tracking_uri(mlflow_server)
    try:
        client = MlflowClient()
        shared = set()
        for run_id in ids:
            html = mlflow.artifacts.load_text(f"runs:/{run_id}/figures/fig1_accuracy.html")
            asset_run, path, address = shared_plotlyjs_of(html)
            shared.add(asset_run)
            assert plotly_js_logged(asset_run, path)
            stored = sum(f.file_size or 0 for d in ("", "figures", "tables")
                         for f in client.list_artifacts(run_id, d or None))
            assert stored < 300_000, stored                                    # no 4.8 MB copy in the report run
            ui = f"{mlflow_server}/get-artifact?path={quote(path, safe='')}&run_uuid={asset_run}"
            assert address == ui                                               # outside the UI: the same server
            got = requests.get(ui, timeout=30)
            assert got.ok and "javascript" in got.headers["content-type"] and len(got.content) > 1_000_000
        assert len(shared) == 1
    finally:
        mlflow.set_tracking_uri(None)
