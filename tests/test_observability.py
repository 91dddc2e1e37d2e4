"""Health, readiness, Prometheus metrics and JSON logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from roomcast.runtime.server import RoomcastServer
from roomcast.testing import running_server
from tests.helpers import Client, free_port, timeout


async def scrape(server: RoomcastServer) -> dict[str, float]:
    """The server's /metrics, parsed by Prometheus' own parser: {"name{labels}": value}."""
    url = f"http://127.0.0.1:{server.port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def test_metrics_move(server: RoomcastServer) -> None:
    """Counters and gauges follow what happens: connections, messages, deliveries,
    errors, rooms, store latency, how long frames wait to be written."""
    before = await scrape(server)
    assert before["roomcast_connections{}"] == 0
    a, b = await Client.connect(server.url), await Client.connect(server.url)
    await a.join("m", "a")
    await b.join("m", "b")
    await a.send("SEND_MESSAGE", userId="a", roomId="m", message="hi")
    await a.expect("ADD_CHAT")
    await b.expect("ADD_CHAT")
    await a.send_raw("garbage")
    await a.expect_error("bad_json")
    after = await scrape(server)
    assert after["roomcast_connections{}"] == 2
    assert after["roomcast_connections_total{}"] == 2
    assert after["roomcast_rooms{}"] == 1
    assert after["roomcast_messages_in_total{type=SEND_MESSAGE}"] == 1
    assert after["roomcast_messages_in_total{type=JOIN_ROOM}"] == 2
    assert after["roomcast_errors_total{code=bad_json}"] == 1
    assert after["roomcast_deliveries_total{}"] >= before["roomcast_deliveries_total{}"] + 2
    assert after["roomcast_store_append_seconds_count{}"] == 1
    # One observation per write pass: at least the joins' and the message's passes, in
    # seconds (well under one here), all of them inside the last finite bucket.
    passes = after["roomcast_send_wait_seconds_count{}"]
    assert passes >= before.get("roomcast_send_wait_seconds_count{}", 0) + 3
    assert 0 < after["roomcast_send_wait_seconds_sum{}"] < passes * timeout(1)
    assert after["roomcast_send_wait_seconds_bucket{le=1.0}"] == passes
    assert "roomcast_event_loop_lag_seconds{}" in after
    assert after["roomcast_queue_bytes{}"] >= 0
    await a.close()
    await b.close()


async def test_refused_handshakes_are_counted() -> None:
    """Refused upgrades are counted by reason."""
    async with running_server() as srv:
        async with aiohttp.ClientSession() as session:
            response = await session.get(
                srv.url.replace("ws://", "http://"),
                headers={
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Origin": "https://evil.example",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version": "13",
                },
            )
            assert response.status == 403
            response.release()
        assert (await scrape(srv))["roomcast_handshakes_refused_total{reason=origin}"] == 1


async def test_healthz_and_readyz(tmp_path: Path) -> None:
    """/healthz answers while alive; /readyz is 200 while the store answers, 503 after."""
    async with running_server(store=f"sqlite:///{tmp_path}/r.db") as srv:
        base = f"http://127.0.0.1:{srv.port}"
        async with aiohttp.ClientSession() as session:
            for path, status in (("/healthz", 200), ("/readyz", 200)):
                async with session.get(base + path) as response:
                    assert response.status == status
            await srv.store.close()  # the store is gone
            async with session.get(base + "/readyz") as response:
                assert response.status == 503
                assert (await response.json())["ready"] is False
            async with session.get(base + "/healthz") as response:
                assert response.status == 200


def test_json_logs_with_connection_ids(tmp_path: Path) -> None:
    """--log-format json writes one JSON object per line, with the connection id."""
    import asyncio

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roomcast",
            "serve",
            "--port",
            str(port),
            "--store",
            "memory://",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--admin-token",
            "x" * 20,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "serving" in proc.stdout.readline()

        async def visit() -> None:
            client = await Client.connect(f"ws://127.0.0.1:{port}/")
            await client.join("r", "u")
            await client.close()

        asyncio.run(visit())
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=timeout(10))
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines, err
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line.get("conn") == "c1" for line in lines)
