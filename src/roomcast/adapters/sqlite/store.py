"""An embedded SQLite store: history and votes survive a restart, nothing to install.

All SQLite work runs on one worker thread that owns the connection, so the event loop
never waits for disk I/O. Operations queue in the shared write-batching helper
(`adapters.batching`): the thread takes whatever is queued and runs it in one
transaction (group commit), and the results come back in submission order, in one
hand-off to the loop. The queue is bounded: past `queue_max` pending operations a call
raises `StoreOverloaded` at once.

The database is opened in WAL mode with `synchronous=NORMAL` (a committed message
survives a crash of roomcast; the last transactions may be lost if the machine itself
loses power). An exclusive lock on `PATH.lock` keeps a second roomcast from opening
the same file by mistake and assigning conflicting offsets, while other readers (an
online backup with `sqlite3 PATH ".backup copy.db"`) still can. Opening migrates the
schema (`schema.py`).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from roomcast.adapters.batching import Batcher
from roomcast.adapters.sqlite.queries import Queries
from roomcast.adapters.sqlite.schema import lock_file, migrate
from roomcast.core.errors import RoomExists, StoreError, UnknownChat, UnknownRoom
from roomcast.core.model import Appended, HistoryPage, StoredMessage
from roomcast.core.rooms import RoomInfo

T = TypeVar("T")
Op = tuple[Callable[..., Any], tuple[Any, ...]]  # (a Queries method, its arguments)


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode, WAL, synchronous=NORMAL."""
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqliteStore:
    """Store messages and votes in one SQLite file, written from a worker thread."""

    def __init__(self, path: str, *, queue_max: int = 10_000, batch_max: int = 512) -> None:
        self._path = path
        self._queries = Queries()
        self._conn: sqlite3.Connection | None = None
        self._lock: int | None = None  # fd holding the lock file
        self._epoch: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batcher: Batcher[Op] = Batcher(
            self._flush, name="SQLite store", queue_max=queue_max, batch_max=batch_max
        )

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        executor = self._executor = ThreadPoolExecutor(1, thread_name_prefix="roomcast-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open)
        except (sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            self._executor = None
            raise StoreError(f"cannot open SQLite store {self._path!r}: {exc}") from None
        self._batcher.start()

    def _open(self) -> None:
        self._lock = lock_file(self._path + ".lock")
        try:
            self._conn = connect(self._path)
            _, _, self._epoch = migrate(self._conn)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        await self._batcher.stop()  # finishes what is queued first (bounded)
        self._executor = None
        await asyncio.get_running_loop().run_in_executor(executor, self._release)
        executor.shutdown(wait=True)

    # ------------------------------------------------------------ the port

    async def ping(self) -> None:
        await self._submit(Queries.ping)

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
        q = self._queries
        return await self._submit(q.append, room_id, user_id, name, text, now, client_msg_id)

    async def vote(self, room_id: str, chat_id: str, user_id: str) -> StoredMessage | None:
        return await self._submit(self._queries.vote, room_id, chat_id, user_id, 1)

    async def unvote(self, room_id: str, chat_id: str, user_id: str) -> StoredMessage | None:
        return await self._submit(self._queries.vote, room_id, chat_id, user_id, -1)

    async def mark_answered(self, room_id: str, chat_id: str) -> StoredMessage:
        return await self._submit(self._queries.mark_answered, room_id, chat_id)

    async def delete_message(self, room_id: str, chat_id: str) -> None:
        await self._submit(self._queries.delete, room_id, chat_id)

    async def claim_alert(self, room_id: str, chat_id: str) -> bool:
        return await self._submit(self._queries.claim_alert, room_id, chat_id)

    async def history(
        self,
        room_id: str,
        limit: int,
        voter: str | None = None,
        alerts: bool = False,
        after: int | None = None,
        newest_if_incomplete: bool = False,
    ) -> HistoryPage:
        q = self._queries
        return await self._submit(
            q.history, room_id, limit, voter, alerts, after, newest_if_incomplete
        )

    async def create_room(self, room: RoomInfo) -> RoomInfo:
        await self._submit(self._queries.create_room, room)
        return room

    async def update_room(self, room: RoomInfo) -> None:
        await self._submit(self._queries.update_room, room)

    async def get_room(self, room_id: str) -> RoomInfo | None:
        return await self._submit(self._queries.get_room, room_id)

    async def list_rooms(self) -> list[RoomInfo]:
        return await self._submit(self._queries.list_rooms)

    async def set_mute(self, room_id: str, user_id: str, until_ms: int) -> None:
        await self._submit(self._queries.set_mute, room_id, user_id, until_ms)

    async def mutes(self, room_id: str) -> dict[str, int]:
        return await self._submit(self._queries.mutes, room_id)

    # ------------------------------------------------------------ the worker

    async def _submit(self, op: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("the SQLite store is not open")
        result: T = await self._batcher.submit((op, args))  # type: ignore[assignment]
        return result

    async def _flush(self, batch: list[Op]) -> list[object]:
        if self._executor is None:
            raise StoreError("the SQLite store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_batch, batch)

    def _run_batch(self, batch: list[Op]) -> list[object]:
        """On the worker thread: the batch in one transaction, a savepoint per op."""
        conn = self._conn
        if conn is None:
            return [StoreError("the SQLite store is closed")] * len(batch)
        results: list[object] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, args in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append(op(conn, *args))
                except (UnknownChat, UnknownRoom, RoomExists) as exc:
                    results.append(exc)
                except Exception as exc:  # one bad operation must not sink the others
                    conn.execute("ROLLBACK TO op")
                    self._queries.forget_offsets()
                    results.append(StoreError(f"SQLite failed: {exc!r}"))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            self._queries.forget_offsets()  # counters may be ahead of what was committed
            return [StoreError(f"SQLite failed: {exc}")] * len(batch)
        return results
