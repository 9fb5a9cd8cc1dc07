"""The tracking store the Ray tasks of `main` write to: one many processes may write to at once.

A local SQLite store is not made for concurrent writers, so `main` serves it with an `mlflow server` on
127.0.0.1 for the tasks of a local Ray (every task on this machine) and stops it afterwards. Its artifact
root stays the store's own `./mlruns` (file:, written by the tasks directly), so that runs made this way
read back without a server, as the sequential executor's do. Tasks on other machines can reach neither
that server nor that folder: a Ray cluster needs a tracking server every node reaches, with a proxied
artifact store (`mlflow server --artifacts-destination ...`), through which every step then writes and
reads its artifacts (`mlflow-artifacts:` URIs). Every store URI in a message goes through redact_uri: a
password in it is shown as `***`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from distill import DistillError
from distill.tracking.redact import redact_uri

console = logging.getLogger(__name__)


class LoopbackServer:
    """`mlflow server` on 127.0.0.1 over a local store, so that concurrent tasks write through one process."""

    def __init__(self, store_uri: str):
        self.store_uri = store_uri
        self.proc = None
        self.uri = ""

    def __enter__(self) -> LoopbackServer:
        """Starts the server and returns at once (Ray starts meanwhile); `wait()` gives its URI once it answers."""
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        from distill.tracking.sqlite_store import artifact_root

        # where the embedded store puts them (beside a SQLite file): same layout, same paths
        local = self.store_uri.startswith("sqlite:///")
        root = (Path(artifact_root(self.store_uri)) if local else Path("mlruns").resolve()).as_uri()
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", self.store_uri, "--default-artifact-root", root,
               "--no-serve-artifacts", "--workers", "1"]
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"distill-mlflow-server-{port}.log"
        # its own process group: the server starts uvicorn (and, unless told not to, MLflow's GenAI job runner and
        # its queue consumers: ~10 processes and ~30 s of CPU at start, for jobs no phase submits), stopped together
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        self.uri = f"http://127.0.0.1:{port}"
        return self

    def wait(self) -> str:
        import requests

        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-300:].strip().replace(self.store_uri, redact_uri(self.store_uri))
                raise DistillError(f"could not start an mlflow server over {redact_uri(self.store_uri)} for "
                                   f"executor=ray: {tail}")
            try:
                if requests.get(self.uri + "/health", timeout=1).ok:
                    console.info(f"main: serving {redact_uri(self.store_uri)} at {self.uri} for the Ray tasks")
                    return self.uri
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise DistillError(f"the mlflow server over {redact_uri(self.store_uri)} did not answer within 180 s "
                           f"(log: {self.log})")

    def __exit__(self, *exc) -> None:
        if self.proc:
            stop_process_group(self.proc)
            if self.proc.returncode in (0, -15):
                self.log.unlink(missing_ok=True)


def stop_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to the group a `start_new_session=True` child leads, SIGKILL to whatever outlives the grace."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + grace
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                break
            proc.poll()
            time.sleep(0.2)
        else:
            continue
        break
    proc.wait()


class Served:
    """A tracking URI that many processes may write to as it is."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def wait(self) -> str:
        return self.uri


def tracking_for_tasks(uri: str, address: str):
    """A context manager whose `wait()` gives the tracking URI the tasks use, for the current one."""
    if uri.startswith(("http://", "https://")):
        return Served(uri)
    if uri.startswith("databricks") or "://" in uri and not uri.startswith(("sqlite:", "file:")):
        return Served(uri)  # a database URL (postgresql://, mysql://): made for many writers
    if address:
        raise DistillError(f"executor=ray on the Ray cluster {redact_uri(address)} needs a tracking server every "
                           f"node reaches (MLFLOW_TRACKING_URI=http://...); the local store {redact_uri(uri)} "
                           "is served only on this machine")
    return LoopbackServer(uri)
