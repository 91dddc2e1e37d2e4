"""Private Redis servers and real `roomcast serve` processes for multi-node tests.

Every Redis here is a `redis-server` of this test's own, on a free port, in a temporary
directory, stopped by its pid afterwards: the shared Redis on 6379 is never touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import timeout

REDIS_SERVER = shutil.which("redis-server")
# Skipped on a machine without redis-server, except in CI, where they must run.
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None and not os.environ.get("CI"),
    reason="no redis-server (apt-get install redis-server)",
)
ADMIN = "cluster-test-admin-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + timeout(seconds)
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port}")


class RedisServer:
    """One private redis-server; `restart` keeps its port (and, with AOF, its data)."""

    def __init__(self, directory: Path, *, aof: bool = False, cluster: bool = False) -> None:
        assert REDIS_SERVER is not None, "redis-server is not installed"
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.aof = aof
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            REDIS_SERVER or "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "always",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, 10)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class NodeProcess:
    """`python -m roomcast serve` on a free port, sharing rooms through `broker`."""

    def __init__(self, broker: str, prefix: str, *extra: str, port: int = 0) -> None:
        self.port = port or free_port()
        self.broker = broker
        self.args = [
            sys.executable, "-m", "roomcast", "serve",
            "--port", str(self.port),
            "--broker", broker,
            "--redis-prefix", prefix,
            "--admin-token", ADMIN,
            "--node-heartbeat", "0.5",
            "--drain-time", "0",
            "--log-level", "warning",
            "--max-message-rate", "1000",
            "--message-burst", "1000",
            *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready: bool = True) -> NodeProcess:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy()
        )
        _wait_port(self.port, 20)
        if ready:
            self.wait_ready()
        return self

    def status(self, path: str = "/readyz") -> int:
        try:
            with urllib.request.urlopen(self.http + path, timeout=2) as response:
                code: int = response.status
                return code
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def wait_ready(self, seconds: float = 15) -> None:
        deadline = time.monotonic() + timeout(seconds)
        while self.status() != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node on {self.port} not ready")
            time.sleep(0.05)

    def get(self, path: str) -> Any:
        import json

        request = urllib.request.Request(
            self.http + path, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout(15))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None


def prefix() -> str:
    """A key prefix of its own for each test, so tests sharing one Redis never meet."""
    return f"t{secrets.token_hex(4)}:"
