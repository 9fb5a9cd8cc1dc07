"""A GPU check, prepared for when a machine is lent: the paper path in miniature (`sft` -> registry ->
`evaluate`), then SFT tokens/s and MFU per batching, plain TRL, generation tokens/s, peak memory.

Needs no network: the model is a Qwen2.5-0.5B-shaped `Qwen2Config` (hidden 896, 24 layers, 14 heads,
2 KV heads, MLP 4864, vocabulary 151,936, tied embeddings: 494M parameters) with random weights and the
tiny BPE tokenizer of `distill.local_models.tiny`; the data are the shipped GSM8K training questions and reference
solutions in the study's prompt format (~330 tokens each, cycled to `--examples`) and the shipped MGSM-ja.

In this order, each through the package's public functions, in a throw-away MLflow store (sqlite):
1. the paper path: `distill.phases.sft.run` with the `paper` preset's settings as they are (bf16, batch 8,
   lr 1e-5, padded, gradient checkpointing; one epoch here), its checkpoint uploaded, the student logged,
   loaded back with `mlflow.transformers.load_model` (on the GPU) and generating, registered (one epoch of
   two is a smoke run: version 1, no alias moves); then `distill.phases.evaluate.run` of `models:/<name>/1`
   with the transformers backend
   on `--eval-limit` MGSM-ja questions (batch 16), which tags the version with its accuracy;
2. `sft` (register=false) for the other batchings and checkpointing settings: `padded` off,
   `group_by_length` on, `padding_free` on (refused, with the phase's message, where FlashAttention is
   missing); plain TRL `SFTTrainer` with its defaults on the same data and model;
3. `distill.generation.hf.TransformersGenerator` (greedy, 256 new tokens) at batch 1, 16 and 64;
4. `group_by_length` and `padding_free` with checkpointing off.
Each records peak GPU memory (`torch.cuda.max_memory_allocated`) beside the estimate of the README's
formula, and whether activations were really recomputed (`gpu_cases.CheckpointingProbe`).

Model FLOPs utilisation = tokens/s x (6 N + 12 L h T) / peak bf16 FLOP/s (PaLM's count: N parameters used
in matmuls, L layers, h hidden, T mean sequence length; recomputation under checkpointing not counted),
on real tokens (padding excluded), steady state (median per-step tokens/s after the first step). The peak
is looked up from the GPU's name (`--peak-tflops` overrides).

    python bench/gpu/gpu_check.py              # one H100/H200: ~5 minutes, writes bench/out/gpu_check-<time>.json
    python bench/gpu/gpu_check.py --dry        # the same code paths on a CPU with a tiny config (CI runs it)

Parts left when `--budget` seconds have passed are recorded as skipped, so a run always ends in time. On a
machine without TRL, MLflow or datasets: bench/gpu/gpu_wheels.py lists and fetches the wheels to carry.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/: _common, results

from _common import log, now, temp_tracking_store  # noqa: E402  (sets the offline environment first)
from gpu_cases import (  # noqa: E402
    DRY,
    QWEN25_05B,
    STUDENT_DIR,
    Gpu,
    build_model,
    failure,
    generation_case,
    paper_path,
    sequence_lengths,
    sft_case,
    training_rows,
    trl_default_case,
)
from gpu_estimates import flops_per_token, generation_memory_estimate, peak_tflops, sft_memory_estimate  # noqa: E402
from results import Results, add_common_args  # noqa: E402

GEN_BATCHES = (1, 16, 64)


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=None, help="training examples (default 1024; dry 16)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default 256; dry 4)")
    ap.add_argument("--eval-limit", type=int, default=None, help="MGSM-ja questions evaluated (default 32; dry 4)")
    ap.add_argument("--eval-max-new-tokens", type=int, default=None,
                    help="evaluate's generation length (default 512; dry 4; the paper 1024)")
    ap.add_argument("--budget", type=float, default=420, help="seconds after which remaining parts are skipped (420)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this GPU (default: by name)")
    add_common_args(ap, "gpu_check")
    args = ap.parse_args(argv)
    for name, full, dry in (("examples", 1024, 16), ("max_new_tokens", 256, 4), ("eval_limit", 32, 4),
                            ("eval_max_new_tokens", 512, 4)):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive integer (got {value})")
        setattr(args, name, value or (dry if args.dry else full))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    gen_prompts = {1: 4, 16: 32, 64: 128} if not args.dry else {1: 2, 16: 16, 64: 64}
    report = Results("gpu_check", args)
    skipped: list[str] = []

    def in_time(what: str) -> bool:
        if now() - report.t0 < args.budget:
            return True
        skipped.append(what)
        log(f"skipped (time budget {args.budget:.0f} s spent): {what}")
        return False

    with temp_tracking_store("gpu-check-") as tmp:
        os.environ["DISTILL_HOME"] = str(tmp / "home")  # the phases' own checkpoint folders, removed with tmp
        import mlflow
        import torch

        from distill.generation.hf import load_tokenizer
        from distill.phases.sft import SftParams

        gpu = Gpu()
        device = torch.cuda.get_device_name() if gpu.cuda else f"cpu ({os.cpu_count()} cores)"
        peak = args.peak_tflops or (peak_tflops(device) if gpu.cuda else None)
        log(f"device {device}; dense bf16 peak {peak or '-'} TFLOP/s; tracking {mlflow.get_tracking_uri()}")
        if not args.dry and not gpu.cuda:
            log("warning: no GPU here; the full-size model on a CPU takes hours (use --dry)")

        t = now()
        model_dir = tmp / STUDENT_DIR  # the working folder is tmp: `student=<folder name>` names the student
        model = build_model(model_dir, DRY if args.dry else QWEN25_05B)
        cfg = model["config"]
        tokenizer = load_tokenizer(str(model_dir))
        rows = training_rows(args.examples)
        lengths = sequence_lengths(rows, tokenizer)
        train_file = tmp / "train.jsonl"
        train_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        mean_seq = statistics.fmean(lengths)
        fpt = flops_per_token(model["n_matmul"], cfg["num_hidden_layers"], cfg["hidden_size"], mean_seq)
        log(f"model {model['n_params'] / 1e6:.1f}M parameters, {args.examples} examples of {min(lengths)}-"
            f"{max(lengths)} tokens (mean {mean_seq:.0f}); set-up {now() - t:.1f} s")

        def sft_params(batching: str, checkpointing: bool, **kw) -> SftParams:
            return SftParams(teacher="7B", student=STUDENT_DIR, preset="paper", train_file=str(train_file),
                             batching=batching, gradient_checkpointing=checkpointing, num_train_epochs=1,
                             bf16="auto", register=False, reuse=False, checkpoints_to_run=False,
                             output_dir=str(tmp / f"ckpt-{batching}-{checkpointing}-{kw.get('limit', 'all')}"), **kw)

        def with_estimate(res: dict) -> dict:
            if res.get("status", "ok") != "ok":
                return res
            # the largest batch: 8 copies of the longest sequence (padded), or the 8 longest (flattened)
            tokens = (sum(sorted(lengths)[-8:]) if res.get("batching") == "padding_free" else 8 * max(lengths))
            est = sft_memory_estimate(model["n_params"], cfg["hidden_size"], cfg["num_hidden_layers"],
                                      cfg["vocab_size"], tokens, bool(res["gradient_checkpointing"]))
            res["estimate_gb"] = est
            res["estimate_tokens_in_largest_batch"] = tokens
            if res.get("peak_allocated_gb"):
                res["measured_over_estimate"] = res["peak_allocated_gb"] / est["allocated"]
            tps = res.get("steady_tokens_per_second") or res.get("train_tokens_per_second") or 0
            res["model_tflops_per_second"] = tps * fpt / 1e12
            res["mfu"] = tps * fpt / (peak * 1e12) if peak else None
            return res

        def say_sft(name: str, res: dict) -> None:
            if res["status"] != "ok":
                log(f"{name}: {res['status']}: {res['message']}")
                return
            mfu = "-" if res["mfu"] is None else f"{100 * res['mfu']:.1f}%"
            log(f"{name}: {res['steady_tokens_per_second'] or 0:.0f} tokens/s steady "
                f"({res['train_tokens_per_second']:.0f} over train()), MFU {mfu}, "
                f"padding {100 * res['padding_fraction']:.1f}%, recompute x{res['recompute_factor'] or 0:.1f}, "
                f"peak {res['peak_allocated_gb'] or '-'} GB "
                f"(estimate {res['estimate_gb']['allocated']:.1f} GB)")

        # ---- warm-up (CUDA, cuBLAS, the Trainer): one short run, not recorded; a CPU has nothing to warm
        if not args.dry:
            t = now()
            sft_case("warm-up", sft_params("padded", True, limit=8), gpu)
            log(f"warm-up sft run (8 examples) {now() - t:.1f} s")

        # ---- 1. the paper path: sft -> load back -> registry -> evaluate
        paper: dict = {}
        if in_time("paper path: sft -> register -> evaluate"):
            try:
                paper_path(STUDENT_DIR, train_file, "mgsm-ja", args.eval_limit, args.eval_max_new_tokens, gpu, paper)
                paper["status"] = "ok"
            except Exception as e:  # noqa: BLE001 - recorded; the other parts still run
                paper.update(status="failed", failed_after=list(paper), error=f"{type(e).__name__}: {e}"[:2000],
                             traceback=traceback.format_exc()[-4000:])
                log(f"paper path FAILED after {paper['failed_after'] or 'nothing'}: {paper['error']}")
            if "sft" in paper:
                paper["sft"] = with_estimate({"case": "paper path sft (padded, checkpointing as the preset)",
                                              "status": "ok", **paper["sft"]})
                say_sft("paper path sft", paper["sft"])
            if "evaluate" in paper:
                ev, reg = paper["evaluate"], paper["registry"]
                log(f"registered {reg['name']} version {reg['version']} ({', '.join(reg['aliases'])}); evaluate "
                    f"{ev['n_total']:.0f} questions: {ev['tokens_per_second']:.0f} new tokens/s at batch "
                    f"{ev['batch_size']}, accuracy {ev['accuracy']:.1f}%, peak {ev['peak_allocated_gb'] or '-'} GB")

        sft_results: list[dict] = [paper["sft"]] if "sft" in paper else []
        gen_results: list[dict] = []
        failures: list[dict] = []

        def run_sft(batching: str, ckpt: bool) -> None:
            name = f"sft {batching}, gradient checkpointing {'on' if ckpt else 'off'}"
            if in_time(name):
                res = with_estimate(sft_case(name, sft_params(batching, ckpt), gpu))
                sft_results.append(res)
                say_sft(name, res)

        # ---- 2. the other sft settings, plain TRL
        for b, c in (("padded", False), ("group_by_length", True), ("padding_free", True)):
            run_sft(b, c)
        if in_time("trl SFTTrainer defaults"):
            try:
                res = with_estimate(trl_default_case(model_dir, rows, tmp / "trl-default", gpu))
            except Exception as e:  # noqa: BLE001 - recorded; the other parts still run
                res = {"case": "trl SFTTrainer defaults", "status": "failed", "message": failure(e),
                       "batching": "padded"}
            sft_results.append(res)
            say_sft("plain TRL defaults", res)

        # ---- 3. generation at three batch sizes
        questions = [r["prompt"] for r in training_rows(max(gen_prompts.values()))]
        prompt_len = max(len(tokenizer(q).input_ids) for q in questions)
        for batch in GEN_BATCHES:
            if not in_time(f"generation batch {batch}"):
                continue
            try:
                res = generation_case(model_dir, questions[:gen_prompts[batch]], batch, args.max_new_tokens, gpu)
            except Exception as e:  # noqa: BLE001 - recorded; the other parts still run
                failures.append({"part": f"generation batch {batch}", "message": failure(e)})
                log(f"generation batch {batch}: failed: {failures[-1]['message']}")
                continue
            res["estimate_gb"] = generation_memory_estimate(
                model["n_params"], cfg["num_hidden_layers"], cfg["num_key_value_heads"], model["head_dim"],
                cfg["vocab_size"], batch, prompt_len + args.max_new_tokens)
            if res["peak_allocated_gb"]:
                res["measured_over_estimate"] = res["peak_allocated_gb"] / res["estimate_gb"]["allocated"]
            gen_results.append(res)
            log(f"generation batch {batch}: {res['tokens_per_second']:.0f} new tokens/s ({res['new_tokens']} tokens, "
                f"{res['seconds']:.1f} s), peak {res['peak_allocated_gb'] or '-'} GB")

        # ---- 4. what is left
        for b, c in (("group_by_length", False), ("padding_free", False)):
            run_sft(b, c)

    failures += [{"part": r["case"], "message": r["message"]} for r in sft_results if r["status"] == "failed"]
    if paper.get("status") == "failed":
        failures.insert(0, {"part": "paper path", "message": paper["error"]})
    ok = {r["case"]: r for r in sft_results if r["status"] == "ok"}
    trl_default = ok.get("trl SFTTrainer defaults")
    paper_sft = paper.get("sft")
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    gb = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    report.table(["case", "status", "tokens/s steady", "tokens/s train()", "MFU", "padding", "recompute", "peak GB",
                  "estimate GB"],
                 [[r["case"], r["status"], f"{r.get('steady_tokens_per_second') or 0:.0f}",
                   f"{r.get('train_tokens_per_second') or 0:.0f}", pct(r.get("mfu")), pct(r.get("padding_fraction")),
                   "-" if r.get("recompute_factor") is None else f"x{r['recompute_factor']:.1f}",
                   gb(r.get("peak_allocated_gb")), gb(r.get("estimate_gb", {}).get("allocated"))]
                  for r in sft_results])
    if "evaluate" in paper:
        ev = paper["evaluate"]
        report.table(["paper path", "seconds", "tokens/s", "peak GB", "what"],
                     [["sft (register)", f"{paper_sft['phase_seconds']:.0f}",
                       f"{paper_sft['steady_tokens_per_second'] or 0:.0f}", gb(paper_sft["peak_allocated_gb"]),
                       f"{paper['registry']['name']} v{paper['registry']['version']}"],
                      ["evaluate", f"{ev['phase_seconds']:.0f}", f"{ev['tokens_per_second']:.0f}",
                       gb(ev["peak_allocated_gb"]),
                       f"{ev['n_total']:.0f} x {ev['max_new_tokens']} tokens, batch {ev['batch_size']}"]])
    report.table(["generation batch", "prompts", "new tokens", "tokens/s", "peak GB", "estimate GB"],
                 [[g["batch_size"], g["prompts"], g["new_tokens"], f"{g['tokens_per_second']:.0f}",
                   gb(g["peak_allocated_gb"]), gb(g["estimate_gb"]["allocated"])] for g in gen_results])
    if skipped:
        report.say(f"skipped (budget {args.budget:.0f} s): {', '.join(skipped)}")
    for f in failures:
        report.say(f"FAILED {f['part']}: {f['message']}")
    report.write({
        "device": device, "peak_bf16_tflops": peak,
        "model": {**model, "shape": "dry (tiny)" if args.dry else "Qwen2.5-0.5B", "random_weights": True},
        "data": {"examples": args.examples, "tokens": sum(lengths), "min": min(lengths), "max": max(lengths),
                 "mean": mean_seq,
                 "source": "shipped GSM8K questions + reference solutions, prompt format of the study"},
        "flops_per_token": fpt,
        "paper_path": paper or None,
        "sft": sft_results,
        "paper_settings_vs_plain_trl": (
            paper_sft["steady_tokens_per_second"] / trl_default["steady_tokens_per_second"]
            if paper_sft and trl_default and trl_default["steady_tokens_per_second"] else None),
        "generation": gen_results,
        "skipped": skipped,
        "failures": failures,
    }, args.out, cuda=torch.version.cuda, flash_attn=importlib.util.find_spec("flash_attn") is not None,
        mlflow_module=mlflow.__version__, datasets=_version("datasets"), accelerate=_version("accelerate"))
    return 1 if paper.get("status") == "failed" or failures else 0


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
