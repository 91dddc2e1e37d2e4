"""WebSocket connections: the upgrade's checks, then one `Session` per connection.

Each upgrade is checked before any frame (origin, connections per address, a token in
the URL); then the connection gets an `Outbox` and a `Session`, and its frames are read
one at a time and handed to the session. The runtime moves bytes; what they mean is
the session's and the node's business.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

from aiohttp import WSMsgType, hdrs, web

from roomcast.core.errors import ClientError, CloseCode, ErrorCode
from roomcast.core.guard import client_address, origin_allowed
from roomcast.core.tokens import Identity, TokenVerifier
from roomcast.runtime.api import error_response
from roomcast.runtime.frames import binary_frame, text_frame
from roomcast.runtime.limits import ServerSettings
from roomcast.runtime.node import Node
from roomcast.runtime.outbox import Flusher, Outbox
from roomcast.runtime.session import Session, rules_of, token_matches
from roomcast.runtime.stats import Stats

log = logging.getLogger("roomcast.server")

# Accepted subprotocols: our own versioned name and the reference page's. aiohttp picks
# the first one the client lists that is known here. No subprotocol is fine too.
SUBPROTOCOLS: Final = ("roomcast.v1", "echo-protocol")


class Connections:
    """The open WebSocket connections of one server."""

    def __init__(
        self,
        settings: ServerSettings,
        node: Node,
        stats: Stats,
        verifier: TokenVerifier | None,
    ) -> None:
        self.settings = settings
        self.node = node
        self.stats = stats
        self.sockets: dict[web.WebSocketResponse, Outbox] = {}
        self.flusher: Flusher | None = None  # set when the server starts
        self._verifier = verifier
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_ip: dict[str, int] = {}
        self._rules = rules_of(settings)

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

    async def accept(self, request: web.Request) -> web.StreamResponse:
        """Upgrade to WebSocket and serve the connection until it closes."""
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
        assert self.flusher is not None
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
            transport, self.flusher, max_bytes=settings.max_queue_bytes, on_overflow=overflow
        )
        session = Session(
            node=self.node,
            outbox=box,
            conn_id=conn_id,
            rules=self._rules,
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
        self.sockets[ws] = box
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
            del self.sockets[ws]
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

    async def echo(self, request: web.Request) -> web.StreamResponse:
        """Echo every message back, on the production stack (conformance tests only)."""
        ws = web.WebSocketResponse(
            protocols=SUBPROTOCOLS,
            max_msg_size=64 * 1024 * 1024,
            heartbeat=self.settings.ping_interval or None,
            compress=False,
        )
        await ws.prepare(request)
        assert request.transport is not None
        assert self.flusher is not None
        box = Outbox(
            request.transport,
            self.flusher,
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
