"""Store and broker on different Redis databases: the node publishes each message
after the store returns (the store does not), and each reaches every node once."""

from __future__ import annotations

import pytest

from roomcast.testing import running_server
from tests.cluster import needs_redis, prefix
from tests.helpers import Client

pytestmark = [needs_redis]


async def test_a_store_apart_from_the_broker_publishes_each_message_once(
    redis_url: str,
) -> None:
    store = redis_url.rsplit("/", 1)[0] + "/1"  # another database of the same server
    key_prefix = prefix()
    settings = {"store": store, "broker": redis_url, "redis_prefix": key_prefix}
    async with running_server(**settings) as a, running_server(**settings) as b:
        assert a.backends.store_url == store
        assert not a.backends.store.publishes  # type: ignore[attr-defined]
        sender = await Client.connect(a.url)
        reader = await Client.connect(b.url)
        await sender.join("split", "s")
        await reader.join("split", "r")
        for n in range(20):
            await sender.send("SEND_MESSAGE", userId="s", roomId="split", message=f"m{n}")
        for client in (sender, reader):
            chats = [(await client.expect("ADD_CHAT"))["offset"] for _ in range(20)]
            assert chats == list(range(1, 21))
            await client.expect_silence(0.3)
        for node in (a, b):
            hosted = node.node.delivery.hosted["split"]
            assert hosted.feed is not None
            assert (hosted.feed.duplicates, hosted.feed.gaps) == (0, 0)
        await sender.close()
        await reader.close()


@pytest.mark.parametrize("store", ["memory://", "sqlite:///x.db"])
def test_a_node_local_store_with_a_shared_broker_is_refused(redis_url: str, store: str) -> None:
    from roomcast.config import Settings

    with pytest.raises(ValueError, match="keeps rooms on this node only"):
        Settings(store=store, broker=redis_url)
