"""The measurements of bench/gpu/gpu_check.py, one function each: the model and data it builds, the paper path
(`sft` -> registry -> `evaluate`), one `sft` run, plain TRL, batched generation; and the bookkeeping
around them (peak GPU memory, whether activations were really recomputed)."""

from __future__ import annotations

import gc
from pathlib import Path

from _common import now
from gpu_estimates import GB

# Qwen/Qwen2.5-0.5B's config.json
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
DRY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           max_position_embeddings=2048, tie_word_embeddings=True)  # vocabulary: the tokenizer's
STUDENT_DIR = "qwen2.5-0.5b-shaped"  # the folder's name is the student's name (and the registered model's)


# --------------------------------------------------------------------------- set-up


def build_model(folder: Path, shape: dict, seed: int = 0) -> dict:
    """A randomly initialised Qwen2 of the given shape with the tiny tokenizer, saved as a bf16 model folder
    (initialised on the GPU where there is one: seconds instead of a minute for 494M parameters)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from distill.local_models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    shape = {"vocab_size": len(tokenizer), **shape}
    config = Qwen2Config(**shape, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id],
                                               pad_token_id=tokenizer.pad_token_id)
    n_params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    embedding = config.vocab_size * config.hidden_size
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return {"config": {k: getattr(config, k) for k in shape}, "n_params": n_params,
            # every parameter is a matmul weight except an untied input embedding (a lookup)
            "n_matmul": n_params - (0 if config.tie_word_embeddings else embedding),
            "head_dim": config.hidden_size // config.num_attention_heads}


def training_rows(n: int) -> list[dict]:
    """Shipped GSM8K questions in the study's prompt, their reference solutions as completions, cycled to n."""
    from distill.data.prompts import plain_prompt
    from distill.data.questions import load_gsm8k

    base = [{"prompt": plain_prompt(r["question"]), "completion": r["answer"]}
            for r in load_gsm8k("train", source="shipped")]
    return [base[i % len(base)] for i in range(n)]


def sequence_lengths(rows: list[dict], tokenizer) -> list[int]:
    return [len(tokenizer(r["prompt"] + r["completion"] + tokenizer.eos_token).input_ids) for r in rows]


# --------------------------------------------------------------------------- bookkeeping


class Gpu:
    """Peak-memory bookkeeping around one measurement (no-ops without CUDA)."""

    def __init__(self):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.base = 0

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


class CheckpointingProbe:
    """Whether training really recomputed activations, seen from outside the Trainer: during the first
    `steps` training steps it counts the calls of every decoder layer's MLP per forward of the model; a
    backward that recomputes calls each MLP a second time (factor 2, 1 without). A global module hook,
    removed after those steps, so the timed steps after them run without it."""

    def __init__(self, steps: int = 2):
        self.steps, self.forwards, self.mlp_calls, self.mlps = steps, 0, 0, set()
        self.handle = None

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_pre_hook

        self.handle = register_module_forward_pre_hook(self._hook)
        return self

    def _hook(self, module, _args) -> None:
        if not module.training:
            return
        name = type(module).__name__
        if name.endswith("ForCausalLM"):
            if self.forwards == self.steps:  # the next step begins: the first `steps` are complete
                self.close()
                return
            self.forwards += 1
        elif name.endswith("MLP") and self.forwards:
            self.mlp_calls += 1
            self.mlps.add(id(module))

    def close(self) -> None:
        if self.handle is not None:  # torch iterates over a copy of the hooks: removing one inside it is safe
            self.handle.remove()
            self.handle = None

    def __exit__(self, *exc) -> None:
        self.close()

    def result(self) -> dict:
        factor = self.mlp_calls / (self.forwards * len(self.mlps)) if self.forwards and self.mlps else None
        observed = None if factor is None else factor > 1.5
        return {"recompute_factor": factor, "gradient_checkpointing_observed": observed, "probed_steps": self.forwards}


# --------------------------------------------------------------------------- measurements


def steady(per_step: list[float]) -> float | None:
    """Tokens/s of the steps after the first (CUDA and cuBLAS start-up), median: what training sustains,
    without the epoch-end checkpoint that the phase's own `train_tokens_per_second` includes."""
    import statistics

    later = per_step[1:] or per_step
    return statistics.median(later) if later else None


def train_metrics(run_id: str) -> dict:
    """The sft run's own figures, and the steady tokens/s from its per-step `tokens_per_second`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    m = mlflow.get_run(run_id).data.metrics
    history = sorted(MlflowClient().get_metric_history(run_id, "tokens_per_second"), key=lambda x: x.step)
    return {**{k: m.get(k) for k in ("train_tokens_per_second", "train_tokens", "train_seconds", "padding_fraction",
                                     "final_train_loss")},
            "steady_tokens_per_second": steady([x.value for x in history]), "steps": len(history)}


class StepClock:
    """Per-step tokens/s for a plain Trainer, measured as `sft`'s logger does (real tokens of the batches
    collated since the last step, over the time since it; CUDA synchronised at each step end)."""

    def __init__(self, counter):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.tick()

        self.counter, self.callback, self.per_step, self.last = counter, Callback(), [], None

    def tick(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t, tokens = now(), self.counter.real_tokens
        # as sft's logger: no new batch, no figure
        if self.last is not None and t > self.last[0] and tokens > self.last[1]:
            self.per_step.append((tokens - self.last[1]) / (t - self.last[0]))
        self.last = (t, tokens)

    def start(self) -> None:
        self.last = (now(), self.counter.real_tokens)


def logged_settings(run_id: str) -> dict:
    """What the sft run says it trained with (its params, as text)."""
    import mlflow

    p = mlflow.get_run(run_id).data.params
    return {"logged_gradient_checkpointing": p.get("gradient_checkpointing"), "logged_batching": p.get("batching"),
            "logged_bf16_used": p.get("bf16_used"), "logged_num_train_epochs": p.get("num_train_epochs"),
            "logged_per_device_train_batch_size": p.get("per_device_train_batch_size")}


def sft_case(name: str, params, gpu: Gpu) -> dict:
    """One `sft` phase run; its own metrics, what it logged, whether it recomputed, wall time, peak memory."""
    from distill import DistillError
    from distill.phases.sft import run as sft_run

    gpu.reset()
    t = now()
    try:
        with CheckpointingProbe() as probe:
            run_id = sft_run(params)
    except DistillError as e:
        return {"case": name, "status": "refused", "message": str(e), **requested(params)}
    except Exception as e:  # noqa: BLE001 - recorded: one broken case must not cost the rest of a GPU run
        return {"case": name, "status": "failed", "message": failure(e), **requested(params)}
    out = {"case": name, "status": "ok", "run_id": run_id, "phase_seconds": now() - t, **gpu.peak(),
           **train_metrics(run_id), **requested(params), **logged_settings(run_id), **probe.result()}
    drop_artifacts(run_id)
    if params.output_dir:  # its local checkpoint (~6 GB at full size)
        import shutil

        shutil.rmtree(params.output_dir, ignore_errors=True)
    return out


def failure(e: BaseException) -> str:
    """An exception as one line for the report (its traceback goes to the log)."""
    import traceback

    traceback.print_exc()
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:1000]


def requested(params) -> dict:
    """The batching and checkpointing a run was asked for: the params', else the preset's."""
    from distill.config.presets import load_preset

    sft = load_preset(params.preset).sft
    ckpt = params.gradient_checkpointing
    return {"batching": params.batching or sft.batching,
            "gradient_checkpointing": bool(sft.gradient_checkpointing) if ckpt is None else ckpt}


def drop_artifacts(run_id: str) -> None:
    """The logged student (2 GB at full size, stored with its logged model, not under the run) and the uploaded
    checkpoints (~6 GB) are not needed once measured: keep the temp disk small."""
    import shutil
    from urllib.parse import urlparse

    import mlflow

    from distill.tracking.lineage import MODEL_ID

    run = mlflow.get_run(run_id)
    folders = [run.info.artifact_uri.rstrip("/") + "/checkpoints"]
    if run.data.tags.get(MODEL_ID):
        folders.append(mlflow.get_logged_model(run.data.tags[MODEL_ID]).artifact_location)
    for uri in folders:
        if uri.startswith(("file:", "/")):
            shutil.rmtree(urlparse(uri).path, ignore_errors=True)


def paper_path(student: str, train_file: Path, eval_set: str, eval_limit: int, eval_max_new_tokens: int,
               gpu: Gpu, out: dict) -> None:
    """What `main` does for one cell, in miniature: `sft` with the `paper` preset's settings as they are
    (one epoch here), its checkpoint uploaded (and removed once the model is logged: keep_checkpoints=last), the
    student logged, loaded back and generating, registered with its aliases; then `evaluate` of the registered
    version with the transformers backend, which tags the version with its accuracy. Fills `out` as each stage
    ends (`sft`, `registry`, `evaluate`), so what came before a failure is kept."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from distill.phases.evaluate import EvaluateParams, run as evaluate_run
    from distill.phases.sft import SftParams, run as sft_run
    from distill.tracking.lineage import MODEL_URI, REGISTERED_MODEL, REGISTERED_VERSION

    params = SftParams(teacher="7B", student=student, preset="paper", train_file=str(train_file), num_train_epochs=1,
                       reuse=False)  # everything else the preset's: register, checkpoints, bf16, batch 8, ...
    gpu.reset()
    t = now()
    with CheckpointingProbe() as probe:
        sft_id = sft_run(params)
    out["sft"] = {"run_id": sft_id, "phase_seconds": now() - t, **gpu.peak(), **train_metrics(sft_id),
                  **requested(params), **logged_settings(sft_id), **probe.result()}
    tags = mlflow.get_run(sft_id).data.tags
    name, version, uri = tags.get(REGISTERED_MODEL), tags.get(REGISTERED_VERSION), tags.get(MODEL_URI)
    client = MlflowClient()
    checkpoints = [a.path for a in mlflow.artifacts.list_artifacts(run_id=sft_id, artifact_path="checkpoints")]
    out["registry"] = registry = {"name": name, "version": version, "model_uri": uri, "checkpoints_left": checkpoints,
                "aliases": sorted(client.get_registered_model(name).aliases) if name else []}

    gpu.reset()
    t = now()
    eval_id = evaluate_run(EvaluateParams(model=uri, preset="paper", backend="transformers", eval_set=eval_set,
                                          limit=eval_limit, max_new_tokens=eval_max_new_tokens, reuse=False))
    run = mlflow.get_run(eval_id)
    m, p = run.data.metrics, run.data.params
    out["evaluate"] = {"run_id": eval_id, "phase_seconds": now() - t, **gpu.peak(),
                **{k: m.get(k) for k in ("accuracy", "n_total", "generation_seconds", "tokens_per_second",
                                         "output_tokens_mean", "n_truncated")},
                **{k: p.get(k) for k in ("backend", "batch_size", "max_new_tokens", "eval_set", "model_source")}}
    if name:
        v = client.get_model_version(name, version)
        registry["version_tags_after_evaluate"] = {k: v.tags.get(k) for k in ("accuracy", "eval_run_id", "sft_run_id")}
    drop_artifacts(sft_id)


def trl_default_case(model_dir: Path, rows: list[dict], out_dir: Path, gpu: Gpu) -> dict:
    """Plain TRL: SFTTrainer(model=<folder>) with SFTConfig's defaults (fp32 weights, bf16 autocast, batch 8,
    gradient checkpointing, max_length 1024); only output_dir, one epoch, no checkpoints, no integrations set."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from distill.generation.hf import load_tokenizer
    from distill.training.callbacks import PaddingCounter

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
    clock = StepClock(counter)
    trainer.add_callback(clock.callback)
    t = now()
    clock.start()
    with CheckpointingProbe() as probe:
        result = trainer.train()
    seconds = now() - t
    out = {"case": "trl SFTTrainer defaults", "status": "ok", "train_tokens": counter.real_tokens,
           "train_seconds": seconds, "train_tokens_per_second": counter.real_tokens / seconds,
           "steady_tokens_per_second": steady(clock.per_step), "steps": len(clock.per_step),
           "padding_fraction": counter.padding_fraction, "final_train_loss": result.training_loss, **gpu.peak(),
           "batching": "padded", "gradient_checkpointing": bool(config.gradient_checkpointing), **probe.result(),
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
