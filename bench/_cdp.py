"""Headless Chromium driven over the DevTools protocol (aiohttp's websocket client), for bench/ui_check.py.

`--dump-dom` sees only the top document; the MLflow UI shows an HTML artifact in a sandboxed blob: iframe,
so drawing a figure is only visible from inside that frame. This client attaches to every frame (an
out-of-process iframe too), evaluates JavaScript in each, records every request the page makes, and takes
screenshots. Non-loopback host names do not resolve (`--host-resolver-rules`): the pages run offline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outside_requests(urls: list[str]) -> list[str]:
    """The requested URLs that would leave this machine (http(s)/ws(s) to a non-loopback host)."""
    out = []
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOOPBACK:
            out.append(u)
    return out


class Browser:
    """One headless Chromium page; `async with Browser(exe) as b: await b.open(url, until=js)`."""

    def __init__(self, exe: str, width: int = 1440, height: int = 1000):
        self.exe, self.size = exe, (width, height)
        self.requests: list[str] = []
        self.contexts: dict[tuple[str | None, int], str] = {}  # (session, context id) -> frame id
        self._pending: dict[int, asyncio.Future] = {}
        self._n = 0

    async def __aenter__(self):
        import aiohttp

        self._profile = tempfile.mkdtemp(prefix="ui-check-chromium-")
        port = free_port()
        self._proc = subprocess.Popen(
            [self.exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
             f"--remote-debugging-port={port}", f"--user-data-dir={self._profile}",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._http = aiohttp.ClientSession()
        targets = None
        for _ in range(150):
            try:
                async with self._http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = [t for t in await r.json() if t["type"] == "page"]
                if targets:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        if not targets:
            raise RuntimeError("chromium's DevTools endpoint did not come up")
        self._ws = await self._http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())
        await self._setup(None)
        await self.send("Emulation.setDeviceMetricsOverride",
                        {"width": self.size[0], "height": self.size[1], "deviceScaleFactor": 1, "mobile": False})
        return self

    async def __aexit__(self, *exc):
        self._reader.cancel()
        await self._ws.close()
        await self._http.close()
        self._proc.terminate()
        self._proc.wait(30)
        shutil.rmtree(self._profile, ignore_errors=True)

    async def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._n += 1
        msg = {"id": self._n, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._n] = fut
        await self._ws.send_str(json.dumps(msg))
        reply = await asyncio.wait_for(fut, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    async def _setup(self, session: str | None) -> None:
        """Requests, JavaScript contexts and child frames of this target (the page or an iframe)."""
        for method in ("Network.enable", "Runtime.enable", "Page.enable"):
            await self.send(method, session=session)
        await self.send("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True},
                        session=session)
        if session:
            await self.send("Runtime.runIfWaitingForDebugger", session=session)

    async def _read(self) -> None:
        async for msg in self._ws:
            m = json.loads(msg.data)
            if "id" in m:
                fut = self._pending.pop(m["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(m)
                continue
            method, p, sid = m.get("method"), m.get("params", {}), m.get("sessionId")
            if method == "Network.requestWillBeSent":
                self.requests.append(p["request"]["url"])
            elif method == "Target.attachedToTarget":
                asyncio.ensure_future(self._setup(p["sessionId"]))
            elif method == "Runtime.executionContextCreated":
                self.contexts[(sid, p["context"]["id"])] = p["context"].get("auxData", {}).get("frameId", "")
            elif method == "Runtime.executionContextDestroyed":
                self.contexts.pop((sid, p["executionContextId"]), None)
            elif method == "Runtime.executionContextsCleared":
                for key in [k for k in self.contexts if k[0] == sid]:
                    self.contexts.pop(key, None)

    async def evaluate(self, expression: str):
        """The value of `expression` in the top document (a promise's once it settles)."""
        r = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        return r.get("result", {}).get("value")

    async def evaluate_everywhere(self, expression: str) -> list:
        """Its value in every live JavaScript context: the page, its iframes (blob: artifacts included)."""
        values = []
        for (sid, ctx) in list(self.contexts):
            try:
                r = await self.send("Runtime.evaluate", {"expression": expression, "contextId": ctx,
                                                         "returnByValue": True}, session=sid)
                values.append(r.get("result", {}).get("value"))
            except (RuntimeError, asyncio.TimeoutError):
                pass
        return values

    async def open(self, url: str, until: str, anywhere: bool = False, timeout: float = 60.0) -> bool:
        """Load `url` and wait until the JavaScript `until` is true (in any frame with `anywhere`)."""
        await self.send("Page.navigate", {"url": "about:blank"})
        await asyncio.sleep(0.3)
        await self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            try:
                ok = any(await self.evaluate_everywhere(until)) if anywhere else bool(await self.evaluate(until))
            except RuntimeError:
                ok = False
            if ok:
                await asyncio.sleep(1.5)  # the rest of the page (charts, fonts) settles
                return True
        return False

    async def screenshot(self, path) -> None:
        r = await self.send("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))
