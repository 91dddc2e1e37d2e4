"""The delivery order of one room on one node, as pure code: no asyncio, no I/O.

Publications reach a node through the broker duplicated, out of order, with gaps (lost
while a link was down) or from a new history (the store lost the room's history and
began again: a new epoch). A `RoomFeed` turns them into what members can trust: every
message once, in offset order, or a reset announced first.

Each input returns the decisions the caller must carry out, in order:

- `Deliver(offset, item)`: hand the item to the room's members.
- `Fetch(after, announce)`: read the room's history (every message after `after`, or,
  with `after=None`, the newest window) and give the answer to `page()`. Until then the
  feed holds what arrives. With `announce`, members get that page as `ROOM_HISTORY`.
- `Announce(recovered)`: send members the page just given to `page()` as
  `ROOM_HISTORY`; `recovered=False` tells them what they had before is gone or has gaps.
- `Pass(event)`: hand an event without an offset (a vote count, presence, settings) to
  the members. While a fetch is outstanding, events are held too and passed after the
  messages that precede them, so no one sees a vote for a message not shown yet.

| input | condition | decision |
|---|---|---|
| publication (e, o) | e == epoch, o == last + 1 | deliver it |
| publication (e, o) | e == epoch, o <= last | duplicate: drop (counted) |
| publication (e, o) | e == epoch, o > last + 1 | hold it; fetch after `last` |
| publication (e, o) | e is an epoch this feed left | stale: drop (counted) |
| publication (e, o) | another epoch | hold it; fetch the newest, announce |
| page | complete, same epoch, not asked to announce | deliver what follows `last` |
| page | another epoch, incomplete, or asked to announce | announce; `last` = its last |
| reconnected | – | fetch after `last`, announce (votes may have been missed) |
| epoch_seen(e) | e is new | fetch the newest, announce |
| behind(o) | o > last, no fetch outstanding | fetch after `last` |

After a page, held publications are replayed through the same table. The held set is
bounded: past `hold_max` a publication is dropped and the feed fetches (and announces)
once more when the current fetch ends, so nothing is lost silently.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")  # what a message is to the caller
E = TypeVar("E")  # what an event is to the caller

OLD_EPOCHS = 8  # epochs a feed remembers having left, to drop their stragglers


@dataclass(frozen=True, slots=True)
class Deliver(Generic[T]):
    offset: int
    item: T


@dataclass(frozen=True, slots=True)
class Pass(Generic[E]):
    event: E


@dataclass(frozen=True, slots=True)
class Fetch:
    after: int | None  # every message after this offset; None: the newest window
    announce: bool  # members get the page as ROOM_HISTORY


@dataclass(frozen=True, slots=True)
class Announce:
    recovered: bool


Decision = Deliver[T] | Pass[E] | Fetch | Announce


class RoomFeed(Generic[T, E]):
    """One room's delivery state (see the module doc). `epoch` and `last` start from
    the history the node read when it began hosting the room."""

    __slots__ = (
        "_asked",
        "_events",
        "_held",
        "_issued",
        "_old",
        "_refetch",
        "_seq",
        "duplicates",
        "epoch",
        "gaps",
        "hold_max",
        "last",
        "resets",
        "ring",
        "ring_base",
        "stale",
    )

    def __init__(self, epoch: str, last: int, *, hold_max: int = 10_000, ring: int = 256):
        self.epoch = epoch
        self.last = last  # the highest offset delivered (or announced) to members
        self.hold_max = hold_max
        self.ring: deque[tuple[int, T]] = deque(maxlen=ring)  # the latest deliveries
        self.ring_base = last  # the ring holds every delivery after this offset
        self._held: dict[tuple[str, int], tuple[int, T]] = {}  # (epoch, offset) -> (seq, item)
        self._events: list[E] = []  # events held while fetching, in arrival order
        self._asked: Fetch | None = None  # the fetch whose page is awaited
        self._issued = 0  # `_seq` when that fetch was asked for
        self._seq = 0  # publications received
        self._refetch = False  # something was dropped or missed meanwhile: fetch again
        self._old: deque[str] = deque(maxlen=OLD_EPOCHS)
        self.duplicates = 0
        self.stale = 0
        self.gaps = 0
        self.resets = 0

    @property
    def fetching(self) -> bool:
        """Whether a fetch is outstanding (and publications are held meanwhile)."""
        return self._asked is not None

    # ------------------------------------------------------------ inputs

    def accept(self, epoch: str, offset: int, item: T, *, keep: bool = True) -> bool:
        """The table's first row alone, without allocating decisions: True when this is
        the next message of the current epoch (recorded as delivered: the caller hands
        it to members); False when `publication()` must decide. With `keep=False` (no
        joiner can need it: none is reading the history) the ring is not kept and
        starts again after this message, which saves its upkeep on the hot path."""
        if offset != self.last + 1 or epoch != self.epoch or self._asked is not None:
            return False
        if keep:
            self._deliver(offset, item)  # (not counted in _seq: only held ones need it)
        else:
            self.last = self.ring_base = offset
            if self.ring:
                self.ring.clear()
        return True

    def publication(self, epoch: str, offset: int, item: T) -> list[Decision[T, E]]:
        """A message published with (epoch, offset)."""
        self._seq += 1
        if epoch == self.epoch:
            if offset <= self.last:
                self.duplicates += 1
                return []
            if self._asked is None and offset == self.last + 1:
                return [self._deliver(offset, item)]
        elif epoch in self._old:
            self.stale += 1
            return []
        self._hold(epoch, offset, item)
        if self._asked is not None:
            return []
        if epoch == self.epoch:
            self.gaps += 1
            return [self._ask(Fetch(self.last, announce=False))]
        return [self._ask(Fetch(None, announce=True))]

    def event(self, event: E) -> list[Decision[T, E]]:
        """An event without an offset: passed at once, or held while fetching."""
        if self._asked is None:
            return [Pass(event)]
        if len(self._events) >= self.hold_max:
            self._refetch = True  # dropped; the announce after this fetch resends counts
        else:
            self._events.append(event)
        return []

    def page(
        self, epoch: str, last_offset: int, items: list[tuple[int, T]], complete: bool = True
    ) -> list[Decision[T, E]]:
        """The answer to the outstanding `Fetch`: the history's epoch, its last offset,
        the messages read (oldest first) and whether they are all that was asked for."""
        asked = self._asked
        if asked is None:
            raise RuntimeError("page() without a fetch")
        self._asked = None
        out: list[Decision[T, E]] = []
        same = epoch == self.epoch
        if same and complete and not asked.announce:
            for offset, item in items:  # oldest first; deleted messages leave holes
                if offset > self.last:
                    out.append(self._deliver(offset, item))
            self.last = max(self.last, last_offset)
        else:
            recovered = same and complete
            if not same:
                self._old.append(self.epoch)
                self.epoch = epoch
            if not recovered:
                self.resets += 1
            out.append(Announce(recovered))
            self.last = last_offset
            self.ring.clear()
            self.ring_base = last_offset
        if self._refetch:
            self._refetch = False
            out.append(self._ask(Fetch(self.last, announce=True)))
            return out
        out.extend(self._replay())
        return out

    def reconnected(self) -> list[Decision[T, E]]:
        """The broker's link was down: publications may have been lost meanwhile."""
        if self._asked is not None:
            self._refetch = True  # the current fetch may have read before the loss
            return []
        return [self._ask(Fetch(self.last, announce=True))]

    def epoch_seen(self, epoch: str) -> list[Decision[T, E]]:
        """A history read elsewhere (a joiner's) showed `epoch`: if it is new, the
        room's history was lost and begun again: announce it (after the fetch under
        way, if there is one)."""
        if epoch == self.epoch or epoch in self._old:
            return []
        if self._asked is not None:
            self._refetch = True
            return []
        return [self._ask(Fetch(None, announce=True))]

    def left(self, epoch: str) -> bool:
        """Whether `epoch` is one this feed has left behind (a history lost since)."""
        return epoch in self._old

    def behind(self, offset: int) -> list[Decision[T, E]]:
        """A history read showed messages up to `offset` that no publication brought
        (their publisher stopped between storing and publishing): fetch them."""
        if offset <= self.last or self._asked is not None:
            return []
        self.gaps += 1
        return [self._ask(Fetch(self.last, announce=False))]

    # ------------------------------------------------------------ joiners

    def since(self, offset: int) -> list[T] | None:
        """What was delivered after `offset`, or None when the ring does not reach back
        that far (the caller then reads the history)."""
        if offset < self.ring_base:
            return None
        return [item for o, item in self.ring if o > offset]

    # ------------------------------------------------------------ internals

    def _deliver(self, offset: int, item: T) -> Deliver[T]:
        ring = self.ring
        if len(ring) == ring.maxlen:
            self.ring_base = ring[0][0]
        ring.append((offset, item))
        self.last = offset
        return Deliver(offset, item)

    def _ask(self, fetch: Fetch) -> Fetch:
        self._asked = fetch
        self._issued = self._seq
        return fetch

    def _hold(self, epoch: str, offset: int, item: T) -> None:
        if len(self._held) >= self.hold_max:
            self._refetch = True  # dropped here; the history has it
            return
        self._held.setdefault((epoch, offset), (self._seq, item))

    def _replay(self) -> list[Decision[T, E]]:
        """Run the held publications through the table again, after a page."""
        held, self._held = self._held, {}
        out: list[Decision[T, E]] = []
        current = sorted((o, v) for (e, o), v in held.items() if e == self.epoch)
        others = [(e, o, v) for (e, o), v in held.items() if e != self.epoch]
        for i, (offset, (_, item)) in enumerate(current):
            if offset <= self.last:
                self.duplicates += 1
            elif offset == self.last + 1:
                out.append(self._deliver(offset, item))
            else:  # a gap again: hold the rest and fetch it
                for later, value in current[i:]:
                    self._held[(self.epoch, later)] = value
                self._held.update({(e, o): v for e, o, v in others})
                self.gaps += 1
                out.append(self._ask(Fetch(self.last, announce=False)))
                return out
        for n, (epoch, _, (seq, _)) in enumerate(others):
            if epoch in self._old or seq <= self._issued:
                # Received before the page was read, which showed another epoch: the
                # history it belongs to is gone.
                self.stale += 1
                if epoch not in self._old:
                    self._old.append(epoch)
                continue
            self._held.update({(e, o): v for e, o, v in others[n:]})
            out.append(self._ask(Fetch(None, announce=True)))
            return out
        events, self._events = self._events, []
        out.extend(Pass(event) for event in events)
        return out
