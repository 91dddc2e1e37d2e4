"""Conformance suites for the Broker and Presence ports over every adapter, the
inter-node format, and the rules the Redis store enforces against the node's own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.adapters.local import LocalBroker, LocalPresence
from roomcast.adapters.redis import RedisBroker, RedisLink, RedisPresence, RedisStore
from roomcast.core import wire
from roomcast.core.errors import ClientError
from roomcast.core.model import StoredMessage
from roomcast.core.rooms import RoomInfo, check_send
from roomcast.core.wire import ChatPub, EventPub, MutePub, PresencePub, Publication, RoomPub
from roomcast.ports import Broker, Presence
from tests.cluster import RedisServer, prefix
from tests.helpers import wait_until

# ------------------------------------------------------------------ the inter-node format


def _message(offset: int = 7, cid: str | None = "c-1") -> StoredMessage:
    return StoredMessage("42", "r", offset, "u", "ann", "hi ✓", 0, 1_700_000_000_000, False, cid)


PUBLICATIONS: list[Publication] = [
    ChatPub("r", "ep0ch", _message()),
    ChatPub("r", "ep0ch", _message(cid=None)),
    EventPub("r", b'{"type":"UPDATE_CHAT"}'),
    EventPub("r", b'{"type":"ADMIN_ALERT"}', admins=True),
    PresencePub("r", 3, b'{"type":"USER_JOINED"}'),
    RoomPub("r", RoomInfo("r", "Room", cooldown_seconds=2.5)),
    MutePub("r", "mallory", 1_700_000_060_000),
]


@pytest.mark.parametrize("pub", PUBLICATIONS, ids=lambda p: type(p).__name__)
def test_every_kind_round_trips(pub: Publication) -> None:
    """What one node encodes, another decodes to the same publication."""
    data = wire.encode(pub)
    assert data[0] == wire.VERSION
    assert wire.decode("r", data) == pub


@given(
    epoch=st.text(max_size=20),
    offset=st.integers(1, 2**53),
    user=st.text(max_size=30),
    text=st.text(max_size=200),
    cid=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
)
def test_any_chat_round_trips(
    epoch: str, offset: int, user: str, text: str, cid: str | None
) -> None:
    m = StoredMessage("9", "room", offset, user, "n", text, 0, 5, False, cid)
    assert wire.decode("room", wire.encode(ChatPub("room", epoch, m))) == ChatPub("room", epoch, m)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (bytes([2]) + b"e{}", wire.UnknownVersion),  # a newer node's format
        (bytes([0]) + b"e{}", wire.UnknownVersion),
        (b"", wire.WireError),
        (bytes([1]) + b"z{}", wire.WireError),  # an unknown kind
        (bytes([1]) + b"m\xc1", wire.WireError),  # malformed msgpack
        (bytes([1]) + b"r{not json", wire.WireError),
    ],
)
def test_unknown_or_malformed_bytes_are_refused(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        wire.decode("r", data)


# ------------------------------------------------------------------ the Broker port


class Inbox:
    def __init__(self) -> None:
        self.got: list[Publication] = []
        self.reconnects = 0

    def bind(self, broker: Broker) -> Broker:
        broker.bind(self.got.append, self._reconnected)
        return broker

    def _reconnected(self) -> None:
        self.reconnects += 1


BrokerFactory = Callable[[], Broker]


@pytest.fixture(params=["local", "redis", "cluster"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, BrokerFactory]]:
    """Brokers of one kind that share a backend (for Redis, as nodes would)."""
    made: list[Broker] = []
    if request.param == "local":

        def factory() -> Broker:
            made.append(LocalBroker())
            return made[-1]
    else:
        url = request.getfixturevalue(
            "redis_url" if request.param == "redis" else "redis_cluster_url"
        )
        key_prefix = prefix()

        def factory() -> Broker:
            made.append(RedisBroker(RedisLink(url), prefix=key_prefix))
            return made[-1]

    yield request.param, factory
    for broker in made:
        await broker.close()


async def test_broker_delivers_each_publication_once_in_order(
    make_broker: tuple[str, BrokerFactory],
) -> None:
    """Every publication on a subscribed room reaches the subscriber once, in the
    order it was published; a room not subscribed delivers nothing."""
    _, factory = make_broker
    inbox = Inbox()
    broker = inbox.bind(factory())
    await broker.open()
    assert broker.connected
    await broker.subscribe("r")
    sent = [ChatPub("r", "e", _message(offset=n)) for n in range(1, 101)] + PUBLICATIONS
    for pub in sent:
        await broker.publish(pub)
    await broker.publish(EventPub("elsewhere", b"{}"))
    assert await wait_until(lambda: len(inbox.got) >= len(sent))
    await asyncio.sleep(0.05)
    assert inbox.got == sent
    assert broker.received >= len(sent)
    await broker.unsubscribe("r")
    await broker.publish(EventPub("r", b"{}"))
    await asyncio.sleep(0.1)
    assert len(inbox.got) == len(sent)


async def test_broker_carries_publications_between_nodes(
    make_broker: tuple[str, BrokerFactory],
) -> None:
    """On a shared backend, what one node publishes reaches every node subscribed,
    itself included; the local broker is one node alone."""
    kind, factory = make_broker
    inboxes = [Inbox(), Inbox()]
    brokers = [inbox.bind(factory()) for inbox in inboxes]
    for broker in brokers:
        await broker.open()
        await broker.subscribe("shared")
    await brokers[0].publish(EventPub("shared", b'{"n":1}'))
    assert await wait_until(lambda: len(inboxes[0].got) == 1)
    if kind == "local":
        await asyncio.sleep(0.05)
        assert inboxes[1].got == []
    else:
        assert await wait_until(lambda: len(inboxes[1].got) == 1)
        assert inboxes[1].got == [EventPub("shared", b'{"n":1}')]


async def test_redis_broker_drops_and_counts_unknown_versions(redis_url: str) -> None:
    """A publication from a node of a newer format is ignored and counted; the next
    one of ours still arrives."""
    key_prefix = prefix()
    inbox = Inbox()
    link = RedisLink(redis_url)
    broker = RedisBroker(link, prefix=key_prefix)
    inbox.bind(broker)
    await broker.open()
    try:
        await broker.subscribe("r")
        channel = broker.keys.channel("r")
        await link.run(None, "PUBLISH", channel, bytes([9]) + b"e{}")
        await link.run(None, "PUBLISH", channel, b"garbage")
        await broker.publish(EventPub("r", b"{}"))
        assert await wait_until(lambda: inbox.got == [EventPub("r", b"{}")])
        assert broker.dropped == 2
    finally:
        await broker.close()


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "cluster"])
async def test_store_and_broker_on_one_redis_publish_each_message_once(
    request: pytest.FixtureRequest, cluster: bool
) -> None:
    """Paired on one Redis, the append script publishes the message itself, in the
    inter-node format, exactly once (a duplicate retry is not published again)."""
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    key_prefix = prefix()
    link = RedisLink(url)
    store = RedisStore(link, prefix=key_prefix, publishes=True)
    broker = RedisBroker(link, prefix=key_prefix)
    inbox = Inbox()
    inbox.bind(broker)
    await store.open()
    await broker.open()
    try:
        await broker.subscribe("r")
        appended = [await store.append("r", "u", "ann", f"m{n}", f"k{n}") for n in range(20)]
        again = await store.append("r", "u", "ann", "m0", "k0")
        assert again.duplicate
        assert not again.published
        assert all(a.published and a.epoch for a in appended)
        expected = [ChatPub("r", a.epoch, a.message) for a in appended]
        assert await wait_until(lambda: len(inbox.got) >= 20)
        await asyncio.sleep(0.1)
        assert inbox.got == expected
    finally:
        await broker.close()
        await store.close()


# ------------------------------------------------------------------ the Presence port


PresenceFactory = Callable[[], Presence]


@pytest.fixture(params=["local", "redis"])
async def make_presence(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, PresenceFactory]]:
    made: list[Presence] = []
    if request.param == "local":
        shared = LocalPresence()

        def factory() -> Presence:
            return shared
    else:
        url = request.getfixturevalue("redis_url")
        key_prefix = prefix()

        def factory() -> Presence:
            made.append(RedisPresence(RedisLink(url), prefix=key_prefix, heartbeat=0.2))
            return made[-1]

    yield request.param, factory
    for presence in made:
        await presence.close()


async def test_presence_counts_users_not_connections(
    make_presence: tuple[str, PresenceFactory],
) -> None:
    """A user with two connections is one member; the second join is not the first."""
    _, factory = make_presence
    presence = factory()
    await presence.open()
    assert await presence.join("r", "ann", "Ann", "c1", 10) == (True, 1, [("ann", "Ann")])
    first, count, users = await presence.join("r", "ann", "Ann", "c2", 10)
    assert (first, count, users) == (False, 1, [("ann", "Ann")])
    first, count, users = await presence.join("r", "bob", "Bob", "c3", 1)
    assert (first, count, len(users)) == (True, 2, 1)  # the list is capped
    first, count, users = await presence.join("r", "bob", "Bob", "c3", 10)  # the same one
    assert (first, count, sorted(users)) == (False, 2, [("ann", "Ann"), ("bob", "Bob")])


async def test_presence_leaves_are_idempotent(make_presence: tuple[str, PresenceFactory]) -> None:
    """A leave repeated (its answer was lost) changes nothing: no ghost, no negative."""
    _, factory = make_presence
    presence = factory()
    await presence.open()
    await presence.join("r", "ann", "Ann", "c1", 10)
    await presence.join("r", "ann", "Ann", "c2", 10)
    assert await presence.join("r", "ann", "Ann", "c2", 10) == (False, 1, [("ann", "Ann")])
    assert await presence.leave("r", "ann", "c1") == (False, 1)
    assert await presence.leave("r", "ann", "c1") == (False, 1)  # again: nothing
    assert await presence.leave("r", "ann", "c2") == (True, 0)
    assert await presence.leave("r", "ann", "c2") == (False, 0)
    assert await presence.leave("nowhere", "ann", "c9") == (False, 0)
    first, count, _ = await presence.join("r", "ann", "Ann", "c3", 10)
    assert (first, count) == (True, 1)


async def test_redis_presence_counts_out_a_dead_node(redis_url: str) -> None:
    """A node that stops beating has its users counted out by a live one, after it was
    found absent on two sweeps; users it shared with a live node stay."""
    key_prefix = prefix()
    live = RedisPresence(RedisLink(redis_url), prefix=key_prefix, heartbeat=0.1)
    dead = RedisPresence(RedisLink(redis_url), prefix=key_prefix, heartbeat=0.1)
    await live.open()
    await dead.open()
    try:
        await live.join("r", "ann", "Ann", "a1", 10)
        await dead.join("r", "ann", "Ann", "d1", 10)
        await dead.join("r", "bob", "Bob", "d2", 10)
        await dead.close()  # stops beating; its key expires after three beats
        gone: list[tuple[str, int, list[str]]] = []
        deadline = time.monotonic() + 10
        while not gone and time.monotonic() < deadline:
            gone = await live.sweep(["r"])
            await asyncio.sleep(0.1)
        assert gone == [("r", 1, ["bob"])]
        assert await live.leave("r", "ann", "a1") == (True, 0)
    finally:
        await live.close()


# ------------------------------------------------------------------ one set of rules

NOW = 1_800_000_000_000

RULE_CASES: list[dict[str, Any]] = [
    {"muted_for": 0, "cooldown": 0.0, "sent_ago": None},
    {"muted_for": 60_000, "cooldown": 0.0, "sent_ago": None},
    {"muted_for": -1_000, "cooldown": 0.0, "sent_ago": None},  # expired
    {"muted_for": 0, "cooldown": 30.0, "sent_ago": 10_000},
    {"muted_for": 0, "cooldown": 30.0, "sent_ago": 40_000},
    {"muted_for": 0, "cooldown": 30.0, "sent_ago": None},
    {"muted_for": 60_000, "cooldown": 30.0, "sent_ago": 10_000},  # muted wins
]


def _python_answer(case: dict[str, Any]) -> str:
    room = RoomInfo("r", "r", cooldown_seconds=case["cooldown"])
    muted = NOW + case["muted_for"] if case["muted_for"] else None
    sent = None if case["sent_ago"] is None else NOW - case["sent_ago"]
    try:
        check_send(room, now_ms=NOW, last_sent_ms=sent, muted_until_ms=muted, is_admin=False)
    except ClientError as exc:
        return str(exc.code)
    return "ok"


async def _redis_answer(store: RedisStore, room: str, case: dict[str, Any]) -> str:
    now = int(time.time() * 1000)
    cooldown_ms = int(case["cooldown"] * 1000)
    if case["muted_for"]:
        await store.set_mute(room, "u", now + case["muted_for"])
    if case["sent_ago"] is not None:  # the cooldown the earlier message started
        left = cooldown_ms - case["sent_ago"]
        if left > 0:
            key = store.key(room) + "cd:u"
            await store.link.run(None, "SET", key, "1", "PX", left)
    try:
        await store.append(room, "u", "U", "hi", cooldown_ms=cooldown_ms, check_mute=True)
    except ClientError as exc:
        return str(exc.code)
    return "ok"


async def test_the_redis_store_enforces_the_nodes_rules(redis_url: str) -> None:
    """The same cases, fed to the node's rules (core.rooms) and to the Redis append
    script, get the same answers."""
    store = RedisStore(RedisLink(redis_url), prefix=prefix())
    await store.open()
    try:
        for i, case in enumerate(RULE_CASES):
            expected = _python_answer(case)
            assert await _redis_answer(store, f"rules-{i}", case) == expected, case
    finally:
        await store.close()
    assert {_python_answer(c) for c in RULE_CASES} == {"ok", "muted", "cooldown"}


async def test_the_link_drops_connections_a_redis_restart_killed(tmp_path: Path) -> None:
    """Pooled connections opened before Redis restarted would fail their next command
    (commands are never retried: an append could post twice). Once the restart is known
    (the broker reconnected, or a write failed), the link closes its idle connections,
    and every later command runs on a fresh one."""
    server = RedisServer(tmp_path / "r").start()
    link = RedisLink(server.url)
    await link.open()
    try:
        client = link.client
        await asyncio.gather(*(link.direct(client.ping()) for _ in range(6)))  # a pool of several
        server.restart()
        await link.drop_idle()
        results = await asyncio.gather(
            *(link.direct(client.ping()) for _ in range(6)), return_exceptions=True
        )
        assert all(r is True for r in results), results
    finally:
        await link.close()
        server.stop()
