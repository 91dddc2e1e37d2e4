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
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, timeout

REDIS_SERVER = shutil.which("redis-server")
# Skipped on a machine without redis-server, except in CI, where they must run.
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None and not os.environ.get("CI"),
    reason="no redis-server (apt-get install redis-server)",
)
ADMIN = "cluster-test-admin-token-0123456789abcdef"


def _wait_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + timeout(seconds)
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port}")


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Signal a process we started (by its pid), wait for it, kill it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout(15))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class RedisServer:
    """One private redis-server; `restart` keeps its port (and, with AOF, its data)."""

    def __init__(self, directory: Path, *, aof: bool = False, cluster: bool = False) -> None:
        assert REDIS_SERVER is not None, "redis-server is not installed"
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        # A cluster node also listens on port + 10000 (the cluster bus).
        self.port = free_port(below=55000) if cluster else free_port()
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
        try:
            _wait_port(self.port, 10)
        except TimeoutError:
            self.stop(signal.SIGKILL)
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class NodeProcess:
    """`python -m roomcast serve` on a free port, sharing rooms through `broker`."""

    def __init__(self, broker: str, prefix: str, *extra: str, port: int = 0) -> None:
        """With `broker` empty, a node on its own (`extra` then names its store)."""
        self.port = port or free_port()
        self.broker = broker
        shared = ["--broker", broker, "--redis-prefix", prefix] if broker else []
        self.args = [
            sys.executable, "-m", "roomcast", "serve",
            "--port", str(self.port),
            *shared,
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
        # The node's log goes to a file: a pipe nobody reads could fill up and stall it.
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop)
            prefix=f"roomcast-{self.port}-", suffix=".log"
        )
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            _wait_port(self.port, 20)
        except TimeoutError:
            self.stop(signal.SIGKILL)
            raise
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
        stop_process(self.proc, sig)
        self.proc = None
        self.log.close()

    def output(self) -> str:
        """What the node logged so far."""
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()


def prefix() -> str:
    """A key prefix of its own for each test, so tests sharing one Redis never meet."""
    return f"t{secrets.token_hex(4)}:"


class RedisClusterServers:
    """A local Redis Cluster: three primaries, no replicas, every slot covered."""

    def __init__(self, directory: Path) -> None:
        self.servers = [RedisServer(directory / f"n{i}", cluster=True) for i in range(3)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}/0"

    def start(self) -> RedisClusterServers:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for server in self.servers:
            server.start()
        subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in self.servers),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout(30),
        )
        deadline = time.monotonic() + timeout(20)
        for server in self.servers:
            while (
                b"cluster_state:ok"
                not in subprocess.run(
                    ["redis-cli", "-p", str(server.port), "cluster", "info"],
                    capture_output=True,
                    check=False,
                ).stdout
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError("the cluster did not come up")
                time.sleep(0.1)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
