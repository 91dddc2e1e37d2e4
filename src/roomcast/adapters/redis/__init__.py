"""Redis adapters: the store, the broker and presence over one shared command link."""

from roomcast.adapters.redis.broker import RedisBroker
from roomcast.adapters.redis.client import parse_url
from roomcast.adapters.redis.link import RedisLink
from roomcast.adapters.redis.presence import RedisPresence
from roomcast.adapters.redis.store import RedisStore

__all__ = ["RedisBroker", "RedisLink", "RedisPresence", "RedisStore", "parse_url"]
