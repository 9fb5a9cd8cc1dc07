"""MLproject's entry points: the study's phases (distill.phases.contract) and `main`, the grid over them
(distill.pipeline), each a contract.Phase. Apart from the contract because `main` runs the phases: the contract
cannot import it."""

from __future__ import annotations

from distill.phases.contract import NAMES as PHASE_NAMES, Phase, phase

NAMES = (*PHASE_NAMES, "main")  # in the order the docs describe them


def entry_point(name: str) -> Phase:
    """The phase an entry point runs; `main` is distill.pipeline.MAIN. An unknown name is refused with the
    known ones."""
    if name == "main":
        from distill.pipeline import MAIN

        return MAIN
    return phase(name)
