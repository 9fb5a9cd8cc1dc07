"""Open the real MLflow UI in headless Chromium after an offline `main` and check what a researcher sees.

    python bench/ui_check.py --store DIR      # DIR: where `main` ran (its mlflow.db and mlruns/)
    python bench/ui_check.py                  # runs `main --preset offline` in a temp folder first (minutes)
    python bench/ui_check.py --dry            # the page checks on a saved page (bench/fixtures/), seconds

    python bench/ui_check.py --store DIR --screenshots docs/   # also the docs' PNGs

Starts `mlflow ui` on a free loopback port over that store, opens the links the project writes
(distill.tracking.ui_links) in headless Chromium driven by Playwright in a fresh profile (bench/_browser.py;
Debian: `apt-get install chromium`; the check is skipped, exit 0 with a note, without it or without playwright),
with every non-loopback host name unresolvable, and asserts on:
- every page in Model training mode: the sidebar has Model registry, not the GenAI Overview;
- the study's runs table: the student evaluations grouped by teacher;
- the main run's page: its description shows Table 1 and links the report run and report.md;
- the compare page of the student evaluations: the params `teacher`, `student`, `seed`, `role` and readable
  model names are there to put on an axis;
- the registered model version: its accuracy tag and description;
- Fig. 1-3 of the report run and the tokens run's figure, opened in the UI's artifact viewer: plotly drew the
  plot (`svg.main-svg`) inside the viewer's sandboxed iframe, with plotly.js from the run's artifacts;
- no page requested anything from a non-loopback host (no CDN, no font, no telemetry).
Exit status 1 with the failed checks listed; the rendered DOMs, a PNG of each page and every URL
requested (requests.txt) are kept in bench/out/ui_check/.
`--dry` renders the saved page bench/fixtures/ui_check_main_run.html in the same headless Chromium (or reads
it, with the reason said, where chromium is missing) and runs the same page checks on it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from _browser import browser_page, free_port, missing, outside_requests
from _common import OUT_DIR, ROOT, log

from distill.tracking.ui_links import MODE

FIXTURE = ROOT / "bench" / "fixtures" / "ui_check_main_run.html"
REPORT_LINK = f"/artifactPath/report.md?{urlencode(MODE)}\""  # as the DOM writes the description's link to report.md

# What each page shows once the single-page app has fetched and drawn it; a figure is drawn when plotly
# made its SVG inside the artifact's iframe.
READY = {"runs": "document.body && document.body.innerText.includes('Group: 7B')",
         "main_run": "document.body && document.body.innerText.includes('Table 1')",
         "compare": "document.body && document.body.innerText.includes('teacher')",
         "version": "document.body && document.body.innerText.includes('accuracy')"}
PLOT_DRAWN = "!!document.querySelector('.plot-container svg.main-svg')"
# MLflow's sidebar: in Model training mode it offers Runs, Models and Model registry; in GenAI mode an Overview.
SIDEBAR = "(document.querySelector('nav') || document.body).innerText"
# Before a screenshot: the MLflow Assistant's side panel closed (it takes a third of the page), and on the
# compare page the parallel-coordinates plot set to teacher and student (MLflow's default: the first
# three params by name), as a researcher would pick them.
CLOSE_ASSISTANT = """(() => {
  const b = document.querySelector('[data-component-id="mlflow.assistant.chat_panel.close"]');
  if (b) b.click(); return !!b; })()"""
SHOW_DESCRIPTION = """(() => {
  const more = document.querySelector('[data-testid="show-comment-toggle"][aria-label="Expand description"]');
  if (more) more.click();
  const h = [...document.querySelectorAll('h4')]
  .find(e => e.textContent.startsWith('Description') && e.offsetParent);
  if (h) h.scrollIntoView({block: 'start'}); return !!h; })()"""
COMPARE_AXES = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const click = (el, type) => el.dispatchEvent(new MouseEvent(type || 'click', {bubbles: true, cancelable: true}));
  const sel = document.querySelector('.du-bois-light-select');
  if (!sel) return [];
  const names = () => [...sel.querySelectorAll('.du-bois-light-select-selection-item-content')]
    .map(e => e.textContent);
  for (const item of [...sel.querySelectorAll('.du-bois-light-select-selection-item')]) {
    const name = item.querySelector('.du-bois-light-select-selection-item-content').textContent;
    if (name !== 'teacher') {
      click(item.querySelector('.du-bois-light-select-selection-item-remove'));
      await sleep(300);
    }
  }
  for (const want of ['teacher', 'student']) {
    if (names().includes(want)) continue;
    click(sel.querySelector('.du-bois-light-select-selector'), 'mousedown');
    await sleep(800);
    const opt = [...document.querySelectorAll('.du-bois-light-select-item-option')]
      .find(o => (o.getAttribute('title') || o.textContent).trim() === want);
    if (opt) click(opt);
    await sleep(500);
  }
  const input = sel.querySelector('input');
  if (input) {
    input.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', keyCode: 27, bubbles: true}));
    input.blur();
  }
  await sleep(1000);
  return names();
})()"""
SCREENSHOTS = {"runs": "ui-runs.png", "main_run": "ui-main-run.png", "compare": "ui-compare.png",
               "version": "ui-model-version.png", "fig1": "ui-figure.png"}


def small_png(path: Path) -> None:
    """A UI screenshot in 256 colours (a third of the size, no visible loss) when Pillow is at hand."""
    try:
        from PIL import Image
    except ImportError:
        return
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def model_training_sidebar(nav: str) -> bool:
    """The sidebar of MLflow's Model training mode (Model registry; in an experiment also Runs and Models), not
    its GenAI mode (an Overview of traces, no Model registry)."""
    items = set(nav.split("\n"))
    return "Model registry" in items and "Overview" not in items


def _ready(page, until: str, anywhere: bool, timeout: float) -> bool:
    """Whether the JavaScript `until` became true within `timeout` seconds (in any frame with `anywhere`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        frames = page.frames if anywhere else [page.main_frame]
        for frame in frames:
            try:
                if frame.evaluate(until):
                    page.wait_for_timeout(1500)  # the rest of the page (charts, fonts) settles
                    return True
            except Exception:  # noqa: BLE001 - a frame navigating or gone: the next round sees the new one
                pass
    return False


def visit(pages: dict[str, str], out: Path, shots: Path | None):
    """Each page's DOM and sidebar, whether it was drawn, every URL requested; screenshots into `shots`."""
    doms, drawn, sidebars = {}, {}, {}
    with browser_page() as (page, requests):
        for name, url in pages.items():
            t0 = time.perf_counter()
            figure = name not in READY
            page.goto("about:blank")
            page.goto(url)
            ok = _ready(page, PLOT_DRAWN if figure else READY[name], anywhere=figure, timeout=60.0)
            page.evaluate(CLOSE_ASSISTANT)
            if name == "main_run":
                page.evaluate(SHOW_DESCRIPTION)
            if name == "compare":
                drawn["compare_axes"] = page.evaluate(COMPARE_AXES)
                log(f"compare: parallel coordinates over {drawn['compare_axes']}")
            page.wait_for_timeout(1000)
            doms[name] = page.content()
            sidebars[name] = page.evaluate(SIDEBAR)
            drawn[name] = ok
            (out / f"{name}.html").write_text(doms[name], encoding="utf-8")
            page.screenshot(path=out / f"{name}.png")
            if shots is not None and name in SCREENSHOTS:
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=shots / SCREENSHOTS[name])
                small_png(shots / SCREENSHOTS[name])
            log(f"{name}: {'ready' if ok else 'NOT ready'}, {len(doms[name])} characters of DOM in "
                f"{time.perf_counter() - t0:.1f}s ({url})")
        (out / "requests.txt").write_text("\n".join(requests) + "\n", encoding="utf-8")
        return doms, drawn, sidebars, list(requests)


def page_checks(doms: dict[str, str], expected: list[tuple[str, str, str]]) -> list[str]:
    """Each (page, text, why) whose text is not in the page's DOM, as 'page: why'; every check logged."""
    failures = []
    for page, text, why in expected:
        ok = text in doms.get(page, "")
        log(f"{'ok  ' if ok else 'FAIL'} {page}: {why} ({text!r})")
        if not ok:
            failures.append(f"{page}: {why}")
    return failures


def _render_saved(url: str) -> str:
    with browser_page() as (page, _):
        page.goto(url)
        _ready(page, READY["main_run"], anywhere=False, timeout=30.0)
        return page.content()


def dry_run() -> int:
    """The checks of the main run's page on a saved page; one check must fail, or a FAIL would go unseen."""
    why = missing()
    if why is None:
        dom = _render_saved(FIXTURE.as_uri())
    else:
        log(f"{why}: the saved page is read, not rendered")
        dom = FIXTURE.read_text(encoding="utf-8")
    run_id = "0123456789abcdef0123456789abcdef"
    failures = page_checks({"main_run": dom}, [
        ("main_run", "<h3>Table 1", "Table 1 rendered in the main run's description"),
        ("main_run", REPORT_LINK, "a link to report.md that opens it in the UI in Model training mode"),
        ("main_run", run_id, "a link to the report run"),
        ("main_run", "no such text", "a check that must fail")])
    if failures != ["main_run: a check that must fail"]:
        log(f"dry run: the page checks went wrong: {failures}")
        return 1
    log("dry run: the page checks pass on the saved page and catch a missing text")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", help="folder where an offline main ran (mlflow.db, mlruns/)")
    ap.add_argument("--screenshots", help="folder for PNGs of the study's runs table, the main run, the compare view, "
                                          "a model version and Fig. 1 in the artifact viewer (the docs' are in docs/)")
    ap.add_argument("--dry", action="store_true", help="the page checks on a saved page, seconds (CI runs it)")
    args = ap.parse_args()
    if args.dry:
        return dry_run()
    if missing():
        log(f"{missing()}: check skipped")
        return 0
    store = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="ui-check-"))
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    if not args.store:
        log(f"running main --preset offline in {store}")
        subprocess.run([sys.executable, str(ROOT / "entrypoints" / "main.py"), "--preset", "offline"], cwd=store,
                       env=env, check=True)
    import mlflow
    from mlflow.tracking import MlflowClient

    from distill.tracking import ui_links

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name("distill-offline")
    main_run = client.search_runs([exp.experiment_id], "tags.`distill.phase` = 'main'",
                                  order_by=["attributes.start_time DESC"])[0]
    report_run = main_run.data.tags.get("distill.report_run_id", "")
    tokens = client.search_runs([exp.experiment_id],
                                "tags.`distill.phase` = 'tokens' and attributes.status = 'FINISHED'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    tokens_run = tokens[0].info.run_id if tokens else ""
    students = client.search_runs([exp.experiment_id], "params.role = 'student' and attributes.status = 'FINISHED'")
    out = OUT_DIR / "ui_check"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port)], cwd=store, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    failures = []
    try:
        base = f"http://127.0.0.1:{port}"
        import requests

        for _ in range(120):
            try:
                if requests.get(base + "/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        exp_id = exp.experiment_id
        pages = {"runs": ui_links.absolute(base, ui_links.study_runs(exp_id)),
                 "main_run": ui_links.absolute(base, ui_links.run_page(exp_id, main_run.info.run_id)),
                 "compare": ui_links.absolute(base, ui_links.compare_runs(exp_id, [r.info.run_id for r in students]))}
        versions = [v for m in client.search_registered_models()
                    for v in client.search_model_versions(f"name = '{m.name}'")]
        evaluated = [v for v in versions if "accuracy" in v.tags]
        if evaluated:
            v = evaluated[0]
            pages["version"] = ui_links.absolute(base, ui_links.model_version(v.name, v.version))
        figures = {"fig1": (report_run, "figures/fig1_accuracy.html"),
                   "fig2": (report_run, "figures/fig2_errors.html"),
                   "fig3": (report_run, "figures/fig3_tokens.html"),
                   "tokens_fig": (tokens_run, "figures/token_counts.html")}
        for name, (run_id, path) in figures.items():
            if run_id:
                pages[name] = ui_links.absolute(base, ui_links.run_page(exp_id, run_id, path))
        doms, drawn, sidebars, requests = visit(pages, out, Path(args.screenshots) if args.screenshots else None)

        def check(page: str, text: str, why: str) -> None:
            failures.extend(page_checks(doms, [(page, text, why)]))

        for name, nav in sidebars.items():
            ok = model_training_sidebar(nav)
            log(f"{'ok  ' if ok else 'FAIL'} {name}: Model training sidebar ({' | '.join(nav.split(chr(10))[:8])})")
            if not ok:
                failures.append(f"{name}: not in Model training mode (sidebar: {nav.split(chr(10))[:8]})")
        for name in ("runs", "main_run"):
            if not drawn.get(name):
                failures.append(f"{name}: the page did not show what it should ({READY[name]})")

        for name in figures:
            ok = drawn.get(name, False)
            log(f"{'ok  ' if ok else 'FAIL'} {name}: the plot is drawn inside the UI's artifact frame "
                f"({pages.get(name)})")
            if not ok:
                failures.append(f"{name}: no plotly plot (svg.main-svg) drawn in the artifact viewer")
        axes = drawn.get("compare_axes") or []
        ok = sorted(axes) == ["student", "teacher"] and "<text" in doms.get("compare", "")
        log(f"{'ok  ' if ok else 'FAIL'} compare: teacher and student as the parallel-coordinates axes ({axes})")
        if not ok:
            failures.append(f"compare: could not put teacher and student on the plot's axes (got {axes})")
        outside = outside_requests(requests)
        log(f"{'ok  ' if not outside else 'FAIL'} {len(requests)} requests, {len(outside)} to a non-loopback host"
            + (f": {sorted(set(outside))[:5]}" if outside else ""))
        if outside:
            failures.append(f"{len(outside)} request(s) left this machine: {sorted(set(outside))[:5]}")
        check("main_run", "<h3>Table 1", "Table 1 rendered in the main run's description")
        check("main_run", REPORT_LINK, "a link to report.md that opens it in the UI in Model training mode")
        check("main_run", main_run.data.tags["distill.report_run_id"], "a link to the report run")
        for r in students:
            check("runs", r.info.run_name, "each student evaluation in the study's runs table")
        for p in ("teacher", "student", "seed", "role"):
            check("compare", p, f"param {p} in the compare view")
        for r in students[:2]:
            check("compare", r.data.params["model"], "a readable model name in the compare view")
        if not evaluated:
            failures.append("version: no registered version carries an accuracy tag")
        else:
            check("version", v.tags["accuracy"], "the version's accuracy tag")
            check("version", f"Accuracy {v.tags['accuracy']}%", "the version's description with its accuracy")
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
    if failures:
        log(f"{len(failures)} check(s) failed: " + "; ".join(failures))
        return 1
    log("every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
