"""The report's reproduction section: evaluation runs written the way `evaluate` writes them (tags, params,
predictions.jsonl) on the paper's eval set under the `paper` preset, their per-question correctness built so that
every claim is reproduced, contradicted, or left undecided; the real report phase decides each."""

import json
import os
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from distill.config.presets import load_preset
from distill.phases.report import ReportParams, run as report
from distill.phases.report.inputs import EvalRun, Inputs
from distill.phases.report.paper_results import load_paper
from distill.phases.report.reproduction import differences
from distill.pipeline.main_run import main_note
from distill.scoring.stats import accuracy_with_ci

N = 400
IDS = [f"gsm8k-ja-{250 + i}" for i in range(N)]
TEACHERS = ["7B", "14B", "32B", "72B"]
STUDENTS = ["qwen2.5-0.5b", "qwen2.5-1.5b", "sarashina2.2-1b", "llm-jp-3.1-1.8b"]
CLAIMS = ["best_on_average", "gap_7b_72b", "teachers_rise_with_size", "students_not_monotonic",
          "improves_over_base", "second_best_14b"]


def span(start: int, k: int) -> set[int]:
    return set(range(start, start + k))


class PaperStudy:
    """FINISHED evaluate runs as `evaluate` tags and logs them, on gsm8k-ja, each right on a set of questions."""

    def __init__(self, rehearsal: bool = False, n: int = N):
        self.client, self.t, self.rehearsal, self.n = MlflowClient(), 1_700_000_000_000, rehearsal, n

    def evaluate(self, right: set[int], teacher: str = "", student: str = "", baseline: str = "") -> str:
        self.t += 1000
        tags = {"distill.phase": "evaluate", "distill.eval_set": "gsm8k-ja",
                "distill.mode": "few-shot" if baseline else "zero-shot"}
        if self.rehearsal:
            tags["distill.rehearsal"] = "true"
        if teacher:
            tags["distill.teacher"] = teacher
        if student:
            tags["distill.student"] = student
        if teacher and student:
            tags.update({"distill.sft_run_id": "f" * 32, "distill.seed": "42"})
        if baseline:
            tags["distill.baseline"] = baseline
        rid = self.client.create_run("0", start_time=self.t, tags=tags).info.run_id
        correct = [i in right for i in range(self.n)]
        acc, lo, hi = accuracy_with_ci(correct)
        params = {"preset": "paper", "eval_set": "gsm8k-ja", "scoring": "paper", "n_examples": N,
                  "mode": "few-shot" if baseline else "zero-shot", "shots": 4 if baseline else 0}
        metrics = {"accuracy": acc, "accuracy_ci_low": lo, "accuracy_ci_high": hi, "n_correct": sum(correct),
                   "n_total": self.n}
        self.client.log_batch(rid, metrics=[Metric(k, float(v), self.t, 0) for k, v in metrics.items()],
                              params=[Param(k, str(v)) for k, v in params.items()])
        rows = [{"id": i, "extracted": "1", "gold": "1" if c else "2", "correct": c} for i, c in zip(IDS, correct)]
        self.client.log_text(rid, "".join(json.dumps(r) + "\n" for r in rows), "predictions.jsonl")
        self.client.set_terminated(rid, "FINISHED", end_time=self.t + 500)
        return rid

    def grid(self, cells: dict, baselines: dict, teachers: dict) -> None:
        for (t, s), right in cells.items():
            self.evaluate(right, t, s)
        for s, right in baselines.items():
            self.evaluate(right, student=s, baseline="4-shot")
        for t, right in teachers.items():
            self.evaluate(right, teacher=t)


BASE = span(0, 150)           # questions every student gets right after distillation


def reproducing() -> tuple[dict, dict, dict]:
    """7B best (the three students 24 extra answers, of which 14B has 12; Qwen2.5-1.5B: 72B 21 extra), mean gap
    7B − 72B 3.19 points; the 4-shot bases far below except sarashina2.2-1b's (as good as its 7B student);
    teachers nested, each 20 answers above the next smaller one."""
    s1, s2, s72 = span(200, 12), span(212, 12), span(230, 21)
    cells = {}
    for s in STUDENTS:
        for t in TEACHERS:
            extra = set()
            if s != "qwen2.5-1.5b":
                extra = {"7B": s1 | s2, "14B": s1}.get(t, set())
            elif t == "72B":
                extra = s72
            cells[(t, s)] = BASE | extra
    baselines = {s: span(60, 90) for s in STUDENTS}                    # 60 of BASE's questions fewer
    baselines["sarashina2.2-1b"] = BASE | s1 | s2                      # gains 0, -3, -6, -6 points
    teachers = {t: span(0, 300 + 20 * k) for k, t in enumerate(TEACHERS)}
    return cells, baselines, teachers


def contradicting() -> tuple[dict, dict, dict]:
    """The larger the teacher, the better its students (15 answers a step); Qwen2.5-0.5B's base above every one of
    its students; the teachers falling with size."""
    a1, a2, a3 = span(200, 15), span(215, 15), span(230, 15)
    steps = {"7B": set(), "14B": a1, "32B": a1 | a2, "72B": a1 | a2 | a3}
    cells = {(t, s): BASE | steps[t] for s in STUDENTS for t in TEACHERS}
    baselines = {s: span(60, 90) for s in STUDENTS}
    baselines["qwen2.5-0.5b"] = BASE | a1 | a2 | a3 | span(300, 30)
    teachers = {t: span(0, 360 - 20 * k) for k, t in enumerate(TEACHERS)}
    return cells, baselines, teachers


def undecided() -> tuple[dict, dict, dict]:
    """Small differences on the same questions for every student: 7B right on 12 that the others miss, they on 5
    that 7B misses (7B − 72B 1.75 points, interval holding 0 and 3.16); the 4-shot bases 20 answers (5 points,
    the margin of a large gain) below the 72B students; teachers 3 answers apart."""
    g, f = span(200, 12), span(212, 5)
    cells = {(t, s): BASE | (g if t == "7B" else f) for s in STUDENTS for t in TEACHERS}
    baselines = dict.fromkeys(STUDENTS, (BASE - span(0, 20)) | f)
    teachers = {t: span(0, 300 + 3 * k) for k, t in enumerate(TEACHERS)}
    return cells, baselines, teachers


def report_of(tmp_path, build, rehearsal=False):
    PaperStudy(rehearsal).grid(*build())
    run_id = report(ReportParams(preset="paper", error_teachers="7B,72B"))
    local = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "art"))
    claims = pd.read_csv(os.path.join(local, "tables", "reproduction_claims.csv")).set_index("claim")
    return mlflow.get_run(run_id), Path(local), claims


def test_reproduces_every_claim(tracking, tmp_path):
    """A run that reproduces every claim."""
    run, local, claims = report_of(tmp_path, reproducing)
    assert list(claims.index) == CLAIMS
    assert dict(claims.verdict) == dict.fromkeys(CLAIMS, "reproduced"), claims[["verdict", "reason"]].to_string()
    assert run.data.metrics["n_claims_reproduced"] == 6 and run.data.metrics["n_claims_contradicted"] == 0
    assert run.data.metrics["n_claims_undecided"] == 0 and run.data.metrics["n_claims_not_tested"] == 0
    tests = pd.read_csv(local / "tables" / "reproduction_tests.csv")
    gap = tests[tests.claim == "gap_7b_72b"].iloc[0]
    assert gap["diff"] == pytest.approx(100 * (3 * 24 - 21) / 4 / N) and gap.ci_low < 3.16 < gap.ci_high
    assert gap.ci_low > 0 and gap.test == "paired bootstrap"
    second = tests[tests.claim == "second_best_14b"]
    assert len(second) == 9 and set(second.test) == {"exact McNemar"} and (second.p_holm >= second.p).all()
    improves = tests[tests.claim == "improves_over_base"]
    sarashina = improves.comparison.str.contains("sarashina")
    assert len(improves) == 16 and set(improves.test) == {"paired bootstrap"}
    assert set(improves[sarashina].claimed) == {"< 5"} and set(improves[~sarashina].claimed) == {"> 5"}

    cells = pd.read_csv(local / "tables" / "reproduction.csv")
    assert len(cells) == 16 + 4 + 4 + 4          # Table 1 cells, its mean column, the 4-shot row; Table 3
    c = cells[(cells.teacher == "Qwen2.5-7B") & (cells.student == "Qwen2.5-0.5B")].iloc[0]
    assert c.paper == pytest.approx(33.30) and c.run == pytest.approx(100 * 174 / N)
    assert c.run_minus_paper == pytest.approx(100 * 174 / N - 33.30) and c.ci_low < c.run < c.ci_high
    assert c.teacher_model == "Qwen/Qwen2.5-7B-Instruct" and c.student_model == "Qwen/Qwen2.5-0.5B"
    assert not c.paper_in_ci and c.run_name == "7B / qwen2.5-0.5b"
    m = cells[(cells.teacher == "Qwen2.5-72B") & (cells.student == "mean")].iloc[0]
    assert m.paper == pytest.approx(46.82) and m.run == pytest.approx(100 * (150 * 4 + 21) / 4 / N)
    t3 = cells[cells.table == "Table 3"].set_index("teacher")
    assert t3.loc["Qwen2.5-14B", "paper"] == pytest.approx(84.47)
    assert t3.loc["Qwen2.5-14B", "run"] == pytest.approx(80.0)
    assert t3.loc["Qwen2.5-14B", "ci_high"] < 84.47 and not t3.loc["Qwen2.5-14B", "paper_in_ci"]
    assert t3.loc["Qwen2.5-72B", "ci_low"] < 89.43 < t3.loc["Qwen2.5-72B", "ci_high"]     # 90.00 here
    assert t3.loc["Qwen2.5-72B", "paper_in_ci"]
    base = cells[cells.teacher == "4-shot"].set_index("student")
    assert base.loc["Qwen2.5-1.5B", "paper"] == pytest.approx(11.69) and base.loc["Qwen2.5-1.5B", "run"] == 22.5

    md = (local / "report.md").read_text(encoding="utf-8")
    section = md.split("## Reproduction of the paper")[1].split("## Table 1: student")[0]
    assert "Of 6 claims: 6 reproduced." in section and "Rehearsal" not in md
    assert f"inside this run's 95% interval for {int(cells.paper_in_ci.sum())} of the 28 numbers" in section
    assert run.data.metrics["n_paper_values_in_ci"] == cells.paper_in_ci.sum() >= 1
    assert run.data.metrics["n_paper_values_compared"] == 28
    assert "| Table 1 | Qwen2.5-7B | Qwen2.5-0.5B | 33.30 | 43.50 |" in section
    assert "Holm-adjusted p < 0.05" in section and "`gap_7b_72b`: The 7B − 72B difference" in section
    assert "Reproduction of the paper: of 6 claims, 6 reproduced (see Reproduction)." in md.split("## Summary")[1]
    alone = (local / "tables" / "reproduction.md").read_text(encoding="utf-8")
    assert alone.startswith("## Reproduction of the paper") and section.strip() in alone

    note = main_note("paper", {"teachers": "7B", "students": "x", "seeds": "42", "limit": None}, [],
                     run.info.run_id, run.info.experiment_id)
    assert "### Reproduction of the paper" in note and "Of 6 claims: 6 reproduced." in note
    assert note.index("### Table 1") < note.index("### Reproduction") < note.index("### Steps")


def test_contradicts_every_claim(tracking, tmp_path):
    """A run that contradicts every claim."""
    run, local, claims = report_of(tmp_path, contradicting)
    assert dict(claims.verdict) == dict.fromkeys(CLAIMS, "contradicted"), claims[["verdict", "reason"]].to_string()
    assert run.data.metrics["n_claims_contradicted"] == 6 and run.data.metrics["n_claims_reproduced"] == 0
    assert "the interval excludes the paper's gap" in claims.loc["gap_7b_72b", "reason"]
    assert claims.loc["students_not_monotonic", "reason"].startswith("each larger teacher's students")
    tests = pd.read_csv(local / "tables" / "reproduction_tests.csv")
    against = tests[(tests.claim == "improves_over_base") & (tests.outcome == "against the claim")]
    assert set(against.comparison) == {f"Qwen2.5-{t} / {s} − 4-shot" for t in TEACHERS   # worse than its base,
                                       for s in ("Qwen2.5-0.5B", "sarashina2.2-1b")}    # a gain of 15 points


def test_too_close_to_call_undecided(tracking, tmp_path):
    """A run too close to call leaves every claim undecided and a rehearsal says so."""
    run, local, claims = report_of(tmp_path, undecided, rehearsal=True)
    assert dict(claims.verdict) == dict.fromkeys(CLAIMS, "not decided"), claims[["verdict", "reason"]].to_string()
    assert run.data.metrics["n_claims_undecided"] == 6 and run.data.metrics["n_claims_reproduced"] == 0
    assert run.data.metrics["n_claims_contradicted"] == 0
    assert "the interval holds both the gap and 0" in claims.loc["gap_7b_72b", "reason"]
    md = (local / "report.md").read_text(encoding="utf-8")
    assert "**Rehearsal**: stand-in models under the paper's ids" in md.split("## Table 1: student")[0]
    assert "Reproduction of the paper (a rehearsal: stand-in numbers, not a reproduction): of 6 claims, " \
           "6 not decided" in md


def test_two_wrong_questions_decide_nothing(tracking, tmp_path):
    """Two questions all wrong decide nothing.

    The rehearsal's case: 2 questions, every answer wrong. Every difference is 0 with nothing to resample; the
    verdicts and the intervals must say "too few to tell", not "certain" (a width-0 interval, p = 0)."""
    PaperStudy(n=2).grid({(t, s): set() for t in TEACHERS for s in STUDENTS}, dict.fromkeys(STUDENTS, set()),
                         dict.fromkeys(TEACHERS, set()))
    run_id = report(ReportParams(preset="paper"))
    m = mlflow.get_run(run_id).data.metrics
    assert m["n_claims_undecided"] == 6, m
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "art")))
    cells = pd.read_csv(local / "tables" / "reproduction.csv")
    assert (cells.ci_high == 75).all()                              # 0 of 2 right: up to 75 % is plausible
    assert cells[cells.table == "Table 1"].paper_in_ci.all() and not cells[cells.table == "Table 3"].paper_in_ci.any()


def test_missing_runs_not_tested(tracking, tmp_path):
    """Missing runs leave claims not tested.

    Only Table 3's teachers evaluated: the teacher claim is decided, the others wait for their runs."""
    cells, baselines, teachers = reproducing()
    PaperStudy().grid({}, {}, teachers)
    run_id = report(ReportParams(preset="paper"))
    m = mlflow.get_run(run_id).data.metrics
    assert (m["n_claims_reproduced"], m["n_claims_not_tested"]) == (1, 5) and m["n_paper_values_compared"] == 4


def test_unlike_paper_not_comparable():
    """A run not like the paper is said not comparable in one line."""
    paper = load_paper()
    inputs = Inputs("gsm8k-ja")
    inputs.teacher_evals["7B"] = EvalRun("r", "7B", "", "", 80, 78, 82, 80, 100, 0, scoring="answer_line")
    assert differences(paper, load_preset("paper"), "gsm8k-ja", inputs) == \
        ["scoring rule answer_line (the paper's: paper)"]
    offline = differences(paper, load_preset("offline"), "mgsm-ja", Inputs("mgsm-ja"))
    assert offline == ["eval set mgsm-ja (the paper's: SakanaAI/gsm8k-ja-test_250-1319)",
                       "4 of the paper's 4 teachers not in the preset (Qwen/Qwen2.5-7B-Instruct, …; it has "
                       "tiny:teacher-7b, …)",
                       "4 of the paper's 4 students not in the preset (Qwen/Qwen2.5-0.5B, …; it has "
                       "tiny:student-qwen2.5-0.5b, …)"]


PAPER_TEXT = Path(__file__).parents[2] / "shared" / "paper" / "paper-ja.md"


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason="the paper's text is not beside this checkout")
def test_data_file_holds_paper_numbers():
    """The data file holds the paper's printed numbers.

    Every number of paper_results.yaml against the tables of the paper's own text."""
    text = PAPER_TEXT.read_text(encoding="utf-8")
    paper = load_paper()

    def row(label: str, after: str) -> list[float]:
        line = re.search(rf"^{re.escape(label)}\t(.*)$", text[text.index(after):], re.M).group(1)
        return [float(v) for v in re.findall(r"\d+\.\d+", line)]

    students = [s.label for s in paper.students]
    for t in paper.teachers:
        printed = row(t.label, "表 1:")
        assert printed == [paper.table1(t.label, s) for s in students] + [paper.table1_mean(t.label)]
        assert row(t.label, "表 3:") == [paper.table3(t.label)]
    assert row("4-shot", "表 1:") == [paper.table1_baseline(s) for s in students]
    assert paper.eval_set["hub_id"].replace("_", "\\\\_") in text
    assert str(paper.claim("gap_7b_72b")["points"]) in text
