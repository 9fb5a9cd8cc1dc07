"""The parameters of every entry point as a reader sees them, from their declarations (distill/config/params.py): the
docs' parameter page (docs/parameters.md) and MLproject's `also:` lines.

`python -m distill.params_doc [PHASE ...]` prints the tables; `--write` rewrites docs/parameters.md, which is
generated whole (nothing in it is written by hand); `--check` exits 1 and names the stale tables when the page no
longer matches the fields. tests/test_params.py checks the page and MLproject against the fields.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from distill.config.params import declared, default_text, doc_order
from distill.entry_points import NAMES as PHASES, entry_point as phase_of

PAGE = Path(__file__).resolve().parents[1] / "docs" / "parameters.md"
_TABLE = re.compile(r"<!-- params: (\w+) -->\n(.*?)<!-- /params -->", re.S)


def params_class(name: str):
    """The `*Params` class of an entry point (`errors` -> distill.phases.errors.ErrorsParams)."""
    return phase_of(name).code.params


def upstream_fields(name: str) -> list:
    """The parameters of what an entry point builds first (its contract.Phase.grid_params it does not have itself,
    then `upstream` and `plan`), declared on targets.UpstreamParams; none for an entry point that builds nothing."""
    from distill.pipeline.targets import BUILD_OPTIONS, UpstreamParams

    if not phase_of(name).builds_upstream:
        return []
    own = {f.name for f in dataclasses.fields(params_class(name))}
    names = [n for n in (*phase_of(name).grid_params, *BUILD_OPTIONS) if n not in own]
    by_name = {f.name: (f, s) for f, s in declared(UpstreamParams)}
    return [by_name[n] for n in names]


def entry_point_fields(phase: str) -> list:
    """Every parameter an entry point takes: its phase's fields, then those of what it builds."""
    return doc_order(params_class(phase)) + upstream_fields(phase)


def table(phase: str) -> str:
    """The docs' table of an entry point's parameters: name, what empty means, what it is and what is allowed."""
    from distill.pipeline.targets import BUILD_OPTIONS

    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    built = upstream_fields(phase)
    builds = {f.name for f, _ in built} - set(BUILD_OPTIONS)
    for f, s in doc_order(params_class(phase)) + built:
        meaning = (("for what it builds: " if f.name in builds else "") + s.help
                   + (f"; {s.rule.allowed()}" if s.rule else ""))
        if s.unkeyed and f.name not in builds:
            meaning += f" (not in the reuse key: {s.unkeyed})"
        rows.append(f"| `{f.name}` | {default_text(f, s)} | {meaning} |")
    return "\n".join(rows) + "\n"


INTRO = """# Every parameter

Each entry point's parameters as declared on its `*Params` fields (`distill/config/params.py`): what an empty
value means, what it is, what is allowed. `python entrypoints/<entry point>.py --help` prints the same. This page
is generated: `python -m distill.params_doc --write` writes it, and `tests/test_params.py` (or
`python -m distill.params_doc --check`) fails when it no longer matches the fields. Every parameter is in its
phase's reuse key unless its row says why not.

Parameters whose default comes from the preset are not declared in `MLproject`; `-P name=value` passes them all
the same and MLflow logs them. The rows that start "for what it builds" set the steps an entry point runs first
([Phases](phases.md)).
"""


def page() -> str:
    """docs/parameters.md: the introduction, then one section and table per entry point."""
    sections = [f"## `{phase}`\n\n<!-- params: {phase} -->\n{table(phase)}<!-- /params -->\n" for phase in PHASES]
    return "\n".join([INTRO, *sections])


def page_tables(text: str) -> dict[str, str]:
    """Phase -> the table a page holds for it."""
    return {m.group(1): m.group(2) for m in _TABLE.finditer(text)}


def stale(path: Path = PAGE) -> list[str]:
    """What differs between the page and the fields: the phases whose table is stale, or the page as a whole."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    held = page_tables(text)
    phases = [p for p in PHASES if held.get(p) != table(p)]
    return phases or ([] if text == page() else ["the text around the tables"])


def mlproject_also(text: str) -> dict[str, list[str]]:
    """Entry point -> the parameters its `# also:` comment names (the list ends at a `;` or with the comment)."""
    out: dict[str, list[str]] = {}
    entry, collecting = None, False
    for line in text.splitlines():
        if m := re.match(r"^  (\w+):\s*$", line):
            entry, collecting = m.group(1), False
        elif m := re.match(r"^\s*# also:(.*)$", line):
            out[entry], collecting = [], True
            collecting = _take(out[entry], m.group(1))
        elif collecting and (m := re.match(r"^\s*#\s{3,}(\S.*)$", line)):
            collecting = _take(out[entry], m.group(1))
        else:
            collecting = False
    return out


def _take(names: list[str], text: str) -> bool:
    """Names of a comma-separated list into `names`; False once the list has ended (`;`), unless what follows
    is the list of what the entry point builds (`; for what it builds: ...`)."""
    head, ended, rest = text.partition(";")
    names += [n.strip() for n in head.split(",") if n.strip()]
    if ended and rest.strip().startswith(BUILDS):
        return _take(names, rest.strip()[len(BUILDS):])
    return not ended


BUILDS = "for what it builds:"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--write"]:
        PAGE.write_text(page(), encoding="utf-8")
        return 0
    if argv[:1] == ["--check"]:
        if found := stale():
            print(f"{PAGE.relative_to(PAGE.parents[1])} is stale ({', '.join(found)}): "
                  "python -m distill.params_doc --write", file=sys.stderr)
            return 1
        return 0
    for phase in argv or PHASES:
        print(f"### `{phase}`\n\n{table(phase)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
