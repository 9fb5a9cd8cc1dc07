"""Generation that survives being killed: finished answers go to the run in shards as they come.

A rerun of the same work (same cache key) first collects the shards of earlier tries that did not
finish, copies them into its own run, and generates only what is missing. The finished run holds
every record exactly once.

A phase calls `generate_in_shards` with its per-item functions (`per_item`: the prompt of an item,
the record of an item and its output); translate, teacher and errors share this one skeleton.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distill.config.params import Default, count_param

console = logging.getLogger(__name__)

SHARD_DIR = "shards"
# Items per shard for the transformers and openai backends: their batches (16 prompts) and concurrent
# requests end within a shard, so a shard of 256 costs ~1% over one pass (bench/teacher_overhead.py).
DEFAULT_SHARD_SIZE = 256


def default_shard_size(backend: str, preset) -> int:
    """Items per shard: the preset's `vllm.shard_size` for backend=vllm (each shard is one `LLM.generate`, which
    waits for its longest answer: bench/shard_tail.py sizes it), else 256."""
    return preset.vllm.shard_size if backend == "vllm" else DEFAULT_SHARD_SIZE


def shard_size_param() -> Any:
    """The `shard_size` of translate and teacher. In their key: a shard bounds the batches (transformers) and
    the engine's calls (vLLM), and either may decode a prompt differently."""
    return count_param(None, help="items per shard of the run's resumable output",
                       preset=Default("the preset's `vllm.shard_size` with `backend=vllm`, else 256",
                                      lambda p, preset: default_shard_size(p.backend, preset),
                                      paths=("vllm.shard_size",)))


def _read_shard_dir(path: Path) -> list[dict]:
    records = []
    for shard in sorted(path.glob("*.jsonl")):
        with open(shard, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a shard cut off mid-write: its finished lines are kept, the rest redone
    return records


def collect_earlier_shards(run_ids: Sequence[str]) -> list[dict]:
    """Records from the shard artifacts of earlier unfinished tries, oldest try last."""
    import mlflow

    records = []
    for run_id in run_ids:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SHARD_DIR, dst_path=tmp)
            except Exception:
                continue  # that try died before its first shard
            records += _read_shard_dir(Path(local))
    return records


def log_shard(records: list[dict], index: int) -> None:
    from distill.tracking.phase_runs import log_jsonl

    log_jsonl(records, f"shard-{index:06d}-{uuid.uuid4().hex[:6]}.jsonl", artifact_path=SHARD_DIR)


def run_sharded(items: Sequence[dict], work: Callable[[list[dict]], list[dict]], shard_size: int,
                earlier_runs: Sequence[str] = (), key: str = "id",
                keep: Callable[[dict], bool] = lambda record: True) -> tuple[list[dict], int]:
    """Records for every item, in item order; returns them and how many were taken from earlier tries.

    `work(chunk)` turns a chunk of items into records carrying the same `key`; it is called only
    for items no earlier try finished, so a model is loaded only if there is work left.
    """
    wanted = {item[key] for item in items}
    done: dict = {}
    for record in collect_earlier_shards(earlier_runs):
        if record.get(key) in wanted and record[key] not in done and keep(record):
            done[record[key]] = record
    reused = len(done)
    if reused:
        console.info(f"resuming: {reused} of {len(items)} answers come from earlier unfinished runs "
                     f"{', '.join(earlier_runs)}")
        carried = [done[item[key]] for item in items if item[key] in done]
        for i in range(0, len(carried), max(shard_size, 1000)):
            log_shard(carried[i:i + max(shard_size, 1000)], index=i // max(shard_size, 1000))
    pending = [item for item in items if item[key] not in done]
    for start in range(0, len(pending), shard_size):
        chunk = pending[start:start + shard_size]
        records = work(chunk)
        log_shard(records, index=100000 + start // shard_size)
        for r in records:
            done[r[key]] = r
    return [done[item[key]] for item in items], reused


def per_item(generate: Callable[[list], list], prompt: Callable[[dict], Any],
             record: Callable[[dict, Any], dict]) -> Callable[[list[dict]], list[dict]]:
    """A `work` for run_sharded from per-item functions: `generate` gets one prompt per item of a
    chunk, and each item with its output becomes one record."""

    def work(chunk: list[dict]) -> list[dict]:
        outputs = generate([prompt(item) for item in chunk])
        return [record(item, output) for item, output in zip(chunk, outputs)]

    return work


def generate_in_shards(pr, items: Sequence[dict], work: Callable[[list[dict]], list[dict]], shard_size: int,
                       artifact: str, keep: Callable[[dict], bool] = lambda record: True) -> tuple[list[dict], int]:
    """The skeleton every sharded phase shares, inside its phase run `pr`: take over the finished
    items of earlier unfinished tries (tagged `distill.resumed_from`), do the rest shard by shard,
    log all records as `<artifact>.jsonl` and a table; returns them and how many were taken over."""
    from distill.tracking import phase_runs

    earlier = phase_runs.earlier_tries(pr)
    records, reused = run_sharded(items, work, shard_size, earlier, keep=keep)
    phase_runs.log_records(records, artifact)
    return records, reused
