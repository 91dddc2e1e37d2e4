"""The command line, run as a user would: real processes, real ports, real files."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from roomcast import __version__
from roomcast.cli import main
from roomcast.config import Settings, describe, load
from tests.helpers import Client, free_port, timeout


@contextmanager
def serve(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Run `python -m roomcast serve ARGS` until it prints its banner; SIGINT it after."""
    with subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()
            assert "serving" in banner, banner + proc.stdout.read()
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout(10))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version; --help lists serve and its flags."""
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"roomcast {__version__}"
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag, env, _, _ in describe():
        assert flag in out
        assert env in out
    assert main([]) == 0
    assert "serve" in capsys.readouterr().out


def test_python_dash_m_works() -> None:
    """`python -m roomcast --version` runs."""
    out = subprocess.run(
        [sys.executable, "-m", "roomcast", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"roomcast {__version__}"


def test_settings_precedence() -> None:
    """Flags beat environment variables, which beat defaults."""
    env = {"ROOMCAST_PORT": "9001", "ROOMCAST_STORE": "memory://", "ROOMCAST_PING_INTERVAL": "2.5"}
    assert load(env={}) == Settings()
    s = load(env=env)
    assert (s.port, s.store, s.ping_interval) == (9001, "memory://", 2.5)
    assert load({"port": 9002, "host": None}, env=env).port == 9002
    with pytest.raises(ValueError, match="ROOMCAST_PORT"):
        load(env={"ROOMCAST_PORT": "eighty"})
    with pytest.raises(ValueError, match="max_message_chars"):
        load({"max_message_chars": 0}, env={})


def test_bad_setting_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid value is reported on stderr with exit status 2."""
    assert main(["serve", "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    """A taken port is a clear error and exit status 1, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "roomcast",
                "serve",
                "--port",
                str(port),
                "--store",
                "memory://",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout(20),
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


async def _chat(port: int, text: str) -> list[tuple[str, int]]:
    client = await Client.connect(f"ws://127.0.0.1:{port}/", subprotocols=["echo-protocol"])
    try:
        history = await client.join("2", 7, "ann")
        if text:
            await client.send("SEND_MESSAGE", userId=7, roomId="2", message=text)
            chat = await client.expect("ADD_CHAT")
            await client.send("UPVOTE_MESSAGE", userId=7, roomId="2", chatId=int(chat["chatId"]))
            await client.expect("UPDATE_CHAT")
        return [(m["message"], m["upvotes"]) for m in history["messages"]]
    finally:
        await client.close()


def test_default_store_survives_restart_and_ctrl_c_is_clean(tmp_path: Path) -> None:
    """With no --store, history and votes land in ./roomcast.db and survive a restart;
    Ctrl-C (SIGINT) stops the server with exit status 0."""
    port = free_port()
    with serve("--port", str(port), cwd=tmp_path) as proc:
        assert asyncio.run(_chat(port, "persisted?")) == []
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout(10)) == 0
        assert proc.stdout is not None
        assert "stopped" in proc.stdout.read()
    assert (tmp_path / "roomcast.db").exists()
    with serve(cwd=tmp_path, env={"ROOMCAST_PORT": str(port)}):
        assert asyncio.run(_chat(port, "")) == [("persisted?", 1)]


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    """SIGTERM stops the server with exit status 0 too."""
    port = free_port()
    with serve(
        "--port", str(port), "--store", "memory://", "--loop", "asyncio", cwd=tmp_path
    ) as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout(10)) == 0


def _gc_report(*args: str, cwd: Path) -> str:
    """The garbage-collector line `roomcast serve ARGS --log-level debug` logs at start."""
    port = free_port()
    cmd = [sys.executable, "-m", "roomcast", "serve", "--port", str(port), *args]
    with subprocess.Popen(
        [*cmd, "--store", "memory://", "--log-level", "debug"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        killer = threading.Timer(timeout(30), proc.kill)  # no banner: stop waiting for it
        killer.start()
        try:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if "serving" in line:
                    break
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout(10)) == 0
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    found = [line for line in lines if "garbage collector:" in line]
    assert found, "".join(lines)
    return found[0]


def test_serve_collects_garbage_less_often_unless_told_not_to(tmp_path: Path) -> None:
    """`roomcast serve` raises the collector's thresholds and freezes what start-up made
    (gc_threshold); with 0 it keeps Python's and freezes nothing."""
    import re

    tuned = _gc_report(cwd=tmp_path)
    assert "thresholds (50000, 50, 100)" in tuned
    frozen = re.search(r"(\d+) start-up objects frozen", tuned)
    assert frozen is not None
    assert int(frozen.group(1)) > 10_000  # modules, classes, functions: everything loaded
    python_default = subprocess.run(
        [sys.executable, "-c", "import gc; print(gc.get_threshold())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    plain = _gc_report("--gc-threshold", "0", cwd=tmp_path)
    assert f"thresholds {python_default}, 0 start-up objects frozen" in plain
    with pytest.raises(ValueError, match="gc_threshold"):
        Settings(gc_threshold=-1)
