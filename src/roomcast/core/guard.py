"""Admission checks at the door: Origin, client address, message rate.

Small pure helpers; the server applies them before a WebSocket upgrade (Origin, address
caps) and the session applies the rate limit to every frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address
from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str]) -> bool:
    """Whether a browser page from `origin` may open a WebSocket here.

    Allowed: no Origin header (not a browser), this server's own origin (same host and
    port as the request's Host header), any localhost origin, and each entry of
    `allowed` (a full origin such as https://example.org, or "*" for any).
    """
    if origin is None:
        return True
    allowed = set(allowed)
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False  # "null" (sandboxed frames, file://) only when listed
    if parts.hostname in LOCAL_HOSTS:
        return True
    return host is not None and parts.netloc.lower() == host.lower()


def client_address(peer: str | None, forwarded_for: str | None, trusted: Iterable[str]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the last
    address in X-Forwarded-For that is not itself a trusted proxy."""
    trusted = set(trusted)
    address = peer or "unknown"
    if address not in trusted or not forwarded_for:
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        try:
            ip_address(hop)
        except ValueError:
            return address  # a malformed header: keep the proxy's own address
        if hop not in trusted:
            return hop
    return address


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one token per message."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
