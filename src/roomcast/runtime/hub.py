"""Local fan-out: which outboxes are in which room, and delivery to all of them."""

from __future__ import annotations

from roomcast.runtime.frames import text_frame
from roomcast.runtime.outbox import Outbox


class Hub:
    """Rooms of this process. A room exists while it has at least one member."""

    __slots__ = ("_rooms", "deliveries", "publishes")

    def __init__(self) -> None:
        self._rooms: dict[str, dict[Outbox, None]] = {}
        self.publishes = 0  # events published (one per message, vote, ...)
        self.deliveries = 0  # frames handed to outboxes

    def join(self, room_id: str, box: Outbox) -> None:
        members = self._rooms.get(room_id)
        if members is None:
            members = self._rooms[room_id] = {}
        members[box] = None

    def leave(self, room_id: str, box: Outbox) -> None:
        members = self._rooms.get(room_id)
        if members is None:
            return
        members.pop(box, None)
        if not members:
            del self._rooms[room_id]

    def publish(self, room_id: str, payload: bytes) -> int:
        """Send one JSON document to every member; encode the frame once. Returns the
        number of recipients."""
        members = self._rooms.get(room_id)
        if not members:
            return 0
        frame = text_frame(payload)
        for box in members:
            box.send(frame)
        self.publishes += 1
        self.deliveries += len(members)
        return len(members)

    def room_count(self) -> int:
        return len(self._rooms)

    def member_count(self, room_id: str) -> int:
        return len(self._rooms.get(room_id, ()))
