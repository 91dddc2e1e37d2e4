"""The SQLite store's operations: plain functions of a connection, no I/O of their own
beyond it. The store runs them on its worker thread, a batch per transaction."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from roomcast.core.errors import RoomExists, UnknownChat, UnknownRoom
from roomcast.core.model import Appended, HistoryPage, StoredMessage
from roomcast.core.rooms import RoomInfo

_COLUMNS = (
    "chat_id, room_id, offset, user_id, name, text, upvotes, created_at, answered, client_msg_id"
)
_ROOM_COLUMNS = (
    "room_id, name, start_time, is_open, cooldown_seconds, medium_threshold,"
    " high_threshold, created_at, managed"
)


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


def _key(chat_id: str) -> int:
    """The integer primary key of a chat id; -1 (never used) for anything else."""
    return int(chat_id) if chat_id.isdigit() and len(chat_id) < 17 else -1


class Queries:
    """The store's operations, run on the worker thread inside one transaction per
    batch. `offsets` caches each room's last offset (owned by that thread)."""

    def __init__(self) -> None:
        self._offsets: dict[str, int] = {}

    @staticmethod
    def ping(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT 1").fetchone()

    def forget_offsets(self) -> None:
        """A batch failed: the counters may be ahead of what was committed."""
        self._offsets.clear()

    def append(
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
        offset = self.last_offset(conn, room_id) + 1
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

    def message(self, conn: sqlite3.Connection, room_id: str, chat_id: str) -> StoredMessage:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE chat_id = ? AND room_id = ?",
            (_key(chat_id), room_id),
        ).fetchone()
        if row is None:
            raise UnknownChat(chat_id)
        return _row(row)

    def vote(
        self, conn: sqlite3.Connection, room_id: str, chat_id: str, user_id: str, delta: int
    ) -> StoredMessage | None:
        self.message(conn, room_id, chat_id)
        key = _key(chat_id)
        if delta > 0:
            sql = "INSERT OR IGNORE INTO votes (chat_id, user_id) VALUES (?, ?)"
        else:
            sql = "DELETE FROM votes WHERE chat_id = ? AND user_id = ?"
        if conn.execute(sql, (key, user_id)).rowcount == 0:
            return None
        conn.execute("UPDATE messages SET upvotes = upvotes + ? WHERE chat_id = ?", (delta, key))
        return self.message(conn, room_id, chat_id)

    def mark_answered(self, conn: sqlite3.Connection, room_id: str, chat_id: str) -> StoredMessage:
        self.message(conn, room_id, chat_id)
        conn.execute("UPDATE messages SET answered = 1 WHERE chat_id = ?", (_key(chat_id),))
        return self.message(conn, room_id, chat_id)

    def delete(self, conn: sqlite3.Connection, room_id: str, chat_id: str) -> None:
        self.message(conn, room_id, chat_id)
        conn.execute("DELETE FROM votes WHERE chat_id = ?", (_key(chat_id),))
        conn.execute("DELETE FROM messages WHERE chat_id = ?", (_key(chat_id),))

    def claim_alert(self, conn: sqlite3.Connection, room_id: str, chat_id: str) -> bool:
        self.message(conn, room_id, chat_id)
        cursor = conn.execute(
            "UPDATE messages SET alerted = 1 WHERE chat_id = ? AND alerted = 0", (_key(chat_id),)
        )
        return cursor.rowcount == 1

    def pending_alerts(self, conn: sqlite3.Connection, room_id: str) -> list[StoredMessage]:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE room_id = ? AND alerted = 1 AND answered = 0"
            " ORDER BY offset",
            (room_id,),
        ).fetchall()
        return [_row(r) for r in rows]

    def create_room(self, conn: sqlite3.Connection, room: RoomInfo) -> None:
        try:
            conn.execute(
                f"INSERT INTO rooms ({_ROOM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                msgspec.structs.astuple(room),
            )
        except sqlite3.IntegrityError:
            raise RoomExists(room.room_id) from None

    def update_room(self, conn: sqlite3.Connection, room: RoomInfo) -> None:
        values = msgspec.structs.astuple(room)
        cursor = conn.execute(
            "UPDATE rooms SET name = ?, start_time = ?, is_open = ?, cooldown_seconds = ?,"
            " medium_threshold = ?, high_threshold = ?, created_at = ?, managed = ?"
            " WHERE room_id = ?",
            (*values[1:], values[0]),
        )
        if cursor.rowcount == 0:
            raise UnknownRoom(room.room_id)

    def get_room(self, conn: sqlite3.Connection, room_id: str) -> RoomInfo | None:
        row = conn.execute(
            f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
        return None if row is None else _room(row)

    def list_rooms(self, conn: sqlite3.Connection) -> list[RoomInfo]:
        rows = conn.execute(f"SELECT {_ROOM_COLUMNS} FROM rooms ORDER BY created_at, room_id")
        return [_room(r) for r in rows]

    def set_mute(self, conn: sqlite3.Connection, room_id: str, user_id: str, until: int) -> None:
        conn.execute(
            "INSERT INTO mutes (room_id, user_id, until) VALUES (?, ?, ?)"
            " ON CONFLICT (room_id, user_id) DO UPDATE SET until = excluded.until",
            (room_id, user_id, until),
        )

    def mutes(self, conn: sqlite3.Connection, room_id: str) -> dict[str, int]:
        rows = conn.execute("SELECT user_id, until FROM mutes WHERE room_id = ?", (room_id,))
        return {user: until for user, until in rows}

    def history(
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
        pending = self.pending_alerts(conn, room_id) if alerts else []
        last = self.last_offset(conn, room_id)
        return HistoryPage(messages, last, voted, pending, complete)

    def last_offset(self, conn: sqlite3.Connection, room_id: str) -> int:
        offset = self._offsets.get(room_id)
        if offset is None:
            (offset,) = conn.execute(
                "SELECT MAX(COALESCE((SELECT last_offset FROM room_offsets WHERE room_id = ?), 0),"
                " COALESCE((SELECT MAX(offset) FROM messages WHERE room_id = ?), 0))",
                (room_id, room_id),
            ).fetchone()
            self._offsets[room_id] = offset
        return int(offset)
