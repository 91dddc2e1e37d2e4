"""The seed's comparison, measured: one price feed served by HTTP polling versus
WebSocket push, to 100 watchers, at 1 and 10 updates per second.

    python examples/poll_vs_push.py            # about a minute; loopback only

A roomcast server runs in a child process. A ticker publishes updates through the HTTP
API, each stamped with its send time. 100 push watchers hold WebSockets; 100 pollers
ask GET /api/rooms/prices/messages?since=N once per update period (the most frequent
polling that is not wasteful, and still a half-period late on average). Every watcher's
bytes pass through a counting TCP relay (it counts bytes, it parses nothing), so the
figures include HTTP headers, WebSocket framing and handshakes. Reported per update and
watcher: bytes on the wire (both directions) and delay from publish to arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

TOKEN = "poll-vs-push-token"
ROOT = Path(__file__).resolve().parent.parent


class Relay:
    """A TCP relay that counts the bytes it carries."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.bytes = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    self.bytes += len(data)
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:  # the run is over
            writer.close()


def stamp(text: str) -> int:
    return int(text.rsplit("@", 1)[1])


async def push_watcher(port: int, delays: list[float], stop: asyncio.Event) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws,
    ):
        await ws.send_json(
            {
                "type": "JOIN_ROOM",
                "payload": {"name": "w", "userId": os.urandom(6).hex(), "roomId": "prices"},
            }
        )
        while not stop.is_set():
            try:
                message = await asyncio.wait_for(ws.receive(), 0.5)
            except TimeoutError:
                continue
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            event = json.loads(message.data)
            if event["type"] == "ADD_CHAT":
                delays.append((time.time_ns() - stamp(event["payload"]["message"])) / 1e6)


async def poller(port: int, period: float, delays: list[float], stop: asyncio.Event) -> None:
    since = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        await asyncio.sleep(period * os.urandom(1)[0] / 255)  # spread the pollers out
        while not stop.is_set():
            async with session.get(
                f"http://127.0.0.1:{port}/api/rooms/prices/messages?since={since}"
            ) as r:
                page = await r.json()
            now = time.time_ns()
            for m in page["messages"]:
                delays.append((now - stamp(m["message"])) / 1e6)
            since = page["nextSince"]
            await asyncio.sleep(period)


async def ticker(server: int, rate: float, duration: float) -> int:
    sent = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        started = time.monotonic()
        while time.monotonic() - started < duration:
            body = {"name": "ticker", "message": f"ACME {100 + sent % 7}.25 @{time.time_ns()}"}
            async with session.post(
                f"http://127.0.0.1:{server}/api/rooms/prices/messages", json=body
            ) as r:
                r.raise_for_status()
            sent += 1
            await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
    return sent


async def scenario(
    server: int, mode: str, rate: float, watchers: int, duration: float
) -> dict[str, float]:
    relay = Relay(server)
    port = await relay.start()
    delays: list[float] = []
    stop = asyncio.Event()
    if mode == "push":
        tasks = [asyncio.ensure_future(push_watcher(port, delays, stop)) for _ in range(watchers)]
    else:
        tasks = [
            asyncio.ensure_future(poller(port, 1 / rate, delays, stop)) for _ in range(watchers)
        ]
    await asyncio.sleep(1.0)  # connect / first polls
    relay.bytes = 0
    delays.clear()
    updates = await ticker(server, rate, duration)
    await asyncio.sleep(1.5 / rate + 0.5)  # let the last update reach everyone
    total = relay.bytes
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert relay.server is not None
    relay.server.close()
    delays.sort()
    return {
        "updates": updates,
        "watchers": watchers,
        "received": len(delays),
        "bytes_per_update_per_watcher": total / (updates * watchers),
        "delay_ms_mean": statistics.fmean(delays),
        "delay_ms_p99": delays[int(0.99 * (len(delays) - 1))],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(port: int, duration: float, watchers: int) -> list[dict[str, float | str]]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        room = {"roomId": "prices", "name": "Prices"}
        async with session.post(f"http://127.0.0.1:{port}/api/rooms", json=room) as r:
            r.raise_for_status()
    rows: list[dict[str, float | str]] = []
    for rate in (1.0, 10.0):
        for mode in ("poll", "push"):
            result = await scenario(port, mode, rate, watchers, duration)
            rows.append({"mode": mode, "rate": rate, **result})
            print(
                f"{mode:4}  {rate:4.0f}/s  {result['bytes_per_update_per_watcher']:6.0f} B"
                f"  delay mean {result['delay_ms_mean']:6.1f} ms"
                f"  p99 {result['delay_ms_p99']:6.1f} ms"
                f"  ({result['received']:.0f} of {result['updates'] * watchers:.0f})",
                flush=True,
            )
    return rows


def main(duration: float, watchers: int, out: Path | None) -> None:
    port = free_port()
    env = {**os.environ, "ROOMCAST_ADMIN_TOKEN": TOKEN, "ROOMCAST_MAX_CONNECTIONS_PER_IP": "10000"}
    server = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", str(port), "--store", "memory://"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()
        rows = asyncio.run(measure(port, duration, watchers))
    finally:
        server.send_signal(2)
        server.wait(15)
    if out is not None:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": commit,
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "duration_s": duration,
            "rows": rows,
        }
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    main(args.duration, args.watchers, args.out)
