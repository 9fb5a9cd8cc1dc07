"""The reuse key covers exactly what decides a phase's results (cache_keys.code_files), and a finished run
that differs only in its code is named, and accepted with reuse=ignore_code."""

import re
import shutil

import pytest

from distill import DistillError
from distill.config import params_text, presets
from distill.tracking import cache_keys, lineage, phase_runs

PHASES = ("translate", "teacher", "evaluate", "select", "sft", "errors", "tokens", "report", "sweep")
GENERATING = {"translate", "teacher", "evaluate"}


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A copy of the package that the key is computed from, so files can be edited freely."""
    copy = tmp_path / "distill"
    shutil.copytree(cache_keys.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache_keys, "PACKAGE_DIR", copy)
    monkeypatch.setattr(presets, "PRESET_DIR", copy / "presets")
    monkeypatch.setattr(presets, "_PRESET_FILES", {})
    cache_keys.clear_code_cache()
    yield copy
    cache_keys.clear_code_cache()


def keys(preset: str, backend: str = "vllm") -> dict[str, str]:
    cache_keys.clear_code_cache()
    presets.load_preset(preset)
    out = {}
    for phase in PHASES:
        params = {"preset": preset, "x": 1, **({"backend": backend} if phase in GENERATING else {})}
        out[phase] = cache_keys.cache_key(phase, params, {"up": "abc"})
    return out


def edit(path, old, new):
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_offline_yaml_edit_keeps_paper_keys(package):
    """Editing offline.yaml leaves paper's keys unchanged."""
    paper, offline = keys("paper"), keys("offline", "transformers")
    edit(package / "presets" / "offline.yaml", "  n: 32\n", "  n: 33\n")
    assert keys("paper") == paper
    assert all(keys("offline", "transformers")[p] != offline[p] for p in PHASES)  # the preset in use counts


def test_preset_comment_changes_nothing(package):
    """A comment in the preset in use changes nothing."""
    paper = keys("paper")
    edit(package / "presets" / "paper.yaml", "name: paper\n", "name: paper   # a comment\n")
    assert keys("paper") == paper


def test_vllm_edit_keeps_other_keys(package):
    """Editing the vLLM backend leaves non-generating phases unchanged."""
    vllm, hf = keys("paper", "vllm"), keys("paper", "transformers")
    edit(package / "generation" / "vllm_backend.py", "\nimport ", "\nEDITED = 1\nimport ")
    after_vllm, after_hf = keys("paper", "vllm"), keys("paper", "transformers")
    for phase in ("select", "sft", "tokens", "report", "errors"):
        assert after_vllm[phase] == vllm[phase], phase
    assert after_hf == hf  # a run on the transformers backend does not use vLLM either
    for phase in GENERATING:
        assert after_vllm[phase] != vllm[phase], phase


def test_scoring_edit_changes_evaluate(package):
    """Editing the scoring code changes evaluate's key."""
    before = keys("paper")
    edit(package / "scoring" / "answers.py", "import math\n", "import math\nEDITED = 1\n")
    after = keys("paper")
    for phase in ("evaluate", "teacher", "tokens"):
        assert after[phase] != before[phase], phase
    for phase in ("select", "sft", "report"):  # they move records around and never score
        assert after[phase] == before[phase], phase


def test_comments_docstrings_change_nothing(package):
    """Comments and docstrings change nothing."""
    before = keys("paper")
    edit(package / "scoring" / "answers.py", "import math\n", "import math  # a comment\n")
    edit(package / "generation" / "vllm_backend.py", '"""vLLM backend', '"""The vLLM backend')
    assert keys("paper") == before


def _move(package, module: str, folder: str) -> None:
    """`git mv distill/<module>.py distill/<folder>/`, with every import and module string that names it."""
    old, new = f"distill.{module.replace('/', '.')}", f"distill.{folder}.{module.rsplit('/', 1)[-1]}"
    old_parent, name = old.rsplit(".", 1)
    (package / folder).mkdir(exist_ok=True)
    (package / folder / "__init__.py").write_text('"""A room of the package."""\n', encoding="utf-8")
    (package / f"{module}.py").rename(package / folder / f"{name}.py")

    def split(m: re.Match) -> str:  # `from <parent> import a, <name>, b` -> the others, and <name> from its folder
        names = [n.strip() for n in m.group(3).split(",")]
        if name not in names:
            return m.group(0)
        rest = [n for n in names if n != name]
        moved = f"{m.group(1)}from distill.{folder} import {name}"
        return (f"{m.group(1)}from {m.group(2)} import {', '.join(rest)}\n" if rest else "") + moved

    for file in package.rglob("*.py"):
        text = file.read_text(encoding="utf-8")
        moved = re.sub(rf"\b{re.escape(old)}\b", new, text)
        moved = re.sub(rf"^([ \t]*)from ({re.escape(old_parent)}) import ([\w ,]+)$", split, moved, flags=re.M)
        if moved != text:
            file.write_text(moved, encoding="utf-8")


def test_a_pure_move_keeps_every_key(package, monkeypatch):
    """Modules moved into other folders, their importers and the strings naming them rewritten: every
    finished step stays reusable (the key hashes what the code is, not where it lives)."""
    paper, offline = keys("paper"), keys("offline", "transformers")
    _move(package, "scoring/answers", "grading")             # imported by name and from: by most phases
    _move(package, "generation/vllm_backend", "engines")    # named by a string (generation/backends.py)
    _move(package, "tracking/lineage", "records")
    # The running cache_keys is not the edited copy: its own string naming the backend, as the copy now has it.
    monkeypatch.setitem(cache_keys.BACKEND_MODULES, "vllm", "distill.engines.vllm_backend")
    assert (package / "grading" / "answers.py").is_file() and not (package / "scoring" / "answers.py").exists()
    assert keys("paper") == paper and keys("offline", "transformers") == offline


def test_moved_changed_module_is_new_code(package):
    """A moved module that changed is other code."""
    before = keys("paper")
    _move(package, "scoring/answers", "grading")
    edit(package / "grading" / "answers.py", "import math\n", "import math\nEDITED = 1\n")
    assert keys("paper")["evaluate"] != before["evaluate"]


def test_shipped_data_keys_only_readers(package):
    """Shipped data counts only where it is read."""
    before = keys("paper")
    path = package / "resources" / "mgsm_ja.tsv"
    path.write_text(path.read_text(encoding="utf-8") + "追加の問題\t1\n", encoding="utf-8")
    after = keys("paper")
    assert after["evaluate"] != before["evaluate"]
    assert after["select"] == before["select"] and after["report"] == before["report"]


def test_code_files_names_what_changed(package):
    presets.load_preset("paper")
    before = cache_keys.code_files("evaluate", "paper", "transformers")
    assert "distill/scoring/answers.py" in before and "distill/presets/paper.yaml" in before
    assert "distill/presets/offline.yaml" not in before and "distill/generation/vllm_backend.py" not in before
    assert "distill/generation/hf.py" in before


@pytest.mark.parametrize("text,expected", [("true", True), ("False", False), ("ignore_code", "ignore_code")])
def test_reuse_mode(text, expected):
    assert params_text.reuse_mode(text) == expected


def test_reuse_mode_rejects_other_values():
    with pytest.raises(DistillError, match="reuse must be true, false or ignore_code"):
        params_text.reuse_mode("sometimes")


def _phase(params, reuse=True):
    with phase_runs.phase_run("select", params, reuse=reuse) as pr:
        if not pr.reused:
            import mlflow

            mlflow.log_metric("work", 1)
            mlflow.log_text("{}\n", "dev.jsonl")  # what a select run's consumers read: reuse checks it is there
        return pr


@pytest.mark.usefixtures("tracking")  # conftest's store; the name `tracking` is the module here
def test_other_code_run_named_and_accepted(package, capsys):
    """A finished run with other code is named, and accepted on request."""
    import mlflow

    presets.load_preset("paper")
    params = {"preset": "paper", "n": 5}
    first = _phase(params)
    assert not first.reused and _phase(params).reused

    edit(package / "phases" / "select.py", "\nimport json\n", "\nimport json\nEDITED = 1\n")
    cache_keys.clear_code_cache()
    second = _phase(params)
    err = capsys.readouterr().err
    assert not second.reused and f"FINISHED run {first.run_id} did the same work with other code" in err
    assert "distill/phases/select.py" in err and "reuse=ignore_code" in err
    tags = mlflow.get_run(second.run_id).data.tags
    assert tags[lineage.CODE_CHANGED] == f"{first.run_id}: distill/phases/select.py"

    edit(package / "phases" / "select.py", "EDITED = 1\n", "EDITED = 2\n")
    cache_keys.clear_code_cache()
    with mlflow.start_run(run_name="main") as main:
        third = _phase(params, reuse="ignore_code")
    assert third.reused and third.run_id == second.run_id
    assert "although the code changed since (distill/phases/select.py): reuse=ignore_code" in capsys.readouterr().err
    main_tags = mlflow.get_run(main.info.run_id).data.tags
    assert main_tags[f"{lineage.REUSED_IGNORING_CODE}.{second.run_id}"] == "select: distill/phases/select.py"
