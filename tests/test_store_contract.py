"""One conformance suite for the Store port, run over every adapter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from roomcast.adapters import UnsupportedURL, open_store
from roomcast.adapters.memory import MemoryStore
from roomcast.adapters.redis import RedisLink, RedisStore
from roomcast.adapters.sqlite import SqliteStore
from roomcast.core.errors import StoreError, StoreOverloaded, UnknownChat
from roomcast.ports import Store
from tests.cluster import prefix

Factory = Callable[[], Store]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    if request.param == "memory":
        return lambda: MemoryStore()
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        key_prefix = prefix()  # one per test: stores made by one factory share it
        return lambda: RedisStore(RedisLink(url), prefix=key_prefix)
    return lambda: SqliteStore(str(tmp_path / "rooms.db"))


@pytest.fixture
async def store(make_store: Factory) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    yield s
    await s.close()


async def test_offsets_count_from_one_per_room(store: Store) -> None:
    """Each room's offsets start at 1 and grow by one; chat ids are unique digits < 2**53."""
    a1 = (await store.append("a", "u", "ann", "one")).message
    b1 = (await store.append("b", "u", "ann", "other room")).message
    a2 = (await store.append("a", "v", "vic", "two")).message
    assert (a1.offset, a2.offset, b1.offset) == (1, 2, 1)
    ids = [a1.chat_id, b1.chat_id, a2.chat_id]
    assert len(set(ids)) == 3
    assert all(i.isdigit() and int(i) < 2**53 for i in ids)
    assert (a2.room_id, a2.user_id, a2.name, a2.text, a2.upvotes) == ("a", "v", "vic", "two", 0)
    assert a2.created_at > 1_700_000_000_000


async def test_concurrent_appends_complete_in_call_order(store: Store) -> None:
    """Appends started together finish with offsets in the order they were started."""
    results = await asyncio.gather(*(store.append("r", "u", "n", str(i)) for i in range(200)))
    assert [r.message.offset for r in results] == list(range(1, 201))
    assert [r.message.text for r in results] == [str(i) for i in range(200)]


async def test_one_vote_per_user(store: Store) -> None:
    """A user's second vote is not counted; another user's is."""
    m = (await store.append("r", "author", "a", "q")).message
    first = await store.vote("r", m.chat_id, "x")
    assert first is not None
    assert (first.chat_id, first.upvotes) == (m.chat_id, 1)
    assert await store.vote("r", m.chat_id, "x") is None
    second = await store.vote("r", m.chat_id, "y")
    assert second is not None
    assert second.upvotes == 2


async def test_concurrent_votes_never_double_count(store: Store) -> None:
    """100 concurrent votes by one user count once; 100 users count 100."""
    m = (await store.append("r", "author", "a", "q")).message
    same = await asyncio.gather(*(store.vote("r", m.chat_id, "one") for _ in range(100)))
    assert sorted(v.upvotes for v in same if v is not None) == [1]
    many = await asyncio.gather(*(store.vote("r", m.chat_id, f"u{i}") for i in range(100)))
    assert sorted(v.upvotes for v in many if v is not None) == list(range(2, 102))


async def test_vote_on_unknown_chat(store: Store) -> None:
    """Votes for a missing id, or an id from another room, raise UnknownChat."""
    m = (await store.append("r", "author", "a", "q")).message
    for room, chat in (("r", "424242"), ("other", m.chat_id), ("r", "not-a-number"), ("r", "-1")):
        with pytest.raises(UnknownChat):
            await store.vote(room, chat, "x")


async def test_history_page(store: Store) -> None:
    """History is the last N, oldest first, with votes, last offset and the voter's votes."""
    assert await store.history("r", 10, voter="x") == await store.history("r", 10)
    empty = await store.history("nothing", 10)
    assert (empty.messages, empty.last_offset, empty.voted) == ([], 0, [])
    msgs = [(await store.append("r", "u", "n", f"m{i}")).message for i in range(5)]
    await store.vote("r", msgs[3].chat_id, "x")
    await store.vote("r", msgs[4].chat_id, "y")
    page = await store.history("r", 3, voter="x")
    assert [m.text for m in page.messages] == ["m2", "m3", "m4"]
    assert [m.upvotes for m in page.messages] == [0, 1, 1]
    assert page.last_offset == 5
    assert page.voted == [msgs[3].chat_id]
    assert (await store.history("r", 0)).messages == []
    assert (await store.history("r", 10, voter=None)).voted == []


async def test_history_after_an_offset(store: Store) -> None:
    """after=N returns the messages after N, oldest first, and says if that is all."""
    for i in range(6):
        await store.append("r", "u", "n", f"m{i}")
    page = await store.history("r", 10, after=3)
    assert [m.offset for m in page.messages] == [4, 5, 6]
    assert page.complete
    assert page.last_offset == 6
    short = await store.history("r", 2, after=1)
    assert [m.offset for m in short.messages] == [2, 3]
    assert not short.complete
    newest = await store.history("r", 2, after=1, newest_if_incomplete=True)
    assert [m.offset for m in newest.messages] == [5, 6]
    assert not newest.complete
    assert (await store.history("r", 10, after=6)).messages == []
    assert (await store.history("empty", 10, after=0)).complete


async def test_client_msg_id_deduplicates(store: Store) -> None:
    """The same (room, user, client id) is stored once; other users or rooms are not affected."""
    first = await store.append("r", "u", "n", "hello", "c-1")
    again = await store.append("r", "u", "n", "hello", "c-1")
    assert not first.duplicate
    assert again.duplicate
    assert again.message == first.message
    assert first.message.client_msg_id == "c-1"
    other_user = await store.append("r", "v", "n", "hello", "c-1")
    other_room = await store.append("s", "u", "n", "hello", "c-1")
    assert not other_user.duplicate
    assert not other_room.duplicate
    both = await asyncio.gather(*(store.append("r", "u", "n", "x", "c-2") for _ in range(10)))
    assert sum(not b.duplicate for b in both) == 1
    assert (await store.history("r", 10)).last_offset == 3


async def test_epoch(make_store: Factory) -> None:
    """Every store has a non-empty epoch; a fresh memory store has a new one."""
    a, b = make_store(), make_store()
    await a.open()
    epoch = a.epoch
    await a.close()
    await b.open()
    assert epoch
    if isinstance(b, MemoryStore):
        assert b.epoch != epoch
    else:
        assert b.epoch == epoch  # the same SQLite file keeps its history and its epoch
    await b.close()


async def test_close_is_idempotent(make_store: Factory) -> None:
    """close() twice is fine."""
    s = make_store()
    await s.open()
    await s.close()
    await s.close()


def test_open_store_by_url(tmp_path: Path) -> None:
    """URLs pick the adapter; unknown schemes and malformed sqlite URLs are refused."""
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/x.db"), SqliteStore)
    assert isinstance(open_store("sqlite:///relative.db"), SqliteStore)
    for bad in ("redis2://x", "sqlite://host/x.db", "sqlite:///", "nope"):
        with pytest.raises(UnsupportedURL):
            open_store(bad)


# ------------------------------------------------------------------ adapter specifics


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    """Messages, offsets and votes are still there after the store is reopened."""
    path = str(tmp_path / "keep.db")
    s = SqliteStore(path)
    await s.open()
    m = (await s.append("r", "u", "n", "kept")).message
    await s.vote("r", m.chat_id, "v")
    await s.close()
    s = SqliteStore(path)
    await s.open()
    page = await s.history("r", 10, voter="v")
    assert [(x.text, x.upvotes) for x in page.messages] == [("kept", 1)]
    assert page.voted == [m.chat_id]
    nxt = (await s.append("r", "u", "n", "next")).message
    assert nxt.offset == 2
    assert int(nxt.chat_id) > int(m.chat_id)
    assert await s.vote("r", m.chat_id, "v") is None
    await s.close()


async def test_sqlite_never_reuses_an_offset(tmp_path: Path) -> None:
    """Deleting the newest message and restarting does not hand its offset out again."""
    path = str(tmp_path / "o.db")
    s = SqliteStore(path)
    await s.open()
    await s.append("r", "u", "n", "one")
    two = (await s.append("r", "u", "n", "two")).message
    await s.delete_message("r", two.chat_id)
    await s.close()
    s = SqliteStore(path)
    await s.open()
    assert (await s.append("r", "u", "n", "three")).message.offset == 3
    assert (await s.history("r", 10)).last_offset == 3
    await s.close()


async def test_sqlite_refuses_a_second_process_on_the_same_file(tmp_path: Path) -> None:
    """A second store on a file already open elsewhere fails to open, loudly."""
    path = str(tmp_path / "one.db")
    first = SqliteStore(path)
    await first.open()
    second = SqliteStore(path)
    with pytest.raises(StoreError):
        await second.open()
    await first.close()


async def test_sqlite_bounded_queue(tmp_path: Path) -> None:
    """Past queue_max pending operations, calls fail at once with StoreOverloaded."""
    s = SqliteStore(str(tmp_path / "q.db"), queue_max=5)
    await s.open()
    tasks = [asyncio.ensure_future(s.append("r", "u", "n", str(i))) for i in range(5)]
    await asyncio.sleep(0)
    with pytest.raises(StoreOverloaded):
        await s.append("r", "u", "n", "one too many")
    done = await asyncio.gather(*tasks)
    assert [r.message.offset for r in done] == [1, 2, 3, 4, 5]
    await s.close()


async def test_sqlite_unopened_store_refuses() -> None:
    """Using a SQLite store before open() raises StoreError, not a hang."""
    with pytest.raises(StoreError):
        await SqliteStore("unused.db").append("r", "u", "n", "x")


async def test_memory_history_is_bounded() -> None:
    """The memory store keeps only history_max messages per room; old ids become unknown."""
    s = MemoryStore(history_max=3)
    first = (await s.append("r", "u", "n", "0")).message
    for i in range(1, 5):
        await s.append("r", "u", "n", str(i))
    page = await s.history("r", 10)
    assert [m.text for m in page.messages] == ["2", "3", "4"]
    assert page.last_offset == 5
    with pytest.raises(UnknownChat):
        await s.vote("r", first.chat_id, "x")
    assert not (await s.history("r", 10, after=0)).complete  # offsets 1-2 were evicted
    assert (await s.history("r", 10, after=2)).complete
    with pytest.raises(ValueError, match="history_max"):
        MemoryStore(history_max=0)


async def test_redis_history_is_bounded_by_size_and_age(redis_url: str) -> None:
    """history_max keeps the newest N (older ones are gone, resumes say incomplete);
    history_max_age drops what is older, on the next append."""
    by_size = RedisStore(RedisLink(redis_url), prefix=prefix(), history_max=3)
    await by_size.open()
    for i in range(5):
        await by_size.append("r", "u", "n", f"m{i}", f"c{i}")
    page = await by_size.history("r", 10)
    assert [m.text for m in page.messages] == ["m2", "m3", "m4"]
    assert not (await by_size.history("r", 10, after=1)).complete
    assert (await by_size.history("r", 10, after=2)).complete
    retry = await by_size.append("r", "u", "n", "m0", "c0")  # its first copy was dropped
    assert not retry.duplicate
    await by_size.close()

    by_age = RedisStore(RedisLink(redis_url), prefix=prefix(), history_max_age=0.2)
    await by_age.open()
    await by_age.append("r", "u", "n", "old")
    await asyncio.sleep(0.3)
    await by_age.append("r", "u", "n", "new")
    assert [m.text for m in (await by_age.history("r", 10)).messages] == ["new"]
    await by_age.close()


async def test_sqlite_close_finishes_queued_writes(tmp_path: Path) -> None:
    """Writes queued when the store closes are committed and answered, not failed."""
    path = str(tmp_path / "drain.db")
    store = SqliteStore(path)
    await store.open()
    writes = [asyncio.create_task(store.append("r", "u", "n", str(i))) for i in range(200)]
    await asyncio.sleep(0)  # all queued
    await store.close()
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert [r.message.offset for r in results if not isinstance(r, BaseException)] == list(
        range(1, 201)
    )
    again = SqliteStore(path)
    await again.open()
    assert (await again.history("r", 1)).last_offset == 200
    await again.close()


async def test_redis_adapters_close_once_on_their_shared_link(redis_url: str) -> None:
    """Store, broker and presence share one command link: closing one of them twice
    does not close it under the others."""
    from roomcast.adapters.redis import RedisBroker, RedisPresence
    from roomcast.core.wire import EventPub

    key_prefix = prefix()
    link = RedisLink(redis_url)
    store = RedisStore(link, prefix=key_prefix)
    broker = RedisBroker(link, prefix=key_prefix)
    presence = RedisPresence(link, prefix=key_prefix)
    broker.bind(lambda pub: None, lambda: None)
    for adapter in (store, broker, presence):
        await adapter.open()
    await store.close()
    await store.close()
    await presence.close()
    await presence.close()
    await broker.publish(EventPub("r", b"{}"))  # the link is still open for the broker
    await broker.close()
    with pytest.raises(StoreError):
        await link.ping()
