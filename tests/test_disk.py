"""The disk figures of the docs' sft page come from the preset (distill/estimates/disk.py), not a hand count."""

import re

from distill.config.presets import load_preset
from distill.estimates.disk import count_parameters, sft_disk
from tests.conftest import ROOT


def test_docs_give_paper_grid_disk():
    """The docs give the disk the paper grid needs, computed from the preset."""
    paper = load_preset("paper")
    last, every = sft_disk(paper, "last", local=False), sft_disk(paper, "all", local=False)
    assert last["runs"] == every["runs"] == 16 and every["checkpoints_per_run"] == 2
    text = (ROOT / "docs" / "sft.md").read_text()
    section = text[text.index("## Checkpoints on disk"):text.index("## Several GPUs")]
    bold = [int(x) for x in re.findall(r"\*\*(\d+) GB\*\*", section)]
    assert bold == [round(last["store_after_gb"]), round(last["store_peak_gb"]), round(every["store_after_gb"])]
    assert f"{round(every['checkpoints_gb'])} GB of it checkpoints" in section
    assert f"{round(last['checkpoint_gb_largest'])} GB for" in section  # one checkpoint of llm-jp-3.1-1.8b


def test_local_model_counted_from_config(tiny_student):
    """A local model's parameters are counted from its config."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_student)
    assert count_parameters(str(tiny_student)) == sum(p.numel() for p in model.parameters())
    offline = sft_disk(load_preset("offline"))
    assert offline["students_b"] and all(0 < b < 0.01 for b in offline["students_b"].values())
