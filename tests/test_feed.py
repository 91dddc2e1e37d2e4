"""The room feed (core/feed.py): unit cases from its table, and property tests that
any interleaving of publications, duplicates, losses, delays, reconnects and lost
histories delivers each message once, in offset order, or announces the reset first."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.core.feed import Announce, Deliver, Fetch, Pass, RoomFeed

Item = tuple[str, int]  # (epoch, offset): what a message is to these tests


def test_in_order_publications_are_delivered() -> None:
    """The table's first row: the next offset of the current epoch goes out at once."""
    feed: RoomFeed[Item, str] = RoomFeed("e", 0)
    assert feed.publication("e", 1, ("e", 1)) == [Deliver(1, ("e", 1))]
    assert feed.publication("e", 2, ("e", 2)) == [Deliver(2, ("e", 2))]
    assert (feed.last, feed.duplicates) == (2, 0)


def test_accept_takes_only_the_next_message_of_the_current_epoch() -> None:
    """The fast path: True (and delivered) only for the table's first row."""
    feed: RoomFeed[Item, str] = RoomFeed("e", 3)
    assert feed.accept("e", 4, ("e", 4))
    assert (feed.last, feed.since(3)) == (4, [("e", 4)])
    assert not feed.accept("e", 4, ("e", 4))  # a duplicate
    assert not feed.accept("e", 6, ("e", 6))  # a gap
    assert not feed.accept("f", 5, ("f", 5))  # another epoch
    assert feed.publication("e", 6, ("e", 6)) == [Fetch(4, announce=False)]
    assert not feed.accept("e", 5, ("e", 5))  # a fetch is outstanding: held, not taken


def test_accept_without_keeping_restarts_the_ring() -> None:
    """Not kept: joiners reading from before it must read the history again."""
    feed: RoomFeed[Item, str] = RoomFeed("e", 0)
    assert feed.accept("e", 1, ("e", 1))
    assert feed.accept("e", 2, ("e", 2), keep=False)
    assert (feed.last, feed.since(1), feed.since(2)) == (2, None, [])
    assert feed.accept("e", 3, ("e", 3))
    assert feed.since(2) == [("e", 3)]


def test_a_duplicate_is_dropped_and_counted() -> None:
    feed: RoomFeed[Item, str] = RoomFeed("e", 5)
    assert feed.publication("e", 5, ("e", 5)) == []
    assert feed.publication("e", 3, ("e", 3)) == []
    assert feed.duplicates == 2


def test_a_gap_is_fetched_once_and_held_messages_follow_the_page() -> None:
    """A gap asks for the history once; later publications wait; the page fills it."""
    feed: RoomFeed[Item, str] = RoomFeed("e", 1)
    assert feed.publication("e", 3, ("e", 3)) == [Fetch(1, announce=False)]
    assert feed.publication("e", 4, ("e", 4)) == []  # held, no second fetch
    assert feed.event("vote") == []  # events wait too
    out = feed.page("e", 3, [(2, ("e", 2)), (3, ("e", 3))])
    assert out == [Deliver(2, ("e", 2)), Deliver(3, ("e", 3)), Deliver(4, ("e", 4)), Pass("vote")]
    assert (feed.last, feed.gaps, feed.duplicates) == (4, 1, 1)  # 3 came twice


def test_a_new_epoch_is_announced_before_its_messages() -> None:
    """A publication from another epoch: fetch the newest, announce, then go on."""
    feed: RoomFeed[Item, str] = RoomFeed("old", 300)
    assert feed.publication("new", 1, ("new", 1)) == [Fetch(None, announce=True)]
    assert feed.publication("new", 2, ("new", 2)) == []
    out = feed.page("new", 1, [(1, ("new", 1))])
    assert out == [Announce(recovered=False), Deliver(2, ("new", 2))]
    assert (feed.epoch, feed.last, feed.resets) == ("new", 2, 1)
    assert feed.publication("old", 301, ("old", 301)) == []  # a straggler of the old one
    assert feed.stale == 1


def test_reconnect_announces_the_recent_window() -> None:
    feed: RoomFeed[Item, str] = RoomFeed("e", 7)
    assert feed.reconnected() == [Fetch(7, announce=True)]
    assert feed.reconnected() == []  # one fetch at a time; again after it
    out = feed.page("e", 9, [(8, ("e", 8)), (9, ("e", 9))])
    assert out == [Announce(recovered=True), Fetch(9, announce=True)]
    assert feed.page("e", 9, []) == [Announce(recovered=True)]
    assert feed.resets == 0


def test_held_publications_are_bounded() -> None:
    """Past `hold_max`, publications are dropped and the feed fetches once more."""
    feed: RoomFeed[Item, str] = RoomFeed("e", 0, hold_max=2)
    assert feed.publication("e", 2, ("e", 2)) == [Fetch(0, announce=False)]
    feed.publication("e", 3, ("e", 3))
    feed.publication("e", 4, ("e", 4))  # over the bound: dropped
    out = feed.page("e", 1, [(1, ("e", 1))])  # read before 2..4 were stored
    assert out == [Deliver(1, ("e", 1)), Fetch(1, announce=True)]


def test_a_joiner_catches_up_from_the_ring() -> None:
    feed: RoomFeed[Item, str] = RoomFeed("e", 0, ring=2)
    for n in (1, 2, 3):
        feed.publication("e", n, ("e", n))
    assert feed.since(2) == [("e", 3)]
    assert feed.since(1) == [("e", 2), ("e", 3)]
    assert feed.since(0) is None  # the ring no longer reaches back that far


def test_behind_and_epoch_seen_ask_for_the_history() -> None:
    feed: RoomFeed[Item, str] = RoomFeed("e", 3)
    assert feed.behind(3) == []
    assert feed.behind(5) == [Fetch(3, announce=False)]
    feed.page("e", 5, [(4, ("e", 4)), (5, ("e", 5))])
    assert feed.epoch_seen("e") == []
    assert feed.epoch_seen("f") == [Fetch(None, announce=True)]


# ------------------------------------------------------------------ properties


@dataclass
class World:
    """A store with a history that can be lost, a broker that loses, repeats and
    delays publications, and what the members of the room saw."""

    epoch_no: int = 0
    count: int = 0  # messages in the current history
    deleted: set[int] = field(default_factory=set)  # their offsets stay unused
    delayed: list[Item] = field(default_factory=list)
    asked: Fetch | None = None
    seen: list[Item] = field(default_factory=list)  # what members have now
    feed: RoomFeed[Item, str] = field(default_factory=lambda: RoomFeed("e0", 0, hold_max=8))

    @property
    def epoch(self) -> str:
        return f"e{self.epoch_no}"

    def run(self, decisions: list[object]) -> None:
        for decision in decisions:
            if isinstance(decision, Deliver):
                item = decision.item
                last = self.seen[-1] if self.seen else None
                if last is not None and last[0] == item[0]:
                    skipped = set(range(last[1] + 1, item[1]))
                    assert item[1] > last[1], f"{item} after {last}: order or a double"
                    assert skipped <= self.deleted, f"{item} after {last}: a gap"
                else:
                    assert item[1] == 1 or self.seen == [], f"{item} without an announce"
                self.seen.append(item)
            elif isinstance(decision, Fetch):
                assert self.asked is None, "two fetches at once"
                self.asked = decision
            elif isinstance(decision, Announce):
                pass  # `answer` replaced `seen` with the page already

    def publish(self, item: Item, fate: str) -> None:
        if fate == "lose":
            return
        if fate == "delay":
            self.delayed.append(item)
            return
        self.offer(item)
        if fate == "twice":
            self.offer(item)

    def offer(self, item: Item) -> None:
        """What the runtime does: the fast path first, the whole table otherwise."""
        if self.feed.accept(item[0], item[1], item):
            self.run([Deliver(item[1], item)])
        else:
            self.run(self.feed.publication(item[0], item[1], item))

    def append(self, fate: str) -> None:
        self.count += 1
        self.publish((self.epoch, self.count), fate)

    def answer(self) -> None:
        asked, self.asked = self.asked, None
        if asked is None:
            return
        same = self.feed.epoch == self.epoch
        after = asked.after if asked.after is not None and same and not asked.announce else 0
        kept = [n for n in range(after + 1, self.count + 1) if n not in self.deleted]
        items = [(n, (self.epoch, n)) for n in kept]
        decisions = self.feed.page(self.epoch, self.count, items)
        if decisions and isinstance(decisions[0], Announce):
            self.seen = [item for _, item in items]
        self.run(decisions)

    def settle(self) -> None:
        """Every delayed publication arrives, a last message goes through, and every
        fetch is answered: then members must have exactly the current history."""
        for item in self.delayed:
            self.run(self.feed.publication(item[0], item[1], item))
        self.delayed.clear()
        self.append("deliver")
        for _ in range(20):
            if self.asked is None:
                break
            self.answer()
        assert self.asked is None
        have = [item for item in self.seen if item[1] not in self.deleted]
        assert have == [(self.epoch, n) for n in range(1, self.count + 1) if n not in self.deleted]


step = st.one_of(
    st.tuples(st.just("append"), st.sampled_from(["deliver", "deliver", "lose", "twice", "delay"])),
    st.tuples(st.just("release"), st.integers(0, 5)),
    st.tuples(st.just("answer"), st.none()),
    st.tuples(st.just("reconnect"), st.none()),
    st.tuples(st.just("forget"), st.none()),
    st.tuples(st.just("delete"), st.integers(0, 5)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(step, max_size=60))
def test_every_message_once_in_order_or_after_an_announce(steps: list[tuple[str, object]]) -> None:
    """Any interleaving: members see each message of the current history once, in
    offset order; a lost history is announced before its messages."""
    world = World()
    for kind, arg in steps:
        if kind == "append":
            assert isinstance(arg, str)
            world.append(arg)
        elif kind == "release" and world.delayed:
            assert isinstance(arg, int)
            world.offer(world.delayed.pop(arg % len(world.delayed)))
        elif kind == "answer":
            world.answer()
        elif kind == "reconnect":
            world.run(world.feed.reconnected())
        elif kind == "forget":  # the store lost the room's history: a new epoch
            world.epoch_no += 1
            world.count = 0
            world.deleted = set()
        elif kind == "delete" and world.count:  # an admin deletes one of the newest
            assert isinstance(arg, int)
            world.deleted.add(max(1, world.count - arg))
    world.settle()
