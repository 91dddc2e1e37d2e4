"""What the benchmarks read about the servers they load, and the machine's limits.

Server CPU time and memory come from /proc (so a benchmark runs on the server's machine,
against a loopback URL); how long a roomcast server's frames waited to be written comes
from its /metrics (`roomcast_send_wait_seconds`).
"""

from __future__ import annotations

import math
import os
import resource
import socket
import time
import urllib.request
from urllib.parse import urlsplit

GEN_CPU_LIMIT = 85.0  # % of one core: a generator above it measures itself, not the server
CLK_TCK = os.sysconf("SC_CLK_TCK")


def loopback_port(url: str) -> int:
    """The port of a ws:// URL on this machine; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"benchmarks run against this machine only (ws://127.0.0.1:PORT/): {url}")
    return parts.port or 80


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listener_pids(port: int) -> list[int]:
    """Processes with a socket listening on `port` (read from /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    pids.append(int(pid))
                    break
        except OSError:
            continue
    return sorted(pids)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def send_wait_buckets(urls: list[str]) -> dict[float, float] | None:
    """The servers' `roomcast_send_wait_seconds` histogram, summed: {bucket bound:
    cumulative count}; None when a server has no such metric (a bare server)."""
    from prometheus_client.parser import text_string_to_metric_families

    total: dict[float, float] = {}
    for url in urls:
        parts = urlsplit(url)
        try:
            with urllib.request.urlopen(
                f"http://{parts.hostname}:{parts.port}/metrics", timeout=5
            ) as response:
                text = response.read().decode()
        except (OSError, ValueError):
            return None
        found = False
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "roomcast_send_wait_seconds_bucket":
                    bound = float(sample.labels["le"])
                    total[bound] = total.get(bound, 0.0) + sample.value
                    found = True
        if not found:
            return None
    return total


def send_wait_ms(
    before: dict[float, float] | None, after: dict[float, float] | None
) -> dict[str, float | None] | None:
    """p50 and p99 of the write passes between two scrapes, as the upper bound (ms) of
    the histogram bucket they fall in, None past the last finite bound; and the number
    of passes. None when either scrape found no histogram."""
    if before is None or after is None:
        return None
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    passes = counts[-1] if counts else 0.0
    out: dict[str, float | None] = {"passes": passes}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        bound = next((b for b, c in zip(bounds, counts, strict=True) if c >= q * passes), None)
        out[name] = None if bound is None or not passes or bound == math.inf else bound * 1000
    return out


def wait_text(wait: dict[str, float | None] | None) -> str:
    """A send-wait p99 for a table: "≤ 10 ms", "> 1000 ms", or "" without one."""
    if not wait or not wait["passes"]:
        return ""
    p99 = wait["p99"]
    return f"≤ {p99:g} ms" if p99 is not None else "> 1000 ms"


class Meter:
    """Server and generator CPU over a window, and, when `urls` are given, how long the
    servers' frames waited to be written (their roomcast_send_wait_seconds)."""

    def __init__(self, pids: list[int], urls: list[str] | None = None) -> None:
        self.pids = pids
        self.urls = urls or []
        self.send_wait: dict[str, float | None] | None = None

    def __enter__(self) -> Meter:
        self.waits0 = send_wait_buckets(self.urls) if self.urls else None
        self.t0 = time.perf_counter()
        self.server0 = sum(cpu_ticks(p) for p in self.pids)
        self.gen0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.server_s = (sum(cpu_ticks(p) for p in self.pids) - self.server0) / CLK_TCK
        self.gen_pct = 100.0 * (time.process_time() - self.gen0) / max(self.wall, 1e-9)
        if self.urls:
            self.send_wait = send_wait_ms(self.waits0, send_wait_buckets(self.urls))


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        soft = min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft
