"""Reading the final number out of a model's answer and comparing it with the gold number.

Two readings of the same output, both through the same normalisations (`解答: [132]`, `1,234`,
full-width digits, `$18`, `18ドル`, `-3`, `8.25`, a trailing `。`):

- `paper` (section 3.3, what `accuracy` uses): the last number of the whole output. A model that
  writes `解答: 18` and then runs on into `次の問題では5個` scores 5, as it did in the paper.
- `answer_line` (the robustness check beside it): the last number on the final answer line
  (`解答: ...`, `答え: ...`, `答えは ...`), else the paper's rule. It tells whether a difference
  between models is in the arithmetic or only in what they write after the answer.

Correct means abs(pred - gold) <= 1e-5. Anything unreadable is simply wrong: this module never
raises on model output.
"""

from __future__ import annotations

import math
import re
import unicodedata

TOLERANCE = 1e-5

# A minus sign counts only where it is not subtraction (`10-3` is 3, `= -3` is -3).
_NUMBER = re.compile(r"(?<![\d.\)])(-)?\s?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")
# `答` alone counts only where it is not the tail of another word (`回答は`, `正答は` are not marks).
_ANSWER_MARK = re.compile(r"(?:解答|(?<![\u3400-\u9fff])答え?)\s*[:：は]")
RULES = ("paper", "answer_line")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\uff0d": "-"})


def normalize(text: str) -> str:
    """Full-width digits and signs to ASCII (NFKC), every minus sign to '-'."""
    return unicodedata.normalize("NFKC", text).translate(_MINUS_SIGNS)


def _numbers(text: str) -> list[float]:
    values = []
    for m in _NUMBER.finditer(text):
        try:
            value = float(m.group(2).replace(",", ""))
        except ValueError:
            continue
        values.append(-value if m.group(1) else value)
    return values


def extract_answer(output: str | None, rule: str = "paper") -> float | None:
    """The final number of the output under `rule` (`paper` or `answer_line`); None if it has none."""
    if rule == "answer_line":
        return extract_answer_line(output)
    if rule != "paper":
        raise ValueError(f"unknown scoring rule {rule!r}; choose one of {', '.join(RULES)}")
    if not output:
        return None
    numbers = _numbers(normalize(output))
    return numbers[-1] if numbers else None


def extract_answer_line(output: str | None) -> float | None:
    """The last number on the final answer line (from the last `解答:` mark to the end of its line);
    the paper's rule where there is no mark, or no number after it on that line."""
    if not output:
        return None
    text = normalize(output)
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        line = text[marks[-1].end():].split("\n", 1)[0]
        after = _numbers(line)
        if after:
            return after[-1]
    return extract_answer(output)


def score(output: str | None, gold: float | None, variant: str = "") -> dict:
    """Both readings of one output as record fields: `extracted`/`correct` (the paper's rule) and
    `extracted_answer_line`/`correct_answer_line`; `variant` names another cut of the output
    (`cut_at_next_question` gives `extracted_cut_at_next_question`, ...)."""
    suffix = f"_{variant}" if variant else ""
    out = {}
    for rule in RULES:
        pred = extract_answer(output, rule)
        tail = suffix + ("" if rule == "paper" else "_answer_line")
        out[f"extracted{tail}"] = format_number(pred)
        out[f"correct{tail}"] = is_correct(pred, gold)
    return out


_GOLD = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def parse_gold(value) -> float | None:
    """A gold answer as a float: numbers, numeric strings, or GSM8K's `... #### 1,234`.

    Unlike model output, a gold answer must be a number and nothing else: `12abc` is no gold."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    text = normalize(text).strip()
    return float(text.replace(",", "")) if _GOLD.fullmatch(text) else None


def is_correct(pred: float | None, gold: float | None) -> bool:
    if pred is None or gold is None:
        return False
    return abs(pred - gold) <= TOLERANCE


def format_number(value: float | None) -> str | None:
    """1234.0 -> '1234', 8.25 -> '8.25': how tables show numbers."""
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else repr(float(value))
