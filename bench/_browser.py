"""Headless Chromium through Playwright, for bench/ui_check.py and tests/test_ui.py.

Playwright drives the system's Chromium (Debian: `apt-get install chromium`; no browser download), in a fresh
profile each time (the MLflow UI keeps its mode per browser: a fresh one shows what a new colleague sees), with
every non-loopback host name unresolvable (the pages run offline) and every request of the page and its frames
(the artifact viewer's sandboxed iframe too) recorded.
"""

from __future__ import annotations

import shutil
import socket
from contextlib import contextmanager
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"


def chromium() -> str | None:
    """The system's Chromium, or None (the UI checks then skip and say so)."""
    return next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


def missing() -> str | None:
    """Why no browser check can run here, or None."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None if chromium() else "no chromium on this machine (apt-get install chromium)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outside_requests(urls: list[str]) -> list[str]:
    """The requested URLs that would leave this machine (http(s)/ws(s) to a non-loopback host)."""
    return [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")
            and urlsplit(u).hostname not in LOOPBACK]


@contextmanager
def browser_page(width: int = 1440, height: int = 1000):
    """(page, requests): one Playwright page in a fresh profile of the system's Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", OFFLINE])
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            requests: list[str] = []
            context.on("request", lambda r: requests.append(r.url))
            yield context.new_page(), requests
        finally:
            browser.close()
