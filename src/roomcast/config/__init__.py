"""Settings: one dataclass, filled from defaults, then environment, then flags.

Every limit is a setting here, with its environment variable and default documented in
docs/configuration.md (the table there is checked against this file by a test).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from roomcast.adapters import DEFAULT_STORE, UnsupportedURL, resolve
from roomcast.config.files import SECRETS, SECTION_OF, SECTIONS, read_toml, to_toml

ENV_PREFIX = "ROOMCAST_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Effective server settings. Field names are the flag names with `-` for `_`."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port for HTTP and WebSocket"})
    store: str = field(
        default=DEFAULT_STORE,
        metadata={
            "help": "storage URL: sqlite:///PATH, memory://, or redis://HOST:PORT/DB to share "
            "rooms between nodes (rediss:// for TLS, redis+cluster:// for Redis Cluster)"
        },
    )
    broker: str = field(
        default="",
        metadata={
            "help": "pub/sub between nodes: a redis:// URL (Redis for the store too when "
            "--store is not set); empty: this node is alone"
        },
    )
    node_heartbeat: float = field(
        default=5.0,
        metadata={
            "help": "seconds between a node's is-alive writes to Redis; after 3 missed (and "
            "two sweeps), other nodes count its users out of presence"
        },
    )
    redis_connections: int = field(
        default=32,
        metadata={
            "help": "most connections a node opens to Redis (per cluster node), besides its "
            "pub/sub connection; more callers wait for one"
        },
    )
    redis_prefix: str = field(
        default="rc:", metadata={"help": "prefix of every Redis key and channel roomcast uses"}
    )
    admin_token: str = field(
        default="",
        metadata={"help": "admin token; empty: a random one is generated and printed at start"},
    )
    api_key: str = field(
        default="",
        metadata={
            "help": "key for the backend HTTP API (publish, history); the admin token works too"
        },
    )
    auth: str = field(
        default="none",
        metadata={"help": "none: users name themselves; jwt: a signed token names them"},
    )
    jwt_secret: str = field(
        default="", metadata={"help": "HS256 secret for --auth jwt (and `roomcast token`)"}
    )
    jwt_public_key: str = field(
        default="", metadata={"help": "PEM file with an RS256/ES256 public key for --auth jwt"}
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "WebSocket Origin allowed besides this server's own and localhost "
            "(repeatable; * allows any)",
            "flag": "--allowed-origin",
        },
    )
    max_connections_per_ip: int = field(
        default=1_000, metadata={"help": "WebSocket connections per client address; then 429"}
    )
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "proxy address whose X-Forwarded-For is believed (repeatable)",
            "flag": "--trusted-proxy",
        },
    )
    max_message_rate: float = field(
        default=20.0, metadata={"help": "messages per second per connection (token bucket)"}
    )
    message_burst: int = field(
        default=40, metadata={"help": "messages a connection may send at once before the rate"}
    )
    rate_limit_close_after: int = field(
        default=100, metadata={"help": "refused messages in a row before closing with 4029"}
    )
    handshake_timeout: float = field(
        default=10.0,
        metadata={"help": "seconds to send a whole HTTP request, and idle between requests"},
    )
    rooms: str = field(
        default="open",
        metadata={"help": "open: joining creates a room; managed: only admin-created rooms"},
    )
    history_size: int = field(
        default=50, metadata={"help": "messages sent to a client right after it joins"}
    )
    resume_max: int = field(
        default=1_000, metadata={"help": "most missed messages replayed to a resuming client"}
    )
    history_max: int = field(
        default=10_000,
        metadata={"help": "messages kept per room by the memory and Redis stores"},
    )
    history_max_age: float = field(
        default=0.0,
        metadata={"help": "seconds a message is kept by the Redis store; 0: no age limit"},
    )
    presence_list_max: int = field(
        default=100, metadata={"help": "most member names listed in PRESENCE"}
    )
    presence_broadcast_max: int = field(
        default=1_000,
        metadata={"help": "rooms with more users than this send no USER_JOINED/USER_LEFT"},
    )
    max_message_chars: int = field(
        default=2_000, metadata={"help": "longest chat text accepted, in characters"}
    )
    max_frame_bytes: int = field(
        default=65_536, metadata={"help": "largest WebSocket message accepted; over it: close 1009"}
    )
    permessage_deflate: bool = field(
        default=False,
        metadata={
            "help": "accept compressed client messages (inflated size capped by "
            "max_frame_bytes); replies stay uncompressed"
        },
    )
    max_rooms_per_connection: int = field(
        default=100, metadata={"help": "rooms one connection may be in at once"}
    )
    max_queue_bytes: int = field(
        default=2 * 1024 * 1024,
        metadata={"help": "unsent bytes per connection before it is closed as slow (4008)"},
    )
    store_queue_max: int = field(
        default=10_000, metadata={"help": "store operations waiting at once before 'overloaded'"}
    )
    store_batch_max: int = field(
        default=512,
        metadata={"help": "store operations per SQLite transaction or Redis round trip"},
    )
    redis_timeout: float = field(
        default=15.0,
        metadata={"help": "seconds a Redis operation may take, its wait in the queue included"},
    )
    feed_hold_max: int = field(
        default=10_000,
        metadata={
            "help": "publications held per room while a gap is read from the history; past "
            "it they are dropped and the room's history is sent again"
        },
    )
    feed_ring: int = field(
        default=256,
        metadata={"help": "latest messages kept per room to catch joiners up without a read"},
    )
    presence_retry_max: int = field(
        default=100_000,
        metadata={
            "help": "presence leaves kept for a retry while Redis is away; past it, dead-node "
            "expiry counts those users out"
        },
    )
    ping_interval: float = field(
        default=20.0, metadata={"help": "seconds between keepalive pings; 0 turns them off"}
    )
    drain_time: float = field(
        default=2.0,
        metadata={"help": "seconds over which shutdown spreads its closes (jittered batches)"},
    )
    shutdown_timeout: float = field(
        default=10.0, metadata={"help": "seconds shutdown may take in all before it drops peers"}
    )
    backlog: int = field(default=1024, metadata={"help": "listen backlog for connection bursts"})
    loop: str = field(default="auto", metadata={"help": "event loop: auto, uvloop or asyncio"})
    gc_threshold: int = field(
        default=50_000,
        metadata={
            "help": "`roomcast serve` only: allocations between young garbage collections "
            "(older ones run 50 and 100 times rarer), and start-up objects frozen; 0 keeps "
            "Python's (700, 10, 10) and freezes nothing"
        },
    )
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})
    log_format: str = field(default="text", metadata={"help": "text, or json (one object a line)"})

    def __post_init__(self) -> None:
        for name in (
            "history_max",
            "resume_max",
            "presence_list_max",
            "presence_broadcast_max",
            "max_message_chars",
            "max_frame_bytes",
            "max_rooms_per_connection",
            "max_queue_bytes",
            "store_queue_max",
            "store_batch_max",
            "feed_hold_max",
            "feed_ring",
            "presence_retry_max",
            "redis_connections",
            "backlog",
            "max_connections_per_ip",
            "message_burst",
            "rate_limit_close_after",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.history_size < 0:
            raise ValueError("history_size must be 0 or more")
        if self.node_heartbeat <= 0 or self.redis_timeout <= 0:
            raise ValueError("node_heartbeat and redis_timeout must be positive")
        if self.history_max_age < 0:
            raise ValueError("history_max_age must be 0 or more")
        try:  # the adapters' chooser says which pairings work (one place for the rules)
            resolve(self.store, self.broker)
        except UnsupportedURL as exc:
            raise ValueError(str(exc)) from None
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.ping_interval < 0 or self.drain_time < 0 or self.shutdown_timeout < 0:
            raise ValueError("ping_interval, drain_time and shutdown_timeout must be 0 or more")
        if self.max_message_rate <= 0 or self.handshake_timeout <= 0:
            raise ValueError("max_message_rate and handshake_timeout must be positive")
        if self.auth not in ("none", "jwt"):
            raise ValueError("auth must be none or jwt")
        if self.auth == "jwt" and not (self.jwt_secret or self.jwt_public_key):
            raise ValueError("--auth jwt needs --jwt-secret or --jwt-public-key")
        if self.jwt_secret and len(self.jwt_secret.encode()) < 32:
            raise ValueError("jwt_secret must be at least 32 bytes (RFC 7518 for HS256)")
        if self.rooms not in ("open", "managed"):
            raise ValueError("rooms must be open or managed")
        if self.gc_threshold < 0:
            raise ValueError("gc_threshold must be 0 or more")
        if self.loop not in ("auto", "uvloop", "asyncio"):
            raise ValueError("loop must be auto, uvloop or asyncio")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be text or json")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be debug, info, warning or error")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _convert(kind: Any, raw: str, name: str) -> Any:
    if kind in (bool, "bool"):
        value = raw.strip().lower()
        if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"{env_name(name)}={raw!r} is not true or false")
        return value in ("1", "true", "yes", "on")
    if str(kind).startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
    except ValueError:
        raise ValueError(f"{env_name(name)}={raw!r} is not a number") from None
    return raw


def load(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Defaults, overridden by a TOML `config_file`, overridden by ROOMCAST_* environment
    variables, overridden by `overrides` (the flags given; None values are ignored)."""
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    if config_file:
        values.update(read_toml(config_file))
    for f in fields(Settings):
        raw = environ.get(env_name(f.name))
        if raw is not None and raw != "":
            values[f.name] = _convert(f.type, raw, f.name)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = tuple(value) if isinstance(value, list) else value
    return Settings(**values)


def describe() -> list[tuple[str, str, str, str]]:
    """(flag, environment variable, default, help) for every setting."""
    return [
        (
            flag_name(f.name),
            env_name(f.name),
            _show(f.default),
            str(f.metadata.get("help", "")),
        )
        for f in fields(Settings)
    ]


def flag_name(name: str) -> str:
    """The command-line flag of a setting."""
    for f in fields(Settings):
        if f.name == name:
            return str(f.metadata.get("flag", "--" + name.replace("_", "-")))
    raise KeyError(name)


def _show(default: Any) -> str:
    if isinstance(default, tuple):
        return "(none)" if not default else ",".join(default)
    return repr(default) if isinstance(default, str) else str(default)


__all__ = [
    "SECRETS",
    "SECTIONS",
    "SECTION_OF",
    "Settings",
    "describe",
    "env_name",
    "flag_name",
    "load",
    "to_toml",
]
