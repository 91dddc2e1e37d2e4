"""Versioned storage: the SQLite schema migrates from every earlier version (a database
made by the previous release is upgraded in place), several nodes may migrate at once,
and a newer format than this roomcast knows is refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from roomcast.adapters.redis.client import KEYS_VERSION
from roomcast.adapters.sqlite import SqliteStore
from roomcast.adapters.sqlite.schema import SCHEMA_VERSION
from roomcast.core.errors import StoreError
from tests.cluster import prefix

FIXTURES = Path(__file__).parent / "fixtures"
V1_EPOCH = "79262473d4280c58"  # the epoch in the schema-1 database (its history's identity)


def _v1_database(path: Path) -> Path:
    """The database the previous release made (its rooms, messages, votes, mutes)."""
    conn = sqlite3.connect(path)
    conn.executescript((FIXTURES / "roomcast-schema-1.sql").read_text())
    conn.close()
    return path


def _schema(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        (value,) = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        return int(value)
    finally:
        conn.close()


async def test_a_database_of_the_previous_version_is_upgraded_in_place(tmp_path: Path) -> None:
    """Opening a schema-1 database migrates it: every room, message, vote, answer,
    alert and mute is still there, its epoch is kept (clients resume), and offsets go on."""
    path = _v1_database(tmp_path / "old.db")
    store = SqliteStore(str(path))
    await store.open()
    try:
        assert store.epoch == V1_EPOCH
        page = await store.history("class", 10, voter="bob", alerts=True)
        assert [(m.offset, m.text, m.upvotes, m.answered) for m in page.messages] == [
            (1, "What is a WebSocket?", 2, False),
            (2, "Why not polling?", 0, True),
        ]
        assert page.voted == ["1"]
        assert [a.chat_id for a in page.alerts] == ["1"]
        room = await store.get_room("class")
        assert room is not None
        assert (room.name, room.cooldown_seconds, room.managed) == ("Class Q&A", 30.0, True)
        assert await store.mutes("class") == {"mallory": 1900000000000}
        again = await store.append("class", "ann", "Ann", "What is a WebSocket?", "c-1")
        assert again.duplicate  # the retry key survived the upgrade
        assert (await store.append("class", "cid", "Cid", "new")).message.offset == 3
    finally:
        await store.close()
    assert _schema(path) == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    assert [v for (v,) in conn.execute("SELECT version FROM migrations")] == [2]
    conn.close()


def test_roomcast_migrate_upgrades_once_when_nodes_start_together(tmp_path: Path) -> None:
    """Three `roomcast migrate` at once on one schema-1 file: all succeed, one migrates."""
    path = _v1_database(tmp_path / "shared.db")
    url = f"sqlite:///{path}"
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "roomcast", "migrate", "--store", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=60) for run in runs]
    errors = "".join(err for _, err in outputs)
    assert [run.returncode for run in runs] == [0, 0, 0], errors
    said = sorted(out.strip() for out, _ in outputs)
    assert said == [
        f"{url}: schema 1 -> {SCHEMA_VERSION}",
        f"{url}: schema {SCHEMA_VERSION}, up to date",
        f"{url}: schema {SCHEMA_VERSION}, up to date",
    ]
    assert _schema(path) == SCHEMA_VERSION


def _future_database(path: Path) -> Path:
    _v1_database(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    conn.commit()
    conn.close()
    return path


async def test_a_newer_schema_is_refused_not_guessed_at(tmp_path: Path) -> None:
    """A database a later roomcast made is not opened: the error says to upgrade."""
    store = SqliteStore(str(_future_database(tmp_path / "future.db")))
    with pytest.raises(StoreError, match=r"schema version 99.*upgrade roomcast"):
        await store.open()


def test_migrate_refuses_a_newer_schema_in_one_line(tmp_path: Path) -> None:
    path = _future_database(tmp_path / "future.db")
    result = subprocess.run(
        [sys.executable, "-m", "roomcast", "migrate", "--store", f"sqlite:///{path}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "upgrade roomcast" in result.stderr
    assert "Traceback" not in result.stderr


def test_roomcast_migrate_records_the_redis_key_format(redis_url: str) -> None:
    """On Redis, migrate records the key format under the prefix, and refuses a newer."""
    key_prefix = prefix()
    args = [sys.executable, "-m", "roomcast", "migrate", "--store", redis_url]
    args += ["--redis-prefix", key_prefix]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"key format {KEYS_VERSION}" in result.stdout
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert int(client.get(f"{key_prefix}format") or 0) == KEYS_VERSION
        client.set(f"{key_prefix}format", KEYS_VERSION + 1)
    finally:
        client.close()
    refused = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "upgrade roomcast" in refused.stderr
