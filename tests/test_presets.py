"""Presets as typed data and parameters parsed in one place (distill/config/preset.py,
distill/config/params_text.py, cli.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from distill import DistillError
from distill.cli import parse_params
from distill.config.environment import OFFLINE_ENV, offline_env
from distill.config.params_text import split_list, yes_no
from distill.config.presets import PRESET_DIR, load_preset

ROOT = Path(__file__).resolve().parents[1]
# MLproject's parameters against the fields: tests/test_params.py.


@pytest.mark.parametrize("name", ["paper", "offline"])
def test_shipped_presets_load_typed(name):
    """The shipped presets load as typed data."""
    preset = load_preset(name)
    assert preset.name == name and preset.data.eval_set and preset.sft.seeds == [42]
    assert preset.as_dict() == yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())


def _write(tmp_path, edit) -> str:
    data = yaml.safe_load((PRESET_DIR / "offline.yaml").read_text())
    data["name"] = f"edited-{len(list(tmp_path.iterdir()))}"
    edit(data)
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return str(path)


def test_unknown_key_refused_by_name(tmp_path):
    """An unknown key is refused, naming the file and the key.

    (The `sft:` block's keys are trl.SFTConfig fields, checked where sft settles: tests/test_sft_config.py.)"""
    path = _write(tmp_path, lambda d: d.update(teachrs={}))
    with pytest.raises(DistillError, match=rf"{path} has an unknown key 'teachrs'"):
        load_preset(path)


def test_missing_key_refused_by_name(tmp_path):
    """A missing key is refused, naming the file and the key."""
    path = _write(tmp_path, lambda d: d["select"].pop("n"))
    with pytest.raises(DistillError, match=rf"preset file {path} has no 'select.n'"):
        load_preset(path)
    path = _write(tmp_path, lambda d: d.pop("sweep"))
    with pytest.raises(DistillError, match=rf"{path} has no 'sweep'"):
        load_preset(path)


def test_optional_keys_may_be_left_out(tmp_path):
    path = _write(tmp_path, lambda d: (d["baseline"].pop("shots"), d.pop("description"),
                                       d["sweep"]["space"].pop("warmup_steps")))
    preset = load_preset(path)
    assert preset.baseline.shots is None and preset.description is None
    assert "warmup_steps" not in preset.sweep.ranges()


def test_preset_numbers_follow_param_rules(tmp_path):
    """Preset numbers follow the rules of the parameters that take them."""
    from distill.config.params import check_preset, resolve
    from distill.phases.select import SelectParams

    path = _write(tmp_path, lambda d: d["select"].update(n=0))
    preset = load_preset(path)  # its shape is right; its numbers are the parameters' business
    message = rf"^preset {path}: select.n must be an integer >= 1 \(questions to select\) \(got 0\)$"
    with pytest.raises(DistillError, match=message):
        check_preset(preset, [SelectParams])        # an entry point, before it starts
    with pytest.raises(DistillError, match=message):
        resolve(SelectParams(), preset)             # a Python caller, when the value is taken
    assert resolve(SelectParams(n=5), preset).n == 5  # typed: the preset's value is not taken


@pytest.mark.parametrize("text, value", [("true", True), ("Yes", True), (" 1 ", True), ("on", True), ("y", True),
                                         ("false", False), ("NO", False), ("0", False), ("off", False), ("n", False)])
def test_yes_no(text, value):
    assert yes_no(text) is value


def test_yes_no_refuses_other_words():
    """`yes_no` refuses anything else, by name."""
    with pytest.raises(DistillError, match="register: expected true or false, got 'maybe'"):
        yes_no("maybe", "register")
    from distill.phases.sft import SftParams

    with pytest.raises(DistillError, match="^register: expected true or false, got 'maybe'$"):
        parse_params(SftParams, ["--teacher", "7B", "--student", "s", "--register", "maybe"])


def test_lists_are_parsed_once():
    from distill.phases.report import ReportParams
    from distill.pipeline import MainParams

    assert split_list(" 7B, 72B ,,") == ["7B", "72B"] and split_list("") == [] and split_list(None) == []
    p = parse_params(MainParams, ["--teachers", "7B,72B"])
    assert (p.teachers, p.students, p.seeds) == (["7B", "72B"], [], [])
    with pytest.raises(DistillError, match="^students: empty; leave the parameter out for its default$"):
        parse_params(MainParams, ["--students", ""])  # typed empty: refused, not the preset's grid
    assert ReportParams(teachers="7B, 72b").teachers == ["7B", "72b"]  # a Python caller's text, split there
    with pytest.raises(DistillError, match="seeds must be comma-separated numbers"):
        parse_params(MainParams, ["--seeds", "1,x"])


@pytest.mark.parametrize("unset", ["", "None"])
def test_unset_mlflow_value_means_preset(unset):
    """An unset MLflow value means the preset's."""
    from distill.phases.teacher import TeacherParams

    p = parse_params(TeacherParams, ["--teacher", "7B", "--batch_size", unset, "--max_new_tokens", unset])
    assert p.batch_size is None and p.max_new_tokens is None


def test_a_typed_zero_is_refused_by_name():
    from distill.phases.teacher import TeacherParams

    with pytest.raises(DistillError, match=r"^batch_size must be an integer >= 1 \(got 0\)"):
        parse_params(TeacherParams, ["--teacher", "7B", "--batch_size", "0"])


def test_offline_variables_set_in_one_place(monkeypatch):
    """The offline variables are set in one place."""
    for name in OFFLINE_ENV:
        monkeypatch.setenv(name, "0")
    assert {n: os.environ[n] for n in offline_env()} and all(os.environ[n] == "0" for n in OFFLINE_ENV)
    assert dict(offline_env({}, force=True)) == dict.fromkeys(OFFLINE_ENV, "1")
