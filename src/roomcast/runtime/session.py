"""One client connection's protocol state: who it is, which rooms it is in.

Commands from one connection are handled one at a time, in order. Replies and room
events go out through the connection's `Outbox`. Every client mistake becomes an
`ERROR` frame; the connection stays usable.
"""

from __future__ import annotations

import logging

from roomcast.config import Settings
from roomcast.core.errors import (
    ClientError,
    ErrorCode,
    StoreError,
    StoreOverloaded,
    UnknownChat,
)
from roomcast.core.protocol import (
    ChatOut,
    JoinRoom,
    LeaveRoom,
    SendMessage,
    UpvoteMessage,
    decode_command,
    encode_add_chat,
    encode_error,
    encode_history,
    encode_left,
    encode_update_chat,
    normalize_id,
)
from roomcast.ports import Store, StoredMessage
from roomcast.runtime.frames import text_frame
from roomcast.runtime.hub import Hub
from roomcast.runtime.outbox import Outbox

log = logging.getLogger("roomcast.session")


def chat_out(m: StoredMessage) -> ChatOut:
    return ChatOut(
        m.chat_id, m.room_id, m.offset, m.user_id, m.name, m.text, m.upvotes, m.created_at
    )


class Session:
    """The server side of one WebSocket connection."""

    def __init__(
        self, *, hub: Hub, store: Store, settings: Settings, outbox: Outbox, conn_id: str
    ) -> None:
        self.hub = hub
        self.store = store
        self.settings = settings
        self.outbox = outbox
        self.conn_id = conn_id
        self.user_id: str | None = None
        self.rooms: dict[str, str] = {}  # room id -> display name used in that room
        self.closed = False

    # ------------------------------------------------------------ entry points

    async def handle_text(self, data: str) -> None:
        """Handle one text frame from the client."""
        try:
            kind, command = decode_command(data)
        except ClientError as exc:
            self.send_error(exc.code, exc.message)
            return
        room_id = normalize_id(command.roomId)
        try:
            if isinstance(command, SendMessage):
                await self._send(command, room_id)
            elif isinstance(command, UpvoteMessage):
                await self._upvote(command, room_id)
            elif isinstance(command, JoinRoom):
                await self._join(command, room_id)
            else:
                self._leave(command, room_id)
        except ClientError as exc:
            self.send_error(exc.code, exc.message, kind=kind, room_id=room_id)
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
        self.send_error(
            ErrorCode.BINARY_NOT_SUPPORTED, "send JSON in text frames; binary frames are refused"
        )

    def close(self) -> None:
        """The connection is gone: leave every room."""
        self.closed = True
        for room_id in self.rooms:
            self.hub.leave(room_id, self.outbox)
        self.rooms.clear()

    def send_error(
        self, code: ErrorCode, message: str, *, kind: str | None = None, room_id: str | None = None
    ) -> None:
        self.outbox.send(text_frame(encode_error(code, message, type=kind, room_id=room_id)))

    # ------------------------------------------------------------ commands

    async def _join(self, command: JoinRoom, room_id: str) -> None:
        user_id = normalize_id(command.userId)
        self._check_user(user_id)
        if room_id not in self.rooms and len(self.rooms) >= self.settings.max_rooms_per_connection:
            raise ClientError(
                ErrorCode.TOO_MANY_ROOMS,
                f"a connection may be in at most {self.settings.max_rooms_per_connection} rooms",
            )
        page = await self.store.history(room_id, self.settings.history_size, voter=user_id)
        # No await from here on: joining the hub right after the atomic history read
        # means the joiner neither misses nor doubles a message appended meanwhile.
        if self.closed:
            return
        self.user_id = user_id
        self.rooms[room_id] = command.name
        self.hub.join(room_id, self.outbox)
        history = [chat_out(m) for m in page.messages]
        self.outbox.send(text_frame(encode_history(room_id, history, page.last_offset, page.voted)))

    async def _send(self, command: SendMessage, room_id: str) -> None:
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
        stored = await self.store.append(room_id, user_id, self.rooms[room_id], text)
        self.hub.publish(room_id, encode_add_chat(chat_out(stored)))

    async def _upvote(self, command: UpvoteMessage, room_id: str) -> None:
        user_id = self._member(command.userId, room_id)
        chat_id = normalize_id(command.chatId)
        try:
            upvotes = await self.store.vote(room_id, chat_id, user_id)
        except UnknownChat:
            raise ClientError(
                ErrorCode.UNKNOWN_CHAT, f"no message {chat_id!r} in room {room_id!r}"
            ) from None
        if upvotes is not None:
            self.hub.publish(room_id, encode_update_chat(chat_id, room_id, upvotes))

    def _leave(self, command: LeaveRoom, room_id: str) -> None:
        if command.userId is not None:
            self._check_user(normalize_id(command.userId))
        if room_id not in self.rooms:
            raise ClientError(ErrorCode.NOT_IN_ROOM, f"not in room {room_id!r}")
        del self.rooms[room_id]
        self.hub.leave(room_id, self.outbox)
        self.outbox.send(text_frame(encode_left(room_id)))

    # ------------------------------------------------------------ checks

    def _check_user(self, user_id: str) -> None:
        if self.user_id is not None and user_id != self.user_id:
            raise ClientError(
                ErrorCode.USER_MISMATCH,
                f"this connection is user {self.user_id!r}, not {user_id!r}",
            )

    def _member(self, raw_user_id: str | int, room_id: str) -> str:
        user_id = normalize_id(raw_user_id)
        if room_id not in self.rooms or self.user_id is None:
            raise ClientError(ErrorCode.NOT_IN_ROOM, f"join room {room_id!r} first")
        self._check_user(user_id)
        return user_id
