"""The one chooser: URLs to store, broker and presence, and the pairings it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roomcast.adapters import DEFAULT_STORE, UnsupportedURL, build, resolve
from roomcast.adapters.local import LocalBroker, LocalPresence
from roomcast.adapters.memory import MemoryStore
from roomcast.adapters.redis import RedisBroker, RedisPresence, RedisStore
from roomcast.adapters.sqlite import SqliteStore

REDIS = "redis://127.0.0.1:6390/0"


@pytest.mark.parametrize(
    ("store", "broker", "expected"),
    [
        (DEFAULT_STORE, "", (DEFAULT_STORE, "")),
        ("memory://", "", ("memory://", "")),
        (DEFAULT_STORE, REDIS, (REDIS, REDIS)),  # --broker alone: Redis for both
        (REDIS, "", (REDIS, REDIS)),  # --store redis:// alone: Redis for both
        (REDIS, REDIS, (REDIS, REDIS)),
        ("redis://a:1/0", "redis://b:2/0", ("redis://a:1/0", "redis://b:2/0")),
        ("redis+cluster://a:1", "", ("redis+cluster://a:1", "redis+cluster://a:1")),
    ],
)
def test_documented_forms_resolve(store: str, broker: str, expected: tuple[str, str]) -> None:
    """Each documented way of naming the backends gives the store and broker it says."""
    assert resolve(store, broker) == expected


@pytest.mark.parametrize(
    ("store", "broker", "words"),
    [
        ("sqlite:///x.db", REDIS, "keeps rooms on this node only"),
        ("memory://", REDIS, "keeps rooms on this node only"),
        (DEFAULT_STORE, "nats://x:4222", "--broker must be a redis://"),
        ("postgres2://x", "", "unknown store URL scheme"),
    ],
)
def test_unsound_pairings_are_refused(store: str, broker: str, words: str) -> None:
    """A node-local store with a shared broker, or an unknown scheme, is refused."""
    with pytest.raises(UnsupportedURL, match=words):
        resolve(store, broker)


def test_build_pairs_the_ports(tmp_path: Path) -> None:
    """Presence follows the broker; the Redis store publishes only with its own broker."""
    alone = build("memory://")
    assert isinstance(alone.store, MemoryStore)
    assert isinstance(alone.broker, LocalBroker)
    assert isinstance(alone.presence, LocalPresence)
    assert isinstance(build(f"sqlite:///{tmp_path}/r.db").store, SqliteStore)
    shared = build(REDIS)
    assert isinstance(shared.store, RedisStore)
    assert isinstance(shared.broker, RedisBroker)
    assert isinstance(shared.presence, RedisPresence)
    assert shared.store.publishes
    assert shared.store.link is shared.broker.link  # one command link, one write order
    split = build("redis://a:1/0", "redis://b:2/0")
    assert isinstance(split.store, RedisStore)
    assert not split.store.publishes  # the node publishes after the store returns


def test_serve_refuses_a_local_store_with_a_shared_broker_in_one_line(tmp_path: Path) -> None:
    """`roomcast serve` says what is wrong in one line, with no traceback, exit code 2."""
    store = f"sqlite:///{tmp_path}/x.db"
    result = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--store", store, "--broker", REDIS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "keeps rooms on this node only" in lines[0]
    assert "Traceback" not in result.stderr
