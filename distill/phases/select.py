"""The `select` phase: the questions every teacher got right, one seeded choice shared by all teachers.

Writes one training set per teacher (prompt -> that teacher's answer) for the same questions, and a
dev split of translated questions that were not selected (for the sweep; never the test set).
An answer cut off at max_new_tokens (`finish_reason: length`) has no final answer of its own and
would teach the student to stop mid-sentence: its question is left out unless keep_truncated=true.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from distill import DistillError
from distill.config import params
from distill.config.checks import Rule
from distill.config.params import param, preset_param, resolve, reuse_param, seed_param, upstream_param
from distill.config.params_text import lists_from_text
from distill.config.presets import load_preset
from distill.data.jsonl import write_jsonl
from distill.data.prompts import plain_prompt
from distill.tracking import lineage, phase_runs

console = logging.getLogger(__name__)

FILTERS = ("all_correct", "none")


@dataclass
class SelectParams:
    """Keep the questions every teacher answered correctly and take n of them with a seed."""

    preset: str = preset_param()
    teacher_runs: list[str] = upstream_param("comma-separated `teacher` run ids", "the newest FINISHED run of each "
                                             "teacher on the newest translation", factory=list)
    n: int | None = param(None, preset="select.n", rule=Rule(int, 1, note="questions to select"),
                          help="questions to select (the paper: 5,000)")
    seed: int | None = seed_param(None, "the seeded choice, one for every teacher", preset="select.seed")
    filter: str = param("", preset="select.filter", help="`all_correct` (the paper) or `none`")
    dev_size: int | None = param(None, preset="select.dev_size", rule=Rule(int, 0, note="0: no dev split"),
                                 help="translated questions that were not selected, for the sweep's dev split")
    allow_fewer: bool = param(False, help="take what qualifies when fewer than `n` do")
    keep_truncated: bool | None = param(None, preset="select.keep_truncated",
                                        help="keep questions a teacher's answer was cut at `max_new_tokens` on")
    reuse: bool = reuse_param()

    __post_init__ = lists_from_text  # comma-joined text -> list[str], here only


def truncated(answer: dict) -> bool:
    return answer.get("finish_reason") == "length"


def qualifying_ids(answers_by_teacher: dict[str, list[dict]], translations: dict[str, dict], rule: str,
                   keep_truncated: bool = False) -> list[str]:
    """Ids answered by every teacher (correctly, under all_correct; to the end, unless keep_truncated),
    with a usable translation, in order."""
    teachers = list(answers_by_teacher)
    correct_sets = []
    for t in teachers:
        correct_sets.append({a["id"] for a in answers_by_teacher[t] if (rule == "none" or a["correct"])
                             and (keep_truncated or not truncated(a))})
    common = set.intersection(*correct_sets)
    order = [a["id"] for a in answers_by_teacher[teachers[0]]]
    return [i for i in order if i in common and translations.get(i, {}).get("flag") != "empty"]


def choose(ids: list[str], n: int, seed: int) -> list[str]:
    """A seeded sample, returned in the original order so every teacher's set lines up."""
    chosen = set(random.Random(seed).sample(ids, n))
    return [i for i in ids if i in chosen]


def _teacher_runs(p: SelectParams, preset) -> list:
    if p.teacher_runs:
        runs = [phase_runs.require_run(rid, "teacher", "select") for rid in p.teacher_runs]
    else:
        latest_translation = phase_runs.require_run(None, "translate", "select", params={"preset": preset.name})
        runs = lineage.teacher_runs_of(latest_translation.info.run_id)
    teachers = [r.data.tags.get(lineage.TEACHER) for r in runs]
    if len(runs) < 2:
        raise DistillError(f"select needs at least two teacher runs; found {len(runs)}"
                           + (f" ({', '.join(f'{t}: {r.info.run_id}' for t, r in zip(teachers, runs))})"
                              if runs else "")
                           + "; run `teacher` for more teachers or pass teacher_runs=<id>,<id>")
    if len(set(teachers)) != len(teachers):
        raise DistillError(f"two teacher runs are for the same teacher: {teachers}")
    translations = {r.data.tags.get(lineage.TRANSLATION_RUN_ID) for r in runs}
    if len(translations) != 1:
        detail = ", ".join(f"{t}: {r.data.tags.get(lineage.TRANSLATION_RUN_ID)}" for t, r in zip(teachers, runs))
        raise DistillError(f"teacher runs come from different translation runs ({detail}); "
                           "the questions must be the same for every teacher")
    return runs


def resolve_settings(p: SelectParams, preset) -> SelectParams:
    """The parameters resolved against the preset."""
    p = resolve(p, preset)
    if p.filter not in FILTERS:
        raise DistillError(f"unknown filter {p.filter!r}; choose one of {', '.join(FILTERS)}")
    return dataclasses.replace(p, keep_truncated=bool(p.keep_truncated))


def reuse_key(p: SelectParams, preset) -> dict:
    """The payload of select(p)'s reuse key (its upstream: the translation and teacher run ids)."""
    return params.key_payload(resolve_settings(p, preset), preset)


def run(p: SelectParams) -> str:
    preset = load_preset(p.preset)
    p = resolve_settings(p, preset)
    n, seed, rule, dev_size, keep_truncated = p.n, p.seed, p.filter, p.dev_size, p.keep_truncated
    runs = _teacher_runs(p, preset)
    order = {name: i for i, name in enumerate(preset.teachers)}  # preset order: small to large
    runs.sort(key=lambda r: (order.get(r.data.tags[lineage.TEACHER], len(order)), r.data.tags[lineage.TEACHER]))
    translation_run_id = runs[0].data.tags[lineage.TRANSLATION_RUN_ID]
    answers = {r.data.tags[lineage.TEACHER]: phase_runs.read_jsonl_artifact(r.info.run_id, "answers.jsonl")
               for r in runs}
    translations = {t["id"]: t for t in phase_runs.read_jsonl_artifact(translation_run_id, "translations.jsonl")}
    ids = qualifying_ids(answers, translations, rule, keep_truncated)
    n_truncated = {t: sum(truncated(a) for a in rows) for t, rows in answers.items()}
    if len(ids) < n:
        per_teacher = ", ".join(f"{t}: {sum(a['correct'] for a in rows)}/{len(rows)} correct"
                                + (f", {n_truncated[t]} cut at max_new_tokens" if n_truncated[t] and not keep_truncated
                                   else "") for t, rows in answers.items())
        if not p.allow_fewer:
            raise DistillError(f"only {len(ids)} questions qualify under filter={rule} ({per_teacher}), fewer than "
                               f"n={n}; lower n, or pass allow_fewer=true to take all {len(ids)}"
                               + (" (or keep_truncated=true)"
                                  if any(n_truncated.values()) and not keep_truncated else ""))
        console.info(f"select: taking all {len(ids)} qualifying questions (n={n} asked, allow_fewer=true)")
    chosen = choose(ids, min(n, len(ids)), seed)
    chosen_set = set(chosen)
    rest = [i for i in translations if i not in chosen_set and translations[i].get("flag") != "empty"]
    dev_ids = choose(rest, min(dev_size, len(rest)), seed + 1) if dev_size > 0 else []

    teachers = list(answers)
    logged = {"preset": preset.name, "n": n, "seed": seed, "filter": rule, "dev_size": dev_size,
              "allow_fewer": p.allow_fewer, "keep_truncated": keep_truncated, "teachers": ",".join(teachers)}
    upstream = {"translation_run_id": translation_run_id,
                **{f"teacher_run_id.{r.data.tags[lineage.TEACHER]}": r.info.run_id for r in runs}}
    tags = {lineage.TEACHERS: ",".join(teachers),
            lineage.TEACHER_RUN_IDS: json.dumps({r.data.tags[lineage.TEACHER]: r.info.run_id for r in runs})}
    with phase_runs.phase_run("select", logged, upstream, tags=tags, reuse=p.reuse,
                              key=params.key_payload(p, preset)) as pr:
        if pr.reused:
            return pr.run_id
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "selected_ids.json").write_text(json.dumps(chosen, indent=0))
            mlflow.log_artifact(str(tmp / "selected_ids.json"))
            for teacher, rows in answers.items():
                by_id = {a["id"]: a for a in rows}
                train = [{"id": i, "prompt": plain_prompt(translations[i]["question_ja"]),
                          "completion": by_id[i]["output"]} for i in chosen]
                path = tmp / "train" / f"{teacher}.jsonl"
                path.parent.mkdir(exist_ok=True)
                write_jsonl(path, train)
                phase_runs.log_dataset(train, name=f"train-{teacher}",
                                       source=f"runs:/{pr.run_id}/train/{teacher}.jsonl",
                                       context=f"training:{teacher}")
            dev = [{"id": i, "question": translations[i]["question_ja"],
                    "answer_number": translations[i]["answer_number"]}
                   for i in dev_ids]
            write_jsonl(tmp / "dev.jsonl", dev)
            mlflow.log_artifacts(str(tmp / "train"), artifact_path="train")
            mlflow.log_artifact(str(tmp / "dev.jsonl"))
        mlflow.log_metrics({"n_qualifying": len(ids), "n_selected": len(chosen), "n_dev": len(dev_ids),
                            "n_translated": len(translations),
                            "n_truncated_answers": sum(n_truncated.values()),
                            "n_excluded_truncated": 0 if keep_truncated else len(
                                qualifying_ids(answers, translations, rule, True)) - len(ids),
                            "n_excluded_flagged": sum(t.get("flag") == "empty" for t in translations.values())})
        if any(n_truncated.values()):
            console.info("select: answers cut at max_new_tokens "
                         f"({', '.join(f'{t}: {k}' for t, k in n_truncated.items())})"
                         f" {'kept (keep_truncated=true)' if keep_truncated else 'left out'}")
        console.info(f"select: {len(ids)} questions qualify, {len(chosen)} chosen, dev {len(dev_ids)}; "
                     f"teachers {', '.join(teachers)}; run {pr.run_id}")
        return pr.run_id
