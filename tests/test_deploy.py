"""The shipped deployment files work: nginx in front of roomcast, SQLite online backup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from roomcast.adapters.sqlite import SqliteStore
from roomcast.testing import running_server
from tests.cluster import NodeProcess, needs_redis, prefix
from tests.helpers import Client, free_port, timeout

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAVE_NGINX = Path(NGINX).exists()


async def test_nginx_config_proxies_websockets(tmp_path: Path) -> None:
    """deploy/nginx/roomcast.conf upgrades WebSockets, passes the client address, and
    keeps /metrics private."""
    if not HAVE_NGINX:
        if os.environ.get("CI"):
            pytest.fail("nginx is missing: CI must run this test")
        pytest.skip("no nginx (apt-get install nginx)")
    listen = free_port()
    async with running_server(trusted_proxies=("127.0.0.1",), max_connections_per_ip=1) as srv:
        _nginx_site(tmp_path, "roomcast.conf", {8080: srv.port}, listen)
        proc = await asyncio.create_subprocess_exec(
            NGINX,
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
            "-g",
            "daemon off;",
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            url = f"ws://127.0.0.1:{listen}/"
            client = await _connect_when_up(url, local_addr=("127.0.0.2", 0))
            await client.join("2", "through-nginx")
            await client.send("SEND_MESSAGE", userId="through-nginx", roomId="2", message="proxied")
            assert (await client.expect("ADD_CHAT"))["message"] == "proxied"
            # The server saw 127.0.0.2 (from X-Forwarded-For): a direct connection from
            # 127.0.0.1 still fits under the one-per-address cap, a second one via nginx
            # from 127.0.0.2 does not.
            direct = await Client.connect(srv.url)
            await direct.close()
            with pytest.raises(websockets.InvalidStatus) as refused:
                await Client.connect(url, local_addr=("127.0.0.2", 0))
            assert refused.value.response.status_code == 429
            reader, writer = await asyncio.open_connection("127.0.0.1", listen)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = await asyncio.wait_for(reader.read(), timeout(5))
            writer.close()
            assert reply.startswith(b"HTTP/1.1 200")  # allowed from 127.0.0.1 only
            await client.close()
        finally:
            proc.terminate()
            await proc.wait()


async def _connect_when_up(url: str, **kwargs: object) -> Client:
    for _ in range(50):
        try:
            return await Client.connect(url, **kwargs)
        except OSError:
            await asyncio.sleep(0.1)
    return await Client.connect(url, **kwargs)


async def test_online_backup_of_the_sqlite_store(tmp_path: Path) -> None:
    """While the server runs, SQLite's online backup copies the store; the copy opens."""
    db = tmp_path / "live.db"
    async with running_server(store=f"sqlite:///{db}") as srv:
        client = await Client.connect(srv.url)
        await client.join("r", "u")
        await client.send("SEND_MESSAGE", userId="u", roomId="r", message="keep me")
        await client.expect("ADD_CHAT")
        source = sqlite3.connect(db)
        target = sqlite3.connect(tmp_path / "backup.db")
        source.backup(target)
        source.close()
        target.close()
        await client.close()
    copy = SqliteStore(str(tmp_path / "backup.db"))
    await copy.open()
    assert [m.text for m in (await copy.history("r", 10)).messages] == ["keep me"]
    await copy.close()


def _nginx_site(tmp_path: Path, name: str, ports: dict[int, int], listen: int) -> Path:
    """The shipped config `name`, its upstream ports mapped by `ports` (shipped -> ours),
    listening on `listen`."""
    site = (ROOT / "deploy" / "nginx" / name).read_text()
    for default, port in ports.items():
        site = site.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"error_log {tmp_path}/logs/error.log;\npid {tmp_path}/nginx.pid;\n"
        "events { worker_connections 256; }\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/body; "
        f"proxy_temp_path {tmp_path}/proxy; include {tmp_path}/site.conf; }}\n"
    )
    return tmp_path / "nginx.conf"


@contextlib.asynccontextmanager
async def _nginx_over(tmp_path: Path, name: str, nodes: list[NodeProcess]) -> AsyncIterator[int]:
    """The nodes started, and the shipped nginx config `name` in front of them; yields
    nginx's port. Everything started is stopped, whatever the test does."""
    if not HAVE_NGINX:
        if os.environ.get("CI"):
            pytest.fail("nginx is missing: CI must run this test")
        pytest.skip("no nginx (apt-get install nginx)")
    proc = None
    try:
        for node in nodes:
            node.start()
        listen = free_port()
        conf = _nginx_site(tmp_path, name, _upstreams(nodes), listen)
        proc = await asyncio.create_subprocess_exec(
            NGINX, "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;",
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        yield listen
    finally:
        if proc is not None:
            proc.terminate()
            await proc.wait()
        for node in nodes:
            node.stop()


@needs_redis
async def test_nginx_in_front_of_three_nodes_sharing_rooms(tmp_path: Path, redis_url: str) -> None:
    """deploy/nginx/roomcast-pubsub.conf: nginx spreads one room's users over three
    nodes joined by Redis; everyone sees everyone's messages, in one order."""
    key_prefix = prefix()
    nodes = [NodeProcess(redis_url, key_prefix, "--trusted-proxy", "127.0.0.1") for _ in range(3)]
    async with _nginx_over(tmp_path, "roomcast-pubsub.conf", nodes) as listen:
        url = f"ws://127.0.0.1:{listen}/ws?room=lecture"
        clients = [await _connect_when_up(url) for _ in range(6)]
        for i, client in enumerate(clients):
            await client.join("lecture", f"u{i}")
        for i, client in enumerate(clients):
            await client.send(
                "SEND_MESSAGE", userId=f"u{i}", roomId="lecture", message=f"hello {i}"
            )
        orders = []
        for client in clients:
            chats = [await client.expect("ADD_CHAT") for _ in clients]
            orders.append([c["chatId"] for c in chats])
            assert sorted(c["message"] for c in chats) == sorted(f"hello {i}" for i in range(6))
        assert all(order == orders[0] for order in orders)
        served = [_metric(node, "roomcast_connections") for node in nodes]
        assert sum(served) == 6
        assert sum(1 for n in served if n > 0) >= 2  # the room really spans nodes
        for client in clients:
            await client.close()


async def test_nginx_room_affinity_over_three_independent_nodes(tmp_path: Path) -> None:
    """deploy/nginx/roomcast-affinity.conf: no Redis; nginx hashes ?room= so all users
    of a room reach the same node, and different rooms spread over the nodes."""
    nodes = [
        NodeProcess("", "", "--store", "memory://", "--trusted-proxy", "127.0.0.1")
        for _ in range(3)
    ]
    async with _nginx_over(tmp_path, "roomcast-affinity.conf", nodes) as listen:
        rooms = [f"room{i}" for i in range(12)]
        for room in rooms:
            url = f"ws://127.0.0.1:{listen}/ws?room={room}"
            a = await _connect_when_up(url)
            b = await _connect_when_up(url)
            await a.join(room, "a")
            await b.join(room, "b")
            await a.send("SEND_MESSAGE", userId="a", roomId=room, message=f"in {room}")
            assert (await b.expect("ADD_CHAT"))["message"] == f"in {room}"  # same node
            await a.close()
            await b.close()
        hosting = [_metric(node, "roomcast_messages_in_total") for node in nodes]
        assert sum(1 for n in hosting if n > 0) >= 2  # rooms spread over the nodes


def _upstreams(nodes: list[NodeProcess]) -> dict[int, int]:
    """The shipped configs' upstream ports (8081-8083) -> our nodes' ports."""
    return dict(zip((8081, 8082, 8083), (n.port for n in nodes), strict=True))


def _metric(node: NodeProcess, name: str) -> float:
    """The sum of a metric's samples on a node's /metrics."""
    import urllib.request

    with urllib.request.urlopen(node.http + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#") and (line[len(name)] in " {")
    )
