"""Graceful drain on SIGTERM, with real processes: spread-out closes, exit 0, resume."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

from tests.helpers import Client, free_port, timeout


async def _start(port: int, db: Path, *extra: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast",
        "serve",
        "--port",
        str(port),
        "--store",
        f"sqlite:///{db}",
        "--admin-token",
        "t" * 16,
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    banner = await asyncio.wait_for(proc.stdout.readline(), timeout(20))
    assert b"serving" in banner, banner
    return proc


async def test_sigterm_drains_in_batches_and_clients_resume(tmp_path: Path) -> None:
    """SIGTERM closes every client with 1001, spread over drain_time, and exits 0; the
    clients reconnect to the restarted server and resume with nothing lost."""
    port, db = free_port(), tmp_path / "rooms.db"
    proc = await _start(port, db, "--drain-time", "1.0", "--shutdown-timeout", "5")
    url = f"ws://127.0.0.1:{port}/"
    clients = [await Client.connect(url) for _ in range(20)]
    pages = [await c.join("r", f"u{i}") for i, c in enumerate(clients)]
    for n in range(10):
        await clients[0].send("SEND_MESSAGE", userId="u0", roomId="r", message=f"before {n}")
    for c in clients:
        for _ in range(10):
            await c.expect("ADD_CHAT")

    closed_at: list[float] = []
    codes: list[int | None] = []

    async def wait_closed(client: Client) -> None:
        _, code = await client.read_until_closed(wait=10)
        closed_at.append(time.monotonic())
        codes.append(code)

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*(wait_closed(c) for c in clients))
    assert await asyncio.wait_for(proc.wait(), timeout(10)) == 0
    assert set(codes) == {1001}
    assert max(closed_at) - min(closed_at) > 0.3  # spread out, not all at once
    assert max(closed_at) - started < timeout(6)

    proc = await _start(port, db)
    try:
        for i, (c, page) in enumerate(zip(clients, pages, strict=True)):
            fresh = await Client.connect(url)
            await fresh.send(
                "JOIN_ROOM",
                name="n",
                userId=f"u{i}",
                roomId="r",
                since=page["lastOffset"],
                epoch=page["epoch"],
            )
            resumed = await fresh.expect("ROOM_HISTORY")
            assert resumed["recovered"] is True
            assert [m["message"] for m in resumed["messages"]] == [f"before {n}" for n in range(10)]
            await fresh.close()
            await c.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), timeout(10)) == 0
