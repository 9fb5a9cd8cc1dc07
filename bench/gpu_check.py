"""A GPU check, prepared for when a machine is lent: SFT tokens/s, MFU, generation tokens/s, peak memory.

Needs no network: the model is a Qwen2.5-0.5B-shaped `Qwen2Config` (hidden 896, 24 layers, 14 heads,
2 KV heads, MLP 4864, vocabulary 151,936, tied embeddings: 494M parameters) with random weights and the
tiny BPE tokenizer of `distill.tiny`; the data are the shipped GSM8K training questions and reference
solutions in the study's prompt format (~320 tokens each, cycled to `--examples`).

Measured, each through the package's public functions, in a throw-away MLflow store:
- `distill.phases.sft.run` with the `paper` preset's settings (bf16, batch 8, lr 1e-5, one epoch here) for each
  batching (`padded`, `group_by_length`, `padding_free`) with gradient checkpointing on and off;
  `padding_free` is recorded as refused, with the phase's message, where FlashAttention is missing;
- plain TRL `SFTTrainer` with its default settings (only `output_dir`, one epoch, no checkpoints and
  no integrations set) on the same data and model, tokens counted the same way;
- `distill.generation.hf.TransformersGenerator` (greedy, 256 new tokens) at batch 1, 16 and 64;
- peak GPU memory of each (`torch.cuda.max_memory_allocated`), beside the estimate of the README's formula.

Model FLOPs utilisation = tokens/s x (6 N + 12 L h T) / peak bf16 FLOP/s (PaLM's count: N parameters used
in matmuls, L layers, h hidden, T mean sequence length; recomputation under checkpointing not counted),
on real tokens (padding excluded). The peak is looked up from the GPU's name (`--peak-tflops` overrides).

    python bench/gpu_check.py                  # on one H100/H200, ~4-6 minutes, writes bench/out/gpu_check-<time>.json
    python bench/gpu_check.py --dry            # the same code paths on a CPU with a tiny config, seconds

Parts left when `--budget` seconds have passed are recorded as skipped, so a run always ends in time.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from _common import log, now, temp_tracking_store  # noqa: E402  (sets the offline environment first)
from gpu_estimates import (GB, flops_per_token, generation_memory_estimate, peak_tflops,
                           sft_memory_estimate)
from results import Results, add_common_args

# Qwen/Qwen2.5-0.5B's config.json
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
DRY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           max_position_embeddings=2048, tie_word_embeddings=True)  # vocabulary: the tokenizer's
BATCHINGS = ("padded", "group_by_length", "padding_free")
GEN_BATCHES = (1, 16, 64)


# --------------------------------------------------------------------------- set-up


def build_model(folder: Path, shape: dict, seed: int = 0) -> dict:
    """A randomly initialised Qwen2 of the given shape with the tiny tokenizer, saved as a model folder."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from distill.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    shape = {"vocab_size": len(tokenizer), **shape}
    config = Qwen2Config(**shape, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
    n_params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    embedding = config.vocab_size * config.hidden_size
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"config": {k: getattr(config, k) for k in shape}, "n_params": n_params,
            # every parameter is a matmul weight except an untied input embedding (a lookup)
            "n_matmul": n_params - (0 if config.tie_word_embeddings else embedding),
            "head_dim": config.hidden_size // config.num_attention_heads}


def training_rows(n: int) -> list[dict]:
    """Shipped GSM8K questions in the study's prompt, their reference solutions as completions, cycled to n."""
    from distill.data import load_gsm8k
    from distill.prompts import plain_prompt

    base = [{"prompt": plain_prompt(r["question"]), "completion": r["answer"]}
            for r in load_gsm8k("train", source="shipped")]
    return [base[i % len(base)] for i in range(n)]


def sequence_lengths(rows: list[dict], tokenizer) -> list[int]:
    return [len(tokenizer(r["prompt"] + r["completion"] + tokenizer.eos_token).input_ids) for r in rows]


# --------------------------------------------------------------------------- measurements


class Gpu:
    """Peak-memory bookkeeping around one measurement (no-ops without CUDA)."""

    def __init__(self):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()

    def peak(self) -> dict:
        if not self.cuda:
            return {"peak_allocated_gb": None, "peak_reserved_gb": None, "resident_before_gb": None}
        t = self.torch.cuda
        return {"peak_allocated_gb": t.max_memory_allocated() / GB, "peak_reserved_gb": t.max_memory_reserved() / GB,
                "resident_before_gb": self.base / GB}


def sft_case(name: str, params, gpu: Gpu) -> dict:
    """One `sft` phase run; its own metrics, wall time and peak memory."""
    import mlflow

    from distill import DistillError
    from distill.phases.sft import run as sft_run

    gpu.reset()
    t = now()
    try:
        run_id = sft_run(params)
    except DistillError as e:
        return {"case": name, "status": "refused", "message": str(e), **vars_of(params)}
    m = mlflow.get_run(run_id).data.metrics
    out = {"case": name, "status": "ok", "run_id": run_id, "phase_seconds": now() - t, **gpu.peak(),
           **{k: m.get(k) for k in ("train_tokens_per_second", "train_tokens", "train_seconds", "padding_fraction",
                                     "final_train_loss")}, **vars_of(params)}
    drop_model_artifact(run_id)
    return out


def vars_of(params) -> dict:
    return {"batching": params.batching, "gradient_checkpointing": params.gradient_checkpointing == "true"}


def drop_model_artifact(run_id: str) -> None:
    """The logged student (2 GB at full size) is not needed once measured: keep the temp disk small."""
    import mlflow
    from urllib.parse import urlparse

    uri = mlflow.get_run(run_id).info.artifact_uri
    if uri.startswith("file:") or uri.startswith("/"):
        shutil.rmtree(Path(urlparse(uri).path) / "model", ignore_errors=True)


def trl_default_case(model_dir: Path, rows: list[dict], out_dir: Path, gpu: Gpu) -> dict:
    """Plain TRL: SFTTrainer(model=<folder>) with SFTConfig's defaults (fp32 weights, bf16 autocast, batch 8,
    gradient checkpointing, max_length 1024); only output_dir, one epoch, no checkpoints, no integrations set."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from distill.generation.hf import load_tokenizer
    from distill.sft_callbacks import PaddingCounter

    gpu.reset()
    overrides = {"output_dir": str(out_dir), "num_train_epochs": 1, "save_strategy": "no", "report_to": "none"}
    if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        overrides["bf16"] = False  # TRL's default bf16=True has no kernel to use on a CPU (dry mode)
    config = SFTConfig(**overrides)
    tokenizer = load_tokenizer(str(model_dir))
    trainer = SFTTrainer(model=str(model_dir), args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    counter = PaddingCounter(trainer.data_collator, tokenizer.pad_token_id)
    trainer.data_collator = counter
    t = now()
    result = trainer.train()
    seconds = now() - t
    out = {"case": "trl SFTTrainer defaults", "status": "ok", "train_tokens": counter.real_tokens,
           "train_seconds": seconds, "train_tokens_per_second": counter.real_tokens / seconds,
           "padding_fraction": counter.padding_fraction, "final_train_loss": result.training_loss, **gpu.peak(),
           "settings": {k: getattr(config, k) for k in ("learning_rate", "per_device_train_batch_size", "bf16",
                                                         "gradient_checkpointing", "max_length", "logging_steps",
                                                         "lr_scheduler_type", "optim")},
           "overrides": overrides}
    del trainer
    return out


def generation_case(model_dir: Path, prompts: list[str], batch: int, max_new_tokens: int, gpu: Gpu) -> dict:
    from distill.generation import GenerationConfig
    from distill.generation.hf import TransformersGenerator

    gpu.reset()
    gen = TransformersGenerator(str(model_dir))
    gen.generate(prompts[:1], GenerationConfig(max_new_tokens=4, batch_size=1), progress=False)  # warm-up
    t = now()
    outs = gen.generate(prompts, GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch), progress=False)
    seconds = now() - t
    tokens = sum(o.n_tokens for o in outs)
    out = {"batch_size": batch, "prompts": len(prompts), "max_new_tokens": max_new_tokens, "new_tokens": tokens,
           "seconds": seconds, "tokens_per_second": tokens / seconds, "device": gen.device,
           "dtype": str(next(gen.model.parameters()).dtype), **gpu.peak()}
    del gen, outs
    return out


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=None, help="training examples (default 1024; dry 16)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default 256; dry 4)")
    ap.add_argument("--budget", type=float, default=420, help="seconds after which remaining parts are skipped (420)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this GPU (default: by name)")
    add_common_args(ap, "gpu_check")
    args = ap.parse_args(argv)
    examples = args.examples or (16 if args.dry else 1024)
    max_new = args.max_new_tokens or (4 if args.dry else 256)
    gen_prompts = {1: 4, 16: 32, 64: 128} if not args.dry else {1: 2, 16: 16, 64: 64}

    report = Results("gpu_check", args)
    t_all = report.t0
    skipped: list[str] = []

    def in_time(what: str) -> bool:
        if now() - t_all < args.budget:
            return True
        skipped.append(what)
        log(f"skipped (time budget {args.budget:.0f} s spent): {what}")
        return False

    with temp_tracking_store("gpu-check-") as tmp:
        import mlflow
        import torch

        from distill.generation.hf import load_tokenizer
        from distill.prompts import plain_prompt
        from distill.phases.sft import SftParams

        gpu = Gpu()
        device = torch.cuda.get_device_name() if gpu.cuda else f"cpu ({os.cpu_count()} cores)"
        peak = args.peak_tflops or (peak_tflops(device) if gpu.cuda else None)
        log(f"device {device}; dense bf16 peak {peak or '-'} TFLOP/s; tracking {mlflow.get_tracking_uri()}")
        if not args.dry and not gpu.cuda:
            log("warning: no GPU here; the full-size model on a CPU takes hours (use --dry)")

        t = now()
        model_dir = tmp / "qwen2.5-0.5b-shaped"
        model = build_model(model_dir, DRY if args.dry else QWEN25_05B)
        cfg = model["config"]
        tokenizer = load_tokenizer(str(model_dir))
        rows = training_rows(examples)
        lengths = sequence_lengths(rows, tokenizer)
        train_file = tmp / "train.jsonl"
        train_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        mean_seq = statistics.fmean(lengths)
        fpt = flops_per_token(model["n_matmul"], cfg["num_hidden_layers"], cfg["hidden_size"], mean_seq)
        log(f"model {model['n_params'] / 1e6:.1f}M parameters, {examples} examples of {min(lengths)}-{max(lengths)} "
            f"tokens (mean {mean_seq:.0f}); set-up {now() - t:.1f} s")

        def sft_params(batching: str, checkpointing: bool, **kw) -> SftParams:
            return SftParams(teacher="7B", student=str(model_dir), preset="paper", train_file=str(train_file),
                             batching=batching, gradient_checkpointing=str(checkpointing).lower(), num_train_epochs=1,
                             bf16="auto", register=False, reuse=False, checkpoints_to_run=False,
                             output_dir=str(tmp / f"ckpt-{batching}-{checkpointing}-{kw.get('limit', 'all')}"), **kw)

        def with_estimate(res: dict) -> dict:
            if res.get("status") != "ok":
                return res
            ckpt = res.get("gradient_checkpointing", res.get("settings", {}).get("gradient_checkpointing"))
            # the largest batch: 8 copies of the longest sequence (padded), or the 8 longest (flattened)
            tokens = (sum(sorted(lengths)[-8:]) if res.get("batching") == "padding_free" else 8 * max(lengths))
            est = sft_memory_estimate(model["n_params"], cfg["hidden_size"], cfg["num_hidden_layers"],
                                      cfg["vocab_size"], tokens, bool(ckpt))
            res["estimate_gb"] = est
            res["estimate_tokens_in_largest_batch"] = tokens
            if res.get("peak_allocated_gb"):
                res["measured_over_estimate"] = res["peak_allocated_gb"] / est["allocated"]
            tps = res.get("train_tokens_per_second") or 0
            res["model_tflops_per_second"] = tps * fpt / 1e12
            res["mfu"] = tps * fpt / (peak * 1e12) if peak else None
            return res

        # ---- warm-up (CUDA, cuBLAS, the Trainer): a short run, not recorded
        t = now()
        sft_case("warm-up", sft_params("padded", True, limit=16), gpu)
        log(f"warm-up sft run (16 examples) {now() - t:.1f} s")

        sft_results, gen_results = [], []
        plan = [("padded", True), ("padded", False), ("group_by_length", True), ("padding_free", True)]
        extra = [("group_by_length", False), ("padding_free", False)]

        def run_sft(batching: str, ckpt: bool) -> None:
            name = f"sft {batching}, gradient checkpointing {'on' if ckpt else 'off'}"
            if not in_time(name):
                return
            res = with_estimate(sft_case(name, sft_params(batching, ckpt), gpu))
            sft_results.append(res)
            if res["status"] == "ok":
                mfu = "-" if res["mfu"] is None else f"{100 * res['mfu']:.1f}%"
                log(f"{name}: {res['train_tokens_per_second']:.0f} tokens/s, MFU {mfu}, padding "
                    f"{100 * res['padding_fraction']:.1f}%, peak {res['peak_allocated_gb'] or '-'} GB "
                    f"(estimate {res['estimate_gb']['allocated']:.1f} GB)")
            else:
                log(f"{name}: refused: {res['message']}")

        for b, c in plan:
            run_sft(b, c)
        if in_time("trl SFTTrainer defaults"):
            res = trl_default_case(model_dir, rows, tmp / "trl-default", gpu)
            res["batching"] = "padded"
            sft_results.append(with_estimate(res))
            log(f"plain TRL defaults: {res['train_tokens_per_second']:.0f} tokens/s, peak {res['peak_allocated_gb'] or '-'} GB")

        questions = [r["prompt"] for r in training_rows(max(gen_prompts.values()))]
        prompt_len = max(len(tokenizer(q).input_ids) for q in questions)
        for batch in GEN_BATCHES:
            if not in_time(f"generation batch {batch}"):
                continue
            res = generation_case(model_dir, questions[:gen_prompts[batch]], batch, max_new, gpu)
            res["estimate_gb"] = generation_memory_estimate(
                model["n_params"], cfg["num_hidden_layers"], cfg["num_key_value_heads"], model["head_dim"],
                cfg["vocab_size"], batch, prompt_len + max_new)
            if res["peak_allocated_gb"]:
                res["measured_over_estimate"] = res["peak_allocated_gb"] / res["estimate_gb"]["allocated"]
            gen_results.append(res)
            log(f"generation batch {batch}: {res['tokens_per_second']:.0f} new tokens/s ({res['new_tokens']} tokens, "
                f"{res['seconds']:.1f} s), peak {res['peak_allocated_gb'] or '-'} GB")
        for b, c in extra:
            run_sft(b, c)

    ok = {r["case"]: r for r in sft_results if r["status"] == "ok"}
    paper = ok.get("sft padded, gradient checkpointing on")
    trl_default = ok.get("trl SFTTrainer defaults")
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    gb = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    report.table(["case", "status", "tokens/s", "MFU", "padding", "peak GB", "estimate GB"],
                 [[r["case"], r["status"], f"{r.get('train_tokens_per_second') or 0:.0f}", pct(r.get("mfu")),
                   pct(r.get("padding_fraction")), gb(r.get("peak_allocated_gb")),
                   gb(r.get("estimate_gb", {}).get("allocated"))] for r in sft_results])
    report.table(["generation batch", "prompts", "new tokens", "tokens/s", "peak GB", "estimate GB"],
                 [[g["batch_size"], g["prompts"], g["new_tokens"], f"{g['tokens_per_second']:.0f}",
                   gb(g["peak_allocated_gb"]), gb(g["estimate_gb"]["allocated"])] for g in gen_results])
    report.write({
        "device": device, "peak_bf16_tflops": peak,
        "model": {**model, "shape": "dry (tiny)" if args.dry else "Qwen2.5-0.5B", "random_weights": True},
        "data": {"examples": examples, "tokens": sum(lengths), "min": min(lengths), "max": max(lengths),
                 "mean": mean_seq, "source": "shipped GSM8K questions + reference solutions, prompt format of the study"},
        "flops_per_token": fpt,
        "sft": sft_results,
        "paper_settings_vs_plain_trl": (paper["train_tokens_per_second"] / trl_default["train_tokens_per_second"]
                                        if paper and trl_default else None),
        "generation": gen_results,
        "skipped": skipped,
    }, args.out, cuda=torch.version.cuda, flash_attn=importlib.util.find_spec("flash_attn") is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
