"""The shipped deployment files work: nginx in front of roomcast, SQLite online backup."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import websockets

from roomcast.adapters.sqlite import SqliteStore
from roomcast.testing import running_server
from tests.helpers import Client, timeout
from tests.test_cli import free_port

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
        site = (ROOT / "deploy" / "nginx" / "roomcast.conf").read_text()
        site = site.replace("127.0.0.1:8080", f"127.0.0.1:{srv.port}").replace(
            "listen 80;", f"listen 127.0.0.1:{listen};"
        )
        (tmp_path / "site.conf").write_text(site)
        (tmp_path / "logs").mkdir()
        (tmp_path / "nginx.conf").write_text(
            f"error_log {tmp_path}/logs/error.log;\npid {tmp_path}/nginx.pid;\n"
            "events { worker_connections 256; }\n"
            f"http {{ access_log off; client_body_temp_path {tmp_path}/body; "
            f"proxy_temp_path {tmp_path}/proxy; include {tmp_path}/site.conf; }}\n"
        )
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
