"""Who is in which room on this node, counted per user, not per connection."""

from __future__ import annotations


class _Member:
    __slots__ = ("connections", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 1


class Presence:
    """room id -> user id -> display name and number of that user's connections."""

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, _Member]] = {}

    def add(self, room_id: str, user_id: str, name: str) -> bool:
        """Count one more connection of `user_id`; True if it is the user's first."""
        users = self._rooms.setdefault(room_id, {})
        member = users.get(user_id)
        if member is None:
            users[user_id] = _Member(name)
            return True
        member.name = name
        member.connections += 1
        return False

    def remove(self, room_id: str, user_id: str) -> bool:
        """Count one connection fewer; True if it was the user's last."""
        users = self._rooms.get(room_id)
        member = users.get(user_id) if users else None
        if users is None or member is None:
            return False
        member.connections -= 1
        if member.connections > 0:
            return False
        del users[user_id]
        if not users:
            del self._rooms[room_id]
        return True

    def count(self, room_id: str) -> int:
        return len(self._rooms.get(room_id, ()))

    def users(self, room_id: str, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` (user id, name) pairs, in joining order."""
        out: list[tuple[str, str]] = []
        for user_id, member in self._rooms.get(room_id, {}).items():
            if len(out) >= limit:
                break
            out.append((user_id, member.name))
        return out
