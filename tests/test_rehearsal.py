"""The `paper` preset end to end on a CPU: every model and data set under its real id, from a local
Hugging Face cache of stand-ins (distill.local_models.rehearsal), through the same calls the paper run makes; the
parent process of `main` never imports torch, transformers, TRL or vLLM (every model loads in a step
process of its own)."""

import json
import subprocess
import sys

import mlflow
import pytest

from distill.config import models, presets
from distill.local_models import rehearsal
from tests.conftest import ROOT
from tests.openai_server import OpenAIStub, stand_in_judge

PAPER = presets.load_preset("paper")
TEACHER_IDS = {e.model for e in PAPER.teachers.values()}
STUDENT_IDS = {e.model for e in PAPER.students.values()}

# Runs `main` with the model libraries unimportable in this process only: the fork server and the step
# processes are fresh interpreters and import them as usual.
GUARDED_MAIN = """
import importlib.abc, importlib.machinery, sys
class Guard(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "trl", "vllm"}:
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ImportError(f"{module.__name__} imported in the parent process of main")
sys.meta_path.insert(0, Guard())
from distill.cli import run_phase
run_phase("main", sys.argv[1:])
"""

# Where the rehearsal exercises each key of paper.yaml (a new key fails this test until it is placed).
KEYS = {
    "name": "params.preset of every run", "description": "documentation only: read by no code",
    "needs_gpu": "refused without rehearsal=true (test_main), waived with it",
    "backend": "overridden: backend=transformers", "tensor_parallel_size": "resolve_role (vLLM only)",
    "translator.model": "translate params.translator", "translator.tensor_parallel_size": "resolve (vLLM only)",
    **{f"teachers.{t}.model": "teacher/evaluate params.model_source" for t in PAPER.teachers},
    "teachers.72B.tensor_parallel_size": "resolve_role (vLLM only)",
    **{f"students.{s}.model": "sft params.student_source, baseline params.model_source" for s in PAPER.students},
    **{f"tokenizers.{k}": "tokens params.tokenizers" for k in PAPER.tokenizers},
    "data.train": "translate params.source, dataset input", "data.train_limit": "overridden: train_limit",
    "data.eval_set": "evaluate params.eval_set, dataset input",
    "generation.max_new_tokens": "overridden: max_new_tokens", "generation.batch_size": "params.batch_size",
    "generation.translate_max_new_tokens": "overridden: max_new_tokens",
    "vllm.gpu_memory_utilization": "open_generator (vLLM only: tests/test_generation.py, fake vllm)",
    "vllm.shard_size": "translate/teacher shards (vLLM only: tests/test_generation.py)",
    "vllm.enforce_eager": "VLLMGenerator (vLLM only: tests/test_vllm.py; vLLM's CPU platform: tests/test_vllm_cpu.py)",
    **{f"select.{k}": "select params" for k in ("n", "seed", "filter", "dev_size", "keep_truncated")},
    **{f"sft.{k}": "sft params" for k in ("bf16", "learning_rate", "lr_scheduler_type", "num_train_epochs",
                                          "per_device_train_batch_size", "gradient_accumulation_steps",
                                          "max_grad_norm", "warmup_steps", "max_length", "batching",
                                          "gradient_checkpointing")},
    "sft.seeds": "read by no code: main takes grid.seeds",
    **{f"baseline.{k}": "baseline evaluate params" for k in ("mode", "shots", "repetition_penalty")},
    **{f"grid.{k}": "main params" for k in ("teachers", "students", "seeds")}, "grid.eval_limit": "overridden: limit",
    "grid.gpu_hour_price": "main -P plan=true only (tests/test_price.py)",
    "judge.model": "errors params.judge_model", "judge.base_url": "overridden: judge_base_url (stand-in judge)",
    "judge.teachers": "errors runs only for these teachers",
    "sweep.n_trials": "sweep run params",
    **{f"sweep.space.{k}": "sweep run params (space), trial params" for k in (
        "learning_rate.low", "learning_rate.high", "learning_rate.log",
        "num_train_epochs.low", "num_train_epochs.high",
        "per_device_train_batch_size.choices", "warmup_steps.low", "warmup_steps.high")},
}


def leaf_keys(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from leaf_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_every_paper_key_has_a_place():
    """Every key of the paper preset has a place in the rehearsal."""
    assert set(leaf_keys(PAPER.as_dict())) == set(KEYS)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("standins")
    rehearsal.build(folder)
    return folder


def test_stand_in_cache_has_every_id(standins):
    """The stand-in cache has every id in the real layout."""
    from datasets import load_dataset
    from transformers import AutoConfig, AutoTokenizer

    hub = standins / "hub"
    for repo_id in rehearsal.preset_models(PAPER):
        repo = hub / f"models--{repo_id.replace('/', '--')}"
        commit = (repo / "refs" / "main").read_text()
        assert (repo / "snapshots" / commit / "config.json").is_symlink()
        tok = AutoTokenizer.from_pretrained(repo_id, cache_dir=hub, local_files_only=True)
        has_template = bool(tok.chat_template)
        assert has_template == (repo_id not in {"sbintuitions/sarashina2.2-1b", "llm-jp/llm-jp-3.1-1.8b"}), repo_id
        arch = AutoConfig.from_pretrained(repo_id, cache_dir=hub, local_files_only=True).model_type
        assert arch == ("qwen2" if repo_id.startswith("Qwen/") else "llama"), repo_id
    ja = load_dataset("SakanaAI/gsm8k-ja-test_250-1319", split="test", cache_dir=str(standins / "datasets"))
    assert set(ja.column_names) == {"question", "answer_number"} and len(ja) == rehearsal.GSM8K_JA_ROWS
    for split in ("train", "test"):
        en = load_dataset("openai/gsm8k", "main", split=split, cache_dir=str(standins / "datasets"))
        assert set(en.column_names) == {"question", "answer"}
    with pytest.raises(Exception):  # noqa: B017 - a wrong split fails here as it would on the Hub (its type varies by datasets version)
        load_dataset("SakanaAI/gsm8k-ja-test_250-1319", split="train", cache_dir=str(standins / "datasets"))


def _params(runs, key):
    return {r.data.params.get(key) for r in runs}


@pytest.mark.slow
def test_paper_rehearsal_end_to_end(standins, tmp_path):
    env = {**__import__("os").environ, **rehearsal.environment(standins),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    args = ["--preset", "paper", *[a for k, v in rehearsal.MAIN_ARGS.items() for a in (f"--{k}", v)]]
    with OpenAIStub(stand_in_judge) as judge:
        proc = subprocess.run([sys.executable, "-c", GUARDED_MAIN, *args, "--judge_base_url", judge.base_url],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
        assert proc.returncode == 0, proc.stderr[-6000:]
    sweep = subprocess.run([sys.executable, str(ROOT / "entrypoints" / "sweep.py"), "--preset", "paper",
                            "--teacher", "7B", "--student", "qwen2.5-0.5b", "--n_trials", "1", "--dev_limit", "2",
                            "--max_new_tokens", "8", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-4000:]

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        (main,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`distill.phase` = 'main'",
                                     output_format="list")
        assert main.info.status == "FINISHED" and main.data.tags["distill.rehearsal"] == "true"
        assert "### Reproduction of the paper\n\n**Rehearsal**" in main.data.tags["mlflow.note.content"]
        assert main.data.metrics["steps"] == 56 and main.data.metrics["steps_reused"] == 0
        children = mlflow.search_runs(search_all_experiments=True,
                                      filter_string=f"tags.mlflow.parentRunId = '{main.info.run_id}'",
                                      output_format="list")
        assert all(c.info.status == "FINISHED" and c.data.tags["distill.rehearsal"] == "true" for c in children)
        by = {}
        for c in children:
            by.setdefault(c.data.tags["distill.phase"], []).append(c)
        assert {k: len(v) for k, v in by.items()} == {"translate": 1, "teacher": 4, "evaluate": 24, "select": 1,
                                                      "sft": 16, "errors": 8, "tokens": 1, "report": 1}
        (translate,) = by["translate"]
        assert translate.data.params["translator"] == PAPER.translator.model
        assert translate.data.params["source"] == "openai/gsm8k"
        assert translate.data.params["batch_size"] == "16"
        assert _params(by["teacher"], "model_source") == TEACHER_IDS
        assert _params(by["teacher"], "prompt_format") == {"chat"}
        evals = by["evaluate"]
        assert _params(evals, "eval_set") == {"gsm8k-ja"} and _params(evals, "n_examples") == {"2"}
        sources = {i.dataset.source for e in evals for i in e.inputs.dataset_inputs}
        assert all("SakanaAI/gsm8k-ja-test_250-1319" in s for s in sources)
        teacher_evals = [e for e in evals if e.data.params["model_source"] in TEACHER_IDS]
        assert len(teacher_evals) == 4 and _params(teacher_evals, "prompt_format") == {"chat"}
        assert all(e.data.metrics["accuracy"] >= 0 for e in teacher_evals)
        baselines = [e for e in evals if e.data.params["mode"] == "few-shot"]
        assert _params(baselines, "model_source") == STUDENT_IDS
        assert _params(baselines, "shots") == {"4"} and _params(baselines, "repetition_penalty") == {"1.1"}
        (select,) = by["select"]
        assert {k: select.data.params[k] for k in ("filter", "seed", "dev_size", "n", "keep_truncated")} == {
            "filter": "all_correct", "seed": "42", "dev_size": "200", "n": "3", "keep_truncated": "False"}
        assert select.data.metrics["n_qualifying"] == 6  # the even stand-in questions, which every teacher got right
        sft = by["sft"]
        assert _params(sft, "student_source") == STUDENT_IDS and len({c.data.params["teacher"] for c in sft}) == 4
        expected = {k: str(v) for k, v in PAPER.as_dict()["sft"].items() if k not in ("seeds", "bf16")}
        for c in sft:
            assert {k: c.data.params[k] for k in expected} == expected
            assert c.data.params["bf16"] == "auto" and c.data.params["bf16_used"] == "False"
        registered = {m.name for m in mlflow.MlflowClient().search_registered_models()}
        assert registered == {f"student-{s}" for s in PAPER.students}
        assert {c.data.tags["distill.teacher"] for c in by["errors"]} == set(PAPER.judge.teachers)
        assert _params(by["errors"], "judge_model") == {PAPER.judge.model}
        (tokens,) = by["tokens"]
        assert all(source in tokens.data.params["tokenizers"] for source in PAPER.tokenizers.values())
        (report,) = by["report"]
        assert "tables/table1.md" in {
            a.path for a in mlflow.MlflowClient().list_artifacts(report.info.run_id, "tables")}
        # the reproduction section: the paper's ids make it comparable; the stand-ins make it a rehearsal
        md = mlflow.artifacts.load_text(f"runs:/{report.info.run_id}/report.md")
        section = md.split("## Reproduction of the paper")[1].split("## Table 1: student")[0]
        assert section.lstrip().startswith("**Rehearsal**: stand-in models under the paper's ids")
        assert "here 2 of its 1069 questions" in section
        for row in ("| Table 1 | Qwen2.5-7B | Qwen2.5-0.5B | 33.30 |", "| Table 3 | Qwen2.5-72B | — | 89.43 |",
                    "| Table 1 | 4-shot | sarashina2.2-1b | 46.77 |"):
            assert row in section, row
        assert "Reproduction of the paper (a rehearsal: stand-in numbers, not a reproduction): of 6 claims" in md
        assert report.data.metrics["n_claims_undecided"] == 6   # 2 questions decide nothing (test_reproduction)
        (sweep_run,) = mlflow.search_runs(search_all_experiments=True,
                                          filter_string="tags.`distill.phase` = 'sweep'", output_format="list")
        assert sweep_run.data.params["space"] == ",".join(k for k in PAPER.sweep.ranges())
        assert "main: errors skipped" not in proc.stderr
        steps = json.loads(mlflow.artifacts.load_text(f"runs:/{main.info.run_id}/steps.json"))["steps"]
        assert len(steps) == 56
    finally:
        mlflow.set_tracking_uri(None)
    assert models.resolve_role("72B", PAPER, "teacher").tensor_parallel_size == 4
