"""Hostile input and faults: each gets one line and exit status 2 (or a FAILED/KILLED run), never a silent
wrong result; nothing is registered or left RUNNING. The README's table of bad inputs lists these cases."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, run_entry

STUDENT = ("--teacher", "7B", "--student", "qwen2.5-0.5b")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One folder and SQLite store for every bad-input case: each must leave it without a run."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "latin1.jsonl").write_bytes('{"question": "caf\xe9", "answer_number": 1}\n'.encode("latin-1"))
    (root / "int_question.jsonl").write_text('{"question": 12, "answer_number": 1}\n')
    (root / "gold_12abc.jsonl").write_text('{"question": "x", "answer_number": "12abc"}\n')
    (root / "broken.yaml").write_text("name: broken\nteachers: [7B\nstudents: {}\n")
    (root / "no_data.yaml").write_text((ROOT / "distill/presets/offline.yaml").read_text().split("\ndata:")[0] + "\n")
    (root / "zero_lr.yaml").write_text((ROOT / "distill/presets/offline.yaml").read_text()
                                       .replace("learning_rate: 1.0e-3", "learning_rate: 0"))
    offline = (ROOT / "distill/presets/offline.yaml").read_text()
    (root / "no_seeds.yaml").write_text(offline.replace("  seeds: [42]\n  eval_limit", "  seeds: []\n  eval_limit"))
    (root / "grid_13b.yaml").write_text(offline.replace("  teachers: [7B, 72B]", "  teachers: [7B, 13B]"))
    (root / "a_folder").mkdir()
    return root


def _no_runs_no_models(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs == [], [(r.info.run_id, r.info.status) for r in runs]
    assert client.search_registered_models() == []


BAD_INPUTS = [
    # (entry point, arguments, the message's words); the README's table follows this list
    ("sft", (*STUDENT, "--learning_rate", "inf"), "learning_rate must be a finite number in (0, 1] (got inf)"),
    ("sft", (*STUDENT, "--learning_rate", "nan"), "learning_rate must be a finite number in (0, 1] (got nan)"),
    ("sft", (*STUDENT, "--learning_rate", "abc"), "learning_rate: expected a number, got 'abc'"),
    ("sft", (*STUDENT, "--limit", "-3"), "limit must be an integer >= 1"),
    ("sft", (*STUDENT, "--limit", "0"), "limit must be an integer >= 1"),
    ("sft", (*STUDENT, "--max_length", "-5"), "max_length must be an integer >= 1"),
    ("sft", (*STUDENT, "--save_steps", "-1"), "save_steps must be an integer >= 1"),
    ("sft", (*STUDENT, "--per_device_train_batch_size", "0"), "per_device_train_batch_size must be an integer >= 1"),
    ("sft", (*STUDENT, "--warmup_steps", "-1"), "warmup_steps must be a finite number >= 0"),
    ("sft", (*STUDENT, "--warmup_ratio", "0.1"), "unknown key 'warmup_ratio' (did you mean 'warmup_steps'?)"),
    ("sft", (*STUDENT, "--num_train_epochs", "0"), "num_train_epochs must be a finite number in (0, 1000]"),
    ("sft", (*STUDENT, "--seed", "-1"), "seed must be an integer in [0, 4294967295]"),
    ("sft", (*STUDENT, "--train_file", "missing.jsonl"), "train_file not found: {root}/missing.jsonl"),
    ("sft", ("--student", "qwen2.5-0.5b"), "the following arguments are required: --teacher"),
    ("evaluate", ("--model", "qwen2.5-0.5b", "--batch_size", "0"), "batch_size must be an integer >= 1 (got 0)"),
    ("evaluate", ("--model", "qwen2.5-0.5b", "--max_new_tokens", "0"), "max_new_tokens must be an integer >= 1"),
    ("evaluate", ("--model", "qwen2.5-0.5b", "--repetition_penalty", "nan"), "repetition_penalty must be a finite"),
    ("evaluate", ("--model", "qwen2.5-0.5b", "--mode", "few-shot", "--shots", "9"), "shots must be an integer in [1, 8]"),
    ("evaluate", ("--model", "qwen2.5-0.5b", "--eval_set", "latin1.jsonl"), "{root}/latin1.jsonl:1: not UTF-8 text"),
    ("evaluate", ("--model", "qwen2.5-0.5b", "--eval_set", "int_question.jsonl"),
     "int_question.jsonl:1: needs a non-empty text 'question' field (got int)"),
    ("evaluate", ("--model", "qwen2.5-0.5b", "--eval_set", "gold_12abc.jsonl"),
     "gold_12abc.jsonl:1: no numeric gold answer (got '12abc')"),
    ("evaluate", ("--model", "qwen2.5-0.5b", "--eval_set", "nope.jsonl"), "eval set file not found: {root}/nope.jsonl"),
    ("evaluate", ("--model", "qwen2.5-0.5b", "--preset", "broken.yaml"),
     "preset file {root}/broken.yaml is not valid YAML at line 3"),
    ("evaluate", ("--model", "qwen2.5-0.5b", "--preset", "no_data.yaml"), "no_data.yaml has no 'data'"),
    ("evaluate", ("--model", "qwen2.5-0.5b", "--preset", "missing.yaml"), "preset file not found: {root}/missing.yaml"),
    ("sft", (*STUDENT, "--preset", "zero_lr.yaml"), "zero_lr.yaml: sft.learning_rate must be a finite number in (0, 1]"),
    ("main", ("--seeds", "abc"), "seeds must be comma-separated numbers"),
    ("main", ("--seeds", "1,-2"), "each of seeds must be an integer in [0, 4294967295] (got -2)"),
    ("main", ("--limit", "0"), "limit must be an integer >= 1"),
    ("translate", ("--shard_size", "0"), "shard_size must be an integer >= 1"),
    ("teacher", ("--teacher", "7B", "--limit", "-1"), "limit must be an integer >= 1"),
    ("select_questions", ("--n", "0"), "n must be an integer >= 1"),
    ("select_questions", ("--dev_size", "-1"), "dev_size must be an integer >= 0"),
    ("errors", ("--eval_run", "x", "--concurrency", "0"), "concurrency must be an integer >= 1"),
    ("errors", ("--eval_run", "x", "--timeout", "nan"), "timeout must be a finite number > 0"),
    ("sweep", (*STUDENT, "--n_trials", "0"), "n_trials must be an integer >= 1"),
    # integers said to be integers
    ("evaluate", ("--model", "qwen2.5-0.5b", "--batch_size", "8.5"), "batch_size: expected an integer, got '8.5'"),
    ("sft", (*STUDENT, "--seed", "1.5"), "seed: expected an integer, got '1.5'"),
    # empty lists and empty items, not the preset's grid or a shorter list
    ("main", ("--seeds", ""), "seeds: empty; leave the parameter out for its default"),
    ("main", ("--teachers", ","), "teachers: an empty item in ','"),
    ("main", ("--seeds", "1,,2"), "seeds: an empty item in '1,,2'"),
    ("sft", (*STUDENT, "--teachers", ""), "teachers: empty"),
    # words that meant the preset's default, now what they say (and refused where they are no value)
    ("sft", (*STUDENT, "--keep_checkpoints", "none"), "keep_checkpoints must be one of last, all (got 'none')"),
    ("sft", (*STUDENT, "--batching", "NONE"), "batching: invalid choice: 'NONE' (choose from 'padded'"),
    # what TRL would refuse after the run started, and settings read only once training starts: refused before
    # the upstream is built (no translate or teacher run in the store)
    ("sft", (*STUDENT, "--lr_scheduler_type", "foo"), "lr_scheduler_type: invalid choice: 'foo' (choose from 'linear'"),
    ("sft", (*STUDENT, "--lr_scheduler_type", "cosine_with_min_lr"),
     "lr_scheduler_type 'cosine_with_min_lr' needs settings sft does not pass"),
    ("sft", (*STUDENT, "--bf16", "maybe"), "bf16 must be one of true, false, auto (got 'maybe')"),
    ("tokens", ("--tokenizers", "foo"), "unknown tokenizer(s) foo"),
    ("sft", (*STUDENT, "--max_length", "1"),
     "max_length 1 leaves no answer token of any example: the prompt template alone (qwen2.5-0.5b's tokenizer) is"),
    ("sft", (*STUDENT, "--num_train_epochs", "1e-9", "--limit", "8"),
     "num_train_epochs 1e-09 is less than one optimizer step on 8 examples (8 per step); use at least 1"),
    # a folder where a file is wanted
    ("evaluate", ("--model", "qwen2.5-0.5b", "--eval_set", "a_folder"), "eval set {root}/a_folder is a directory"),
    ("sft", (*STUDENT, "--train_file", "a_folder"), "train_file {root}/a_folder is a directory"),
    # a preset file's grid, checked when the file is read and named by it
    ("main", ("--preset", "no_seeds.yaml"), "preset file {root}/no_seeds.yaml: grid.seeds is empty"),
    ("main", ("--preset", "grid_13b.yaml"), "preset file {root}/grid_13b.yaml: grid.teachers: unknown model name '13B'"),
    ("sft", (*STUDENT, "--preset", "grid_13b.yaml"), "preset file {root}/grid_13b.yaml: grid.teachers"),
    ("main", ("--plan", "maybe"), "plan: expected true or false, got 'maybe'"),
    # refused when typed, not at the first step that reads them (a run left behind) nor after planning
    ("main", ("--backend", "foo"), "backend: unknown backend 'foo'; choose one of transformers"),
    ("sft", (*STUDENT, "--backend", "foo"), "backend: unknown backend 'foo'"),
    ("main", ("--executor", "foo"), "executor: unknown executor 'foo'; choose one of sequential, ray"),
    ("report", ("--error_teachers", "foo"), "unknown teacher 'foo' in error_teachers"),
]


@pytest.mark.parametrize("phase,args,message", BAD_INPUTS, ids=[f"{p}:{' '.join(a[-2:])}" for p, a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(store, phase, args, message):
    uri = f"sqlite:///{store / 'mlflow.db'}"
    proc = run_entry(phase, *args, check=False, cwd=store, env={"MLFLOW_TRACKING_URI": uri})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert message.format(root=store) in lines[0]
    if (store / "mlflow.db").exists():
        _no_runs_no_models(uri)


def test_unreachable_tracking_server_is_one_line_within_seconds(tmp_path):
    t0 = time.perf_counter()
    proc = run_entry("report", check=False, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})
    assert proc.returncode == 2 and "cannot reach the MLflow tracking server" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and time.perf_counter() - t0 < 30


@pytest.mark.slow
def test_two_runs_on_a_brand_new_sqlite_file_both_work(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "entrypoints/report.py"), "--upstream", "false"],
                              cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]


def _nan_student(src: Path, dst: Path) -> Path:
    """The tiny student with a NaN final norm: every logit, and so the loss, is NaN from step 1."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    weights["model.norm.weight"][:] = float("nan")
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_non_finite_training_fails_the_run_at_its_step_and_registers_nothing(tmp_path, tiny_student):
    _nan_student(tiny_student, tmp_path / "nan-student")  # the folder --student names
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"問題: {i}+1は？\n", "completion": f"解答: {i + 1}"},
                                        ensure_ascii=False) + "\n" for i in range(8)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_entry("sft", "--teacher", "7B", "--student", "nan-student", "--train_file", "train.jsonl",
                     "--num_train_epochs", "1", check=False, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: training diverged: loss is nan at step 1" in proc.stderr and "Traceback" not in proc.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert client.search_registered_models() == []
    assert not list(tmp_path.glob("mlruns/**/checkpoint-*"))  # no checkpoint of broken weights to resume from


def test_a_version_is_registered_once_and_only_after_it_loads_and_generates(tracking, tmp_path, tiny_student):
    import mlflow
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill import DistillError
    from distill.tracking.registry import register_once, verify_logged_model

    def log(folder):
        with mlflow.start_run() as run:
            info = mlflow.transformers.log_model(
                {"model": AutoModelForCausalLM.from_pretrained(folder), "tokenizer": AutoTokenizer.from_pretrained(folder)},
                name="model", task="text-generation", pip_requirements=["torch", "transformers"])
        return info.model_uri, run.info.run_id

    uri, run_id = log(tiny_student)
    verify_logged_model(uri)
    first = register_once(uri, "student-x", run_id)
    assert register_once(uri, "student-x", run_id) == first  # a retry registers nothing new
    assert len(MlflowClient().search_model_versions("name = 'student-x'")) == 1

    bad_uri, _ = log(_nan_student(tiny_student, tmp_path / "nan-student"))
    with pytest.raises(DistillError, match="loads but its output is not finite; nothing was registered"):
        verify_logged_model(bad_uri)


# Two users, one server. Heartbeats are fast here so that a dead run is seen as dead within seconds.
HEARTBEAT = {"DISTILL_HEARTBEAT_S": "0.5", "DISTILL_CLAIM_SETTLE_S": "0.5"}
TRANSLATE = ("translate", "--limit", "8", "--shard_size", "4", "--max_new_tokens", "16")


def _experiment(server: str) -> dict:
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(server).create_experiment(f"hostile-{uuid.uuid4().hex[:8]}")
    return {"MLFLOW_TRACKING_URI": server, "MLFLOW_EXPERIMENT_ID": exp}


def _start(args, env, cwd):
    return subprocess.Popen([sys.executable, str(ROOT / "entrypoints" / f"{args[0]}.py"), *args[1:]], cwd=cwd,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_identical_steps_at_once_one_works_the_other_reuses(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    env = {**_experiment(mlflow_server), **HEARTBEAT, "DISTILL_HEARTBEAT_TIMEOUT_S": "10"}
    procs = [_start(TRANSLATE, env, tmp_path) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    runs = MlflowClient(mlflow_server).search_runs([env["MLFLOW_EXPERIMENT_ID"]])
    work = [r for r in runs if r.data.tags.get("distill.phase") == "translate"]
    assert len(work) == 1 and work[0].info.status == "FINISHED"
    assert all(r.info.status == "FINISHED" for r in runs)  # a losing claim became a pointer, nothing RUNNING
    assert sum(f"reusing FINISHED run {work[0].info.run_id}" in e for e in errs) == 1
    # Which try waits depends on timing: under load the second may start after the first finished (then it
    # reuses without waiting); never may both wait, or both work.
    assert sum("waiting for RUNNING run" in e for e in errs) <= 1


@pytest.mark.slow
def test_a_killed_run_is_marked_killed_by_the_next_try_which_takes_over(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    env = {**_experiment(mlflow_server), **HEARTBEAT, "DISTILL_HEARTBEAT_TIMEOUT_S": "15"}
    client = MlflowClient(mlflow_server)
    victim = _start(TRANSLATE, env, tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        running = client.search_runs([env["MLFLOW_EXPERIMENT_ID"]], "attributes.status = 'RUNNING'")
        if running:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "translate finished before it could be killed"
    dead = running[0].info.run_id
    again = run_entry(*TRANSLATE, cwd=tmp_path, env=env)
    # its heartbeat was still fresh, but its process is gone on this machine: taken over at once, no wait
    assert f"waiting for RUNNING run {dead}" not in again.stderr
    assert f"marked {dead} KILLED (its process is gone)" in again.stderr
    old = client.get_run(dead)
    assert old.info.status == "KILLED" and "on this machine is gone" in old.data.tags["distill.killed_reason"]
    new = [r for r in client.search_runs([env["MLFLOW_EXPERIMENT_ID"]]) if r.info.run_id != dead]
    assert [r.info.status for r in new] == ["FINISHED"] and dead in new[0].data.tags["distill.resumed_from"]


@pytest.mark.slow
def test_relative_file_parameters_resolve_where_mlflow_run_was_typed(tmp_path):
    (tmp_path / "mine.jsonl").write_text('{"question": "x", "answer_number": "12abc"}\n')
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "evaluate", "--env-manager", "local",
                           "-P", "model=qwen2.5-0.5b", "-P", "eval_set=mine.jsonl"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert f"error: {tmp_path}/mine.jsonl:1: no numeric gold answer (got '12abc')" in proc.stderr, proc.stderr[-3000:]


def test_live_tries_are_left_alone_and_dead_ones_marked_killed(tracking, monkeypatch):
    """The rule behind the two-users cases, in one process: heartbeat age decides live or dead."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from distill.tracking import key_locks

    monkeypatch.setenv("DISTILL_HEARTBEAT_TIMEOUT_S", "60")
    client, exp = MlflowClient(), mlflow.get_experiment_by_name("Default").experiment_id
    now = time.time()
    runs = {age: client.create_run(exp, tags={"distill.cache_key": "k", "distill.phase": "translate",
                                              "distill.heartbeat": f"{now - age:.3f}"}).info.run_id for age in (5, 600)}
    assert [r.info.run_id for r in key_locks.find_unfinished("k")] == [runs[600]]  # the live one is not taken over
    me = client.create_run(exp).info.run_id
    assert key_locks.mark_dead("k", me) == [runs[600]]
    dead, live = client.get_run(runs[600]), client.get_run(runs[5])
    assert dead.info.status == "KILLED" and f"taken over by run {me}" in dead.data.tags["distill.killed_reason"]
    assert live.info.status == "RUNNING"


def test_the_claim_wait_time_follows_how_long_a_claim_takes_to_land(monkeypatch):
    from distill.tracking.key_locks import MIN_WAIT_S, claim_wait_time

    monkeypatch.delenv("DISTILL_CLAIM_SETTLE_S", raising=False)
    assert claim_wait_time(0.002) == MIN_WAIT_S        # local SQLite: a claim lands in milliseconds
    assert claim_wait_time(0.8) == 0.8                   # a slow server: as long as its writes take
    monkeypatch.setenv("DISTILL_CLAIM_SETTLE_S", "0.5")
    assert claim_wait_time(0.002) == 0.5                 # fixed by the user


def _store_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
def test_sft_refuses_what_its_training_set_cannot_train_before_a_run_exists(tmp_path):
    """Known only once the rows are read: a schedule under one optimizer step (HF Trainer would round it up
    to a step and register the model), a max_length no prompt leaves an answer token in (TRL: "num_samples
    should be a positive integer")."""
    for name, prompt in (("short", "問題: 1+1は？\n"), ("long", "問題: " + "りんごが三つあります。" * 20 + "\n")):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": prompt, "completion": f"解答: {i}"},
                                                                   ensure_ascii=False) + "\n" for i in range(8)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for args, message in (
            (("--train_file", "short.jsonl", "--num_train_epochs", "0.01"),
             "error: num_train_epochs 0.01 is less than one optimizer step on 8 examples (8 per step); use at least 1"),
            (("--train_file", "long.jsonl", "--max_length", "120"), "error: max_length 120 leaves no answer token of "
                                                                    "any example: the shortest prompt of the 8 examples "
                                                                    "(qwen2.5-0.5b's tokenizer) is")):
        proc = run_entry("sft", *STUDENT, *args, check=False, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
    assert _store_runs(uri) == []


@pytest.mark.slow
def test_main_plan_prints_the_grid_and_runs_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_entry("main", "--preset", "OFFLINE", "--plan", "true", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    lines = proc.stdout.splitlines()
    assert lines[0] == "main: 18 steps, 18 to run, 0 reused", proc.stdout
    assert any(line.startswith("  run    translate  ") for line in lines) and lines[19].startswith("  run    report  ")
    assert _store_runs(uri) == []


@pytest.mark.slow
def test_a_refusal_under_mlflow_run_exits_1_and_leaves_mlflows_own_run_failed(tmp_path):
    """The README's exit codes: 2 from the entry point; `mlflow run` turns any failure into 1 and ends the run it
    opened FAILED (MLflow's behaviour). Nothing else is left."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "sft", "--env-manager", "local",
                           "-P", "teacher=7B", "-P", "bf16=maybe"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=600)
    assert proc.returncode == 1
    assert "error: bf16 must be one of true, false, auto (got 'maybe')" in proc.stderr, proc.stderr[-3000:]
    assert [r.info.status for r in _store_runs(uri)] == ["FAILED"]
