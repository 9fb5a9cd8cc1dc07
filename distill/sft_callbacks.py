"""Trainer plumbing for `sft`: MLflow logging from rank 0, checkpoint upload, padding accounting."""

from __future__ import annotations

import math
import os
import time

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
        return 1 - self.real_tokens / self.total_tokens if self.total_tokens else 0.0


class MlflowLogger(TrainerCallback):
    """Streams loss, learning rate, grad norm and tokens/s to the active run (world process zero only),
    and uploads each checkpoint to the run so that a rerun elsewhere can resume from it."""

    def __init__(self, counter: PaddingCounter, upload_checkpoints: bool = True):
        self.counter = counter
        self.upload_checkpoints = upload_checkpoints
        self.last_loss = None
        self._t = None
        self._tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t, self._tokens = time.perf_counter(), self.counter.real_tokens

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        import mlflow

        now = time.perf_counter()
        metrics = {}
        for src, dst in (("loss", "train_loss"), ("learning_rate", "learning_rate"), ("grad_norm", "grad_norm"),
                         ("epoch", "epoch")):
            if isinstance(logs.get(src), (int, float)):
                metrics[dst] = float(logs[src])
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
        # a log at epoch end saw no new tokens: a 0 there would read as a stall
        if self._t is not None and now > self._t and self.counter.real_tokens > self._tokens:
            metrics["tokens_per_second"] = (self.counter.real_tokens - self._tokens) / (now - self._t)
        self._t, self._tokens = now, self.counter.real_tokens
        if metrics and mlflow.active_run():
            mlflow.log_metrics(metrics, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        if not (self.upload_checkpoints and state.is_world_process_zero):
            return
        import mlflow

        from distill.training import UPLOAD_COMPLETE

        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder) and mlflow.active_run():
            where = f"checkpoints/checkpoint-{state.global_step}"
            mlflow.log_artifacts(folder, artifact_path=where)
            mlflow.log_text("every file of this checkpoint was uploaded\n", f"{where}/{UPLOAD_COMPLETE}")


class NonFiniteGuard(TrainerCallback):
    """Stops training at the first non-finite loss or gradient norm, before a checkpoint of the broken
    weights is saved: the run fails with the step, and nothing is registered."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise TrainingDiverged(f"training diverged: {key} is {value} at step {state.global_step} "
                                   f"(learning_rate {args.learning_rate}); the run failed and nothing was "
                                   "registered; lower learning_rate")
