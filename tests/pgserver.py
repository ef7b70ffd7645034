"""
A throwaway PostgreSQL server for tests and benchmarks: `initdb` + `pg_ctl` in a temporary directory.

It listens on 127.0.0.1 at a free port (unix sockets stay in the directory), with fsync off. PostgreSQL
refuses to run as root, so as root it runs the server as the `postgres` system user (made when missing).
The binaries come from PATH, `pg_config --bindir`, or /usr/lib/postgresql/*/bin; without them
`PostgresServer.start()` raises RuntimeError, so a test module that needs it fails, never skips.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PostgresServer", "find_bindir"]

_USER = "postgres"


def find_bindir() -> Path:
    """Return the directory of `initdb` and `pg_ctl`, or raise RuntimeError saying how to get them."""
    candidates: list[str] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(os.path.dirname(os.path.realpath(found)))
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(done.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if directory and all(os.access(Path(directory, b), os.X_OK) for b in ("initdb", "pg_ctl")):
            return Path(directory)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH, via pg_config or in "
        "/usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql); .ci/run does"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory: `start()`, `url(database)`, `stop()`."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.password = "pw-" + secrets.token_hex(8)
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="airudder-pg-"))
        self.data = self.dir / "data"
        self._as_root = os.geteuid() == 0

    def _run(self, *cmd: str) -> None:
        if self._as_root:
            cmd = ("runuser", "-u", _USER, "--", *cmd)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.dir)
        if done.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{cmd[-3:]} failed ({done.returncode}): {done.stderr[-2000:]}\n{tail}")

    def start(self) -> PostgresServer:
        """Make the cluster and start the server; return self."""
        if self._as_root:
            if subprocess.run(["id", "-u", _USER], capture_output=True, check=False).returncode != 0:
                subprocess.run(["useradd", "--system", "--no-create-home", _USER], check=True)
            shutil.chown(self.dir, _USER)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            shutil.chown(pwfile, _USER)
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", _USER, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self.port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
            str(self.dir / "server.log"), "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """The URL of *database* as the superuser (with *password* instead of the right one, if given)."""
        pw = self.password if password is None else password
        return f"postgresql://{_USER}:{pw}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server at once and remove its directory."""
        try:
            if self.port:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
