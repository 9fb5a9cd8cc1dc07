"""Reading the final number out of a model's answer and comparing it with the gold number.

The paper takes the number at the end of the output with a regex and counts it correct when
abs(pred - gold) <= 1e-5. Real outputs write that number in many ways (`解答: [132]`, `1,234`,
full-width digits, `$18`, `18ドル`, `-3`, `8.25`, a trailing `。`); all of them are read here.
Anything unreadable is simply wrong: this module never raises on model output.
"""

from __future__ import annotations

import math
import re
import unicodedata

TOLERANCE = 1e-5

# A minus sign counts only where it is not subtraction (`10-3` is 3, `= -3` is -3).
_NUMBER = re.compile(r"(?<![\d.\)])(-)?\s?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")
_ANSWER_MARK = re.compile(r"(?:解答|答え|答)\s*[:：は]")
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


def extract_answer(output: str | None) -> float | None:
    """The final number: the last one after the last `解答:` mark if it has one, else the last one."""
    if not output:
        return None
    text = normalize(output)
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        after = _numbers(text[marks[-1].end():])
        if after:
            return after[0]
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


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
