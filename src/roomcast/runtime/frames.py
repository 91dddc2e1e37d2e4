"""Pre-encoded WebSocket frames, built once and written to many connections.

Server-to-client frames are unmasked, so one message has the same bytes for every
recipient. aiohttp's own frame writer builds them (roomcast never hand-rolls framing):
it writes into a capturing transport instead of a socket.
"""

from __future__ import annotations

from aiohttp import WSMsgType
from aiohttp.http_websocket import WebSocketWriter


class _Capture:
    """Just enough of an asyncio transport for WebSocketWriter to write into."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.chunks.append(bytes(data))


_capture = _Capture()
_writer = WebSocketWriter(None, _capture)  # type: ignore[arg-type]


def text_frame(payload: bytes) -> bytes:
    """The complete bytes of one unmasked, uncompressed text frame holding `payload`."""
    return _frame(payload, WSMsgType.TEXT)


def binary_frame(payload: bytes) -> bytes:
    """The complete bytes of one unmasked, uncompressed binary frame."""
    return _frame(payload, WSMsgType.BINARY)


def _frame(payload: bytes, opcode: WSMsgType) -> bytes:
    _writer._write_websocket_frame(payload, opcode, 0)
    _writer._output_size = 0
    chunks = _capture.chunks
    frame = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    chunks.clear()
    return frame
