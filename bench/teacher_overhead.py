"""Overhead of the `teacher` phase over raw batched generation of the same prompts (offline tiny teacher).

Set-up (not timed): a temp folder with a fresh sqlite tracking store
(`MLFLOW_TRACKING_URI=sqlite:///<tmp>/mlflow.db`, the process chdirs there), one `translate` run of the offline
preset (`--limit` GSM8K train questions; 256 are shipped).

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
upload (`shards.log_shard`), final logging (`phase_runs.log_records`, split into the JSONL artifact and
`mlflow.log_table`; the bootstrap CI; `mlflow.log_metrics`; ending the run) and whatever is left ("other").
Only public names are wrapped (`options.open_generator`, `shards.run_sharded`, `phase_runs.phase_run`, ...): a
name the phase no longer calls fails the check (`--dry` runs in CI) instead of measuring nothing.

A raw pass chunked like each smaller shard size (one `generate` call per chunk of S questions, as the phase makes)
separates the cost of chunking itself (the backend sorts prompts by length only within one call) from the phase's
bookkeeping. Besides best-of figures, the median over repeats of phase / raw of the same repeat is reported (both
see the same background load), and the phase's non-generation time, which is free of generation-speed noise.

The tiny model is so fast that fixed costs dominate unless generation is long: the defaults (256 questions x 640
new tokens, most rows run to the limit) give ~20-25 s of generation per pass on 2 quiet CPU cores.

    python bench/teacher_overhead.py                                 # 256 x 640, shards 256 and 32, 2 repeats (~4 min)
    python bench/teacher_overhead.py --limit 128 --max-new-tokens 128 --shard-sizes 256 --repeats 1  # quick
    python bench/teacher_overhead.py --dry                           # 4 x 4, shards 4 and 2, 1 repeat (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections import defaultdict

from _common import log, now, temp_tracking_store  # noqa: E402  (sets the offline environment first)
from results import Results, add_common_args

TEACHER = "7B"
TEACHER_SPEC = "tiny:teacher-7b"
GOAL_OVERHEAD = 0.10
SPLIT = ["setup", "model_load", "generation", "scoring", "shard_upload", "log_records_jsonl", "log_records_table",
         "metrics_and_ci", "run_end", "other"]
DRY = {"limit": 4, "max_new_tokens": 4, "shard_sizes": "4,2", "repeats": 1}  # and no warm-up phase run


# --------------------------------------------------------------------------- instrumentation


class Timers:
    """Seconds per bucket, filled by wrappers around the functions the phase calls."""

    def __init__(self):
        self.t: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def time(self, bucket: str):
        t0 = now()
        try:
            yield
        finally:
            self.t[bucket] += now() - t0
            self.calls[bucket] += 1


@contextlib.contextmanager
def instrumented(timers: Timers, captured: dict):
    """Wrap the public functions `distill.phases.teacher.run` calls; restore everything afterwards."""
    import mlflow

    from distill.generation import options
    from distill.phases import teacher
    from distill.tracking import phase_runs, shards

    patches = []

    def patch(obj, name, new):
        if not hasattr(obj, name):  # the phase's calls changed: say so instead of timing nothing
            raise SystemExit(f"teacher_overhead: {obj.__name__}.{name} is gone; update the instrumentation")
        patches.append((obj, name, getattr(obj, name)))
        setattr(obj, name, new)

    def timed(obj, name, bucket):
        orig = getattr(obj, name, None)

        def wrapped(*a, **k):
            with timers.time(bucket):
                return orig(*a, **k)

        patch(obj, name, wrapped)

    orig_open = options.open_generator

    def open_generator(*a, **k):
        with timers.time("model_load"):
            gen = orig_open(*a, **k)
        orig_generate = gen.generate

        def generate(*ga, **gk):
            with timers.time("generation"):
                return orig_generate(*ga, **gk)

        gen.generate = generate  # instance attribute: only this generator is wrapped
        return gen

    patch(options, "open_generator", open_generator)  # lazy_generate looks it up as a module global
    orig_run_sharded = shards.run_sharded

    def run_sharded(items, work, *a, **k):
        def timed_work(chunk):
            with timers.time("work"):
                return work(chunk)

        records, reused = orig_run_sharded(items, timed_work, *a, **k)
        captured["records"] = records
        return records, reused

    patch(shards, "run_sharded", run_sharded)
    timed(shards, "log_shard", "shard_upload")  # run_sharded looks it up as a module global
    timed(phase_runs, "log_records", "log_records")
    timed(mlflow, "log_table", "log_records_table")  # log_records does `import mlflow; mlflow.log_table(...)`
    for name in ("require_run", "read_jsonl_artifact", "log_dataset", "earlier_tries"):
        timed(phase_runs, name, "setup")
    timed(teacher, "accuracy_with_ci", "metrics_and_ci")
    timed(mlflow, "log_metrics", "metrics_and_ci")
    orig_phase_run = phase_runs.phase_run

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

    patch(phase_runs, "phase_run", phase_run)
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
    from distill.data.prompts import chat_messages
    from distill.generation import GenerationConfig, make_generator
    from distill.local_models.tiny import tiny_model_dir

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
            "tokens": sum(o.n_tokens for o in outs),
            "finished_by_length": sum(o.finish_reason == "length" for o in outs),
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=256,
                    help="questions translated and answered (default 256, all shipped)")
    ap.add_argument("--max-new-tokens", type=int, default=640, help="teacher max_new_tokens (default 640)")
    ap.add_argument("--batch-size", type=int, default=16, help="generation batch size (default 16, the preset's)")
    ap.add_argument("--shard-sizes", default="256,32",
                    help="comma-separated shard sizes for the phase (default 256,32)")
    ap.add_argument("--no-raw-chunked", dest="raw_chunked", action="store_false",
                    help="skip the raw passes chunked like the smaller shard sizes")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per configuration; best reported (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (tracking store) for inspection")
    add_common_args(ap, "teacher_overhead")
    args = ap.parse_args(argv)
    if args.dry:
        ap.set_defaults(**DRY)
        args = ap.parse_args(argv)
    shard_sizes = [int(s) for s in args.shard_sizes.split(",")]
    report = Results("teacher_overhead", args)

    with temp_tracking_store("teacher-overhead-", keep=args.keep):
        import mlflow
        import torch

        torch.set_num_threads(args.threads)
        from distill.data.prompts import chat_messages
        from distill.generation import GenerationConfig, make_generator
        from distill.local_models.tiny import tiny_model_dir
        from distill.phases.translate import TranslateParams, run as translate_run
        from distill.tracking import phase_runs

        log(f"tracking store {mlflow.get_tracking_uri()}; load average {report.load_before[0]:.2f}")
        t = now()
        translation_run = translate_run(TranslateParams(preset="offline", limit=args.limit))
        questions = phase_runs.read_jsonl_artifact(translation_run, "translations.jsonl")
        log(f"translate run {translation_run}: {len(questions)} questions in {now() - t:.1f} s (set-up, not timed)")

        # Warm-up (torch kernels, tokenizer, lazy imports of the MLflow logging path): one short generation and one
        # throwaway phase run with 8 new tokens, so the first timed pass pays no one-off costs.
        t = now()
        gen = make_generator("transformers", str(tiny_model_dir(TEACHER_SPEC)))
        prompts = [chat_messages(q["question_ja"]) for q in questions]
        lengths = [len(gen.tokenizer(text, add_special_tokens=special).input_ids)
                   for text, special in map(gen.render, prompts)]
        gen.generate(prompts[:args.batch_size], GenerationConfig(max_new_tokens=8, batch_size=args.batch_size),
                     progress=False)
        del gen
        if not args.dry:
            phase_pass(8, max(shard_sizes))
        log(f"warm-up {now() - t:.1f} s; prompt tokens {min(lengths)}-{max(lengths)} "
            f"(median {sorted(lengths)[len(lengths) // 2]})")

        # raw passes: one generate call over everything, and (if asked) one call per chunk of each smaller shard size
        chunked = [s for s in shard_sizes if s < len(questions)] if args.raw_chunked else []
        raws, raw_chunks, phases = [], {s: [] for s in chunked}, {s: [] for s in shard_sizes}
        for r in range(args.repeats):
            for c in [None, *chunked]:
                x = raw_pass(questions, args.max_new_tokens, args.batch_size, chunk=c)
                (raw_chunks[c] if c else raws).append(x)
                log(f"repeat {r + 1}/{args.repeats} raw {'chunks ' + str(c) if c else 'all':>10}: "
                    f"{x['tokens']} tokens in {x['seconds']:.2f} s = {x['tokens'] / x['seconds']:.0f} tok/s "
                    f"(load {x['model_load']:.2f} s, "
                    f"generate {x['generation']:.2f} s; cpu/wall {x['cpu_seconds'] / x['seconds']:.2f}, "
                    f"load avg {os.getloadavg()[0]:.2f})")
            for s in shard_sizes:
                x = phase_pass(args.max_new_tokens, s)
                phases[s].append(x)
                log(f"repeat {r + 1}/{args.repeats} phase shard {s:>4}: {x['tokens']} tokens in "
                    f"{x['seconds']:.2f} s = {x['tokens'] / x['seconds']:.0f} tok/s "
                    f"(generate {x['split']['generation']:.2f} s, non-generation "
                    f"{x['seconds'] - x['split']['generation']:.2f} s, {x['n_shards']} shards; cpu/wall "
                    f"{x['cpu_seconds'] / x['seconds']:.2f}, load avg {os.getloadavg()[0]:.2f})")

    # ---- summarise: best (shortest) pass per configuration
    raw = min(raws, key=lambda x: x["seconds"])

    def row_of(config: str, best: dict, passes: list[dict], generation: float, **extra) -> dict:
        return {"config": config, "seconds_best": best["seconds"], "seconds_all": [x["seconds"] for x in passes],
                "tokens": best["tokens"], "tokens_per_s": best["tokens"] / best["seconds"], "generation": generation,
                "non_generation": best["seconds"] - generation, "finished_by_length": best["finished_by_length"],
                "overhead": best["seconds"] / raw["seconds"] - 1,
                "output_mismatches_vs_raw": mismatches(raw["outputs"], best["outputs"]), **extra}

    rows = [row_of("raw generate", raw, raws, raw["generation"], shard_size=None, model_load=raw["model_load"])]
    for c in chunked:
        best = min(raw_chunks[c], key=lambda x: x["seconds"])
        rows.append(row_of(f"raw generate, chunks of {c}", best, raw_chunks[c], best["generation"], shard_size=None,
                           chunk=c, model_load=best["model_load"]))
    for s in shard_sizes:
        best = min(phases[s], key=lambda x: x["seconds"])
        gen_s = best["split"]["generation"]
        rows.append(row_of(
            f"teacher phase, shard_size={s}", best, phases[s], gen_s, shard_size=s,
            model_load=best["split"]["model_load"], n_shards=best["n_shards"],
            # interleaved pairs (raw and phase of the same repeat) see the same background load
            overhead_paired_median=statistics.median(p["seconds"] / q["seconds"] - 1 for p, q in zip(phases[s], raws)),
            # against raw generation chunked the same way: the bookkeeping alone, chunking's cost removed
            overhead_vs_raw_same_chunks=(best["seconds"] / min(x["seconds"] for x in raw_chunks[s]) - 1
                                         if s in raw_chunks else best["seconds"] / raw["seconds"] - 1),
            # the phase's own cost, free of run-to-run noise in generation speed: its non-generation time beyond
            # the raw path's (model load), relative to the raw pass
            overhead_excluding_generation_noise=((best["seconds"] - gen_s) - (raw["seconds"] - raw["generation"]))
            / raw["seconds"],
            split=best["split"], calls=best["calls"], run_id=best["run_id"]))

    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    phase_rows = [r for r in rows if r["shard_size"] is not None]
    report.table(["config", "tokens", "seconds", "tok/s", "load", "generate", "non-gen", "overhead", "paired",
                  "same-chunk", "non-gen %", "outputs vs raw"],
                 [[r["config"], r["tokens"], f"{r['seconds_best']:.2f}", f"{r['tokens_per_s']:.0f}",
                   f"{r['model_load']:.2f}", f"{r['generation']:.2f}", f"{r['non_generation']:.2f}",
                   pct(r["overhead"]) if r is not rows[0] else "-",
                   *((pct(r["overhead_paired_median"]), pct(r["overhead_vs_raw_same_chunks"]),
                      pct(r["overhead_excluding_generation_noise"])) if r["shard_size"] else ("-", "-", "-")),
                   "-" if r is rows[0] else ("identical" if r["output_mismatches_vs_raw"] == 0
                                             else f"{r['output_mismatches_vs_raw']} differ")]
                  for r in rows])
    report.say("overhead: best phase / best raw (all) - 1; paired: median over repeats of phase / raw of the same "
               "repeat - 1; same-chunk: against raw generation chunked like the shards; non-gen %: the phase's time "
               "outside generate, less raw's model load, over the raw pass (the phase's bookkeeping, free of "
               "generation-speed noise)")
    report.table(["bucket", *(f"shard {r['shard_size']}" for r in phase_rows)],
                 [*([b, *(f"{r['split'][b]:.2f} {100 * r['split'][b] / r['seconds_best']:.1f}%" for r in phase_rows)]
                    for b in SPLIT),
                  ["total", *(f"{r['seconds_best']:.2f}" for r in phase_rows)],
                  ["shards written", *(r["n_shards"] for r in phase_rows)]],
                 title="phase time split (seconds, best pass):")
    report.say(f"raw: load + generate {raw['model_load']:.3f} + {raw['generation']:.3f} = {raw['seconds']:.3f}")
    ok_all = True
    for row in phase_rows:
        goal = max(row["overhead"], row["overhead_paired_median"]) < GOAL_OVERHEAD
        ok_all &= goal
        report.say(f"shard_size {row['shard_size']}: overhead {100 * row['overhead']:.1f}% best-of, "
                   f"{100 * row['overhead_paired_median']:.1f}% paired ({'meets' if goal else 'MISSES'} the "
                   f"{100 * GOAL_OVERHEAD:.0f}% goal); non-generation work alone "
                   f"{100 * row['overhead_excluding_generation_noise']:.1f}% of the raw pass; outputs "
                   + ("identical to raw" if row["output_mismatches_vs_raw"] == 0
                      else f"DIFFER from raw for {row['output_mismatches_vs_raw']} of {len(raw['outputs'])}"))
    report.note_load(args.repeats)
    for x in [*raws, *(p for ps in [*raw_chunks.values(), *phases.values()] for p in ps)]:
        x.pop("outputs", None)
    report.write({"goal_overhead": GOAL_OVERHEAD, "goal_met": ok_all,
                  "prompt_tokens": {"min": min(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)},
                  "rows": rows, "passes": {"raw": raws, **{f"raw_chunks{c}": raw_chunks[c] for c in chunked},
                                           **{f"phase_shard{s}": phases[s] for s in shard_sizes}}}, args.out)
    # a dry run checks that every path runs and the outputs agree; its timings mean nothing
    identical = all(r["output_mismatches_vs_raw"] == 0 for r in phase_rows)
    return 0 if (identical if args.dry else ok_all) else 1


if __name__ == "__main__":
    sys.exit(main())
