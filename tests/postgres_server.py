"""A throw-away PostgreSQL on 127.0.0.1 for tests: `initdb` into a temp folder, a free port, trust auth.

Uses the server binaries of the machine (Debian: `apt-get install postgresql`, binaries under
/usr/lib/postgresql/<version>/bin; elsewhere whatever `initdb` is on PATH or in $PG_BIN). PostgreSQL
refuses to run as root, so as root the server runs as the `postgres` user the package creates.
`Unavailable` says why none could start; the fixture turns it into a skip with that reason.

    python tests/postgres_server.py      # start one by hand, print its URL, stop on Ctrl-C
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "distill"  # the database superuser initdb creates


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says what is missing."""


def find_bin() -> Path:
    candidates = [os.environ.get("PG_BIN", "")]
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "postgres").is_file():
            return Path(c)
    raise Unavailable("no PostgreSQL server binaries (initdb, postgres) found: apt-get install postgresql, "
                      "or set PG_BIN to their folder")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """One running server; `url(db)` for SQLAlchemy, MLflow and Optuna; `create_database(name)`."""

    def __init__(self, bin_dir: Path, folder: Path, port: int, proc: subprocess.Popen, run_as: str | None):
        self.bin_dir, self.folder, self.port, self.proc, self.run_as = bin_dir, folder, port, proc, run_as

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname=db, autocommit=True)

    def create_database(self, name: str) -> str:
        conn = self.connect()  # autocommit: CREATE DATABASE runs outside a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def query(self, db: str, sql: str, *args) -> list[tuple]:
        conn = self.connect(db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: end sessions, write a checkpoint
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start(timeout: float = 60) -> Postgres:
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's driver for postgresql:// URLs)
    except ImportError:
        raise Unavailable("the psycopg driver is not installed: pip install -e '.[postgres]'") from None
    bin_dir = find_bin()
    run_as = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no `postgres` user to run the server as") from None
        run_as = "postgres"
    folder = Path(tempfile.mkdtemp(prefix="distill-pg-"))  # not under pytest's 0700 root-owned temp
    if run_as:
        info = pwd.getpwnam(run_as)
        os.chown(folder, info.pw_uid, info.pw_gid)
    data = folder / "data"
    user_kw = {"user": run_as} if run_as else {}
    init = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "--encoding=UTF8",
                           "--locale=C", "--no-sync"], capture_output=True, text=True, **user_kw)
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise Unavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
    port = _free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder),
                             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                             "-c", "full_page_writes=off", "-c", "max_connections=200"],
                            stdout=log, stderr=subprocess.STDOUT, **user_kw)
    pg = Postgres(bin_dir, folder, port, proc, run_as)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            text = (folder / "server.log").read_text()[-1000:]
            shutil.rmtree(folder, ignore_errors=True)
            raise Unavailable(f"postgres exited at start: {text}")
        try:
            pg.connect().close()
            return pg
        except Exception:  # noqa: BLE001 - not accepting connections yet
            time.sleep(0.2)
    pg.stop()
    raise Unavailable(f"postgres did not accept connections within {timeout:.0f} s")


if __name__ == "__main__":
    server = start()
    print(server.url(), flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
