"""TRL's SFTConfig owns the training hyperparameters: their names, types, defaults and help text.

The preset's `sft:` block is written in SFTConfig's field names (`learning_rate`, `weight_decay`, ...); any field
may be given on the command line of `sft` (`--weight_decay 0.01`) and searched by `sweep`. This module adds what
TRL lacks, as open-r1 does (`SFTConfig(trl.SFTConfig)` adding fields, restating none): the project's own
fields, the fields the project sets itself (refused where a user would set them), a did-you-mean for a typo,
and the project's range checks (distill/config/sft_checks.py). No `from __future__ import annotations` here:
HfArgumentParser reads the field types.
"""

import argparse
import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import trl
from transformers import HfArgumentParser

from distill import DistillError
from distill.config.sft_checks import check_setting

BATCHING = ("padded", "group_by_length", "padding_free")


@dataclass
class SFTConfig(trl.SFTConfig):
    """trl.SFTConfig and the settings this project adds to it."""

    batching: Literal["padded", "group_by_length", "padding_free"] = field(default="padded", metadata={
        "help": "How examples share a batch: `padded` (the paper), `group_by_length` (similar lengths together: less "
                "padding, any attention) or `padding_free` (one flattened row, FlashAttention 2 only)."})
    seeds: list[int] = field(default_factory=lambda: [42], metadata={
        "help": "The seeds a preset trains when its `grid.seeds` is empty (`report` lists them); one run's seed is "
                "sft's `seed` parameter."})

    def __post_init__(self):
        if self.batching == "padding_free":
            self.padding_free = True
        elif self.batching == "group_by_length":
            self.train_sampling_strategy = "group_by_length"
        super().__post_init__()


# Fields that are preset-only: they describe the study, not one training.
PRESET_ONLY = ("seeds",)

# Fields `sft` sets itself, each with why: a value given for one is refused by name rather than overridden.
SET_BY_DISTILL = {
    "output_dir": "sft's output_dir parameter (checkpoints under $DISTILL_HOME by default)",
    "seed": "sft's seed parameter (the preset's grid.seeds)",
    "data_seed": "sft's seed parameter",
    "bf16": "sft's bf16 parameter (true, false or auto: the preset's sft.bf16 where the hardware has it)",
    "save_steps": "sft's save_steps parameter",
    "save_strategy": "sft's save_steps parameter (a checkpoint per epoch by default)",
    "save_total_limit": "sft's keep_checkpoints parameter",
    "save_only_model": "resuming needs the optimizer state in each checkpoint",
    "report_to": "sft logs to MLflow from rank 0 (distill/training/callbacks.py)",
    "logging_steps": "every step's loss is logged to MLflow",
    "logging_nan_inf_filter": "a NaN loss must reach the divergence guard",
    "completion_only_loss": "the study trains on the answers only (the paper)",
    "padding_free": "the batching setting",
    "train_sampling_strategy": "the batching setting",
    "use_cpu": "chosen from the hardware",
    "disable_tqdm": "chosen from the terminal",
    "dataloader_num_workers": "tokenized data is in memory; workers only add processes",
}


def config_fields() -> dict[str, dataclasses.Field]:
    """SFTConfig's fields (TRL's and this project's), by name."""
    return {f.name: f for f in dataclasses.fields(SFTConfig) if f.init}


def settable() -> list[str]:
    """The fields a preset's `sft:` block may set."""
    return [n for n in config_fields() if n not in SET_BY_DISTILL or n == "bf16"]


def help_of(name: str) -> str:
    return config_fields()[name].metadata.get("help", "")


def unknown(name: str, where: str) -> DistillError:
    """`learning_rte` refused with a did-you-mean among SFTConfig's fields."""
    near = difflib.get_close_matches(name, list(config_fields()), n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return DistillError(f"{where} has an unknown key '{name}'{hint}; its keys are trl.SFTConfig fields "
                        "(python entrypoints/sft.py --help lists them)")


def check_name(name: str, where: str, allowed: tuple[str, ...] = ()) -> None:
    if name not in config_fields():
        raise unknown(name, where)
    if name in SET_BY_DISTILL and name not in allowed:
        raise DistillError(f"{where}: '{name}' is set by sft itself, not here ({SET_BY_DISTILL[name]})")


def check_preset_block(block: dict, path: str) -> None:
    """The preset's `sft:` keys: SFTConfig fields the project does not set itself, values in range."""
    for name, value in block.items():
        check_name(name, f"preset file {path}: 'sft'", allowed=("bf16",))
        if name not in PRESET_ONLY:
            check_setting(name, value, f"preset file {path}: sft.{name}")


def training_settings(block: dict, given: dict, path: str) -> dict:
    """What one training is given: the preset's `sft:` block (file `path`; less its study-wide keys and those sft
    sets from its own parameters), the fields given by name over it, each checked."""
    check_preset_block(block, path)
    settings = {k: v for k, v in block.items() if k not in PRESET_ONLY and k not in SET_BY_DISTILL}
    for name, value in given.items():
        check_name(name, "sft")
        if name in PRESET_ONLY:
            raise DistillError(f"'{name}' is a preset key (sft.{name}), not a setting of one training")
        settings[name] = check_setting(name, value, name)
    if settings.get("batching", "padded") not in BATCHING:
        raise DistillError(f"unknown batching {settings['batching']!r}; choose one of {', '.join(BATCHING)}")
    return settings


def successor(name: str) -> str:
    """The field that replaces `name` where a class SFTConfig derives from declares it a deprecated alias
    (`gradient_checkpointing` -> `activation_checkpointing` in transformers 5.23+), else `name`."""
    for cls in SFTConfig.__mro__:
        f = getattr(cls, "__dataclass_fields__", {}).get(name)
        alias = re.match(r"Deprecated alias of `(\w+)`", f.metadata.get("help", "")) if f else None
        if alias and alias.group(1) in config_fields():
            return alias.group(1)
    return name


def current_names(settings: dict) -> dict:
    """Settings under the names the installed SFTConfig reads: a deprecated alias passed as its successor, so it
    takes effect without a warning where both exist and as written where only the old name does."""
    return {successor(name): value for name, value in settings.items()}


def build(settings: dict, **set_by_distill: Any) -> SFTConfig:
    return SFTConfig(**current_names(settings), **set_by_distill)


def argument_parser(number_types: dict) -> HfArgumentParser:
    """TRL's own parser of SFTConfig (its types, choices and help), a number read by `number_types[int|float]`
    (the project's one-line messages); a field left out is not in the parsed namespace."""
    parser = HfArgumentParser(SFTConfig, add_help=False)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.type = number_types.get(action.type, action.type)
    parser.error = _one_line
    return parser


def _one_line(message: str):
    """argparse's error as the project's: one line naming the field (`learning_rate: expected a number, ...`)."""
    raise DistillError(re.sub(r"argument --(\w+)(/--[\w-]+)?", r"\1", message))


def parse_args(argv: list[str], number_types: dict) -> tuple[dict, list[str]]:
    """`--weight_decay 0.01` -> {'weight_decay': 0.01}, typed by SFTConfig; and what no field took."""
    namespace, rest = argument_parser(number_types).parse_known_args(argv)
    return vars(namespace), rest


def options_help() -> str:
    """The `--help` text of every field a command line may give (TRL's help text)."""
    parser = HfArgumentParser(SFTConfig, add_help=False, usage=argparse.SUPPRESS)
    shown = set(settable()) - set(SET_BY_DISTILL) - set(PRESET_ONLY)
    parser._actions = [a for a in parser._actions if a.dest in shown]
    for group in parser._action_groups:
        group._group_actions = [a for a in group._group_actions if a.dest in shown]
    return parser.format_help()


def main(argv: list[str] | None = None) -> None:
    """`python -m distill.training.sft_config PRESET`: the preset's `sft:` block checked in a process of its own,
    for `main`, whose parent process imports no TRL (every model loads in a step process): exit 2 and the one
    line on a bad key or value."""
    import sys

    from distill.config.params import preset_file_name
    from distill.config.presets import load_preset

    preset = load_preset((argv if argv is not None else sys.argv[1:])[0])
    try:
        check_preset_block(preset.sft, preset_file_name(preset))
    except DistillError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
