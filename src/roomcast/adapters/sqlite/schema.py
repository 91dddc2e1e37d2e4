"""The SQLite store's schema and its migrations, and the lock on its file.

The database's `meta` table holds its `schema` version and its `epoch` (its history's
identity). `migrate` brings any earlier version up to `SCHEMA_VERSION`, one step at a
time, inside one exclusive transaction: whoever takes the lock first migrates, and a
second process waits for it, then finds nothing to do. A database of a version newer
than this roomcast knows is refused, not guessed at. Later features add a step to
`MIGRATIONS` and bump `SCHEMA_VERSION`; steps are never edited once released.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import sqlite3
import time

log = logging.getLogger("roomcast.sqlite")

# Version 1: the first release's tables (messages, rooms, votes, mutes, meta).
_V1 = """
CREATE TABLE IF NOT EXISTS messages (
    chat_id    INTEGER PRIMARY KEY,
    room_id    TEXT    NOT NULL,
    offset     INTEGER NOT NULL,
    user_id    TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    text       TEXT    NOT NULL,
    upvotes    INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    answered   INTEGER NOT NULL DEFAULT 0,
    alerted    INTEGER NOT NULL DEFAULT 0,
    client_msg_id TEXT,
    UNIQUE (room_id, offset)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_msg_id
    ON messages (room_id, user_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS room_offsets (
    room_id     TEXT PRIMARY KEY,
    last_offset INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    room_id          TEXT PRIMARY KEY,
    name             TEXT    NOT NULL,
    start_time       INTEGER,
    is_open          INTEGER NOT NULL,
    cooldown_seconds REAL    NOT NULL,
    medium_threshold INTEGER NOT NULL,
    high_threshold   INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    managed          INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mutes (
    room_id TEXT    NOT NULL,
    user_id TEXT    NOT NULL,
    until   INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS votes (
    chat_id INTEGER NOT NULL,
    user_id TEXT    NOT NULL,
    PRIMARY KEY (chat_id, user_id)
) WITHOUT ROWID;
"""

# Version 2: a record of the migrations applied to this file, and when.
_V2 = """
CREATE TABLE IF NOT EXISTS migrations (
    version    INTEGER PRIMARY KEY,
    applied_at INTEGER NOT NULL
);
"""

MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2}  # version -> the step that reaches it
SCHEMA_VERSION = max(MIGRATIONS)


class SchemaError(sqlite3.DatabaseError):
    """A database this roomcast cannot use (a newer schema, or not a roomcast file)."""


def version_of(conn: sqlite3.Connection) -> int:
    """The schema version of an open database; 0 for an empty one."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection) -> tuple[int, int, str]:
    """Bring the database up to `SCHEMA_VERSION` in one exclusive transaction; returns
    (version before, version after, epoch). The connection must be in autocommit mode."""
    conn.execute("BEGIN EXCLUSIVE")  # one migrator at a time; others wait (busy timeout)
    try:
        before = version_of(conn)
        if before > SCHEMA_VERSION:
            raise SchemaError(
                f"the database has schema version {before}; this roomcast knows up to "
                f"{SCHEMA_VERSION}: upgrade roomcast"
            )
        for version in range(before + 1, SCHEMA_VERSION + 1):
            for statement in _statements(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (str(version),)
            )
            if version >= 2:
                conn.execute(
                    "INSERT OR REPLACE INTO migrations (version, applied_at) VALUES (?, ?)",
                    (version, int(time.time() * 1000)),
                )
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (secrets.token_hex(8),)
        )
        (epoch,) = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    if before == 0:
        log.debug("SQLite schema %d created", SCHEMA_VERSION)
    elif before != SCHEMA_VERSION:
        log.info("SQLite schema migrated from version %d to %d", before, SCHEMA_VERSION)
    return before, SCHEMA_VERSION, str(epoch)


def migrate_file(path: str) -> tuple[int, int]:
    """Migrate the database at `path` (created if missing); (version before, after)."""
    # No journal-mode change here: switching a file to WAL needs it to itself, so nodes
    # migrating together could refuse each other; the store sets WAL when it opens.
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        before, after, _ = migrate(conn)
    finally:
        conn.close()
    return before, after


def _statements(script: str) -> list[str]:
    """A migration's statements, one by one (executescript would commit on its own)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def lock_file(path: str) -> int:
    """Open and exclusively lock `path`; OSError if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OSError(f"{path} is locked: is another roomcast using this database?") from None
    return fd
