"""An embedded SQLite store: history and votes survive a restart, nothing to install.

All SQLite work runs on one worker thread that owns the connection, so the event loop
never waits for disk I/O. The thread drains whatever operations are queued and runs them
in one transaction (group commit), then resolves their futures in submission order, in
one hand-off to the loop. The queue is bounded: past `queue_max` pending operations a
call raises `StoreOverloaded` at once.

The database is opened in WAL mode with `synchronous=NORMAL` (a committed message
survives a crash of roomcast; the last transactions may be lost if the machine itself
loses power). An exclusive lock on `PATH.lock` keeps a second roomcast from opening
the same file by mistake and assigning conflicting offsets, while other readers (an
online backup with `sqlite3 PATH ".backup copy.db"`) still can.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from roomcast.core.errors import (
    RoomExists,
    StoreError,
    StoreOverloaded,
    UnknownChat,
    UnknownRoom,
)
from roomcast.core.model import Appended, HistoryPage, StoredMessage
from roomcast.core.rooms import RoomInfo

_SCHEMA = """
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

_COLUMNS = (
    "chat_id, room_id, offset, user_id, name, text, upvotes, created_at, answered, client_msg_id"
)
SCHEMA_VERSION = "1"
_ROOM_COLUMNS = (
    "room_id, name, start_time, is_open, cooldown_seconds, medium_threshold,"
    " high_threshold, created_at, managed"
)

_Op = Callable[..., Any]
_Item = tuple[_Op, tuple[Any, ...], "asyncio.Future[Any]"]


def _row(row: tuple[Any, ...]) -> StoredMessage:
    chat_id, room_id, offset, user_id, name, text, upvotes, created_at, answered, client_id = row
    return StoredMessage(
        str(chat_id),
        room_id,
        offset,
        user_id,
        name,
        text,
        upvotes,
        created_at,
        bool(answered),
        client_id,
    )


def _room(row: tuple[Any, ...]) -> RoomInfo:
    return RoomInfo(
        row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6], row[7], bool(row[8])
    )


def _lock_file(path: str) -> int:
    """Open and exclusively lock `path`; OSError if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OSError(f"{path} is locked: is another roomcast using this database?") from None
    return fd


def _key(chat_id: str) -> int:
    """The integer primary key of a chat id; -1 (never used) for anything else."""
    return int(chat_id) if chat_id.isdigit() and len(chat_id) < 17 else -1


class SqliteStore:
    """Store messages and votes in one SQLite file, written from a worker thread."""

    def __init__(self, path: str, *, queue_max: int = 10_000, batch_max: int = 512) -> None:
        self._path = path
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._pending = 0
        self._offsets: dict[str, int] = {}  # owned by the worker thread
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._epoch: str | None = None
        self._lock: int | None = None  # fd holding the lock file

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="roomcast-sqlite", daemon=True
        )
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._thread is None or self._stopped is None:
            return
        self._queue.put(None)
        await self._stopped
        self._thread = None

    # ------------------------------------------------------------ the port

    async def ping(self) -> None:
        await self._submit(lambda conn: conn.execute("SELECT 1").fetchone())

    @property
    def epoch(self) -> str:
        if self._epoch is None:
            raise StoreError("the SQLite store is not open")
        return self._epoch

    async def append(
        self,
        room_id: str,
        user_id: str,
        name: str,
        text: str,
        client_msg_id: str | None = None,
        *,
        cooldown_ms: int = 0,  # a node-local store leaves cooldowns and mutes to the node
        check_mute: bool = False,
    ) -> Appended:
        now = int(time.time() * 1000)
        result: Appended = await self._submit(
            self._append, room_id, user_id, name, text, now, client_msg_id
        )
        return result

    async def vote(self, room_id: str, chat_id: str, user_id: str) -> StoredMessage | None:
        result: StoredMessage | None = await self._submit(self._vote, room_id, chat_id, user_id, 1)
        return result

    async def unvote(self, room_id: str, chat_id: str, user_id: str) -> StoredMessage | None:
        result: StoredMessage | None = await self._submit(self._vote, room_id, chat_id, user_id, -1)
        return result

    async def mark_answered(self, room_id: str, chat_id: str) -> StoredMessage:
        result: StoredMessage = await self._submit(self._mark_answered, room_id, chat_id)
        return result

    async def delete_message(self, room_id: str, chat_id: str) -> None:
        await self._submit(self._delete, room_id, chat_id)

    async def claim_alert(self, room_id: str, chat_id: str) -> bool:
        result: bool = await self._submit(self._claim_alert, room_id, chat_id)
        return result

    async def history(
        self,
        room_id: str,
        limit: int,
        voter: str | None = None,
        alerts: bool = False,
        after: int | None = None,
        newest_if_incomplete: bool = False,
    ) -> HistoryPage:
        result: HistoryPage = await self._submit(
            self._history, room_id, limit, voter, alerts, after, newest_if_incomplete
        )
        return result

    async def create_room(self, room: RoomInfo) -> RoomInfo:
        await self._submit(self._create_room, room)
        return room

    async def update_room(self, room: RoomInfo) -> None:
        await self._submit(self._update_room, room)

    async def get_room(self, room_id: str) -> RoomInfo | None:
        result: RoomInfo | None = await self._submit(self._get_room, room_id)
        return result

    async def list_rooms(self) -> list[RoomInfo]:
        result: list[RoomInfo] = await self._submit(self._list_rooms)
        return result

    async def set_mute(self, room_id: str, user_id: str, until_ms: int) -> None:
        await self._submit(self._set_mute, room_id, user_id, until_ms)

    async def mutes(self, room_id: str) -> dict[str, int]:
        result: dict[str, int] = await self._submit(self._mutes, room_id)
        return result

    # ------------------------------------------------------------ loop side

    def _submit(self, op: _Op, *args: Any) -> asyncio.Future[Any]:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            raise StoreError("the SQLite store is not open")
        if self._pending >= self._queue_max:
            raise StoreOverloaded(f"{self._pending} SQLite operations are already queued")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending += 1
        self._queue.put((op, args, future))
        return future

    def _resolve(
        self, results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
    ) -> None:
        self._pending -= len(results)
        for future, value, error in results:
            if future.cancelled():
                continue
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

    # ------------------------------------------------------------ worker thread

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        assert self._stopped is not None
        try:
            self._lock = _lock_file(self._path + ".lock")
            conn = sqlite3.connect(
                self._path, timeout=1.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now, not later
            for key, value in (("epoch", secrets.token_hex(8)), ("schema", SCHEMA_VERSION)):
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            conn.execute("COMMIT")
            if meta["schema"] != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {meta['schema']} is not supported")
            self._epoch = meta["epoch"]
        except (sqlite3.Error, OSError) as exc:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None
            error = StoreError(f"cannot open SQLite store {self._path!r}: {exc}")
            loop.call_soon_threadsafe(ready.set_exception, error)
            loop.call_soon_threadsafe(self._stopped.set_result, None)
            return
        loop.call_soon_threadsafe(ready.set_result, None)
        try:
            self._serve(conn, loop)
        finally:
            conn.close()
            self._fail_queued(loop)
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None
            loop.call_soon_threadsafe(self._stopped.set_result, None)

    def _fail_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """Nothing waits forever: fail whatever is still queued when the worker stops."""
        error = StoreError("the SQLite store is closed")
        failed: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                failed.append((item[2], None, error))
        if failed:
            loop.call_soon_threadsafe(self._resolve, failed)

    def _serve(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            results = self._run_batch(conn, batch)
            loop.call_soon_threadsafe(self._resolve, results)
            if stop:
                return

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[_Item]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, args, future in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((future, op(conn, *args), None))
                except (UnknownChat, UnknownRoom, RoomExists) as exc:
                    results.append((future, None, exc))
                except Exception as exc:  # one bad operation must not sink the others
                    conn.execute("ROLLBACK TO op")
                    self._offsets.clear()
                    results.append((future, None, StoreError(f"SQLite failed: {exc!r}")))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            self._offsets.clear()  # counters may be ahead of what was committed
            error = StoreError(f"SQLite failed: {exc}")
            return [(future, None, error) for _, _, future in batch]
        return results

    def _append(
        self,
        conn: sqlite3.Connection,
        room_id: str,
        user_id: str,
        name: str,
        text: str,
        now: int,
        client_msg_id: str | None,
    ) -> Appended:
        if client_msg_id is not None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM messages"
                " WHERE room_id = ? AND user_id = ? AND client_msg_id = ?",
                (room_id, user_id, client_msg_id),
            ).fetchone()
            if row is not None:
                return Appended(_row(row), duplicate=True)
        offset = self._last_offset(conn, room_id) + 1
        (chat_id,) = conn.execute(
            "INSERT INTO messages (room_id, offset, user_id, name, text, created_at, client_msg_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING chat_id",
            (room_id, offset, user_id, name, text, now, client_msg_id),
        ).fetchone()
        # Kept apart from the messages so that deleting the newest one never lets its
        # offset be handed out again (clients resume by offset).
        conn.execute(
            "INSERT INTO room_offsets (room_id, last_offset) VALUES (?, ?)"
            " ON CONFLICT (room_id) DO UPDATE SET last_offset = excluded.last_offset",
            (room_id, offset),
        )
        self._offsets[room_id] = offset
        message = StoredMessage(
            str(chat_id), room_id, offset, user_id, name, text, 0, now, False, client_msg_id
        )
        return Appended(message)

    def _message(self, conn: sqlite3.Connection, room_id: str, chat_id: str) -> StoredMessage:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE chat_id = ? AND room_id = ?",
            (_key(chat_id), room_id),
        ).fetchone()
        if row is None:
            raise UnknownChat(chat_id)
        return _row(row)

    def _vote(
        self, conn: sqlite3.Connection, room_id: str, chat_id: str, user_id: str, delta: int
    ) -> StoredMessage | None:
        self._message(conn, room_id, chat_id)
        key = _key(chat_id)
        if delta > 0:
            sql = "INSERT OR IGNORE INTO votes (chat_id, user_id) VALUES (?, ?)"
        else:
            sql = "DELETE FROM votes WHERE chat_id = ? AND user_id = ?"
        if conn.execute(sql, (key, user_id)).rowcount == 0:
            return None
        conn.execute("UPDATE messages SET upvotes = upvotes + ? WHERE chat_id = ?", (delta, key))
        return self._message(conn, room_id, chat_id)

    def _mark_answered(self, conn: sqlite3.Connection, room_id: str, chat_id: str) -> StoredMessage:
        self._message(conn, room_id, chat_id)
        conn.execute("UPDATE messages SET answered = 1 WHERE chat_id = ?", (_key(chat_id),))
        return self._message(conn, room_id, chat_id)

    def _delete(self, conn: sqlite3.Connection, room_id: str, chat_id: str) -> None:
        self._message(conn, room_id, chat_id)
        conn.execute("DELETE FROM votes WHERE chat_id = ?", (_key(chat_id),))
        conn.execute("DELETE FROM messages WHERE chat_id = ?", (_key(chat_id),))

    def _claim_alert(self, conn: sqlite3.Connection, room_id: str, chat_id: str) -> bool:
        self._message(conn, room_id, chat_id)
        cursor = conn.execute(
            "UPDATE messages SET alerted = 1 WHERE chat_id = ? AND alerted = 0", (_key(chat_id),)
        )
        return cursor.rowcount == 1

    def _pending_alerts(self, conn: sqlite3.Connection, room_id: str) -> list[StoredMessage]:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE room_id = ? AND alerted = 1 AND answered = 0"
            " ORDER BY offset",
            (room_id,),
        ).fetchall()
        return [_row(r) for r in rows]

    def _create_room(self, conn: sqlite3.Connection, room: RoomInfo) -> None:
        try:
            conn.execute(
                f"INSERT INTO rooms ({_ROOM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                msgspec.structs.astuple(room),
            )
        except sqlite3.IntegrityError:
            raise RoomExists(room.room_id) from None

    def _update_room(self, conn: sqlite3.Connection, room: RoomInfo) -> None:
        values = msgspec.structs.astuple(room)
        cursor = conn.execute(
            "UPDATE rooms SET name = ?, start_time = ?, is_open = ?, cooldown_seconds = ?,"
            " medium_threshold = ?, high_threshold = ?, created_at = ?, managed = ?"
            " WHERE room_id = ?",
            (*values[1:], values[0]),
        )
        if cursor.rowcount == 0:
            raise UnknownRoom(room.room_id)

    def _get_room(self, conn: sqlite3.Connection, room_id: str) -> RoomInfo | None:
        row = conn.execute(
            f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
        return None if row is None else _room(row)

    def _list_rooms(self, conn: sqlite3.Connection) -> list[RoomInfo]:
        rows = conn.execute(f"SELECT {_ROOM_COLUMNS} FROM rooms ORDER BY created_at, room_id")
        return [_room(r) for r in rows]

    def _set_mute(self, conn: sqlite3.Connection, room_id: str, user_id: str, until: int) -> None:
        conn.execute(
            "INSERT INTO mutes (room_id, user_id, until) VALUES (?, ?, ?)"
            " ON CONFLICT (room_id, user_id) DO UPDATE SET until = excluded.until",
            (room_id, user_id, until),
        )

    def _mutes(self, conn: sqlite3.Connection, room_id: str) -> dict[str, int]:
        rows = conn.execute("SELECT user_id, until FROM mutes WHERE room_id = ?", (room_id,))
        return {user: until for user, until in rows}

    def _history(
        self,
        conn: sqlite3.Connection,
        room_id: str,
        limit: int,
        voter: str | None,
        alerts: bool,
        after: int | None,
        newest_if_incomplete: bool,
    ) -> HistoryPage:
        complete = True
        limit = max(limit, 0)
        if after is None:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room_id = ? ORDER BY offset DESC LIMIT ?",
                (room_id, limit),
            ).fetchall()
            rows.reverse()
        else:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room_id = ? AND offset > ?"
                " ORDER BY offset LIMIT ?",
                (room_id, after, limit + 1),
            ).fetchall()
            complete = len(rows) <= limit
            rows = rows[:limit]
            if not complete and newest_if_incomplete:  # too many to replay: the newest
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE room_id = ?"
                    " ORDER BY offset DESC LIMIT ?",
                    (room_id, limit),
                ).fetchall()
                rows.reverse()
        messages = [_row(r) for r in rows]
        voted: list[str] = []
        if voter is not None and messages:
            voted_ids = {
                r[0]
                for r in conn.execute(
                    "SELECT v.chat_id FROM votes v JOIN messages m ON m.chat_id = v.chat_id"
                    " WHERE m.room_id = ? AND v.user_id = ? AND m.offset >= ?",
                    (room_id, voter, messages[0].offset),
                )
            }
            voted = [m.chat_id for m in messages if int(m.chat_id) in voted_ids]
        pending = self._pending_alerts(conn, room_id) if alerts else []
        last = self._last_offset(conn, room_id)
        return HistoryPage(messages, last, voted, pending, complete)

    def _last_offset(self, conn: sqlite3.Connection, room_id: str) -> int:
        offset = self._offsets.get(room_id)
        if offset is None:
            (offset,) = conn.execute(
                "SELECT MAX(COALESCE((SELECT last_offset FROM room_offsets WHERE room_id = ?), 0),"
                " COALESCE((SELECT MAX(offset) FROM messages WHERE room_id = ?), 0))",
                (room_id, room_id),
            ).fetchone()
            self._offsets[room_id] = offset
        return int(offset)
