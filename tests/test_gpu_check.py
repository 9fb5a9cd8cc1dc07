"""bench/gpu/gpu_check.py: the GPU check's dry mode runs every code path on a CPU (the paper path sft -> registry ->
evaluate first), its memory formula is the README's, and no benchmark gives a phase text for a yes/no."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench" / "gpu"), str(ROOT / "bench")]  # the GPU scripts, and _common/results they share


def test_memory_formula_readme_estimates():
    """Memory formula gives the README's estimates."""
    import gpu_check

    # README: llm-jp-3.1-1.8b, batch 8 of ~400 tokens: ~40 GB without checkpointing, ~35 GB with it
    est = lambda ckpt, tokens: gpu_check.sft_memory_estimate(1.87e9, 2048, 24, 99_500, tokens, ckpt)["peak"]  # noqa: E731
    assert est(False, 3200) == pytest.approx(40, abs=1)
    assert est(True, 3200) == pytest.approx(35, abs=1)
    assert est(False, 8192) == pytest.approx(52, abs=2) and est(True, 8192) == pytest.approx(42, abs=2)
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.4


def _params_classes() -> dict:
    """Every `*Params` dataclass of the phases, by name."""
    import dataclasses
    import importlib
    import pkgutil

    import distill.phases

    found = {}
    for info in pkgutil.iter_modules(distill.phases.__path__):
        module = importlib.import_module(f"distill.phases.{info.name}")
        for name, obj in vars(module).items():
            if name.endswith("Params") and dataclasses.is_dataclass(obj):
                found[name] = obj
    return found


def _is_text(node) -> bool:
    """An expression that is text: a string literal, an f-string, str(...) or a str method's result."""
    import ast

    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.Call):
        f = node.func
        return (isinstance(f, ast.Name) and f.id == "str") or (
            isinstance(f, ast.Attribute) and f.attr in ("lower", "upper", "strip", "format", "title"))
    return False


def test_no_text_to_yes_no_field():
    """No benchmark passes text to a yes/no field.

    A phase's bool field given text: "false" is a non-empty string, so true (issue 19 row 9: the
    "checkpointing off" rows of the GPU check trained with checkpointing on)."""
    import ast
    import dataclasses

    classes = _params_classes()
    assert {"SftParams", "EvaluateParams"} <= set(classes)
    slips, checked = [], set()
    for path in sorted((ROOT / "bench").rglob("*.py")):  # bench/gpu/ included
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes):
                continue
            checked.add(path.relative_to(ROOT).as_posix())
            fields = {f.name: str(f.type) for f in dataclasses.fields(classes[node.func.id])}
            for kw in node.keywords:
                if "bool" in fields.get(kw.arg, "") and _is_text(kw.value):
                    slips.append(f"{path.name}:{node.lineno} {node.func.id}({kw.arg}={ast.unparse(kw.value)})")
    assert not slips, slips
    assert "bench/gpu/gpu_cases.py" in checked  # the GPU check's sft and evaluate calls were read


@pytest.mark.slow  # every part of the GPU check on a CPU: 43-48 s of CPU time
def test_dry_mode_runs_every_part(tmp_path):
    """Dry mode runs the paper path and every part."""
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu" / "gpu_check.py"), "--dry", "--peak-tflops", "1",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry"] is True and result["skipped"] == [] and result["failures"] == []

    # the paper path: sft with the preset's settings -> checkpoint uploaded -> registered -> evaluated
    paper = result["paper_path"]
    assert paper["status"] == "ok", paper.get("traceback")
    sft, reg, ev = paper["sft"], paper["registry"], paper["evaluate"]
    assert sft["status"] == "ok" and sft["logged_batching"] == "padded"
    assert sft["logged_per_device_train_batch_size"] == "8" and sft["logged_gradient_checkpointing"] == "True"
    assert reg["name"] == "student-qwen2.5-0.5b-shaped" and reg["version"] == "1"
    # one epoch of the paper's two: a smoke run, registered without moving an alias (distill/tracking/smoke_runs.py)
    assert reg["model_uri"] == "models:/student-qwen2.5-0.5b-shaped/1" and reg["aliases"] == []
    assert reg["checkpoints_left"] == []  # keep_checkpoints=last: none once the model is logged
    assert ev["backend"] == "transformers" and ev["eval_set"] == "mgsm-ja" and ev["model_source"] == reg["model_uri"]
    assert ev["n_total"] == 4 and ev["tokens_per_second"] > 0 and 0 <= ev["accuracy"] <= 100
    assert reg["version_tags_after_evaluate"] == {"accuracy": f"{ev['accuracy']:.2f}", "eval_run_id": ev["run_id"],
                                                  "sft_run_id": sft["run_id"]}

    cases = {r["case"]: r for r in result["sft"]}
    for batching in ("padded", "group_by_length", "padding_free"):
        for ckpt in ("on", "off"):
            if (batching, ckpt) != ("padded", "on"):  # that one is the paper path's
                assert f"sft {batching}, gradient checkpointing {ckpt}" in cases
    ran = [r for r in result["sft"] if r["status"] == "ok"]
    assert "trl SFTTrainer defaults" in {r["case"] for r in ran}
    assert len(ran) >= 5
    for r in ran:
        assert r["train_tokens"] > 0 and r["train_tokens_per_second"] > 0 and r["steady_tokens_per_second"] > 0
        assert 0 < r["mfu"] < 1 and r["estimate_gb"]["allocated"] > 0
        # checkpointing really as asked: the run's logged setting, and the layers really recomputed (or not)
        assert r["gradient_checkpointing_observed"] is r["gradient_checkpointing"], r["case"]
        assert r["recompute_factor"] == (2.0 if r["gradient_checkpointing"] else 1.0), r["case"]
        if r["case"] != "trl SFTTrainer defaults":
            assert r["logged_gradient_checkpointing"] == str(r["gradient_checkpointing"]), r["case"]
    assert {r["gradient_checkpointing"] for r in ran} == {True, False}
    # every sft run trains the same tokens (one epoch over the same data), the plain TRL run included
    assert len({r["train_tokens"] for r in ran}) == 1
    assert result["paper_settings_vs_plain_trl"] > 0
    free = [r for r in result["sft"] if r["batching"] == "padding_free"]
    if not result["environment"]["flash_attn"]:
        assert all(r["status"] == "refused" and "FlashAttention" in r["message"] for r in free)
    gen = {g["batch_size"]: g for g in result["generation"]}
    assert set(gen) == {1, 16, 64}
    assert all(g["new_tokens"] > 0 and g["tokens_per_second"] > 0 for g in gen.values())
    assert gen[64]["estimate_gb"]["kv_cache"] > gen[1]["estimate_gb"]["kv_cache"]


# What the lent GPU machine already has (device KINDS.md): carrying another version of one would shadow it.
ON_THE_GPU_MACHINE = {"torch", "transformers", "accelerate", "tokenizers", "safetensors", "huggingface_hub", "numpy",
                      "pandas", "pyarrow", "scipy", "requests", "pyyaml", "jinja2", "protobuf", "fsspec", "anyio",
                      "packaging", "typing_extensions", "xxhash", "psutil", "tqdm", "filelock", "click", "cloudpickle"}


def test_wheels_listed_once_none_present():
    """The wheels to carry are listed once and none is on the machine already."""
    import gpu_wheels

    wanted = gpu_wheels.read_list()
    names = {gpu_wheels.normalise(n) for n in wanted}
    assert len(names) == len(wanted)
    assert {"trl", "datasets", "mlflow_skinny", "sqlalchemy", "alembic"} <= names
    assert not names & ON_THE_GPU_MACHINE
    assert "mlflow" not in names and "mlflow_tracing" not in names  # both would overwrite mlflow-skinny's files


def test_wheel_check_finds_bad_sets(tmp_path):
    """Wheel check finds missing extra and oversized sets."""
    import gpu_wheels

    wanted = {"trl": "1.16.0", "pydantic-core": "2.50.5"}
    (tmp_path / "trl-1.16.0-py3-none-any.whl").write_bytes(b"x" * 100)
    (tmp_path / "pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_x86_64.whl").write_bytes(b"x" * 100)
    assert gpu_wheels.check(tmp_path, wanted, limit=1000) == []
    assert gpu_wheels.check(tmp_path, wanted, limit=150) == ["0.0 MiB of wheels, over the 0.0 MiB left for them"]
    (tmp_path / "dill-0.4.1-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "trl-1.15.0-py3-none-any.whl").write_bytes(b"")
    problems = gpu_wheels.check(tmp_path, {**wanted, "sqlparse": "0.6.1"}, limit=1000)
    assert problems == ["trl: 2 wheels (trl-1.15.0-py3-none-any.whl, trl-1.16.0-py3-none-any.whl)",
                        "missing: sqlparse==0.6.1", "not listed: dill-0.4.1-py3-none-any.whl"]
    bad = tmp_path / "list.txt"
    bad.write_text("trl==1.16.0\nTRL==1.15.0\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="listed twice"):
        gpu_wheels.read_list(bad)
