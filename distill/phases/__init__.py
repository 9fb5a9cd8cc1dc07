"""The study's method, one module per phase, in the order the paper runs them (docs/development.md, "Layout").

translate -> teacher -> select -> sft -> evaluate -> judge (the `errors` entry point) -> tokens -> report;
sweep searches sft's hyperparameters; main runs the grid. Each module has a `*Params` dataclass and `run`.
"""

# Phase (entry point and `distill.phase` tag) -> module, where the two names differ.
_RENAMED = {"errors": "judge", "pipeline": "main"}


def module_name(phase: str) -> str:
    """The module that runs a phase: `errors` -> distill.phases.judge, `teacher` -> distill.phases.teacher."""
    return f"{__name__}.{_RENAMED.get(phase, phase)}"
