"""The docs site: the README stays a page or two that links pages which exist, every page is in the site's nav,
every screenshot is shown, and `mkdocs build --strict` passes (a warning, such as a broken link or anchor, fails it).
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in _nav_pages(v)]
    return [p for item in nav for p in _nav_pages(item)]


def test_readme_short_and_links_resolve():
    """The README is short, and its links lead somewhere."""
    assert len(README.splitlines()) <= 200, "the README keeps what a newcomer needs; the rest goes to docs/"
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [link for link in links if not re.match(r"\w+:", link)]
    assert len([link for link in local if link.startswith("docs/")]) >= 10
    for link in local:
        assert (ROOT / link.split("#")[0]).exists(), f"README links {link}, which is not in the repository"
    assert "mkdocs serve" in README


def test_pages_in_nav_screenshots_shown():
    """Every page is in the nav, and every screenshot is shown."""
    nav = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md")), "a page missing from mkdocs.yml's nav, or gone"
    pages = "".join(p.read_text(encoding="utf-8") for p in DOCS.glob("*.md"))
    for png in DOCS.glob("*.png"):
        assert f"]({png.name})" in pages, f"docs/{png.name} is shown by no page"


def test_the_site_builds_without_a_warning(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs extra is not installed: pip install -e '.[docs]'")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "site" / "parameters" / "index.html").is_file()
    shutil.rmtree(tmp_path / "site")


def _repository_paths(text: str) -> set[str]:
    """The repository's files and modules a page names in code spans: `distill/...`, `tests/...`, `python -m x.y`."""
    spans = re.findall(r"`([^`\n]+)`", text)
    paths = {w for s in spans for w in re.findall(r"(?<![\w./-])((?:distill|tests|bench|tools|entrypoints|constraints|"
                                                  r"docs|\.ci)/[\w./-]*\w)", s) if "{" not in s}
    modules = {m for s in spans for m in re.findall(r"python -m (distill(?:\.\w+)+)", s)}
    written = ("bench/out",)  # what the scripts write, not in the repository
    return {p for p in paths if not p.startswith(written)} | {m.replace(".", "/") + ".py" for m in modules}


def test_files_the_docs_name_exist():
    """Every file and module the docs name exists.

    A moved or renamed file leaves no page pointing at its old place (the README once cited a `RULES` table
    that was gone, and a paper path outside the repository)."""
    pages = {"README.md": README} | {f"docs/{p.name}": p.read_text(encoding="utf-8") for p in DOCS.glob("*.md")}
    missing = sorted(f"{page}: {path}" for page, text in pages.items() for path in _repository_paths(text)
                     if not (ROOT / path).exists() and not (ROOT / path.removesuffix(".py") / "__init__.py").exists())
    assert not missing, missing
