"""Write constraints/vllm-resolved.txt: the versions `pip install -e ".[vllm]"` resolves to today.

A GPU user installs the vLLM extra, and vLLM pins its own range of transformers (0.33: <5.21), so the
libraries the study calls are not those of the default install that the tests run under. CI runs the
training and evaluation tests a second time under this file (docs/development.md, "Versions and the pinned test pass").

    python tools/vllm_pins.py                       # two dry runs in a throw-away venv (1-3.5 min here)
    python tools/vllm_pins.py --report r.json --default-report d.json   # from reports made before

Each dry run is `pip install --dry-run --ignore-installed --report R -e SPEC`, for ".[vllm]" and for "."
(the default resolution). Pinned: the Hugging Face stack the study calls (PINNED), whatever their versions,
and every other package that both resolutions install at different versions. Never torch: the tests run on
the CPU build, and vLLM's own torch pin is a CUDA build (nor CUDA's packages). Standard library only: it runs
before any install.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "constraints" / "vllm-resolved.txt"
PINNED = ("transformers", "trl", "accelerate", "datasets", "tokenizers", "huggingface-hub", "safetensors")
NEVER = re.compile(r"(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)")  # CPU torch stays; these are CUDA's


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolved(report: dict) -> dict[str, str]:
    """{canonical name: version} of what a pip `--report` would install."""
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}


def pins(vllm: dict[str, str], default: dict[str, str]) -> dict[str, str]:
    """PINNED at vLLM's versions, plus each package both install at different versions; never NEVER."""
    missing = [p for p in PINNED if p not in vllm]
    if missing:
        raise SystemExit(f"vllm_pins: the vLLM resolution lacks {', '.join(missing)}: is this the right report?")
    chosen = {p: vllm[p] for p in PINNED}
    chosen.update({p: v for p, v in vllm.items() if p in default and default[p] != v})
    return {p: v for p, v in sorted(chosen.items()) if not NEVER.fullmatch(p)}


def constraints_text(vllm: dict[str, str], default: dict[str, str], made: str) -> str:
    chosen = pins(vllm, default)
    lines = [
        f"# What `pip install -e \".[vllm]\"` resolved to on {made} (vllm {vllm.get('vllm', '?')},"
        f" python {sys.version_info.major}.{sys.version_info.minor}, Linux x86-64).",
        "# Regenerate: python tools/vllm_pins.py  (dry runs of the vLLM extra and of the default install).",
        "# Used by the pinned test pass (README): pip install -c constraints/vllm-resolved.txt -e \".[dev]\".",
        "# torch is not pinned here: the tests run on the CPU build 2.13.0; "
        f"vLLM pins torch=={vllm.get('torch', '?')}",
        "# (a CUDA build), which a CPU machine cannot run.",
        "# Pinned: the Hugging Face stack the study calls, and every package the two resolutions install at",
        "# different versions (default -> vLLM):",
    ]
    lines += [f"#   {p}: {default[p]} -> {v}" for p, v in chosen.items() if p in default and default[p] != v]
    lines += [f"{p}=={v}" for p, v in chosen.items()]
    return "\n".join(lines) + "\n"


def dry_run(python: Path, spec: str, report: Path) -> dict:
    """The resolution of `pip install -e spec` from scratch, installing nothing."""
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
           "--report", str(report), "-e", spec]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"vllm_pins: {' '.join(cmd)} failed:\n{done.stderr}")
    return json.loads(report.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="a pip --report of `-e .[vllm]` made before")
    parser.add_argument("--default-report", type=Path, help="a pip --report of `-e .` made before")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vllm-pins-") as tmp:
        reports = {}
        for spec, given in ((".[vllm]", args.report), (".", args.default_report)):
            if given is not None:
                reports[spec] = json.loads(given.read_text())
                continue
            python = Path(tmp) / "venv" / "bin" / "python"
            if not python.exists():
                venv.create(Path(tmp) / "venv", with_pip=True)
                subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
            reports[spec] = dry_run(python, spec, Path(tmp) / "report.json")
    made = datetime.date.today().isoformat()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(constraints_text(resolved(reports[".[vllm]"]), resolved(reports["."]), made))
    print(args.output.read_text(), end="")


if __name__ == "__main__":
    main()
