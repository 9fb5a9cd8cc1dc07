"""translate -> teacher -> select: the selection rule, resume after a kill, reuse, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from distill import DistillError
from distill.phases.select import SelectParams, choose, qualifying_ids, run as select
from distill.phases.teacher import TeacherParams, run as teacher
from distill.phases.translate import (
    TranslateParams,
    clean_translation,
    missing_numbers,
    run as translate,
    translation_flag,
)
from tests.conftest import ROOT


@pytest.mark.parametrize("raw,clean", [
    ("以下は日本語訳です：\nナタリアは4月に48人の友達にクリップを売りました。",
     "ナタリアは4月に48人の友達にクリップを売りました。"),
    ("翻訳: 「ウェンは1時間12ドル稼ぎます。」", "ウェンは1時間12ドル稼ぎます。"),
    ("```\nベティは100ドル必要です。\n```", "ベティは100ドル必要です。"),
    ("ジェームズは3ページ書きます。\n\n注: 名前はカタカナにしました。", "ジェームズは3ページ書きます。"),
    ("  そのまま  ", "そのまま"),
])
def test_translation_cleaning(raw, clean):
    assert clean_translation(raw) == clean


def test_translation_number_check():
    en = "Natalia sold clips to 48 of her friends and 1,200 more at $0.5 each."
    assert missing_numbers(en, "ナタリアは48人に、さらに１２００個を0.5ドルで売った。") == []
    assert missing_numbers(en, "ナタリアは友達に売った。") == ["48", "1,200", "0.5"]
    assert translation_flag(en, "") == "empty"
    assert translation_flag(en, "ナタリアは友達に売った。") == "missing_numbers"


def test_select_all_teachers_right():
    """Selection keeps only what every teacher got right."""
    answers = {
        "7B": [{"id": "a", "correct": True}, {"id": "b", "correct": True}, {"id": "c", "correct": False},
               {"id": "d", "correct": True}],
        "72B": [{"id": "a", "correct": True}, {"id": "b", "correct": False}, {"id": "c", "correct": True},
                {"id": "d", "correct": True}],
    }
    translations = {i: {"flag": ""} for i in "abcd"}
    assert qualifying_ids(answers, translations, "all_correct") == ["a", "d"]
    assert qualifying_ids(answers, translations, "none") == ["a", "b", "c", "d"]
    translations["d"]["flag"] = "empty"
    assert qualifying_ids(answers, translations, "all_correct") == ["a"]


def test_truncated_answers_left_out():
    """Answers cut at max new tokens are left out unless kept."""
    answers = {
        "7B": [{"id": "a", "correct": True, "finish_reason": "stop"},
               {"id": "b", "correct": True, "finish_reason": "length"},
               {"id": "c", "correct": True}],  # an answers.jsonl written before finish_reason: not truncated
        "72B": [{"id": "a", "correct": True, "finish_reason": "stop"},
                {"id": "b", "correct": True, "finish_reason": "stop"},
                {"id": "c", "correct": True, "finish_reason": "stop"}],
    }
    translations = {i: {"flag": ""} for i in "abc"}
    assert qualifying_ids(answers, translations, "all_correct") == ["a", "c"]
    assert qualifying_ids(answers, translations, "none") == ["a", "c"]
    assert qualifying_ids(answers, translations, "all_correct", keep_truncated=True) == ["a", "b", "c"]


def test_choice_is_seeded_and_keeps_order():
    ids = [f"q{i}" for i in range(100)]
    a, b = choose(ids, 10, seed=1), choose(ids, 10, seed=1)
    assert a == b and a == sorted(a, key=ids.index) and choose(ids, 10, seed=2) != a


@pytest.fixture
def translated(tracking):
    return translate(TranslateParams(limit=12, shard_size=5))


def test_pipeline_lineage_and_reuse(translated, capfd):
    t7 = teacher(TeacherParams(teacher="7B", max_new_tokens=8))
    t72 = teacher(TeacherParams(teacher="72B", max_new_tokens=8))
    assert teacher(TeacherParams(teacher="7B", max_new_tokens=8)) == t7  # reused, not redone
    assert f"reusing FINISHED run {t7}" in capfd.readouterr().err
    run7 = mlflow.get_run(t7)
    assert run7.data.tags["distill.translation_run_id"] == translated
    assert run7.data.metrics["n_total"] == 12
    answers = mlflow.artifacts.load_text(f"runs:/{t7}/answers.jsonl").splitlines()
    rows = [json.loads(a) for a in answers]
    assert set(rows[0]) >= {"id", "prompt", "output", "extracted", "gold", "correct", "output_tokens", "finish_reason",
                            "extracted_answer_line", "correct_answer_line"}
    assert rows[0]["prompt"].startswith("問題: ")
    assert {r["finish_reason"] for r in rows} <= {"stop", "length"}
    assert run7.data.metrics["n_truncated"] == sum(r["finish_reason"] == "length" for r in rows) > 0  # 8 tokens
    assert run7.data.metrics["n_correct_answer_line"] == sum(r["correct_answer_line"] for r in rows)

    with pytest.raises(DistillError, match=r"only \d+ questions qualify .*cut at max_new_tokens.*keep_truncated=true"):
        select(SelectParams(n=6, seed=3, dev_size=4, keep_truncated=False))
    sel = select(SelectParams(n=6, seed=3, dev_size=4))  # offline preset: filter none, keep_truncated true
    run = mlflow.get_run(sel)
    assert run.data.params["keep_truncated"] == "True" and run.data.metrics["n_truncated_answers"] > 0
    assert run.data.tags["distill.teacher_run_id.7B"] == t7 and run.data.tags["distill.teacher_run_id.72B"] == t72
    assert json.loads(run.data.tags["distill.teacher_run_ids"]) == {"7B": t7, "72B": t72}
    ids = json.loads(mlflow.artifacts.load_text(f"runs:/{sel}/selected_ids.json"))
    assert len(ids) == 6
    sets = {t: [json.loads(x) for x in mlflow.artifacts.load_text(f"runs:/{sel}/train/{t}.jsonl").splitlines()]
            for t in ("7B", "72B")}
    assert [r["id"] for r in sets["7B"]] == [r["id"] for r in sets["72B"]] == ids
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"train-7B", "train-72B"}
    assert all(d.dataset.digest for d in run.inputs.dataset_inputs)
    dev = [json.loads(x) for x in mlflow.artifacts.load_text(f"runs:/{sel}/dev.jsonl").splitlines()]
    assert len(dev) == 4 and not {d["id"] for d in dev} & set(ids)


def test_select_bad_input(translated):
    with pytest.raises(DistillError, match="at least two teacher runs; found 0"):
        select(SelectParams(n=2))
    t7 = teacher(TeacherParams(teacher="7B", max_new_tokens=4))
    with pytest.raises(DistillError, match="at least two teacher runs; found 1 \\(7B: "):
        select(SelectParams(n=2))
    t14 = teacher(TeacherParams(teacher="14B", max_new_tokens=4))
    with pytest.raises(DistillError, match="only 0 questions qualify under filter=all_correct .*allow_fewer=true"):
        select(SelectParams(n=2, filter="all_correct"))
    other = translate(TranslateParams(limit=5))
    t72 = teacher(TeacherParams(teacher="72B", max_new_tokens=4, translation_run=other))
    with pytest.raises(DistillError, match="different translation runs"):
        select(SelectParams(n=2, teacher_runs=f"{t7},{t72}"))
    with pytest.raises(DistillError, match="known names: 7B, 14B, 32B, 72B"):
        teacher(TeacherParams(teacher="qwen2.5-0.5b"))
    assert select(SelectParams(n=50, teacher_runs=f"{t7},{t14}", allow_fewer=True))


@pytest.mark.slow
def test_killed_teacher_resumes_once(translated, tracking, tmp_path):
    """Teacher killed halfway resumes and holds each answer once."""
    args = [sys.executable, str(ROOT / "entrypoints" / "teacher.py"), "--teacher", "7B", "--shard_size", "2",
            "--batch_size", "1", "--max_new_tokens", "48"]
    proc = subprocess.Popen(args, cwd=tmp_path,
                            env={**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_EXPERIMENT_NAME": "Default"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    shards = []
    while time.time() < deadline and proc.poll() is None:
        shards = [s for s in tmp_path.glob("mlruns/*/*/artifacts/shards/*.jsonl") if translated not in str(s)]
        if len(shards) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the teacher run finished before it could be killed"
    killed = mlflow.search_runs(filter_string="tags.`distill.phase` = 'teacher'", output_format="list")[0]
    assert killed.info.status == "RUNNING"  # SIGKILL leaves no chance to mark it

    done = subprocess.run(args, cwd=tmp_path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_EXPERIMENT_NAME": "Default"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming:" in done.stderr
    final = mlflow.search_runs(filter_string="tags.`distill.phase` = 'teacher' and attributes.status = 'FINISHED'",
                               output_format="list")[0]
    assert final.data.tags["distill.resumed_from"] == killed.info.run_id
    assert final.data.metrics["n_resumed"] >= 4
    rows = [json.loads(x) for x in mlflow.artifacts.load_text(f"runs:/{final.info.run_id}/answers.jsonl").splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == 12 and len(set(ids)) == 12
    # The same answers as an uninterrupted run: greedy decoding makes resumption invisible.
    fresh = teacher(TeacherParams(teacher="7B", shard_size=12, batch_size=1, max_new_tokens=48, reuse=False))
    fresh_rows = [json.loads(x) for x in mlflow.artifacts.load_text(f"runs:/{fresh}/answers.jsonl").splitlines()]
    assert [r["output"] for r in fresh_rows] == [r["output"] for r in rows]
