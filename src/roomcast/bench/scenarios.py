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
import time
from collections.abc import Callable
from typing import Any

import msgspec

from roomcast.bench.clients import load_picows
from roomcast.bench.measure import GEN_CPU_LIMIT, Meter, raise_fd_limit, rss_kib


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
    picows = load_picows()
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
    picows = load_picows()
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
    picows = load_picows()
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
