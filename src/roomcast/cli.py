"""The `roomcast` command line: `roomcast serve`, `roomcast --version`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from roomcast import __version__
from roomcast.config import Settings, describe, load


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
    kinds = {f.name: f.type for f in fields(Settings)}
    for flag, env, default, text in describe():
        name = flag[2:].replace("-", "_")
        kind: Any = {"int": int, "float": float}.get(str(kinds[name]), str)
        serve.add_argument(flag, type=kind, default=None, help=f"{text} [{env}; default {default}]")
    return parser


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
