"""The `roomcast` command line: `roomcast serve`, `roomcast --version`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from roomcast import __version__
from roomcast.config import Settings, describe, flag_name, load


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
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server. Every flag also reads ROOMCAST_<NAME> from the "
        "environment; a flag given here wins over the environment.",
    )
    described = {row[0]: row for row in describe()}
    for f in fields(Settings):
        flag, env, default, text = described[flag_name(f.name)]
        kind: Any = {"int": int, "float": float}.get(str(f.type), str)
        many = str(f.type).startswith("tuple")
        serve.add_argument(
            flag,
            dest=f.name,
            type=kind,
            default=None,
            action="append" if many else "store",
            help=f"{text} [{env}" + (", comma-separated" if many else "") + f"; default {default}]",
        )
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
    return parser


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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    print(
        f"roomcast {__version__} serving http://{host}:{server.port}/ and "
        f"ws://{host}:{server.port}/ (store {settings.store}); Ctrl-C stops it",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "token":
        return _token(args)
    if args.command != "serve":
        parser.print_help()
        return 0 if args.command is None and argv is not None else 2
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = load(overrides)
    except ValueError as exc:
        print(f"roomcast: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with asyncio.Runner(loop_factory=_event_loop_factory(settings.loop)) as runner:
        return runner.run(_serve(settings))
