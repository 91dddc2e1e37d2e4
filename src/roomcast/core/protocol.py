"""The wire protocol: JSON text frames `{"type": ..., "payload": {...}}`.

`decode_command` turns one received text frame into a typed command or raises
`ClientError` with a stable code. `encode_*` functions turn server events into the
bytes of one JSON document; the caller encodes once and sends the same bytes to every
recipient. msgspec does the JSON work: it validates while it decodes and rejects NaN,
Infinity, out-of-range numbers and lone surrogates, so nothing a browser's
`JSON.parse` would refuse is ever accepted or re-broadcast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

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
    since: Annotated[int, Meta(ge=0, le=JS_SAFE_MAX)] | None = None  # resume after offset
    epoch: Annotated[str, Meta(max_length=64)] | None = None  # the epoch `since` is from


ClientMsgId = Annotated[str, Meta(min_length=1, max_length=64)]


class SendMessage(Struct, frozen=True):
    """SEND_MESSAGE: post `message` to a joined room."""

    userId: IdIn
    roomId: IdIn
    message: str
    clientMsgId: ClientMsgId | None = None  # retries with the same id post once


class UpvoteMessage(Struct, frozen=True):
    """UPVOTE_MESSAGE: one vote per user per message."""

    userId: IdIn
    roomId: IdIn
    chatId: IdIn


class LeaveRoom(Struct, frozen=True):
    """LEAVE_ROOM: stop receiving a room's messages."""

    roomId: IdIn
    userId: IdIn | None = None


class UnvoteMessage(Struct, frozen=True):
    """UNVOTE_MESSAGE: withdraw this user's vote."""

    userId: IdIn
    roomId: IdIn
    chatId: IdIn


class Auth(Struct, frozen=True):
    """AUTH: present a token (the admin token) on an open connection."""

    token: Annotated[str, Meta(max_length=4096)]


Threshold = Annotated[int, Meta(ge=1, le=1_000_000)]
Cooldown = Annotated[float, Meta(ge=0, le=86_400)]
IsoTime = Annotated[str, Meta(max_length=64)]


class CreateRoom(Struct, frozen=True):
    """CREATE_ROOM (admin): a new room; omitted fields take their defaults."""

    name: NameIn
    roomId: IdIn | None = None
    startTime: IsoTime | None = None
    isOpen: bool = True
    cooldownSeconds: Cooldown = 0.0
    mediumThreshold: Threshold = 3
    highThreshold: Threshold = 10


class UpdateRoom(Struct, frozen=True):
    """UPDATE_ROOM (admin): change only the fields that are present."""

    roomId: IdIn
    name: NameIn | UnsetType = UNSET
    startTime: IsoTime | UnsetType | None = UNSET  # null clears the start time
    isOpen: bool | UnsetType = UNSET
    cooldownSeconds: Cooldown | UnsetType = UNSET
    mediumThreshold: Threshold | UnsetType = UNSET
    highThreshold: Threshold | UnsetType = UNSET


MessageText = Annotated[str, Meta(min_length=1)]


class PublishMessage(Struct, frozen=True):
    """HTTP API: post a message into a room as a named sender (a bot, a ticker)."""

    name: NameIn
    message: MessageText
    userId: IdIn | None = None  # default: "api:" + name


class BatchItem(Struct, frozen=True):
    """One message of a batch publish."""

    roomId: IdIn
    name: NameIn
    message: MessageText
    userId: IdIn | None = None
    idempotencyKey: ClientMsgId | None = None


class BatchPublish(Struct, frozen=True):
    """HTTP API: many messages, to many rooms, in one request."""

    messages: Annotated[list[BatchItem], Meta(min_length=1, max_length=1000)]


class MarkAnswered(Struct, frozen=True):
    """MARK_ANSWERED (admin)."""

    roomId: IdIn
    chatId: IdIn


class DeleteChat(Struct, frozen=True):
    """DELETE_CHAT (admin)."""

    roomId: IdIn
    chatId: IdIn


class MuteUser(Struct, frozen=True):
    """MUTE_USER (admin): no sending or voting in the room for `seconds` (0 unmutes)."""

    roomId: IdIn
    userId: IdIn
    seconds: Annotated[float, Meta(ge=0, le=365 * 86_400)]


Command = (
    JoinRoom
    | SendMessage
    | UpvoteMessage
    | UnvoteMessage
    | LeaveRoom
    | Auth
    | CreateRoom
    | UpdateRoom
    | MarkAnswered
    | DeleteChat
    | MuteUser
)

COMMAND_TYPES: Final[dict[str, type[Command]]] = {
    "JOIN_ROOM": JoinRoom,
    "SEND_MESSAGE": SendMessage,
    "UPVOTE_MESSAGE": UpvoteMessage,
    "UNVOTE_MESSAGE": UnvoteMessage,
    "LEAVE_ROOM": LeaveRoom,
    "AUTH": Auth,
    "CREATE_ROOM": CreateRoom,
    "UPDATE_ROOM": UpdateRoom,
    "MARK_ANSWERED": MarkAnswered,
    "DELETE_CHAT": DeleteChat,
    "MUTE_USER": MuteUser,
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


class ChatOut(Struct, frozen=True, omit_defaults=True):
    """A chat message as clients see it (ADD_CHAT payload and history entries)."""

    chatId: str
    roomId: str
    offset: int
    userId: str
    name: str
    message: str
    upvotes: int
    priority: str  # normal | medium | high
    answered: bool
    createdAt: int  # milliseconds since the Unix epoch
    clientMsgId: str | None = None


class UpdateChatOut(Struct, frozen=True):
    chatId: str
    roomId: str
    upvotes: int
    priority: str
    answered: bool


class RoomOut(Struct, frozen=True):
    roomId: str
    name: str
    startTime: str | None
    isOpen: bool
    cooldownSeconds: float
    mediumThreshold: int
    highThreshold: int
    state: str  # not_started | open | closed
    memberCount: int


class HistoryOut(Struct, frozen=True, omit_defaults=True):
    roomId: str
    messages: list[ChatOut]
    lastOffset: int
    fromOffset: int  # every existing message with offset > fromOffset is in `messages`
    epoch: str
    votedChatIds: list[str]
    room: RoomOut
    recovered: bool | None = None  # with `since`: whether nothing after it is missing


class RoomEventOut(Struct, frozen=True):
    room: RoomOut


class RoomIdOut(Struct, frozen=True):
    roomId: str


class ChatRefOut(Struct, frozen=True):
    roomId: str
    chatId: str


class AlertOut(Struct, frozen=True):
    roomId: str
    chatId: str
    message: str
    name: str
    upvotes: int


class MutedOut(Struct, frozen=True):
    roomId: str
    userId: str
    until: str


class UserOut(Struct, frozen=True):
    userId: str
    name: str


class PresenceOut(Struct, frozen=True):
    roomId: str
    count: int
    users: list[UserOut]  # at most presence_list_max of them


class UserJoinedOut(Struct, frozen=True):
    roomId: str
    userId: str
    name: str
    count: int


class UserLeftOut(Struct, frozen=True):
    roomId: str
    userId: str
    count: int


class AuthOkOut(Struct, frozen=True, omit_defaults=True):
    admin: bool
    userId: str | None = None
    expiresAt: str | None = None  # --auth jwt: when the token runs out


class ErrorOut(Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    type: str | None = None  # the type of the client message that caused it
    roomId: str | None = None
    retryAfterMs: int | None = None  # cooldown
    startTime: str | None = None  # room_not_started
    until: str | None = None  # muted
    clientMsgId: str | None = None  # of the refused SEND_MESSAGE


class _Event(Struct):
    type: str
    payload: Struct


_encoder: Final = msgspec.json.Encoder()


def encode_event(kind: str, payload: Struct) -> bytes:
    """The JSON bytes of `{"type": kind, "payload": payload}`."""
    return _encoder.encode(_Event(kind, payload))


def encode_error(
    code: ErrorCode,
    message: str,
    *,
    type: str | None = None,
    room_id: str | None = None,
    details: Mapping[str, str | int] | None = None,
) -> bytes:
    extra: dict[str, Any] = dict(details or {})
    return encode_event("ERROR", ErrorOut(code.value, message, type, room_id, **extra))
