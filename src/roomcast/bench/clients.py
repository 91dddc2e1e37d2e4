"""The load generators' WebSocket client: picows, the fastest Python client we measured
(an aiohttp client spends 1.5–1.7× its CPU per received frame, and the generator, not the
server, is what runs out first). It is imported only when a load starts, from the
`bench` extra, so that roomcast itself imports no WebSocket library but aiohttp."""

from __future__ import annotations

import sys
from typing import Any


def load_picows() -> Any:
    """The picows module; without it, exit with how to install it."""
    try:
        import picows
    except ImportError:  # pragma: no cover - depends on the installation
        sys.exit("roomcast bench needs picows: pip install 'roomcast[bench]'")
    return picows
