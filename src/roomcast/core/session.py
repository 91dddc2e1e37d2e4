"""One connection's protocol state, as pure code: who it is, where it is, what it may do.

`ConnectionState` turns a frame into a checked command (or the `ClientError` that
refuses it), keeps the per-connection rate bucket, and knows which user the connection
is and which rooms it joined. It reads no clock (callers pass `now`) and does no I/O:
the runtime's `Session` moves the bytes and calls the node.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import Enum

from roomcast.core.errors import ClientError, ErrorCode
from roomcast.core.guard import TokenBucket
from roomcast.core.protocol import (
    JoinRoom,
    LeaveRoom,
    SendMessage,
    UnvoteMessage,
    UpvoteMessage,
    normalize_id,
)
from roomcast.core.tokens import Identity


@dataclass(frozen=True, slots=True)
class SessionRules:
    """The limits one connection lives by (each a documented setting)."""

    admin_token: str
    max_message_chars: int
    max_message_rate: float
    message_burst: int
    rate_limit_close_after: int
    max_rooms_per_connection: int


class Admission(Enum):
    """What to do with a frame, by the rate limit."""

    HANDLE = "handle"
    DROP = "drop"  # refused quietly (an error was sent for an earlier one)
    REFUSE = "refuse"  # refused: tell the client (ERROR rate_limited)
    CLOSE = "close"  # the client keeps flooding: close with 4029


def token_matches(given: str, expected: str) -> bool:
    """Constant-time token comparison; an empty expected token matches nothing."""
    return bool(expected) and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


class ConnectionState:
    """The protocol state of one connection (see the module doc)."""

    __slots__ = (
        "admin_by_token",
        "bucket",
        "identity",
        "is_admin",
        "jwt",
        "refused",
        "rooms",
        "rules",
        "user_id",
    )

    def __init__(
        self, rules: SessionRules, now: float, *, is_admin: bool = False, jwt: bool = False
    ) -> None:
        self.rules = rules
        self.user_id: str | None = None
        self.is_admin = is_admin
        self.admin_by_token = is_admin  # the admin token, not a token's admin claim
        self.jwt = jwt  # --auth jwt: users are named by tokens
        self.identity: Identity | None = None
        self.rooms: dict[str, str] = {}  # room id -> display name used in that room
        self.bucket = TokenBucket(rules.max_message_rate, rules.message_burst, now)
        self.refused = 0  # rate-limited frames in a row

    # ------------------------------------------------------------ frames

    def admit(self, now: float) -> Admission:
        """Rate limit: whether one more frame may be handled now."""
        if self.bucket.take(now):
            self.refused = 0
            return Admission.HANDLE
        self.refused += 1
        if self.refused >= self.rules.rate_limit_close_after:
            return Admission.CLOSE
        if self.refused == 1 or self.refused % 10 == 0:
            return Admission.REFUSE
        return Admission.DROP

    def rate_message(self) -> str:
        return f"more than {self.rules.max_message_rate:g} messages a second; this one was dropped"

    # ------------------------------------------------------------ identity

    def take_identity(self, identity: Identity) -> None:
        """A verified token names this connection's user (a refreshed one must name the
        same); its admin claim makes the connection an admin, or, without the admin
        token, takes that away."""
        if self.identity is not None and identity.user_id != self.identity.user_id:
            raise ClientError(ErrorCode.USER_MISMATCH, "a refreshed token must name the same user")
        self.identity = identity
        self.is_admin = identity.admin or self.admin_by_token

    def admin_token(self, token: str) -> bool:
        """The admin token makes this connection an admin; True if it matched."""
        if token_matches(token, self.rules.admin_token):
            self.admin_by_token = self.is_admin = True
            return True
        return False

    def require_admin(self) -> None:
        if not self.is_admin:
            raise ClientError(
                ErrorCode.FORBIDDEN, "admins only: connect with ?token= or send AUTH first"
            )

    # ------------------------------------------------------------ commands

    def join(self, command: JoinRoom) -> tuple[str, str, str]:
        """(room id, user id, name) a JOIN_ROOM may join as, or the error refusing it."""
        room_id = normalize_id(command.roomId)
        name = command.name
        if self.identity is not None or (self.jwt and not self.is_admin):
            # --auth jwt: the token names the user (an admin-token connection, which has
            # no user token, names itself in the payload).
            identity = self._require_identity()
            if identity.rooms is not None and not self.is_admin and room_id not in identity.rooms:
                raise ClientError(
                    ErrorCode.FORBIDDEN, f"your token does not allow room {room_id!r}"
                )
            user_id = identity.user_id
            name = identity.name or name
        else:
            user_id = normalize_id(command.userId)
            self.check_user(user_id)
        limit = self.rules.max_rooms_per_connection
        if room_id not in self.rooms and len(self.rooms) >= limit:
            raise ClientError(
                ErrorCode.TOO_MANY_ROOMS, f"a connection may be in at most {limit} rooms"
            )
        return room_id, user_id, name

    def send(self, command: SendMessage) -> tuple[str, str, str]:
        """(room id, user id, text) of a SEND_MESSAGE, or the error refusing it."""
        room_id = normalize_id(command.roomId)
        user_id = self.member(command.userId, room_id)
        text = command.message
        if not text.strip():
            raise ClientError(ErrorCode.MESSAGE_EMPTY, "message is empty")
        limit = self.rules.max_message_chars
        if len(text) > limit:
            raise ClientError(
                ErrorCode.MESSAGE_TOO_LONG,
                f"message has {len(text)} characters; the limit is {limit}",
            )
        return room_id, user_id, text

    def vote(self, command: UpvoteMessage | UnvoteMessage) -> tuple[str, str, str]:
        """(room id, user id, chat id) of a vote, or the error refusing it."""
        room_id = normalize_id(command.roomId)
        return room_id, self.member(command.userId, room_id), normalize_id(command.chatId)

    def leave(self, command: LeaveRoom) -> str:
        """The room a LEAVE_ROOM leaves, or the error refusing it."""
        room_id = normalize_id(command.roomId)
        if command.userId is not None:
            self.check_user(normalize_id(command.userId))
        if room_id not in self.rooms:
            raise ClientError(ErrorCode.NOT_IN_ROOM, f"not in room {room_id!r}")
        return room_id

    def check_user(self, user_id: str) -> None:
        if self.user_id is not None and user_id != self.user_id:
            raise ClientError(
                ErrorCode.USER_MISMATCH,
                f"this connection is user {self.user_id!r}, not {user_id!r}",
            )

    def member(self, raw_user_id: str | int, room_id: str) -> str:
        """The user acting in `room_id`, which this connection must have joined."""
        if room_id not in self.rooms or self.user_id is None:
            raise ClientError(ErrorCode.NOT_IN_ROOM, f"join room {room_id!r} first")
        if self.identity is not None:
            return self.user_id  # --auth jwt: the token's user, whatever the payload says
        user_id = normalize_id(raw_user_id)
        self.check_user(user_id)
        return user_id

    def _require_identity(self) -> Identity:
        if self.identity is None:
            raise ClientError(
                ErrorCode.UNAUTHORIZED,
                "authenticate first: a token in the URL (?token=) or an AUTH message",
            )
        return self.identity
