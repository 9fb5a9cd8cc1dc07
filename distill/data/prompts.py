"""Every prompt of the study: the paper's (verbatim), few-shot, translation and judge prompts."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

RESOURCES = Path(__file__).parents[1] / "resources"

# Paper, Appendix B: used for teacher generation and student evaluation alike.
PAPER_PROMPT = (
    "問題: {question}\n"
    "ステップごとに考えて答えを導いてください。\n"
    "解答を [answer] とするとき以下のフォーマットで出力してください。\n"
    "解答: [answer]"
)

# A base model given shots runs on past its answer and invents the next question. The paper let it
# (its 4-shot rows score the whole output); the `cut_at_next_question` variant cuts it here.
NEXT_QUESTION = ("\n問題:", "\n\n問題", "問題: ")


def paper_prompt(question: str) -> str:
    return PAPER_PROMPT.format(question=question.strip())


@lru_cache(maxsize=1)
def mgsm_exemplars() -> list[dict]:
    with open(RESOURCES / "exemplars_ja.json", encoding="utf-8") as f:
        return json.load(f)


def _exemplar_block(ex: dict) -> str:
    """One MGSM-ja exemplar in the paper's format: its question, its reasoning, `解答: N`."""
    question = ex["question"].removeprefix("問題：").strip()
    reasoning = ex["answer"].removeprefix("ステップごとの答え：").strip()
    return f"{paper_prompt(question)}\n{reasoning}\n解答: {ex['answer_number']}"


def few_shot_prompt(question: str, shots: int) -> str:
    """The paper's few-shot baseline (4 shots in the paper): exemplars in the same format, then the
    question's prompt."""
    blocks = [_exemplar_block(ex) for ex in mgsm_exemplars()[:shots]]
    return "\n\n".join(blocks + [paper_prompt(question)]) + "\n"


def cut_at_next_question(text: str) -> str:
    """The output up to where a base model starts inventing the next question (all of it if it never does)."""
    cut = min((i for i in (text.find(m) for m in NEXT_QUESTION) if i >= 0), default=len(text))
    return text[:cut]


def plain_prompt(question: str) -> str:
    """What a base model or a student sees: the paper's prompt, then its answer on the next line."""
    return paper_prompt(question) + "\n"


def chat_messages(question: str) -> list[dict]:
    return [{"role": "user", "content": paper_prompt(question)}]


TRANSLATION_SYSTEM = (
    "You are a professional English-to-Japanese translator of school math word problems."
)

TRANSLATION_PROMPT = """Translate the following math word problem from English into natural Japanese.

Rules:
- Keep every number exactly as written (digits, decimals, fractions, percentages); do not compute anything.
- Keep units and currencies (translate "$5" as "5ドル", "3 miles" as "3マイル").
- Keep people's names, written in katakana.
- Do not solve the problem and do not add explanations.
- Output only the Japanese translation, nothing else.

Problem:
{question}"""


def translation_messages(question: str) -> list[dict]:
    return [
        {"role": "system", "content": TRANSLATION_SYSTEM},
        {"role": "user", "content": TRANSLATION_PROMPT.format(question=question.strip())},
    ]


JUDGE_SYSTEM = "You are a careful grader of grade-school math solutions written in Japanese."

# Paper section 4.1 (after Wei et al. 2022 and Wang et al. 2023), written out for the judge.
JUDGE_PROMPT = """A student model answered the math word problem below in Japanese and got it wrong.
Classify the student's error into exactly one category:

(A) Semantic Misunderstanding: the error comes from misreading the problem: its meaning,
    its conditions, or the relations between quantities.
(B) Step Missing Error: a necessary intermediate step is missing, or the reasoning jumps to a
    conclusion without justification.
(C) Calculation Error: the setup (the equations and the plan) is sound, but an arithmetic
    operation, a substitution or a transformation is done wrong.

If there are several errors, judge the earliest major error. When more than one category fits
that error, prefer the higher-level one: A over B over C.

Problem (Japanese):
{question}

Reference solution (English, from GSM8K; the correct final answer is {gold}):
{reference}

Student's answer:
{output}

Reply with JSON only: {{"category": "A" | "B" | "C", "reason": "<one sentence>"}}"""


def judge_messages(question: str, reference: str, output: str, gold: float | int | str) -> list[dict]:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": JUDGE_PROMPT.format(question=question, reference=reference, output=output, gold=gold),
        },
    ]
