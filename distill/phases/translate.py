"""The `translate` phase: GSM8K training questions into Japanese with the preset's translator."""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass

from distill.config import params
from distill.config.models import ModelRef, resolve_model
from distill.config.params import Default, limit_param, param, preset_param, resolve, reuse_param
from distill.config.presets import load_preset
from distill.data.prompts import translation_messages
from distill.data.questions import load_gsm8k
from distill.generation.options import (
    GenerationOptions,
    check_backend,
    engine_sizing,
    generation_config,
    lazy_generate,
    max_new_tokens_param,
    with_model_parallelism,
)
from distill.scoring.answers import normalize
from distill.tracking import lineage, phase_runs, shards
from distill.tracking.cache_keys import data_digest

console = logging.getLogger(__name__)

_PREAMBLE = re.compile(
    r"^\s*(?:(?:以下|これ)(?:は|が)[^\n]{0,30}?(?:翻訳|日本語訳)[^\n]{0,10}?[:：。]|"
    r"(?:日本語訳|翻訳|和訳|Japanese translation|Translation)\s*[:：])\s*",
    re.IGNORECASE,
)
_QUOTES = [("「", "」"), ("『", "』"), ('"', '"'), ("“", "”"), ("'", "'")]
_EN_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def clean_translation(text: str) -> str:
    """The translation alone: no preamble, no code fence, no wrapping quotes, no trailing notes."""
    text = (text or "").strip()
    text = re.sub(r"^```[a-z]*\n?|\n?```$", "", text).strip()
    text = _PREAMBLE.sub("", text, count=1).strip()
    text = re.split(r"\n\s*(?:注|Note|備考|（注）|\(注\))\s*[:：]", text, maxsplit=1)[0].strip()
    for left, right in _QUOTES:
        if len(text) >= 2 and text.startswith(left) and text.endswith(right) and text.count(left) == 1:
            text = text[len(left):-len(right)].strip()
    return text


def missing_numbers(english: str, japanese: str) -> list[str]:
    """Numbers written in digits in the English question that the translation lost."""
    ja = normalize(japanese).replace(",", "")
    ja_numbers = set(re.findall(r"\d+(?:\.\d+)?", ja))
    lost = []
    for number in _EN_NUMBER.findall(english):
        plain = number.replace(",", "")
        if plain not in ja_numbers and plain not in ja:
            lost.append(number)
    return lost


def translation_flag(english: str, japanese: str) -> str:
    if not japanese.strip():
        return "empty"
    if missing_numbers(english, japanese):
        return "missing_numbers"
    return ""


@dataclass(kw_only=True)
class TranslateParams(GenerationOptions):
    """Translate the GSM8K training questions into Japanese."""

    preset: str = preset_param()
    translator: str = param("", preset=Default("the preset's `translator`"),
                            help="the translating model: a short name of the preset, a Hub id or a folder")
    source: str = param("", preset="data.train",
                        help="`hub` (openai/gsm8k), `shipped` (256 questions) or a JSONL path")
    limit: int | None = limit_param("the first N training questions", preset="data.train_limit",
                                    note="a number of training questions")
    max_new_tokens: int | None = max_new_tokens_param("generation.translate_max_new_tokens")
    shard_size: int | None = shards.shard_size_param()
    reuse: bool = reuse_param()


def resolve_settings(p: TranslateParams, preset) -> tuple[TranslateParams, ModelRef, list[dict]]:
    """The parameters resolved against the preset (`translator` as the model's source), the model, the rows."""
    p = resolve(p, preset)
    check_backend(p.backend)
    translator = preset.translator
    ref = (resolve_model(p.translator, preset) if p.translator
           else ModelRef("translator", translator.model, "translator",
                         int(translator.tensor_parallel_size or preset.tensor_parallel_size or 1)))
    rows = load_gsm8k("train", source="hub" if p.source == "openai/gsm8k" else p.source, limit=p.limit)
    return dataclasses.replace(with_model_parallelism(p, ref), translator=ref.source), ref, rows


def key_payload(p: TranslateParams, rows: list[dict], preset) -> dict:
    return params.key_payload(p, preset, source_digest=data_digest(rows))


def reuse_key(p: TranslateParams, preset) -> dict:
    """The payload of translate(p)'s reuse key, from the parameters, the preset and the source questions."""
    p, _, rows = resolve_settings(p, preset)
    return key_payload(p, rows, preset)


def run(p: TranslateParams) -> str:
    preset = load_preset(p.preset)
    p, ref, rows = resolve_settings(p, preset)
    source = p.source
    config = generation_config(p)
    logged = {"preset": preset.name, "translator": ref.source, "source": source, "limit": p.limit,
              "backend": p.backend, "max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size,
              "n_questions": len(rows)}
    with phase_runs.phase_run("translate", logged, tags={lineage.TRANSLATOR: ref.source}, reuse=p.reuse,
                            key=key_payload(p, rows, preset)) as pr:
        if pr.reused:
            return pr.run_id
        import mlflow

        phase_runs.log_dataset([{k: r[k] for k in ("id", "question", "answer_number")} for r in rows],
                             name="gsm8k-train-en",
                             source="hf://datasets/openai/gsm8k" if source in ("hub", "openai/gsm8k") else source,
                             context="source")

        def translation(r: dict, out) -> dict:
            ja = clean_translation(out.text)
            return {"id": r["id"], "question_en": r["question"], "question_ja": ja,
                    "answer_en": r["answer"], "answer_number": r["answer_number"],
                    "flag": translation_flag(r["question"], ja), "raw_output": out.text}

        def prompt(r: dict) -> list:
            return translation_messages(r["question"])

        sizing = engine_sizing(preset, [prompt(r) for r in rows], config)
        with lazy_generate(ref, p.backend, p, config, sizing) as generate:
            work = shards.per_item(generate, prompt, translation)
            records, reused = shards.generate_in_shards(pr, rows, work, p.shard_size, "translations")
        flags = [r["flag"] for r in records]
        mlflow.log_metrics({"n_total": len(records), "n_flagged_empty": flags.count("empty"),
                            "n_flagged_missing_numbers": flags.count("missing_numbers"),
                            "n_resumed": reused})
        console.info(f"translate: {len(records)} questions, {flags.count('empty')} empty, "
                     f"{flags.count('missing_numbers')} missing numbers; run {pr.run_id}")
        return pr.run_id
