"""User tokens for `--auth jwt`: verifying them, and minting them for development.

PyJWT does the cryptography and the claim checks. A token names the user (`sub`), may
give a display `name`, may limit the rooms it can join (`rooms`), may make the user an
admin (`admin: true`), and must expire (`exp`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
from msgspec import Struct

from roomcast.core.errors import ClientError, ErrorCode


class Identity(Struct, frozen=True):
    """Who a valid token says the connection is."""

    user_id: str
    name: str | None
    rooms: frozenset[str] | None  # None: any room
    admin: bool
    expires_at: float  # seconds since the epoch


class TokenVerifier:
    """Checks tokens signed with an HS256 secret or an RS256/ES256 public key."""

    def __init__(self, *, secret: str = "", public_key_file: str = "") -> None:
        if public_key_file:
            self._key: Any = Path(public_key_file).read_text()
            self._algorithms = ["RS256", "ES256"]
        elif secret:
            self._key = secret
            self._algorithms = ["HS256"]
        else:
            raise ValueError("a JWT secret or public key is needed")

    def verify(self, token: str) -> Identity:
        """The token's identity, or ClientError(unauthorized) saying what is wrong."""
        try:
            claims = jwt.decode(
                token, self._key, algorithms=self._algorithms, options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise ClientError(ErrorCode.UNAUTHORIZED, "the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise ClientError(ErrorCode.UNAUTHORIZED, f"invalid token: {exc}") from None
        sub, name, rooms = claims["sub"], claims.get("name"), claims.get("rooms")
        if not all(_clean(v) for v in (sub, name, *(rooms if isinstance(rooms, list) else ()))):
            raise ClientError(ErrorCode.UNAUTHORIZED, "the token holds text that is not UTF-8")
        if not isinstance(sub, str) or not 0 < len(sub) <= 64:
            raise ClientError(ErrorCode.UNAUTHORIZED, "the token's sub must be a short string")
        if name is not None and not (isinstance(name, str) and 0 < len(name) <= 64):
            raise ClientError(ErrorCode.UNAUTHORIZED, "the token's name must be a short string")
        if rooms is not None and not (
            isinstance(rooms, list) and all(isinstance(r, str | int) for r in rooms)
        ):
            raise ClientError(ErrorCode.UNAUTHORIZED, "the token's rooms must be a list of ids")
        return Identity(
            sub,
            name,
            None if rooms is None else frozenset(str(r) for r in rooms),
            claims.get("admin") is True,
            float(claims["exp"]),
        )


def _clean(value: object) -> bool:
    """False for a string a browser could not take back (a lone surrogate, which Python's
    JSON parser lets through in a token's claims)."""
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def mint(
    secret: str,
    *,
    user: str,
    name: str | None = None,
    admin: bool = False,
    rooms: list[str] | None = None,
    ttl_seconds: float = 3600,
    now: float | None = None,
) -> str:
    """An HS256 token for development and tests (`roomcast token`)."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": user, "iat": int(issued), "exp": int(issued + ttl_seconds)}
    if name is not None:
        claims["name"] = name
    if admin:
        claims["admin"] = True
    if rooms is not None:
        claims["rooms"] = rooms
    return jwt.encode(claims, secret, algorithm="HS256")
