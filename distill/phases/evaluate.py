"""The `evaluate` phase: score any model on Japanese GSM8K and log everything a comparison needs.

`accuracy` is the paper's: the last number of the output (distill/scoring/answers.py). Logged beside it on
every run: `accuracy_answer_line` (the last number on the final `解答:` line), and for the few-shot
baseline, which runs on past its answer as the paper's did (no stop string, repetition penalty 1.1),
`accuracy_cut_at_next_question` (the same output cut where the model starts inventing a new question).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import closing
from dataclasses import dataclass

from distill import DistillError
from distill.config import params
from distill.config.checks import Rule
from distill.config.models import RUN_ID_RE, ModelRef, resolve_model
from distill.config.params import Default, limit_param, param, preset_param, resolve, reuse_param
from distill.config.presets import load_preset
from distill.data.prompts import chat_messages, cut_at_next_question, few_shot_prompt, mgsm_exemplars, plain_prompt
from distill.data.questions import load_eval_set, repeated_questions
from distill.generation.context import check_context
from distill.generation.options import (
    GenerationOptions,
    check_backend,
    engine_sizing,
    generation_config,
    open_generator,
    timed_generate,
    with_model_parallelism,
)
from distill.scoring.answers import format_number, score
from distill.scoring.stats import accuracy_metrics
from distill.tracking import phase_runs, registry
from distill.tracking.cache_keys import data_digest
from distill.tracking.lineage import (
    BASELINE,
    EVAL_SET,
    LOGGED_MODEL,
    MODE,
    MODEL,
    MODEL_ID,
    PHASE,
    REGISTERED_MODEL,
    REGISTERED_VERSION,
    ROLE,
    SEED,
    SFT_RUN_ID,
    STUDENT,
    TEACHER,
)

console = logging.getLogger(__name__)

MODES = ("zero-shot", "few-shot")
FORMATS = ("auto", "chat", "plain")


def _repetition_penalty(p, preset) -> float:
    return preset.baseline.repetition_penalty if p.mode == "few-shot" else 1.0


@dataclass(kw_only=True)
class EvaluateParams(GenerationOptions):
    """Score one model on an eval set."""

    model: str = param(help="a short name of the preset (`7B`, `72B`, `qwen2.5-0.5b`, `llm-jp-3.1-1.8b`, ...), a Hub "
                            "id, a local model folder, `runs:/<id>/model`, `models:/<name>@<alias>`, or an `sft` run "
                            "id; with `backend=openai` also any name the server knows (`gpt-4o-mini`)")
    preset: str = preset_param()
    eval_set: str = param("", preset="data.eval_set",
                          help="`gsm8k-ja` (`SakanaAI/gsm8k-ja-test_250-1319`, 1,069 questions, from the Hub), "
                               "`mgsm-ja` (250, shipped), or a JSONL file with `question` and `answer_number` "
                               "per line")
    mode: str = param("zero-shot", help="`few-shot`: the paper's base-model baseline (below)")
    prompt_format: str = param("auto", help="`chat` (chat template; teachers) or `plain` (base models, students); "
                                            "`auto`: chat for the preset's teachers and for a served name without a "
                                            "slash, plain for the rest")
    limit: int | None = limit_param("the first N questions")
    repetition_penalty: float | None = param(
        None, help="sent to every backend explicitly", rule=Rule(float, 0, 10, low_open=True, note="1.0: none"),
        preset=Default("`1.0`; few-shot: preset's `baseline.repetition_penalty` (1.1)", _repetition_penalty,
                       paths=("baseline.repetition_penalty",)))
    shots: int | None = param(None, preset="baseline.shots", rule=Rule(int, 1, 8, note="MGSM-ja has 8 exemplars"),
                              help="exemplars in the few-shot prompt (the paper: 4)")
    reuse: bool = reuse_param()


CUT = "cut_at_next_question"


def _lineage_from_run(run_id: str) -> dict[str, str]:
    run = phase_runs.get_run(run_id)
    tags = run.data.tags
    if tags.get(PHASE) != "sft":
        raise DistillError(f"run {run_id} is not an sft run (phase {tags.get(PHASE)!r}); "
                           "give an sft run id, a models:/ URI or a model name")
    return {STUDENT: tags.get(STUDENT, ""), TEACHER: tags.get(TEACHER, ""), SFT_RUN_ID: run_id,
            SEED: tags.get(SEED, ""), LOGGED_MODEL: tags.get(LOGGED_MODEL, ""), MODEL_ID: tags.get(MODEL_ID, ""),
            REGISTERED_MODEL: tags.get(REGISTERED_MODEL, ""), REGISTERED_VERSION: tags.get(REGISTERED_VERSION, "")}


def _lineage_from_registry(uri: str) -> dict[str, str]:
    """`models:/name@alias` or `models:/name/3` -> the sft run that produced that version."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    spec = uri.removeprefix("models:/")
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = spec.rsplit("/", 1)
            version = client.get_model_version(name, number)
    except Exception as e:
        raise DistillError(f"no registered model {uri} ({type(e).__name__})") from None
    return _lineage_from_run(version.run_id) if version.run_id else {}


def resolve_eval_model(name: str, preset, backend: str = "") -> tuple[ModelRef, dict[str, str]]:
    """The model to evaluate and the lineage tags that say what it is (for Table 1 from tags alone)."""
    if RUN_ID_RE.match(name):
        lineage = _lineage_from_run(name)
        return ModelRef(name, f"runs:/{name}/{lineage.get(LOGGED_MODEL) or 'model'}", "student"), lineage
    if name.startswith("runs:/"):
        run_id = name.removeprefix("runs:/").split("/", 1)[0]
        return ModelRef(name, name, "student"), _lineage_from_run(run_id)
    if name.startswith("models:/"):
        return ModelRef(name, name, "student"), _lineage_from_registry(name)
    ref = resolve_model(name, preset, served=backend == "openai")
    tags = {TEACHER: ref.name} if ref.role == "teacher" else {}
    if ref.role == "student":
        tags[STUDENT] = ref.name
    return ref, tags


def describe(ref: ModelRef, lineage: dict[str, str], few_shot: bool, shots) -> dict[str, str]:
    """The columns a compare view needs: `role` (teacher / student / baseline), `teacher`, `student`,
    `seed`, and a `model` name a person can read (a student's is not its sft run id, which stays a tag)."""
    teacher, student, seed = lineage.get(TEACHER, ""), lineage.get(STUDENT, ""), lineage.get(SEED, "")
    if lineage.get(SFT_RUN_ID):
        role = "student"
        name = f"student-{student}-{teacher}" + (f"-seed{seed}" if seed else "")
    elif ref.role == "teacher":
        role, name = "teacher", f"teacher-{ref.name}"
    else:
        role = "baseline"
        name = f"baseline-{ref.name}" + (f"-{shots}shot" if few_shot else "-zeroshot")
    return {"role": role, "teacher": teacher if role != "baseline" else "", "student": student,
            "seed": seed, "model_name": name}


def build_prompts(questions: list[str], mode: str, prompt_format: str, shots: int) -> list:
    if mode == "few-shot":
        if prompt_format == "chat":
            raise DistillError("few-shot mode is the base-model baseline and needs prompt_format=plain")
        return [few_shot_prompt(q, shots) for q in questions]
    if prompt_format == "chat":
        return [chat_messages(q) for q in questions]
    return [plain_prompt(q) for q in questions]


@dataclass(frozen=True)
class Resolved:
    """What evaluate decides before its run starts: the parameters resolved against the preset, the model and
    the tags that say what it is, the questions and where they come from."""

    p: EvaluateParams
    ref: ModelRef
    lineage: dict[str, str]
    examples: list
    source: str


def preflight(p: EvaluateParams, preset=None) -> EvaluateParams:
    """What run() would refuse before any work (asked before an entry point builds the student it evaluates):
    the parameters resolved against the preset and checked."""
    p = resolve(p, preset or load_preset(p.preset))
    if p.mode not in MODES:
        raise DistillError(f"unknown mode {p.mode!r}; choose one of {', '.join(MODES)}")
    if p.prompt_format not in FORMATS:
        raise DistillError(f"unknown prompt_format {p.prompt_format!r}; choose one of {', '.join(FORMATS)}")
    check_backend(p.backend)
    return p


def resolve_settings(p: EvaluateParams, preset) -> Resolved:
    p = preflight(p, preset)
    examples, source = load_eval_set(p.eval_set, p.limit)
    ref, lineage = resolve_eval_model(p.model, preset, p.backend)
    prompt_format = p.prompt_format
    if prompt_format == "auto":
        chat = ref.role == "teacher" or ref.role == "served"
        prompt_format = "chat" if chat and p.mode == "zero-shot" else "plain"
    if p.mode == "few-shot" and p.shots is None:
        raise DistillError(f"preset {preset.name!r} has no baseline.shots; pass shots=<n> (the paper: 4)")
    if p.mode == "few-shot" and not 0 < p.shots <= len(mgsm_exemplars()):
        raise DistillError(
            f"shots must be between 1 and {len(mgsm_exemplars())} (the MGSM-ja exemplars); got {p.shots}"
        )
    p = dataclasses.replace(with_model_parallelism(p, ref), model=ref.name, prompt_format=prompt_format)
    return Resolved(p, ref, lineage, examples, source)


def key_payload(s: Resolved, preset) -> dict:
    return params.key_payload(s.p, preset, model_source=s.ref.source,
                              eval_set_digest=data_digest([e.to_dict() for e in s.examples]))


def reuse_key(p: EvaluateParams, preset) -> dict:
    """The payload of evaluate(p)'s reuse key, from the parameters and the preset; nothing is generated."""
    return key_payload(resolve_settings(p, preset), preset)


def run(p: EvaluateParams) -> str:
    """Evaluate and return the run id (an earlier identical run's id when reused)."""
    preset = load_preset(p.preset)
    resolved = resolve_settings(p, preset)
    p, ref, lineage, examples, source = resolved.p, resolved.ref, resolved.lineage, resolved.examples, resolved.source
    few_shot, shots, eval_set = p.mode == "few-shot", p.shots, p.eval_set
    # No stop string beyond EOS, as in the paper: the few-shot output is scored whole, its cut beside it.
    config = generation_config(p, repetition_penalty=p.repetition_penalty)
    who = describe(ref, lineage, few_shot, shots)
    # `model` is the readable name (a student's sft run id is `model_source` and the tag distill.sft_run_id);
    # under `mlflow run -P model=<run id>` the typed value stays and the name goes to `model.resolved`.
    logged = {"preset": preset.name, "model": who["model_name"], "model_source": ref.source, "role": who["role"],
              "teacher": who["teacher"], "student": who["student"], "seed": who["seed"], "eval_set": eval_set,
              "mode": p.mode, "shots": shots if few_shot else 0, "prompt_format": p.prompt_format,
              "backend": p.backend, "limit": p.limit, "max_new_tokens": config.max_new_tokens,
              "repetition_penalty": p.repetition_penalty, "temperature": config.temperature, "stop": "eos",
              "scoring": "paper", "batch_size": config.batch_size, "n_examples": len(examples)}
    tags = dict(lineage)
    tags[MODEL] = ref.name
    tags[EVAL_SET] = eval_set
    tags[MODE] = p.mode
    tags[ROLE] = who["role"]
    if few_shot:
        tags[BASELINE] = f"{shots}-shot"
    with phase_runs.phase_run("evaluate", logged, key=key_payload(resolved, preset), tags=tags, reuse=p.reuse,
                            run_name=f"evaluate-{who['model_name']}") as pr:
        if pr.reused:
            return pr.run_id
        import mlflow

        phase_runs.log_dataset([e.to_dict() for e in examples], name=eval_set.split("/")[-1], source=source,
                             context="evaluation")
        prompts = build_prompts([e.question for e in examples], p.mode, p.prompt_format, shots)
        check_context(ref, p.backend, prompts, config.max_new_tokens, [e.id for e in examples])  # before any loading
        t0 = time.perf_counter()
        with closing(open_generator(ref, p.backend, base_url=p.base_url, tensor_parallel_size=p.tensor_parallel_size,
                                    sizing=engine_sizing(preset, prompts, config))) as gen:
            load_seconds = time.perf_counter() - t0  # a vLLM engine's start, apart from its generation
            outs, timing = timed_generate(gen, prompts, config)
        records = []
        for ex, out in zip(examples, outs):
            record = {"id": ex.id, "question": ex.question, "output": out.text,
                      **score(out.text, ex.answer_number), "gold": format_number(ex.answer_number),
                      "output_tokens": out.n_tokens, "finish_reason": out.finish_reason}
            if few_shot:
                cut = score(cut_at_next_question(out.text), ex.answer_number, variant=CUT)
                record.update({k: cut[k] for k in (f"extracted_{CUT}", f"correct_{CUT}")})
            records.append(record)
        correct = [r["correct"] for r in records]
        metrics = {**accuracy_metrics(correct), "n_total": len(correct),
                   **accuracy_metrics([r["correct_answer_line"] for r in records], "answer_line"),
                   "n_unparsed": sum(r["extracted"] is None for r in records),
                   "n_truncated": sum(r["finish_reason"] == "length" for r in records),
                   "n_repeated_questions": len(repeated_questions(examples)),  # same question and gold again
                   "output_tokens_mean": timing["output_tokens"] / max(len(records), 1),
                   "generation_seconds": timing["generation_seconds"], "model_load_seconds": load_seconds,
                   "tokens_per_second": timing["tokens_per_second"]}
        if few_shot:
            metrics.update(accuracy_metrics([r[f"correct_{CUT}"] for r in records], CUT))
        mlflow.log_metrics(metrics, model_id=lineage.get(MODEL_ID) or None)
        phase_runs.log_records(records, "predictions")
        if lineage.get(REGISTERED_MODEL):
            registry.note_accuracy(lineage, metrics, pr.run_id, eval_set)
        line = (f"evaluate {ref.name} on {eval_set}: accuracy {metrics['accuracy']:.2f}% "
                f"[{metrics['accuracy_ci_low']:.2f}, {metrics['accuracy_ci_high']:.2f}] "
                f"({sum(correct)}/{len(correct)}; "
                f"answer line {metrics['accuracy_answer_line']:.2f}%")
        if few_shot:
            line += f"; cut at the next question {metrics['accuracy_' + CUT]:.2f}%"
        console.info(line + f"), run {pr.run_id}")
        return pr.run_id
