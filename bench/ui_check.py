"""Open the real MLflow UI in headless Chromium after an offline `main` and check what a researcher sees.

    python bench/ui_check.py --store DIR      # DIR: where `main` ran (its mlflow.db and mlruns/)
    python bench/ui_check.py                  # runs `main --preset offline` in a temp folder first (minutes)
    python bench/ui_check.py --dry            # the page checks on a saved page (bench/fixtures/), seconds

Starts `mlflow ui` on a free loopback port over that store, renders pages with `chromium --headless
--dump-dom` (Debian: `apt-get install chromium`; the check is skipped, exit 0 with a note, without it) and
asserts on:
- the main run's page: its description shows Table 1 and links the report run and report.md;
- the compare page of the student evaluations: the params `teacher`, `student`, `seed`, `role` and readable
  model names are there to put on an axis;
- the registered model version: its accuracy tag and description.
Exit status 1 with the failed checks listed; the rendered DOMs are kept in bench/out/ui_check/.
`--dry` renders the saved page bench/fixtures/ui_check_main_run.html through the same chromium call (or reads
it, with the reason said, where chromium is missing) and runs the same checks on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import OUT_DIR, ROOT, log

FIXTURE = ROOT / "bench" / "fixtures" / "ui_check_main_run.html"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str | None:
    return next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


def render(browser: str, url: str, budget_ms: int = 25000) -> str:
    """The DOM after the single-page app has fetched and drawn (virtual time lets it settle)."""
    proc = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--virtual-time-budget={budget_ms}", "--window-size=1600,2000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    return proc.stdout


def page_checks(doms: dict[str, str], expected: list[tuple[str, str, str]]) -> list[str]:
    """Each (page, text, why) whose text is not in the page's DOM, as 'page: why'; every check logged."""
    failures = []
    for page, text, why in expected:
        ok = text in doms.get(page, "")
        log(f"{'ok  ' if ok else 'FAIL'} {page}: {why} ({text!r})")
        if not ok:
            failures.append(f"{page}: {why}")
    return failures


def dry_run(browser: str | None) -> int:
    """The checks of the main run's page on a saved page; one check must fail, or a FAIL would go unseen."""
    if browser:
        dom = render(browser, FIXTURE.as_uri(), budget_ms=1000)
    else:
        log("no chromium on this machine (apt-get install chromium): the saved page is read, not rendered")
        dom = FIXTURE.read_text(encoding="utf-8")
    run_id = "0123456789abcdef0123456789abcdef"
    failures = page_checks({"main_run": dom}, [
        ("main_run", "<h3>Table 1", "Table 1 rendered in the main run's description"),
        ("main_run", "/artifactPath/report.md\"", "a link to report.md that opens it in the UI"),
        ("main_run", run_id, "a link to the report run"),
        ("main_run", "no such text", "a check that must fail")])
    if failures != ["main_run: a check that must fail"]:
        log(f"dry run: the page checks went wrong: {failures}")
        return 1
    log("dry run: the page checks pass on the saved page and catch a missing text")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", help="folder where an offline main ran (mlflow.db, mlruns/)")
    ap.add_argument("--dry", action="store_true", help="the page checks on a saved page, seconds (CI runs it)")
    args = ap.parse_args(argv)
    browser = _chromium()
    if args.dry:
        return dry_run(browser)
    if browser is None:
        log("no chromium on this machine (apt-get install chromium): check skipped")
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

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name("distill-offline")
    main_run = client.search_runs([exp.experiment_id], "tags.`distill.phase` = 'main'",
                                  order_by=["attributes.start_time DESC"])[0]
    students = client.search_runs([exp.experiment_id], "params.role = 'student' and attributes.status = 'FINISHED'")
    out = OUT_DIR / "ui_check"
    out.mkdir(parents=True, exist_ok=True)
    port = _port()
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
        pages = {
            "main_run": f"{base}/#/experiments/{exp.experiment_id}/runs/{main_run.info.run_id}",
            "compare": f"{base}/#/compare-runs?runs={json.dumps([r.info.run_id for r in students])}"
                       f"&experiments={json.dumps([exp.experiment_id])}",
        }
        versions = [v for m in client.search_registered_models() for v in client.search_model_versions(f"name = '{m.name}'")]
        evaluated = [v for v in versions if "accuracy" in v.tags]
        if evaluated:
            v = evaluated[0]
            pages["version"] = f"{base}/#/models/{v.name}/versions/{v.version}"
        doms = {}
        for name, url in pages.items():
            t0 = time.perf_counter()
            doms[name] = render(browser, url)
            (out / f"{name}.html").write_text(doms[name], encoding="utf-8")
            log(f"{name}: {len(doms[name])} characters of DOM in {time.perf_counter() - t0:.1f}s ({url})")

        expected = [
            ("main_run", "<h3>Table 1", "Table 1 rendered in the main run's description"),
            ("main_run", "/artifactPath/report.md\"", "a link to report.md that opens it in the UI"),
            ("main_run", main_run.data.tags["distill.report_run_id"], "a link to the report run"),
            *(("compare", p, f"param {p} in the compare view") for p in ("teacher", "student", "seed", "role")),
            *(("compare", r.data.params["model"], "a readable model name in the compare view") for r in students[:2])]
        if evaluated:
            expected += [("version", v.tags["accuracy"], "the version's accuracy tag"),
                         ("version", f"Accuracy {v.tags['accuracy']}%", "the version's description with its accuracy")]
        failures = page_checks(doms, expected)
        if not evaluated:
            failures.append("version: no registered version carries an accuracy tag")
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
