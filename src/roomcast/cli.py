"""The `roomcast` command line: `roomcast serve`, `roomcast --version`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from roomcast import __version__
from roomcast.config import Settings, describe, flag_name, load, to_toml
from roomcast.logs import configure as configure_logging

log = logging.getLogger("roomcast")


def _event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("roomcast: --loop uvloop asked for, not installed") from None
        return None
    return uvloop.new_event_loop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomcast",
        description="Real-time chat rooms over WebSockets: one port for HTTP and WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"roomcast {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    settings = argparse.ArgumentParser(add_help=False)
    settings.add_argument(
        "--config", default=None, help="a TOML file of settings [ROOMCAST_CONFIG]"
    )
    described = {row[0]: row for row in describe()}
    for f in fields(Settings):
        flag, env, default, text = described[flag_name(f.name)]
        kind: Any = {"int": int, "float": float}.get(str(f.type), str)
        many = str(f.type).startswith("tuple")
        if str(f.type) == "bool":
            settings.add_argument(
                flag,
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=f"{text} [{env}; default {default}]",
            )
            continue
        settings.add_argument(
            flag,
            dest=f.name,
            type=kind,
            default=None,
            action="append" if many else "store",
            help=f"{text} [{env}" + (", comma-separated" if many else "") + f"; default {default}]",
        )
    commands.add_parser(
        "serve",
        parents=[settings],
        help="run the server",
        description="Run the server. Settings come from defaults, then a --config TOML "
        "file, then ROOMCAST_<NAME> environment variables, then these flags; each wins "
        "over the ones before it.",
    )
    bench = commands.add_parser(
        "bench",
        help="load-test a running server on this machine (needs roomcast[bench])",
        description="Run a load scenario against a roomcast on this machine and print a "
        "table (JSON too): fanout, rooms, idle or handshakes. See docs/performance.md.",
    )
    from roomcast.bench.cli import add_arguments

    add_arguments(bench)
    commands.add_parser(
        "migrate",
        parents=[settings],
        help="bring the store's format up to this version (serve does it too)",
        description="Migrate the store named by --store/--broker (SQLite: the schema, in "
        "one exclusive transaction, so several nodes may start at once; Redis: the key "
        "format), then exit.",
    )
    config = commands.add_parser(
        "config",
        parents=[settings],
        help="print the effective settings (secrets masked)",
        description="Print the settings `roomcast serve` would use with the same "
        "flags, file and environment, as TOML, with secrets masked.",
    )
    config.add_argument("--print", action="store_true", help="print them (the default)")
    token = commands.add_parser(
        "token",
        help="mint a user token for --auth jwt (development)",
        description="Print an HS256 token for --auth jwt. The secret comes from "
        "--jwt-secret or ROOMCAST_JWT_SECRET.",
    )
    token.add_argument("--jwt-secret", default=None, help="[ROOMCAST_JWT_SECRET]")
    token.add_argument("--user", required=True, help="the user id (sub)")
    token.add_argument("--name", default=None, help="display name")
    token.add_argument("--admin", action="store_true", help="make the user an admin")
    token.add_argument("--room", action="append", dest="rooms", help="allowed room (repeatable)")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--url", default="http://127.0.0.1:8080", help="the server's HTTP URL")
    remote.add_argument(
        "--token",
        default=None,
        help="API key or admin token [ROOMCAST_API_KEY, ROOMCAST_ADMIN_TOKEN]",
    )
    send = commands.add_parser("send", parents=[remote], help="post a message via the HTTP API")
    send.add_argument("room")
    send.add_argument("text")
    send.add_argument("--name", default="cli", help="sender name shown in the room")
    tail = commands.add_parser("tail", parents=[remote], help="print a room's messages live")
    tail.add_argument("room")
    tail.add_argument("--json", action="store_true", help="every event as a JSON line")
    tail.add_argument("--count", type=int, default=None, help="stop after this many messages")
    rooms = commands.add_parser("rooms", parents=[remote], help="list, create or update rooms")
    rooms.add_argument("action", nargs="?", default="list", choices=["list", "create", "update"])
    rooms.add_argument("room", nargs="?", help="room id (update; optional for create)")
    rooms.add_argument("--name")
    rooms.add_argument("--start-time", help="ISO 8601 with a zone, or 'none'")
    rooms.add_argument("--open", dest="is_open", action="store_true", default=None)
    rooms.add_argument("--closed", dest="is_open", action="store_false")
    rooms.add_argument("--cooldown", type=float)
    rooms.add_argument("--medium", type=int)
    rooms.add_argument("--high", type=int)
    return parser


def _remote(args: argparse.Namespace) -> int:
    from roomcast import remote

    if args.command == "send":
        return asyncio.run(remote.send(args.url, args.room, args.text, args.name, args.token))
    if args.command == "tail":
        return asyncio.run(remote.tail(args.url, args.room, args.json, args.token, args.count))
    fields: dict[str, Any] = {
        key: value
        for key, value in (
            ("name", args.name),
            ("isOpen", args.is_open),
            ("cooldownSeconds", args.cooldown),
            ("mediumThreshold", args.medium),
            ("highThreshold", args.high),
        )
        if value is not None
    }
    if args.start_time is not None:
        fields["startTime"] = None if args.start_time == "none" else args.start_time
    if args.action == "create" and args.room:
        fields["roomId"] = args.room
    if args.action == "update" and not args.room:
        print("roomcast: rooms update needs a room id", file=sys.stderr)
        return 2
    return asyncio.run(remote.rooms(args.url, args.action, args.token, fields, args.room))


def _token(args: argparse.Namespace) -> int:
    from roomcast.core.tokens import mint

    secret = args.jwt_secret or os.environ.get("ROOMCAST_JWT_SECRET", "")
    if not secret:
        print("roomcast: give --jwt-secret or set ROOMCAST_JWT_SECRET", file=sys.stderr)
        return 2
    print(
        mint(
            secret,
            user=args.user,
            name=args.name,
            admin=args.admin,
            rooms=args.rooms,
            ttl_seconds=args.ttl,
        )
    )
    return 0


def tune_gc(threshold: int) -> None:
    """Collect garbage cycles less often than Python's default (every 700 allocations).

    A server holding thousands of connections and messages spends much of its time in
    the collector otherwise: measured with `bench/ab.py`, (50,000, 50, 100) takes ~40%
    off the CPU per handshake and the many-rooms p99 from ~230 to ~40 ms
    (docs/performance.md). roomcast makes few cycles, so little garbage waits longer.
    """
    if threshold:
        gc.set_threshold(threshold, 50, 100)


def freeze_startup() -> None:
    """Collect what start-up left behind, then move everything still alive out of the
    collector's sight: it lives as long as the process, so scanning it again is waste."""
    gc.collect()
    gc.freeze()


async def _serve(settings: Settings) -> int:
    from roomcast.runtime.server import RoomcastServer

    generated = not settings.admin_token
    if generated:
        settings = dataclasses.replace(settings, admin_token=secrets.token_urlsafe(24))
    server = RoomcastServer(settings)
    try:
        await server.start()
    except OSError as exc:
        print(f"roomcast: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    if settings.gc_threshold:
        freeze_startup()
    log.debug(
        "garbage collector: thresholds %s, %d start-up objects frozen",
        gc.get_threshold(),
        gc.get_freeze_count(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    print(
        f"roomcast {__version__} serving http://{host}:{server.port}/ and "
        f"ws://{host}:{server.port}/ (store {server.backends.store_url}); Ctrl-C stops it",
        flush=True,
    )
    if generated:
        print(
            f"admin token (generated; set ROOMCAST_ADMIN_TOKEN to choose one): "
            f"{settings.admin_token}",
            flush=True,
        )
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()
    print("roomcast stopped", flush=True)
    return 0


def _migrate(settings: Settings) -> int:
    from roomcast.adapters import migrate

    try:
        done = asyncio.run(migrate(settings.store, settings.broker, prefix=settings.redis_prefix))
    except Exception as exc:  # one line for the operator, not a traceback
        print(f"roomcast migrate: {exc}", file=sys.stderr)
        return 1
    print(done)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "token":
        return _token(args)
    if args.command in ("send", "tail", "rooms"):
        return _remote(args)
    if args.command == "bench":
        from roomcast.bench.cli import run

        return run(args)
    if args.command not in ("serve", "config", "migrate"):
        parser.print_help()
        return 0 if args.command is None and argv is not None else 2
    names = {f.name for f in fields(Settings)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    try:
        settings = load(overrides, config_file=args.config or os.environ.get("ROOMCAST_CONFIG"))
    except (ValueError, OSError) as exc:
        print(f"roomcast: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(to_toml(settings), end="")
        return 0
    if args.command == "migrate":
        return _migrate(settings)
    configure_logging(settings.log_level, settings.log_format)
    tune_gc(settings.gc_threshold)
    with asyncio.Runner(loop_factory=_event_loop_factory(settings.loop)) as runner:
        return runner.run(_serve(settings))
