"""Does the SQLite store block the event loop? Measured against the memory store.

    python bench/store_latency.py [--messages 5000] [--senders 20]

Starts an in-process server for each store, connects `senders` clients that post
messages as fast as their answers come back (one in flight each), and records:
messages per second, send-to-ADD_CHAT latency (p50/p99/max), and the event loop's
worst lag (a 1 ms ticker measures how late it wakes). If SQLite I/O ran on the loop,
the lag would show every commit; with the worker thread and group commit it should
stay near the memory store's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import websockets

from roomcast.testing import running_server


async def lag_probe(stop: asyncio.Event, worst: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(0.001)
        worst.append(loop.time() - started - 0.001)


async def sender(url: str, n: int, count: int, latencies: list[float]) -> None:
    async with websockets.connect(url, max_queue=None) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "JOIN_ROOM",
                    "payload": {"name": "s", "userId": f"s{n}", "roomId": f"r{n}"},
                }
            )
        )
        while json.loads(await ws.recv())["type"] != "ROOM_HISTORY":
            pass
        for i in range(count):
            started = time.perf_counter()
            await ws.send(
                json.dumps(
                    {
                        "type": "SEND_MESSAGE",
                        "payload": {"userId": f"s{n}", "roomId": f"r{n}", "message": f"m{i}"},
                    }
                )
            )
            while json.loads(await ws.recv())["type"] != "ADD_CHAT":
                pass
            latencies.append(time.perf_counter() - started)


async def run(store: str, messages: int, senders: int) -> dict[str, float]:
    latencies: list[float] = []
    lags: list[float] = []
    async with running_server(store=store, max_message_rate=1e9, message_burst=10**9) as srv:
        stop = asyncio.Event()
        probe = asyncio.ensure_future(lag_probe(stop, lags))
        started = time.perf_counter()
        await asyncio.gather(
            *(sender(srv.url, n, messages // senders, latencies) for n in range(senders))
        )
        elapsed = time.perf_counter() - started
        stop.set()
        await probe
    latencies.sort()
    return {
        "messages_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1e3,
        "max_ms": latencies[-1] * 1e3,
        "loop_lag_max_ms": max(lags) * 1e3,
        "loop_lag_p99_ms": sorted(lags)[int(0.99 * (len(lags) - 1))] * 1e3,
    }


async def main(messages: int, senders: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "memory://": await run("memory://", messages, senders),
            "sqlite://": await run(f"sqlite:///{Path(tmp) / 'bench.db'}", messages, senders),
        }
    header = ("store", "msg/s", "p50 ms", "p99 ms", "max ms", "lag p99", "lag max")
    print("{:10} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8}".format(*header))
    for store, r in results.items():
        print(
            f"{store:10} {r['messages_per_s']:8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f}"
            f" {r['max_ms']:7.2f} {r['loop_lag_p99_ms']:8.2f} {r['loop_lag_max_ms']:8.2f}"
        )
    memory, sqlite = results["memory://"], results["sqlite://"]
    print(
        f"sqlite/memory: throughput x{sqlite['messages_per_s'] / memory['messages_per_s']:.2f}, "
        f"p99 latency x{sqlite['p99_ms'] / memory['p99_ms']:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--senders", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.senders))
