"""One client connection's protocol state: who it is, which rooms it is in.

Commands from one connection are handled one at a time, in order. The session checks
what only the connection knows (which user it is, which rooms it joined, whether it is
an admin) and hands the rest to the `Node`. Every client mistake becomes an `ERROR`
frame; the connection stays usable.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from roomcast.core.errors import (
    ClientError,
    CloseCode,
    ErrorCode,
    StoreError,
    StoreOverloaded,
)
from roomcast.core.protocol import (
    Auth,
    AuthOkOut,
    CreateRoom,
    DeleteChat,
    JoinRoom,
    LeaveRoom,
    MarkAnswered,
    MuteUser,
    RoomEventOut,
    RoomIdOut,
    SendMessage,
    UnvoteMessage,
    UpdateRoom,
    UpvoteMessage,
    decode_command,
    encode_error,
    encode_event,
    normalize_id,
)
from roomcast.core.rooms import iso
from roomcast.core.tokens import Identity, TokenVerifier
from roomcast.runtime.frames import text_frame
from roomcast.runtime.guard import TokenBucket
from roomcast.runtime.node import Node
from roomcast.runtime.outbox import Outbox

log = logging.getLogger("roomcast.session")


def _now() -> float:
    return time.monotonic()


def token_matches(given: str, expected: str) -> bool:
    """Constant-time token comparison; an empty expected token matches nothing."""
    return bool(expected) and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


class Session:
    """The server side of one WebSocket connection."""

    __slots__ = (
        "_admin_by_token",
        "_bucket",
        "_close",
        "_expiry",
        "_refused",
        "_verifier",
        "closed",
        "conn_id",
        "identity",
        "is_admin",
        "node",
        "outbox",
        "rooms",
        "settings",
        "user_id",
    )
    # Command type -> handler, shared by all sessions (not rebuilt per connection).
    HANDLERS: ClassVar[dict[type[Any], Callable[[Session, Any], Awaitable[None]]]]

    def __init__(
        self,
        *,
        node: Node,
        outbox: Outbox,
        conn_id: str,
        is_admin: bool = False,
        close: Callable[[int, str], None] = lambda code, reason: None,
        verifier: TokenVerifier | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.node = node
        self.settings = node.settings
        self.outbox = outbox
        self.conn_id = conn_id
        self.user_id: str | None = None
        self.is_admin = is_admin
        self.rooms: dict[str, str] = {}  # room id -> display name used in that room
        self.closed = False
        self._close = close
        self._verifier = verifier  # set in --auth jwt mode
        self.identity: Identity | None = None
        self._admin_by_token = is_admin  # the admin token, not a token's admin claim
        self._expiry: asyncio.TimerHandle | None = None
        settings = node.settings
        self._bucket = TokenBucket(settings.max_message_rate, settings.message_burst, _now())
        self._refused = 0  # rate-limited messages in a row
        if identity is not None:
            self._authenticate(identity)

    # ------------------------------------------------------------ entry points

    def admit(self) -> bool:
        """Rate limit: True if one more frame may be handled now. Refused frames get
        ERROR rate_limited; a connection that keeps flooding is closed with 4029."""
        if self._bucket.take(_now()):
            self._refused = 0
            return True
        self._refused += 1
        if self._refused >= self.settings.rate_limit_close_after:
            self._close(CloseCode.RATE_LIMITED, "too many messages")
        elif self._refused == 1 or self._refused % 10 == 0:
            self.send_error(
                ErrorCode.RATE_LIMITED,
                f"more than {self.settings.max_message_rate:g} messages a second; "
                "this one was dropped",
            )
        return False

    async def handle_text(self, data: str) -> None:
        """Handle one text frame from the client."""
        if self.closed or not self.admit():
            return
        try:
            kind, command = decode_command(data)
        except ClientError as exc:
            self.send_error(exc.code, exc.message)
            return
        self.node.stats.messages_in[kind] += 1
        raw_room = getattr(command, "roomId", None)
        room_id = None if raw_room is None else normalize_id(raw_room)
        client_msg_id = getattr(command, "clientMsgId", None)
        try:
            await Session.HANDLERS[type(command)](self, command)
        except ClientError as exc:
            details = dict(exc.details)
            if client_msg_id is not None:
                details["clientMsgId"] = client_msg_id
            self.send_error(exc.code, exc.message, kind=kind, room_id=room_id, **details)
        except StoreOverloaded:
            self.send_error(
                ErrorCode.OVERLOADED,
                "the server is busy; nothing was done, retry",
                kind=kind,
                room_id=room_id,
            )
        except StoreError as exc:
            log.error("store failed for %s on %s: %s", self.conn_id, kind, exc)
            self.send_error(
                ErrorCode.UNAVAILABLE,
                "storage failed; nothing was done",
                kind=kind,
                room_id=room_id,
            )

    def handle_binary(self) -> None:
        if self.closed or not self.admit():
            return
        self.send_error(
            ErrorCode.BINARY_NOT_SUPPORTED, "send JSON in text frames; binary frames are refused"
        )

    def close(self) -> None:
        """The connection is gone: leave every room."""
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        for room_id in list(self.rooms):
            self.node.leave(self, room_id)

    def send(self, kind: str, payload: Any) -> None:
        self.outbox.send(text_frame(encode_event(kind, payload)))

    def send_error(
        self,
        code: ErrorCode,
        message: str,
        *,
        kind: str | None = None,
        room_id: str | None = None,
        **details: str | int,
    ) -> None:
        self.node.stats.errors[code.value] += 1
        frame = encode_error(code, message, type=kind, room_id=room_id, details=details)
        self.outbox.send(text_frame(frame))

    # ------------------------------------------------------------ participants

    async def _join(self, command: JoinRoom) -> None:
        room_id = normalize_id(command.roomId)
        name = command.name
        if self.identity is not None or (self._verifier is not None and not self.is_admin):
            # --auth jwt: the token names the user (an admin-token connection, which has
            # no user token, names itself in the payload).
            identity = self._require_identity()
            if identity.rooms is not None and not self.is_admin and room_id not in identity.rooms:
                raise ClientError(
                    ErrorCode.FORBIDDEN, f"your token does not allow room {room_id!r}"
                )
            user_id = identity.user_id  # the token names the user, not the payload
            name = identity.name or name
        else:
            user_id = normalize_id(command.userId)
            self._check_user(user_id)
        limit = self.settings.max_rooms_per_connection
        if room_id not in self.rooms and len(self.rooms) >= limit:
            raise ClientError(
                ErrorCode.TOO_MANY_ROOMS, f"a connection may be in at most {limit} rooms"
            )
        await self.node.join(self, room_id, user_id, name, since=command.since, epoch=command.epoch)

    async def _send(self, command: SendMessage) -> None:
        room_id = normalize_id(command.roomId)
        user_id = self._member(command.userId, room_id)
        text = command.message
        if not text.strip():
            raise ClientError(ErrorCode.MESSAGE_EMPTY, "message is empty")
        if len(text) > self.settings.max_message_chars:
            raise ClientError(
                ErrorCode.MESSAGE_TOO_LONG,
                f"message has {len(text)} characters; the limit is "
                f"{self.settings.max_message_chars}",
            )
        await self.node.send(self, room_id, user_id, text, command.clientMsgId)

    async def _upvote(self, command: UpvoteMessage) -> None:
        room_id = normalize_id(command.roomId)
        user_id = self._member(command.userId, room_id)
        await self.node.vote(self, room_id, user_id, normalize_id(command.chatId), up=True)

    async def _unvote(self, command: UnvoteMessage) -> None:
        room_id = normalize_id(command.roomId)
        user_id = self._member(command.userId, room_id)
        await self.node.vote(self, room_id, user_id, normalize_id(command.chatId), up=False)

    async def _leave(self, command: LeaveRoom) -> None:
        room_id = normalize_id(command.roomId)
        if command.userId is not None:
            self._check_user(normalize_id(command.userId))
        if room_id not in self.rooms:
            raise ClientError(ErrorCode.NOT_IN_ROOM, f"not in room {room_id!r}")
        self.node.leave(self, room_id)
        self.send("LEFT_ROOM", RoomIdOut(room_id))

    async def _auth(self, command: Auth) -> None:
        if token_matches(command.token, self.settings.admin_token):
            self._admin_by_token = True
            self._make_admin()
            self.send("AUTH_OK", AuthOkOut(admin=True, userId=self.user_id))
            return
        if self._verifier is None:
            raise ClientError(ErrorCode.UNAUTHORIZED, "that token is not valid")
        identity = self._verifier.verify(command.token)
        if self.identity is not None and identity.user_id != self.identity.user_id:
            raise ClientError(ErrorCode.USER_MISMATCH, "a refreshed token must name the same user")
        self._authenticate(identity)
        self.send(
            "AUTH_OK",
            AuthOkOut(
                admin=self.is_admin,
                userId=identity.user_id,
                expiresAt=iso(int(identity.expires_at * 1000)),
            ),
        )

    def _authenticate(self, identity: Identity) -> None:
        """Take a verified token's identity; (re)arm the close at its expiry."""
        self.identity = identity
        if identity.admin:
            self._make_admin()
        elif not self._admin_by_token:  # a refreshed token without admin takes it away
            self.is_admin = False
            for room_id in self.rooms:
                self.node.admins.leave(room_id, self.outbox)
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, identity.expires_at - time.time())
        self._expiry = loop.call_later(
            delay, self._close, CloseCode.UNAUTHENTICATED, "token expired"
        )

    def _make_admin(self) -> None:
        self.is_admin = True
        for room_id in self.rooms:  # rooms joined before AUTH now get admin alerts too
            self.node.admins.join(room_id, self.outbox)

    def _require_identity(self) -> Identity:
        if self.identity is None:
            raise ClientError(
                ErrorCode.UNAUTHORIZED,
                "authenticate first: a token in the URL (?token=) or an AUTH message",
            )
        return self.identity

    # ------------------------------------------------------------ admins

    def _require_admin(self) -> None:
        if not self.is_admin:
            raise ClientError(
                ErrorCode.FORBIDDEN, "admins only: connect with ?token= or send AUTH first"
            )

    async def _create_room(self, command: CreateRoom) -> None:
        self._require_admin()
        info = await self.node.moderation.create_room(command)
        self.send("ROOM_CREATED", RoomEventOut(self.node.room_out(info)))

    async def _update_room(self, command: UpdateRoom) -> None:
        self._require_admin()
        info = await self.node.moderation.update_room(command)
        if info.room_id not in self.rooms:  # members got ROOM_UPDATED already
            self.send("ROOM_UPDATED", RoomEventOut(self.node.room_out(info)))

    async def _mark_answered(self, command: MarkAnswered) -> None:
        self._require_admin()
        await self.node.moderation.mark_answered(
            normalize_id(command.roomId), normalize_id(command.chatId)
        )

    async def _delete_chat(self, command: DeleteChat) -> None:
        self._require_admin()
        await self.node.moderation.delete_chat(
            normalize_id(command.roomId), normalize_id(command.chatId)
        )

    async def _mute_user(self, command: MuteUser) -> None:
        self._require_admin()
        await self.node.moderation.mute_user(
            normalize_id(command.roomId), normalize_id(command.userId), command.seconds
        )

    # ------------------------------------------------------------ checks

    def _check_user(self, user_id: str) -> None:
        if self.user_id is not None and user_id != self.user_id:
            raise ClientError(
                ErrorCode.USER_MISMATCH,
                f"this connection is user {self.user_id!r}, not {user_id!r}",
            )

    def _member(self, raw_user_id: str | int, room_id: str) -> str:
        if room_id not in self.rooms or self.user_id is None:
            raise ClientError(ErrorCode.NOT_IN_ROOM, f"join room {room_id!r} first")
        if self.identity is not None:
            return self.user_id  # --auth jwt: the token's user, whatever the payload says
        user_id = normalize_id(raw_user_id)
        self._check_user(user_id)
        return user_id


Session.HANDLERS = {
    SendMessage: Session._send,
    UpvoteMessage: Session._upvote,
    UnvoteMessage: Session._unvote,
    JoinRoom: Session._join,
    LeaveRoom: Session._leave,
    Auth: Session._auth,
    CreateRoom: Session._create_room,
    UpdateRoom: Session._update_room,
    MarkAnswered: Session._mark_answered,
    DeleteChat: Session._delete_chat,
    MuteUser: Session._mute_user,
}
