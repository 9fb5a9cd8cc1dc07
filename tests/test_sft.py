"""sft: lineage, the registry round trip, the mix of two teachers, resume after a kill, bad input."""

import os
import shutil
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from distill import DistillError
from distill.phases.evaluate import EvaluateParams, run as evaluate
from distill.phases.sft import SftParams, checkpoint_root, mix, run as sft
from distill.training import checkpoints
from distill.training.checkpoints import UPLOAD_COMPLETE
from tests.conftest import ROOT


@pytest.fixture
def study(mini_study):
    """conftest's mini_study (translate -> two teachers -> select, built once for the module, its store current)."""
    return mini_study


def test_lineage_registry_evaluate(study):
    """Lineage registry round trip and evaluate."""
    run_id = sft(SftParams(teacher="7B", student="qwen2.5-0.5b", num_train_epochs=1))
    run = mlflow.get_run(run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert (tags["distill.phase"] == "sft" and tags["distill.teacher"] == "7B"
            and tags["distill.student"] == "qwen2.5-0.5b")
    assert tags["distill.select_run_id"] == study["select"] and tags["distill.teacher_run_id"] == study["7B"]
    assert (params["learning_rate"] == "0.001" and params["per_device_train_batch_size"] == "8"
            and params["seed"] == "42")
    assert params["lr_scheduler_type"] == "linear" and params["max_grad_norm"] == "1.0"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["train-7B"]
    history = MlflowClient().get_metric_history(run_id, "train_loss")
    assert len(history) >= 2 and {"learning_rate", "grad_norm", "tokens_per_second"} <= set(metrics)
    assert 0 <= metrics["padding_fraction"] < 1

    # this study is a smoke run (a short translation, one epoch): registered, no alias moved (tests/test_students.py
    # and tests/test_registry.py pull a full run's student by its alias)
    name = "offline-student-qwen2.5-0.5b"
    version = MlflowClient().get_model_version(name, tags["distill.registered_version"])
    assert version.run_id == run_id and version.tags["teacher"] == "7B" and version.tags["seed"] == "42"
    assert "num_train_epochs=1 (preset: 2)" in version.tags["smoke"] and not version.aliases
    assert MlflowClient().get_registered_model(name).aliases == {}
    pipe = mlflow.transformers.load_model(f"models:/{name}/{version.version}")
    out = pipe("問題: 1+1は？\n", max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"].startswith("問題: 1+1は？")

    # the logged model is named after what it is; the run and the version say what was trained on what
    assert tags["distill.logged_model"] == "student-qwen2_5-0_5b-7B-seed42"
    logged = mlflow.get_logged_model(tags["distill.model_id"])
    assert logged.name == "student-qwen2_5-0_5b-7B-seed42" and logged.source_run_id == run_id
    assert "teacher **7B**, seed 42" in tags["mlflow.note.content"] and "training data" in tags["mlflow.note.content"]
    assert "Not evaluated yet" in version.description and version.tags["train_source"].startswith("runs:/")
    hist = MlflowClient().get_metric_history(run_id, "tokens_per_second")
    assert hist and hist[-1].value > 0          # no 0 from the epoch-end log

    for model in (f"models:/{name}/{version.version}", run_id):
        eval_run = mlflow.get_run(evaluate(EvaluateParams(model=model, limit=3, max_new_tokens=4)))
        t = eval_run.data.tags
        assert (t["distill.student"], t["distill.teacher"], t["distill.sft_run_id"]) == ("qwen2.5-0.5b", "7B", run_id)
        assert eval_run.data.params["model"] == "student-qwen2.5-0.5b-7B-seed42"
    assert eval_run.data.params["model_source"] == f"runs:/{run_id}/student-qwen2_5-0_5b-7B-seed42"
    # the evaluation's metrics are linked to the model it scored; the version says how good it is
    linked = mlflow.get_logged_model(tags["distill.model_id"]).metrics
    assert any(m.key == "accuracy" and m.run_id == eval_run.info.run_id for m in linked or [])
    version = MlflowClient().get_model_version(name, version.version)
    acc = eval_run.data.metrics["accuracy"]
    assert version.tags["accuracy"] == f"{acc:.2f}" and version.tags["eval_run_id"] == eval_run.info.run_id
    assert f"**Accuracy {acc:.2f}%**" in version.description and eval_run.info.run_id in version.description


def test_mix_of_two_teachers(study):
    sets = {"7B": [{"id": str(i), "completion": f"a{i}"} for i in range(10)],
            "72B": [{"id": str(i), "completion": f"b{i}"} for i in range(10)]}
    mixed = mix(sets, seed=1)
    assert [r["id"] for r in mixed] == [str(i) for i in range(10)]
    assert sum(r["teacher"] == "7B" for r in mixed) == 5 and mixed == mix(sets, seed=1) and mixed != mix(sets, seed=2)
    run_id = sft(SftParams(teacher="7B+72B", student="qwen2.5-1.5b", num_train_epochs=1, register=True))
    run = mlflow.get_run(run_id)
    assert run.data.tags["distill.teacher"] == "7B+72B"
    assert run.data.tags["distill.teacher_run_id"] == f"{study['7B']},{study['72B']}"
    [version] = MlflowClient().search_model_versions(f"run_id = '{run_id}'")  # a smoke run: no alias moved
    assert (version.name == "offline-student-qwen2.5-1.5b" and version.tags["teacher"] == "7B+72B"
            and version.tags["smoke"])


@pytest.mark.parametrize("params,message", [
    (dict(teacher="7B", student="gpt2"), "known names: qwen2.5-0.5b, qwen2.5-1.5b, sarashina2.2-1b"),
    (dict(teacher="9B", student="qwen2.5-0.5b"), "known names: 7B, 14B, 32B, 72B"),
    (dict(teacher="14B", student="qwen2.5-0.5b"), "has no training set for 14B; it has: 7B, 72B"),
    (dict(teacher="7B", student="qwen2.5-0.5b", learning_rate=0.0),
     r"learning_rate must be a finite number in \(0, 1\]"),
    (dict(teacher="7B", student="qwen2.5-0.5b", num_train_epochs=-1),
     r"num_train_epochs must be a finite number in \(0, 1000\]"),
    (dict(teacher="7B", student="qwen2.5-0.5b", keep_checkpoints="first"),
     r"keep_checkpoints must be one of last, all"),
])
def test_bad_input_before_model_loads(study, params, message, monkeypatch):
    """Bad input stops before any model loads."""
    import transformers

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    if "14B" in params["teacher"]:
        params["select_run"] = study["select"]
    with pytest.raises(DistillError, match=message):
        sft(SftParams(**params))


def test_unsplittable_batch_refused(study, monkeypatch):
    """A launch that cannot split the batch is refused before a run starts."""
    monkeypatch.setenv("WORLD_SIZE", "3")  # rank 0 of 3 processes: 8 examples a step do not divide
    before = len(mlflow.search_runs(output_format="list"))
    with pytest.raises(DistillError, match=r"the effective batch 8 \(per_device_train_batch_size 8 x "
                                           r"gradient_accumulation_steps 1\) cannot be split evenly over 3 processes"):
        sft(SftParams(teacher="7B", student="qwen2.5-0.5b"))
    assert len(mlflow.search_runs(output_format="list")) == before


def test_empty_training_set(study, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DistillError, match="training set for 7B is empty"):
        sft(SftParams(teacher="7B", student="qwen2.5-0.5b", train_file=str(empty)))


@pytest.mark.slow
def test_killed_resumes_from_checkpoint(study):
    """Killed sft resumes from its last checkpoint."""
    args = [sys.executable, str(ROOT / "entrypoints" / "sft.py"), "--teacher", "72B", "--student", "qwen2.5-0.5b",
            "--per_device_train_batch_size", "1", "--num_train_epochs", "3", "--save_steps", "4", "--seed", "3",
            "--register", "false"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": study["uri"], "MLFLOW_EXPERIMENT_NAME": "Default"}  # the study's
    pattern = "mlruns/*/*/artifacts/checkpoints/checkpoint-*/" + UPLOAD_COMPLETE  # uploaded last, after every file
    before = set(study["root"].glob(pattern))  # other tests' runs have checkpoints too
    proc = subprocess.Popen(args, cwd=study["root"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        uploaded = set(study["root"].glob(pattern)) - before
        if uploaded:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "sft finished before it could be killed"
    shutil.rmtree(checkpoint_root(), ignore_errors=True)  # resume must come from the run, not this disk
    done = subprocess.run(args, cwd=study["root"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr, "\n".join(line for line in done.stderr.splitlines() if "[distill]" in line)
    final = mlflow.search_runs(filter_string="tags.`distill.phase` = 'sft' and params.seed = '3' and "
                               "attributes.status = 'FINISHED'", output_format="list")[0]
    assert "checkpoint-" in final.data.tags["distill.resumed_from"]
    steps = [m.step for m in MlflowClient().get_metric_history(final.info.run_id, "train_loss")]
    assert min(steps) > 4 and max(steps) == 36  # 12 examples x 3 epochs at batch 1: only the rest was trained
    # keep_checkpoints=last: the killed try's checkpoints went once the rerun had a newer one, the rerun's own
    # once its model was logged
    killed = final.data.tags["distill.resumed_from"].split(":")[0].split(",")
    assert killed and all(checkpoints.uploaded(r) == [] for r in killed + [final.info.run_id])


@pytest.mark.slow
def test_accelerate_launch_single_process(study):
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
         str(ROOT / "entrypoints" / "sft.py"), "--teacher", "7B", "--student", "sarashina2.2-1b",
         "--num_train_epochs", "1", "--register", "false"],
        cwd=study["root"],
        env={**os.environ, "MLFLOW_TRACKING_URI": study["uri"], "MLFLOW_EXPERIMENT_NAME": "Default"},
        capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = mlflow.search_runs(filter_string="tags.`distill.student` = 'sarashina2.2-1b'", output_format="list")[0]
    assert run.info.status == "FINISHED" and run.data.tags["distill.phase"] == "sft"


def test_forced_rerun_trains_again(study):
    """A forced rerun trains again instead of resuming a finished run."""
    params = dict(teacher="72B", student="llm-jp-3.1-1.8b", num_train_epochs=1, register=False, seed=11)
    first = mlflow.get_run(sft(SftParams(**params)))
    again = mlflow.get_run(sft(SftParams(**params, reuse=False)))
    assert again.info.run_id != first.info.run_id
    assert "distill.resumed_from" not in again.data.tags
    assert again.data.metrics["train_tokens"] == first.data.metrics["train_tokens"] > 0


def test_padding_free_needs_flash_attn(study):
    """Padding free without flash attention is refused before a run starts."""
    before = len(mlflow.search_runs(output_format="list"))
    with pytest.raises(DistillError, match="padding_free needs FlashAttention 2"):
        sft(SftParams(teacher="7B", student="qwen2.5-0.5b", batching="padding_free"))
    assert len(mlflow.search_runs(output_format="list")) == before


def test_partial_checkpoint_not_resumed(tracking, tmp_path):  # noqa: F811
    """A partly uploaded checkpoint is not resumed from.

    A try killed while uploading a checkpoint leaves a folder without its last file; resume takes the
    newest complete one (CI once resumed from such a folder: "Can't find a valid checkpoint")."""
    from distill.training.checkpoints import checkpoint_from_runs

    src = tmp_path / "src"
    src.mkdir()
    (src / "trainer_state.json").write_text("{}")
    with mlflow.start_run() as run:
        for step, complete in ((4, True), (8, True), (12, False)):
            mlflow.log_artifacts(str(src), artifact_path=f"checkpoints/checkpoint-{step}")
            if complete:
                mlflow.log_text("done\n", f"checkpoints/checkpoint-{step}/{UPLOAD_COMPLETE}")
    got = checkpoint_from_runs([run.info.run_id], tmp_path / "dst")
    assert got is not None and got.name == "checkpoint-8" and (got / "trainer_state.json").is_file()
    with mlflow.start_run() as partial:
        mlflow.log_artifacts(str(src), artifact_path="checkpoints/checkpoint-4")
    assert checkpoint_from_runs([partial.info.run_id], tmp_path / "dst2") is None
