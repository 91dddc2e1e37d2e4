"""The HTTP and WebSocket server: one port, aiohttp underneath.

`GET /` (and `/ws`) upgrades to WebSocket when asked to, and otherwise serves the
browser page. Each WebSocket connection gets an `Outbox` and a `Session`; frames are
read one at a time and handed to the session.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from aiohttp import WSMsgType, hdrs, web

from roomcast import __version__
from roomcast.adapters import open_store
from roomcast.config import Settings
from roomcast.core.errors import CloseCode, ErrorCode
from roomcast.ports import Store
from roomcast.runtime.api import RoomsAPI
from roomcast.runtime.node import Node
from roomcast.runtime.outbox import Flusher, Outbox
from roomcast.runtime.session import Session, token_matches

log = logging.getLogger("roomcast.server")

# Offered subprotocols, in the server's order of preference when a client offers several:
# our own versioned name, then the reference page's. No subprotocol is fine too.
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
        settings: Settings,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store: Store = store or open_store(
            settings.store, history_max=settings.history_max, queue_max=settings.store_queue_max
        )
        self.node = Node(settings, self.store, clock=clock)
        self._sockets: dict[web.WebSocketResponse, Outbox] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._flusher: Flusher | None = None
        self.port = settings.port

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._flusher = Flusher(asyncio.get_running_loop())
        await self.store.open()
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
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.settings.shutdown_timeout,
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
            await self.store.close()
            raise
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                self.port = int(address[1])
                break

    async def stop(self) -> None:
        """Close every connection with 1001 (going away), then the store."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        for site in list(runner.sites):
            await site.stop()
        sockets = list(self._sockets.items())
        for _, box in sockets:
            box.flush()

        async def close(ws: web.WebSocketResponse) -> None:
            await ws.close(code=CloseCode.GOING_AWAY, message=b"server shutting down")

        if sockets:
            closing = [asyncio.ensure_future(close(ws)) for ws, _ in sockets]
            _, late = await asyncio.wait(closing, timeout=self.settings.shutdown_timeout)
            for task in late:
                task.cancel()
            for _, box in sockets:  # peers that did not answer the close in time
                box.abort()
        await runner.cleanup()
        await self.store.close()

    @property
    def url(self) -> str:
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}/"

    # ------------------------------------------------------------ HTTP

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def _root(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
            return await self._websocket(request)
        return _page("index.html")

    async def _admin(self, request: web.Request) -> web.Response:
        return _page("admin.html")

    # ------------------------------------------------------------ WebSocket

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        settings = self.settings
        ws = web.WebSocketResponse(
            protocols=SUBPROTOCOLS,
            max_msg_size=settings.max_frame_bytes,
            heartbeat=settings.ping_interval or None,
            compress=False,
        )
        await ws.prepare(request)
        transport = request.transport
        # uvloop's transports do not subclass asyncio's classes: check for None only.
        assert transport is not None
        assert self._flusher is not None
        conn_id = f"c{next(self._ids)}"

        def overflow() -> None:
            log.warning("%s: slow consumer closed (%s)", conn_id, CloseCode.SLOW_CONSUMER)
            session.close()
            task = asyncio.get_running_loop().create_task(self._close_slow(ws, box))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        box = Outbox(
            transport, self._flusher, max_bytes=settings.max_queue_bytes, on_overflow=overflow
        )
        token = request.query.get("token")
        session = Session(
            node=self.node,
            outbox=box,
            conn_id=conn_id,
            is_admin=token is not None and token_matches(token, settings.admin_token),
        )
        self._sockets[ws] = box
        log.debug("%s: connected from %s (%s)", conn_id, request.remote, ws.ws_protocol)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    try:
                        await session.handle_text(msg.data)
                    except Exception:
                        log.exception("%s: failed on a message", conn_id)
                        session.send_error(ErrorCode.INTERNAL_ERROR, "the server failed on it")
                elif msg.type is WSMsgType.BINARY:
                    session.handle_binary()
                # ERROR: aiohttp has already closed with the right code (1009, 1007...).
        finally:
            session.close()
            box.flush()
            del self._sockets[ws]
            log.debug("%s: disconnected (%s)", conn_id, ws.close_code)
        return ws

    async def _close_slow(self, ws: web.WebSocketResponse, box: Outbox) -> None:
        """Try a closing handshake with code 4008, then drop the connection anyway: its
        buffers are full, so the close frame may never get through."""
        try:
            await asyncio.wait_for(
                ws.close(code=CloseCode.SLOW_CONSUMER, message=b"slow consumer"), timeout=1.0
            )
        except (TimeoutError, ConnectionError):
            pass
        finally:
            box.abort()
