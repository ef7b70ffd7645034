"""
A real redis-server for tests: started on 127.0.0.1 at a free port, persistence off, in a temp dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest

REDIS_MISSING = (
    "redis-server is not installed: the Redis tests need the real server "
    "(apt-get install -y redis-server; .ci/run installs it)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; `url` points at it. `stop()`, `pause()` and `resume()` act on it."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(REDIS_MISSING)
        self._dir = tempfile.TemporaryDirectory(prefix="airudder-redis-")
        for _ in range(5):  # another process may take the port between the probe and the bind
            self.port = _free_port()
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self._dir.name,
                    "--logfile",
                    "",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "yes",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert self.proc.stdout is not None
            for line in self.proc.stdout:  # blocks on the server's own log, not on a timer
                if "Ready to accept connections" in line:
                    self.url = f"redis://127.0.0.1:{self.port}/0"
                    return
            self.proc.wait()
        pytest.fail("redis-server did not start")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing is answered."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again."""
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server and wait for it. Idempotent."""
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._dir.cleanup()
