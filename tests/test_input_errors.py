"""Presets, names and data: what a user types, and the clear errors for what is wrong."""

import json

import pytest

from distill import DistillError
from distill.config.models import resolve_model, resolve_role
from distill.config.presets import load_preset
from distill.data.questions import load_eval_set, load_gsm8k, read_mgsm_ja


@pytest.fixture
def paper():
    return load_preset("paper")


def test_short_names_resolve_through_the_preset(paper):
    assert resolve_model("7B", paper).source == "Qwen/Qwen2.5-7B-Instruct"
    assert resolve_model("72b", paper).tensor_parallel_size == 4
    assert resolve_model("qwen2.5-0.5b", paper).source == "Qwen/Qwen2.5-0.5B"
    assert resolve_model("llm-jp-3.1-1.8b", paper).role == "student"
    assert resolve_model("qwen2.5-0.5b", load_preset("offline")).source.startswith("tiny:")


def test_hub_ids_local_dirs_and_mlflow_uris_pass(paper, tiny_student):
    assert resolve_model("Qwen/Qwen2.5-3B", paper).source == "Qwen/Qwen2.5-3B"
    assert resolve_model(str(tiny_student), paper).source == str(tiny_student)
    assert resolve_model("models:/student-qwen2.5-0.5b@teacher-7b", paper).is_mlflow


def test_unknown_short_name_lists_known_names(paper):
    with pytest.raises(DistillError) as e:
        resolve_model("13B", paper)
    assert "7B" in str(e.value) and "qwen2.5-0.5b" in str(e.value)
    with pytest.raises(DistillError) as e:
        resolve_role("qwen2.5-0.5b", paper, "teacher")
    assert "72B" in str(e.value) and "sarashina" not in str(e.value)


def test_a_served_name_is_accepted_only_for_a_server(paper):
    """backend=openai: `gpt-4o-mini` is the name the server knows; preset names still resolve first."""
    ref = resolve_role("gpt-4o-mini", paper, "teacher", served=True)
    assert (ref.name, ref.source, ref.role) == ("gpt-4o-mini", "gpt-4o-mini", "served")
    assert resolve_model("7B", paper, served=True).source == "Qwen/Qwen2.5-7B-Instruct"
    with pytest.raises(DistillError, match="or with backend=openai the name the server knows"):
        resolve_role("gpt-4o-mini", paper, "teacher")
    with pytest.raises(DistillError, match="model path not found"):
        resolve_model("./gpt-4o-mini", paper, served=True)


def test_missing_model_path_is_named(paper, tmp_path):
    with pytest.raises(DistillError, match="model path not found"):
        resolve_model(str(tmp_path / "nope"), paper)
    with pytest.raises(DistillError, match="no config.json"):
        resolve_model(str(tmp_path), paper)


def test_unknown_preset_lists_presets():
    with pytest.raises(DistillError, match="offline, paper"):
        load_preset("papr")


def test_paper_preset_holds_table2():
    sft = load_preset("paper").sft
    assert (sft.learning_rate, sft.num_train_epochs, sft.per_device_train_batch_size) == (1e-5, 2, 8)
    assert (sft.lr_scheduler_type, sft.gradient_accumulation_steps, sft.max_grad_norm, sft.bf16) == (
        "linear", 1, 1.0, True)


def test_mgsm_ja_is_shipped_whole():
    examples = read_mgsm_ja()
    assert len(examples) == 250
    assert examples[0].answer_number == 18 and examples[0].id == "gsm8k-test-0000"
    examples, _ = load_eval_set("mgsm-ja", limit=5)
    assert len(examples) == 5 and examples[0].reference.endswith("#### 18")


def test_malformed_shipped_line_names_file_and_line(tmp_path):
    bad = tmp_path / "mgsm.tsv"
    bad.write_text("質問1\t3\n質問2 with no tab\n", encoding="utf-8")
    with pytest.raises(DistillError, match=r"mgsm.tsv:2: malformed"):
        read_mgsm_ja(bad)


def test_users_jsonl_eval_set(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"question": "1+1は？", "answer_number": 2}, ensure_ascii=False) + "\n")
    examples, source = load_eval_set(str(path))
    assert examples[0].answer_number == 2 and source == str(path)
    path.write_text('{"question": "x", "answer_number": "two"}\n')
    with pytest.raises(DistillError, match=r"mine.jsonl:1: no numeric gold"):
        load_eval_set(str(path))
    path.write_text('{"question": "x"\n')
    with pytest.raises(DistillError, match=r"mine.jsonl:1: not valid JSON"):
        load_eval_set(str(path))


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_must_be_positive(limit):
    with pytest.raises(DistillError, match="limit"):
        load_eval_set("mgsm-ja", limit=limit)


def test_unknown_eval_set():
    with pytest.raises(DistillError, match="unknown eval set 'gsm8k-jp'"):
        load_eval_set("gsm8k-jp")


def test_gsm8k_ja_needs_the_hub_and_says_so():
    # HF_*_OFFLINE is set for the tests: the real loading path runs and fails like a user's offline machine.
    with pytest.raises(DistillError, match="SakanaAI/gsm8k-ja-test_250-1319"):
        load_eval_set("gsm8k-ja")


def test_shipped_gsm8k_sample_has_gold_numbers():
    rows = load_gsm8k("train", source="shipped", limit=3)
    assert rows[0]["answer_number"] == 72 and rows[0]["id"] == "gsm8k-train-0000"


def test_a_limit_above_the_set_takes_it_all_and_says_so(caplog):
    with caplog.at_level("INFO", logger="distill"):
        examples, _ = load_eval_set("mgsm-ja", limit=1000000)
    assert len(examples) == 250
    assert "limit 1000000 is above the 250 questions of mgsm-ja: all 250 are used" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="distill"):
        assert len(load_gsm8k("train", source="shipped", limit=3)) == 3
    assert "above" not in caplog.text


def test_preset_names_forgive_case_and_width_as_model_names_do():
    assert load_preset("OFFLINE").name == "offline" and load_preset("Ｐａｐｅｒ").name == "paper"
    with pytest.raises(DistillError, match="unknown preset 'papr'; did you mean 'paper'"):
        load_preset("papr")


def test_the_schedules_sft_accepts_are_transformers_schedules():
    """sft refuses a scheduler name before any work (distill/config/sft_checks.py); its lists follow the
    installed transformers: a schedule added or renamed there shows up here."""
    from transformers.trainer_utils import SchedulerType

    from distill.config.sft_checks import NEEDS_MORE, SCHEDULERS

    assert set(SCHEDULERS) | set(NEEDS_MORE) == {s.value for s in SchedulerType}
