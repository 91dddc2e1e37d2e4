"""The scenarios of `roomcast bench` other than fan-out (which is `fanout.py`).

- `handshakes`: connections opened and joined, and the server CPU each one costs;
- `idle`: many joined connections doing nothing, and the server memory each one holds;
- `rooms`: many small rooms whose members all send as fast as their own messages come
  back (each message decoded, validated, stored and fanned out).

Each returns a dict of figures, including the generator's own CPU share (`gen_cpu_pct`)
and `invalid` reasons: a generator above 85 % of a core measures itself, not the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import msgspec

GEN_CPU_LIMIT = 85.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _picows() -> Any:
    try:
        import picows
    except ImportError:  # pragma: no cover - depends on the installation
        sys.exit("roomcast bench needs picows: pip install 'roomcast[bench]'")
    return picows


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


@contextlib.contextmanager
def bare_server(lib: str, cpus: set[int]) -> Iterator[tuple[int, int]]:
    """A bare broadcast server (`roomcast.bench.servers`) on `cpus`, as (port, pid),
    stopped by its pid afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "roomcast.bench.servers", "--lib", lib, "--uvloop"]
    server = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        os.sched_setaffinity(server.pid, cpus)
        assert server.stdout is not None
        if not server.stdout.readline().startswith("READY"):
            raise RuntimeError(f"the bare {lib} server did not start")
        yield port, server.pid
    finally:
        server.terminate()
        server.wait(10)


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


def _join(user: str, room: str) -> bytes:
    payload = {"name": user, "userId": user, "roomId": room}
    return msgspec.json.encode({"type": "JOIN_ROOM", "payload": payload})


def _joiner_class(picows: Any) -> Any:
    class Joiner(picows.WSListener):  # type: ignore[misc]
        """Resolves `joined` on ROOM_HISTORY; counts ERROR frames."""

        def __init__(self) -> None:
            self.joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.errors = 0

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            head = frame.get_payload_as_bytes()[:30]
            if b'"ROOM_HISTORY"' in head and not self.joined.done():
                self.joined.set_result(None)
            elif b'"ERROR"' in head:
                self.errors += 1

    return Joiner


async def _open(
    picows: Any, url: str, count: int, rooms: int, batch: int, progress: Callable[[str], None]
) -> tuple[list[Any], int]:
    """Open and join `count` connections, `batch` at a time; (transports, failures)."""
    joiner = _joiner_class(picows)
    transports: list[Any] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        try:
            transport, listener = await picows.ws_connect(joiner, url)
            transport.send(picows.WSMsgType.TEXT, _join(f"b{i}", f"bench-{i % rooms}"))
            await asyncio.wait_for(listener.joined, 30)
            transports.append(transport)
        except (OSError, TimeoutError, picows.WSError):
            failed += 1

    for start in range(0, count, batch):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + batch))))
        progress(f"joined {len(transports):,}/{count:,}")
    return transports, failed


async def _close(transports: list[Any]) -> None:
    for transport in transports:
        transport.disconnect()
    await asyncio.sleep(0.2)


async def handshakes(
    url: str, pids: list[int], *, count: int, batch: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Open and join `count` connections, `batch` at a time: per-connection server CPU."""
    picows = _picows()
    raise_fd_limit(count + 100)
    with Meter(pids) as m:
        transports, failed = await _open(picows, url, count, max(1, count // 10), batch, progress)
    await _close(transports)
    opened = len(transports)
    invalid = []
    if failed:
        invalid.append(f"{failed} connections failed")
    if m.gen_pct > GEN_CPU_LIMIT:
        invalid.append(f"generator used {m.gen_pct:.0f}% of a core")
    return {
        "scenario": "handshakes",
        "connections": opened,
        "per_s": opened / m.wall,
        "server_cpu_us_per_connection": m.server_s * 1e6 / max(opened, 1),
        "server_cpu_pct": 100 * m.server_s / m.wall,
        "gen_cpu_pct": m.gen_pct,
        "invalid": invalid,
    }


async def idle(
    url: str,
    pids: list[int],
    *,
    count: int,
    per_room: int,
    batch: int,
    settle: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """`count` joined, silent connections: server memory (RSS) per connection."""
    picows = _picows()
    raise_fd_limit(count + 100)
    before = sum(rss_kib(p) for p in pids)
    rooms = max(1, count // per_room)
    transports, failed = await _open(picows, url, count, rooms, batch, progress)
    await asyncio.sleep(settle)
    after = sum(rss_kib(p) for p in pids)
    await _close(transports)
    opened = len(transports)
    return {
        "scenario": "idle",
        "connections": opened,
        "rooms": rooms,
        "server_rss_kib_before": before,
        "server_rss_kib_after": after,
        "kib_per_connection": (after - before) / max(opened, 1),
        "invalid": [f"{failed} connections failed"] if failed else [],
    }


async def rooms(
    url: str,
    pids: list[int],
    *,
    room_count: int,
    members: int,
    warmup: float,
    duration: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """`room_count` rooms of `members`; every member sends its next message as soon as
    its previous one comes back to it. Deliveries are ADD_CHAT frames received."""
    picows = _picows()
    raise_fd_limit(room_count * members + 100)
    state = {"counting": False, "deliveries": 0, "errors": 0}
    latencies: list[int] = []
    text = picows.WSMsgType.TEXT

    class Member(picows.WSListener):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self.transport: Any = None
            self.me = b""
            self.user = ""
            self.room = ""
            self.joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.sending = False
            self.seq = 0

        def send_next(self) -> None:
            self.seq += 1
            payload = {
                "userId": self.user,
                "roomId": self.room,
                "message": f"{time.time_ns()} {self.seq} and some words to carry",
            }
            self.transport.send(
                text, msgspec.json.encode({"type": "SEND_MESSAGE", "payload": payload})
            )

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            data = frame.get_payload_as_bytes()
            head = data[:30]
            if b'"ADD_CHAT"' in head:
                if state["counting"]:
                    state["deliveries"] += 1
                if self.me in data and self.sending:
                    start = data.index(b'"message":"') + 11
                    sent = int(data[start : data.index(b" ", start)])
                    if state["counting"]:
                        latencies.append(time.time_ns() - sent)
                    self.send_next()
            elif b'"ROOM_HISTORY"' in head and not self.joined.done():
                self.joined.set_result(None)
            elif b'"ERROR"' in head:
                state["errors"] += 1
                if self.sending:
                    self.send_next()

    people: list[Member] = []
    for r in range(room_count):
        for k in range(members):
            transport, listener = await picows.ws_connect(Member, url)
            member: Member = listener
            member.transport = transport
            member.user = f"r{r}m{k}"
            member.me = f'"name":"{member.user}"'.encode()  # bare servers send no userId
            member.room = f"rooms-{r}"
            transport.send(text, _join(member.user, member.room))
            people.append(member)
        progress(f"connected {len(people):,}/{room_count * members:,}")
    await asyncio.gather(*(asyncio.wait_for(m.joined, 30) for m in people))
    for member in people:
        member.sending = True
        member.send_next()
    progress(f"warming up {warmup:g}s")
    await asyncio.sleep(warmup)
    state["counting"] = True
    progress(f"measuring {duration:g}s")
    with Meter(pids, [url]) as m:
        await asyncio.sleep(duration)
    state["counting"] = False
    for member in people:
        member.sending = False
    await asyncio.sleep(0.5)
    await _close([p.transport for p in people])
    deliveries = state["deliveries"]
    latencies.sort()
    invalid = []
    if m.gen_pct > GEN_CPU_LIMIT:
        invalid.append(f"generator used {m.gen_pct:.0f}% of a core")
    if state["errors"]:
        invalid.append(
            f"{state['errors']} ERROR frames (rate limits? serve with --max-message-rate 1e9)"
        )

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e6 if latencies else 0

    return {
        "scenario": "rooms",
        "rooms": room_count,
        "members": members,
        "deliveries_per_s": deliveries / m.wall,
        "server_cpu_us_per_delivery": m.server_s * 1e6 / max(deliveries, 1),
        "server_cpu_pct": 100 * m.server_s / m.wall,
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "server_send_wait_ms": m.send_wait,
        "gen_cpu_pct": m.gen_pct,
        "invalid": invalid,
    }
