"""The paper's published numbers (distill/resources/paper_results.yaml) as typed data, with their sources."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PAPER_RESULTS = Path(__file__).parents[2] / "resources" / "paper_results.yaml"


@dataclass(frozen=True)
class Model:
    label: str   # as the paper prints it (Qwen2.5-7B)
    model: str   # the Hugging Face id it names


@dataclass(frozen=True)
class Paper:
    raw: dict

    @property
    def teachers(self) -> list[Model]:
        """In size order: the order the size claims read."""
        return [Model(**m) for m in self.raw["teachers"]]

    @property
    def students(self) -> list[Model]:
        return [Model(**m) for m in self.raw["students"]]

    @property
    def eval_set(self) -> dict:
        return self.raw["eval_set"]

    @property
    def scoring_rule(self) -> str:
        return self.raw["scoring"]["rule"]

    @property
    def baseline_label(self) -> str:
        return self.raw["baseline"]["label"]

    def table1(self, teacher: str, student: str) -> float:
        return float(self.raw["table1"]["accuracy"][teacher][student])

    def table1_mean(self, teacher: str) -> float:
        return float(self.raw["table1"]["mean"][teacher])

    def table1_baseline(self, student: str) -> float:
        return float(self.raw["table1"]["baseline"][student])

    def table3(self, teacher: str) -> float:
        return float(self.raw["table3"]["accuracy"][teacher])

    def source(self, table: str) -> str:
        return self.raw[table]["source"]

    def claim(self, key: str) -> dict:
        return self.raw["claims"][key]


@lru_cache(maxsize=1)
def load_paper() -> Paper:
    import yaml

    with open(PAPER_RESULTS, encoding="utf-8") as f:
        return Paper(yaml.safe_load(f))
