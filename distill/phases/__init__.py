"""The study's method, one module per phase, in the order the paper runs them (docs/development.md, "Layout").

translate -> teacher -> select -> sft -> evaluate -> errors (the judge) -> tokens -> report; sweep
searches sft's hyperparameters; main (distill.pipeline) runs the grid. What a phase is to the CLI, the planner and
the docs is declared once, in distill.phases.contract.
"""

# Entry point -> the module that runs it. Plain data with no imports, kept apart from the contract: a phase's code key
# (distill.tracking.cache_keys) starts from this module and covers what it imports, so this file importing every
# phase (as the contract does) would tie each phase's key to every other phase's code. `pipeline` is the name
# `main`'s own cache key is computed under (distill.pipeline.main_run).
MODULES = {
    "translate": "distill.phases.translate",
    "teacher": "distill.phases.teacher",
    "select": "distill.phases.select",
    "sft": "distill.phases.sft",
    "evaluate": "distill.phases.evaluate",
    "errors": "distill.phases.errors",
    "tokens": "distill.phases.tokens",
    "report": "distill.phases.report",
    "sweep": "distill.phases.sweep",
    "main": "distill.pipeline",
    "pipeline": "distill.pipeline",
}


def module_name(phase: str) -> str:
    """The module that runs a phase: `sft` -> distill.phases.sft, `main` -> distill.pipeline."""
    return MODULES[phase]
