"""The wheel builds, installs into a fresh virtual environment and serves a chat."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

from tests.helpers import Client, free_port, timeout

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_serves(tmp_path: Path) -> None:
    """pip wheel → fresh venv → pip install → `roomcast serve` → two clients chat."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
        check=True,
        timeout=timeout(300),
    )
    (wheel,) = dist.glob("roomcast-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "roomcast/bench/cli.py" in names  # `roomcast bench` ships
    assert not [n for n in names if n.endswith("servers.py")]  # the bare servers do not
    lua = {n.rsplit("/", 1)[-1] for n in names if n.startswith("roomcast/adapters/redis/lua/")}
    assert {"append.lua", "history.lua", "presence_leave.lua"} <= lua  # the Redis scripts
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        timeout=timeout(600),
    )
    metadata = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; d = m.metadata('roomcast'); "
            "print(d['License-Expression'], d['Requires-Python'], len(d.get_all('Classifier')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert metadata[:2] == ["MIT", ">=3.11"]
    assert int(metadata[2]) >= 10
    port = free_port()
    with subprocess.Popen(
        [str(env_dir / "bin" / "roomcast"), "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert "serving" in proc.stdout.readline()

            async def chat() -> None:
                a = await Client.connect(f"ws://127.0.0.1:{port}/", subprotocols=["echo-protocol"])
                b = await Client.connect(f"ws://127.0.0.1:{port}/")
                await a.join("2", 1, "ann")
                await b.join("2", 2, "bob")
                await a.send("SEND_MESSAGE", userId=1, roomId="2", message="from the wheel")
                assert (await b.expect("ADD_CHAT"))["message"] == "from the wheel"
                await a.close()
                await b.close()

            asyncio.run(chat())
            page = subprocess.run(
                [
                    str(python),
                    "-c",
                    f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/static/js/app.js').status)",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            assert page.stdout.strip() == "200"  # the browser client ships in the wheel
        finally:
            proc.send_signal(2)
            assert proc.wait(timeout(10)) == 0


# WebSocket libraries roomcast must not import: it serves with aiohttp alone. The bench
# extra's picows (the load generator's client) is imported in one function, when a
# benchmark runs; the bare servers on the others are bench/servers.py, not in the package.
OTHER_WEBSOCKET_LIBRARIES = {"picows", "websockets", "aiofastnet", "wsproto", "tornado"}
LAZY = {("roomcast/bench/clients.py", "picows")}


def test_roomcast_imports_no_other_websocket_library() -> None:
    found = set()
    for path in (ROOT / "src" / "roomcast").rglob("*.py"):
        name = path.relative_to(ROOT / "src").as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            found |= {
                (name, top)
                for top in (m.split(".")[0] for m in modules)
                if top in OTHER_WEBSOCKET_LIBRARIES
            }
    assert found == LAZY
    # and importing every module of the package loads none of them
    code = (
        "import importlib, pkgutil, sys, roomcast\n"
        "for m in pkgutil.walk_packages(roomcast.__path__, 'roomcast.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "aiohttp" in loaded
    assert not OTHER_WEBSOCKET_LIBRARIES & set(loaded)
