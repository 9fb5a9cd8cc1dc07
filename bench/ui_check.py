"""Open the real MLflow UI in headless Chromium after an offline `main` and check what a researcher sees.

    python bench/ui_check.py --store DIR      # DIR: where `main` ran (its mlflow.db and mlruns/)
    python bench/ui_check.py                  # runs `main --preset offline` in a temp folder first (minutes)

Starts `mlflow ui` on a free loopback port over that store, renders pages with `chromium --headless
--dump-dom` (Debian: `apt-get install chromium`; the check is skipped, exit 0 with a note, without it) and
asserts on:
- the main run's page: its description shows Table 1 and links the report run and report.md;
- the compare page of the student evaluations: the params `teacher`, `student`, `seed`, `role` and readable
  model names are there to put on an axis;
- the registered model version: its accuracy tag and description.
Exit status 1 with the failed checks listed; the rendered DOMs are kept in bench/out/ui_check/.
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", help="folder where an offline main ran (mlflow.db, mlruns/)")
    args = ap.parse_args()
    browser = _chromium()
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

        def check(page: str, text: str, why: str) -> None:
            ok = text in doms.get(page, "")
            log(f"{'ok  ' if ok else 'FAIL'} {page}: {why} ({text!r})")
            if not ok:
                failures.append(f"{page}: {why}")

        check("main_run", "<h3>Table 1", "Table 1 rendered in the main run's description")
        check("main_run", "/artifactPath/report.md\"", "a link to report.md that opens it in the UI")
        check("main_run", main_run.data.tags["distill.report_run_id"], "a link to the report run")
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
