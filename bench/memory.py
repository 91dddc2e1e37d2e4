"""Where an idle joined connection's memory goes, by package and by line (tracemalloc).

Starts roomcast in this process with tracemalloc on, opens N connections from a client
process (each joins one of N/10 rooms and stays silent), and prints the Python memory
they added per connection: by package (roomcast, aiohttp, asyncio, ...) and the top
lines. Python allocations only: RSS (`roomcast bench idle`) adds the allocator's slack.

    python bench/memory.py --connections 2000

Loopback only; the client process is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tracemalloc
from collections import Counter

from roomcast.bench.measure import raise_fd_limit
from roomcast.testing import running_server

CLIENT = r"""
import asyncio, json, sys
import websockets

async def main(url, n):
    conns = []
    for i in range(n):
        ws = await websockets.connect(url, max_queue=None)
        join = {"name": f"u{i}", "userId": f"u{i}", "roomId": f"r{i % max(1, n // 10)}"}
        await ws.send(json.dumps({"type": "JOIN_ROOM", "payload": join}))
        conns.append(ws)
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def package(filename: str) -> str:
    for name in ("roomcast", "aiohttp", "asyncio", "multidict", "yarl", "msgspec"):
        if f"/{name}/" in filename:
            return name
    return filename.rsplit("/", 1)[-1]


async def measure(count: int, top: int) -> None:
    raise_fd_limit(count + 100)
    async with running_server(max_connections_per_ip=1_000_000, presence_broadcast_max=10) as srv:
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, srv.url, str(count), stdout=asyncio.subprocess.PIPE
        )
        try:
            assert client.stdout is not None
            await client.stdout.readline()
            await asyncio.sleep(2)  # every join answered
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            client.kill()
            await client.wait()
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    by_package: Counter[str] = Counter()
    for s in stats:
        by_package[package(s.traceback[0].filename)] += s.size_diff
    print(f"{count:,} idle joined connections: {total / count:,.0f} B each (Python heap)")
    print("| package | B per connection |\n|---|---|")
    for name, size in by_package.most_common(6):
        print(f"| {name} | {size / count:,.0f} |")
    print(f"\ntop {top} lines:")
    for s in stats[:top]:
        frame = s.traceback[0]
        where = frame.filename.split("site-packages/")[-1].split("/src/")[-1]
        per = f"{s.size_diff / count:7,.0f} B {s.count_diff / count:5.1f} objects"
        print(f"{per}  {where}:{frame.lineno}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(measure(args.connections, args.top))


if __name__ == "__main__":
    main()
