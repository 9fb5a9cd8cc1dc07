"""The `sweep` entry point: an Optuna study over SFT hyperparameters for one teacher and student.

Each trial trains the student on the teacher's training set and is scored by accuracy on the dev
split that `select` carved from translated questions it did not select (never the test set). Trials
are nested MLflow runs; bad trials are pruned after an epoch; the study lives in a database (a
sqlite file by default, an RDB URL lets several workers share it).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from distill import DistillError
from distill.config import params
from distill.config.checks import Rule
from distill.config.models import resolve_role
from distill.config.params import (
    Default,
    count_param,
    limit_param,
    param,
    preset_file_name,
    preset_param,
    resolve,
    seed_param,
    upstream_param,
)
from distill.config.params_text import lists_from_text
from distill.config.presets import load_preset
from distill.generation.options import max_new_tokens_param
from distill.tracking import lineage, phase_runs
from distill.tracking.redact import has_password, redact_uri
from distill.tracking.schema_lock import creation_lock

console = logging.getLogger(__name__)

@dataclass
class SweepParams:
    """Search SFT hyperparameters on the dev split with Optuna."""

    teacher: str = param(help="a teacher of the preset (`7B`): its training set")
    student: str = param(help="a base student of the preset")
    preset: str = preset_param()
    select_run: str = upstream_param("the `select` run whose training set and dev split are used",
                                     "the newest FINISHED one with this teacher")
    n_trials: int | None = count_param(None, "trials of the study, all workers together", preset="sweep.n_trials")
    space: list[str] = param(factory=lambda: ["all"], help="comma-separated trl.SFTConfig fields the preset's "
                                                           "`sweep.space` gives a range for; `all`: every one")
    storage: str = param("sqlite:///optuna.db", help="the study's database; an RDB URL (postgresql://...) lets "
                                                     "several workers share it")
    study_name: str = param("", preset=Default("`sft-<preset>-<teacher>-<student>`"), help="the Optuna study")
    seed: int = seed_param(42, "training seed, and the sampler's (plus `worker`)")
    worker: int = param(0, rule=Rule(int, 0, note="index of this worker in a shared study"),
                        help="this worker's index when several share a study (sampler seed + worker)")
    dev_limit: int | None = limit_param("score on the first N dev questions", note="a number of dev questions")
    max_new_tokens: int | None = max_new_tokens_param()
    pruning: bool = param(True, help="stop a trial after an epoch when its dev accuracy is below the median")
    register_best: bool = param(False, help="train the best setting with `sft` and register it")

    __post_init__ = lists_from_text  # comma-joined text -> list[str], here only


SPEC_KEYS = {"low", "high", "log", "step", "choices"}


def search_space(p: SweepParams, preset) -> dict:
    """The preset's `sweep.space` (SFTConfig fields by name), narrowed to `space`; names and bounds checked."""
    from distill.training.sft_config import check_name

    where = f"preset file {preset_file_name(preset)}: 'sweep.space'"
    ranges = preset.sweep.ranges()
    for name, spec in ranges.items():
        check_name(name, where)
        check_spec(name, spec, f"preset file {preset_file_name(preset)}: sweep.space.{name}")
    wanted = list(p.space) if p.space != ["all"] else list(ranges)
    for name in wanted:
        check_name(name, "sweep's space")
    missing = [s for s in wanted if s not in ranges]
    if missing:
        raise DistillError(f"preset {preset.name!r} gives no range for {', '.join(missing)} (section `sweep.space`); "
                           f"it has: {', '.join(ranges) or 'none'}")
    if not wanted:
        raise DistillError("empty search space: give the preset's `sweep.space` a range of a trl.SFTConfig field")
    return {s: ranges[s] for s in wanted}


def check_spec(name: str, spec, where: str) -> None:
    """`{low, high}` (`log`, `step`) or `{choices}`, each bound by this project's check of that field."""
    from distill.config.sft_checks import check_setting

    keys = set(spec) if isinstance(spec, dict) else set()
    if not keys or keys - SPEC_KEYS or ("choices" in keys) == bool(keys & {"low", "high"}) \
            or "choices" not in keys and not {"low", "high"} <= keys:
        raise DistillError(f"{where} must be {{low: .., high: ..}} (log: true, step: ..) or {{choices: [..]}} "
                           f"(got {spec!r})")
    for bound in spec.get("choices") or [spec["low"], spec["high"]]:
        check_setting(name, bound, where)


def suggest(trial, space: dict) -> dict:
    """One trial's settings: a choice, or a number between the bounds (an integer where both bounds are)."""
    out = {}
    for name, spec in space.items():
        if "choices" in spec:
            out[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif all(isinstance(spec[b], int) for b in ("low", "high")) and not spec.get("log") and "step" not in spec:
            out[name] = trial.suggest_int(name, spec["low"], spec["high"])
        else:
            out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")),
                                            step=spec.get("step"))
    return out


def dev_accuracy(model, tokenizer, dev: list[dict], max_new_tokens: int) -> float:
    from distill.data.prompts import plain_prompt
    from distill.generation import GenerationConfig
    from distill.generation.hf import TransformersGenerator
    from distill.scoring.answers import extract_answer, is_correct

    was_training = model.training
    gen = TransformersGenerator("in-memory", model=model, tokenizer=tokenizer, device=str(model.device))
    outs = gen.generate([plain_prompt(d["question"]) for d in dev], GenerationConfig(max_new_tokens=max_new_tokens),
                        progress=False)
    tokenizer.padding_side = "right"  # the generator switched it for generation; training pads right
    if was_training:
        model.train()
    return 100 * sum(is_correct(extract_answer(o.text), d["answer_number"]) for o, d in zip(outs, dev)) / len(dev)


def check_storage(storage: str) -> None:
    """A password in the storage URL would be kept wherever the URL goes: `mlflow run` logs every -P value
    as a param of its run. PostgreSQL's client reads it from PGPASSWORD or ~/.pgpass instead."""
    if has_password(storage):
        raise DistillError(f"storage holds a password ({redact_uri(storage)}): MLflow records parameters as "
                           "run params; give the password in PGPASSWORD or ~/.pgpass and leave it out of the URL")


def prepare(p: SweepParams) -> None:
    """Before the tracking store is touched (distill.cli.run_phase): a refused storage leaves nothing behind."""
    check_storage(p.storage)


def open_study(storage: str, study_name: str, sampler, pruner):
    """The study, created or loaded. Optuna creates the storage's tables on first use with no lock of its
    own: workers that start together on an empty database collided (`UniqueViolation ... studydirection`),
    so the tables are created under schema_lock.creation_lock; the study itself Optuna creates safely."""
    import optuna

    with creation_lock(storage):
        rdb = optuna.storages.RDBStorage(storage)
    return optuna.create_study(study_name=study_name, storage=rdb, direction="maximize", sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def resolve_settings(p: SweepParams, preset) -> tuple[SweepParams, object, dict]:
    """The parameters resolved against the preset (names in its spelling: the select run's training set, the
    study's name and the tags use it; `space` as searched), the student, and the search space."""
    p = resolve(p, preset)
    space = search_space(p, preset)
    student = resolve_role(p.student, preset, "student")
    p = dataclasses.replace(p, teacher=resolve_role(p.teacher, preset, "teacher").name, student=student.name,
                            space=list(space))
    return dataclasses.replace(p, study_name=p.study_name or f"sft-{preset.name}-{p.teacher}-{student.name}"), \
        student, space


def reuse_key(p: SweepParams, preset) -> dict:
    """The payload of sweep(p)'s key (its upstream: the select run id); a sweep is never reused, the key finds
    the dead tries of the same sweep."""
    p, student, _ = resolve_settings(p, preset)
    return params.key_payload(p, preset, student_source=student.source)


def run(p: SweepParams) -> str:
    import optuna

    from distill.phases.sft import SftParams, find_select_run, resolved_sft_config, run as sft_run, use_bf16

    check_storage(p.storage)
    preset = load_preset(p.preset)
    p, student, space = resolve_settings(p, preset)
    n_trials = p.n_trials
    select_run = find_select_run(SftParams(teacher=p.teacher, student=p.student, select_run=p.select_run),
                                 [p.teacher], preset)
    rows = phase_runs.read_jsonl_artifact(select_run.info.run_id, f"train/{p.teacher}.jsonl")
    dev = phase_runs.read_jsonl_artifact(select_run.info.run_id, "dev.jsonl")
    dev = dev[:p.dev_limit] if p.dev_limit is not None else dev
    if not dev:
        raise DistillError(f"select run {select_run.info.run_id} has an empty dev split; run select with dev_size > 0")
    max_new, study_name = p.max_new_tokens, p.study_name
    logged = {"preset": preset.name, "teacher": p.teacher, "student": student.name, "n_trials": n_trials,
              "space": ",".join(space), "storage": p.storage.split("://")[0], "study_name": study_name,
              "seed": p.seed, "n_dev": len(dev), "pruning": p.pruning}
    import mlflow
    from transformers import TrainerCallback

    with phase_runs.phase_run("sweep", logged, {"select_run_id": select_run.info.run_id},
                            tags={lineage.TEACHER: p.teacher, lineage.STUDENT: student.name}, reuse=False,
                            key=params.key_payload(p, preset, student_source=student.source)) as pr:
        # Workers seeded alike would try the same settings in the same order.
        sampler = optuna.samplers.TPESampler(seed=p.seed + p.worker)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0) if p.pruning
                  else optuna.pruners.NopPruner())
        study = open_study(p.storage, study_name, sampler, pruner)

        class PruneOnDev(TrainerCallback):
            """Scores the dev split after each epoch; stops the trial when Optuna says prune."""

            def __init__(self, trial, tokenizer_box):
                self.trial, self.box, self.pruned, self.last = trial, tokenizer_box, False, None

            def on_epoch_end(self, args, state, control, model=None, **kwargs):
                self.last = dev_accuracy(model, self.box[0], dev, max_new)
                epoch = int(round(state.epoch or 0))
                self.trial.report(self.last, epoch)
                mlflow.log_metric("dev_accuracy", self.last, step=epoch)
                if self.trial.should_prune():
                    self.pruned = True
                    control.should_training_stop = True

        def objective(trial):
            from distill.config.models import materialize
            from distill.generation.hf import load_tokenizer
            from distill.training.train import TrainConfig, train

            hp = suggest(trial, space)
            sp = SftParams(teacher=p.teacher, student=p.student, preset=p.preset, seed=p.seed, register=False, **hp)
            h = resolved_sft_config(sp, preset)
            with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True,
                                  tags={lineage.PHASE: "sweep-trial", lineage.TEACHER: p.teacher,
                                        lineage.STUDENT: student.name, "optuna.trial": str(trial.number)}):
                mlflow.log_params({**h, "seed": p.seed, "trial": trial.number})
                box = [load_tokenizer(materialize(student).tokenizer)]
                callback = PruneOnDev(trial, box)
                with tempfile.TemporaryDirectory() as out:
                    config = TrainConfig(settings=h, seed=p.seed, bf16=use_bf16("auto", preset), output_dir=Path(out),
                                         save=False, callbacks=[callback], tokenizer=box[0])
                    model, tokenizer, stats = train(student, rows, config)
                mlflow.log_metrics(stats)
                if callback.pruned:
                    mlflow.set_tag("optuna.state", "PRUNED")
                    raise optuna.TrialPruned()
                score = callback.last if callback.last is not None else dev_accuracy(model, tokenizer, dev, max_new)
                mlflow.log_metric("dev_accuracy", score)
                mlflow.set_tag("optuna.state", "COMPLETE")
                return score

        ran = run_trials(study, objective, n_trials)
        mlflow.log_metric("n_trials_this_worker", ran)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise DistillError("no trial completed; see the trial runs")
        best = study.best_trial
        mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
        mlflow.log_metrics({"best_dev_accuracy": best.value, "n_complete": len(complete),
                            "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)})
        _log_plots(study)
        console.info(f"sweep: best dev accuracy {best.value:.2f}% with {best.params}; run {pr.run_id}")
        if p.register_best:
            best_run = sft_run(SftParams(teacher=p.teacher, student=p.student, preset=p.preset, seed=p.seed,
                                         select_run=select_run.info.run_id, **best.params))
            mlflow.set_tag(lineage.BEST_SFT_RUN_ID, best_run)
        return pr.run_id


COUNTED = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")  # a FAILed trial is tried again


def run_trials(study, objective, n_trials: int) -> int:
    """Trials until the study holds n_trials that finished or are under way, whoever runs them (several
    workers may share the study); returns how many this worker ran.

    Between counting and asking, another worker may take the last trial: a trial whose number is not
    among the n_trials lowest of the counted ones is surplus, marked FAIL with `surplus`, and not run.
    """
    import optuna
    from optuna.trial import TrialState

    from distill.training.callbacks import TrainingDiverged

    states = tuple(TrialState[s] for s in COUNTED)
    ran = 0
    while len(study.get_trials(deepcopy=False, states=states)) < n_trials:
        trial = study.ask()
        numbers = sorted(t.number for t in study.get_trials(deepcopy=False, states=states))
        if trial.number not in numbers[:n_trials]:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            break
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except TrainingDiverged:  # a diverged trial fails alone (its run says where); the study goes on
            study.tell(trial, state=TrialState.FAIL)
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
        ran += 1
    return ran


def _log_plots(study) -> None:
    import mlflow
    import optuna

    plots = {"optimization_history": optuna.visualization.plot_optimization_history,
             "param_importances": optuna.visualization.plot_param_importances,
             "parallel_coordinate": optuna.visualization.plot_parallel_coordinate}
    with tempfile.TemporaryDirectory() as tmp:
        for name, plot in plots.items():
            try:
                fig = plot(study)
            except (ValueError, RuntimeError) as e:  # importances need two finished trials with varied params
                console.warning(f"sweep: no {name} plot ({e})")
                continue
            path = f"{tmp}/{name}.html"
            fig.write_html(path, include_plotlyjs=True)
            mlflow.log_artifact(path, artifact_path="plots")
