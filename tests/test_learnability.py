"""Proof on a CPU that the pipeline teaches: `sft` on a small training set, then `evaluate` on the same
questions reproduces the answers the student was trained on, and an untrained student does not.

A broken link between training and evaluation (a different prompt format, the loss on the wrong
tokens, a missing EOS, a decoding or scoring bug) makes the trained student fail here, where every
offline accuracy is otherwise 0. Tiny teachers write no numbers, so the training answers are built in
the paper's format instead: a short line of reasoning ending with `解答: N`. Each question's gold is
the final number of the answer it was trained on, read by the paper's rule.
"""

import json

import mlflow

from distill.data.prompts import plain_prompt
from distill.data.questions import load_eval_set
from distill.phases.evaluate import EvaluateParams, build_prompts, run as evaluate
from distill.phases.sft import SftParams, run as sft
from distill.scoring.answers import extract_answer

# Measured here (2 shared CPU cores) on the stand-ins with 64-dimension heads (vLLM's CPU attention needs them;
# 128 hidden, 2 heads): 20 epochs at lr 2e-3 get every answer right; 12 at 3e-3 got 62.5%, 12 at 1e-2 31%, the
# student writing one answer for every question. (The earlier 16-dimension heads learned at 12 epochs, 1e-2.)
N_QUESTIONS = 16
EPOCHS = 20
LR = 2e-3
BATCH = 4
MAX_NEW_TOKENS = 24  # the taught answers are ~18 tokens: room to show whether the student stops (EOS)


def training_set(n: int) -> list[dict]:
    """The n shortest shipped questions with different answers (short: fast on a CPU), each answered
    in the paper's format."""
    rows, seen = [], set()
    for ex in sorted(load_eval_set("mgsm-ja")[0], key=lambda e: (len(e.question), e.id)):
        if ex.answer_number in seen or not float(ex.answer_number).is_integer():
            continue
        seen.add(ex.answer_number)
        answer = int(ex.answer_number)
        rows.append({"id": ex.id, "question": ex.question, "prompt": plain_prompt(ex.question),
                     "completion": f"計算します。\n解答: {answer}"})
        if len(rows) == n:
            return rows
    raise AssertionError("not enough shipped questions with different answers")


def test_trained_student_learns(tracking, tmp_path):
    """A trained student reproduces what it was taught and an untrained one does not."""
    rows = training_set(N_QUESTIONS)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({k: r[k] for k in ("id", "prompt", "completion")}, ensure_ascii=False) + "\n"
                             for r in rows), encoding="utf-8")
    golds = tmp_path / "taught.jsonl"  # the same questions; gold = the final number of the taught answer
    golds.write_text("".join(json.dumps({"id": r["id"], "question": r["question"],
                                         "answer_number": extract_answer(r["completion"])}, ensure_ascii=False) + "\n"
                             for r in rows), encoding="utf-8")

    sft_run = sft(SftParams(teacher="7B", student="qwen2.5-0.5b", train_file=str(train), num_train_epochs=EPOCHS,
                            learning_rate=LR, per_device_train_batch_size=BATCH, warmup_steps=0.0,
                            save_steps=10**6, checkpoints_to_run=False, register=False))
    trained = mlflow.get_run(evaluate(EvaluateParams(model=sft_run, eval_set=str(golds),
                                                     max_new_tokens=MAX_NEW_TOKENS)))
    untrained = mlflow.get_run(evaluate(EvaluateParams(model="qwen2.5-0.5b", eval_set=str(golds),
                                                       max_new_tokens=MAX_NEW_TOKENS)))
    outputs = [json.loads(x)["output"] for x in
               mlflow.artifacts.load_text(f"runs:/{trained.info.run_id}/predictions.jsonl").splitlines()]
    assert trained.data.tags["distill.sft_run_id"] == sft_run
    # The tiny student reproduces its answers under the chat wrapper too (measured), so the prompt link is
    # checked directly: evaluate sends a student exactly the prompt it was trained on.
    assert trained.data.params["prompt_format"] == "plain"
    assert build_prompts([r["question"] for r in rows], "zero-shot", "plain", None) == [r["prompt"] for r in rows]
    assert trained.data.metrics["n_total"] == N_QUESTIONS
    assert trained.data.metrics["accuracy"] >= 90, outputs
    assert trained.data.metrics["n_truncated"] <= 0.1 * N_QUESTIONS, outputs  # it learned to stop (EOS)
    # chance: the untrained student writes no such answers; its random digits hit 2 of 16 distinct golds (12.5%)
    assert untrained.data.metrics["accuracy"] <= 25
