"""The server side of one WebSocket connection: bytes in, node calls, frames out.

What a frame means, and whether this connection may do it, is decided by the pure
`core.session.ConnectionState`; this class carries the decisions out: it calls the
`Node` (commands from one connection are handled one at a time, in order), sends
replies and errors to the connection's `Outbox`, and arms the close at a token's
expiry. Every client mistake becomes an `ERROR` frame; the connection stays usable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from roomcast.core.errors import ClientError, CloseCode, ErrorCode, StoreError, StoreOverloaded
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
from roomcast.core.session import Admission, ConnectionState, SessionRules, token_matches
from roomcast.core.tokens import Identity, TokenVerifier
from roomcast.runtime.frames import text_frame
from roomcast.runtime.limits import SessionLimits
from roomcast.runtime.node import Node
from roomcast.runtime.outbox import Outbox

log = logging.getLogger("roomcast.session")

__all__ = ["Session", "rules_of", "token_matches"]


def rules_of(settings: SessionLimits) -> SessionRules:
    return SessionRules(
        settings.admin_token,
        settings.max_message_chars,
        settings.max_message_rate,
        settings.message_burst,
        settings.rate_limit_close_after,
        settings.max_rooms_per_connection,
    )


class Session:
    """One connection: its `ConnectionState`, its outbox, and the node it talks to."""

    __slots__ = (
        "_close",
        "_expiry",
        "_verifier",
        "closed",
        "conn_id",
        "is_admin",
        "node",
        "outbox",
        "rooms",
        "state",
    )
    # Command type -> handler, shared by all sessions (not rebuilt per connection).
    HANDLERS: ClassVar[dict[type[Any], Callable[[Session, Any], Awaitable[None]]]]

    def __init__(
        self,
        *,
        node: Node,
        outbox: Outbox,
        conn_id: str,
        rules: SessionRules,
        is_admin: bool = False,
        close: Callable[[int, str], None] = lambda code, reason: None,
        verifier: TokenVerifier | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.node = node
        self.outbox = outbox
        self.conn_id = conn_id
        self.closed = False
        self.state = ConnectionState(
            rules, time.monotonic(), is_admin=is_admin, jwt=verifier is not None
        )
        # Read on every command by the node: plain attributes, kept equal to the state's.
        self.rooms = self.state.rooms  # the same dict
        self.is_admin = self.state.is_admin
        self._close = close
        self._verifier = verifier  # set in --auth jwt mode
        self._expiry: asyncio.TimerHandle | None = None
        if identity is not None:
            self._authenticate(identity)

    # What the node reads of a member (`runtime.delivery.Member`).
    @property
    def user_id(self) -> str | None:
        return self.state.user_id

    @user_id.setter
    def user_id(self, value: str | None) -> None:
        self.state.user_id = value

    @property
    def identity(self) -> Identity | None:
        return self.state.identity

    # ------------------------------------------------------------ entry points

    def admit(self) -> bool:
        """Rate limit: True if one more frame may be handled now. Refused frames get
        ERROR rate_limited; a connection that keeps flooding is closed with 4029."""
        state = self.state
        if not state.refused and state.bucket.take(time.monotonic()):
            return True  # the common case, without the refusal bookkeeping
        verdict = state.admit(time.monotonic())
        if verdict is Admission.HANDLE:
            return True
        if verdict is Admission.CLOSE:
            self._close(CloseCode.RATE_LIMITED, "too many messages")
        elif verdict is Admission.REFUSE:
            self.send_error(ErrorCode.RATE_LIMITED, self.state.rate_message())
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
        try:
            await Session.HANDLERS[type(command)](self, command)
        except ClientError as exc:
            details = dict(exc.details)
            client_msg_id = getattr(command, "clientMsgId", None)
            if client_msg_id is not None:
                details["clientMsgId"] = client_msg_id
            self.send_error(exc.code, exc.message, kind=kind, room_id=_room(command), **details)
        except StoreOverloaded:
            message = "the server is busy; nothing was done, retry"
            self.send_error(ErrorCode.OVERLOADED, message, kind=kind, room_id=_room(command))
        except StoreError as exc:
            log.error("store failed for %s on %s: %s", self.conn_id, kind, exc)
            message = "storage failed; nothing was done"
            self.send_error(ErrorCode.UNAVAILABLE, message, kind=kind, room_id=_room(command))

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
        room_id, user_id, name = self.state.join(command)
        await self.node.join(self, room_id, user_id, name, since=command.since, epoch=command.epoch)

    async def _send(self, command: SendMessage) -> None:
        room_id, user_id, text = self.state.send(command)
        await self.node.send(self, room_id, user_id, text, command.clientMsgId)

    async def _upvote(self, command: UpvoteMessage) -> None:
        room_id, user_id, chat_id = self.state.vote(command)
        await self.node.vote(self, room_id, user_id, chat_id, up=True)

    async def _unvote(self, command: UnvoteMessage) -> None:
        room_id, user_id, chat_id = self.state.vote(command)
        await self.node.vote(self, room_id, user_id, chat_id, up=False)

    async def _leave(self, command: LeaveRoom) -> None:
        room_id = self.state.leave(command)
        self.node.leave(self, room_id)
        self.send("LEFT_ROOM", RoomIdOut(room_id))

    async def _auth(self, command: Auth) -> None:
        if self.state.admin_token(command.token):
            self.is_admin = True
            self._admin_hubs(join=True)
            self.send("AUTH_OK", AuthOkOut(admin=True, userId=self.user_id))
            return
        if self._verifier is None:
            raise ClientError(ErrorCode.UNAUTHORIZED, "that token is not valid")
        identity = self._verifier.verify(command.token)
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
        self.state.take_identity(identity)
        self.is_admin = self.state.is_admin
        self._admin_hubs(join=self.is_admin)
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, identity.expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(
            delay, self._close, CloseCode.UNAUTHENTICATED, "token expired"
        )

    def _admin_hubs(self, *, join: bool) -> None:
        """Rooms joined before becoming an admin now get admin alerts too (or stop)."""
        admins = self.node.admins
        for room_id in self.rooms:
            if join:
                admins.join(room_id, self.outbox)
            else:
                admins.leave(room_id, self.outbox)

    # ------------------------------------------------------------ admins

    async def _create_room(self, command: CreateRoom) -> None:
        self.state.require_admin()
        info = await self.node.moderation.create_room(command)
        self.send("ROOM_CREATED", RoomEventOut(self.node.room_out(info)))

    async def _update_room(self, command: UpdateRoom) -> None:
        self.state.require_admin()
        info = await self.node.moderation.update_room(command)
        if info.room_id not in self.rooms:  # members got ROOM_UPDATED already
            self.send("ROOM_UPDATED", RoomEventOut(self.node.room_out(info)))

    async def _mark_answered(self, command: MarkAnswered) -> None:
        self.state.require_admin()
        room_id, chat_id = normalize_id(command.roomId), normalize_id(command.chatId)
        await self.node.moderation.mark_answered(room_id, chat_id)

    async def _delete_chat(self, command: DeleteChat) -> None:
        self.state.require_admin()
        room_id, chat_id = normalize_id(command.roomId), normalize_id(command.chatId)
        await self.node.moderation.delete_chat(room_id, chat_id)

    async def _mute_user(self, command: MuteUser) -> None:
        self.state.require_admin()
        room_id, user_id = normalize_id(command.roomId), normalize_id(command.userId)
        await self.node.moderation.mute_user(room_id, user_id, command.seconds)


def _room(command: Any) -> str | None:
    """The room a refused command named, for its ERROR frame (read only on refusal)."""
    raw = getattr(command, "roomId", None)
    return None if raw is None else normalize_id(raw)


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
