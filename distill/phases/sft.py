"""The `sft` phase: full-parameter SFT of one base student on one teacher's answers, with TRL.

The training itself is `distill.training.train.train` (shared with `sweep`); this phase finds the data, makes the
run and trains; distill/tracking/registry.py logs, checks and registers the student. Defaults are the paper's Table
2. Under torchrun or `accelerate launch` every rank trains and only rank 0 talks to MLflow: it sends the other ranks
what to do (distill/training/ranks.py), and the batch of a step stays Table 2's (distill/training/batching.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from distill import DistillError
from distill.config import params
from distill.config.checks import SEED, Rule
from distill.config.models import preset_spelling, resolve_role
from distill.config.names import teacher_names
from distill.config.params import (
    Default,
    limit_param,
    param,
    preset_file_name,
    preset_param,
    resolve,
    reuse_param,
    upstream_param,
)
from distill.config.params_text import yes_no
from distill.config.presets import load_preset
from distill.config.sft_checks import bf16_setting, check_prompts_fit, check_schedule
from distill.data.limits import first
from distill.tracking import lineage, phase_runs, registry, smoke_runs
from distill.tracking.cache_keys import data_digest
from distill.training import ranks
from distill.training.batching import split_settings
from distill.training.checkpoints import check_keep, checkpoint_root, remove as remove_checkpoints, resume_point
from distill.training.train import TrainConfig, train

console = logging.getLogger(__name__)

_CHECKPOINTS = "where and how often checkpoints are kept while training (resuming), not what is trained"


@dataclass
class SftParams:
    """Fine-tune one base student on one teacher's answers (or a mix of two: teacher=7B+72B)."""

    teacher: str = param(help="a short name of the preset (`7B`), or two joined by `+` (`7B+72B`: half the "
                              "questions answered by each)")
    student: str = param("", help="a base student of the preset (`qwen2.5-0.5b`), a Hub id or a folder",
                         preset=Default("every student of the preset's grid (with its upstream)"))
    preset: str = preset_param()
    select_run: str = upstream_param("the `select` run to train on", "the newest FINISHED one with this teacher")
    bf16: str = param("auto", help="`true`, `false`, or `auto`: where the hardware has it and the preset asks "
                                   "(`sft.bf16`)")
    seed: int | None = param(None, rule=SEED, help="training seed, and which teacher answers a mix takes",
                             preset=Default("the preset's grid seeds (with its upstream), else the first",
                                            value=lambda p, preset: default_seed(preset), paths=("grid.seeds",)))
    limit: int | None = limit_param("train on the first N examples (smoke tests)")
    save_steps: int | None = param(None, preset=Default("a checkpoint per epoch"), unkeyed=_CHECKPOINTS,
                                   rule=Rule(int, 1, note="steps between checkpoints; leave it out for one per epoch"),
                                   help="steps between checkpoints")
    register: bool = param(True, help="register the student in the model registry, with its aliases")
    checkpoints_to_run: bool = param(True, unkeyed=_CHECKPOINTS,
                                     help="upload each checkpoint to the run (resume on another machine)")
    keep_checkpoints: str = param("last", unkeyed=_CHECKPOINTS,
                                  help="`last`: only the newest complete checkpoint while training, none once the "
                                       "model is logged; `all`: every one, kept")
    reuse: bool = reuse_param()
    train_file: str = param("", help="a JSONL of prompt/completion to train on instead of a `select` run (sweep)")
    output_dir: str = param("", preset=Default("`$DISTILL_HOME/checkpoints/<cache key>`"), unkeyed=_CHECKPOINTS,
                            help="where checkpoints are written (kept after the run when given)")
    sft_config: dict = param(factory=dict, preset=Default("the preset's `sft:` block"),
                             help="any trl.SFTConfig field by its TRL name, over the preset's `sft:` block "
                                  "(`--<field> <value>`, `-P <field>=<value>`; `--help` gives TRL's help)")

    def __getattr__(self, name: str):
        """A training setting read by its SFTConfig name (`p.num_train_epochs`): the one given (all of them once
        settled), None where none is given yet; a name that is no SFTConfig field is no attribute."""
        settings = self.__dict__.get("sft_config") or {}
        if name in settings:
            return settings[name]
        if not name.startswith("_"):
            from distill.training.sft_config import config_fields

            if name in config_fields():
                return None
        raise AttributeError(name)


def _taking_sft_config_fields(init):
    """SftParams(teacher="7B", num_train_epochs=1): a keyword that is no field of its own is an SFTConfig field,
    kept in `sft_config` (checked against SFTConfig's fields when settled); None is not given (the preset's), as an
    empty value is everywhere else."""
    own = {f.name for f in dataclasses.fields(SftParams)}

    def __init__(self, *args, sft_config=None, **kwargs):
        given = {k: kwargs.pop(k) for k in list(kwargs) if k not in own}
        given = {k: v for k, v in given.items() if v is not None}
        init(self, *args, sft_config={**(sft_config or {}), **given}, **kwargs)

    return __init__


SftParams.__init__ = _taking_sft_config_fields(SftParams.__init__)


def resolve_settings(p: SftParams, preset) -> tuple[SftParams, object]:
    """The parameters resolved against the preset (names in its spelling), and the student."""
    teacher = canonical_teacher(p.teacher, preset, labels=bool(p.train_file))
    student = resolve_role(p.student, preset, "student")
    p = dataclasses.replace(p, teacher=teacher, student=student.name)
    p = resolve(p, preset)                                # bad numbers stop here, before any model loads
    from distill.training.sft_config import training_settings

    p = dataclasses.replace(p, keep_checkpoints=check_keep(p.keep_checkpoints or "last"),  # empty: the default
                            bf16=bf16_setting(p.bf16), sft_config=training_settings(preset.sft, p.sft_config,
                                                                            preset_file_name(preset)))
    if p.sft_config.get("batching") == "padding_free":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise DistillError("batching=padding_free needs FlashAttention 2 (pip install flash-attn, a GPU); "
                               "batching=group_by_length wastes less padding with any attention")
    return p, student


def resolved_sft_config(p: SftParams, preset) -> dict:
    """The SFTConfig settings `p` trains with: the preset's, those given over them, checked (shared with `sweep`)."""
    return resolve_settings(p, preset)[0].sft_config


def training_rows(p: SftParams, rows: list[dict]) -> list[dict]:
    return first(rows, p.limit, "training examples")


def key_payload(p: SftParams, student, rows: list[dict], preset) -> dict:
    """Every field, and every SFTConfig setting by its own name (a setting left at TRL's default is in no key)."""
    out = params.key_payload(p, preset, student_source=student.source, train_digest=data_digest(rows))
    return {**{k: v for k, v in out.items() if k != "sft_config"}, **out["sft_config"]}


def reuse_key(p: SftParams, preset, rows: list[dict]) -> dict:
    """The payload of sft(p)'s reuse key, given its training rows (its upstream: the select run ids)."""
    p, student = resolve_settings(p, preset)
    return key_payload(p, student, training_rows(p, rows), preset)


def use_bf16(setting: str, preset) -> bool:
    import torch

    wanted = preset.sft.get("bf16") if setting == "auto" else yes_no(setting, "bf16")
    return bool(wanted and torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def canonical_teacher(spec: str, preset, labels: bool = False) -> str:
    """`7b+72b` -> `7B+72B`, the preset's spelling that every tag, parameter, cache key and alias uses, so
    `7b` and `7B` are the same runs. With a train_file (`labels`) a name that is no teacher stays a label."""
    names = [preset_spelling(t, preset, "teacher") if labels else resolve_role(t, preset, "teacher").name
             for t in teacher_names(spec)]
    if len(names) == 2 and names[0] == names[1]:
        raise DistillError(f"teacher={spec!r} mixes {names[0]} with itself; a mix needs two teachers")
    return "+".join(names)


def mix(sets: dict[str, list[dict]], seed: int) -> list[dict]:
    """Half the questions answered by one teacher, half by the other (Li et al. 2025, 'mix distillation')."""
    (a, rows_a), (b, rows_b) = sets.items()
    by_b = {r["id"]: r for r in rows_b}
    ids = [r["id"] for r in rows_a]
    from_a = set(random.Random(seed).sample(ids, len(ids) // 2 + len(ids) % 2))
    return [({**r, "teacher": a} if r["id"] in from_a else {**by_b[r["id"]], "teacher": b}) for r in rows_a]


def find_select_run(p: SftParams, teachers: list[str], preset):
    if p.select_run:
        run = phase_runs.require_run(p.select_run, "select", "sft")
    else:
        run = lineage.select_run_for(teachers, preset.name)
        if run is None:
            raise DistillError(f"no FINISHED select run has a training set for {'+'.join(teachers)}; "
                               "run `select` with those teachers first or pass select_run=<id>")
    have = lineage.teachers_of(run)
    missing = [t for t in teachers if t not in have]
    if missing:
        raise DistillError(f"select run {run.info.run_id} has no training set for {', '.join(missing)}; "
                           f"it has: {', '.join(have) or 'none'}")
    return run


def load_training_rows(p: SftParams, teachers: list[str], preset) -> tuple[list[dict], dict[str, str], str, object]:
    """Training rows, upstream run ids, a description of the data's source, and the select run."""
    if p.train_file:
        from distill.data.jsonl import read_train_file

        path = Path(p.train_file).expanduser().absolute()
        if path.is_dir():
            raise DistillError(f"train_file {path} is a directory; give a JSONL file of prompt/completion rows")
        if not path.is_file():
            raise DistillError(f"train_file not found: {path}")
        return read_train_file(path), {}, str(path.resolve()), None
    run = find_select_run(p, teachers, preset)
    run_ids = lineage.teacher_run_ids(run)
    sets = {t: phase_runs.read_jsonl_artifact(run.info.run_id, f"train/{t}.jsonl") for t in teachers}
    rows = sets[teachers[0]] if len(teachers) == 1 else mix(sets, p.seed)
    upstream = {"select_run_id": run.info.run_id, "teacher_run_id": ",".join(run_ids.get(t, "") for t in teachers)}
    source = (f"runs:/{run.info.run_id}/train/{teachers[0]}.jsonl" if len(teachers) == 1
              else f"runs:/{run.info.run_id}/train")
    return rows, upstream, source, run


def sft_note(p: SftParams, student: str, source: str, n_rows: int, digest: str, run_id: str) -> str:
    """The sft run's description (Markdown): what was trained on what, and where the model is."""
    import mlflow

    tags = mlflow.get_run(run_id).data.tags
    lines = [f"Student **{student}** fine-tuned on the answers of teacher **{p.teacher}**, seed {p.seed}.", "",
             f"- training data: `{source}` ({n_rows} examples, dataset digest `{digest}`)",
             f"- logged model: `{tags.get(lineage.LOGGED_MODEL, 'model')}` in this run"]
    if tags.get(lineage.REGISTERED_MODEL):
        lines.append(f"- registered: `{tags[lineage.MODEL_URI]}` (version {tags[lineage.REGISTERED_VERSION]}); "
                     "its version says the accuracy once `main` (or `evaluate`) has scored it")
    return "\n".join(lines)


def train_config(p: SftParams, h: dict, bf16: bool, out_dir: Path, run_id: str | None = None,
                 resume: Path | None = None, earlier: list[str] = ()) -> TrainConfig:
    """How this phase trains: checkpoints in out_dir, resumed from `resume`, uploaded to run_id (whose earlier
    tries' checkpoints are removed once it has a newer one, unless keep_checkpoints=all), and the trained
    model saved by every rank into out_dir/final."""
    return TrainConfig(settings=h, seed=p.seed, bf16=bf16, output_dir=out_dir, run_id=run_id, resume=resume,
                       earlier=list(earlier), save_steps=p.save_steps, checkpoints_to_run=p.checkpoints_to_run,
                       keep_checkpoints=p.keep_checkpoints, final_dir=out_dir / "final")


def default_seed(preset) -> int:
    """The seed of one SFT run when none is given: the first of the preset's grid (42 in both presets)."""
    return int((preset.grid.seeds or preset.sft.get("seeds") or [42])[0])


def preflight(p: SftParams) -> None:
    """What run() would refuse before any work, asked before an entry point builds the upstream
    (distill.pipeline.upstream): a bad name or setting stops it at once, not after the teachers have run."""
    preset = load_preset(p.preset)
    students = [p.student] if p.student else list(preset.grid.students or preset.students)
    for student in students:
        settled, ref = resolve_settings(dataclasses.replace(p, student=student), preset)
        check_template_fits(settled.sft_config, ref)
        if settled.limit is not None:  # the training set has at most `limit` rows: too few epochs for a step
            check_schedule(settled.sft_config, settled.limit, ranks.world_size())


def _prompt_lengths(student, prompts: list[str]) -> list[int]:
    from distill.config.models import materialize
    from distill.generation.hf import load_tokenizer

    tokenizer = load_tokenizer(materialize(student).tokenizer)
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


def check_template_fits(settings: dict, student) -> None:
    """Before the upstream is built: a max_length the prompt template alone fills is refused (its tokens are
    counted only when its bytes do not fit: no tokenizer is loaded for the preset's max_length)."""
    from distill.data.prompts import plain_prompt

    check_prompts_fit(settings, [plain_prompt("")], lambda prompts: _prompt_lengths(student, prompts),
                      lambda n: f"the prompt template alone ({student.name}'s tokenizer)")


def check_rows_fit(p: SftParams, rows: list[dict], student) -> None:
    """At the start of sft, before a run exists: a schedule of less than one optimizer step, or a max_length
    that leaves every example without an answer token, refused with the numbers of this training set."""
    check_schedule(p.sft_config, len(rows), ranks.world_size())
    check_prompts_fit(p.sft_config, [r["prompt"] for r in rows], lambda prompts: _prompt_lengths(student, prompts),
                      lambda n: f"the shortest prompt of the {n} examples ({student.name}'s tokenizer)")


def run(p: SftParams) -> str:
    preset = load_preset(p.preset)
    if not p.student:
        raise DistillError("sft with upstream=false trains one student: pass student=<name> (with upstream=true, "
                           "the default, it trains every student of the preset's grid)")
    p, student = resolve_settings(p, preset)
    teachers = teacher_names(p.teacher)
    h = p.sft_config
    # A launch whose processes cannot share the effective batch evenly stops here, before a run exists;
    # train() checks the split again against what HF Trainer itself counts.
    split_settings(h, ranks.world_size())
    ranks.fail_on_sigterm()
    if not ranks.is_main_process():  # the other ranks of a launch: rank 0 decides, they train
        _train_on_other_rank(p, h, student, preset)
        ranks.end_follower()
    plan_sent = []

    def send_plan(plan: dict) -> None:  # once: a second broadcast after a broken first one would wait for nobody
        plan_sent.append(True)
        ranks.share_from_main(plan)

    try:
        return _train_on_rank_0(p, h, teachers, student, preset, send_plan)
    except BaseException as e:
        if not plan_sent and ranks.world_size() > 1:  # the other ranks wait for a plan: tell them to stop
            with contextlib.suppress(Exception):
                ranks.share_from_main({"stop": f"{type(e).__name__}: {e}"})
        raise


def _train_on_other_rank(p: SftParams, h: dict, student, preset) -> str:
    """A rank other than 0: what rank 0 decided (reuse a run, or train these rows from this checkpoint),
    then the training, without a word to MLflow."""
    plan = ranks.share_from_main(None)
    if "stop" in plan:
        raise DistillError(f"rank 0 stopped before training ({plan['stop']})")
    if plan["reused"]:
        return plan["reused"]
    resume = Path(plan["resume"]) if plan["resume"] else None
    train(student, plan["rows"], train_config(p, h, use_bf16(p.bf16, preset), Path(plan["out_dir"]), resume=resume))
    return ""


def _train_on_rank_0(p: SftParams, h: dict, teachers: list[str], student, preset, send_plan) -> str:
    """Rank 0 (or the only process): the run, the plan for the other ranks, the training, the model."""
    rows, upstream, source, select_run = load_training_rows(p, teachers, preset)
    n_available = len(rows)
    rows = training_rows(p, rows)
    if not rows:
        raise DistillError(f"the training set for {p.teacher} is empty ({source})")
    check_rows_fit(p, rows, student)
    # The setting, not its outcome, goes into the parameters: resolving `auto` needs torch, and a reused
    # run should be found without importing it. The outcome is logged as `bf16_used`.
    logged = {"preset": preset.name, "teacher": p.teacher, "student": student.name, "student_source": student.source,
              **h, "seed": p.seed, "bf16": p.bf16, "n_train": len(rows), "limit": p.limit,
              "train_file": p.train_file or None}
    tags = {lineage.TEACHER: p.teacher, lineage.STUDENT: student.name, lineage.SEED: str(p.seed)}
    with phase_runs.phase_run("sft", logged, upstream, tags=tags, reuse=p.reuse,
                            key=key_payload(p, student, rows, preset)) as pr:
        if pr.reused:
            send_plan({"reused": pr.run_id})
            return pr.run_id
        import mlflow

        digest = phase_runs.log_dataset(rows, name=f"train-{p.teacher}", source=source, context="training")
        mlflow.set_tag(lineage.TRAIN_DIGEST, digest)
        earlier = phase_runs.earlier_tries(pr, tag=False)  # tagged with the checkpoint it resumes from
        registry.drop_orphans(earlier)  # a try killed after registering left a version: only finished runs keep one
        out_dir = Path(p.output_dir) if p.output_dir else checkpoint_root() / pr.key
        resume = resume_point(out_dir, earlier)
        if resume is not None:
            mlflow.set_tag(lineage.RESUMED_FROM, f"{','.join(earlier) or 'local'}:{resume.name}")
            console.info(f"sft: resuming from {resume}")
        bf16 = use_bf16(p.bf16, preset)
        phase_runs.log_params_merged(mlflow.active_run(), {"bf16_used": bf16, "keep_checkpoints": p.keep_checkpoints})
        send_plan({"reused": "", "rows": rows, "out_dir": str(out_dir), "resume": str(resume) if resume else ""})
        model, tokenizer, stats = train(student, rows, train_config(p, h, bf16, out_dir, pr.run_id, resume, earlier))
        mlflow.log_metrics(stats)
        info = registry.log_student(model, tokenizer, student.name, p.teacher, p.seed)
        if p.register:  # only a student that loads back and generates is registered; a smoke run moves no alias
            smoke = smoke_runs.smoke_reasons(p, preset, n_available, select_run)
            registry.register_student(info.model_uri, student.name, p.teacher, p.seed, preset.name, pr.run_id, source,
                                      smoke=smoke)
        mlflow.set_tag("mlflow.note.content", sft_note(p, student.name, source, len(rows), digest, pr.run_id))
        if p.keep_checkpoints == "last":  # the logged model holds the weights; the run is done with resuming
            remove_checkpoints(pr.run_id)
        if not p.output_dir:  # the run holds the model (and, with keep_checkpoints=all, the checkpoints)
            shutil.rmtree(out_dir, ignore_errors=True)
        console.info(f"sft {student.name} on {p.teacher}: {stats['train_tokens_per_second']:.0f} tokens/s, "
                     f"padding {100 * stats['padding_fraction']:.1f}%, run {pr.run_id}")
        return pr.run_id
