"""Command-line plumbing for the thin scripts in entrypoints/: parameters in, one clear error out.

Each phase module exposes a `*Params` dataclass and `run(params)`; the dataclass fields are the
entry point's parameters. MLflow passes every `-P` value as text, and an empty text means
"the preset's default".
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import typing

from distill import DistillError

TRUE = {"1", "true", "yes", "y", "on"}
FALSE = {"0", "false", "no", "n", "off"}


def _converter(tp):
    """A text -> value function for a dataclass field type (Optional unwrapped; '' -> None)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = type(None) in typing.get_args(tp)
    base = args[0] if args else tp

    def convert(text: str):
        text = text.strip()
        if text == "" or text.lower() == "none":
            if optional or base is str:
                return None if optional else ""
        if base is bool:
            if text.lower() in TRUE:
                return True
            if text.lower() in FALSE:
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        if base in (int, float):
            try:
                return base(float(text)) if base is int and float(text).is_integer() else base(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        return text

    return convert


def _reuse(text: str):
    """`reuse`: true, false, or ignore_code (see tracking.reuse_mode)."""
    from distill.tracking import reuse_mode

    try:
        return reuse_mode(text)
    except DistillError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_params(params_cls, argv: list[str] | None = None):
    hints = typing.get_type_hints(params_cls)
    parser = argparse.ArgumentParser(description=(params_cls.__doc__ or "").strip() or None)
    for f in dataclasses.fields(params_cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        convert = _reuse if f.name == "reuse" else _converter(hints[f.name])
        parser.add_argument(f"--{f.name}", type=convert, required=required,
                            default=None if required else argparse.SUPPRESS)
    ns = vars(parser.parse_args(argv))
    return params_cls(**ns)


def _preset_of(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return None


def run_phase(phase: str, argv: list[str] | None = None) -> None:
    """Parse, set the offline environment before any Hub library loads, run, report errors plainly."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        from distill.config import apply_offline_env, load_preset

        preset_name = _preset_of(argv)
        if preset_name:
            apply_offline_env(load_preset(preset_name))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        module = importlib.import_module(f"distill.{phase}")
        params_cls = next(v for k, v in vars(module).items() if k.endswith("Params") and dataclasses.is_dataclass(v))
        params = parse_params(params_cls, argv)
        from distill.tracking import ensure_tracking_reachable

        ensure_tracking_reachable()
        module.run(params)
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"interrupted: finished work of {phase} is kept; run the same command again to continue",
              file=sys.stderr)
        sys.exit(130)
