"""The HTTP and WebSocket server: one port, aiohttp underneath.

`GET /` (and `/ws`) upgrades to WebSocket when asked to, and otherwise serves the
browser page. Each WebSocket connection gets an `Outbox` and a `Session`; frames are
read one at a time and handed to the session.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from aiohttp import hdrs, web

from roomcast import __version__
from roomcast.adapters import Backends, build
from roomcast.core.errors import CloseCode, StoreError
from roomcast.core.tokens import TokenVerifier
from roomcast.ports import Store
from roomcast.runtime.api import RoomsAPI
from roomcast.runtime.connections import Connections
from roomcast.runtime.limits import ServerSettings
from roomcast.runtime.node import Node
from roomcast.runtime.outbox import Flusher
from roomcast.runtime.stats import Stats, register, watch_loop_lag

log = logging.getLogger("roomcast.server")

# Accepted subprotocols: our own versioned name and the reference page's. aiohttp picks
# the first one the client lists that is known here. No subprotocol is fine too.
SUBPROTOCOLS: Final = ("roomcast.v1", "echo-protocol")


STATIC_DIR: Final = Path(str(importlib.resources.files("roomcast").joinpath("static")))

# The browser client runs no inline script and loads nothing from elsewhere.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _page(name: str) -> web.Response:
    body = (STATIC_DIR / name).read_bytes()
    return web.Response(body=body, content_type="text/html", charset="utf-8")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if response.status != 101:
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)


class RoomcastServer:
    """A running roomcast node: store, hub and listening socket."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        backends: Backends | None = None,
        clock: Callable[[], float] = time.time,
        echo_path: str | None = None,
    ) -> None:
        self.settings = settings
        if backends is None:
            backends = build(
                settings.store,
                settings.broker,
                history_max=settings.history_max,
                queue_max=settings.store_queue_max,
                history_max_age=settings.history_max_age,
                prefix=settings.redis_prefix,
                redis_connections=settings.redis_connections,
                heartbeat=settings.node_heartbeat,
                batch_max=settings.store_batch_max,
                redis_timeout=settings.redis_timeout,
            )
        self.backends = backends
        self.store: Store = backends.store
        self.stats = Stats()
        self.node = Node(
            settings,
            backends.store,
            backends.broker,
            backends.presence,
            clock=clock,
            stats=self.stats,
        )
        self._lag_task: asyncio.Task[None] | None = None
        verifier = (
            TokenVerifier(secret=settings.jwt_secret, public_key_file=settings.jwt_public_key)
            if settings.auth == "jwt"
            else None
        )
        self.connections = Connections(settings, self.node, self.stats, verifier)
        self._sockets = self.connections.sockets
        self._echo_path = echo_path
        self._render_metrics = register(self)  # last: the registry reads the server now
        self._runner: web.AppRunner | None = None
        self._flusher: Flusher | None = None
        self.port = settings.port

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._flusher = Flusher(asyncio.get_running_loop(), self.stats.send_wait.observe)
        self.connections.flusher = self._flusher
        await self.store.open()
        await self.node.start()
        api = RoomsAPI(self.node)
        app = web.Application(
            client_max_size=self.settings.max_frame_bytes, middlewares=[api.errors]
        )
        app.add_routes(api.routes())
        app.on_response_prepare.append(_security_headers)
        app.router.add_get("/", self._root)
        app.router.add_get("/ws", self._root)
        app.router.add_get("/admin", self._admin)
        app.router.add_static("/static", STATIC_DIR, append_version=False)
        if self._echo_path is not None:
            app.router.add_get(self._echo_path, self.connections.echo)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.settings.shutdown_timeout,
            # aiohttp arms this at connect time and re-arms it after each response, so it
            # bounds both a slow request (slowloris) and an idle keep-alive connection.
            keepalive_timeout=self.settings.handshake_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.settings.host,
            self.settings.port,
            backlog=self.settings.backlog,
            reuse_address=True,
        )
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            await self.node.stop()
            await self.store.close()
            raise
        self._lag_task = asyncio.get_running_loop().create_task(watch_loop_lag(self.stats))
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                self.port = int(address[1])
                break

    async def stop(self) -> None:
        """Drain: stop accepting, then close every connection with 1001 (going away) in
        shuffled batches spread over `drain_time`, so clients do not all reconnect to
        the other nodes at once; wait for their closing handshakes until
        `shutdown_timeout`, drop the rest, close the store."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        if self._lag_task is not None:
            self._lag_task.cancel()
        for site in list(runner.sites):
            await site.stop()
        sockets = list(self._sockets.items())
        random.shuffle(sockets)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout
        batches = max(1, min(len(sockets), int(self.settings.drain_time * 20)))
        size = max(1, -(-len(sockets) // batches))  # ceiling division
        closing: list[asyncio.Future[bool]] = []
        for start in range(0, len(sockets), size):
            if start:
                await asyncio.sleep(self.settings.drain_time / batches)
            for ws, box in sockets[start : start + size]:
                box.seal()  # nothing may follow the Close frame
                closing.append(
                    asyncio.ensure_future(
                        ws.close(code=CloseCode.GOING_AWAY, message=b"server shutting down")
                    )
                )
        if closing:
            _, late = await asyncio.wait(closing, timeout=max(0.0, deadline - loop.time()))
            for task in late:
                task.cancel()
            for _, box in sockets:  # peers that did not answer the close in time
                box.abort()
        await runner.cleanup()
        await self.node.stop()
        await self.store.close()

    @property
    def url(self) -> str:
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}/"

    # ------------------------------------------------------------ HTTP

    async def _healthz(self, request: web.Request) -> web.Response:
        """Alive: the process answers."""
        return web.json_response({"status": "ok", "version": __version__})

    async def _readyz(self, request: web.Request) -> web.Response:
        """Ready: the store answers (and, with a broker, the broker)."""
        try:
            await asyncio.wait_for(self.store.ping(), timeout=2.0)
        except (StoreError, TimeoutError) as exc:
            return web.json_response({"ready": False, "store": str(exc) or "timeout"}, status=503)
        if not self.node.broker.connected:
            return web.json_response(
                {"ready": False, "store": "ok", "broker": "not connected"}, status=503
            )
        return web.json_response({"ready": True, "store": "ok", "broker": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format."""
        return web.Response(
            body=self._render_metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    def connection_count(self) -> int:
        return len(self._sockets)

    def queued_bytes(self) -> int:
        return sum(box.buffered_bytes() for box in self._sockets.values())

    async def _root(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
            return await self.connections.accept(request)
        return _page("index.html")

    async def _admin(self, request: web.Request) -> web.Response:
        return _page("admin.html")
