"""Overhead of the `teacher` phase over raw batched generation of the same prompts (offline tiny teacher).

Set-up (not timed): a temp folder with a fresh sqlite tracking store (`MLFLOW_TRACKING_URI=sqlite:///<tmp>/mlflow.db`,
the process chdirs there), one `translate` run of the offline preset (`--limit` GSM8K train questions; 256 are shipped).

Timed, interleaved per repeat (raw, phase shard A, phase shard B, raw, ...), best (shortest) of `--repeats` reported:
- raw: `make_generator("transformers", tiny_model_dir("tiny:teacher-7b"))` (load counted) and one
  `gen.generate([chat_messages(q["question_ja"]) ...], GenerationConfig(max_new_tokens=M, batch_size=16))` over
  the translate run's `translations.jsonl`, exactly the prompts the phase sends.
- phase: `distill.phases.teacher.run(TeacherParams(teacher="7B", preset="offline", max_new_tokens=M, reuse=False,
  shard_size=S))` end-to-end, in-process.

overhead = phase_seconds / raw_seconds - 1 (goal: < 10%). Tokens are `Generation.n_tokens` (the records'
`output_tokens`), the same in both when the outputs agree (checked: the phase's answers against the raw outputs).

The split of the phase's time is measured from outside, by wrapping (monkeypatching, nothing in distill/ edited) the
functions the phase calls: run set-up (find the translate run and read its questions, start the run and log its
params, log the dataset input, look for unfinished tries), model load (`open_generator`), generation (the
generator's `generate`), scoring (the rest of the phase's `work`: answer extraction and record building), shard
upload (`shards.log_shard`), final logging (`tracking.log_records`, split into the JSONL artifact and
`mlflow.log_table`; the bootstrap CI; `mlflow.log_metrics`; ending the run) and whatever is left ("other").

A raw pass chunked like each smaller shard size (one `generate` call per chunk of S questions, as the phase makes)
separates the cost of chunking itself (the backend sorts prompts by length only within one call) from the phase's
bookkeeping. Besides best-of figures, the median over repeats of phase / raw of the same repeat is reported (both
see the same background load), and the phase's non-generation time, which is free of generation-speed noise.

The tiny model is so fast that fixed costs dominate unless generation is long: the defaults (256 questions x 640
new tokens, most rows run to the limit) give ~20-25 s of generation per pass on 2 quiet CPU cores.

    python bench/teacher_overhead.py                                   # 256 x 640, shards 256 and 32, 2 repeats (~4 min)
    python bench/teacher_overhead.py --limit 128 --max-new-tokens 128 --shard-sizes 256 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from _common import OUT_DIR, ROOT, log, now, temp_tracking_store  # noqa: E402  (sets the offline environment first)
TEACHER = "7B"
TEACHER_SPEC = "tiny:teacher-7b"
GOAL_OVERHEAD = 0.10
SPLIT = ["setup", "model_load", "generation", "scoring", "shard_upload", "log_records_jsonl", "log_records_table",
         "metrics_and_ci", "run_end", "other"]


# --------------------------------------------------------------------------- instrumentation


class Timers:
    """Seconds per bucket, filled by wrappers around the functions the phase calls."""

    def __init__(self):
        self.t: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, bucket: str, seconds: float) -> None:
        self.t[bucket] += seconds
        self.calls[bucket] += 1

    @contextlib.contextmanager
    def time(self, bucket: str):
        t0 = now()
        try:
            yield
        finally:
            self.add(bucket, now() - t0)


@contextlib.contextmanager
def instrumented(timers: Timers, captured: dict):
    """Wrap what `distill.phases.teacher.run` calls; restore everything afterwards."""
    import mlflow

    from distill import claims, shards, tracking
    from distill.phases import teacher

    patches = []

    def patch(obj, name, new):
        patches.append((obj, name, getattr(obj, name)))
        setattr(obj, name, new)

    orig_open = teacher.open_generator

    def open_generator(*a, **k):
        with timers.time("model_load"):
            gen = orig_open(*a, **k)
        orig_generate = gen.generate

        def generate(*ga, **gk):
            with timers.time("generation"):
                return orig_generate(*ga, **gk)

        gen.generate = generate  # instance attribute: only this generator is wrapped
        return gen

    patch(teacher, "open_generator", open_generator)

    orig_run_sharded = shards.run_sharded

    def run_sharded(items, work, *a, **k):
        def timed_work(chunk):
            with timers.time("work"):
                return work(chunk)

        with timers.time("run_sharded"):
            records, reused = orig_run_sharded(items, timed_work, *a, **k)
        captured["records"] = records
        return records, reused

    patch(shards, "run_sharded", run_sharded)

    orig_log_shard = shards.log_shard

    def log_shard(records, index):
        with timers.time("shard_upload"):
            return orig_log_shard(records, index)

    patch(shards, "log_shard", log_shard)  # run_sharded looks it up as a module global

    orig_log_records = tracking.log_records

    def log_records(records, name):
        with timers.time("log_records"):
            return orig_log_records(records, name)

    patch(tracking, "log_records", log_records)

    orig_log_table = mlflow.log_table

    def log_table(*a, **k):
        with timers.time("log_records_table"):
            return orig_log_table(*a, **k)

    patch(mlflow, "log_table", log_table)  # log_records does `import mlflow; mlflow.log_table(...)`

    for module, name, bucket in ((tracking, "require_run", "setup"), (tracking, "read_jsonl_artifact", "setup"),
                                 (tracking, "log_dataset", "setup"), (claims, "find_unfinished", "setup")):
        orig = getattr(module, name)

        def wrapped(*a, _orig=orig, _bucket=bucket, **k):
            with timers.time(_bucket):
                return _orig(*a, **k)

        patch(module, name, wrapped)

    orig_ci = teacher.accuracy_with_ci

    def accuracy_with_ci(*a, **k):
        with timers.time("metrics_and_ci"):
            return orig_ci(*a, **k)

    patch(teacher, "accuracy_with_ci", accuracy_with_ci)

    orig_log_metrics = mlflow.log_metrics

    def log_metrics(*a, **k):
        with timers.time("metrics_and_ci"):
            return orig_log_metrics(*a, **k)

    patch(mlflow, "log_metrics", log_metrics)

    orig_phase_run = tracking.phase_run

    @contextlib.contextmanager
    def phase_run(*a, **k):
        cm = orig_phase_run(*a, **k)
        with timers.time("setup"):  # cache key, reuse lookup, start_run, log_params_merged
            pr = cm.__enter__()
        try:
            yield pr
        except BaseException as e:
            with timers.time("run_end"):
                if not cm.__exit__(type(e), e, e.__traceback__):
                    raise
        else:
            with timers.time("run_end"):
                cm.__exit__(None, None, None)

    patch(tracking, "phase_run", phase_run)
    try:
        yield
    finally:
        for obj, name, orig in reversed(patches):
            setattr(obj, name, orig)


def split_of(timers: Timers, total: float) -> dict[str, float]:
    t = timers.t
    s = {
        "setup": t["setup"],
        "model_load": t["model_load"],
        "generation": t["generation"],
        "scoring": t["work"] - t["model_load"] - t["generation"],
        "shard_upload": t["shard_upload"],
        "log_records_jsonl": t["log_records"] - t["log_records_table"],
        "log_records_table": t["log_records_table"],
        "metrics_and_ci": t["metrics_and_ci"],
        "run_end": t["run_end"],
    }
    s["other"] = total - sum(s.values())
    return s


# --------------------------------------------------------------------------- passes


def raw_pass(questions: list[dict], max_new_tokens: int, batch_size: int, chunk: int | None = None) -> dict:
    """Load the model and generate; with `chunk`, one `generate` call per chunk of questions, as the phase's
    shards do (the backend sorts prompts by length, and so groups them into batches, only within one call)."""
    from distill.generation import GenerationConfig, make_generator
    from distill.prompts import chat_messages
    from distill.tiny import tiny_model_dir

    cpu0, t0 = time.process_time(), now()
    gen = make_generator("transformers", str(tiny_model_dir(TEACHER_SPEC)))
    t_load = now() - t0
    prompts = [chat_messages(q["question_ja"]) for q in questions]
    t1 = now()
    config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    step = chunk or len(prompts)
    outs = [o for i in range(0, len(prompts), step) for o in gen.generate(prompts[i:i + step], config)]
    t_gen = now() - t1
    total = now() - t0
    return {"seconds": total, "cpu_seconds": time.process_time() - cpu0, "model_load": t_load, "generation": t_gen,
            "tokens": sum(o.n_tokens for o in outs), "finished_by_length": sum(o.finish_reason == "length" for o in outs),
            "outputs": {q["id"]: (o.text, o.n_tokens, o.finish_reason) for q, o in zip(questions, outs)}}


def phase_pass(max_new_tokens: int, shard_size: int) -> dict:
    import mlflow

    from distill.phases.teacher import TeacherParams, run

    timers, captured = Timers(), {}
    cpu0, t0 = time.process_time(), now()
    with instrumented(timers, captured):
        run_id = run(TeacherParams(teacher=TEACHER, preset="offline", max_new_tokens=max_new_tokens, reuse=False,
                                   shard_size=shard_size))
    total = now() - t0
    cpu = time.process_time() - cpu0
    records = captured["records"]
    artifacts = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="shards")]
    return {"run_id": run_id, "seconds": total, "cpu_seconds": cpu, "split": split_of(timers, total),
            "calls": dict(timers.calls), "tokens": sum(r["output_tokens"] for r in records),
            "finished_by_length": sum(r["finish_reason"] == "length" for r in records), "n_shards": len(artifacts),
            "outputs": {r["id"]: (r["output"], r["output_tokens"], r["finish_reason"]) for r in records}}


def mismatches(ref: dict, got: dict) -> int:
    return sum(ref[k] != got.get(k) for k in ref)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=256, help="questions translated and answered (default 256, all shipped)")
    ap.add_argument("--max-new-tokens", type=int, default=640, help="teacher max_new_tokens (default 640)")
    ap.add_argument("--batch-size", type=int, default=16, help="generation batch size (default 16, the preset's)")
    ap.add_argument("--shard-sizes", default="256,32", help="comma-separated shard sizes for the phase (default 256,32)")
    ap.add_argument("--no-raw-chunked", dest="raw_chunked", action="store_false",
                    help="skip the raw passes chunked like the smaller shard sizes")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per configuration; best reported (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (tracking store) for inspection")
    ap.add_argument("--out", type=Path, default=None, help="JSON result (default bench/out/teacher_overhead-<time>.json)")
    args = ap.parse_args(argv)
    shard_sizes = [int(s) for s in args.shard_sizes.split(",")]

    started = datetime.now(timezone.utc)
    t_all = now()
    load_before = os.getloadavg()
    with temp_tracking_store("teacher-overhead-", keep=args.keep):
        import mlflow
        import torch
        import transformers

        torch.set_num_threads(args.threads)
        from distill import tracking
        from distill.generation import GenerationConfig, make_generator
        from distill.prompts import chat_messages
        from distill.tiny import tiny_model_dir
        from distill.phases.translate import TranslateParams
        from distill.phases.translate import run as translate_run

        log(f"tracking store {mlflow.get_tracking_uri()}; load average {load_before[0]:.2f}")
        t = now()
        translation_run = translate_run(TranslateParams(preset="offline", limit=args.limit))
        questions = tracking.read_jsonl_artifact(translation_run, "translations.jsonl")
        log(f"translate run {translation_run}: {len(questions)} questions in {now() - t:.1f} s (set-up, not timed)")

        # Warm-up (torch kernels, tokenizer, lazy imports of the MLflow logging path): one short generation and one
        # throwaway phase run with 8 new tokens, so the first timed pass pays no one-off costs.
        t = now()
        gen = make_generator("transformers", str(tiny_model_dir(TEACHER_SPEC)))
        prompts = [chat_messages(q["question_ja"]) for q in questions]
        lengths = [len(gen.tokenizer(text, add_special_tokens=special).input_ids) for text, special in map(gen.render, prompts)]
        gen.generate(prompts[:args.batch_size], GenerationConfig(max_new_tokens=8, batch_size=args.batch_size), progress=False)
        del gen
        phase_pass(8, max(shard_sizes))
        log(f"warm-up {now() - t:.1f} s; prompt tokens {min(lengths)}-{max(lengths)} (median {sorted(lengths)[len(lengths) // 2]})")

        # raw passes: one generate call over everything, and (if asked) one call per chunk of each smaller shard size
        chunked = [s for s in shard_sizes if s < len(questions)] if args.raw_chunked else []
        raws, raw_chunks, phases = [], {s: [] for s in chunked}, {s: [] for s in shard_sizes}
        for r in range(args.repeats):
            for c in [None, *chunked]:
                res = raw_pass(questions, args.max_new_tokens, args.batch_size, chunk=c)
                (raw_chunks[c] if c else raws).append(res)
                log(f"repeat {r + 1}/{args.repeats} raw {'chunks ' + str(c) if c else 'all':>10}: {res['tokens']} tokens "
                    f"in {res['seconds']:.2f} s = {res['tokens'] / res['seconds']:.0f} tok/s (load {res['model_load']:.2f} s, "
                    f"generate {res['generation']:.2f} s; cpu/wall {res['cpu_seconds'] / res['seconds']:.2f}, "
                    f"load avg {os.getloadavg()[0]:.2f})")
            for s in shard_sizes:
                res = phase_pass(args.max_new_tokens, s)
                phases[s].append(res)
                sp = res["split"]
                log(f"repeat {r + 1}/{args.repeats} phase shard {s:>4}: {res['tokens']} tokens in {res['seconds']:.2f} s = "
                    f"{res['tokens'] / res['seconds']:.0f} tok/s (generate {sp['generation']:.2f} s, non-generation "
                    f"{res['seconds'] - sp['generation']:.2f} s, {res['n_shards']} shards; cpu/wall "
                    f"{res['cpu_seconds'] / res['seconds']:.2f}, load avg {os.getloadavg()[0]:.2f})")

    # ---- summarise: best (shortest) pass per configuration
    raw = min(raws, key=lambda x: x["seconds"])
    rows = [{"config": "raw generate", "shard_size": None, "seconds_best": raw["seconds"],
             "seconds_all": [x["seconds"] for x in raws], "tokens": raw["tokens"],
             "tokens_per_s": raw["tokens"] / raw["seconds"], "model_load": raw["model_load"],
             "generation": raw["generation"], "non_generation": raw["seconds"] - raw["generation"],
             "finished_by_length": raw["finished_by_length"], "overhead": 0.0}]
    for c in chunked:
        best = min(raw_chunks[c], key=lambda x: x["seconds"])
        rows.append({"config": f"raw generate, chunks of {c}", "shard_size": None, "chunk": c,
                     "seconds_best": best["seconds"], "seconds_all": [x["seconds"] for x in raw_chunks[c]],
                     "tokens": best["tokens"], "tokens_per_s": best["tokens"] / best["seconds"],
                     "model_load": best["model_load"], "generation": best["generation"],
                     "non_generation": best["seconds"] - best["generation"],
                     "finished_by_length": best["finished_by_length"], "overhead": best["seconds"] / raw["seconds"] - 1,
                     "output_mismatches_vs_raw": mismatches(raw["outputs"], best["outputs"])})
    for s in shard_sizes:
        best = min(phases[s], key=lambda x: x["seconds"])
        rows.append({
            "config": f"teacher phase, shard_size={s}", "shard_size": s, "seconds_best": best["seconds"],
            "seconds_all": [x["seconds"] for x in phases[s]], "tokens": best["tokens"],
            "tokens_per_s": best["tokens"] / best["seconds"], "model_load": best["split"]["model_load"],
            "generation": best["split"]["generation"], "non_generation": best["seconds"] - best["split"]["generation"],
            "finished_by_length": best["finished_by_length"], "n_shards": best["n_shards"],
            "overhead": best["seconds"] / raw["seconds"] - 1,
            # interleaved pairs (raw and phase of the same repeat) see the same background load
            "overhead_paired_median": statistics.median(p["seconds"] / q["seconds"] - 1 for p, q in zip(phases[s], raws)),
            # against raw generation chunked the same way: the bookkeeping alone, chunking's cost removed
            "overhead_vs_raw_same_chunks": (best["seconds"] / min(x["seconds"] for x in raw_chunks[s]) - 1
                                            if s in raw_chunks else best["seconds"] / raw["seconds"] - 1),
            # the phase's own cost, free of run-to-run noise in generation speed: its non-generation time beyond
            # the raw path's (model load), relative to the raw pass
            "overhead_excluding_generation_noise": ((best["seconds"] - best["split"]["generation"])
                                                    - (raw["seconds"] - raw["generation"])) / raw["seconds"],
            "split": best["split"], "calls": best["calls"],
            "output_mismatches_vs_raw": mismatches(raw["outputs"], best["outputs"]),
            "run_id": best["run_id"],
        })

    print()
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    head = (f"{'config':<30} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'load':>5} {'generate':>8} {'non-gen':>7} "
            f"{'overhead':>8} {'paired':>7} {'same-chunk':>10} {'non-gen':>7}  outputs vs raw")
    print(head)
    print("-" * len(head))
    for row in rows:
        phase = row["shard_size"] is not None
        same = "identical" if row.get("output_mismatches_vs_raw", 0) == 0 else f"{row['output_mismatches_vs_raw']} differ"
        print(f"{row['config']:<30} {row['tokens']:>7} {row['seconds_best']:>8.2f} {row['tokens_per_s']:>7.0f} "
              f"{row['model_load']:>5.2f} {row['generation']:>8.2f} {row['non_generation']:>7.2f} "
              f"{pct(row['overhead']) if row.get('chunk') or phase else '-':>8} "
              f"{pct(row['overhead_paired_median']) if phase else '-':>7} "
              f"{pct(row['overhead_vs_raw_same_chunks']) if phase else '-':>10} "
              f"{pct(row['overhead_excluding_generation_noise']) if phase else '-':>7}  "
              + (same if (phase or row.get("chunk")) else "-"))
    print("overhead: best phase / best raw (all) - 1; paired: median over repeats of phase / raw of the same repeat - 1;\n"
          "same-chunk: against raw generation chunked like the shards; non-gen: the phase's time outside generate, less\n"
          "raw's model load, over the raw pass (the phase's bookkeeping, free of generation-speed noise)")
    print()
    print("phase time split (seconds, best pass):")
    head = f"{'bucket':<20}" + "".join(f" {'shard ' + str(s):>13}" for s in shard_sizes)
    print(head)
    print("-" * len(head))
    phase_rows = [r for r in rows if r["shard_size"] is not None]
    for b in SPLIT:
        print(f"{b:<20}" + "".join(f" {r['split'][b]:>7.2f} {100 * r['split'][b] / r['seconds_best']:>4.1f}%"
                                   for r in phase_rows))
    print(f"{'total':<20}" + "".join(f" {r['seconds_best']:>7.2f}      " for r in phase_rows))
    print(f"{'shards written':<20}" + "".join(f" {r['n_shards']:>7}      " for r in phase_rows))
    print(f"{'raw: load + generate':<20} {raw['model_load']:.3f} + {raw['generation']:.3f} = {raw['seconds']:.3f}")
    print()
    ok_all = True
    for row in phase_rows:
        goal = max(row["overhead"], row["overhead_paired_median"]) < GOAL_OVERHEAD
        ok_all &= goal
        print(f"shard_size {row['shard_size']}: overhead {100 * row['overhead']:.1f}% best-of, "
              f"{100 * row['overhead_paired_median']:.1f}% paired ({'meets' if goal else 'MISSES'} the "
              f"{100 * GOAL_OVERHEAD:.0f}% goal); non-generation work alone "
              f"{100 * row['overhead_excluding_generation_noise']:.1f}% of the raw pass; outputs "
              + ("identical to raw" if row["output_mismatches_vs_raw"] == 0
                 else f"DIFFER from raw for {row['output_mismatches_vs_raw']} of {len(raw['outputs'])}"))

    load_after = os.getloadavg()
    if max(load_before[0], load_after[0]) > 0.5:
        print(f"\nnote: 1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; figures are "
              f"best-of-{args.repeats}.")
    total = now() - t_all
    out = args.out or OUT_DIR / f"teacher_overhead-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for x in [*raws, *(p for ps in [*raw_chunks.values(), *phases.values()] for p in ps)]:
        x.pop("outputs", None)
    payload = {
        "started_utc": started.isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "goal_overhead": GOAL_OVERHEAD,
        "goal_met": ok_all,
        "prompt_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "mlflow": mlflow.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "loadavg_before": load_before, "loadavg_after": load_after,
        },
        "total_seconds": total,
        "rows": rows,
        "passes": {"raw": raws, **{f"raw_chunks{c}": raw_chunks[c] for c in chunked},
                   **{f"phase_shard{s}": phases[s] for s in shard_sizes}},
    }
    out.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}  (total {total:.0f} s)")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
