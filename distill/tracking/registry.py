"""The model registry: the names a student is logged and registered under, its aliases, and what a version says.

`sft` logs the student (log_student) and, once it loads back and generates (verify_logged_model), registers it
once per run with its version tags, description and aliases (register_student); `evaluate` adds the accuracy
(note_accuracy). `python -m distill.students` and `distill.pipeline.targets` read the same names and tags.
"""

from __future__ import annotations

import logging
import re

from distill import DistillError
from distill.config.names import teacher_names
from distill.log import quiet_mlflow_prints
from distill.tracking import ui_links
from distill.tracking.lineage import (
    LOGGED_MODEL,
    MODEL_ID,
    MODEL_URI,
    REGISTERED_MODEL,
    REGISTERED_VERSION,
    SEED,
    SFT_RUN_ID,
    STUDENT,
    TEACHER,
)
from distill.tracking.smoke_runs import SMOKE_TAG

console = logging.getLogger(__name__)


def logged_model_name(student: str, teacher: str, seed) -> str:
    """What the logged model is, as its name: `student-qwen2_5-0_5b-7B-seed42` (MLflow allows no `.`, `/`, `:`)."""
    return re.sub(r"[^\w\-]", "_", f"student-{student}-{teacher}-seed{seed}")


def registered_name(student: str, preset_name: str) -> str:
    base = f"student-{student}".replace("/", "-")
    return base if preset_name == "paper" else f"{preset_name}-{base}"


def alias_for(teacher: str) -> str:
    return "teacher-" + "-".join(t.lower() for t in teacher_names(teacher))


def version_note(tags: dict[str, str], teacher: str, seed, student: str) -> str:
    """A registered version's description before it is evaluated."""
    return (f"Student **{student}** distilled from teacher **{teacher}**, seed {seed}; trained in run "
            f"`{tags.get('sft_run_id', '')}` on `{tags.get('train_source', '')}`. Not evaluated yet.")


def log_student(model, tokenizer, student: str, teacher: str, seed):
    """Log the student to the active run (transformers flavour) under logged_model_name; its model info."""
    import mlflow
    import torch
    import transformers

    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
                    f"mlflow=={mlflow.__version__}", "accelerate", "safetensors"]
    model_name = logged_model_name(student, teacher, seed)
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer}, name=model_name, task="text-generation",
        pip_requirements=requirements,
    )
    # evaluate finds the model by this name (runs:/<run>/<name>) and links its metrics to the model id
    mlflow.set_tags({LOGGED_MODEL: model_name, MODEL_ID: info.model_id or ""})
    return info


def verify_logged_model(model_uri: str) -> None:
    """Load the logged model back the way users will and generate a few tokens; the registry and the
    aliases only ever point at a version that passed. load_model puts the model on `cuda:0` whenever
    there is a GPU and the tokenizer makes CPU tensors: the inputs go where the model is."""
    import mlflow
    import torch

    try:
        pipe = mlflow.transformers.load_model(model_uri)
        inputs = pipe.tokenizer("問題: 1+1は？\n", return_tensors="pt").to(pipe.model.device)
        with torch.no_grad():
            logits = pipe.model(**inputs).logits
            out = pipe.model.generate(**inputs, max_new_tokens=4, do_sample=False,
                                      pad_token_id=pipe.tokenizer.pad_token_id or pipe.tokenizer.eos_token_id)
    except Exception as e:
        raise DistillError(f"the logged model {model_uri} does not load and generate "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); nothing was registered"
                           ) from e
    if not torch.isfinite(logits).all() or out.shape[-1] <= inputs["input_ids"].shape[-1]:
        raise DistillError(f"the logged model {model_uri} loads but its output is not finite; nothing was registered")


def register_once(model_uri: str, name: str, run_id: str) -> str:
    """The version of `name` made from this run, registering it only if there is none (idempotent)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        found = MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:  # no such registered model yet
        found = []
    if found:
        return str(min(int(v.version) for v in found))
    with quiet_mlflow_prints():
        return str(mlflow.register_model(model_uri, name).version)


def drop_orphans(run_ids: list[str]) -> list[str]:
    """Delete the versions registered from these earlier tries of an sft that did not finish (killed or failed
    after registering): a version is kept only for a run that finished. Returns `name/version` of each."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client, dropped = MlflowClient(), []
    for run_id in run_ids:
        if client.get_run(run_id).info.status == "FINISHED":
            continue
        try:
            versions = client.search_model_versions(f"run_id = '{run_id}'")
        except MlflowException:  # nothing registered under any name yet
            versions = []
        for v in versions:
            client.delete_model_version(v.name, v.version)
            dropped.append(f"{v.name}/{v.version}")
            console.warning(f"deleted version {v.version} of {v.name}: registered by run {run_id}, which did not "
                            "finish")
    return dropped


def register_student(model_uri: str, student: str, teacher: str, seed, preset_name: str, run_id: str,
                     train_source: str = "", smoke: list[str] = ()) -> None:
    """Check that the logged student loads and generates, register it once, tag and describe the version,
    then point the aliases at it and tag the active run with where it is. A smoke run (`smoke`: why it is one,
    distill.tracking.smoke_runs) is registered and tagged `smoke`, and moves no alias: they stay with full runs."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name = registered_name(student, preset_name)
    verify_logged_model(model_uri)
    client = MlflowClient()
    version = register_once(model_uri, name, run_id)
    vtags = {"teacher": teacher, "seed": str(seed), "student": student, "sft_run_id": run_id,
             "preset": preset_name, "train_source": train_source}
    if smoke:
        vtags[SMOKE_TAG] = "; ".join(smoke)
    for k, v in vtags.items():
        client.set_model_version_tag(name, version, k, v)
    note = version_note(vtags, teacher, seed, student)
    alias = alias_for(teacher)
    if smoke:
        note += f" A smoke run ({vtags[SMOKE_TAG]}): no alias points here."
        client.update_model_version(name, version, description=note)
        uri = f"models:/{name}/{version}"
        mlflow.set_tags({REGISTERED_MODEL: name, REGISTERED_VERSION: version, MODEL_URI: uri})
        console.info(f"registered {uri} without moving @{alias}: a smoke run ({vtags[SMOKE_TAG]}); the aliases "
                     "move for a run on the preset's full data and schedule")
        return
    client.update_model_version(name, version, description=note)
    client.set_registered_model_alias(name, alias, version)
    client.set_registered_model_alias(name, f"{alias}-seed{seed}", version)
    mlflow.set_tags({REGISTERED_MODEL: name, REGISTERED_VERSION: version, MODEL_URI: f"models:/{name}@{alias}"})
    console.info(f"registered models:/{name}@{alias} (version {version})")


def note_accuracy(lineage: dict[str, str], metrics: dict, run_id: str, eval_set: str) -> None:
    """The registered version of an evaluated student says how good it is: tag `accuracy`, and a
    description with the interval and a link to this evaluation."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name, version = lineage[REGISTERED_MODEL], lineage[REGISTERED_VERSION]
    client = MlflowClient()
    exp = mlflow.get_run(run_id).info.experiment_id
    acc = f"{metrics['accuracy']:.2f}"
    client.set_model_version_tag(name, version, "accuracy", acc)
    client.set_model_version_tag(name, version, "eval_run_id", run_id)
    client.update_model_version(name, version, description=(
        f"Student **{lineage[STUDENT]}** distilled from teacher **{lineage[TEACHER]}**, seed "
        f"{lineage[SEED]}; trained in run [{lineage[SFT_RUN_ID]}]"
        f"({ui_links.run_page(exp, lineage[SFT_RUN_ID])}).\n\n"
        f"**Accuracy {acc}%** on `{eval_set}` (95% interval {metrics['accuracy_ci_low']:.2f} to "
        f"{metrics['accuracy_ci_high']:.2f}; {metrics['n_correct']:.0f}/{metrics['n_total']:.0f}), "
        f"evaluation run {ui_links.markdown(run_id, ui_links.run_page(exp, run_id))}."))
