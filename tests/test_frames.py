"""Pre-encoded frames are valid RFC 6455 text frames at every length boundary."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from roomcast.runtime.frames import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 200_000])
def test_text_frame_parses_back(size: int) -> None:
    """An independent parser reads back a final, unmasked text frame with the payload."""
    payload = bytes(range(97, 123)) * (size // 26) + b"a" * (size % 26)
    raw = text_frame(payload)
    reader = StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:  # pragma: no cover - the whole frame was fed
        raise AssertionError("parser wanted more bytes")
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload
    assert not reader.buffer  # the frame is exactly its bytes, nothing left over
