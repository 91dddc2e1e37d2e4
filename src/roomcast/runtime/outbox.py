"""Per-connection outgoing queues, bounded in bytes and flushed in batches.

Fan-out calls `Outbox.send(frame)` for each recipient: it only appends to a list and
never awaits. Once per event-loop iteration the `Flusher` writes each connection's
pending frames with one `transport.write` call, so a connection that receives several
frames in one iteration (a busy room) costs one system call instead of several, while
an idle connection still gets its frame on the very next iteration.

A connection whose unsent bytes (our list plus the transport's buffer) pass
`max_bytes` is a slow consumer: it is marked closed, its frames are dropped, and its
`on_overflow` callback closes it with the documented close code. The client may
reconnect and resume from the last offset it saw.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter
from typing import cast

log = logging.getLogger("roomcast.outbox")


class Flusher:
    """Writes every outbox that received frames, once per loop iteration.

    `observe(seconds)`, if given, gets once per pass how long the pass's first frame
    waited in roomcast: from being queued until the pass had written every connection
    (the server's share of a delivery's latency, after the message was handled)."""

    __slots__ = ("_dirty", "_loop", "_observe", "_scheduled", "_since")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self._loop = loop
        self._dirty: list[Outbox] = []
        self._scheduled = False
        self._observe = observe
        self._since = 0.0

    def mark(self, box: Outbox) -> None:
        self._dirty.append(box)
        if not self._scheduled:
            self._scheduled = True
            self._since = perf_counter()  # uvloop's loop.time() ticks in whole ms
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        # Read first: a close during the pass may queue frames and mark() a next pass.
        self._scheduled = False
        since = self._since
        dirty, self._dirty = self._dirty, []
        for box in dirty:
            try:
                box.flush()
            except Exception:  # one broken connection must not stall the others
                log.exception("flushing a connection failed")
                box.abort()
        if self._observe is not None:
            self._observe(perf_counter() - since)


class Outbox:
    """Frames waiting to be written to one connection."""

    __slots__ = ("_flusher", "_frames", "_on_overflow", "_transport", "closed", "max_bytes")

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        flusher: Flusher,
        *,
        max_bytes: int,
        on_overflow: Callable[[], None],
    ) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)
        self._flusher = flusher
        self._frames: list[bytes] = []
        self._on_overflow = on_overflow
        self.max_bytes = max_bytes
        self.closed = False

    def send(self, frame: bytes) -> None:
        """Queue one complete frame; never blocks, never awaits."""
        if self.closed:
            return
        frames = self._frames
        if not frames:
            self._flusher.mark(self)
        frames.append(frame)

    def flush(self) -> None:
        """Write what is queued now (the Flusher calls this; so does close)."""
        frames = self._frames
        if not frames or self.closed:
            return
        transport = self._transport
        if transport.is_closing():
            self.closed = True
            frames.clear()
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        frames.clear()
        if transport.get_write_buffer_size() > self.max_bytes:
            self.closed = True
            self._on_overflow()

    def seal(self) -> None:
        """Write what is queued, then accept nothing more (a Close frame follows)."""
        self.flush()
        self.closed = True
        self._frames.clear()

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        self.closed = True
        self._frames.clear()
        self._transport.abort()

    def buffered_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel, plus those still queued here."""
        return self._transport.get_write_buffer_size() + sum(map(len, self._frames))
