"""The paper's claims as code: each reads this run's answers and returns a verdict with the tests behind it.

Verdicts: `reproduced`, `contradicted`, `not decided` (the tests leave it open at this sample size) and
`not tested` (a run the claim needs is missing). Each claim's docstring is its rule, printed beside its verdict.
A claim decided by several comparisons adjusts their p values together (Holm, family-wise 5%); a comparison
counts where its Holm-adjusted p < 0.05, in the direction of its difference's sign.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from distill.phases.report.evidence import Arm, Evidence, compare
from distill.phases.report.paired import holm
from distill.phases.report.paper_results import Paper

ALPHA = 0.05
REPRODUCED, CONTRADICTED, UNDECIDED, UNTESTED = "reproduced", "contradicted", "not decided", "not tested"
AS_CLAIMED, AGAINST, NOT_SIGNIFICANT, MISSING = "as claimed", "against the claim", "not significant", "missing"


@dataclass
class Test:
    """One comparison of a claim: `a − b`, claimed above `margin` (direction +1) or below it (−1)."""

    label: str
    a: Arm | None
    b: Arm | None
    direction: int = 1
    margin: float = 0.0


@dataclass
class ClaimResult:
    key: str
    text: str
    source: str
    rule: str
    verdict: str
    reason: str
    tests: list[dict] = field(default_factory=list)


def run_family(tests: list[Test]) -> list[dict]:
    """Each test's difference, interval and p; Holm over the family; its outcome."""
    rows = []
    for t in tests:
        row = {"comparison": t.label, "claimed": (">" if t.direction > 0 else "<") + f" {t.margin:g}",
               "margin": t.margin}
        row.update(compare(t.a, t.b, t.margin) if t.a is not None and t.b is not None else
                   {"n_questions": 0, "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "test": "",
                    "p": math.nan})
        rows.append(row)
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
        if not math.isfinite(row["p"]):
            row["outcome"] = MISSING
        elif adjusted < ALPHA and row["diff"] != row["margin"]:
            above = row["diff"] > row["margin"]
            claimed_above = row["claimed"].startswith(">")
            row["outcome"] = AS_CLAIMED if above == claimed_above else AGAINST
        else:
            row["outcome"] = NOT_SIGNIFICANT
    return rows


def _count(rows: list[dict], outcome: str) -> int:
    return sum(r["outcome"] == outcome for r in rows)


def all_or_any(rows: list[dict]) -> tuple[str, str]:
    """Reproduced when every comparison goes as claimed; contradicted when any goes against it."""
    n = len(rows)
    if _count(rows, AGAINST):
        return CONTRADICTED, f"{_count(rows, AGAINST)} of {n} comparison(s) significantly against the claim"
    if _count(rows, MISSING):
        return UNTESTED, f"{_count(rows, MISSING)} of {n} comparison(s) lack runs"
    if _count(rows, AS_CLAIMED) == n:
        return REPRODUCED, f"all {n} comparison(s) significant as claimed"
    return UNDECIDED, f"{_count(rows, AS_CLAIMED)} of {n} comparison(s) significant as claimed, none against"


def _labels(paper: Paper) -> tuple[list[str], list[str]]:
    return [t.label for t in paper.teachers], [s.label for s in paper.students]


def best_on_average(ev: Evidence, paper: Paper) -> tuple[str, str, list[dict]]:
    """The 7B teacher's students against each other teacher's, mean over the four students (paired bootstrap
    over questions, each question's correctness averaged over the students; Holm over the 3 comparisons).
    Reproduced: all 3 differences significantly > 0. Contradicted: any significantly < 0 (another teacher's
    students better on average). Otherwise not decided."""
    teachers, _ = _labels(paper)
    best = teachers[0]
    rows = run_family([Test(f"{best} − {t}, mean over students", ev.teacher_mean(best), ev.teacher_mean(t))
                       for t in teachers[1:]])
    return (*all_or_any(rows), rows)


def gap_7b_72b(ev: Evidence, paper: Paper) -> tuple[str, str, list[dict]]:
    """The 7B − 72B difference of the students' mean accuracy, with its 95% paired-bootstrap interval.
    Reproduced: the interval holds the paper's gap and lies above 0. Contradicted: the interval excludes the
    paper's gap (the gap differs significantly, in either direction). Not decided: it holds both the gap and 0."""
    teachers, _ = _labels(paper)
    gap = float(paper.claim("gap_7b_72b")["points"])
    small, large = teachers[0], teachers[-1]
    rows = run_family([Test(f"{small} − {large}, mean over students", ev.teacher_mean(small), ev.teacher_mean(large))])
    row = rows[0]
    if row["outcome"] == MISSING:
        return UNTESTED, "runs missing", rows
    row["paper"] = gap
    lo, hi, d = row["ci_low"], row["ci_high"], row["diff"]
    where = f"{d:+.2f} points, 95% CI [{lo:.2f}, {hi:.2f}], the paper {gap:+.2f}"
    if not lo <= gap <= hi:
        return CONTRADICTED, f"{where}: the interval excludes the paper's gap", rows
    if lo > 0:
        return REPRODUCED, f"{where}: the interval holds the gap and excludes 0", rows
    return UNDECIDED, f"{where}: the interval holds both the gap and 0", rows


def teachers_rise_with_size(ev: Evidence, paper: Paper) -> tuple[str, str, list[dict]]:
    """The teachers' own accuracy (Table 3), each teacher against the next smaller one (exact McNemar; Holm over
    the 3). Reproduced: all 3 significantly > 0. Contradicted: any significantly < 0 (a larger teacher worse).
    Otherwise not decided."""
    teachers, _ = _labels(paper)
    rows = run_family([Test(f"teacher {b} − {a}", ev.teacher(b), ev.teacher(a))
                       for a, b in zip(teachers, teachers[1:])])
    return (*all_or_any(rows), rows)


def students_not_monotonic(ev: Evidence, paper: Paper) -> tuple[str, str, list[dict]]:
    """Students' mean accuracy (over the four students) for every smaller − larger teacher pair (6 pairs, paired
    bootstrap, Holm over the 6). Not rising with size needs one fall: reproduced when some smaller teacher's
    students are significantly better than a larger one's. Contradicted when the rise is established: each
    teacher's students significantly worse than the next larger one's (the 3 neighbouring pairs significantly
    < 0). Otherwise not decided."""
    teachers, _ = _labels(paper)
    means = {t: ev.teacher_mean(t) for t in teachers}
    pairs = [(a, b) for i, a in enumerate(teachers) for b in teachers[i + 1:]]
    rows = run_family([Test(f"{a} − {b}, mean over students", means[a], means[b]) for a, b in pairs])
    falls = [r for r in rows if r["outcome"] == AS_CLAIMED]
    neighbours = [r for (a, b), r in zip(pairs, rows) if teachers.index(b) == teachers.index(a) + 1]
    if falls:
        return REPRODUCED, "significant fall: " + ", ".join(f"{r['comparison']} {r['diff']:+.2f}" for r in falls), rows
    if _count(rows, MISSING):
        return UNTESTED, f"{_count(rows, MISSING)} of {len(rows)} comparison(s) lack runs", rows
    if all(r["outcome"] == AGAINST for r in neighbours):
        return CONTRADICTED, "each larger teacher's students significantly better than the next smaller one's", rows
    return UNDECIDED, "no significant fall, and no significant rise at every step", rows


def improves_over_base(ev: Evidence, paper: Paper) -> tuple[str, str, list[dict]]:
    """Every teacher's student against its untrained 4-shot base (16 comparisons, paired bootstrap against a
    margin, Holm over the 16). "Greatly improved" is a gain above 5 points (the paper's gains are >= 13.85 for
    the other students, <= 0.94 for sarashina2.2-1b): the other three students' gains claimed significantly
    > 5, sarashina2.2-1b's significantly < 5. Reproduced: all 16 as claimed. Contradicted: any against (another
    student's gain significantly below 5 points, or a sarashina2.2-1b gain significantly above). Otherwise not
    decided."""
    teachers, students = _labels(paper)
    spec = paper.claim("improves_over_base")
    margin = float(spec["large_gain_margin"])
    tests = [Test(f"{t} / {s} − {paper.baseline_label}", ev.cell(t, s), ev.baseline(s),
                  -1 if s == spec["except_student"] else 1, margin) for s in students for t in teachers]
    rows = run_family(tests)
    return (*all_or_any(rows), rows)


def second_best_14b(ev: Evidence, paper: Paper) -> tuple[str, str, list[dict]]:
    """For the three students the paper names (all but Qwen2.5-1.5B), 14B second to 7B: 14B − 32B > 0,
    14B − 72B > 0 and 7B − 14B > 0 per student (9 comparisons, exact McNemar, Holm over the 9). Reproduced: the
    6 comparisons with 32B and 72B significant as claimed and none of the 9 against. Contradicted: any of the 9
    significantly against (32B or 72B ahead of 14B, or 14B ahead of 7B). Otherwise not decided. Qwen2.5-1.5B, the
    exception, is not tested: the paper claims nothing about it beyond Table 1's cells."""
    teachers, _ = _labels(paper)
    first, second, others = teachers[0], teachers[1], teachers[2:]
    tests = []
    for s in paper.claim("second_best_14b")["students"]:
        tests += [Test(f"{second} − {o} / {s}", ev.cell(second, s), ev.cell(o, s)) for o in others]
        tests.append(Test(f"{first} − {second} / {s}", ev.cell(first, s), ev.cell(second, s)))
    rows = run_family(tests)
    needed = [r for r in rows if not r["comparison"].startswith(f"{first} − ")]
    if _count(rows, AGAINST) or _count(rows, MISSING):
        return (*all_or_any(rows), rows)     # contradicted, or not tested
    if all(r["outcome"] == AS_CLAIMED for r in needed):
        n_students = len(needed) // len(others)
        return REPRODUCED, (f"{second} significantly ahead of {', '.join(others)} for all {n_students} students, "
                            f"never significantly ahead of {first}"), rows
    return UNDECIDED, (f"{_count(needed, AS_CLAIMED)} of {len(needed)} comparisons with {', '.join(others)} "
                       "significant, none against"), rows


CLAIMS: list[Callable] = [best_on_average, gap_7b_72b, teachers_rise_with_size, students_not_monotonic,
                          improves_over_base, second_best_14b]


def decide(ev: Evidence, paper: Paper) -> list[ClaimResult]:
    out = []
    for claim in CLAIMS:
        verdict, reason, rows = claim(ev, paper)
        spec = paper.claim(claim.__name__)
        rule = " ".join(inspect.cleandoc(claim.__doc__).split())
        out.append(ClaimResult(claim.__name__, spec["text"], spec["source"], rule, verdict, reason, rows))
    return out
