"""CLI commands against a real server process: send, tail, rooms, config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, timeout
from tests.test_cli import serve

TOKEN = "cli-admin-token"


def roomcast(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomcast", *args],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with serve("--port", str(port), "--store", "memory://", "--admin-token", TOKEN, cwd=tmp_path):
        yield f"http://127.0.0.1:{port}"


def test_rooms_send_and_tail(server_url: str) -> None:
    """rooms create/update/list, send (token from the environment) and tail --json."""
    created = roomcast(
        "rooms",
        "create",
        "physics",
        "--name",
        "Physics",
        "--cooldown",
        "5",
        "--url",
        server_url,
        "--token",
        TOKEN,
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["cooldownSeconds"] == 5.0
    updated = roomcast(
        "rooms",
        "update",
        "physics",
        "--closed",
        "--url",
        server_url,
        env={"ROOMCAST_ADMIN_TOKEN": TOKEN},
    )
    assert json.loads(updated.stdout)["state"] == "closed"
    listed = roomcast("rooms", "--url", server_url)
    assert [r["roomId"] for r in json.loads(listed.stdout)["rooms"]] == ["physics"]
    for text in ("first", "second"):
        sent = roomcast(
            "send",
            "news",
            text,
            "--name",
            "bot",
            "--url",
            server_url,
            env={"ROOMCAST_ADMIN_TOKEN": TOKEN},
        )
        assert sent.returncode == 0, sent.stderr
    plain = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "tail", "news", "--url", server_url, "--count", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        roomcast("send", "news", "third", "--url", server_url, "--token", TOKEN)
        out, _ = plain.communicate(timeout=timeout(15))
    finally:
        if plain.poll() is None:
            plain.kill()
            plain.wait()
    assert out.splitlines() == ["[1] bot: first", "[2] bot: second", "[3] cli: third"]


def test_cli_errors_are_reported(server_url: str) -> None:
    """Refusals and unreachable servers exit 1 with a message on stderr."""
    refused = roomcast("send", "r", "x", "--url", server_url, "--token", "wrong")
    assert refused.returncode == 1
    assert "forbidden" in refused.stderr
    down = roomcast("rooms", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert roomcast("rooms", "update", "--url", server_url).returncode == 2


def test_config_print_masks_secrets_and_follows_precedence(tmp_path: Path) -> None:
    """defaults < TOML file < environment < flags; secrets are masked."""
    config = tmp_path / "roomcast.toml"
    config.write_text(
        'port = 9001\nhistory-size = 7\nadmin_token = "from-file"\nrooms = "managed"\n'
    )
    result = roomcast(
        "config",
        "--print",
        "--config",
        str(config),
        "--port",
        "9003",
        env={"ROOMCAST_PORT": "9002", "ROOMCAST_HISTORY_SIZE": "8"},
    )
    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    server, limits = effective["server"], effective["limits"]
    assert (server["port"], limits["history_size"], server["rooms"]) == (9003, 8, "managed")
    assert effective["auth"]["admin_token"] == "********"
    assert "from-file" not in result.stdout
    config.write_text("nope = 1\n")
    bad = roomcast("config", "--config", str(config))
    assert bad.returncode == 2
    assert "unknown setting" in bad.stderr


def test_config_file_sections(tmp_path: Path) -> None:
    """A TOML file may group settings in their sections' tables; what `config --print`
    prints is such a file, and reads back to the same settings."""
    config = tmp_path / "roomcast.toml"
    config.write_text(
        'rooms = "managed"\n[limits]\nhistory_size = 9\nfeed-ring = 64\n'
        '[storage]\nstore = "memory://"\n'
    )
    first = roomcast("config", "--config", str(config))
    assert first.returncode == 0, first.stderr
    printed = tomllib.loads(first.stdout)
    assert sorted(printed) == ["auth", "limits", "logging", "server", "storage"]
    assert (printed["limits"]["history_size"], printed["limits"]["feed_ring"]) == (9, 64)
    assert (printed["server"]["rooms"], printed["storage"]["store"]) == ("managed", "memory://")
    config.write_text(first.stdout.replace('"********"', '"x"'))
    again = roomcast("config", "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert tomllib.loads(again.stdout) == printed
    for text, words in (
        ("[limits]\nport = 1\n", "'port' belongs in [server], not [limits]"),
        ("[nowhere]\nport = 1\n", "unknown section [nowhere]"),
        ("[server]\nnope = 1\n", "unknown setting 'nope'"),
    ):
        config.write_text(text)
        bad = roomcast("config", "--config", str(config))
        assert bad.returncode == 2
        assert words in bad.stderr
