"""`sft` in two processes on this CPU (gloo), against one process with the same seed and data order.

torchrun gives accelerate's MULTI_CPU (DDP); `accelerate launch` with the project's FSDP config (made
CPU-sized) gives FSDP2 through tests/fsdp_on_cpu.py. Each launch must take the same optimizer steps of
the same effective batch as one process, end at the same loss, make one run, log one model with the full
weights and register one version; a rank killed mid-training must fail the launch, not hang it.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time

import mlflow
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from distill.data.jsonl import write_jsonl
from distill.data.prompts import RESOURCES, paper_prompt
from distill.phases.sft import SftParams, run as sft
from distill.tracking.registry import registered_name
from distill.training import checkpoints
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow  # torchrun launches of two processes (DDP, FSDP2, a killed rank)

STUDENT = "qwen2.5-0.5b"
SEED = 5
# 16 rows at batch 8: 2 optimizer steps an epoch, 4 in all, no short last batch (which several processes fill
# up with examples from the epoch's start: accelerate's even_batches). max_length 512 keeps every row: at the
# offline preset's 256 TRL drops the rows whose prompt leaves no completion token.
N_ROWS, EPOCHS, MAX_LENGTH = 16, 2, 512
# The final loss of a 2-process run against one process: both take the same 4 steps on the same 8-example
# batches in fp32; only the order of the sums differs (the gradient all-reduce, each half-batch padded to its
# own length). Measured here: relative differences of ~1e-7 (see the README, "Several GPUs"). A wrong split
# is far outside: 2 x 8 examples a step gives 2 steps, not 4, and another loss curve.
LOSS_RTOL = 1e-4
LOGITS_ATOL = 1e-3
ENTRY = str(ROOT / "entrypoints" / "sft.py")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store of the module's own, a training file of 16 rows, and the one-process run to compare with."""
    root = tmp_path_factory.mktemp("sft-multiprocess")
    rows = []
    for line in (RESOURCES / "mgsm_ja.tsv").read_text(encoding="utf-8").splitlines()[:N_ROWS]:
        question, answer = line.split("\t")[:2]
        rows.append({"prompt": paper_prompt(question), "completion": f"計算します。\n解答: {answer}"})
    train_file = root / "train.jsonl"
    write_jsonl(train_file, rows)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        mlflow.set_tracking_uri(uri)
        single = sft(SftParams(teacher="7B", student=STUDENT, seed=SEED, num_train_epochs=EPOCHS,
                               max_length=MAX_LENGTH, train_file=str(train_file)))
        yield {"root": root, "uri": uri, "train_file": train_file, "single": single}
        mlflow.set_tracking_uri(None)


def sft_args(store, *extra: str) -> list[str]:
    return ["--teacher", "7B", "--student", STUDENT, "--seed", str(SEED), "--num_train_epochs", str(EPOCHS),
            "--max_length", str(MAX_LENGTH), "--train_file", str(store["train_file"]), "--reuse", "false", *extra]


def env_for(store) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "MLFLOW_EXPERIMENT_NAME": "Default"}


def torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(port)]


def sft_runs() -> list:
    return mlflow.search_runs(filter_string="tags.`distill.phase` = 'sft'", output_format="list")


def launch(store, command: list[str], timeout: int = 400):
    """Run a launch; returns (the one new sft run, stderr)."""
    before = {r.info.run_id for r in sft_runs()}
    proc = subprocess.run(command, cwd=store["root"], env=env_for(store), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    new = [r for r in sft_runs() if r.info.run_id not in before]
    assert len(new) == 1, f"{len(new)} sft runs from one launch"  # exactly one run, made by rank 0
    return new[0], proc.stderr


def loss_curve(run_id: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, "train_loss")}


def logged_model(run):
    return mlflow.transformers.load_model(f"runs:/{run.info.run_id}/{run.data.tags['distill.logged_model']}",
                                          return_type="components")


def check_like_one_process(store, run, world_size: int):
    """Same batch, steps and loss as the one-process run; one full model logged, one version registered."""
    import torch

    single = mlflow.get_run(store["single"])
    assert run.info.status == "FINISHED"
    for r, ws in ((single, 1), (run, world_size)):
        p = r.data.params
        assert p["effective_batch_size"] == "8" and p["world_size"] == str(ws), p
        assert p["per_device_train_batch_size_used"] == str(8 // ws) and p["gradient_accumulation_steps_used"] == "1"
    ref, got = loss_curve(single.info.run_id), loss_curve(run.info.run_id)
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4]  # the same optimizer steps
    assert got[4] == pytest.approx(ref[4], rel=LOSS_RTOL) and got[1] == pytest.approx(ref[1], rel=LOSS_RTOL)
    assert run.data.metrics["train_tokens"] == single.data.metrics["train_tokens"]  # every process's tokens
    # the logged model: every weight whole (not a rank's shard, not ZeRO-3's empty placeholder), same outputs
    a, b = logged_model(single), logged_model(run)
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert {k: tuple(v.shape) for k, v in sa.items()} == {k: tuple(v.shape) for k, v in sb.items()}
    assert all(v.numel() > 0 for v in sb.values())
    ids = a["tokenizer"]("問題: 1+1は？\n", return_tensors="pt")
    with torch.no_grad():
        la, lb = a["model"](**ids).logits, b["model"](**ids).logits
    assert torch.allclose(la, lb, atol=LOGITS_ATOL), float((la - lb).abs().max())
    versions = MlflowClient().search_model_versions(f"name = '{registered_name(STUDENT, 'offline')}' "
                                                    f"and run_id = '{run.info.run_id}'")
    assert len(versions) == 1


def test_ddp_two_processes_train_like_one(store):
    out = store["root"] / "ddp-out"
    run, _ = launch(store, torchrun(free_port()) + [ENTRY] + sft_args(store, "--output_dir", str(out)))
    check_like_one_process(store, run, world_size=2)
    # keep_checkpoints=last: one checkpoint at a time on the local disk (save_total_limit 1), none left in the
    # run once its model is logged; final/ is what trainer.save_model() wrote and rank 0 logged
    assert ([d.name for d in out.glob("checkpoint-*")] == ["checkpoint-4"]
            and (out / "final" / "model.safetensors").is_file())
    assert checkpoints.uploaded(run.info.run_id) == []


def test_fsdp2_two_processes_train_like_one(store):
    """FSDP2 two processes train like one and gather the model."""
    config = yaml.safe_load((ROOT / "distill" / "accelerate" / "fsdp.yaml").read_text())
    assert (config["fsdp_config"]["fsdp_version"] == 2
            and config["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT")
    config.update(num_processes=2, use_cpu=True, mixed_precision="no")  # the shipped file, CPU-sized:
    path = ROOT / "distill" / "accelerate" / "fsdp-cpu.yaml"          # what the README's command launches
    assert yaml.safe_load(path.read_text()) == config
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path), "--main_process_port",
               str(free_port()), str(ROOT / "tests" / "fsdp_on_cpu.py"), ENTRY]
    run, stderr = launch(store, command + sft_args(store, "--keep_checkpoints", "all"))
    assert stderr.count("[fsdp-on-cpu]") == 2 and "FSDP version 2" in stderr  # both ranks really ran FSDP2
    check_like_one_process(store, run, world_size=2)
    # keep_checkpoints=all keeps one an epoch; they went through accelerate's FSDP save: a full model and
    # FSDP's optimizer file (a DDP checkpoint has optimizer.pt)
    assert checkpoints.uploaded(run.info.run_id) == ["checkpoints/checkpoint-4", "checkpoints/checkpoint-2"]
    files = {a.path.rsplit("/", 1)[-1] for a in mlflow.artifacts.list_artifacts(
        run_id=run.info.run_id, artifact_path="checkpoints/checkpoint-4")}
    assert {"model.safetensors", "optimizer.bin"} <= files, files


def rank_pid(launcher: psutil.Process, rank: int) -> int | None:
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "sft.py" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


def test_killed_rank_fails_the_launch(store):
    """A killed rank fails the launch instead of hanging."""
    proc = subprocess.Popen(torchrun(free_port()) + [ENTRY]
                            + sft_args(store, "--num_train_epochs", "40", "--seed", "6"),
                            cwd=store["root"], env=env_for(store), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        run = None
        while time.time() < deadline and proc.poll() is None and run is None:
            time.sleep(0.5)
            running = [r for r in sft_runs() if r.data.params.get("seed") == "6" and r.info.status == "RUNNING"]
            run = next((r for r in running if "train_loss" in mlflow.get_run(r.info.run_id).data.metrics), None)
        assert run is not None, ("training never started: "
                                 + (proc.stderr.read()[-3000:] if proc.poll() is not None else ""))
        pid = rank_pid(psutil.Process(proc.pid), 1)
        assert pid, "rank 1 not found"
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        _, stderr = proc.communicate(timeout=120)
        waited = time.time() - killed
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the launch is left
    assert proc.returncode != 0
    assert waited < 60, f"the launch took {waited:.0f} s to stop after rank 1 died"
    after = mlflow.get_run(run.info.run_id)
    assert after.info.status == "FAILED", stderr[-3000:]  # rank 0 saw its peer die and failed the run
    steps = loss_curve(run.info.run_id)
    assert max(steps) < 80 and "distill.registered_version" not in after.data.tags
