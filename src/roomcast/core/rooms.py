"""Room settings and the Q&A rules, as plain data and pure functions.

Nothing here does I/O or reads a clock: callers pass `now_ms`. The runtime calls these
on every send and vote; the tests call them at every boundary.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

from msgspec import Struct

from roomcast.core.errors import ClientError, ErrorCode

Priority = Literal["normal", "medium", "high"]

DEFAULT_MEDIUM: Final = 3
DEFAULT_HIGH: Final = 10


class RoomInfo(Struct, frozen=True):
    """A room's settings. Times are milliseconds since the Unix epoch."""

    room_id: str
    name: str
    start_time: int | None = None  # None: started since creation
    is_open: bool = True
    cooldown_seconds: float = 0.0  # 0: no slow mode
    medium_threshold: int = DEFAULT_MEDIUM
    high_threshold: int = DEFAULT_HIGH
    created_at: int = 0
    managed: bool = False  # created by an admin (not implicitly by a join)


def priority(upvotes: int, room: RoomInfo) -> Priority:
    """The tier of a message with `upvotes` votes in `room`."""
    if upvotes >= room.high_threshold:
        return "high"
    if upvotes >= room.medium_threshold:
        return "medium"
    return "normal"


def check_send(
    room: RoomInfo,
    *,
    now_ms: int,
    last_sent_ms: int | None,
    muted_until_ms: int | None,
    is_admin: bool,
) -> None:
    """Raise the ClientError that refuses a message, or return if it may be sent.

    Admins are exempt from every rule here (they host the room). Otherwise, in order:
    closed, not started, muted, cooldown.
    """
    if is_admin:
        return
    if not room.is_open:
        raise ClientError(ErrorCode.ROOM_CLOSED, f"room {room.room_id!r} is closed")
    if room.start_time is not None and now_ms < room.start_time:
        raise ClientError(
            ErrorCode.ROOM_NOT_STARTED,
            f"room {room.room_id!r} starts at {iso(room.start_time)}",
            startTime=iso(room.start_time),
        )
    check_muted(room, now_ms=now_ms, muted_until_ms=muted_until_ms)
    if room.cooldown_seconds > 0 and last_sent_ms is not None:
        ready_at = last_sent_ms + int(room.cooldown_seconds * 1000)
        if now_ms < ready_at:
            raise ClientError(
                ErrorCode.COOLDOWN,
                f"slow mode: one message per {room.cooldown_seconds:g} s",
                retryAfterMs=ready_at - now_ms,
            )


def state(room: RoomInfo, now_ms: int) -> Literal["not_started", "open", "closed"]:
    """What members can do now: closed (read-only) wins over not started."""
    if not room.is_open:
        return "closed"
    if room.start_time is not None and now_ms < room.start_time:
        return "not_started"
    return "open"


def check_vote(room: RoomInfo, *, now_ms: int, muted_until_ms: int | None, is_admin: bool) -> None:
    """Raise the ClientError that refuses a vote (closed room, muted user), or return."""
    if is_admin:
        return
    if not room.is_open:
        raise ClientError(ErrorCode.ROOM_CLOSED, f"room {room.room_id!r} is closed")
    check_muted(room, now_ms=now_ms, muted_until_ms=muted_until_ms)


def check_muted(room: RoomInfo, *, now_ms: int, muted_until_ms: int | None) -> None:
    if muted_until_ms is not None and now_ms < muted_until_ms:
        raise ClientError(
            ErrorCode.MUTED,
            f"you are muted in room {room.room_id!r} until {iso(muted_until_ms)}",
            until=iso(muted_until_ms),
        )


def iso(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC, e.g. 2026-11-25T18:00:00Z."""
    text = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z").replace(".000Z", "Z")


def parse_iso(text: str) -> int:
    """ISO 8601 with a zone (Z or ±hh:mm) to milliseconds; ValueError otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; add Z or an offset like +01:00")
    return int(moment.timestamp() * 1000)
