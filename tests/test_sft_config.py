"""TRL's SFTConfig owns the training hyperparameters (distill/training/sft_config.py): the preset's `sft:` keys and
the sweep's space are its fields by name, any field may be given on the command line, and the reuse key covers
every field given."""

import ast
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
import yaml

from distill import DistillError
from distill.cli import parse_params, upstream_params
from distill.config.presets import PRESET_DIR, load_preset
from distill.phases import sft, sweep
from distill.phases.sft import SftParams
from distill.phases.sweep import SweepParams
from tests.conftest import ROOT

STUDENT = {"teacher": "7B", "student": "qwen2.5-0.5b"}
ROWS = [{"id": "q1", "prompt": "問題: 1+1?\n答え:", "completion": " 2"}]


def _preset(tmp_path, edit) -> str:
    data = yaml.safe_load((PRESET_DIR / "offline.yaml").read_text())
    edit(data)
    path = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return str(path)


def test_unknown_key_did_you_mean(tmp_path):
    """An unknown sft key is refused with a did you mean."""
    path = _preset(tmp_path, lambda d: d["sft"].update(learning_rte=1.0e-4))
    with pytest.raises(DistillError, match=rf"preset file {path}: 'sft' has an unknown key 'learning_rte' "
                                           r"\(did you mean 'learning_rate'\?\)"):
        sft.resolve_settings(SftParams(**STUDENT, preset=path), load_preset(path))
    with pytest.raises(DistillError, match=r"unknown key 'weight_decai' \(did you mean 'weight_decay'\?\)"):
        parse_params(SftParams, ["--teacher", "7B", "--weight_decai", "0.1"])


def test_own_or_out_of_range_field_refused(tmp_path):
    """A field sft sets itself or out of range is refused by name."""
    path = _preset(tmp_path, lambda d: d["sft"].update(report_to="wandb"))
    with pytest.raises(DistillError, match="'report_to' is set by sft itself"):
        sft.resolve_settings(SftParams(**STUDENT, preset=path), load_preset(path))
    with pytest.raises(DistillError, match=r"weight_decay must be a finite number >= 0 \(got -0.5\)"):
        sft.resolve_settings(SftParams(**STUDENT, weight_decay=-0.5), load_preset("offline"))
    with pytest.raises(DistillError, match=r"adam_beta1 must be a finite number \(got nan\)"):
        sft.resolve_settings(SftParams(**STUDENT, adam_beta1=float("nan")), load_preset("offline"))


def test_command_line_field_reaches_config(tmp_path):
    """Any SFTConfig field on the command line reaches SFTConfig."""
    from distill.training.sft_config import build

    p = parse_params(SftParams, ["--teacher", "7B", "--student", "qwen2.5-0.5b", "--weight_decay", "0.01",
                                 "--optim", "adafactor", "--learning_rate", "2e-4"])
    assert p.sft_config == {"weight_decay": 0.01, "optim": "adafactor", "learning_rate": 2e-4}
    settings = sft.resolved_sft_config(p, load_preset("offline"))
    assert settings["num_train_epochs"] == 2 and settings["weight_decay"] == 0.01  # the preset's, and the given
    args = build(settings, output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert (args.weight_decay, args.optim, args.learning_rate) == (0.01, "adafactor", 2e-4)


def test_help_lists_fields_with_trl_help():
    """Help lists SFTConfig fields with TRL's help."""
    out = subprocess.run([sys.executable, str(ROOT / "entrypoints" / "sft.py"), "--help"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from trl import SFTConfig

    help_text = next(f for f in SFTConfig.__dataclass_fields__.values() if f.name == "weight_decay").metadata["help"]
    assert "--weight_decay" in out.stdout and " ".join(help_text.split()[:6]) in " ".join(out.stdout.split())


def test_reuse_key_covers_given_fields():
    """The reuse key covers every field given and a default adds none."""
    preset = load_preset("offline")
    base = sft.reuse_key(SftParams(**STUDENT), preset, ROWS)
    assert base != sft.reuse_key(SftParams(**STUDENT, weight_decay=0.01), preset, ROWS)
    assert "weight_decay" not in base and base["learning_rate"] == 1.0e-3  # the preset's settings, by name
    # the key before TRL owned the settings, less the one TRL renamed (warmup_ratio -> warmup_steps)
    before = {"teacher", "student", "preset", "learning_rate", "num_train_epochs", "per_device_train_batch_size",
              "gradient_accumulation_steps", "max_grad_norm", "lr_scheduler_type", "warmup_ratio", "bf16",
              "gradient_checkpointing", "max_length", "batching", "seed", "limit", "register", "train_file",
              "student_source", "train_digest"}
    assert set(base) == before - {"warmup_ratio"} | {"warmup_steps"}


def test_sweep_space_names_fields(tmp_path):
    """The sweep space names SFTConfig fields."""
    space = sweep.search_space(SweepParams(**STUDENT), load_preset("offline"))
    assert set(space) == set(load_preset("offline").sweep.ranges()) and "warmup_steps" in space
    typo = _preset(tmp_path, lambda d: d["sweep"]["space"].update(weight_decai={"low": 0.0, "high": 0.1}))
    with pytest.raises(DistillError, match=r"unknown key 'weight_decai' \(did you mean 'weight_decay'\?\)"):
        sweep.search_space(SweepParams(**STUDENT, preset=typo), load_preset(typo))
    zero = _preset(tmp_path, lambda d: d["sweep"]["space"].update(learning_rate={"low": 0.0, "high": 0.1}))
    with pytest.raises(DistillError, match=r"sweep.space.learning_rate must be a finite number in \(0, 1\]"):
        sweep.search_space(SweepParams(**STUDENT, preset=zero), load_preset(zero))
    with pytest.raises(DistillError, match="preset 'offline' gives no range for weight_decay"):
        sweep.search_space(SweepParams(**STUDENT, space="weight_decay"), load_preset("offline"))


# The names of SFTConfig settings the presets set (and those a sweep searches).
HYPERPARAMETERS = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                   "warmup_steps", "warmup_ratio", "max_grad_norm", "lr_scheduler_type", "max_length", "weight_decay",
                   "adam_beta1", "adam_beta2", "adam_epsilon", "optim")
# Where code must name a setting to act on it, and why; a name anywhere else fails the test below.
READS = {
    "distill/config/sft_checks.py": "this project's range checks of SFTConfig fields where TRL has none, and the "
                                    "checks of a training set against the schedule and max_length",
    "distill/training/batching.py": "splits the batch the settings ask for over a launch's processes: it reads and "
                                    "rewrites the two batch fields of the Trainer's arguments",
    "distill/training/callbacks.py": "Trainer's log key `learning_rate` is a metric name (the scheduled rate)",
    "distill/tracking/smoke_runs.py": "a run that trains fewer epochs than its preset is a smoke run, not registered",
    "distill/training/disk.py": "the disk a run needs: one checkpoint an epoch",
    "distill/estimates/disk.py": "the disk a run needs: one checkpoint an epoch (the plan's estimate)",
    "distill/estimates/steps.py": "the optimizer steps a run takes (the plan's estimate of its time)",
}


def _code_words(path: Path) -> set[str]:
    """Names and string literals of a module, without its comments and docstrings."""
    text = path.read_text(encoding="utf-8")
    docstrings = {(n.body[0].lineno, n.body[0].col_offset) for n in ast.walk(ast.parse(text))
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
                  and isinstance(n.body[0].value.value, str)}
    fstring_parts = {getattr(tokenize, t) for t in ("FSTRING_START", "FSTRING_MIDDLE") if hasattr(tokenize, t)}
    words = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):  # Python 3.11: an f-string is one STRING
        if tok.type in (tokenize.NAME, *fstring_parts) or tok.type == tokenize.STRING and tok.start not in docstrings:
            words.update(re.findall(r"\w+", tok.string))
    return words


def test_no_hyperparameter_outside_presets():
    """No sft hyperparameter is written in the package outside the presets.

    Each hyperparameter is written once: in distill/presets/*.yaml, by its trl.SFTConfig name. This greps every .py
    file of the package for the names in HYPERPARAMETERS as code: identifiers (a field, a keyword argument, an
    attribute), string literals and f-string text. Comments and docstrings are prose and not searched. A module
    whose job is to act on a setting by its name (check its range, split the batch, read a log key) is listed in
    READS with its reason, and only there may it be named."""
    package = ROOT / "distill"
    found = {}
    for path in sorted(package.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        hits = sorted(_code_words(path) & set(HYPERPARAMETERS))
        if hits and rel not in READS:
            found[rel] = hits
    assert found == {}, f"SFT hyperparameters written in code (they belong in the presets' `sft:` block): {found}"


def test_grep_finds_hyperparameter_in_code(tmp_path):
    """The grep finds a hyperparameter written in code.

    The grep above is not blind: a keyword argument, an attribute and a dict key are found; a comment is not."""
    module = tmp_path / "m.py"
    module.write_text('"""learning_rate in a docstring."""\n# weight_decay in a comment\n'
                      'x = dict(max_grad_norm=1)\ny = args.optim\nz = {"num_train_epochs": 2}\n', encoding="utf-8")
    assert _code_words(module) & set(HYPERPARAMETERS) == {"max_grad_norm", "optim", "num_train_epochs"}


def test_mlflow_run_passes_undeclared_field():
    """`mlflow run` passes an undeclared SFTConfig field as an option.

    `-P weight_decay=0.01` on the sft entry point, which MLproject does not declare: MLflow's project code
    appends it to the command as `--weight_decay 0.01`, which sft's parser gives to SFTConfig."""
    from mlflow.projects import _project_spec

    project = _project_spec.load_project(str(ROOT))
    command = project.get_entry_point("sft").compute_command({"teacher": "7B", "weight_decay": "0.01"}, None)
    argv = shlex.split(command)
    assert argv[argv.index("--weight_decay") + 1] == "0.01"
    argv, _ = upstream_params(argv[2:], SftParams, "sft")  # what run_phase takes first: upstream, plan
    p = parse_params(SftParams, argv)
    assert p.sft_config == {"weight_decay": 0.01}
    assert json.dumps(p.sft_config)  # the key payload is plain data


def test_main_refuses_unknown_key_first(tmp_path):
    """Main refuses an unknown sft key before any run.

    The study's entry point checks the `sft:` block before it translates anything, not when it reaches sft."""
    path = _preset(tmp_path, lambda d: d["sft"].update(learning_rte=1.0e-4))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, str(ROOT / "entrypoints" / "main.py"), "--preset", path], cwd=tmp_path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "unknown key 'learning_rte' (did you mean 'learning_rate'?)" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
