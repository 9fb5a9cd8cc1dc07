"""Was the paper reproduced? Table 1 and Table 3 beside the paper's numbers, and each of its claims decided.

Written only where this run is comparable with the paper: its evaluation set, its teachers and students (by
model id, whatever the preset calls them) and its scoring rule; otherwise one line says what differs. A run of
stand-in models under the paper's ids (the rehearsal, distill/local_models/rehearsal.py) gets the section marked as
such: its numbers are stand-ins, not a reproduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from distill.phases.report.claims import CONTRADICTED, REPRODUCED, UNDECIDED, UNTESTED, ClaimResult, decide
from distill.phases.report.evidence import Arm, Evidence
from distill.phases.report.inputs import Inputs, Predictions
from distill.phases.report.paper_results import Paper, load_paper
from distill.phases.report.tables import DASH, fmt, fmt_p, md_table
from distill.scoring.stats import accuracy_with_ci

TITLE = "## Reproduction of the paper"
REHEARSAL_MARK = ("**Rehearsal**: stand-in models under the paper's ids (distill.rehearsal); every number below is a "
                  "stand-in's, so this is a rehearsal of the comparison, not a reproduction.")
CELL_COLUMNS = ["table", "teacher", "student", "teacher_model", "student_model", "run_name", "paper", "run",
                "ci_low", "ci_high", "run_minus_paper", "paper_in_ci", "n_questions", "n_seeds", "source"]
TEST_COLUMNS = ["claim", "comparison", "claimed", "n_questions", "diff", "ci_low", "ci_high", "test", "p", "p_holm",
                "outcome"]


@dataclass
class Reproduction:
    """What the report writes: the section (report.md), its short form (the `main` run's description), the
    tables behind it, the metrics and the tag value (comparable, rehearsal, not comparable)."""

    status: str
    line: str        # one line for the report's summary
    section: str
    summary: str
    cells: list[dict] = field(default_factory=list)
    claims: list[ClaimResult] = field(default_factory=list)

    def metrics(self) -> dict[str, int]:
        if self.status == "not comparable":
            return {}
        verdicts = [c.verdict for c in self.claims]
        names = {"reproduced": REPRODUCED, "contradicted": CONTRADICTED, "undecided": UNDECIDED,
                 "not_tested": UNTESTED}
        compared = [c["paper_in_ci"] for c in self.cells if c["paper_in_ci"] is not None]
        return {**{f"n_claims_{name}": verdicts.count(verdict) for name, verdict in names.items()},
                "n_paper_values_compared": len(compared), "n_paper_values_in_ci": sum(compared)}

    def tables(self):
        """reproduction.csv (the cells), reproduction_claims.csv, reproduction_tests.csv."""
        import pandas as pd

        claims = pd.DataFrame([{"claim": c.key, "verdict": c.verdict, "reason": c.reason, "paper": c.text,
                                "source": c.source, "rule": c.rule} for c in self.claims],
                              columns=["claim", "verdict", "reason", "paper", "source", "rule"])
        tests = pd.DataFrame([{"claim": c.key, **{k: r.get(k) for k in TEST_COLUMNS[1:]}} for c in self.claims
                              for r in c.tests], columns=TEST_COLUMNS)
        return pd.DataFrame(self.cells, columns=CELL_COLUMNS), claims, tests


def _by_model(entries: dict) -> dict[str, str]:
    """A preset's {name: entry} -> {model id: name}."""
    return {str(e.model): name for name, e in entries.items()}


def differences(paper: Paper, preset, eval_set: str, inputs: Inputs) -> list[str]:
    """What keeps this run from being compared with the paper; empty when nothing does."""
    out = []
    if eval_set != paper.eval_set["name"]:
        out.append(f"eval set {eval_set} (the paper's: {paper.eval_set['hub_id']})")
    for role, models in (("teachers", paper.teachers), ("students", paper.students)):
        have = _by_model(getattr(preset, role))
        absent = [m for m in models if m.model not in have]
        if absent:
            given = [str(e.model) for e in getattr(preset, role).values()]
            has = (given[0] + (", …" if len(given) > 1 else "")) if given else "none"
            out.append(f"{len(absent)} of the paper's {len(models)} {role} not in the preset ({absent[0].model}"
                       + (", …" if len(absent) > 1 else "") + f"; it has {has})")
    runs = [r for seeds in inputs.cells.values() for r in seeds.values()] + list(inputs.teacher_evals.values()) \
        + [r for b in inputs.baselines.values() for r in b.values()]
    rules = sorted({r.scoring or "unknown" for r in runs} - {paper.scoring_rule})
    if rules:
        out.append(f"scoring rule {', '.join(rules)} (the paper's: {paper.scoring_rule})")
    return out


def _cell(table: str, teacher: str, student: str, models: tuple[str, str], name: str, paper_value: float,
          run_value: float, arm: Arm | None, n_seeds: int, source: str) -> dict:
    """One cell: the paper's value, this run's with its 95% bootstrap interval over questions (of each
    question's correctness averaged over seeds, or students for a mean, with one right and one wrong
    pseudo-question so that a few alike answers do not give an interval of width 0), and whether it holds the
    paper's."""
    lo = hi = math.nan
    n = 0
    if arm is not None and arm.mean:
        _, lo, hi = accuracy_with_ci(list(arm.mean.values()) + [1.0, 0.0])   # one right, one wrong: as compare()
        n = len(arm.mean)
    present = math.isfinite(run_value)
    return {"table": table, "teacher": teacher, "student": student, "teacher_model": models[0],
            "student_model": models[1], "run_name": name, "paper": paper_value, "run": run_value, "ci_low": lo,
            "ci_high": hi, "run_minus_paper": run_value - paper_value if present else math.nan,
            "paper_in_ci": (lo <= paper_value <= hi) if math.isfinite(lo) else None, "n_questions": n,
            "n_seeds": n_seeds, "source": source}


def cell_rows(paper: Paper, ev: Evidence, wide, t3) -> list[dict]:
    """Every number of Table 1 (cells, the mean column, the 4-shot row) and Table 3, paper beside run."""
    rows = []
    t_names, s_names = ev.teacher_names, ev.student_names
    t3_by = {r.teacher: r.accuracy for r in t3.itertuples()} if not t3.empty else {}

    def value(row: str, col: str) -> float:
        return float(wide.loc[row, col]) if row in wide.index and col in wide.columns else math.nan

    for t in paper.teachers:
        tn = t_names[t.label]
        for s in paper.students:
            sn = s_names[s.label]
            seeds = ev.inputs.cells.get((tn, sn), {})
            arm = ev.cell(t.label, s.label) if seeds else None
            rows.append(_cell("Table 1", t.label, s.label, (t.model, s.model), f"{tn} / {sn}",
                              paper.table1(t.label, s.label), value(tn, sn), arm, len(seeds), paper.source("table1")))
        mean_arm = ev.teacher_mean(t.label)
        run_mean = value(tn, "mean") if mean_arm is not None else math.nan   # all four students, or none
        rows.append(_cell("Table 1", t.label, "mean", (t.model, ""), f"{tn} / mean", paper.table1_mean(t.label),
                          run_mean, mean_arm, 0, paper.source("table1")))
    label = paper.baseline_label
    for s in paper.students:
        sn = s_names[s.label]
        run = ev.inputs.baselines.get(label, {}).get(sn)
        rows.append(_cell("Table 1", label, s.label, ("", s.model), f"{label} / {sn}", paper.table1_baseline(s.label),
                          run.accuracy if run else math.nan, ev.baseline(s.label) if run else None, int(bool(run)),
                          paper.source("table1")))
    for t in paper.teachers:
        tn = t_names[t.label]
        present = tn in ev.inputs.teacher_evals
        rows.append(_cell("Table 3", t.label, "", (t.model, ""), tn, paper.table3(t.label),
                          t3_by.get(tn, math.nan) if present else math.nan, ev.teacher(t.label) if present else None,
                          int(present), paper.source("table3")))
    return rows


def _ci(lo: float, hi: float) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]" if math.isfinite(lo) else DASH


def _in_ci(v) -> str:
    return DASH if v is None else ("yes" if v else "**no**")


def in_ci(cells: list[dict]) -> str:
    compared = [c["paper_in_ci"] for c in cells if c["paper_in_ci"] is not None]
    return (f"The paper's value lies inside this run's 95% interval for {sum(compared)} of the {len(compared)} "
            "numbers of Table 1 and Table 3 this run has"
            + (f" (the paper prints {len(cells)})." if len(compared) < len(cells) else "."))


def render(paper: Paper, rehearsal: bool, n_questions: list[int], cells: list[dict],
           claims: list[ClaimResult]) -> tuple[str, str, str]:
    """The section of report.md, its short form (verdicts only) for the `main` run's description, and the
    verdict counts."""
    verdicts = [c.verdict for c in claims]
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in (REPRODUCED, CONTRADICTED, UNDECIDED, UNTESTED)
                       if verdicts.count(v))
    full = paper.eval_set["n_questions"]
    size = (f"{n_questions[0]} of its {full} questions" if n_questions == [n_questions[0]] and n_questions[0] < full
            else f"{', '.join(map(str, n_questions))} questions (of its {full})" if n_questions else "no questions")
    head = ([REHEARSAL_MARK, ""] if rehearsal else []) + [
        f"Comparable with the paper ({paper.raw['paper']['authors']}): its evaluation set "
        f"({paper.eval_set['hub_id']}, here {size}), its teachers and students by model id, its scoring rule "
        f"(`{paper.scoring_rule}`). "
        f"Of {len(claims)} claims: {counts}. {in_ci(cells)}", ""]
    claim_rows = [[f"`{c.key}`", c.text, c.source, f"**{c.verdict}**", c.reason] for c in claims]
    claims_md = md_table(["claim", "the paper", "where", "verdict", "why"], claim_rows)
    summary = "\n".join([TITLE.replace("## ", "### "), ""] + head + [claims_md])
    tests = [[f"`{c.key}`", r["comparison"], r["claimed"], r["n_questions"] or DASH,
              DASH if not math.isfinite(r["diff"]) else f"{r['diff']:+.2f}", _ci(r["ci_low"], r["ci_high"]),
              r["test"] or DASH, fmt_p(r["p"]), fmt_p(r["p_holm"]), r["outcome"]] for c in claims for r in c.tests]
    cell_md = md_table(["table", "teacher", "student", "paper", "this run", "95% CI", "run − paper", "paper in CI"],
                       [[c["table"], c["teacher"], c["student"] or DASH, fmt(c["paper"]), fmt(c["run"]),
                         _ci(c["ci_low"], c["ci_high"]),
                         DASH if not math.isfinite(c["run_minus_paper"]) else f"{c['run_minus_paper']:+.2f}",
                         _in_ci(c["paper_in_ci"])] for c in cells])
    section = "\n".join([TITLE, ""] + head + [
        "### Claims", "", claims_md, "",
        "How each verdict is decided (`reproduced`, `contradicted`, `not decided` at this sample size, `not tested` "
        "where a run is missing): a comparison counts where its Holm-adjusted p < 0.05 (Holm over the "
        "comparisons of one claim), in the direction of its difference.", ""]
        + [f"- `{c.key}`: {c.rule}" for c in claims] + ["",
        "### Tests behind the verdicts", "",
        md_table(["claim", "A − B", "claimed", "n", "A − B (points)", "95% CI", "test", "p", "p (Holm)", "outcome"],
                 tests), "",
        "- `A − B`: accuracy difference in points on the questions both have, with its 95% paired-bootstrap interval "
        "(10,000 resamples of questions, one pseudo-question added each way). `test`: exact McNemar where each side "
        "is one answer per question (the "
        "first seed), the paired bootstrap's two-sided p where a side is a mean (over seeds or students) or the "
        "claim is against a margin (`claimed > 5`, `< 5`: the test is of the difference minus 5 points).", "",
        f"### Table 1 and Table 3: the paper's numbers beside this run's ({paper.source('table1')}; "
        f"{paper.source('table3')})", "", cell_md, "",
        "- `this run`: Table 1's and Table 3's value (mean over seeds); `95% CI`: percentile bootstrap over questions "
        "of each question's correctness (averaged over seeds; over students for `mean`), with one right and one wrong "
        "pseudo-question added (else a few alike answers give an interval of width 0). It covers the sampling of "
        "questions only, not the variation between training seeds. `paper in CI`: whether the paper's value lies "
        "inside it. The paper's numbers and their sources: `distill/resources/paper_results.yaml`."])
    return section, summary, counts


def reproduction(preset, eval_set: str, inputs: Inputs, predictions: Predictions, wide, t3) -> Reproduction:
    paper = load_paper()
    differ = differences(paper, preset, eval_set, inputs)
    if differ:
        line = "Not comparable with the paper, so no reproduction verdict: " + "; ".join(differ) + "."
        return Reproduction("not comparable", line, f"{TITLE}\n\n{line}", f"{TITLE.replace('## ', '### ')}\n\n{line}")
    teachers, students = _by_model(preset.teachers), _by_model(preset.students)
    ev = Evidence(inputs, predictions, {t.label: teachers[t.model] for t in paper.teachers},
                  {s.label: students[s.model] for s in paper.students}, paper.baseline_label)
    cells = cell_rows(paper, ev, wide, t3)
    claims = decide(ev, paper)
    runs = [r for seeds in inputs.cells.values() for r in seeds.values()] + list(inputs.teacher_evals.values()) \
        + [r for b in inputs.baselines.values() for r in b.values()]
    rehearsal = any(r.rehearsal for r in runs)
    n_questions = sorted({int(r.n_total) for r in runs if np.isfinite(r.n_total)})
    section, summary, counts = render(paper, rehearsal, n_questions, cells, claims)
    line = ("Reproduction of the paper" + (" (a rehearsal: stand-in numbers, not a reproduction)" if rehearsal else "")
            + f": of {len(claims)} claims, {counts} (see Reproduction).")
    return Reproduction("rehearsal" if rehearsal else "comparable", line, section, summary, cells, claims)
