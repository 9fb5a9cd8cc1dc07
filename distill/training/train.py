"""One student trained with TRL's SFTTrainer: the training both `sft` and `sweep` run.

Prompt -> completion, loss on the completion only, EOS appended (TRL does both for a
prompt/completion dataset). `sft` adds what makes a run (lineage, the logged and registered model);
`sweep` trains each trial through the same function without checkpoints.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill import DistillError
from distill.config.models import ModelRef
from distill.training import ranks
from distill.training.checkpoints import UPLOAD_COMPLETE, checkpoint_from_runs, checkpoint_root, latest_checkpoint  # noqa: F401  (their old home)
from distill.training.ranks import is_main_process  # noqa: F401  (its old home)

console = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainConfig:
    """How one training runs, beyond its data and its student."""

    settings: dict                     # SFTConfig settings (sft.resolved_sft_config: the preset's and those given)
    seed: int                          # the training and data seed
    output_dir: Path                   # checkpoints go here
    bf16: bool = False                 # already resolved for this hardware (sft.use_bf16)
    run_id: str | None = None          # the MLflow run that gets the checkpoints; None: another rank, a sweep trial
    resume: Path | None = None         # the checkpoint to continue from (checkpoints.resume_point, on rank 0)
    earlier: Sequence[str] = ()        # unfinished tries of the same work, whose checkpoints `keep` may remove
    save: bool = True                  # False: no checkpoints at all (sweep trials)
    save_steps: int | None = None      # None: a checkpoint per epoch
    checkpoints_to_run: bool = True    # upload each checkpoint to run_id (resume on another machine)
    keep_checkpoints: str = "last"     # last: only the newest complete checkpoint, here and in the run; all
    final_dir: Path | None = None      # every rank saves the trained model here through trainer.save_model()
                                       # (it gathers FSDP / ZeRO-3 shards); rank 0 returns it loaded from there
    callbacks: Sequence[Any] = ()      # more TrainerCallbacks (sweep: score the dev split, prune)
    tokenizer: Any = None              # a loaded tokenizer to use; None: the student's


def train(student: ModelRef, rows: list[dict], config: TrainConfig):
    """Train `student` on prompt/completion `rows`; returns (model, tokenizer, stats), stats being the
    metrics `sft` logs (tokens per second, padding fraction, final loss). The effective batch and how it
    was split over this launch's processes go to run_id as parameters. With `final_dir`, the model is the
    one saved there, loaded on CPU (None on other ranks); without, the trainer's own."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from distill.config.models import materialize
    from distill.generation.hf import load_tokenizer
    from distill.training.batching import check_trainer_batch, split_for
    from distill.training.callbacks import MlflowLogger, NonFiniteGuard, PaddingCounter
    from distill.training.sft_config import build

    h = config.settings
    loadable = materialize(student)
    tokenizer = config.tokenizer or load_tokenizer(loadable.tokenizer)
    tokenizer.padding_side = "right"
    out_dir = Path(config.output_dir)
    resume = config.resume
    # the settings as given; the rest is how this project runs a training (sft_config.SET_BY_DISTILL)
    args = build(
        h, output_dir=str(out_dir), seed=config.seed, data_seed=config.seed, bf16=config.bf16,
        completion_only_loss=True, logging_steps=1, report_to="none", save_only_model=False,
        logging_nan_inf_filter=False,  # a NaN loss must reach NonFiniteGuard, not be averaged away
        save_strategy=("steps" if config.save_steps is not None else "epoch") if config.save else "no",
        save_steps=config.save_steps if config.save_steps is not None else 500,
        save_total_limit=1 if config.keep_checkpoints == "last" else None,  # removed once the next is complete
        disable_tqdm=not sys.stderr.isatty(), dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )
    split = split_for(args, h)  # the preset's batch over the processes these arguments train on, or a refusal
    # Only FlashAttention keeps the sequences of one flattened row apart (checked before the run started).
    attention = {"attn_implementation": "flash_attention_2"} if args.padding_free else {}
    model = AutoModelForCausalLM.from_pretrained(loadable.model, dtype=torch.float32, use_safetensors=True,
                                                 **attention)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    check_trainer_batch(trainer, split)
    if config.run_id:
        import mlflow

        mlflow.log_params(split.params())
    if os.environ.get("DISTILL_VERBOSE") != "1":  # the loss of every step is in MLflow, not a dict per line here
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    counter = PaddingCounter(trainer.data_collator, tokenizer.pad_token_id)
    counter.sum_over_processes = lambda counts: summed(trainer.accelerator, counts)
    trainer.data_collator = counter
    logger = MlflowLogger(counter, upload_checkpoints=config.run_id is not None and config.checkpoints_to_run,
                          keep=config.keep_checkpoints, earlier=tuple(config.earlier))
    trainer.add_callback(logger)
    trainer.add_callback(NonFiniteGuard())
    for callback in config.callbacks:
        trainer.add_callback(callback)
    t0 = time.perf_counter()
    with ranks.training():
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - t0
    real, total = counter.totals()
    stats = {"train_seconds": seconds, "train_tokens": real,
             "train_tokens_per_second": real / seconds if seconds else 0.0,
             "padding_fraction": 1 - real / total if total else 0.0,
             "final_train_loss": logger.last_loss or float("nan")}
    model = trainer.model if config.final_dir is None else saved_model(trainer, Path(config.final_dir))
    if model is not None:
        check_finite_weights(model, trainer.state.global_step)
    return model, tokenizer, stats


def summed(accelerator, counts: list[int]) -> list[int]:
    """counts summed over every process of the launch (a collective); the same list in one process."""
    if accelerator.num_processes <= 1:
        return counts
    import torch

    return [int(x) for x in accelerator.reduce(torch.tensor(counts, device=accelerator.device), "sum").tolist()]


def saved_model(trainer, final_dir: Path):
    """The trained model as `trainer.save_model()` writes it, every rank taking part (under FSDP it gathers
    the full state dict to rank 0, under ZeRO-3 the 16-bit weights), loaded back on CPU in fp32 on rank 0."""
    import torch
    from transformers import AutoModelForCausalLM

    trainer.save_model(str(final_dir))
    if not trainer.args.should_save:
        return None
    if not list(final_dir.glob("*.safetensors")):
        raise DistillError(f"trainer.save_model() wrote no weights to {final_dir} (under DeepSpeed ZeRO-3 set "
                           "zero3_save_16bit_model: true; under FSDP fsdp_state_dict_type: FULL_STATE_DICT)")
    return AutoModelForCausalLM.from_pretrained(str(final_dir), dtype=torch.float32, use_safetensors=True)


def check_finite_weights(model, step: int) -> None:
    """Weights with NaN or inf make a model that 'works' and answers garbage: fail the run instead."""
    import torch

    from distill.training.callbacks import TrainingDiverged

    bad = [n for n, w in model.named_parameters() if not torch.isfinite(w).all()]
    if bad:
        raise TrainingDiverged(f"training diverged: {len(bad)} weight tensor(s) hold NaN or inf after step {step} "
                               f"(first: {bad[0]}); the run failed and nothing was registered")
