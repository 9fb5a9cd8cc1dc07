"""Whether an `sft` run is a smoke run: trained on less than the preset's full data, or on a shortened schedule.

The aliases `sft` moves (`@teacher-7b`) are what the README says to pull; a quick try with `limit=8` or one
epoch must not take them over. A smoke run's student is still registered (a version, tagged `smoke` with the
reason), without moving an alias.
"""

from __future__ import annotations

from distill.tracking import lineage

SMOKE_TAG = "smoke"


def _fewer(value, full) -> bool:
    """`value` (None: all) below `full` (None: all)."""
    if value in (None, ""):
        return False
    return full is None or float(value) < float(full)


def smoke_reasons(p, preset, n_available: int, select_run=None) -> list[str]:
    """Why the sft of `p` (resolved parameters) is not on the preset's full data and schedule; [] when it is.
    `n_available`: the training rows before `limit`; `select_run`: the run they came from (None: a train_file)."""
    reasons = []
    if p.limit is not None and p.limit < n_available:
        reasons.append(f"limit={p.limit} of {n_available} examples")
    if _fewer(p.num_train_epochs, preset.sft.num_train_epochs):
        reasons.append(f"num_train_epochs={p.num_train_epochs:g} (preset: {preset.sft.num_train_epochs:g})")
    if select_run is not None:
        reasons += _upstream_reasons(select_run, preset)
    return reasons


def _upstream_reasons(select_run, preset) -> list[str]:
    """The select run chose fewer questions than the preset's, or from a shorter translation (`train_limit`)."""
    import mlflow

    reasons = []
    n = select_run.data.params.get("n")
    if n and _fewer(n, preset.select.n):
        reasons.append(f"select n={n} (preset: {preset.select.n})")
    translation = select_run.data.tags.get(lineage.TRANSLATION_RUN_ID)
    if translation:
        limit = mlflow.get_run(translation).data.params.get("limit")
        if limit not in (None, "", "None") and _fewer(limit, preset.data.train_limit):
            full = preset.data.train_limit if preset.data.train_limit is not None else "all"
            reasons.append(f"a translation of {limit} questions (train_limit; preset: {full})")
    return reasons
