"""Every command the README and the docs' pages (docs/*.md) tell a user to type, checked against the project without
running it.

`mlflow run` lines (fenced, and inline ones that start `mlflow run .`): the entry point is in MLproject, every
`-P name` is a declared parameter or a field of the entry point's Params class, the values parse as the entry
point will parse them (cli.parse_params: types, ranges, required fields, preset and model names), and
`--env-manager local` is there: without it MLflow builds a fresh conda env from conda.yaml (torch and `-e .`
only), where `backend=vllm`, the `ray` and `deepspeed` extras are missing. `accelerate launch ... entrypoints/
x.py --flag v` and `python entrypoints/x.py --flag v` lines: the script exists and its flags parse the same way.
"""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from distill import DistillError
from distill.cli import parse_params
from distill.config.models import resolve_model, resolve_role
from distill.config.presets import load_preset
from tests.conftest import ROOT

# The README and every page of the docs site, by file name: what a user reads and copies.
TEXTS = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8")
         for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
PLACEHOLDER = "PLACEHOLDER"           # what `<evaluate run id>` and the like stand for
POPPED = {"base_dir", "verbose"}       # taken off argv by cli.py before the Params class parses it
# Lines that cannot work yet, with the reason; an entry that starts to pass fails the test, so that it is
# taken out. (The design card's `mlflow run . -e sft --env-manager local -P teacher=7B` was one until the
# entry points built their upstream: it is the README's sft example now.)
EXPECTED_TO_FAIL: dict[str, str] = {}


def _commands_in(text: str) -> list[list[str]]:
    """Shell text -> one token list per simple command (split at &&, ||, ;, |, &), placeholders kept whole."""
    text = re.sub(r"<[^<>\n]*>", PLACEHOLDER, text.replace("\\\n", " "))
    out = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        try:
            tokens = list(lexer)
        except ValueError:  # an unclosed quote: not a command
            continue
        command: list[str] = []
        for token in tokens + [";"]:
            if token in (";", "&&", "||", "|", "&"):
                if command:
                    out.append(command)
                command = []
            else:
                command.append(token)
    return out


def _without_env(command: list[str]) -> list[str]:
    i = 0
    while i < len(command) and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[i]):
        i += 1
    return command[i:]


def fenced_shell_blocks(text: str) -> list[str]:
    """The text of each fenced block in a shell language (or none), fences paired in order."""
    blocks, lang, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                if lang in ("", "bash", "sh", "shell"):
                    blocks.append("\n".join(lines) + "\n")
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def readme_commands(text: str) -> list[tuple[str, list[str]]]:
    """(the line as printed, its tokens) for each command of interest in a page, fenced or inline."""
    found = []
    for block in fenced_shell_blocks(text):
        for command in _commands_in(block):
            command = _without_env(command)
            if command[:2] in (["mlflow", "run"], ["accelerate", "launch"]) or (
                    command[:1] == ["python"] and len(command) > 1 and command[1].startswith("entrypoints/")):
                found.append((shlex.join(command), command))
    for span in re.findall(r"`((?:[A-Z_]+=\S+ )*(?:mlflow run \. |python entrypoints/\w+\.py)[^`]*)`", text):
        for command in _commands_in(span):
            found.append((shlex.join(_without_env(command)), _without_env(command)))
    return found


COMMANDS = [(f"{name}: {line}", command) for name, text in TEXTS.items() for line, command in readme_commands(text)]


def _params_class(script: str):
    """The Params class of the phase an entry-point script runs (`run_phase("main")` -> MainParams), and the phase."""
    from distill.entry_points import entry_point as phase

    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    name = re.search(r'run_phase\("(\w+)"\)', path.read_text()).group(1)
    return phase(name).code.params, name


def _check_names(params) -> None:
    """Short model names in the values resolve in the command's preset (a typo here is a typo a user copies)."""
    preset = load_preset(getattr(params, "preset", "offline"))
    given = lambda v: v and PLACEHOLDER not in v  # noqa: E731
    for t in (getattr(params, "teacher", "") or "").split("+"):
        if given(t):
            resolve_role(t, preset, "teacher")
    if given(getattr(params, "student", "")):
        resolve_role(params.student, preset, "student")
    if given(getattr(params, "model", "")) and not params.model.startswith(("models:/", "runs:/")):
        resolve_model(params.model, preset, served=getattr(params, "backend", "") == "openai")
    for t in getattr(params, "teachers", []) or []:
        resolve_role(t, preset, "teacher")
    for s in getattr(params, "students", []) or []:
        resolve_role(s, preset, "student")


def _parse(params_cls, argv: list[str], elided: bool, phase: str = ""):
    """The flags as the entry point parses them (the parameters of what it builds first, distill.pipeline.targets,
    as cli.py takes them off); with `...` in the line, only that every flag is a field."""
    import dataclasses

    from distill.cli import config_field, upstream_params
    from distill.entry_points import entry_point as phase_of

    up = None
    if phase and phase_of(phase).builds_upstream:
        argv, up = upstream_params([a for a in argv if a != "..."], params_cls, phase)
        argv += ["..."] if elided else []
    fields = {f.name for f in dataclasses.fields(params_cls)} | POPPED
    if config_field(params_cls):  # sft: any trl.SFTConfig field a preset may set, by its TRL name
        from distill.training.sft_config import settable

        fields |= set(settable())
    flags = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--")]
    unknown = [f for f in flags if f not in fields]
    assert not unknown, f"no such parameter {unknown} of {params_cls.__name__}"
    if not elided:
        params = parse_params(params_cls, [a for a in argv if a != "..."])
        _check_names(params)
        for t in up.teachers if up else []:  # the selection's teachers, of the command's preset
            resolve_role(t, load_preset(getattr(params, "preset", "offline")), "teacher")


def check_mlflow_run(command: list[str]) -> None:
    args = command[2:]
    assert args and args[0] == ".", "the project is `.`, the folder the README's set-up cloned"
    entry, env_manager, params, elided, i = "main", None, {}, False, 1
    while i < len(args):
        a = args[i]
        if a in ("-e", "--entry-point"):
            entry, i = args[i + 1], i + 2
        elif a == "--env-manager":
            env_manager, i = args[i + 1], i + 2
        elif a.startswith("--env-manager="):
            env_manager, i = a.split("=", 1)[1], i + 1
        elif a in ("-P", "--param-list"):
            name, _, value = args[i + 1].partition("=")
            params[name], i = value, i + 2
        elif a == "...":
            elided, i = True, i + 1
        elif a in ("--experiment-name", "--experiment-id", "--run-name", "-b", "--backend"):
            i += 2
        else:
            raise AssertionError(f"an argument the README's commands do not use: {a!r}")
    assert env_manager == "local", ("without `--env-manager local` MLflow builds a conda env from conda.yaml "
                                    "(torch and `-e .` only): vLLM and the extras are missing there")
    assert entry in MLPROJECT, f"no entry point {entry!r} in MLproject ({', '.join(MLPROJECT)})"
    spec = MLPROJECT[entry]
    declared = spec.get("parameters") or {}
    script = re.search(r"python (entrypoints/\w+\.py)", spec["command"]).group(1)
    params_cls, phase = _params_class(script)
    required = [n for n, p in declared.items() if not isinstance(p, dict) or "default" not in p]
    missing = [n for n in required if n not in params]
    assert elided or not missing, f"MLflow refuses it: no value for {missing}"
    # MLflow passes declared parameters (with their defaults) and undeclared ones alike as `--name value`
    values = {n: str(p["default"]) for n, p in declared.items() if isinstance(p, dict) and "default" in p} | params
    values.pop("base_dir", None)
    _parse(params_cls, [x for n, v in values.items() for x in (f"--{n}", v)] + (["..."] if elided else []), elided,
           phase)


def check_script(command: list[str]) -> None:
    if command[0] == "accelerate":
        i = 2
        while not command[i].endswith(".py"):
            if command[i] == "--config_file":
                assert (ROOT / command[i + 1]).is_file(), f"no accelerate config {command[i + 1]}"
                i += 2
            else:
                i += 1 if command[i].startswith("--") and "=" in command[i] else 2
        script, argv = command[i], command[i + 1:]
        if not script.startswith("entrypoints/") and argv and argv[0].startswith("entrypoints/"):
            assert (ROOT / script).is_file(), f"no script {script}"  # a wrapper that runs the entry point
            script, argv = argv[0], argv[1:]
    else:
        script, argv = command[1], command[2:]
    if argv == ["--help"]:  # the entry point's own help, run as written
        import subprocess
        import sys

        done = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), done.stderr[-2000:]
        return
    params_cls, phase = _params_class(script)
    _parse(params_cls, argv, "..." in argv, phase)


def test_docs_have_the_commands_read():
    """The README and pages have the commands this test reads."""
    kinds = {c[0] if c[0] != "python" else "python entrypoints" for _, c in COMMANDS}
    assert {"mlflow", "accelerate"} <= kinds and len(COMMANDS) >= 25
    pages = {line.split(": ", 1)[0] for line, _ in COMMANDS}
    assert {"README.md", "docs/quickstart.md", "docs/sft.md", "docs/study-on-gpus.md"} <= pages, pages


@pytest.mark.parametrize("line,command", COMMANDS, ids=[line for line, _ in COMMANDS])
def test_a_readme_command_works_as_written(line, command):
    try:
        (check_mlflow_run if command[0] == "mlflow" else check_script)(command)
    except (AssertionError, DistillError) as e:
        if line in EXPECTED_TO_FAIL:
            pytest.xfail(f"{EXPECTED_TO_FAIL[line]}: {e}")
        if isinstance(e, DistillError):
            raise AssertionError(f"the entry point would refuse it: {e}") from None
        raise
    assert line not in EXPECTED_TO_FAIL, "it works now: take it out of EXPECTED_TO_FAIL"


@pytest.mark.parametrize("line,message", [
    ("mlflow run . -e sft -P preset=paper -P teacher=7B -P student=qwen2.5-0.5b", "--env-manager local"),
    ("mlflow run . -e fine-tune --env-manager local -P teacher=7B", "no entry point 'fine-tune'"),
    ("mlflow run . -e sft --env-manager local -P teacher=7B -P studnet=qwen2.5-0.5b",
     "no such parameter \\['studnet'\\]"),
    ("mlflow run . -e sft --env-manager local -P teacher=7B -P students=qwen2.5-0.5b",
     "no such parameter \\['students'\\]"),
    ("mlflow run . -e sft --env-manager local -P teacher=7B -P train_limit=0", "train_limit must be an integer >= 1"),
    ("mlflow run . -e evaluate --env-manager local -P model=7B -P plan=maybe", "plan: expected true or false"),
    ("mlflow run . -e evaluate --env-manager local -P model=7B -P limt=3", "no such parameter \\['limt'\\]"),
    ("mlflow run . -e evaluate --env-manager local -P model=7B -P limit=0", "limit must be an integer >= 1"),
    ("mlflow run . -e evaluate --env-manager local -P model=9B", "unknown model name '9B'"),
    ("accelerate launch --config_file distill/accelerate/fsdp.yaml entrypoints/sft.py --teacher 7B --studnet x",
     "no such parameter \\['studnet'\\]"),
    ("accelerate launch --config_file distill/accelerate/fsdp.yaml entrypoints/sft.py "
     "--teacher 7B --learning_rte 1e-5",
     "no such parameter \\['learning_rte'\\]"),
    ("accelerate launch --config_file distill/accelerate/ddp.yaml entrypoints/sft.py --teacher 7B --student "
     "qwen2.5-0.5b", "no accelerate config"),
])
def test_check_catches_user_errors(line, message):
    """The check catches what a user would hit."""
    [command] = _commands_in(line)
    with pytest.raises((AssertionError, DistillError), match=message):
        try:
            (check_mlflow_run if command[0] == "mlflow" else check_script)(command)
        except DistillError as e:
            raise AssertionError(f"the entry point would refuse it: {e}") from None
