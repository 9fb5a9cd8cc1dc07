"""Each parameter declared once (distill/config/params.py): every field of every phase carries its declaration, every
field that can change a phase's output is in its reuse key (changing it alone changes the key), a field left
out says why, and docs/parameters.md and MLproject's `also:` lines follow the fields."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest
import yaml

from distill.config.params import Default, declared, preset_paths, preset_values
from distill.config.presets import PRESET_DIR, load_preset
from distill.params_doc import PAGE, PHASES, entry_point_fields, mlproject_also, params_class, stale

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"id": str(i), "prompt": f"問題: {i}+1は？\n", "completion": f"解答: {i + 1}"} for i in range(6)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A renamed copy of the offline preset (another `preset`), an eval set, a source and a train file."""
    root = tmp_path_factory.mktemp("params")
    data = yaml.safe_load((PRESET_DIR / "offline.yaml").read_text())
    (root / "copy.yaml").write_text(yaml.safe_dump({**data, "name": "offline-copy"}, allow_unicode=True))
    (root / "eval.jsonl").write_text('{"question": "1+1は？", "answer_number": 2}\n', encoding="utf-8")
    shipped = (ROOT / "distill/resources/gsm8k_train_sample.jsonl").read_text(encoding="utf-8").splitlines()
    (root / "source.jsonl").write_text("\n".join(shipped[:5]) + "\n", encoding="utf-8")
    (root / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS),
                                      encoding="utf-8")
    return root


def reuse_key(phase: str, p) -> dict:
    """The phase's pure key function: parameters (and what a run would read) in, key payload out."""
    from distill.entry_points import entry_point as phase_of

    key = phase_of(phase).code.reuse_key
    if phase == "main":
        return key(p)
    preset = load_preset(p.preset)
    extra = {"sft": (ROWS,), "report": ("inputs-digest",)}.get(phase, ())
    return key(p, preset, *extra)


SERVER = "http://127.0.0.1:1/v1"
GENERATION = dict(backend="openai", max_new_tokens=7, batch_size=3, base_url=SERVER, tensor_parallel_size=2)


def cases(files) -> dict[str, tuple[dict, dict]]:
    """Per phase: the typed parameters of a base run, and for every keyed field a value other than the one the
    base resolves to. A keyed field a phase gains needs a value here, else the test below names it."""
    preset = str(files / "copy.yaml")
    return {
        "translate": ({}, {**GENERATION, "preset": preset, "translator": "7B", "source": str(files / "source.jsonl"),
                           "limit": 5, "shard_size": 7}),
        "teacher": ({"teacher": "7B"},
                    {**GENERATION, "teacher": "72B", "preset": preset, "limit": 5, "shard_size": 7}),
        "select": ({}, {"preset": preset, "n": 5, "seed": 7, "filter": "all_correct", "dev_size": 3,
                        "allow_fewer": True, "keep_truncated": False}),
        "sft": ({"teacher": "7B", "student": "qwen2.5-0.5b"},
                {"teacher": "72B", "student": "qwen2.5-1.5b", "preset": preset, "bf16": "false", "seed": 7,
                 "sft_config": {"weight_decay": 0.01}, "limit": 5, "register": False,
                 "train_file": str(files / "train.jsonl")}),
        "evaluate": ({"model": "7B"}, {**GENERATION, "model": "72B", "preset": preset,
                                       "eval_set": str(files / "eval.jsonl"), "mode": "few-shot",
                                       "prompt_format": "plain", "limit": 3, "repetition_penalty": 1.2, "shots": 2}),
        "errors": ({"eval_run": "0" * 32, "judge_base_url": SERVER},
                   {"preset": preset, "judge_model": "gpt-4o-mini", "judge_base_url": "http://127.0.0.1:2/v1"}),
        "tokens": ({}, {"preset": preset, "tokenizers": ["qwen2.5"]}),
        "report": ({}, {"preset": preset, "eval_set": "gsm8k-ja", "error_teachers": ["7B"], "teachers": ["7B", "72B"],
                        "students": ["qwen2.5-0.5b"], "seeds": ["1"]}),
        "sweep": ({"teacher": "7B", "student": "qwen2.5-0.5b"},
                  {"teacher": "72B", "student": "qwen2.5-1.5b", "preset": preset, "n_trials": 2,
                   "space": ["learning_rate"], "storage": "sqlite:///other.db", "study_name": "s", "seed": 7,
                   "worker": 1, "dev_limit": 3, "max_new_tokens": 7, "pruning": False, "register_best": True}),
        "main": ({}, {"preset": preset, "teachers": ["7B", "14B"], "students": ["qwen2.5-1.5b"], "seeds": ["1"],
                          "limit": 3, "train_limit": 5, "n": 4, "backend": "openai", "judge_model": "gpt-4o-mini",
                          "judge_base_url": SERVER, "max_new_tokens": 7, "rehearsal": True}),
    }


@pytest.mark.parametrize("phase", PHASES)
def test_each_keyed_field_changes_the_key(phase, files, monkeypatch):
    """Changing any keyed field alone changes the key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    cls = params_class(phase)
    base, variants = cases(files)[phase]
    keyed = [f.name for f, s in declared(cls) if not s.unkeyed]
    assert sorted(variants) == sorted(keyed), f"{phase}: give every keyed field a variant (and only those)"
    before = reuse_key(phase, cls(**base))
    unchanged = [name for name in keyed if reuse_key(phase, cls(**{**base, name: variants[name]})) == before]
    assert unchanged == [], f"{phase}: these fields change what the phase computes but not its reuse key"


@pytest.mark.parametrize("phase", PHASES)
def test_fields_declared_unkeyed_say_why(phase):
    """Every field is declared, and a field left out of the key says why."""
    cls = params_class(phase)
    hints = typing.get_type_hints(cls)
    for f, s in declared(cls):  # a field without param() is refused here
        assert len(s.help.split()) >= 2, f"{phase}.{f.name}: no help text"
        if {int, float} & {hints[f.name], *typing.get_args(hints[f.name])}:
            assert s.rule is not None, f"{phase}.{f.name}: a number without a rule"
        if f.default is None and s.preset is None:
            pytest.fail(f"{phase}.{f.name}: empty by default, but nothing says what empty means (preset= or Default)")
        assert not s.unkeyed or len(s.unkeyed.split()) >= 4, f"{phase}.{f.name}: out of the key without a reason"


def test_preset_paths_exist_one_rule_each():
    """Every preset path exists, and one path has one rule."""
    rules: dict[str, set] = {}
    for phase in PHASES:
        for f, s in declared(params_class(phase)):
            for path in preset_paths(s):
                for name in ("paper", "offline"):
                    assert preset_values(load_preset(name), path), f"{phase}.{f.name}: no {path} in {name}"
                if isinstance(s.preset, str) or isinstance(s.preset, Default) and s.preset.paths:
                    rules.setdefault(path, set()).add(s.rule)
    assert {p: r for p, r in rules.items() if len(r) > 1} == {}  # a preset value checked one way, whoever reads it


def test_mlproject_lists_every_parameter():
    """MLproject lists every parameter of every entry point."""
    entry_points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    for entry_point, also in mlproject_also((ROOT / "MLproject").read_text()).items():
        declared_there = set(entry_points[entry_point].get("parameters") or {}) - {"base_dir"}
        fields = {f.name for f, _ in entry_point_fields(entry_point)}
        assert declared_there | set(also) == fields, (
            f"{entry_point}: missing {sorted(fields - declared_there - set(also))}, "
            f"unknown {sorted(set(also) - fields)}, twice {sorted(declared_there & set(also))}")
    assert set(mlproject_also((ROOT / "MLproject").read_text())) == set(entry_points)


def test_the_parameters_page_is_the_fields():
    """`python -m distill.params_doc --write` writes docs/parameters.md; this says when the fields changed and the
    page not."""
    found = stale()
    assert PAGE.is_file() and not found, f"docs/parameters.md is stale ({found}): python -m distill.params_doc --write"


def test_help_gives_text_default_and_rule():
    """`--help` gives each parameter its text, default and rule."""
    from distill.cli import help_text
    from distill.phases.evaluate import EvaluateParams

    shots = next(fs for fs in declared(EvaluateParams) if fs[0].name == "shots")
    assert help_text(*shots) == ("exemplars in the few-shot prompt (the paper: 4) (default: preset's baseline.shots; "
                                 "an integer in [1, 8] (MGSM-ja has 8 exemplars))")
    assert re.search(r"--shots SHOTS\s+exemplars in the few-shot prompt", _help("evaluate"))


def _help(entry_point: str) -> str:
    from tests.conftest import run_entry

    return run_entry(entry_point, "--help").stdout


def test_none_is_a_word_empty_lists_refused():
    """Text `none` is a word, and empty lists are refused except where MLflow passes them.

    `filter=none` is select's no-filter, not the preset's `all_correct`; a list MLproject declares with an
    empty default is passed empty by `mlflow run` when not given, so only there is empty the default."""
    from distill import DistillError
    from distill.cli import EMPTY_LIST_IS_DEFAULT, parse_params
    from distill.phases.select import SelectParams
    from distill.pipeline import MainParams

    assert parse_params(SelectParams, ["--filter", "none", "--preset", "paper"]).filter == "none"
    assert parse_params(SelectParams, ["--teacher_runs", ""]).teacher_runs == []
    with pytest.raises(DistillError, match="students: empty"):
        parse_params(MainParams, ["--students", " "])
    declared_empty = set()
    for name, ep in yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"].items():
        cls = params_class(name)
        lists = {f.name for f in dataclasses.fields(cls)
                 if typing.get_origin(typing.get_type_hints(cls)[f.name]) is list}
        declared_empty |= {k for k, v in ep["parameters"].items() if k in lists and str(v.get("default", "x")) == ""}
    assert declared_empty == set(EMPTY_LIST_IS_DEFAULT)
