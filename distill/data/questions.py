"""GSM8K, gsm8k-ja and MGSM-ja: from the Hub with `datasets`, from shipped files, or from the user's JSONL."""

from __future__ import annotations

import json
import logging
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distill import DistillError
from distill.data.jsonl import json_lines, read_jsonl, text_lines, write_jsonl  # noqa: F401  (re-exported for older imports)
from distill.data.limits import first
from distill.scoring.answers import format_number, parse_gold

console = logging.getLogger(__name__)

RESOURCES = Path(__file__).parents[1] / "resources"
GSM8K_JA_HUB_ID = "SakanaAI/gsm8k-ja-test_250-1319"
GSM8K_HUB_ID = "openai/gsm8k"
EVAL_SETS = ("gsm8k-ja", "mgsm-ja")


@dataclass
class Example:
    id: str
    question: str
    answer_number: float
    reference: str | None = None  # the English GSM8K solution, where known
    where: str = field(default="", repr=False, compare=False)  # `file:line` or `<hub id> row <i>`, for errors

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "where"}


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit <= 0:
        raise DistillError(f"limit must be a positive number of examples (got {limit})")


def _gold_or_fail(value, where: str) -> float:
    gold = parse_gold(value)
    if gold is None:
        raise DistillError(f"{where}: no numeric gold answer (got {value!r})")
    return gold


def read_mgsm_ja(path: Path = RESOURCES / "mgsm_ja.tsv") -> list[Example]:
    """MGSM-ja: `question<TAB>answer_number`, no header; ids follow GSM8K test numbering (0-249)."""
    examples = []
    for lineno, line in text_lines(path):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip():
            raise DistillError(
                f"{path}:{lineno}: malformed line, expected 'question<TAB>answer_number' "
                f"(got {len(parts)} field(s))"
            )
        gold = _gold_or_fail(parts[1], f"{path}:{lineno}")
        examples.append(Example(f"gsm8k-test-{lineno - 1:04d}", parts[0].strip(), gold, where=f"{path}:{lineno}"))
    return examples


def read_jsonl_examples(path: Path, id_prefix: str | None = None) -> list[Example]:
    """The user's own eval set: one JSON object per line with `question` and `answer_number`."""
    prefix = id_prefix or path.stem
    examples = []
    for lineno, row in json_lines(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
            got = type(row.get("question")).__name__ if isinstance(row, dict) else type(row).__name__
            raise DistillError(f"{where}: needs a non-empty text 'question' field (got {got})")
        if "answer_number" not in row:
            raise DistillError(f"{where}: needs an 'answer_number' field")
        gold = _gold_or_fail(row["answer_number"], where)
        examples.append(
            Example(str(row.get("id", f"{prefix}-{lineno - 1:04d}")), row["question"].strip(), gold,
                    row.get("reference"), where=where)
        )
    if not examples:
        raise DistillError(f"{path}: no examples in the file")
    return examples


def load_gsm8k_ja_test() -> list[Example]:
    """The paper's eval set (GSM8K test 250-1318 translated by GPT-4o), from the Hub."""
    from datasets import load_dataset

    try:
        ds = load_dataset(GSM8K_JA_HUB_ID, split="test")
    except Exception as e:  # the Hub raises many types; the user needs one sentence
        raise DistillError(
            f"could not load the eval set {GSM8K_JA_HUB_ID} from the Hugging Face Hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); without a network use "
            "eval_set=mgsm-ja (shipped) or a JSONL file of your own"
        ) from None
    examples = []
    for i, row in enumerate(ds):
        gold_field = row.get("answer_number", row.get("answer"))
        gold = _gold_or_fail(gold_field, f"{GSM8K_JA_HUB_ID} row {i}")
        examples.append(Example(f"gsm8k-test-{250 + i:04d}", row["question"], gold, row.get("answer"),
                                where=f"{GSM8K_JA_HUB_ID} row {i}"))
    return examples


GOLD_TOLERANCE = 1e-5  # the scoring rule's: two golds this close accept the same answers


def question_key(question: str) -> str:
    """What makes two questions the same question: equal after NFKC (full-width digits) and with runs of
    white space as one space."""
    return " ".join(unicodedata.normalize("NFKC", question).split())


def repeated_questions(examples: list[Example]) -> list[tuple[Example, Example]]:
    """(first, repeat) for every question asked again, in file order. A repeat with another gold number is
    refused, naming both lines: one of the two golds is wrong, and a model is scored right on at most one of
    them, silently. A repeat with the same gold is returned: kept, as the set was published, and counted."""
    first: dict[str, Example] = {}
    repeats = []
    for ex in examples:
        prior = first.setdefault(question_key(ex.question), ex)
        if prior is ex:
            continue
        if abs(prior.answer_number - ex.answer_number) > GOLD_TOLERANCE:
            raise DistillError(
                f"{ex.where}: the same question as {prior.where} with another gold answer "
                f"({format_number(ex.answer_number)} here, {format_number(prior.answer_number)} there); a model can "
                "be right on only one of them: fix or remove one of the two lines")
        repeats.append((prior, ex))
    return repeats


def load_eval_set(name: str, limit: int | None = None) -> tuple[list[Example], str]:
    """Examples and the source they came from (Hub id or file path)."""
    _check_limit(limit)
    if name == "mgsm-ja":
        examples, source = read_mgsm_ja(), str(RESOURCES / "mgsm_ja.tsv")
        reference = gsm8k_test_references()
        for ex in examples:
            ex.reference = reference.get(ex.id)
    elif name == "gsm8k-ja":
        examples, source = load_gsm8k_ja_test(), f"hf://datasets/{GSM8K_JA_HUB_ID}"
    else:
        path = Path(name).expanduser().absolute()
        if path.is_dir():
            raise DistillError(f"eval set {path} is a directory; give a JSONL file with 'question' and "
                               f"'answer_number' on each line, or one of {', '.join(EVAL_SETS)}")
        if not path.is_file() and ("/" in name or name.endswith((".jsonl", ".json"))):
            raise DistillError(f"eval set file not found: {path} (a JSONL file with 'question' and 'answer_number' "
                               f"on each line, or one of {', '.join(EVAL_SETS)})")
        if not path.is_file():
            raise DistillError(
                f"unknown eval set {name!r}: use one of {', '.join(EVAL_SETS)} or the path of a JSONL "
                "file with 'question' and 'answer_number' on each line"
            )
        examples, source = read_jsonl_examples(path), str(path.resolve())
    repeats = repeated_questions(examples)  # the whole set: a conflict anywhere means the file is wrong
    examples = first(examples, limit, f"questions of {name}")
    kept = {id(ex) for ex in examples}
    repeats = [(a, b) for a, b in repeats if id(b) in kept]
    if repeats:
        console.warning(f"eval set {source}: {len(repeats)} question(s) asked twice with the same gold, kept "
                        f"and counted (metric n_repeated_questions): "
                        + ", ".join(f"{b.where} repeats {a.where}" for a, b in repeats[:5])
                        + (" ..." if len(repeats) > 5 else ""))
    return examples, source


def _read_gsm8k_jsonl(path: Path, split: str) -> list[dict]:
    rows = []
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"question": row["question"], "answer": row["answer"]})
            if not isinstance(row["question"], str) or not isinstance(row["answer"], str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DistillError(f"{path}:{lineno}: malformed GSM8K line (need 'question' and 'answer')") from None
    return rows


def load_gsm8k(split: str, source: str = "hub", limit: int | None = None) -> list[dict]:
    """English GSM8K rows with `id`, `question`, `answer` (reference solution), `answer_number`.

    `source` is `hub` (openai/gsm8k), `shipped` (the sample in the package) or a JSONL path.
    """
    _check_limit(limit)
    if source in ("hub", GSM8K_HUB_ID):
        from datasets import load_dataset

        try:
            rows = list(load_dataset(GSM8K_HUB_ID, "main", split=split))
        except Exception as e:
            raise DistillError(
                f"could not load {GSM8K_HUB_ID} ({split}) from the Hub ({type(e).__name__}); "
                "without a network use the offline preset (shipped sample)"
            ) from None
    elif source == "shipped":
        rows = _read_gsm8k_jsonl(RESOURCES / f"gsm8k_{split}_sample.jsonl", split)
    else:
        path = Path(source).expanduser().absolute()
        if path.is_dir():
            raise DistillError(f"GSM8K source {path} is a directory; give a JSONL file of GSM8K rows")
        if not path.is_file():
            raise DistillError(f"GSM8K file not found: {path}")
        rows = _read_gsm8k_jsonl(path, split)
    out = []
    for i, row in enumerate(first(rows, limit, f"GSM8K {split} questions of {source}")):
        gold = _gold_or_fail(row["answer"], f"GSM8K {split} row {i}")
        out.append({"id": f"gsm8k-{split}-{i:04d}", "question": row["question"], "answer": row["answer"],
                    "answer_number": gold})
    return out


def gsm8k_test_references() -> dict[str, str]:
    """English reference solutions of the test items shipped here (the judge's reference)."""
    try:
        rows = _read_gsm8k_jsonl(RESOURCES / "gsm8k_test_sample.jsonl", "test")
    except FileNotFoundError:
        return {}
    return {f"gsm8k-test-{i:04d}": r["answer"] for i, r in enumerate(rows)}


def reference_solutions(ids: list[str]) -> dict[str, str]:
    """English GSM8K reference solutions by id: shipped for test items 0-249, the Hub for the rest."""
    found = {i: r for i, r in gsm8k_test_references().items() if i in set(ids)}
    missing = [i for i in ids if i not in found and i.startswith("gsm8k-test-")]
    if missing:
        try:
            rows = load_gsm8k("test", source="hub")
            by_id = {r["id"]: r["answer"] for r in rows}
            found.update({i: by_id[i] for i in missing if i in by_id})
        except DistillError as e:
            console.warning(f"no reference solutions for {len(missing)} questions: {e}")
    return found
