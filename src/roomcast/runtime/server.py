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
import random
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

from aiohttp import WSMsgType, hdrs, web

from roomcast import __version__
from roomcast.adapters import Backends, build
from roomcast.core.errors import ClientError, CloseCode, ErrorCode, StoreError
from roomcast.core.tokens import Identity, TokenVerifier
from roomcast.ports import Store
from roomcast.runtime.api import RoomsAPI, error_response
from roomcast.runtime.frames import binary_frame, text_frame
from roomcast.runtime.guard import client_address, origin_allowed
from roomcast.runtime.limits import ServerSettings
from roomcast.runtime.node import Node
from roomcast.runtime.outbox import Flusher, Outbox
from roomcast.runtime.session import Session, token_matches
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
        self._sockets: dict[web.WebSocketResponse, Outbox] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_ip: dict[str, int] = {}
        self._verifier = (
            TokenVerifier(secret=settings.jwt_secret, public_key_file=settings.jwt_public_key)
            if settings.auth == "jwt"
            else None
        )
        self._echo_path = echo_path
        self._render_metrics = register(self)  # last: the registry reads the server now
        self._runner: web.AppRunner | None = None
        self._flusher: Flusher | None = None
        self.port = settings.port

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._flusher = Flusher(asyncio.get_running_loop(), self.stats.send_wait.observe)
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
            app.router.add_get(self._echo_path, self._echo)
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
            return await self._websocket(request)
        return _page("index.html")

    async def _admin(self, request: web.Request) -> web.Response:
        return _page("admin.html")

    # ------------------------------------------------------------ WebSocket

    def _refuse(self, request: web.Request) -> web.Response | None:
        """The HTTP answer that refuses an upgrade (before any frame), or None."""
        settings = self.settings
        origin = request.headers.get(hdrs.ORIGIN)
        if not origin_allowed(origin, request.host, settings.allowed_origins):
            self.stats.refused["origin"] += 1
            log.warning("refused a WebSocket from origin %r", origin)
            return error_response(ErrorCode.FORBIDDEN, f"origin {origin!r} is not allowed")
        address = self._address(request)
        if self._per_ip.get(address, 0) >= settings.max_connections_per_ip:
            self.stats.refused["per_ip"] += 1
            return error_response(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"at most {settings.max_connections_per_ip} connections per address",
            )
        return None

    def _address(self, request: web.Request) -> str:
        forwarded = request.headers.get(hdrs.X_FORWARDED_FOR)
        return client_address(request.remote, forwarded, self.settings.trusted_proxies)

    def _query_identity(self, request: web.Request) -> tuple[bool, Identity | None]:
        """(is admin, identity) from a `token` query parameter; ClientError if invalid."""
        token = request.query.get("token")
        if token is None:
            return False, None
        if token_matches(token, self.settings.admin_token):
            return True, None
        if self._verifier is None:
            raise ClientError(ErrorCode.UNAUTHORIZED, "that token is not valid")
        return False, self._verifier.verify(token)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        settings = self.settings
        refusal = self._refuse(request)
        if refusal is not None:
            return refusal
        try:
            is_admin, identity = self._query_identity(request)
        except ClientError as exc:
            self.stats.refused["token"] += 1
            return error_response(exc.code, exc.message)
        ws = web.WebSocketResponse(
            protocols=SUBPROTOCOLS,
            max_msg_size=settings.max_frame_bytes,
            heartbeat=settings.ping_interval or None,
            # Compressed messages are inflated by aiohttp with a cap of max_msg_size;
            # what roomcast sends stays uncompressed (RFC 7692 allows that).
            compress=settings.permessage_deflate,
        )
        await ws.prepare(request)
        transport = request.transport
        # uvloop's transports do not subclass asyncio's classes: check for None only.
        assert transport is not None
        assert self._flusher is not None
        conn_id = f"c{next(self._ids)}"
        address = self._address(request)
        self.stats.connections_total += 1
        extra = {"conn": conn_id}
        loop = asyncio.get_running_loop()

        closing = False

        def close(code: int, reason: str) -> None:
            nonlocal closing
            if closing:
                return
            closing = True
            log.info("%s: closing (%s %s)", conn_id, code, reason, extra=extra)
            self.stats.closes[code] += 1
            session.close()
            box.seal()
            self._spawn(self._close_hard(ws, box, code, reason))

        def overflow() -> None:
            log.warning("%s: slow consumer", conn_id, extra=extra)
            close(CloseCode.SLOW_CONSUMER, "slow consumer")

        box = Outbox(
            transport, self._flusher, max_bytes=settings.max_queue_bytes, on_overflow=overflow
        )
        session = Session(
            node=self.node,
            outbox=box,
            conn_id=conn_id,
            is_admin=is_admin,
            close=close,
            verifier=self._verifier,
            identity=identity,
        )
        auth_deadline = None
        if self._verifier is not None and identity is None and not is_admin:
            auth_deadline = loop.call_later(
                settings.handshake_timeout, self._auth_timeout, session, close
            )
        self._sockets[ws] = box
        self._per_ip[address] = self._per_ip.get(address, 0) + 1
        log.debug("%s: connected (%s)", conn_id, ws.ws_protocol, extra=extra)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    try:
                        await session.handle_text(msg.data)
                    except Exception:
                        log.exception("%s: failed on a message", conn_id, extra=extra)
                        session.send_error(ErrorCode.INTERNAL_ERROR, "the server failed on it")
                elif msg.type is WSMsgType.BINARY:
                    session.handle_binary()
                # ERROR: aiohttp has already closed with the right code (1009, 1007...).
        finally:
            if auth_deadline is not None:
                auth_deadline.cancel()
            session.close()
            box.flush()
            del self._sockets[ws]
            left = self._per_ip[address] - 1
            if left:
                self._per_ip[address] = left
            else:
                del self._per_ip[address]
            log.debug("%s: disconnected (%s)", conn_id, ws.close_code, extra=extra)
        return ws

    @staticmethod
    def _auth_timeout(session: Session, close: Callable[[int, str], None]) -> None:
        if session.identity is None and not session.is_admin:
            close(CloseCode.UNAUTHENTICATED, "no token")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        """Echo every message back, on the production stack (conformance tests only)."""
        ws = web.WebSocketResponse(
            protocols=SUBPROTOCOLS,
            max_msg_size=64 * 1024 * 1024,
            heartbeat=self.settings.ping_interval or None,
            compress=False,
        )
        await ws.prepare(request)
        assert request.transport is not None
        assert self._flusher is not None
        box = Outbox(
            request.transport,
            self._flusher,
            max_bytes=256 * 1024 * 1024,
            on_overflow=lambda: box.abort(),
        )
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                box.send(text_frame(msg.data.encode()))
            elif msg.type is WSMsgType.BINARY:
                box.send(binary_frame(msg.data))
        box.flush()
        return ws

    async def _close_hard(
        self, ws: web.WebSocketResponse, box: Outbox, code: int, reason: str
    ) -> None:
        """Try a closing handshake, then drop the connection anyway: for a slow consumer
        the buffers are full, so the close frame may never get through."""
        try:
            await asyncio.wait_for(ws.close(code=code, message=reason.encode()), timeout=1.0)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            box.abort()
