"""sft's settings that a library would refuse, or honour silently, refused first by name: a scheduler name
TRL raises on after the run started, a bf16 word read only when training starts, an epoch count that rounds up
to one optimizer step, a max_length that leaves no completion token to train on."""

from __future__ import annotations

import math

from distill import DistillError
from distill.config.checks import COUNT, Rule, check

# transformers' SchedulerType values that HF Trainer runs with the arguments sft passes (tests/test_bad_input.py
# checks they are SchedulerType's). The others need `lr_scheduler_kwargs` (cosine_with_min_lr,
# cosine_warmup_with_min_lr, warmup_stable_decay) or an evaluation during training (reduce_lr_on_plateau, greedy).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")
NEEDS_MORE = ("reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
              "greedy")
BF16 = ("true", "false", "auto")

# This project's ranges for trl.SFTConfig fields where TRL checks none (a zero learning rate trains nothing; an
# infinite one NaNs at the first step). Keyed by TRL's field names; every other number is checked to be finite.
RANGES = {
    "learning_rate": Rule(float, 0, 1, low_open=True),
    "num_train_epochs": Rule(float, 0, 1000, low_open=True),
    "per_device_train_batch_size": COUNT,
    "gradient_accumulation_steps": COUNT,
    "max_grad_norm": Rule(float, 0, note="0: no clipping"),
    "warmup_steps": Rule(float, 0, note="below 1: a share of the steps; from 1: a number of steps"),
    "weight_decay": Rule(float, 0),
    "max_length": Rule(int, 1, note="tokens per example"),
}
CHECKED_WORDS = {"lr_scheduler_type": lambda value: check_scheduler(str(value))}


def check_setting(name: str, value, where: str):
    """One SFTConfig setting by this project's rule for it: a range, a word, or (any other number) finite.
    `where` names it in the message (`learning_rate`, `preset file x.yaml: sft.learning_rate`)."""
    if name in CHECKED_WORDS:
        return CHECKED_WORDS[name](value)
    if isinstance(value, str) and name in RANGES:
        raise DistillError(f"{where} must be a number (got {value!r}; YAML reads 1e-5 as text, write 1.0e-5)")
    if name in RANGES:
        return check(RANGES[name], where, value, optional=True)
    if isinstance(value, float) and not math.isfinite(value):
        raise DistillError(f"{where} must be a finite number (got {value!r})")
    return value


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


def setting(settings: dict, name: str):
    """A setting as the training gets it: the one given, else TRL's default."""
    if name in settings:
        return settings[name]
    import dataclasses

    import trl  # only for a field the settings leave at TRL's default (main's process imports no TRL otherwise)

    return next(f.default for f in dataclasses.fields(trl.SFTConfig) if f.name == name)


def check_schedule(settings: dict, n_rows: int, world: int = 1) -> None:
    """`check_one_step` with the epochs and batch of these settings."""
    check_one_step(setting(settings, "num_train_epochs"), n_rows, setting(settings, "per_device_train_batch_size"),
                   setting(settings, "gradient_accumulation_steps"), world)


def check_prompts_fit(settings: dict, prompts: list[str], token_counts, what) -> None:
    """`check_max_length` for these settings and prompts: passes at once where one prompt surely fits by its
    bytes; else counts tokens (`token_counts(prompts)`) and names the shortest (`what(len(prompts))`)."""
    limit = setting(settings, "max_length")
    if limit is None or any(template_fits(limit, x) for x in prompts):
        return
    check_max_length(limit, min(token_counts(prompts)), what(len(prompts)))
