"""Eval sets and settings that would silently mislead: refused before any generation, or counted."""

from __future__ import annotations

import json
import logging

import mlflow
import pytest

from distill import DistillError
from distill.config.models import resolve_model
from distill.config.presets import load_preset
from distill.data.prompts import chat_messages
from distill.data.questions import load_eval_set, read_mgsm_ja, repeated_questions
from distill.generation.context import check_context, context_length
from distill.phases import evaluate as evaluate_module
from distill.phases.evaluate import EvaluateParams, run as evaluate


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_question_with_two_golds_refused(tmp_path):
    """The same question with two golds is refused, naming both lines."""
    path = _jsonl(tmp_path / "set.jsonl", [{"question": "りんごは3個、みかんは2個。 合計は？", "answer_number": 5},
                                           {"question": "1+1は？", "answer_number": 2},
                                           {"question": "りんごは３個、みかんは２個。  合計は？\n",
                                            "answer_number": 6}])
    with pytest.raises(DistillError) as e:
        load_eval_set(str(path), limit=1)  # the whole file is checked, not only the questions a limit keeps
    assert str(e.value).startswith(f"{path}:3: the same question as {path}:1 "
                                   "with another gold answer (6 here, 5 there)")


def test_a_tsv_eval_set_names_its_lines_too(tmp_path):
    path = tmp_path / "mgsm.tsv"
    path.write_text("３個と２個で何個？\t5\n別の問題\t1\n3個と2個で何個？\t4\n", encoding="utf-8")
    with pytest.raises(DistillError, match=rf"{path}:3: the same question as {path}:1 .*\(4 here, 5 there\)"):
        repeated_questions(read_mgsm_ja(path))   # full-width digits: the same question


def test_repeated_question_kept_and_counted(tmp_path, caplog):
    """The same question with the same gold is kept and counted."""
    path = _jsonl(tmp_path / "set.jsonl", [{"question": "1+1は？", "answer_number": 2},
                                           {"question": "2+2は？", "answer_number": 4},
                                           {"question": "1+1は？", "answer_number": "2.0"},
                                           {"question": "2+2は？", "answer_number": 4}])
    with caplog.at_level(logging.WARNING, logger="distill"):
        examples, _ = load_eval_set(str(path))
    assert len(examples) == 4 and len(repeated_questions(examples)) == 2
    assert f"{path}:3 repeats {path}:1" in caplog.text and "n_repeated_questions" in caplog.text
    assert len(repeated_questions(load_eval_set(str(path), limit=3)[0])) == 1
    assert "where" not in examples[0].to_dict()   # the logged dataset (and its digest) is as before


def test_the_shipped_eval_set_has_no_repeats():
    assert repeated_questions(read_mgsm_ja()) == []


def test_evaluate_logs_the_repeats(tracking, tmp_path):
    path = _jsonl(tmp_path / "set.jsonl", [{"question": "1+1は？", "answer_number": 2},
                                           {"question": "1+1は？", "answer_number": 2}])
    run = mlflow.get_run(evaluate(EvaluateParams(model="7B", eval_set=str(path), max_new_tokens=2)))
    assert run.data.metrics["n_repeated_questions"] == 1 and run.data.metrics["n_total"] == 2


def test_max_new_tokens_past_context_refused(tracking, monkeypatch):
    """`max_new_tokens` past the context is refused before the model loads."""
    def no_generation(*a, **k):
        raise AssertionError("the generator was opened")

    monkeypatch.setattr(evaluate_module, "open_generator", no_generation)
    with pytest.raises(DistillError) as e:  # the tiny models hold 2,048 positions
        evaluate(EvaluateParams(model="7B", limit=3, max_new_tokens=2040))
    message = str(e.value)
    assert message.startswith("max_new_tokens=2040 does not fit the context of 7B: "
                              "its longest prompt (question gsm8k-test-")
    assert "+ 2040 > 2048 tokens (max_position_embeddings in its config); lower max_new_tokens to at most" in message


def test_context_check_counts_fed_tokens(tiny_teacher):
    """`check_context` counts what the backend feeds."""
    ref = resolve_model("7B", load_preset("offline"))
    from transformers import AutoConfig, AutoTokenizer

    assert context_length(AutoConfig.from_pretrained(tiny_teacher)) == (2048, "max_position_embeddings")
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    text = tokenizer.apply_chat_template(chat_messages("1+1は？"), add_generation_prompt=True, tokenize=False)
    n = len(tokenizer(text, add_special_tokens=False).input_ids)
    assert check_context(ref, "transformers", [chat_messages("1+1は？")], 2048 - n) == n    # exactly full: fits
    with pytest.raises(DistillError, match=rf"is {n} tokens, and {n} \+ {2049 - n} > 2048"):
        check_context(ref, "transformers", [chat_messages("1+1は？")], 2049 - n)
    assert check_context(ref, "openai", [chat_messages("1+1は？")], 10 ** 6) is None     # the server's own limit
