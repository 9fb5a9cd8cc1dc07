"""What decides a phase's results, as keys: the code it runs (per file), the work (parameters and
inputs), and both together (the cache key a finished run is reused by).

A phase run is reused when a FINISHED run in the same experiment has the same cache key: the
hash of its entry point, its parameters, the run ids it consumed and the code version.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from distill.phases import module_name

# Set by `main` (and in its step processes): stand-in models under real ids, keyed as other work.
REHEARSAL = False
PACKAGE_DIR = Path(__file__).parent


# The module each generation backend lives in (as in generation/registry.py, checked by a test). The
# registry names backends as strings, so an import walk ties no phase to them; instead a phase's
# key covers the backend it runs with (its `backend` parameter) and no other.
BACKEND_MODULES = {"transformers": "distill.generation.hf", "vllm": "distill.generation.vllm_backend",
                   "openai": "distill.generation.openai_backend"}
RESOURCE_DIR = "resources"


def _module_file(module: str) -> Path | None:
    path = PACKAGE_DIR / (module.removeprefix("distill").lstrip(".").replace(".", "/") or "__init__")
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _distill_imports(module: str) -> set[str]:
    """The distill modules a module imports, anywhere in its body (lazy imports included)."""
    file = _module_file(module)
    return set() if file is None else set(_imports_in(file.read_text(encoding="utf-8")))


@lru_cache(maxsize=None)
def _imports_in(source: str) -> frozenset[str]:
    """Cached by the source text itself: an edited module is parsed again, an unchanged one never."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distill"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from distill import tracking`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("distill"))
    return frozenset(found)


@lru_cache(maxsize=None)
def _file_names_in(source: str) -> tuple[frozenset[str], frozenset[str]]:
    """String constants, and f-strings as patterns (`f"gsm8k_{split}_sample.jsonl"` names both samples)."""
    import ast

    names, patterns = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        elif isinstance(node, ast.JoinedStr):
            pattern = "".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values)
            if "." in pattern and not pattern.startswith("*") and not any(c.isspace() for c in pattern):
                patterns.add(pattern)  # a file name, not a message
    return frozenset(names), frozenset(patterns)


def _resources_read(file: Path) -> set[Path]:
    """Shipped data files a module names."""
    import fnmatch

    names, patterns = _file_names_in(file.read_text(encoding="utf-8"))
    found = set()
    for data in (PACKAGE_DIR / RESOURCE_DIR).rglob("*"):
        if data.is_file() and (data.name in names or any(fnmatch.fnmatchcase(data.name, p) for p in patterns)):
            found.add(data)
    return found


def warm_code_cache() -> None:
    """Parse every module of the package once, so that processes forked afterwards (distill.steps) compute
    their reuse keys by hashing files only (parsing them costs each step ~0.7 s)."""
    for file in PACKAGE_DIR.rglob("*.py"):
        source = file.read_text(encoding="utf-8")
        _imports_in(source)
        _file_names_in(source)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def data_digest(records: list[dict]) -> str:
    """The content of data a phase reads from a file rather than from a run (an eval set, a train_file), for its
    reuse key: an edited file is other work."""
    return _digest(json.dumps(records, sort_keys=True, ensure_ascii=False, default=str).encode())


def _preset_digest(name: str) -> tuple[str, str] | None:
    """The preset in use, by its parsed content: a comment or a reordering changes nothing."""
    import yaml

    from distill.config import preset_file

    path = preset_file(name)
    if path is None or not path.is_file():
        return None
    content = yaml.safe_load(path.read_text(encoding="utf-8"))
    label = str(path.relative_to(PACKAGE_DIR.parent)) if path.is_relative_to(PACKAGE_DIR) else str(path)
    return label, _digest(json.dumps(content, sort_keys=True, default=str).encode())


@lru_cache(maxsize=None)
def _code_files(phase: str | None, preset: str | None, backend: str | None) -> tuple[tuple[str, str], ...]:
    if phase is None:  # everything: for callers that want one version of the whole package
        files = {p for p in PACKAGE_DIR.rglob("*") if p.is_file() and p.suffix in {".py", ".yaml", ".json", ".tsv", ".jsonl"}}
    else:
        seen, todo = set(), [module_name(phase), "distill"] + ([BACKEND_MODULES[backend]] if backend in BACKEND_MODULES else [])
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo.extend(_distill_imports(module))
        files = {f for f in map(_module_file, seen) if f is not None}
        files |= {data for f in list(files) for data in _resources_read(f)}
    out = {str(f.relative_to(PACKAGE_DIR.parent)): _digest(f.read_bytes()) for f in files}
    if phase is not None and preset:
        entry = _preset_digest(preset)
        if entry:
            out[entry[0]] = entry[1]
    return tuple(sorted(out.items()))


def code_files(phase: str | None = None, preset: str | None = None, backend: str | None = None) -> dict[str, str]:
    """Path -> content hash of exactly what decides a phase's results: its module and the distill
    modules it imports (transitively; of the generation backends only the one it runs with), the
    shipped data those modules name, and the preset in use (not the other presets)."""
    return dict(_code_files(phase, preset, backend))


def code_version(phase: str | None = None, preset: str | None = None, backend: str | None = None) -> str:
    """One hash of code_files: editing the report does not invalidate finished teacher runs,
    editing the scoring code does, editing the vLLM backend does not retrain a student."""
    return _digest(json.dumps(code_files(phase, preset, backend), sort_keys=True).encode())


def _work_payload(phase: str, params: dict[str, Any], upstream: dict[str, str] | None) -> dict:
    payload = {"phase": phase, "params": {k: str(v) for k, v in sorted(params.items())},
               "upstream": dict(sorted((upstream or {}).items()))}
    if REHEARSAL:  # stand-in models under real ids: never mistaken for (or reused as) real work
        payload["rehearsal"] = True
    return payload


def work_key(phase: str, params: dict[str, Any], upstream: dict[str, str] | None = None) -> str:
    """The cache key without the code: the same work done by any version of the code."""
    return hashlib.sha256(json.dumps(_work_payload(phase, params, upstream), sort_keys=True).encode()).hexdigest()[:16]


def cache_key(phase: str, params: dict[str, Any], upstream: dict[str, str] | None = None) -> str:
    payload = {**_work_payload(phase, params, upstream), "code": code_version(phase, *code_scope(params))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def code_scope(params: dict[str, Any]) -> tuple[str | None, str | None]:
    """The preset and the generation backend that a phase's code key covers, from its parameters."""
    return _opt(params.get("preset")), _opt(params.get("backend"))


def _opt(value) -> str | None:
    return str(value) if value not in (None, "") else None


def clear_code_cache() -> None:
    """Hash the package's files again: for a process that edits them (the reuse key's tests)."""
    _code_files.cache_clear()
