"""Settings files: the sections settings are grouped in, and the TOML that holds them.

A file may give a setting at its top level or in the table of the setting's section;
`to_toml` writes every section as a table (secrets masked), which reads back the same.
"""

from __future__ import annotations

import tomllib
from typing import Any

# Settings by section, for the TOML file's tables and the docs (the names users see in
# flags and ROOMCAST_* variables do not change). Every setting is in one section.
SECTIONS: dict[str, tuple[str, ...]] = {
    "server": (
        "host", "port", "rooms", "handshake_timeout", "ping_interval", "drain_time",
        "shutdown_timeout", "backlog", "loop", "gc_threshold", "permessage_deflate",
    ),
    "storage": (
        "store", "broker", "node_heartbeat", "redis_connections", "redis_prefix",
        "redis_timeout", "history_max", "history_max_age", "store_queue_max",
        "store_batch_max",
    ),
    "auth": (
        "admin_token", "api_key", "auth", "jwt_secret", "jwt_public_key", "allowed_origins",
        "trusted_proxies",
    ),
    "limits": (
        "max_connections_per_ip", "max_message_rate", "message_burst",
        "rate_limit_close_after", "history_size", "resume_max", "presence_list_max",
        "presence_broadcast_max", "max_message_chars", "max_frame_bytes",
        "max_rooms_per_connection", "max_queue_bytes", "feed_hold_max", "feed_ring",
        "presence_retry_max",
    ),
    "logging": ("log_level", "log_format"),
}  # fmt: skip
SECTION_OF = {name: section for section, names in SECTIONS.items() for name in names}

SECRETS = frozenset({"admin_token", "api_key", "jwt_secret"})


def read_toml(path: str) -> dict[str, Any]:
    """Settings from a TOML file: `name = value` at the top, or inside the table of the
    setting's section (`[limits]`, `[storage]`...)."""
    with open(path, "rb") as handle:
        try:
            data = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in SECTIONS:
                raise ValueError(f"{path}: unknown section [{key}]")
            for inner, setting in value.items():
                values.update(_setting(path, inner, setting, section=key))
        else:
            values.update(_setting(path, key, value, section=None))
    return values


def _setting(path: str, key: str, value: Any, section: str | None) -> dict[str, Any]:
    name = key.replace("-", "_")
    if name not in SECTION_OF:
        raise ValueError(f"{path}: unknown setting {key!r}")
    if section is not None and SECTION_OF[name] != section:
        raise ValueError(f"{path}: {key!r} belongs in [{SECTION_OF[name]}], not [{section}]")
    return {name: tuple(value) if isinstance(value, list) else value}


def to_toml(settings: Any) -> str:
    """The settings as TOML, a table per section, secrets masked."""
    blocks = []
    for section, names in SECTIONS.items():
        lines = [f"[{section}]\n", *(_toml_line(settings, name) for name in names)]
        blocks.append("".join(lines))
    return "\n".join(blocks)


def _toml_line(settings: Any, name: str) -> str:
    value = getattr(settings, name)
    if name in SECRETS and value:
        value = "********"
    if isinstance(value, tuple):
        text = "[" + ", ".join(_toml_str(v) for v in value) + "]"
    elif isinstance(value, str):
        text = _toml_str(value)
    else:
        text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"{name} = {text}\n"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
