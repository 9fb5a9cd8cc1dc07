"""The `tokens` phase: how long and in what style each teacher writes (paper section 4.2, Fig. 3).

Tokens per training answer under several tokenizers, and the style measures the paper's analysis
points at: calculation steps per answer and answers that use decimals.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill import DistillError
from distill.config import params
from distill.config.models import ModelRef
from distill.config.names import did_you_mean, match_name
from distill.config.params import Default, param, preset_param, resolve, reuse_param, upstream_param
from distill.config.params_text import lists_from_text
from distill.config.presets import load_preset
from distill.scoring.answers import normalize
from distill.tracking import lineage, phase_runs

console = logging.getLogger(__name__)

_EQUATION = re.compile(r"\d[\d,]*(?:\.\d+)?\s*[+\-×x*/÷]\s*\(?\d[\d,]*(?:\.\d+)?[^=\n]{0,40}?=\s*-?\d")
_DECIMAL = re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])")


def calculation_steps(text: str) -> int:
    """Written calculations such as `5 × 16 = 80`: one per equation with an operator and a result."""
    return len(_EQUATION.findall(normalize(text)))


def uses_decimal(text: str) -> bool:
    return bool(_DECIMAL.search(normalize(text)))


@dataclass
class TokensParams:
    """Token counts and style of every teacher's training answers."""

    preset: str = preset_param()
    select_run: str = upstream_param("the `select` run whose training answers are counted",
                                     "the newest FINISHED one")
    tokenizers: list[str] = param(factory=list, preset=Default("all of the preset's `tokenizers`"),
                                  help="comma-separated names of the preset's tokenizers")
    reuse: bool = reuse_param()

    __post_init__ = lists_from_text  # comma-joined text -> list[str], here only


def load_counter(source: str):
    """A tokenizer by Hub id, folder or `tiny:` name (only the tokenizer is loaded)."""
    from distill.config.models import materialize
    from distill.generation.hf import load_tokenizer

    return load_tokenizer(materialize(ModelRef(source, source)).tokenizer)


def summary(values: list[int]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    q1, median, q3 = np.percentile(a, [25, 50, 75])
    return {"tokens_mean": a.mean(), "tokens_median": median, "tokens_q1": q1, "tokens_q3": q3,
            "tokens_min": a.min(), "tokens_max": a.max()}


def token_figure(rows: list[dict], tokenizers: list[str], teachers: list[str]):
    """Tokens per answer, a box per teacher in a panel per tokenizer."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=max(len(tokenizers), 1), subplot_titles=tokenizers or ["(none)"],
                        shared_yaxes=True)
    for c, name in enumerate(tokenizers, start=1):
        for t in teachers:
            fig.add_trace(go.Box(y=[r["tokens"] for r in rows if r["tokenizer"] == name and r["teacher"] == t],
                                 name=t, boxmean=True, showlegend=False), row=1, col=c)
    fig.update_yaxes(title_text="tokens per answer", rangemode="tozero", col=1)
    fig.update_layout(title="Tokens per teacher answer, by tokenizer", template="plotly_white")
    return fig


def log_figure(fig, name: str, run_id: str) -> None:
    """`figures/<name>.html` loading the experiment's one plotly.js (distill/phases/report/assets.py: opens
    without a network, in the MLflow UI too), not `mlflow.log_figure`'s HTML that loads plotly.js from a CDN."""
    import mlflow

    from distill.disk_full import writing
    from distill.phases.report.assets import shared_plotlyjs
    from distill.phases.report.figures import write_figure

    asset = shared_plotlyjs(mlflow.get_run(run_id).info.experiment_id)
    with tempfile.TemporaryDirectory() as tmp, writing("the tokens figure", tmp):
        folder = Path(tmp) / "figures"
        folder.mkdir()
        write_figure(fig, folder / name, asset)
        mlflow.log_artifacts(tmp)


def resolve_settings(p: TokensParams, preset) -> TokensParams:
    """The parameters resolved against the preset: `tokenizers` as the preset's names (`Qwen2.5` -> `qwen2.5`)."""
    p = resolve(p, preset)
    available = preset.tokenizers
    names = [match_name(n, available) or n for n in p.tokenizers] or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DistillError(f"unknown tokenizer(s) {', '.join(unknown)}; {did_you_mean(unknown[0], available)}"
                           f"the preset has {', '.join(available)}")
    return dataclasses.replace(p, tokenizers=names)


def reuse_key(p: TokensParams, preset) -> dict:
    """The payload of tokens(p)'s reuse key (its upstream: the select run id)."""
    p = resolve_settings(p, preset)
    return params.key_payload(p, preset, tokenizer_sources=[preset.tokenizers[n] for n in p.tokenizers])


def run(p: TokensParams) -> str:
    preset = load_preset(p.preset)
    p = resolve_settings(p, preset)
    available, names = preset.tokenizers, p.tokenizers
    select = phase_runs.require_run(p.select_run or None, "select", "tokens", params={"preset": preset.name})
    teachers = lineage.teachers_of(select)
    logged = {"preset": preset.name, "tokenizers": ",".join(f"{n}={available[n]}" for n in names),
              "teachers": ",".join(teachers)}
    with phase_runs.phase_run("tokens", logged, {"select_run_id": select.info.run_id}, reuse=p.reuse,
                            key=reuse_key(p, preset)) as pr:
        if pr.reused:
            return pr.run_id
        import mlflow

        sets = {t: phase_runs.read_jsonl_artifact(select.info.run_id, f"train/{t}.jsonl") for t in teachers}
        rows, metrics, table = [], {}, []
        for name in names:
            tok = load_counter(available[name])
            for teacher, answers in sets.items():
                counts = [len(tok(a["completion"], add_special_tokens=False).input_ids) for a in answers]
                for a, n in zip(answers, counts):
                    rows.append({"teacher": teacher, "tokenizer": name, "id": a["id"], "tokens": n,
                                 "steps": calculation_steps(a["completion"]),
                                 "uses_decimal": uses_decimal(a["completion"])})
                stats = summary(counts) if counts else {}
                steps = [calculation_steps(a["completion"]) for a in answers]
                table.append({"tokenizer": name, "teacher": teacher, "n": len(counts), **stats,
                              "steps_mean": float(np.mean(steps)) if steps else 0.0,
                              "decimal_frac": float(np.mean([uses_decimal(a["completion"]) for a in answers]))
                              if answers else 0.0})
        # A table and one figure, not a metric per tokenizer x teacher x statistic (dozens of columns
        # in the runs view); the two numbers a comparison sorts by stay metrics.
        metrics["n_answers"] = len(rows)
        metrics["n_tokenizers"] = len(names)
        mlflow.log_metrics(metrics)
        phase_runs.log_records(rows, "token_counts")
        phase_runs.log_records(table, "token_summary")
        log_figure(token_figure(rows, names, teachers), "token_counts", pr.run_id)
        for t in table:
            console.info(f"tokens {t['tokenizer']:>14} {t['teacher']:>8}: "
                         f"mean {t.get('tokens_mean', float('nan')):.1f}, "
                         f"median {t.get('tokens_median', float('nan')):.0f}")
        return pr.run_id
