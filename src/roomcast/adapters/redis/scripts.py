"""The Redis store's Lua scripts: `lua/*.lua` in this package, loaded once per Redis.

Every script gets one key, the room's key prefix `P` = `<prefix>v1:{<room>}:`, and builds
the room's other key names from it; the hash tag `{<room>}` puts all of them (and the
room's channel) in one Redis Cluster slot. Keys of a room:

- `P seq`     last offset (INCR)           - `P epoch`   the room history's identity
- `P log`     zset offset -> chat id       - `P m`       hash chat id -> packed message
- `P up`      hash chat id -> upvotes      - `P v:<id>`  set of voters of one message
- `P ans`     set of answered chat ids     - `P al`      set of chat ids alerted
- `P cm`      hash user NUL client id -> chat id (retries)
- `P evicted` highest offset dropped by the size or age bound
- `P cd:<user>` cooldown marker (PX)       - `P mutes`   hash user -> muted until (ms)
- `P info`    room settings                - `P ev`      the room's pub/sub channel
- `P pc`, `P pn`, `P pk:<node>`, `P nodes`: presence (see presence_join.lua)

A packed message is msgpack `[chat_id, offset, user, name, text, created_ms, client_id]`.
Scripts answer with a status first; its values are the constants below, which the
loader defines in every script under the same names.
"""

from __future__ import annotations

import importlib.resources
from enum import IntEnum


class Reply(IntEnum):
    """The first element of a script's answer."""

    OK = 0
    COOLDOWN = 1  # append: {COOLDOWN, ms left}
    MUTED = 2  # append: {MUTED, muted until (ms)}
    ID_TAKEN = 3  # append: that chat id exists (the id counter was lost): take new ones
    UNKNOWN = -1  # vote, moderate: no such message
    UNCHANGED = 0  # vote: nothing changed
    CHANGED = 1  # vote, moderate: {CHANGED, packed, upvotes, answered, ...}


def _read(name: str) -> str:
    return importlib.resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


def _constants() -> str:
    members = Reply.__members__.items()  # aliases too (UNCHANGED is OK's value)
    names = [name for name, _ in members]
    values = [str(int(value)) for _, value in members]
    return f"local {', '.join(names)} = {', '.join(values)}\n"


def load_sources() -> dict[str, str]:
    """Script name -> full source, constants (and shared functions) included."""
    head = _constants()
    evict = _read("evict")
    sources = {}
    for name in (
        "append",
        "vote",
        "moderate",
        "history",
        "presence_join",
        "presence_leave",
        "presence_purge",
        "reserve_ids",
    ):
        shared = evict if name in ("append", "moderate") else ""
        sources[name] = head + shared + _read(name)
    return sources
