"""The wire protocol: JSON text frames `{"type": ..., "payload": {...}}`.

`decode_command` turns one received text frame into a typed command or raises
`ClientError` with a stable code. `encode_*` functions turn server events into the
bytes of one JSON document; the caller encodes once and sends the same bytes to every
recipient. msgspec does the JSON work: it validates while it decodes and rejects NaN,
Infinity, out-of-range numbers and lone surrogates, so nothing a browser's
`JSON.parse` would refuse is ever accepted or re-broadcast.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from msgspec import Meta, Raw, Struct

from roomcast.core.errors import ClientError, ErrorCode

MAX_ID_CHARS: Final = 64
MAX_NAME_CHARS: Final = 64
JS_SAFE_MAX: Final = 2**53 - 1

# Ids arrive as JSON strings or integers (the reference page sends numbers); they are
# strings everywhere inside the server and on the way out.
IdIn = (
    Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
    | Annotated[int, Meta(ge=-JS_SAFE_MAX, le=JS_SAFE_MAX)]
)
NameIn = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]


# ---------------------------------------------------------------- client -> server


class JoinRoom(Struct, frozen=True):
    """JOIN_ROOM: bind the connection to `userId` and join `roomId`."""

    name: NameIn
    userId: IdIn
    roomId: IdIn


class SendMessage(Struct, frozen=True):
    """SEND_MESSAGE: post `message` to a joined room."""

    userId: IdIn
    roomId: IdIn
    message: str


class UpvoteMessage(Struct, frozen=True):
    """UPVOTE_MESSAGE: one vote per user per message."""

    userId: IdIn
    roomId: IdIn
    chatId: IdIn


class LeaveRoom(Struct, frozen=True):
    """LEAVE_ROOM: stop receiving a room's messages."""

    roomId: IdIn
    userId: IdIn | None = None


Command = JoinRoom | SendMessage | UpvoteMessage | LeaveRoom

COMMAND_TYPES: Final[dict[str, type[Command]]] = {
    "JOIN_ROOM": JoinRoom,
    "SEND_MESSAGE": SendMessage,
    "UPVOTE_MESSAGE": UpvoteMessage,
    "LEAVE_ROOM": LeaveRoom,
}


class _Envelope(Struct):
    type: str
    payload: Raw = Raw(b"null")


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_payload_decoders: Final = {name: msgspec.json.Decoder(cls) for name, cls in COMMAND_TYPES.items()}


def decode_command(data: str | bytes) -> tuple[str, Command]:
    """Decode one text frame into `(type, command)`.

    Raises `ClientError` with BAD_JSON, BAD_MESSAGE, UNKNOWN_TYPE or INVALID_PAYLOAD.
    Never raises anything else for any input.
    """
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ClientError(
            ErrorCode.BAD_MESSAGE, f'expected {{"type": string, "payload": object}}: {exc}'
        ) from None
    except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
        raise ClientError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    decoder = _payload_decoders.get(envelope.type)
    if decoder is None:
        raise ClientError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {envelope.type!r}")
    try:
        return envelope.type, decoder.decode(envelope.payload)
    except msgspec.ValidationError as exc:
        raise ClientError(ErrorCode.INVALID_PAYLOAD, f"{envelope.type}: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:  # pragma: no cover - Raw is valid JSON
        raise ClientError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None


def normalize_id(value: str | int) -> str:
    """Ids are strings inside the server; integers become their decimal text."""
    return value if isinstance(value, str) else str(value)


# ---------------------------------------------------------------- server -> client


class ChatOut(Struct, frozen=True):
    """A chat message as clients see it (ADD_CHAT payload and history entries)."""

    chatId: str
    roomId: str
    offset: int
    userId: str
    name: str
    message: str
    upvotes: int
    createdAt: int  # milliseconds since the Unix epoch


class UpdateChatOut(Struct, frozen=True):
    chatId: str
    roomId: str
    upvotes: int


class HistoryOut(Struct, frozen=True):
    roomId: str
    messages: list[ChatOut]
    lastOffset: int
    votedChatIds: list[str]


class LeftOut(Struct, frozen=True):
    roomId: str


class ErrorOut(Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    type: str | None = None  # the type of the client message that caused it
    roomId: str | None = None


class _AddChat(Struct, tag="ADD_CHAT", tag_field="type"):
    payload: ChatOut


class _UpdateChat(Struct, tag="UPDATE_CHAT", tag_field="type"):
    payload: UpdateChatOut


class _History(Struct, tag="ROOM_HISTORY", tag_field="type"):
    payload: HistoryOut


class _Left(Struct, tag="LEFT_ROOM", tag_field="type"):
    payload: LeftOut


class _Error(Struct, tag="ERROR", tag_field="type"):
    payload: ErrorOut


_encoder: Final = msgspec.json.Encoder()


def encode_add_chat(chat: ChatOut) -> bytes:
    return _encoder.encode(_AddChat(chat))


def encode_update_chat(chat_id: str, room_id: str, upvotes: int) -> bytes:
    return _encoder.encode(_UpdateChat(UpdateChatOut(chat_id, room_id, upvotes)))


def encode_history(
    room_id: str, messages: list[ChatOut], last_offset: int, voted: list[str]
) -> bytes:
    return _encoder.encode(_History(HistoryOut(room_id, messages, last_offset, voted)))


def encode_left(room_id: str) -> bytes:
    return _encoder.encode(_Left(LeftOut(room_id)))


def encode_error(
    code: ErrorCode, message: str, *, type: str | None = None, room_id: str | None = None
) -> bytes:
    return _encoder.encode(_Error(ErrorOut(code.value, message, type, room_id)))
