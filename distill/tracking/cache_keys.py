"""What decides a phase's results, as keys: the code it runs (per file), the work (parameters and
inputs), and both together (the cache key a finished run is reused by).

A phase run is reused when a FINISHED run in the same experiment has the same cache key: the
hash of its entry point, its parameters, the run ids it consumed and the code version. The code
version hashes what each module is, not where it lives: its syntax tree without comments and
docstrings, with the package's own module paths (in imports, and strings naming a module) cut to
the module's name; so moving a module into another folder keeps every finished step reusable.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from distill.phases import module_name

# Set by `main` (and in its step processes): stand-in models under real ids, keyed as other work.
REHEARSAL = False
PACKAGE_DIR = Path(__file__).parents[1]


# The module each generation backend lives in (as in generation/backends.py, checked by a test). The
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


@cache
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


@cache
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
    """Parse every module of the package once, so that processes forked afterwards (distill.pipeline.steps) compute
    their reuse keys by hashing files only (parsing them costs each step ~0.7 s)."""
    for file in PACKAGE_DIR.rglob("*.py"):
        source = file.read_text(encoding="utf-8")
        _imports_in(source)
        _file_names_in(source)
        _behaviour_digest(source, _module_names())


@cache
def _module_names() -> frozenset[str]:
    """Every module of the package by its dotted name: strings that name one are module references."""
    names = set()
    for file in PACKAGE_DIR.rglob("*.py"):
        parts = file.relative_to(PACKAGE_DIR).with_suffix("").parts
        names.add(".".join(("distill", *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return frozenset(names)


@cache
def _behaviour_digest(source: str, modules: frozenset[str]) -> str:
    """The digest of what a module does, not of where it lives or how it is commented: its syntax tree
    without docstrings, every `distill...` module path (an import's, or a string naming a module of the
    package) cut to its last name. Empty for a module that does nothing (a folder's bare __init__.py)."""
    import ast

    def own(node) -> bool:
        return isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "distill"

    def canonical(stmts: list) -> list:
        """A run of the package's own imports as one import per name, sorted: splitting `from distill import
        a, b` when `b` moves to a folder is no change."""
        out, run = [], []
        for stmt in [*stmts, None]:
            if stmt is not None and own(stmt):
                run += [(a.name, a.asname) for a in stmt.names]
                continue
            out += [ast.ImportFrom("distill", [ast.alias(n, a)], 0) for n, a in sorted(set(run), key=str)]
            run = []
            if stmt is not None:
                out.append(stmt)
        return out

    class Normalize(ast.NodeTransformer):
        def generic_visit(self, node):
            for field in ("body", "orelse", "finalbody"):
                stmts = getattr(node, field, None)
                if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                    setattr(node, field, canonical(stmts))
            return super().generic_visit(node)

        def visit_Import(self, node):
            for alias in node.names:
                if alias.name.split(".")[0] == "distill":
                    alias.name = alias.name.rsplit(".", 1)[-1]
            return node

        def visit_Constant(self, node):  # "distill.generation.hf", "distill.generation.hf:HFGenerator"
            if isinstance(node.value, str) and node.value.partition(":")[0] in modules:
                path, colon, name = node.value.partition(":")
                node.value = path.rsplit(".", 1)[-1] + colon + name
            return node

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    text = ast.unparse(Normalize().visit(tree))
    return "" if text in ("", "pass") else _digest(text.encode())


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def data_digest(records: list[dict]) -> str:
    """The content of data a phase reads from a file rather than from a run (an eval set, a train_file), for its
    reuse key: an edited file is other work."""
    return _digest(json.dumps(records, sort_keys=True, ensure_ascii=False, default=str).encode())


def _preset_digest(name: str) -> tuple[str, str] | None:
    """The preset in use, by its parsed content: a comment or a reordering changes nothing."""
    import yaml

    from distill.config.presets import preset_file

    path = preset_file(name)
    if path is None or not path.is_file():
        return None
    content = yaml.safe_load(path.read_text(encoding="utf-8"))
    label = str(path.relative_to(PACKAGE_DIR.parent)) if path.is_relative_to(PACKAGE_DIR) else str(path)
    return label, _digest(json.dumps(content, sort_keys=True, default=str).encode())


@cache
def _code_files(phase: str | None, preset: str | None, backend: str | None) -> tuple[tuple[str, str], ...]:
    if phase is None:  # everything: for callers that want one version of the whole package
        files = {p for p in PACKAGE_DIR.rglob("*")
                 if p.is_file() and p.suffix in {".py", ".yaml", ".json", ".tsv", ".jsonl"}}
    else:
        seen, todo = set(), [module_name(phase), "distill"] + (
            [BACKEND_MODULES[backend]] if backend in BACKEND_MODULES else [])
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo.extend(_distill_imports(module))
        files = {f for f in map(_module_file, seen) if f is not None}
        files |= {data for f in list(files) for data in _resources_read(f)}
    out = {str(f.relative_to(PACKAGE_DIR.parent)): _file_digest(f) for f in files}
    if phase is not None and preset:
        entry = _preset_digest(preset)
        if entry:
            out[entry[0]] = entry[1]
    return tuple(sorted((path, digest) for path, digest in out.items() if digest))


def _file_digest(file: Path) -> str:
    """A module by what it does (_behaviour_digest), a data file by its bytes."""
    if file.suffix == ".py":
        return _behaviour_digest(file.read_text(encoding="utf-8"), _module_names())
    return _digest(file.read_bytes())


def code_files(phase: str | None = None, preset: str | None = None, backend: str | None = None) -> dict[str, str]:
    """Path -> content hash of exactly what decides a phase's results: its module and the distill
    modules it imports (transitively; of the generation backends only the one it runs with), the
    shipped data those modules name, and the preset in use (not the other presets)."""
    return dict(_code_files(phase, preset, backend))


def code_version(phase: str | None = None, preset: str | None = None, backend: str | None = None) -> str:
    """One hash of code_files' hashes, not of their paths (a moved module is the same code): editing the
    report does not invalidate finished teacher runs, editing the scoring code does, editing the vLLM
    backend does not retrain a student."""
    return _digest(json.dumps(sorted(code_files(phase, preset, backend).values())).encode())


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
    _module_names.cache_clear()
