"""The `teacher` phase: one teacher answers the translated training questions (0-shot, greedy, chat).

`correct` (what `select`'s all_correct filter reads) is the paper's rule, the last number of the
answer; `correct_answer_line` is recorded beside it. `finish_reason` says why each answer ended:
`length` means it was cut at max_new_tokens, has no final answer of its own, and `select` leaves it out.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from distill.config import params
from distill.config.models import ModelRef, resolve_role
from distill.config.params import limit_param, param, preset_param, resolve, reuse_param, upstream_param
from distill.config.presets import load_preset
from distill.data.limits import first
from distill.data.prompts import chat_messages, paper_prompt
from distill.generation.options import (
    GenerationOptions,
    check_backend,
    engine_sizing,
    generation_config,
    lazy_generate,
    with_model_parallelism,
)
from distill.scoring.answers import format_number, score
from distill.scoring.stats import accuracy_metrics, accuracy_with_ci
from distill.tracking import lineage, phase_runs, shards

console = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TeacherParams(GenerationOptions):
    """One teacher answers every translated training question with the paper's prompt."""

    teacher: str = param(help="a short name of the preset (`7B`), a Hub id or a folder; with `backend=openai` any "
                              "served name")
    preset: str = preset_param()
    translation_run: str = upstream_param("the `translate` run whose questions it answers",
                                          "the newest FINISHED one of this experiment")
    limit: int | None = limit_param("the first N translated questions")
    shard_size: int | None = shards.shard_size_param()
    reuse: bool = reuse_param()


def resolve_settings(p: TeacherParams, preset) -> tuple[TeacherParams, ModelRef]:
    """The parameters resolved against the preset, and the teacher."""
    p = resolve(p, preset)
    check_backend(p.backend)
    ref = resolve_role(p.teacher, preset, "teacher", served=p.backend == "openai")
    return dataclasses.replace(with_model_parallelism(p, ref), teacher=ref.name), ref


def key_payload(p: TeacherParams, ref: ModelRef, preset) -> dict:
    return params.key_payload(p, preset, model_source=ref.source)


def reuse_key(p: TeacherParams, preset) -> dict:
    """The payload of teacher(p)'s reuse key (its upstream: the translation run id); nothing is generated."""
    return key_payload(*resolve_settings(p, preset), preset)


def run(p: TeacherParams) -> str:
    preset = load_preset(p.preset)
    p, ref = resolve_settings(p, preset)
    translation = phase_runs.require_run(p.translation_run or None, "translate", "the teacher's questions",
                                       params={"preset": preset.name})
    questions = phase_runs.read_jsonl_artifact(translation.info.run_id, "translations.jsonl")
    questions = first(questions, p.limit, f"translated questions of run {translation.info.run_id}")
    config = generation_config(p)
    logged = {"preset": preset.name, "teacher": ref.name, "model_source": ref.source, "backend": p.backend,
              "limit": p.limit, "max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size,
              "prompt_format": "chat", "n_questions": len(questions)}
    upstream = {"translation_run_id": translation.info.run_id}
    with phase_runs.phase_run("teacher", logged, upstream, tags={lineage.TEACHER: ref.name}, reuse=p.reuse,
                            key=key_payload(p, ref, preset)) as pr:
        if pr.reused:
            return pr.run_id
        import mlflow

        phase_runs.log_dataset([{k: q[k] for k in ("id", "question_ja", "answer_number", "flag")} for q in questions],
                             name="gsm8k-train-ja", source=f"runs:/{translation.info.run_id}/translations.jsonl",
                             context="training-questions")

        def answer(q: dict, out) -> dict:
            return {"id": q["id"], "prompt": paper_prompt(q["question_ja"]), "output": out.text,
                    **score(out.text, q["answer_number"]), "gold": format_number(q["answer_number"]),
                    "output_tokens": out.n_tokens, "finish_reason": out.finish_reason}

        def prompt(q: dict) -> list:
            return chat_messages(q["question_ja"])

        sizing = engine_sizing(preset, [prompt(q) for q in questions], config)
        with lazy_generate(ref, p.backend, p, config, sizing) as generate:
            work = shards.per_item(generate, prompt, answer)
            records, reused = shards.generate_in_shards(pr, questions, work, p.shard_size, "answers")
        correct = [r["correct"] for r in records]
        acc, lo, hi = accuracy_with_ci(correct)
        n_truncated = sum(r["finish_reason"] == "length" for r in records)
        mlflow.log_metrics({"accuracy": acc, "accuracy_ci_low": lo, "accuracy_ci_high": hi,
                            "n_correct": sum(correct), "n_total": len(correct), "n_resumed": reused,
                            **accuracy_metrics([r["correct_answer_line"] for r in records], "answer_line"),
                            "n_truncated": n_truncated,
                            "output_tokens_mean": sum(r["output_tokens"] for r in records) / max(len(records), 1)})
        console.info(f"teacher {ref.name}: {sum(correct)}/{len(correct)} correct ({acc:.2f}%) on the "
                     f"training questions, {n_truncated} cut at max_new_tokens={config.max_new_tokens}; "
                     f"run {pr.run_id}")
        return pr.run_id
