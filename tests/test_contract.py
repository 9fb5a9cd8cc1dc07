"""The phase contract (distill.phases.contract) is what the CLI, the planner, MLproject and the docs read."""

import ast
import dataclasses
import re

import yaml

from distill.entry_points import NAMES, entry_point
from distill.phases import MODULES
from distill.phases.contract import phase
from tests.conftest import ROOT


def test_entry_points_are_the_phases():
    """MLproject's entry points and scripts are the phases.

    Each MLproject entry point is a phase, runs its script, and the script runs that phase."""
    entry_points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    assert set(entry_points) == set(NAMES)
    for name, spec in entry_points.items():
        script = re.match(r"python (entrypoints/\w+\.py) ", spec["command"]).group(1)
        assert re.search(rf'run_phase\("{name}"\)', (ROOT / script).read_text()), script


def test_each_phase_names_its_parts():
    """Its run lives in its module, its inputs and grid parameters are parameters it or its upstream takes."""
    from distill.pipeline.targets import UpstreamParams

    upstream = {f.name for f in dataclasses.fields(UpstreamParams)}
    for p in map(entry_point, NAMES):
        code = p.code
        assert code.run.__module__ == p.module and code.reuse_key.__module__ == p.module, p.name
        fields = {f.name for f in dataclasses.fields(code.params)}
        assert set(p.inputs) <= fields and set(p.grid_params) <= upstream, p.name
        for part in (code.resolve_settings, code.preflight, code.prepare):
            assert part is None or part.__module__ == p.module, p.name


def test_planner_refuses_unknown_input():
    """The planner refuses an input the phase does not take."""
    import pytest

    from distill.pipeline.planner import step

    assert not step("select", "select", {"teacher_runs": ["teacher 7B"]}).params.teacher_runs
    with pytest.raises(ValueError, match="teacher_runs"):
        step("select", "select", {"select_run": ["select"]})


def test_unknown_phase_lists_known():
    """An unknown phase is refused with the known ones."""
    import pytest

    from distill import DistillError

    with pytest.raises(DistillError, match="no phase named 'judge'; the phases are translate, teacher"):
        entry_point("judge")
    assert entry_point("main").module == "distill.pipeline" and phase("errors").module == "distill.phases.errors"


def test_the_module_map_imports_nothing():
    """A phase's code key starts from distill.phases.MODULES' file: an import there would join every phase's key."""
    tree = ast.parse((ROOT / "distill" / "phases" / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert set(NAMES) <= set(MODULES)


def test_no_phase_found_by_naming():
    """Nothing finds a phase by a naming convention.

    No `*Params` found by its suffix, no `run` fetched with getattr: the contract names them."""
    for file in (ROOT / "distill").rglob("*.py"):
        text = file.read_text()
        assert ('endswith("Params")' not in text
                and not re.search(r"getattr\(module, \"(run|prepare|preflight)", text)), file
