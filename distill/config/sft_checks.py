"""sft's settings that a library would refuse, or honour silently, refused first by name: a scheduler name
TRL raises on after the run started, a bf16 word read only when training starts, an epoch count that rounds up
to one optimizer step, a max_length that leaves no completion token to train on."""

from __future__ import annotations

import math

from distill import DistillError

# transformers' SchedulerType values that HF Trainer runs with the arguments sft passes (tests/test_bad_input.py
# checks they are SchedulerType's). The others need `lr_scheduler_kwargs` (cosine_with_min_lr,
# cosine_warmup_with_min_lr, warmup_stable_decay) or an evaluation during training (reduce_lr_on_plateau, greedy).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")
NEEDS_MORE = ("reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
              "greedy")
BF16 = ("true", "false", "auto")


def check_scheduler(name: str) -> str:
    if name in SCHEDULERS:
        return name
    why = ("needs settings sft does not pass (lr_scheduler_kwargs or an evaluation during training)"
           if name in NEEDS_MORE else "is not a schedule of transformers' SchedulerType")
    raise DistillError(f"lr_scheduler_type {name!r} {why}; use one of {', '.join(SCHEDULERS)}")


def bf16_setting(value) -> str:
    """`true`/`yes`/`1`... -> `true`, `auto` -> `auto`: the word checked when typed, not when training starts."""
    from distill.config.params_text import NotYesNo, yes_no

    text = str(value).strip().lower()
    if text == "auto":
        return text
    try:
        return str(yes_no(text)).lower()
    except NotYesNo:
        raise DistillError(f"bf16 must be one of {', '.join(BF16)} (got {value!r})") from None


def optimizer_steps(epochs: float, n_rows: int, per_device: int, accumulation: int, world: int = 1) -> float:
    """How many optimizer steps HF Trainer's schedule has before it rounds up: epochs x updates per epoch."""
    batches = math.ceil(n_rows / (per_device * world))
    return epochs * max(batches // accumulation, 1)


def check_one_step(epochs: float, n_rows: int, per_device: int, accumulation: int, world: int = 1) -> None:
    """HF Trainer rounds a schedule of less than one step up to one: `num_train_epochs=1e-9` would train a step,
    log and register a model. Refused: at least one optimizer step's worth of epochs."""
    steps = optimizer_steps(epochs, n_rows, per_device, accumulation, world)
    if steps < 1:
        least = 1 / optimizer_steps(1, n_rows, per_device, accumulation, world)
        raise DistillError(f"num_train_epochs {epochs:g} is less than one optimizer step on {n_rows} examples "
                           f"({per_device * accumulation * world} per step); use at least {least:.3g}")


def template_fits(max_length: int, template: str) -> bool:
    """Whether `max_length` surely holds the prompt template without a tokenizer: no token is shorter than a
    byte of UTF-8, so a template of fewer bytes than max_length fits."""
    return len(template.encode("utf-8")) < max_length


def check_max_length(max_length: int, shortest: int, what: str) -> None:
    """A max_length at or under every example's prompt leaves no completion token: TRL then trains on
    nothing and fails deep inside ("num_samples should be a positive integer"). `what`: whose length
    `shortest` is (the prompt template alone, or the shortest prompt of the training set)."""
    if max_length <= shortest:
        raise DistillError(f"max_length {max_length} leaves no answer token of any example: {what} is {shortest} "
                           f"tokens; use max_length > {shortest}")
