"""Tokens/s of the `sft` phase on the offline tiny student, and the padding it wastes: padded vs group_by_length.

Set-up (not timed): a temp folder with a fresh sqlite tracking store (`MLFLOW_TRACKING_URI=sqlite:///<tmp>/mlflow.db`,
the process chdirs there), then the real upstream phases of the offline preset: `translate` (`--limit` questions),
`teacher` 7B and 72B (`--teacher-max-new-tokens`, larger than the preset's 32 so that answers vary in length: the
tiny random teachers stop at EOS at scattered points), `select` (`n=--n`, `dev_size=0`, filter `none` as the preset
has it, `allow_fewer` so that every usable question is taken).

Timed: `distill.phases.sft.run(SftParams(teacher="7B", student="qwen2.5-0.5b", preset="offline", batching=b,
register=False, reuse=False, num_train_epochs=1, checkpoints_to_run=False, output_dir=<tmp>/ckpt-...))` for each
batching mode, interleaved over `--repeats`, at the paper's batch size 8 (the preset's `per_device_train_batch_size`).
Figures are the run's own metrics (`train_tokens_per_second`, `padding_fraction`, `train_seconds`, `train_tokens`:
real tokens, padding excluded, counted by `distill.training.callbacks.PaddingCounter`). A fresh `output_dir` per run
matters: the phase resumes from the newest checkpoint in its output folder, and the default folder is keyed by the
cache key, which is the same for a repeat.

Cross-check: the sequence lengths are recomputed with the student's tokenizer the way TRL prepares a
prompt/completion set (prompt + completion + EOS, tokenized together, cut at the preset's max_length); their sum
must equal `train_tokens` for one epoch, and the expected padding fraction of each sampler is simulated over 1,000
seeds: `padded` = a random permutation in batches of 8 (`RandomSampler`), `group_by_length` = transformers'
`get_length_grouped_indices` (random permutation, mega-batches of min(N // (4 * 8), 50) * 8 examples, each sorted by
length). The same simulation on the lengths resampled to the paper's 5,000 examples shows what the mega-batch of
400 buys at scale. Because the tiny teachers' answers mostly run to max_new_tokens (and the offline preset cuts
sequences at 256 tokens), the simulation is also run on a proxy for real chain-of-thought lengths: the shipped GSM8K
reference solutions in the same prompt format.

Finally `batching=padding_free` is tried once and must be refused on a CPU with a clear DistillError.

    python bench/sft_throughput.py                     # 128 questions, teachers at 96 new tokens, 3 repeats (~1-2 min)
    python bench/sft_throughput.py --teacher-max-new-tokens 512 --max-length 1024   # longer, spread-out answers
    python bench/sft_throughput.py --dry               # 8 questions, 8 new tokens, 1 repeat (seconds)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from _common import log, now, temp_tracking_store  # noqa: E402  (sets the offline environment first)
from results import Results, add_common_args

TEACHERS = ("7B", "72B")
TRAIN_TEACHER = "7B"
STUDENT = "qwen2.5-0.5b"
PAPER_N = 5000
METRICS = ("train_tokens_per_second", "padding_fraction", "train_seconds", "train_tokens", "final_train_loss")
DRY = {"limit": 8, "teacher_max_new_tokens": 8, "repeats": 1, "seeds": 4}  # and no warm-up run


# --------------------------------------------------------------------------- lengths and padding, analytically


def sequence_lengths(rows: list[dict], tokenizer, max_length: int) -> dict:
    """Per example: prompt, completion and training-sequence tokens as TRL builds them (EOS appended, cut)."""
    eos = tokenizer.eos_token
    prompt, full, cut = [], [], []
    for r in rows:
        completion = r["completion"] if r["completion"].endswith(eos) else r["completion"] + eos
        p = len(tokenizer(r["prompt"]).input_ids)
        f = len(tokenizer(r["prompt"] + completion).input_ids)
        prompt.append(p)
        full.append(f)
        cut.append(min(f, max_length))
    return {"prompt": prompt, "full": full, "train": cut, "completion": [f - p for f, p in zip(full, prompt)]}


def padding_of(order: list[int], lengths: list[int], batch_size: int) -> tuple[int, int]:
    real = total = 0
    for i in range(0, len(order), batch_size):
        batch = [lengths[j] for j in order[i:i + batch_size]]
        real += sum(batch)
        total += max(batch) * len(batch)
    return real, total


def simulate(lengths: list[int], batch_size: int, seeds: int) -> dict:
    """Padding fraction of each sampler, over `seeds` random draws: mean, sd, min, max."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    out = {}
    for name in ("padded", "group_by_length"):
        fractions = []
        for s in range(seeds):
            g = torch.Generator().manual_seed(s)
            if name == "padded":
                order = torch.randperm(len(lengths), generator=g).tolist()
            else:
                order = get_length_grouped_indices(lengths, batch_size, generator=g)
            real, total = padding_of(order, lengths, batch_size)
            fractions.append(1 - real / total)
        out[name] = {"mean": statistics.fmean(fractions), "sd": statistics.pstdev(fractions),
                     "min": min(fractions), "max": max(fractions)}
    real, total = padding_of(sorted(range(len(lengths)), key=lambda i: lengths[i]), lengths, batch_size)
    out["sorted (lower bound)"] = {"mean": 1 - real / total, "sd": 0.0, "min": 1 - real / total,
                                   "max": 1 - real / total}
    out["megabatch_size"] = max(min(len(lengths) // (batch_size * 4), 50), 1) * batch_size
    return out


def describe(xs: list[int]) -> dict:
    s = sorted(xs)
    q = lambda f: s[min(int(f * len(s)), len(s) - 1)]  # noqa: E731
    return {"min": s[0], "p10": q(0.1), "median": statistics.median(s), "p90": q(0.9), "max": s[-1],
            "mean": statistics.fmean(s)}


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=128, help="questions translated and answered (default 128)")
    ap.add_argument("--teacher-max-new-tokens", type=int, default=96, help="teachers' max_new_tokens (default 96)")
    ap.add_argument("--n", type=int, default=None, help="select n (default: every usable question, allow_fewer)")
    ap.add_argument("--batchings", default="padded,group_by_length",
                    help="comma-separated (default padded,group_by_length)")
    ap.add_argument("--repeats", type=int, default=3, help="sft runs per batching, interleaved (default 3)")
    ap.add_argument("--max-length", type=int, default=None,
                    help="SftParams.max_length (default: the preset's, 256 in offline; the paper's default is 2048)")
    ap.add_argument("--epochs", type=float, default=1, help="num_train_epochs (default 1)")
    ap.add_argument("--seeds", type=int, default=1000, help="draws for the simulated padding (default 1000)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--skip-padding-free", action="store_true", help="do not check that padding_free is refused")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (tracking store) for inspection")
    add_common_args(ap, "sft_throughput")
    args = ap.parse_args(argv)
    if args.dry:
        ap.set_defaults(**DRY)
        args = ap.parse_args(argv)
    batchings = [b.strip() for b in args.batchings.split(",") if b.strip()]

    report = Results("sft_throughput", args)
    with temp_tracking_store("sft-throughput-", keep=args.keep) as tmp:
        import mlflow
        import torch

        torch.set_num_threads(args.threads)
        from distill import DistillError
        from distill.config.models import materialize, resolve_role
        from distill.config.presets import load_preset
        from distill.generation.hf import load_tokenizer
        from distill.phases.select import SelectParams, run as select_run
        from distill.phases.sft import SftParams, resolved_sft_config, run as sft_run
        from distill.phases.teacher import TeacherParams, run as teacher_run
        from distill.phases.translate import TranslateParams, run as translate_run
        from distill.tracking import lineage, phase_runs

        log(f"tracking store {mlflow.get_tracking_uri()}; load average {report.load_before[0]:.2f}")
        t = now()
        translate_id = translate_run(TranslateParams(preset="offline", limit=args.limit))
        teacher_ids = {t_: teacher_run(TeacherParams(teacher=t_, preset="offline",
                                                     max_new_tokens=args.teacher_max_new_tokens)) for t_ in TEACHERS}
        n = args.n or args.limit
        select_id = select_run(SelectParams(preset="offline", n=n, dev_size=0, allow_fewer=True))
        rows = phase_runs.read_jsonl_artifact(select_id, f"train/{TRAIN_TEACHER}.jsonl")
        answers = phase_runs.read_jsonl_artifact(teacher_ids[TRAIN_TEACHER], "answers.jsonl")
        log(f"set-up {now() - t:.1f} s (not timed): translate {translate_id}, teachers {teacher_ids}, select "
            f"{select_id}: {len(rows)} training examples for {TRAIN_TEACHER}")

        # ---- lengths, as TRL will build the sequences
        preset = load_preset("offline")
        h = resolved_sft_config(SftParams(teacher=TRAIN_TEACHER, student=STUDENT, preset="offline",
                                       max_length=args.max_length), preset)
        batch_size, max_length = h["per_device_train_batch_size"], h["max_length"]
        tokenizer = load_tokenizer(materialize(resolve_role(STUDENT, preset, "student")).tokenizer)
        lens = sequence_lengths(rows, tokenizer, max_length)
        teacher_tokens = describe([a["output_tokens"] for a in answers])
        stopped = sum(a["finish_reason"] == "stop" for a in answers)
        log(f"teacher {TRAIN_TEACHER} output tokens {teacher_tokens['min']}-{teacher_tokens['max']} (median "
            f"{teacher_tokens['median']}), {stopped}/{len(answers)} stopped at EOS before "
            f"{args.teacher_max_new_tokens}")
        sim = simulate(lens["train"], batch_size, args.seeds)
        import random

        rng = random.Random(0)
        paper_lengths = [rng.choice(lens["train"]) for _ in range(PAPER_N)]
        sim_paper = simulate(paper_lengths, batch_size, max(args.seeds // 10, 20))
        # The tiny teachers' answers have a degenerate length distribution (most run to max_new_tokens); as a
        # proxy for real chain-of-thought lengths, the shipped GSM8K reference solutions in the same prompt format.
        from distill.data.prompts import plain_prompt
        from distill.data.questions import load_gsm8k

        proxy_rows = [{"prompt": plain_prompt(r["question"]), "completion": r["answer"]}
                      for r in load_gsm8k("train", source="shipped")]
        proxy_lens = sequence_lengths(proxy_rows, tokenizer, max_length)
        sim_proxy = simulate(proxy_lens["train"], batch_size, args.seeds)
        proxy_paper = [rng.choice(proxy_lens["train"]) for _ in range(PAPER_N)]
        sim_proxy_paper = simulate(proxy_paper, batch_size, max(args.seeds // 10, 20))

        # ---- warm-up: one short sft run (first-use costs of the Trainer, autograd and the MLflow model logging)
        t = now()
        args.dry or sft_run(SftParams(teacher=TRAIN_TEACHER, student=STUDENT, preset="offline", batching=batchings[0],
                                      limit=16, register=False, reuse=False, num_train_epochs=args.epochs,
                                      max_length=args.max_length, checkpoints_to_run=False,
                                      output_dir=str(tmp / "ckpt-warmup")))  # not in a dry run
        log(f"warm-up sft run (16 examples) {now() - t:.1f} s")

        # ---- timed sft runs
        runs: dict[str, list[dict]] = {b: [] for b in batchings}
        for r in range(args.repeats):
            for b in batchings:
                t, cpu0 = now(), time.process_time()
                run_id = sft_run(SftParams(teacher=TRAIN_TEACHER, student=STUDENT, preset="offline", batching=b,
                                           register=False, reuse=False, num_train_epochs=args.epochs,
                                           max_length=args.max_length, checkpoints_to_run=False,
                                           output_dir=str(tmp / f"ckpt-{b}-{r}")))
                wall, cpu = now() - t, time.process_time() - cpu0
                m = mlflow.get_run(run_id).data.metrics
                res = {"run_id": run_id, "phase_seconds": wall, **{k: m.get(k) for k in METRICS},
                       "loadavg": os.getloadavg()[0], "cpu_per_wall": cpu / wall}
                res["padded_tokens_per_second"] = (res["train_tokens"] / (1 - res["padding_fraction"])
                                                   / res["train_seconds"])
                runs[b].append(res)
                log(f"repeat {r + 1}/{args.repeats} {b:<16}: {res['train_tokens']:.0f} tokens in "
                    f"{res['train_seconds']:.2f} s "
                    f"= {res['train_tokens_per_second']:.0f} tok/s, padding {100 * res['padding_fraction']:.1f}% "
                    f"(phase end-to-end {wall:.1f} s; cpu/wall {cpu / wall:.2f}, load avg {res['loadavg']:.2f})")

        # ---- padding_free must be refused on a CPU
        refusal = None
        if not args.skip_padding_free:
            t = now()
            before = {r.info.run_id for r in lineage.search_phase_runs("sft")}
            try:
                sft_run(SftParams(teacher=TRAIN_TEACHER, student=STUDENT, preset="offline", batching="padding_free",
                                  register=False, reuse=False, num_train_epochs=args.epochs, checkpoints_to_run=False,
                                  output_dir=str(tmp / "ckpt-padding_free")))
                refusal = {"refused": False, "message": "trained without error"}
            except DistillError as e:
                refusal = {"refused": True, "error": type(e).__name__, "message": str(e)}
            except Exception as e:  # noqa: BLE001 - an unclear error is what this check is for
                refusal = {"refused": True, "error": type(e).__name__, "message": str(e)[:500], "unclear": True}
            refusal["seconds_to_refusal"] = now() - t
            left = [r for r in lineage.search_phase_runs("sft") if r.info.run_id not in before]
            refusal["runs_left_behind"] = [{"run_id": r.info.run_id, "status": r.info.status} for r in left]
            log(f"padding_free: {refusal}")

    # ---- report
    rows_out = []
    for b in batchings:
        best = max(runs[b], key=lambda x: x["train_tokens_per_second"])
        rows_out.append({"batching": b, **best,
                         "tokens_per_second_all": [x["train_tokens_per_second"] for x in runs[b]],
                         "tokens_per_second_median": statistics.median(x["train_tokens_per_second"] for x in runs[b]),
                         "padding_fraction_all": [x["padding_fraction"] for x in runs[b]],
                         "simulated_padding": sim.get(b)})
    report.say(f"training set: {len(rows)} examples ({TRAIN_TEACHER}'s answers), batch {batch_size}, "
               f"max_length {max_length}, {args.epochs:g} epoch(s), {args.repeats} repeat(s), best tok/s shown")
    report.say(f"{'tokens per example':<26} {'min':>5} {'p10':>5} {'median':>6} {'p90':>5} {'max':>5} {'mean':>6}")
    for key, label in (("prompt", "prompt"), ("completion", "completion (+EOS)"), ("full", "prompt+completion"),
                       ("train", f"after cut at {max_length}")):
        d = describe(lens[key])
        report.say(f"{label:<26} {d['min']:>5} {d['p10']:>5} {d['median']:>6.0f} {d['p90']:>5} {d['max']:>5} "
                   f"{d['mean']:>6.1f}")
    n_cut = sum(f > max_length for f in lens["full"])
    report.say(f"sequences cut at max_length: {n_cut}/{len(rows)}; analytic sum of tokens per epoch "
          f"{sum(lens['train'])}")
    report.table(["batching", "tokens", "seconds", "tok/s", "median", "tok/s incl pad", "padding",
               "simulated padding (mean ± sd)", "phase s"],
              [[r["batching"], f"{r['train_tokens']:.0f}", f"{r['train_seconds']:.2f}",
                f"{r['train_tokens_per_second']:.0f}", f"{r['tokens_per_second_median']:.0f}",
                f"{r['padded_tokens_per_second']:.0f}",
                f"{100 * r['padding_fraction']:.1f}%",
                f"{100 * r['simulated_padding']['mean']:.1f}% ± {100 * r['simulated_padding']['sd']:.1f}"
                if r["simulated_padding"] else "-", f"{r['phase_seconds']:.1f}"] for r in rows_out])
    if len(rows_out) >= 2:
        a, b = rows_out[0], rows_out[1]
        report.say(f"\n{b['batching']} vs {a['batching']}: "
                   f"{b['train_tokens_per_second'] / a['train_tokens_per_second']:.2f}x tokens/s best-of, "
                   f"{b['tokens_per_second_median'] / a['tokens_per_second_median']:.2f}x median; padding "
                   f"{100 * a['padding_fraction']:.1f}% -> {100 * b['padding_fraction']:.1f}% (alone worth "
                   f"{(1 - b['padding_fraction']) / (1 - a['padding_fraction']):.2f}x at equal compute per token)")
    report.say(f"\nsimulated padding fraction, batch {batch_size}:")
    this_set = f"this set (N={len(rows)}, mega-batch {sim['megabatch_size']})"
    resampled = f"resampled N={PAPER_N} (mega-batch {sim_paper['megabatch_size']})"
    report.say(f"{'sampler':<22} {this_set:>36} {resampled:>36}")
    for k in ("padded", "group_by_length", "sorted (lower bound)"):
        report.say(f"{k:<22} {100 * sim[k]['mean']:>29.1f}% ± {100 * sim[k]['sd']:3.1f} "
              f"{100 * sim_paper[k]['mean']:>29.1f}% ± {100 * sim_paper[k]['sd']:3.1f}")
    d = describe(proxy_lens["train"])
    report.say(f"\nproxy, GSM8K reference solutions ({len(proxy_lens['train'])} shipped, student tokenizer, "
               f"cut at {max_length}): tokens min {d['min']} / median {d['median']:.0f} / max {d['max']}, "
               f"{sum(f > max_length for f in proxy_lens['full'])} cut")
    this_set = f"N={len(proxy_lens['train'])} (mega-batch {sim_proxy['megabatch_size']})"
    resampled = f"resampled N={PAPER_N} (mega-batch {sim_proxy_paper['megabatch_size']})"
    report.say(f"{'sampler':<22} {this_set:>36} {resampled:>36}")
    for k in ("padded", "group_by_length", "sorted (lower bound)"):
        report.say(f"{k:<22} {100 * sim_proxy[k]['mean']:>29.1f}% ± {100 * sim_proxy[k]['sd']:3.1f} "
              f"{100 * sim_proxy_paper[k]['mean']:>29.1f}% ± {100 * sim_proxy_paper[k]['sd']:3.1f}")
    tokens_match = all(abs(r["train_tokens"] - sum(lens["train"]) * args.epochs) < 0.5
                       for rs in runs.values() for r in rs)
    report.say(f"\ncross-check: measured train_tokens {'==' if tokens_match else '!='} analytic "
          f"{sum(lens['train']) * args.epochs:g} per run")
    if refusal is not None:
        report.say(f"batching=padding_free: {'refused' if refusal['refused'] else 'NOT refused'} "
              f"({refusal.get('error', '-')}) after {refusal['seconds_to_refusal']:.1f} s: {refusal['message']}")
        if refusal["runs_left_behind"]:
            report.say("  left in the tracking store: "
                       + ", ".join(r["run_id"] + " " + r["status"] for r in refusal["runs_left_behind"]))

    report.note_load(args.repeats)
    report.write({
        "n_train": len(rows), "batch_size": batch_size, "max_length": max_length,
        "teacher_output_tokens": teacher_tokens, "teacher_stopped_at_eos": stopped,
        "lengths": {k: describe(v) for k, v in lens.items()}, "lengths_raw": lens, "n_cut": n_cut,
        "simulated_padding": sim, "simulated_padding_paper_scale": sim_paper,
        "proxy_gsm8k_reference": {"lengths": {k: describe(v) for k, v in proxy_lens.items()},
                                  "simulated_padding": sim_proxy, "simulated_padding_paper_scale": sim_proxy_paper},
        "train_tokens_match_analytic": tokens_match,
        "rows": rows_out, "runs": runs, "padding_free": refusal,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
