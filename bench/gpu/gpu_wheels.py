"""The wheels to carry to a lent GPU machine (no network there): downloads exactly bench/gpu/gpu_wheels.txt into
`.whl/` for its Python (3.12, manylinux x86_64) and checks that the set is whole and within the limit of
what travels with a call (64 MiB).

    python bench/gpu/gpu_wheels.py                       # fetch into .whl/ (git-ignored), check, print the run command
    python bench/gpu/gpu_wheels.py --check               # check what .whl/ holds, fetch nothing
    python bench/gpu/gpu_wheels.py --python-version 3.11 --dest /tmp/whl311   # the same set for a local test venv

There: `pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and PYTHONPATH=/tmp/site (bench/gpu/README.md).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIST = Path(__file__).with_name("gpu_wheels.txt")
LIMIT_BYTES = 64 * 2**20        # the working tree and carried paths of one call, together
# pip matches a platform tag exactly: every manylinux glibc level up to the machine's (Ubuntu 24.04: 2.39)
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]


def normalise(name: str) -> str:
    """A distribution name as wheel file names spell it (PEP 427/503): lower case, runs of -_. as one _."""
    return re.sub(r"[-_.]+", "_", name).lower()


def read_list(path: Path = LIST) -> dict[str, str]:
    """name -> version, in the file's order; one `name==version` a line, `#` starts a comment."""
    wanted: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9._+!-]+)", line)
        if not m:
            raise SystemExit(f"{path}:{lineno}: expected name==version, got {line!r}")
        if normalise(m[1]) in {normalise(n) for n in wanted}:
            raise SystemExit(f"{path}:{lineno}: {m[1]} listed twice (two versions stop the whole install)")
        wanted[m[1]] = m[2]
    return wanted


def tree_bytes(root: Path = ROOT) -> int:
    """The working tree that travels with every call beside the carried paths: tracked and untracked,
    not ignored files."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True,
                         check=True).stdout.decode()
    return sum((root / f).stat().st_size for f in out.split("\0") if f and (root / f).is_file())


def check(folder: Path, wanted: dict[str, str], limit: int = LIMIT_BYTES) -> list[str]:
    """What is wrong with `folder` as the carried set: a listed wheel missing or in another version, a wheel
    not listed, two of one name, over the limit (what is left of it beside the working tree). Empty when right."""
    have: dict[str, list[Path]] = {}
    for f in sorted(folder.glob("*.whl")):
        have.setdefault(normalise(f.name.split("-")[0]), []).append(f)
    problems = []
    for name, version in wanted.items():
        files = have.pop(normalise(name), [])
        if not files:
            problems.append(f"missing: {name}=={version}")
        elif len(files) > 1:
            problems.append(f"{name}: {len(files)} wheels ({', '.join(f.name for f in files)})")
        elif files[0].name.split("-")[1] != version:
            problems.append(f"{name}: {files[0].name} is not version {version}")
    problems += [f"not listed: {f.name}" for files in have.values() for f in files]
    total = sum(f.stat().st_size for f in folder.glob("*.whl"))
    if total > limit:
        problems.append(f"{total / 2**20:.1f} MiB of wheels, over the {limit / 2**20:.1f} MiB left for them")
    return problems


def download(wanted: dict[str, str], dest: Path, python_version: str) -> None:
    """Exactly the listed wheels for that Python on manylinux x86_64 into dest (emptied of wheels first)."""
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               python_version, "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)),
               "-d", tmp, *(f"{n}=={v}" for n, v in wanted.items())]
        subprocess.run(cmd, check=True)
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.glob("*.whl"):
            old.unlink()
        for f in Path(tmp).glob("*.whl"):
            shutil.move(str(f), dest / f.name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=ROOT / ".whl", help="folder of the wheels (default .whl/)")
    ap.add_argument("--python-version", default="3.12", help="the machine's Python (3.12)")
    ap.add_argument("--check", action="store_true", help="only check what --dest holds")
    args = ap.parse_args(argv)
    wanted = read_list()
    if not args.check:
        download(wanted, args.dest, args.python_version)
    for f in sorted(args.dest.glob("*.whl")):
        print(f"{f.stat().st_size / 2**20:7.2f} MiB  {f.name}")
    total, tree = sum(f.stat().st_size for f in args.dest.glob("*.whl")), tree_bytes()
    print(f"{total / 2**20:7.2f} MiB  {len(wanted)} wheels listed; with the working tree ({tree / 2**20:.2f} MiB) "
          f"{(total + tree) / 2**20:.2f} of the {LIMIT_BYTES / 2**20:.0f} MiB that travel with a call")
    problems = check(args.dest, wanted, LIMIT_BYTES - tree)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
