"""One student trained with TRL's SFTTrainer: the training both `sft` and `sweep` run.

Prompt -> completion, loss on the completion only, EOS appended (TRL does both for a
prompt/completion dataset). `sft` adds what makes a run (lineage, the logged and registered model);
`sweep` trains each trial through the same function without checkpoints.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from distill.config import ModelRef, distill_home
from distill import lineage

console = logging.getLogger(__name__)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def checkpoint_root() -> Path:
    return distill_home() / "checkpoints"


def latest_checkpoint(folder: Path) -> Path | None:
    found = [d for d in folder.glob("checkpoint-*") if (d / "trainer_state.json").is_file()]
    return max(found, key=lambda d: int(d.name.split("-")[-1])) if found else None


# Uploaded last into each checkpoint folder of a run (sft_callbacks): a folder without it is a partial
# upload (the process was killed during it) and is never resumed from.
UPLOAD_COMPLETE = "distill-upload-complete"


def checkpoint_from_runs(run_ids: list[str], dst: Path) -> Path | None:
    """The newest checkpoint an earlier unfinished try uploaded completely, downloaded into dst."""
    import mlflow

    for run_id in run_ids:
        try:
            names = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="checkpoints")]
        except Exception:
            continue
        for name in sorted(names, key=lambda n: int(n.rsplit("-", 1)[-1]), reverse=True):
            files = {a.path.rsplit("/", 1)[-1] for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path=name)}
            if UPLOAD_COMPLETE in files:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(dst))
                return Path(local)
    return None


@dataclass(kw_only=True)
class TrainConfig:
    """How one training runs, beyond its data and its student."""

    hparams: dict                      # sft.resolved_hparams: Table 2's settings, checked
    output_dir: Path                   # checkpoints go here
    bf16: bool = False                 # already resolved for this hardware (sft.use_bf16)
    run_id: str | None = None          # the MLflow run that is told about resuming and gets the checkpoints;
                                       # None: another rank, or a sweep trial
    earlier: Sequence[str] = ()        # unfinished tries of the same work: resume from their last checkpoint
    save: bool = True                  # False: no checkpoints at all (sweep trials)
    save_steps: int | None = None      # None: a checkpoint per epoch
    checkpoints_to_run: bool = True    # upload each checkpoint to run_id (resume on another machine)
    callbacks: Sequence[Any] = ()      # more TrainerCallbacks (sweep: score the dev split, prune)
    tokenizer: Any = None              # a loaded tokenizer to use; None: the student's


def train(student: ModelRef, rows: list[dict], config: TrainConfig):
    """Train `student` on prompt/completion `rows`; returns (model, tokenizer, stats), stats being the
    metrics `sft` logs (tokens per second, padding fraction, final loss)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from distill.generation.hf import load_tokenizer
    from distill.models import materialize
    from distill.sft_callbacks import MlflowLogger, NonFiniteGuard, PaddingCounter

    h = config.hparams
    loadable = materialize(student)
    tokenizer = config.tokenizer or load_tokenizer(loadable.tokenizer)
    tokenizer.padding_side = "right"
    # Only FlashAttention keeps the sequences of one flattened row apart (checked before the run started).
    attention = {"attn_implementation": "flash_attention_2"} if h["batching"] == "padding_free" else {}
    model = AutoModelForCausalLM.from_pretrained(loadable.model, dtype=torch.float32, use_safetensors=True, **attention)
    out_dir = Path(config.output_dir)
    earlier = list(config.earlier)
    resume = None
    if earlier:  # an unfinished try of the same work: continue from its last checkpoint, here or in its run
        resume = latest_checkpoint(out_dir) or checkpoint_from_runs(earlier, out_dir / "from-run")
    elif out_dir.exists() and is_main_process():
        shutil.rmtree(out_dir)  # left by a finished run of the same work (reuse=false): start clean
    if resume is not None and config.run_id:
        import mlflow

        mlflow.set_tag(lineage.RESUMED_FROM, f"{','.join(earlier) or 'local'}:{resume.name}")
        console.info(f"sft: resuming from {resume}")
    args = SFTConfig(
        output_dir=str(out_dir),
        learning_rate=h["learning_rate"], num_train_epochs=h["num_train_epochs"],
        per_device_train_batch_size=h["per_device_train_batch_size"],
        gradient_accumulation_steps=h["gradient_accumulation_steps"], max_grad_norm=h["max_grad_norm"],
        lr_scheduler_type=h["lr_scheduler_type"], warmup_steps=float(h["warmup_ratio"]),  # a float < 1 is a ratio
        seed=h["seed"],
        data_seed=h["seed"], bf16=config.bf16, max_length=h["max_length"],
        padding_free=h["batching"] == "padding_free",
        train_sampling_strategy="group_by_length" if h["batching"] == "group_by_length" else "random",
        **checkpointing_arg(SFTConfig, h["gradient_checkpointing"]),
        completion_only_loss=True, logging_steps=1, report_to="none", save_only_model=False,
        logging_nan_inf_filter=False,  # a NaN loss must reach NonFiniteGuard, not be averaged away
        save_strategy=("steps" if config.save_steps is not None else "epoch") if config.save else "no",
        save_steps=config.save_steps if config.save_steps is not None else 500, save_total_limit=2,
        disable_tqdm=not sys.stderr.isatty(), dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    if os.environ.get("DISTILL_VERBOSE") != "1":  # the loss of every step is in MLflow, not a dict per line here
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    counter = PaddingCounter(trainer.data_collator, tokenizer.pad_token_id)
    trainer.data_collator = counter
    logger = MlflowLogger(counter, upload_checkpoints=config.run_id is not None and config.checkpoints_to_run)
    trainer.add_callback(logger)
    trainer.add_callback(NonFiniteGuard())
    for callback in config.callbacks:
        trainer.add_callback(callback)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - t0
    check_finite_weights(trainer.model, trainer.state.global_step)
    stats = {"train_seconds": seconds, "train_tokens": counter.real_tokens,
             "train_tokens_per_second": counter.real_tokens / seconds if seconds else 0.0,
             "padding_fraction": counter.padding_fraction, "final_train_loss": logger.last_loss or float("nan")}
    return trainer.model, tokenizer, stats


def checkpointing_arg(config_class, on: bool) -> dict:
    """The keyword that turns activation checkpointing on or off in `config_class` (SFTConfig).

    transformers 5.23 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns);
    5.20 (what the vLLM extra resolves to) to 5.22 know only the old one and refuse the new one."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": on}


def check_finite_weights(model, step: int) -> None:
    """Weights with NaN or inf make a model that 'works' and answers garbage: fail the run instead."""
    import torch

    from distill.sft_callbacks import TrainingDiverged

    bad = [n for n, w in model.named_parameters() if not torch.isfinite(w).all()]
    if bad:
        raise TrainingDiverged(f"training diverged: {len(bad)} weight tensor(s) hold NaN or inf after step {step} "
                               f"(first: {bad[0]}); the run failed and nothing was registered")
