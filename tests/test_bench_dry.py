"""Every benchmark in bench/ runs its `--dry` mode: the same code paths on tiny inputs, so a change in the
package that breaks a benchmark fails here instead of when someone next measures (bench/gpu_check.py's dry
mode has its own test, tests/test_gpu_check.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPERS = {"_common.py", "_cdp.py", "results.py", "gpu_estimates.py", "gpu_cases.py"}  # imported by the scripts, not scripts themselves
ELSEWHERE = {"gpu_check.py": "tests/test_gpu_check.py", "gpu_wheels.py": "tests/test_gpu_check.py"}


def check_teacher_overhead(result):
    rows = {r["config"]: r for r in result["rows"]}
    assert {"raw generate", "teacher phase, shard_size=4", "teacher phase, shard_size=2"} <= set(rows)
    phase = rows["teacher phase, shard_size=2"]
    assert phase["n_shards"] == 2 and phase["output_mismatches_vs_raw"] == 0
    # the wrapped public functions were all reached: model load, generation, shard upload and run end were timed
    assert all(phase["calls"].get(k, 0) > 0 for k in ("model_load", "generation", "shard_upload", "setup", "run_end"))


def check_generation_speed(result):
    rows = result["results"][0]["rows"]
    assert [r["batch_size"] for r in rows] == [1, 2] and all(r["new_tokens"] > 0 for r in rows)


def check_sft_throughput(result):
    assert result["train_tokens_match_analytic"] is True
    assert {r["batching"] for r in result["rows"]} == {"padded", "group_by_length"}
    assert result["padding_free"]["refused"] is True


def check_grid_walltime(result):
    assert [r["gpus"] for r in result["rows"]] == [1, 8, 32] and result["estimate"] is True


SCRIPTS = {"teacher_overhead.py": check_teacher_overhead, "generation_speed.py": check_generation_speed,
           "sft_throughput.py": check_sft_throughput, "grid_walltime.py": check_grid_walltime,
           "ui_check.py": None}  # ui_check writes no JSON: its dry run checks its page checks on a saved page


def test_every_bench_script_has_a_dry_run_here_or_a_test_of_its_own():
    scripts = {p.name for p in (ROOT / "bench").glob("*.py")} - HELPERS
    assert scripts == set(SCRIPTS) | set(ELSEWHERE)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_dry_run(script, tmp_path):
    out = tmp_path / "result.json"
    args = [] if SCRIPTS[script] is None else ["--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--dry", *args], capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if SCRIPTS[script] is not None:
        result = json.loads(out.read_text())
        assert result["dry"] is True and result["environment"]["python"] and result["total_seconds"] > 0
        assert out.with_suffix(".md").read_text().startswith(f"# {script[:-3]} (dry)")
        SCRIPTS[script](result)
