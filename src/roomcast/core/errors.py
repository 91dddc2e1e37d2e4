"""Error codes sent to clients and the project's exception base.

Every code here is stable and documented in docs/protocol.md. Close codes for the
WebSocket layer live here too so the whole vocabulary is in one place.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    """`ERROR.code` values. The client did something wrong unless noted."""

    BAD_JSON = "bad_json"  # frame is not valid UTF-8 JSON (or holds NaN, lone surrogates...)
    BAD_MESSAGE = "bad_message"  # JSON, but not {"type": str, "payload": {...}}
    UNKNOWN_TYPE = "unknown_type"  # "type" names no client message
    INVALID_PAYLOAD = "invalid_payload"  # a field is missing, mistyped or out of range
    BINARY_NOT_SUPPORTED = "binary_not_supported"  # binary frames carry nothing here
    MESSAGE_EMPTY = "message_empty"  # chat text is empty or only white space
    MESSAGE_TOO_LONG = "message_too_long"  # chat text is over the configured limit
    NOT_IN_ROOM = "not_in_room"  # send/vote/leave in a room this connection has not joined
    USER_MISMATCH = "user_mismatch"  # payload userId differs from the connection's user
    UNKNOWN_CHAT = "unknown_chat"  # no message with that chatId in that room
    TOO_MANY_ROOMS = "too_many_rooms"  # connection is in the maximum number of rooms
    UNAUTHORIZED = "unauthorized"  # AUTH with a wrong or missing token
    FORBIDDEN = "forbidden"  # an admin-only action by a non-admin connection
    ROOM_NOT_FOUND = "room_not_found"  # managed rooms: the room does not exist
    ROOM_EXISTS = "room_exists"  # CREATE_ROOM for an id that is taken
    ROOM_NOT_STARTED = "room_not_started"  # send before the room's startTime
    ROOM_CLOSED = "room_closed"  # send or vote in a closed (read-only) room
    COOLDOWN = "cooldown"  # slow mode: too soon after this user's last message
    MUTED = "muted"  # an admin muted this user in this room
    TOO_MANY_CONNECTIONS = "too_many_connections"  # HTTP 429 before the upgrade
    RATE_LIMITED = "rate_limited"  # more messages than max_message_rate allows
    OVERLOADED = "overloaded"  # server-side: the store queue is full; retry later
    UNAVAILABLE = "unavailable"  # server-side: storage failed; nothing was posted
    INTERNAL_ERROR = "internal_error"  # server-side: a bug; the connection stays usable


class CloseCode(IntEnum):
    """WebSocket close codes the server uses."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    MESSAGE_TOO_BIG = 1009  # a frame or message over max_frame_bytes
    UNAUTHENTICATED = 4001  # --auth jwt: no valid token in time, or it expired unrefreshed
    SLOW_CONSUMER = 4008  # the client did not read fast enough; reconnect and resume
    RATE_LIMITED = 4029  # kept sending far over the message rate


class RoomcastError(Exception):
    """Base of every exception roomcast raises on purpose."""


class ClientError(RoomcastError):
    """The peer sent something we refuse; carries the code sent back in ERROR."""

    def __init__(self, code: ErrorCode, message: str, **details: str | int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details  # extra ERROR payload fields, e.g. retryAfterMs


class StoreError(RoomcastError):
    """The storage backend failed or is overloaded (our side, not the client's)."""


class StoreOverloaded(StoreError):
    """The store's bounded queue is full; the operation was not accepted."""


class UnknownChat(RoomcastError):
    """A chatId that does not exist in that room."""


class UnknownRoom(RoomcastError):
    """A room id that does not exist."""


class RoomExists(RoomcastError):
    """A room id that is already taken."""
