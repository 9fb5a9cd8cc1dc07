"""What each vLLM shard's wait for its longest answer costs, by shard size: a MODEL of the tail, not a measurement.

vLLM's offline engine batches continuously: up to S sequences decode together and a finished one is
replaced at once by the next prompt of the same call. A call ends only when its longest answer does, so
in its tail the batch empties while each decode step still costs nearly as much as a full one. The
translate and teacher phases make one `LLM.generate`/`LLM.chat` call per shard (distill/tracking/shards.py): every
shard pays a tail. This script simulates the engine's slots over answer lengths and reports, per shard
size, the time of the sharded pass over one call of all prompts, then picks the smallest candidate shard
size under --goal (5%) in every slot scenario: the `paper` preset's `vllm.shard_size`.

Model (each an assumption; replace with measurements from a GPU when there are some):
- Answer lengths: the shipped GSM8K reference solutions (distill/resources/gsm8k_train_sample.jsonl, 256),
  re-tokenised with the offline preset's BPE tokenizer and rescaled to a mean of --mean-tokens (300: the
  Japanese chain-of-thought answers of the paper's teachers, Fig. 3's order of magnitude); a share
  --truncated (1%) runs on to max_new_tokens (1,024, the preset's), the rest are capped there; --prompts
  (7,473, the paper's training questions) drawn with replacement, in random order.
- Slots S (--slots): 1,024, vLLM 0.33's max_num_seqs for the LLM class on 70-160 GB GPUs (H100/H200;
  EngineArgs.get_batch_defaults), which the 7B teacher fills (the KV cache of the 72B and the 70B translator
  at tensor parallel 4 holds ~600 sequences of ~650 tokens); 256, its default on other GPUs (A100), about
  what the 14B teacher's KV cache holds on one 80 GB GPU (~300); 32, the 32B teacher on one 80 GB GPU, whose
  KV cache (~5 GB at 0.9 utilisation, 256 KB a token) holds about 30. Prefill is not modelled.
- A decode step with b running sequences costs a + k*b: the weights are read once a step (a), each
  sequence adds its compute and KV reads (k). a/k (--fixed-cost, in sequences) is the batch at which a step
  turns compute-bound, about peak FLOP/s x utilisation / memory bandwidth for a dense model: H100 989
  TFLOP/s x 0.5 / 3.35 TB/s = 148, less the KV reads: 128. The sensitivity table varies it.

    python bench/shard_tail.py          # the tables, the chosen shard size (seconds)
    python bench/shard_tail.py --dry    # 600 prompts, shards of 100 and of all 600 (CI)
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys

import _common  # noqa: F401  (sets the offline environment first)
from _common import ROOT
from results import Results, add_common_args

SHIPPED = ROOT / "distill" / "resources" / "gsm8k_train_sample.jsonl"
DRY = dict(prompts=600, slots="64,16", shard_sizes="100,600", sensitivity="64")


def reference_lengths() -> list[int]:
    """Tokens per shipped GSM8K reference solution under the offline preset's tokenizer."""
    from distill.local_models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    with open(SHIPPED, encoding="utf-8") as f:
        answers = [json.loads(line)["answer"] for line in f if line.strip()]
    return [len(ids) for ids in tokenizer(answers, add_special_tokens=False).input_ids]


def answer_lengths(reference: list[int], n: int, mean: float, cap: int, truncated: float, seed: int) -> list[int]:
    """`n` answer lengths: the reference shape rescaled to `mean`, a share `truncated` running to `cap`."""
    rng, scale = random.Random(seed), mean / (sum(reference) / len(reference))
    return [cap if rng.random() < truncated else min(cap, max(1, round(rng.choice(reference) * scale)))
            for _ in range(n)]


def call_time(lengths: list[int], slots: int, fixed_cost: float) -> float:
    """One call over `lengths` with `slots` sequences at a time, in units of one sequence's share of a step."""
    queue, running, time, step = list(reversed(lengths)), [], 0.0, 0
    while queue or running:
        while queue and len(running) < slots:
            heapq.heappush(running, step + queue.pop())
        finish = running[0]
        time += (finish - step) * (fixed_cost + len(running))
        step = finish
        while running and running[0] == step:
            heapq.heappop(running)
    return time


def sharded_time(lengths: list[int], shard: int, slots: int, fixed_cost: float) -> float:
    return sum(call_time(lengths[i:i + shard], slots, fixed_cost) for i in range(0, len(lengths), shard))


def overheads(lengths: list[int], shards: list[int], slots: int, fixed_cost: float) -> dict[int, float]:
    """Per shard size: the sharded pass over one call of all prompts, minus 1."""
    one = call_time(lengths, slots, fixed_cost)
    return {shard: sharded_time(lengths, shard, slots, fixed_cost) / one - 1 for shard in shards}


def pick(table: dict[int, dict[int, float]], goal: float) -> int | None:
    """The smallest shard size under `goal` for every slot count."""
    sizes = sorted(next(iter(table.values())))
    return next((s for s in sizes if all(row[s] < goal for row in table.values())), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=7473, help="prompts of the pass (default 7,473, the paper's)")
    ap.add_argument("--mean-tokens", type=float, default=300, help="mean answer length in tokens (default 300)")
    ap.add_argument("--max-new-tokens", type=int, default=1024, help="answer cap (default 1,024, the preset's)")
    ap.add_argument("--truncated", type=float, default=0.01, help="share of answers running to the cap (default 1%%)")
    ap.add_argument("--slots", default="1024,256,32", help="sequences decoding at once, comma-separated")
    ap.add_argument("--shard-sizes", default="256,512,1024,2048,4096,8192", help="candidate shard sizes")
    ap.add_argument("--fixed-cost", type=float, default=128,
                    help="a step's fixed cost in sequences, a/k (default 128)")
    ap.add_argument("--sensitivity", default="32,512", help="other a/k values for the chosen size (comma-separated)")
    ap.add_argument("--goal", type=float, default=0.05, help="largest cost of the tails over one call (default 5%%)")
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap, "shard_tail")
    args = ap.parse_args(argv)
    if args.dry:
        ap.set_defaults(**DRY)
        args = ap.parse_args(argv)
    report = Results("shard_tail", args)
    slots = [int(s) for s in args.slots.split(",")]
    sizes = [int(s) for s in args.shard_sizes.split(",")]
    reference = reference_lengths()
    lengths = answer_lengths(reference, args.prompts, args.mean_tokens, args.max_new_tokens, args.truncated, args.seed)
    ordered = sorted(lengths)
    summary = {"n": len(lengths), "mean": sum(lengths) / len(lengths), "median": ordered[len(ordered) // 2],
               "p99": ordered[int(0.99 * (len(ordered) - 1))], "max": ordered[-1],
               "at_cap": sum(n == args.max_new_tokens for n in lengths)}
    report.say(f"{summary['n']} answers: mean {summary['mean']:.0f} tokens, median {summary['median']}, "
               f"p99 {summary['p99']}, max {summary['max']}, {summary['at_cap']} at the cap "
               f"(shape of {len(reference)} GSM8K reference solutions)")
    table = {s: overheads(lengths, sizes, s, args.fixed_cost) for s in slots}
    report.table(["slots", *[f"shard {n}" for n in sizes]],
                 [[s, *[f"{100 * table[s][n]:+.1f}%" for n in sizes]] for s in slots],
                 title=f"sharded pass over one call of all {args.prompts} prompts (a/k = {args.fixed_cost:g})")
    chosen = pick(table, args.goal)
    report.say(f"smallest shard size under {100 * args.goal:g}% for every slot count: {chosen}")
    sensitivity = {}
    if chosen is not None:
        for fixed in [float(x) for x in args.sensitivity.split(",")]:
            sensitivity[fixed] = {s: overheads(lengths, [chosen], s, fixed)[chosen] for s in slots}
        report.table(["a/k", *[f"{s} slots" for s in slots]],
                     [[f"{k:g}", *[f"{100 * v[s]:+.1f}%" for s in slots]] for k, v in sensitivity.items()],
                     title=f"shard {chosen} with another fixed step cost")
    report.write({"estimate": True, "lengths": summary, "fixed_cost": args.fixed_cost, "goal": args.goal,
                  "rows": [{"slots": s, "overhead_by_shard_size": table[s]} for s in slots], "chosen": chosen,
                  "sensitivity": sensitivity}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
