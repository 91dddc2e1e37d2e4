"""What travels between nodes on a room's channel: publications, and their bytes.

A node publishes one `Publication` per event of a room; every node hosting the room
(the publisher included) receives it and delivers it to its members. In one process
(`LocalBroker`) the objects pass as they are; between processes they are encoded here,
and only here:

    byte 0      format version (`VERSION`)
    byte 1      kind: m chat, e event, a admin alert, p presence, r room, u mute
    bytes 2..   the body, by kind:
      m   msgpack [epoch, chat_id, offset, user_id, name, text, created_ms, client_msg_id]
          (the Redis append script writes this one itself)
      e a the event document (JSON) as members get it
      p   msgpack [count, event document]
      r   the room's settings (RoomInfo) as JSON
      u   msgpack [user_id, muted_until_ms]

Version rule: a change that an older node would misread gets a new `VERSION`. A node
ignores, and counts, publications of a version it does not know, so nodes can be
upgraded one at a time (the room's history fills what the old ones miss).
"""

from __future__ import annotations

import msgspec

from roomcast.core.model import StoredMessage
from roomcast.core.rooms import RoomInfo

VERSION = 1


class ChatPub(msgspec.Struct, frozen=True, gc=False):
    """A new message, at (epoch, offset) of the room's history."""

    room_id: str
    epoch: str
    message: StoredMessage


class EventPub(msgspec.Struct, frozen=True, gc=False):
    """An event document for every member (`admins`: for the room's admins only)."""

    room_id: str
    document: bytes
    admins: bool = False


class PresencePub(msgspec.Struct, frozen=True, gc=False):
    """USER_JOINED or USER_LEFT, with the room's user count after it."""

    room_id: str
    count: int
    document: bytes


class RoomPub(msgspec.Struct, frozen=True, gc=False):
    """The room's settings changed."""

    room_id: str
    info: RoomInfo


class MutePub(msgspec.Struct, frozen=True, gc=False):
    room_id: str
    user_id: str
    until_ms: int


# (gc=False: a publication holds no reference cycle, so the collector need not track it)
Publication = ChatPub | EventPub | PresencePub | RoomPub | MutePub


class WireError(ValueError):
    """Bytes that are not a publication of a known version."""


class UnknownVersion(WireError):
    """A publication from a newer (or foreign) node: ignored and counted."""


class _Chat(msgspec.Struct, array_like=True, frozen=True):
    epoch: str
    chat_id: str
    offset: int
    user_id: str
    name: str
    text: str
    created_at: int
    client_msg_id: str


class _Presence(msgspec.Struct, array_like=True, frozen=True):
    count: int
    document: bytes


class _Mute(msgspec.Struct, array_like=True, frozen=True):
    user_id: str
    until_ms: int


_pack = msgspec.msgpack.Encoder().encode
_chat = msgspec.msgpack.Decoder(_Chat).decode
_presence = msgspec.msgpack.Decoder(_Presence).decode
_mute = msgspec.msgpack.Decoder(_Mute).decode
_room = msgspec.json.Decoder(RoomInfo).decode
_HEAD = bytes([VERSION])


def encode(pub: Publication) -> bytes:
    """The bytes of a publication (its room is the channel's, so it is not in them)."""
    if isinstance(pub, ChatPub):
        m = pub.message
        body = _Chat(
            pub.epoch, m.chat_id, m.offset, m.user_id, m.name, m.text, m.created_at,
            m.client_msg_id or "",
        )  # fmt: skip
        return _HEAD + b"m" + _pack(body)
    if isinstance(pub, EventPub):
        return _HEAD + (b"a" if pub.admins else b"e") + pub.document
    if isinstance(pub, PresencePub):
        return _HEAD + b"p" + _pack(_Presence(pub.count, pub.document))
    if isinstance(pub, RoomPub):
        return _HEAD + b"r" + msgspec.json.encode(pub.info)
    return _HEAD + b"u" + _pack(_Mute(pub.user_id, pub.until_ms))


def decode(room_id: str, data: bytes) -> Publication:
    """The publication in `data`, received on `room_id`'s channel. Raises
    `UnknownVersion` for another format version, `WireError` for malformed bytes."""
    if len(data) < 2:
        raise WireError("publication too short")
    if data[0] != VERSION:
        raise UnknownVersion(f"publication format version {data[0]}")
    kind, body = data[1:2], data[2:]
    try:
        if kind == b"m":
            c = _chat(body)
            message = StoredMessage(
                c.chat_id, room_id, c.offset, c.user_id, c.name, c.text, 0, c.created_at,
                False, c.client_msg_id or None,
            )  # fmt: skip
            return ChatPub(room_id, c.epoch, message)
        if kind in (b"e", b"a"):
            return EventPub(room_id, body, kind == b"a")
        if kind == b"p":
            p = _presence(body)
            return PresencePub(room_id, p.count, p.document)
        if kind == b"r":
            return RoomPub(room_id, _room(body))
        if kind == b"u":
            u = _mute(body)
            return MutePub(room_id, u.user_id, u.until_ms)
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed {kind!r} publication: {exc}") from None
    raise WireError(f"unknown publication kind {kind!r}")
