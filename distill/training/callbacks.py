"""Trainer plumbing for `sft`: MLflow logging from rank 0, checkpoint upload and retention, padding accounting."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from distill import DistillError


class TrainingDiverged(DistillError):
    """Loss, gradients or weights became NaN or inf: the run fails, a sweep trial fails alone."""


class PaddingCounter:
    """Wraps the data collator and counts real and padding tokens of every batch it builds."""

    def __init__(self, collator, pad_token_id: int):
        self.collator = collator
        self.pad_token_id = pad_token_id
        self.real_tokens = 0
        self.total_tokens = 0
        # Each process counts only the batches it builds; set by `train` to a sum over every process.
        self.sum_over_processes = lambda counts: counts

    def totals(self) -> tuple[int, int]:
        """Real and padded-total tokens of every process so far (a collective: every rank calls it)."""
        real, total = self.sum_over_processes([self.real_tokens, self.total_tokens])
        return int(real), int(total)

    def __call__(self, examples):
        batch = self.collator(examples)
        mask = batch.get("attention_mask")
        if mask is not None:
            self.real_tokens += int(mask.sum())
            self.total_tokens += int(mask.numel())
        else:  # padding-free: one flat row, nothing padded
            n = int(batch["input_ids"].numel())
            self.real_tokens += n
            self.total_tokens += n
        return batch

    @property
    def padding_fraction(self) -> float:
        real, total = self.totals()
        return 1 - real / total if total else 0.0


# Trainer's log keys -> the metric names a run logs them under (the scheduled rate is a metric, logged every step).
# Its key of the rate is also the SFTConfig field that sets the peak: the one name a message can point to.
RATE = "learning_rate"
TRAINER_LOGS = {"loss": "train_loss", RATE: RATE, "grad_norm": "grad_norm", "epoch": "epoch"}


class MlflowLogger(TrainerCallback):
    """Streams loss, learning rate, grad norm and tokens/s to the active run (world process zero only),
    and uploads each checkpoint to the run so that a rerun elsewhere can resume from it, keeping only
    the newest complete one unless `keep` is `all` (distill/training/checkpoints.py)."""

    def __init__(self, counter: PaddingCounter, upload_checkpoints: bool = True, keep: str = "last",
                 earlier: tuple[str, ...] = ()):
        self.counter = counter
        self.upload_checkpoints = upload_checkpoints
        self.keep = keep
        self.earlier = list(earlier)  # killed tries this run continues: their checkpoints go once it has one
        self.last_loss = None
        self._t = None
        self._tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t, self._tokens = time.perf_counter(), self.counter.totals()[0]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        tokens = self.counter.totals()[0]  # every rank: the sum over processes is a collective
        if not state.is_world_process_zero:
            return
        import mlflow

        now = time.perf_counter()
        metrics = {}
        for src, dst in TRAINER_LOGS.items():
            if isinstance(logs.get(src), (int, float)):
                metrics[dst] = float(logs[src])
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
        # a log at epoch end saw no new tokens: a 0 there would read as a stall
        if self._t is not None and now > self._t and tokens > self._tokens:
            metrics["tokens_per_second"] = (tokens - self._tokens) / (now - self._t)
        self._t, self._tokens = now, tokens
        if metrics and mlflow.active_run():
            mlflow.log_metrics(metrics, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if not (self.upload_checkpoints and state.is_world_process_zero):
            return
        import mlflow

        from distill.training import checkpoints

        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        run = mlflow.active_run()
        if os.path.isdir(folder) and run:
            newest = checkpoints.upload(Path(folder), state.global_step)
            if self.keep == "last":
                checkpoints.keep_newest(run.info.run_id, newest, self.earlier)
                self.earlier = []


class NonFiniteGuard(TrainerCallback):
    """Stops training at the first non-finite loss or gradient norm, before a checkpoint of the broken
    weights is saved: the run fails with the step, and nothing is registered."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise TrainingDiverged(f"training diverged: {key} is {value} at step {state.global_step} "
                                       f"(its learning rate {logs.get(RATE)}); the run failed and nothing was "
                                       f"registered; lower the preset's sft.{RATE} or give --{RATE}")
