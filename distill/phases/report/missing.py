"""The report's Missing section: every input the grid expects and the experiment lacks, as data."""

from __future__ import annotations

from distill.phases.report.inputs import Inputs, Predictions


def missing_items(inputs: Inputs, grid: dict, teachers: list[str], students: list[str], error_teachers: list[str],
                  baseline_label: str, token_rows: list[dict], predictions: Predictions) -> list[dict]:
    """What the grid (`teachers`, `students`, `seeds`, `tokenizers`: the run's, else the preset's) lacks."""
    out = []

    def add(kind, what, detail=""):
        out.append({"kind": kind, "what": what, "detail": detail})

    seeds_wanted = grid["seeds"]
    for t in grid["teachers"]:
        for s in grid["students"]:
            seeds = inputs.cells.get((t, s))
            if not seeds:
                add("cell", f"{t} / {s}", "no FINISHED evaluate run of the student trained on this teacher")
            elif [x for x in seeds_wanted if x not in seeds]:
                add("seed", f"{t} / {s}", "seeds missing: " + ", ".join(x for x in seeds_wanted if x not in seeds))
    for t in grid["teachers"]:
        if t not in inputs.teacher_evals:
            add("teacher_eval", t, "no zero-shot evaluate run of the teacher itself (Table 3)")
    for s in grid["students"]:
        if s not in inputs.baselines.get(baseline_label, {}):
            add("baseline", s, f"no {baseline_label} evaluate run of the untrained student")
    for t in error_teachers:
        for s in students:
            seeds = inputs.cells.get((t, s), {})
            if not seeds:
                if s in grid["students"]:
                    add("errors", f"{t} / {s}", "no evaluation to judge")
                continue
            unjudged = [f"seed {k or '?'} (evaluate run {r.run_id})" for k, r in seeds.items()
                        if r.run_id not in inputs.errors]
            if unjudged:
                add("errors", f"{t} / {s}", "no FINISHED errors run for " + ", ".join(unjudged))
    if inputs.tokens_run is None:
        add("tokens", "tokens run", "no FINISHED tokens run in this experiment (Fig. 3)")
    else:
        rid = inputs.tokens_run.info.run_id
        if not token_rows:
            add("tokens", f"tokens run {rid}", "no readable token_counts.jsonl")
        else:
            have_t = {r.get("teacher") for r in token_rows}
            have_k = {r.get("tokenizer") for r in token_rows}
            for t in grid["teachers"]:
                if t not in have_t:
                    add("tokens", t, f"tokens run {rid} has no answers of this teacher")
            for k in grid["tokenizers"]:
                if k not in have_k:
                    add("tokens", f"tokenizer {k}", f"tokens run {rid} did not count with this tokenizer")
    for run_id, why in predictions.unreadable.items():
        add("predictions", run_id, why)
    return out
