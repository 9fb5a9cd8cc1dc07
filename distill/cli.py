"""Command-line plumbing for the thin scripts in entrypoints/: parameters in, one clear error out.

What a phase is (its `*Params` dataclass, `run`, its settings' check, what it builds first) is read from
distill.phases.contract; the dataclass fields are the entry point's parameters, each declared with its help text and
rule (distill/config/params.py). MLflow passes every `-P` value as text, and an empty text means "the preset's
default".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import types
import typing

from distill import DistillError
from distill.config.params import Param, check_preset, check_value, declared, default_text, doc_order, required
from distill.config.params_text import yes_no
from distill.entry_points import entry_point as phase_of
from distill.log import QUIET_ENV, quiet_loggers, setup_logging
from distill.phases.contract import Phase

# List parameters that MLproject declares with an empty default: `mlflow run` passes them empty when they
# are not given, so there an empty text is the default. Every other list given empty is refused.
EMPTY_LIST_IS_DEFAULT = frozenset({"teacher_runs"})


def list_items(name: str, text: str) -> list[str]:
    """`1,2` -> ['1', '2']; an empty item (`1,,2`, `,`) or an empty list (`''`) refused by name: a user who
    typed it meant something, and the preset's grid or a shorter list would silently run instead."""
    if not text.strip():
        if name in EMPTY_LIST_IS_DEFAULT:
            return []
        raise argparse.ArgumentTypeError("empty; leave the parameter out for its default")
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"an empty item in {text!r}; give comma-separated values, none empty")
    return items


def _converter(tp, name: str = ""):
    """A text -> value function for a dataclass field type (Optional unwrapped; '' -> None).
    `none` is the default (None) only for an optional field; for text it is the word (`filter=none`)."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    base = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp

    def convert(text: str):
        text = text.strip()
        if typing.get_origin(base) is list:
            return list_items(name, text)
        if text == "" or optional and text.lower() == "none":
            if optional or base is str:
                return None if optional else ""
        if base is bool:
            try:
                return yes_no(text)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        if base is int:
            if re.fullmatch(r"[+-]?\d+", text):
                return int(text)
            try:
                number = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
            if not number.is_integer():
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
            return int(number)
        if base is float:
            try:
                return float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        return text

    return convert


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad value is one line (a DistillError), not usage text and a bare exit."""

    def error(self, message):
        raise DistillError(re.sub(r"argument --(\w+)", r"\1", message))


# Where relative file parameters are looked up: the folder the user typed the command in. Under
# `mlflow run` the entry point runs in the project folder, so MLproject passes that folder as
# `--base_dir` (a parameter of MLflow's `path` type, default ".", which MLflow makes absolute
# against its own working directory).
BASE_DIR = "base_dir"
EVAL_SET_NAMES = ("gsm8k-ja", "mgsm-ja")
SOURCE_NAMES = ("hub", "shipped", "openai/gsm8k")
MODEL_FIELDS = ("model", "teacher", "student", "translator")


def _absolute(value: str, base: str) -> str:
    return os.path.abspath(os.path.join(base, os.path.expanduser(value)))


def resolve_file_param(name: str, value, base: str):
    """A file parameter made absolute against `base`; names (presets, eval sets, models) stay names."""
    if not isinstance(value, str) or not value.strip():
        return value
    if name in ("train_file", "output_dir"):
        return _absolute(value, base)
    if name == "preset":
        as_file = value.endswith((".yaml", ".yml")) or os.path.isfile(_absolute(value, base))
        return _absolute(value, base) if as_file else value
    if name == "eval_set":  # a name (or a typo of one) stays a name; a file becomes absolute
        as_file = "/" in value or value.endswith((".jsonl", ".json")) or os.path.exists(_absolute(value, base))
        return _absolute(value, base) if value not in EVAL_SET_NAMES and as_file else value
    if name == "source":
        return value if value in SOURCE_NAMES else _absolute(value, base)
    if name in MODEL_FIELDS:
        looks_like_path = value.startswith((".", "~")) or os.path.exists(_absolute(value, base))
        return _absolute(value, base) if looks_like_path and "+" not in value else value
    if name == "storage" and value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        return "sqlite:///" + _absolute(value.removeprefix("sqlite:///"), base)
    return value


def _pop_arg(argv: list[str], name: str) -> tuple[list[str], str | None]:
    """argv without `--name value` / `--name=value`, and the value."""
    out, value, skip = [], None, False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a == f"--{name}" and i + 1 < len(argv):
            value, skip = argv[i + 1], True
        elif a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        else:
            out.append(a)
    return out, value


def _parsing(parse):
    """A declared text -> value function (`reuse`), its DistillError reported as argparse reports a bad value."""
    def convert(text: str):
        try:
            return parse(text)
        except DistillError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def help_text(f: dataclasses.Field, s: Param) -> str:
    """A field's `--help` line: what it is, its default, what is allowed."""
    default = "required" if required(f) else f"default: {default_text(f, s)}"
    text = f"{s.help} ({default}{'; ' + s.rule.allowed() if s.rule else ''})"
    return text.replace("`", "").replace("%", "%%")


def config_field(params_cls) -> str | None:
    """The field of a `*Params` class that gathers trl.SFTConfig fields given by name (sft's `sft_config`)."""
    hints = typing.get_type_hints(params_cls)
    return next((f.name for f in dataclasses.fields(params_cls) if hints[f.name] is dict), None)


def parse_params(params_cls, argv: list[str] | None = None, builds: str = ""):
    """Text -> the phase's dataclass: file parameters made absolute, every number checked by its field's rule.
    `builds`: the entry point whose parameters of what it builds `--help` lists too (parsed by upstream_params).
    A class with a `dict` field (sft) takes any trl.SFTConfig field too, parsed by TRL's HfArgumentParser."""
    argv, base = _pop_arg(list(sys.argv[1:] if argv is None else argv), BASE_DIR)
    base = base or os.getcwd()
    hints = typing.get_type_hints(params_cls)
    gathers = config_field(params_cls)
    parser = _Parser(description=(params_cls.__doc__ or "").strip() or None)
    for f, s in doc_order(params_cls):
        if f.name == gathers:
            continue
        convert = _parsing(s.parse) if s.parse else _converter(hints[f.name], f.name)
        parser.add_argument(f"--{f.name}", type=convert, required=required(f), help=help_text(f, s),
                            default=None if required(f) else argparse.SUPPRESS)
    if builds:
        from distill.params_doc import upstream_fields

        group = parser.add_argument_group("what it builds first (distill/pipeline/targets.py)")
        for f, s in upstream_fields(builds):
            group.add_argument(f"--{f.name}", help=help_text(f, s), default=argparse.SUPPRESS)
    if gathers:
        _with_config_help(parser)
    known, rest = parser.parse_known_args(argv)
    ns = {k: resolve_file_param(k, v, base) for k, v in vars(known).items()}
    if gathers and rest:
        ns[gathers], rest = _config_fields(rest, [a.dest for a in parser._actions])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    params = params_cls(**ns)
    for f, s in declared(params_cls):
        check_value(f.name, s, getattr(params, f.name))
    return params


def _config_fields(argv: list[str], own: list[str]) -> tuple[dict, list[str]]:
    """trl.SFTConfig fields given by name, typed by TRL's parser (a number read as the project reads one). A
    name near a field and none of the entry point's `own` parameters is refused with a did-you-mean among the
    fields; any other is left for argparse's `unrecognized arguments` error."""
    import difflib

    from distill.training.sft_config import config_fields, parse_args, unknown

    given, rest = parse_args(argv, {int: _converter(int), float: _converter(float)})
    for word in rest:
        name = word[2:].split("=")[0].replace("-", "_")
        if not word.startswith("--") or difflib.get_close_matches(name, own, n=1):
            continue  # near one of the entry point's own parameters (`--students`): argparse's error says which
        if difflib.get_close_matches(name, list(config_fields()), n=1):
            raise unknown(name, "the command line")
    return given, rest


def _with_config_help(parser: argparse.ArgumentParser) -> None:
    """`--help` also lists every trl.SFTConfig field a command line may give, with TRL's own help."""
    own = parser.format_help

    def format_help() -> str:
        from distill.training.sft_config import options_help

        return own() + "\ntrl.SFTConfig fields (over the preset's `sft:` block; TRL's help):\n" + options_help()

    parser.format_help = format_help


def upstream_params(argv: list[str], params_cls, phase: str):
    """argv without the parameters of what the entry point builds (targets.BUILD_OPTIONS and the grid parameters
    it takes that are not its own), and those, parsed (targets.UpstreamParams)."""
    from distill.pipeline.targets import BUILD_OPTIONS, UpstreamParams

    own = {f.name for f in dataclasses.fields(params_cls)}
    taken = []
    for name in (*BUILD_OPTIONS, *phase_of(phase).grid_params):
        if name in own:
            continue
        argv, value = _pop_arg(argv, name)
        if value is not None:
            taken += [f"--{name}", value]
    return argv, parse_params(UpstreamParams, taken)


def _preset_of(argv: list[str]) -> str | None:
    rest, base = _pop_arg(argv, BASE_DIR)
    _, preset = _pop_arg(rest, "preset")
    return resolve_file_param("preset", preset, base or os.getcwd()) if preset else None


def check_settings(phase: Phase, params) -> None:
    """Every setting of an entry point that builds its upstream, checked before anything is built: its
    `preflight`, else its `resolve_settings` (pure: what its reuse key resolves). A word the phase reads only when it
    starts (`bf16=maybe`, `tokenizers=foo`) is refused now, not after the teachers have run."""
    code = phase.code
    if code.preflight is not None:
        code.preflight(params)
    elif code.resolve_settings is not None:
        from distill.config.presets import load_preset

        code.resolve_settings(params, load_preset(params.preset))


def quiet_console(argv: list[str]) -> list[str]:
    """argv without `--verbose`; unless it is true, the quiet environment (what the user set wins).
    Set before MLflow or transformers is imported: they read it then; step processes inherit it."""
    argv, verbose = _pop_arg(argv, "verbose")
    if verbose is not None and yes_no(verbose, "verbose"):
        os.environ["DISTILL_VERBOSE"] = "1"
    else:
        for k, v in QUIET_ENV.items():
            os.environ.setdefault(k, v)
    return argv


def run_phase(phase: str, argv: list[str] | None = None) -> None:
    """Parse, set the offline environment before any Hub library loads, run, report errors plainly."""
    argv = sys.argv[1:] if argv is None else argv
    from distill.stop_signals import exit_code, restore, stop_like_ctrl_c, stopped_line

    handlers = stop_like_ctrl_c()  # a scheduler's SIGTERM (preemption) ends the runs as ^C does
    started: list[str] = []
    try:
        argv = quiet_console(list(argv))
        quiet_loggers()
        setup_logging()  # the level `--verbose` and the launcher's rank ask for
        from distill.config.environment import apply_offline_env
        from distill.config.presets import load_preset

        preset_name = _preset_of(argv)
        preset = load_preset(preset_name or "offline")
        apply_offline_env(preset)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        this = phase_of(phase)
        params_cls = this.code.params
        check_preset(preset, [params_cls])  # the preset's values this entry point may read, by their rules
        builds = this.builds_upstream  # it builds its upstream first (distill.pipeline.upstream)
        if builds:
            argv, up = upstream_params(argv, params_cls, phase)
        params = parse_params(params_cls, argv, builds=phase if builds else "")
        if this.trains:  # after the command line: a typo in it is refused without the ~3 s check in a child
            check_sft_block(preset, preset_name or "offline", in_a_child=this.name == "main")
        if builds:
            check_settings(this, params)
        if this.code.prepare:  # work a phase starts before the tracking store is set up
            this.code.prepare(params)
        if builds:
            from distill.pipeline import main_run

            main_run.note_cli_run()  # `mlflow run`'s run, before the preset's experiment may take it away
        from distill.tracking.store import ensure_tracking_reachable, ensure_tracking_store, use_preset_experiment

        ensure_tracking_reachable()
        ensure_tracking_store()
        use_preset_experiment(preset)
        from distill.tracking.phase_runs import on_phase_run

        with on_phase_run(lambda pr: started.append(pr.run_id)):  # the runs a full disk may leave RUNNING
            if builds:
                from distill.pipeline import upstream

                upstream.run(this, params, up)
            else:
                this.code.run(params)
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        from distill.disk_full import explain

        line = explain(e, f"{phase} output", started)  # a full disk: one line, not MLflow's tracebacks
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(stopped_line(e, phase), file=sys.stderr)
        sys.exit(exit_code(e))
    finally:
        restore(handlers)


def check_sft_block(preset, name: str, in_a_child: bool) -> None:
    """The preset's `sft:` block, checked against TRL's SFTConfig before anything runs; for `main` in a child
    process (~3 s), as its own process imports no TRL, torch or transformers (each step loads them in its own)."""
    if not in_a_child:
        from distill.config.params import preset_file_name
        from distill.training.sft_config import check_preset_block

        check_preset_block(preset.sft, preset_file_name(preset))
        return
    import subprocess

    done = subprocess.run([sys.executable, "-m", "distill.training.sft_config", name], capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise DistillError(
            lines[-1] if done.returncode == 2 else f"checking the preset's sft: block failed: {lines[-1]}"
        )
