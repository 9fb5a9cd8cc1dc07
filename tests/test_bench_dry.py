"""Every benchmark in bench/ runs its `--dry` mode: the same code paths on tiny inputs, so a change in the
package that breaks a benchmark fails here instead of when someone next measures (bench/gpu/gpu_check.py's dry
mode has its own test, tests/test_gpu_check.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# imported by the scripts, not scripts themselves (paths under bench/)
HELPERS = {"_common.py", "_browser.py", "results.py", "gpu/gpu_estimates.py", "gpu/gpu_cases.py"}
ELSEWHERE = {"gpu/gpu_check.py": "tests/test_gpu_check.py", "gpu/gpu_wheels.py": "tests/test_gpu_check.py"}


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


def check_evaluate_backends(result):
    backends = [r["backend"] for r in result["rows"]]
    assert backends[0] == "transformers" and all(r["wall_median_s"] > 0 for r in result["rows"])
    assert all(n == result["prompts"] for n in result["answers_equal"].values()), result["answers_equal"]


def check_sft_throughput(result):
    assert result["train_tokens_match_analytic"] is True
    assert {r["batching"] for r in result["rows"]} == {"padded", "group_by_length"}
    assert result["padding_free"]["refused"] is True


def check_grid_walltime(result):
    assert [r["gpus"] for r in result["rows"]] == [1, 8, 32] and result["estimate"] is True


def check_shard_tail(result):
    rows = {r["slots"]: r["overhead_by_shard_size"] for r in result["rows"]}
    assert set(rows) == {64, 16} and result["estimate"] is True
    assert all(row["600"] == 0 < row["100"] for row in rows.values())  # one shard of all: no extra tail
    assert rows[64]["100"] > rows[16]["100"]  # more slots, more of each tail's steps run part-empty
    assert result["chosen"] == 600 and set(result["sensitivity"]) == {"64.0"}


def test_shard_tail_model_counts_steps(monkeypatch):
    """The shard tail model counts steps as its docstring says."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from shard_tail import call_time, sharded_time

    # 4 answers of 3 tokens, 2 slots, a step costs 5 + 1 per running sequence: 2 rounds of 3 steps of 7
    assert call_time([3, 3, 3, 3], 2, 5) == 2 * 3 * 7
    # a 9-token answer beside two 3-token ones: the freed slot refills at once, the last 3 steps run one sequence
    assert call_time([9, 3, 3], 2, 5) == 3 * 7 + 3 * 7 + 3 * 6
    # in shards of 2, the first shard waits 6 steps alone for its 9-token answer
    assert sharded_time([9, 3, 3, 3], 2, 2, 5) == (3 * 7 + 6 * 6) + 3 * 7


SCRIPTS = {"shard_tail.py": check_shard_tail, "teacher_overhead.py": check_teacher_overhead,
           "generation_speed.py": check_generation_speed, "evaluate_backends.py": check_evaluate_backends,
           "sft_throughput.py": check_sft_throughput, "grid_walltime.py": check_grid_walltime,
           "ui_check.py": None}  # ui_check writes no JSON: its dry run checks its page checks on a saved page


def test_every_bench_script_tested():
    """Every bench script has a dry run here or a test of its own."""
    scripts = {p.relative_to(ROOT / "bench").as_posix() for p in (ROOT / "bench").rglob("*.py")} - HELPERS
    assert scripts == set(SCRIPTS) | set(ELSEWHERE)


@pytest.mark.slow  # each script in a process of its own: 3-80 s apiece, ~3.5 min together
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
