"""bench/gpu_check.py: the GPU check's dry mode runs every code path on a CPU, and its memory formula is the README's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_memory_formula_gives_the_readmes_estimates():
    import gpu_check

    # README: llm-jp-3.1-1.8b, batch 8 of ~400 tokens: ~40 GB without checkpointing, ~35 GB with it
    est = lambda ckpt, tokens: gpu_check.sft_memory_estimate(1.87e9, 2048, 24, 99_500, tokens, ckpt)["peak"]  # noqa: E731
    assert est(False, 3200) == pytest.approx(40, abs=1)
    assert est(True, 3200) == pytest.approx(35, abs=1)
    assert est(False, 8192) == pytest.approx(52, abs=2) and est(True, 8192) == pytest.approx(42, abs=2)
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.4


def test_dry_mode_runs_every_part_and_writes_one_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry", "--peak-tflops", "1",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry"] is True and result["skipped"] == []
    cases = {r["case"]: r for r in result["sft"]}
    for batching in ("padded", "group_by_length", "padding_free"):
        for ckpt in ("on", "off"):
            assert f"sft {batching}, gradient checkpointing {ckpt}" in cases
    ran = [r for r in result["sft"] if r["status"] == "ok"]
    assert "trl SFTTrainer defaults" in {r["case"] for r in ran}
    assert len(ran) >= 5
    for r in ran:
        assert r["train_tokens"] > 0 and r["train_tokens_per_second"] > 0
        assert 0 < r["mfu"] < 1 and r["estimate_gb"]["allocated"] > 0
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
