"""Bad input and faults: each gets one line and exit status 2 (or a FAILED/KILLED run), never a silent wrong
result; nothing is registered or left RUNNING. docs/faults.md's table of bad inputs lists these cases.

Grouped by what is refused: parameters, model names, presets, data files, stores and URIs, runs and their keys,
training. A refusal whose process is not what is tested runs the CLI in this process (conftest's `cli`); each
table keeps cases typed in a fresh process (`fresh=True`), as a user would."""

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

from distill import DistillError
from distill.config.models import resolve_model, resolve_role
from distill.config.presets import load_preset
from distill.data.questions import load_eval_set, load_gsm8k, read_mgsm_ja
from tests.conftest import ROOT, free_port, run_entry

STUDENT = ("--teacher", "7B", "--student", "qwen2.5-0.5b")
MODEL = ("--model", "qwen2.5-0.5b")
PHASE_OF_SCRIPT = {"select_questions": "select"}  # entrypoints/select_questions.py runs the phase `select`


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One folder and SQLite store for every refusal of the tables: each must leave it without a run."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "latin1.jsonl").write_bytes('{"question": "caf\xe9", "answer_number": 1}\n'.encode("latin-1"))
    (root / "int_question.jsonl").write_text('{"question": 12, "answer_number": 1}\n')
    (root / "gold_12abc.jsonl").write_text('{"question": "x", "answer_number": "12abc"}\n')
    for name, prompt in (("short", "問題: 1+1は？\n"), ("long", "問題: " + "りんごが三つあります。" * 20 + "\n")):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": prompt, "completion": f"解答: {i}"},
                                                               ensure_ascii=False) + "\n" for i in range(8)))
    (root / "broken.yaml").write_text("name: broken\nteachers: [7B\nstudents: {}\n")
    offline = (ROOT / "distill/presets/offline.yaml").read_text()
    (root / "no_data.yaml").write_text(offline.split("\ndata:")[0] + "\n")
    (root / "zero_lr.yaml").write_text(offline.replace("learning_rate: 1.0e-3", "learning_rate: 0"))
    (root / "no_seeds.yaml").write_text(offline.replace("  seeds: [42]\n  eval_limit", "  seeds: []\n  eval_limit"))
    (root / "grid_13b.yaml").write_text(offline.replace("  teachers: [7B, 72B]", "  teachers: [7B, 13B]"))
    (root / "a_folder").mkdir()
    return root


@pytest.fixture
def refuse(store, cli, monkeypatch):
    """`refuse(script, args, fresh)` -> (exit status, stderr): the entry point typed in the store's folder against its
    SQLite file, in a fresh process or through the CLI in this one."""
    import mlflow

    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.chdir(store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)

    def call(script: str, args: tuple[str, ...], fresh: bool) -> tuple[int, str]:
        if not fresh:
            done = cli(PHASE_OF_SCRIPT.get(script, script), *args)  # a CompletedProcess, as run_entry's
            return done.returncode, done.stderr
        proc = run_entry(script, *args, check=False, cwd=store, env={"MLFLOW_TRACKING_URI": uri})
        return proc.returncode, proc.stderr

    yield call
    mlflow.set_tracking_uri(None)


def _no_runs_no_models(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs == [], [(r.info.run_id, r.info.status) for r in runs]
    assert client.search_registered_models() == []


def _store_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def case(phase: str, args: tuple[str, ...], message: str, fresh: bool = False):
    """A row of a refusal table, its id what was typed after the usual teacher/student or model."""
    typed = next((args[len(p):] for p in (STUDENT, MODEL) if args[:len(p)] == p), args)
    return pytest.param(phase, args, message, fresh, id=f"{phase}:{' '.join(typed)}")


def assert_refused(refuse, store, phase, args, message, fresh) -> None:
    """Exit status 2, one `error:` line holding the message (`{root}`: the store's folder), nothing left."""
    code, err = refuse(phase, args, fresh)
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert message.format(root=store) in lines[0]
    if (store / "mlflow.db").exists():
        _no_runs_no_models(f"sqlite:///{store / 'mlflow.db'}")


# Parameters: a value no rule allows, a word that is no choice, an unknown key, refused when typed (before the
# upstream is built: no translate or teacher run in the store)

PARAMETERS = [
    case("sft", (*STUDENT, "--learning_rate", "inf"), "learning_rate must be a finite number in (0, 1] (got inf)",
         fresh=True),
    case("sft", (*STUDENT, "--learning_rate", "nan"), "learning_rate must be a finite number in (0, 1] (got nan)"),
    case("sft", (*STUDENT, "--learning_rate", "abc"), "learning_rate: expected a number, got 'abc'"),
    case("sft", (*STUDENT, "--limit", "-3"), "limit must be an integer >= 1"),
    case("sft", (*STUDENT, "--limit", "0"), "limit must be an integer >= 1"),
    case("sft", (*STUDENT, "--max_length", "-5"), "max_length must be an integer >= 1"),
    case("sft", (*STUDENT, "--save_steps", "-1"), "save_steps must be an integer >= 1"),
    case("sft", (*STUDENT, "--per_device_train_batch_size", "0"),
         "per_device_train_batch_size must be an integer >= 1"),
    case("sft", (*STUDENT, "--warmup_steps", "-1"), "warmup_steps must be a finite number >= 0"),
    case("sft", (*STUDENT, "--warmup_ratio", "0.1"), "unknown key 'warmup_ratio' (did you mean 'warmup_steps'?)"),
    case("sft", (*STUDENT, "--num_train_epochs", "0"), "num_train_epochs must be a finite number in (0, 1000]"),
    case("sft", (*STUDENT, "--seed", "-1"), "seed must be an integer in [0, 4294967295]"),
    case("sft", ("--student", "qwen2.5-0.5b"), "the following arguments are required: --teacher"),
    case("evaluate", (*MODEL, "--batch_size", "0"), "batch_size must be an integer >= 1 (got 0)"),
    case("evaluate", (*MODEL, "--max_new_tokens", "0"), "max_new_tokens must be an integer >= 1"),
    case("evaluate", (*MODEL, "--repetition_penalty", "nan"), "repetition_penalty must be a finite"),
    case("evaluate", (*MODEL, "--mode", "few-shot", "--shots", "9"), "shots must be an integer in [1, 8]"),
    case("main", ("--seeds", "abc"), "seeds must be comma-separated numbers", fresh=True),
    case("main", ("--seeds", "1,-2"), "each of seeds must be an integer in [0, 4294967295] (got -2)"),
    case("main", ("--limit", "0"), "limit must be an integer >= 1"),
    case("translate", ("--shard_size", "0"), "shard_size must be an integer >= 1"),
    case("teacher", ("--teacher", "7B", "--limit", "-1"), "limit must be an integer >= 1"),
    case("select_questions", ("--n", "0"), "n must be an integer >= 1"),
    case("select_questions", ("--dev_size", "-1"), "dev_size must be an integer >= 0"),
    case("errors", ("--eval_run", "x", "--concurrency", "0"), "concurrency must be an integer >= 1"),
    case("errors", ("--eval_run", "x", "--timeout", "nan"), "timeout must be a finite number > 0"),
    case("sweep", (*STUDENT, "--n_trials", "0"), "n_trials must be an integer >= 1"),
    # integers said to be integers
    case("evaluate", (*MODEL, "--batch_size", "8.5"), "batch_size: expected an integer, got '8.5'"),
    case("sft", (*STUDENT, "--seed", "1.5"), "seed: expected an integer, got '1.5'"),
    # empty lists and empty items, not the preset's grid or a shorter list
    case("main", ("--seeds", ""), "seeds: empty; leave the parameter out for its default"),
    case("main", ("--teachers", ","), "teachers: an empty item in ','"),
    case("main", ("--seeds", "1,,2"), "seeds: an empty item in '1,,2'"),
    case("sft", (*STUDENT, "--teachers", ""), "teachers: empty"),
    # words that meant the preset's default, now what they say (and refused where they are no value)
    case("sft", (*STUDENT, "--keep_checkpoints", "none"), "keep_checkpoints must be one of last, all (got 'none')"),
    case("sft", (*STUDENT, "--batching", "NONE"), "batching: invalid choice: 'NONE' (choose from 'padded'"),
    # what TRL would refuse after the run started, and words read only once a phase starts
    case("sft", (*STUDENT, "--lr_scheduler_type", "foo"),
         "lr_scheduler_type: invalid choice: 'foo' (choose from 'linear'"),
    case("sft", (*STUDENT, "--lr_scheduler_type", "cosine_with_min_lr"),
         "lr_scheduler_type 'cosine_with_min_lr' needs settings sft does not pass"),
    case("sft", (*STUDENT, "--bf16", "maybe"), "bf16 must be one of true, false, auto (got 'maybe')"),
    case("tokens", ("--tokenizers", "foo"), "unknown tokenizer(s) foo"),
    case("main", ("--plan", "maybe"), "plan: expected true or false, got 'maybe'"),
    case("main", ("--backend", "foo"), "backend: unknown backend 'foo'; choose one of transformers"),
    case("sft", (*STUDENT, "--backend", "foo"), "backend: unknown backend 'foo'"),
    case("main", ("--executor", "foo"), "executor: unknown executor 'foo'; choose one of sequential, ray"),
    case("report", ("--error_teachers", "foo"), "unknown teacher 'foo' in error_teachers"),
]


@pytest.mark.parametrize("phase,args,message,fresh", PARAMETERS)
def test_bad_parameter_refused(refuse, store, phase, args, message, fresh):
    assert_refused(refuse, store, phase, args, message, fresh)


def test_sft_schedulers_follow_transformers():
    """The schedules sft accepts are transformers' schedules.

    sft refuses a scheduler name before any work (distill/config/sft_checks.py); its lists follow the
    installed transformers: a schedule added or renamed there shows up here."""
    from transformers.trainer_utils import SchedulerType

    from distill.config.sft_checks import NEEDS_MORE, SCHEDULERS

    assert set(SCHEDULERS) | set(NEEDS_MORE) == {s.value for s in SchedulerType}


# Model names: the preset's short names, Hub ids, folders and models:/ URIs pass; anything else is named

@pytest.fixture
def paper():
    return load_preset("paper")


def test_short_model_names_resolve(paper):
    """Short names resolve through the preset, the offline preset's to its tiny stand-ins."""
    assert resolve_model("7B", paper).source == "Qwen/Qwen2.5-7B-Instruct"
    assert resolve_model("72b", paper).tensor_parallel_size == 4
    assert resolve_model("qwen2.5-0.5b", paper).source == "Qwen/Qwen2.5-0.5B"
    assert resolve_model("llm-jp-3.1-1.8b", paper).role == "student"
    assert resolve_model("qwen2.5-0.5b", load_preset("offline")).source.startswith("tiny:")


def test_hub_ids_folders_and_uris_pass(paper, tiny_student):
    """Hub ids, local model folders and MLflow models:/ URIs pass as they are."""
    assert resolve_model("Qwen/Qwen2.5-3B", paper).source == "Qwen/Qwen2.5-3B"
    assert resolve_model(str(tiny_student), paper).source == str(tiny_student)
    assert resolve_model("models:/student-qwen2.5-0.5b@teacher-7b", paper).is_mlflow


def test_unknown_model_name_lists_names(paper):
    """An unknown short name lists the known names, of the role asked for."""
    with pytest.raises(DistillError) as e:
        resolve_model("13B", paper)
    assert "7B" in str(e.value) and "qwen2.5-0.5b" in str(e.value)
    with pytest.raises(DistillError) as e:
        resolve_role("qwen2.5-0.5b", paper, "teacher")
    assert "72B" in str(e.value) and "sarashina" not in str(e.value)


def test_served_name_only_for_a_server(paper):
    """A served name is accepted only for a server.

    backend=openai: `gpt-4o-mini` is the name the server knows; preset names still resolve first."""
    ref = resolve_role("gpt-4o-mini", paper, "teacher", served=True)
    assert (ref.name, ref.source, ref.role) == ("gpt-4o-mini", "gpt-4o-mini", "served")
    assert resolve_model("7B", paper, served=True).source == "Qwen/Qwen2.5-7B-Instruct"
    with pytest.raises(DistillError, match="or with backend=openai the name the server knows"):
        resolve_role("gpt-4o-mini", paper, "teacher")
    with pytest.raises(DistillError, match="model path not found"):
        resolve_model("./gpt-4o-mini", paper, served=True)


def test_missing_model_path_named(paper, tmp_path):
    """A model path that is missing, or a folder with no config.json, is named."""
    with pytest.raises(DistillError, match="model path not found"):
        resolve_model(str(tmp_path / "nope"), paper)
    with pytest.raises(DistillError, match="no config.json"):
        resolve_model(str(tmp_path), paper)


# Presets: a preset name or file, refused when it is read and named by it

PRESETS = [
    case("evaluate", (*MODEL, "--preset", "broken.yaml"), "preset file {root}/broken.yaml is not valid YAML at line 3",
         fresh=True),
    case("evaluate", (*MODEL, "--preset", "no_data.yaml"), "no_data.yaml has no 'data'"),
    case("evaluate", (*MODEL, "--preset", "missing.yaml"), "preset file not found: {root}/missing.yaml"),
    case("sft", (*STUDENT, "--preset", "zero_lr.yaml"),
         "zero_lr.yaml: sft.learning_rate must be a finite number in (0, 1]"),
    # a preset file's grid, checked when the file is read
    case("main", ("--preset", "no_seeds.yaml"), "preset file {root}/no_seeds.yaml: grid.seeds is empty"),
    case("main", ("--preset", "grid_13b.yaml"),
         "preset file {root}/grid_13b.yaml: grid.teachers: unknown model name '13B'"),
    case("sft", (*STUDENT, "--preset", "grid_13b.yaml"), "preset file {root}/grid_13b.yaml: grid.teachers"),
]


@pytest.mark.parametrize("phase,args,message,fresh", PRESETS)
def test_bad_preset_refused(refuse, store, phase, args, message, fresh):
    assert_refused(refuse, store, phase, args, message, fresh)


def test_preset_name_case_width_and_typo():
    """Preset names forgive case and width as model names do; a typo gets a did-you-mean and the known presets."""
    assert load_preset("OFFLINE").name == "offline" and load_preset("Ｐａｐｅｒ").name == "paper"
    with pytest.raises(DistillError,
                       match=r"unknown preset 'papr'; did you mean 'paper'\? known presets: offline, paper"):
        load_preset("papr")


def test_paper_preset_holds_table2():
    sft = load_preset("paper").sft
    assert (sft.learning_rate, sft.num_train_epochs, sft.per_device_train_batch_size) == (1e-5, 2, 8)
    assert (sft.lr_scheduler_type, sft.gradient_accumulation_steps, sft.max_grad_norm, sft.bf16) == (
        "linear", 1, 1.0, True)


# Data files: eval sets and training files, refused naming the file and the line

DATA_FILES = [
    case("sft", (*STUDENT, "--train_file", "missing.jsonl"), "train_file not found: {root}/missing.jsonl"),
    case("evaluate", (*MODEL, "--eval_set", "latin1.jsonl"), "{root}/latin1.jsonl:1: not UTF-8 text", fresh=True),
    case("evaluate", (*MODEL, "--eval_set", "int_question.jsonl"),
         "int_question.jsonl:1: needs a non-empty text 'question' field (got int)"),
    case("evaluate", (*MODEL, "--eval_set", "gold_12abc.jsonl"),
         "gold_12abc.jsonl:1: no numeric gold answer (got '12abc')"),
    case("evaluate", (*MODEL, "--eval_set", "nope.jsonl"), "eval set file not found: {root}/nope.jsonl"),
    # a folder where a file is wanted
    case("evaluate", (*MODEL, "--eval_set", "a_folder"), "eval set {root}/a_folder is a directory"),
    case("sft", (*STUDENT, "--train_file", "a_folder"), "train_file {root}/a_folder is a directory"),
]


@pytest.mark.parametrize("phase,args,message,fresh", DATA_FILES)
def test_bad_data_file_refused(refuse, store, phase, args, message, fresh):
    assert_refused(refuse, store, phase, args, message, fresh)


def test_mgsm_ja_is_shipped_whole():
    examples = read_mgsm_ja()
    assert len(examples) == 250
    assert examples[0].answer_number == 18 and examples[0].id == "gsm8k-test-0000"
    examples, _ = load_eval_set("mgsm-ja", limit=5)
    assert len(examples) == 5 and examples[0].reference.endswith("#### 18")


def test_malformed_tsv_line_named(tmp_path):
    """A malformed line of a shipped-format TSV is named by file and line."""
    bad = tmp_path / "mgsm.tsv"
    bad.write_text("質問1\t3\n質問2 with no tab\n", encoding="utf-8")
    with pytest.raises(DistillError, match=r"mgsm.tsv:2: malformed"):
        read_mgsm_ja(bad)


def test_users_jsonl_eval_set(tmp_path):
    """A user's JSONL eval set loads; a gold that is no number, or a line that is no JSON, is named by line."""
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"question": "1+1は？", "answer_number": 2}, ensure_ascii=False) + "\n")
    examples, source = load_eval_set(str(path))
    assert examples[0].answer_number == 2 and source == str(path)
    path.write_text('{"question": "x", "answer_number": "two"}\n')
    with pytest.raises(DistillError, match=r"mine.jsonl:1: no numeric gold"):
        load_eval_set(str(path))
    path.write_text('{"question": "x"\n')
    with pytest.raises(DistillError, match=r"mine.jsonl:1: not valid JSON"):
        load_eval_set(str(path))


@pytest.mark.parametrize("limit", [0, -3])
def test_eval_limit_must_be_positive(limit):
    """load_eval_set's own guard, for a caller that is not the CLI (whose rule PARAMETERS checks)."""
    with pytest.raises(DistillError, match="limit"):
        load_eval_set("mgsm-ja", limit=limit)


def test_unknown_eval_set():
    with pytest.raises(DistillError, match="unknown eval set 'gsm8k-jp'"):
        load_eval_set("gsm8k-jp")


def test_gsm8k_ja_needs_the_hub():
    """gsm8k-ja needs the Hub and says so.

    HF_*_OFFLINE is set for the tests: the real loading path runs and fails like a user's offline machine."""
    with pytest.raises(DistillError, match="SakanaAI/gsm8k-ja-test_250-1319"):
        load_eval_set("gsm8k-ja")


def test_shipped_gsm8k_sample_has_golds():
    """The shipped GSM8K sample has gold numbers and ids."""
    rows = load_gsm8k("train", source="shipped", limit=3)
    assert rows[0]["answer_number"] == 72 and rows[0]["id"] == "gsm8k-train-0000"


def test_limit_above_the_set_takes_all(caplog):
    """A limit above the set takes it all and says so; a limit within it says nothing."""
    with caplog.at_level("INFO", logger="distill"):
        examples, _ = load_eval_set("mgsm-ja", limit=1000000)
    assert len(examples) == 250
    assert "limit 1000000 is above the 250 questions of mgsm-ja: all 250 are used" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="distill"):
        assert len(load_gsm8k("train", source="shipped", limit=3)) == 3
    assert "above" not in caplog.text


@pytest.mark.slow
def test_relative_files_under_mlflow_run(tmp_path):
    """Relative file parameters resolve where `mlflow run` was typed, not in the project folder."""
    (tmp_path / "mine.jsonl").write_text('{"question": "x", "answer_number": "12abc"}\n')
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "evaluate",
                           "--env-manager", "local", "-P", "model=qwen2.5-0.5b", "-P", "eval_set=mine.jsonl"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert f"error: {tmp_path}/mine.jsonl:1: no numeric gold answer (got '12abc')" in proc.stderr, proc.stderr[-3000:]


# Stores and URIs: a tracking server that does not answer, a SQLite file two processes create at once

def test_unreachable_server_is_one_line(tmp_path):
    """An unreachable tracking server is one line, within seconds."""
    t0 = time.perf_counter()
    proc = run_entry("report", check=False, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})
    assert proc.returncode == 2 and "cannot reach the MLflow tracking server" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and time.perf_counter() - t0 < 30


@pytest.mark.slow
def test_two_runs_on_a_new_sqlite_file(tmp_path):
    """Two runs on a brand-new SQLite file both work."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "entrypoints/report.py"), "--upstream", "false"],
                              cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]


# Runs and their keys: two tries of the same work, a killed try, a plan, a refusal under `mlflow run`

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
def test_same_step_twice_at_once(mlflow_server, tmp_path):
    """Two identical steps at once: one works, the other reuses its run."""
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
def test_killed_run_taken_over_by_next_try(mlflow_server, tmp_path):
    """A killed run is marked KILLED by the next try, which takes over at once."""
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


def test_only_dead_tries_marked_killed(tracking, monkeypatch):
    """Live tries are left alone and dead ones marked KILLED.

    The rule behind the two-users cases, in one process: heartbeat age decides live or dead."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from distill.tracking import key_locks

    monkeypatch.setenv("DISTILL_HEARTBEAT_TIMEOUT_S", "60")
    client, exp = MlflowClient(), mlflow.get_experiment_by_name("Default").experiment_id
    now = time.time()
    runs = {age: client.create_run(exp, tags={"distill.cache_key": "k", "distill.phase": "translate",
                                              "distill.heartbeat": f"{now - age:.3f}"}).info.run_id
            for age in (5, 600)}
    assert [r.info.run_id for r in key_locks.find_unfinished("k")] == [runs[600]]  # the live one is not taken over
    me = client.create_run(exp).info.run_id
    assert key_locks.mark_dead("k", me) == [runs[600]]
    dead, live = client.get_run(runs[600]), client.get_run(runs[5])
    assert dead.info.status == "KILLED" and f"taken over by run {me}" in dead.data.tags["distill.killed_reason"]
    assert live.info.status == "RUNNING"


def test_claim_wait_follows_write_time(monkeypatch):
    """The claim wait time follows how long a claim takes to land."""
    from distill.tracking.key_locks import MIN_WAIT_S, claim_wait_time

    monkeypatch.delenv("DISTILL_CLAIM_SETTLE_S", raising=False)
    assert claim_wait_time(0.002) == MIN_WAIT_S        # local SQLite: a claim lands in milliseconds
    assert claim_wait_time(0.8) == 0.8                   # a slow server: as long as its writes take
    monkeypatch.setenv("DISTILL_CLAIM_SETTLE_S", "0.5")
    assert claim_wait_time(0.002) == 0.5                 # fixed by the user


@pytest.mark.slow
def test_main_plan_runs_nothing(tmp_path):
    """`main --plan true` prints the grid and runs nothing."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_entry("main", "--preset", "OFFLINE", "--plan", "true", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    lines = proc.stdout.splitlines()
    assert lines[0] == "main: 18 steps, 18 to run, 0 reused", proc.stdout
    assert any(line.startswith("  run    translate  ") for line in lines) and lines[19].startswith("  run    report  ")
    assert _store_runs(uri) == []


@pytest.mark.slow
def test_refusal_under_mlflow_run_exits_1(tmp_path):
    """A refusal under `mlflow run` exits 1 and leaves MLflow's own run FAILED.

    docs/faults.md's exit codes: 2 from the entry point; `mlflow run` turns any failure into 1 and ends the run it
    opened FAILED (MLflow's behaviour). Nothing else is left."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "sft", "--env-manager", "local",
                           "-P", "teacher=7B", "-P", "bf16=maybe"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=600)
    assert proc.returncode == 1
    assert "error: bf16 must be one of true, false, auto (got 'maybe')" in proc.stderr, proc.stderr[-3000:]
    assert [r.info.status for r in _store_runs(uri)] == ["FAILED"]


# Training: settings no training set can train on (before the upstream, or before a run exists), a loss that
# becomes NaN, a model that does not generate

TRAINING = [
    # known from the settings: refused before the upstream is built
    case("sft", (*STUDENT, "--max_length", "1"),
         "max_length 1 leaves no answer token of any example: the prompt template alone "
         "(qwen2.5-0.5b's tokenizer) is"),
    case("sft", (*STUDENT, "--num_train_epochs", "1e-9", "--limit", "8"),
         "num_train_epochs 1e-09 is less than one optimizer step on 8 examples (8 per step); use at least 1"),
    # known once the rows are read: at the start of sft, before a run exists. HF Trainer would round a schedule
    # under one optimizer step up to a step and register the model; TRL fails on a max_length no prompt leaves an
    # answer token in ("num_samples should be a positive integer")
    case("sft", (*STUDENT, "--train_file", "short.jsonl", "--num_train_epochs", "0.01"),
         "num_train_epochs 0.01 is less than one optimizer step on 8 examples (8 per step); use at least 1"),
    case("sft", (*STUDENT, "--train_file", "long.jsonl", "--max_length", "120"),
         "max_length 120 leaves no answer token of any example: the shortest prompt of the 8 examples "
         "(qwen2.5-0.5b's tokenizer) is"),
]


@pytest.mark.parametrize("phase,args,message,fresh", TRAINING)
def test_untrainable_settings_refused(refuse, store, phase, args, message, fresh):
    assert_refused(refuse, store, phase, args, message, fresh)


def _nan_student(src: Path, dst: Path) -> Path:
    """The tiny student with a NaN final norm: every logit, and so the loss, is NaN from step 1."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    weights["model.norm.weight"][:] = float("nan")
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.slow
def test_nan_loss_fails_the_run(tmp_path, tiny_student):
    """Non-finite training fails the run at its step and registers nothing."""
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


def test_registered_once_after_it_generates(tracking, tmp_path, tiny_student):
    """A version is registered once, and only after it loads and generates."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.tracking.registry import register_once, verify_logged_model

    def log(folder):
        with mlflow.start_run() as run:
            info = mlflow.transformers.log_model(
                {"model": AutoModelForCausalLM.from_pretrained(folder),
                 "tokenizer": AutoTokenizer.from_pretrained(folder)},
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
