"""Property-based fuzzing (hypothesis) of the decoder, the encoder and the protocol state.

Time-boxed: the example counts are small enough for CI; raise HYPOTHESIS_PROFILE=long
for a longer local run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from roomcast.core.errors import ClientError
from roomcast.core.protocol import COMMAND_TYPES, ChatOut, decode_command, encode_event
from roomcast.core.tokens import TokenVerifier
from roomcast.runtime.server import RoomcastServer
from roomcast.testing import running_server

settings.register_profile("ci", max_examples=150, deadline=None)
settings.register_profile("long", max_examples=5_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FIELDS = sorted({f for cls in COMMAND_TYPES.values() for f in cls.__struct_fields__})
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
payloads = st.dictionaries(st.sampled_from(FIELDS), json_values | st.integers(0, 5), max_size=6)
commands = st.fixed_dictionaries(
    {"type": st.sampled_from([*COMMAND_TYPES, "NOPE", ""]), "payload": payloads | json_values}
)


def strict_json(raw: str | bytes) -> Any:
    """Parse as a browser would: no NaN/Infinity; lone surrogates fail to encode."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    value = json.loads(raw, parse_constant=refuse)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # raises on lone surrogates
    return value


@given(st.binary(max_size=300))
def test_decoder_never_raises_on_bytes(data: bytes) -> None:
    """Any bytes: a command or a ClientError, nothing else."""
    with contextlib.suppress(ClientError):
        decode_command(data)


@given(commands)
def test_decoder_on_structured_input(command: dict[str, Any]) -> None:
    """Plausible frames: a typed command or a ClientError with a known code."""
    code = None
    try:
        kind, decoded = decode_command(json.dumps(command))
    except ClientError as exc:
        code = exc.code.value
    else:
        assert isinstance(decoded, COMMAND_TYPES[kind])
    assert code in {None, "bad_json", "bad_message", "unknown_type", "invalid_payload"}


@given(st.text(), st.text(), st.integers(0, 2**53 - 1))
def test_encoder_output_is_always_strict_json(text: str, name: str, n: int) -> None:
    """Whatever text reaches the encoder, what goes out parses in a browser, or the
    encoder refuses it (lone surrogates) — it never emits invalid JSON."""
    chat = ChatOut(str(n), "r", n, "u", name, text, n, "normal", False, n)
    try:
        raw = encode_event("ADD_CHAT", chat)
    except UnicodeEncodeError:
        return
    assert strict_json(raw)["payload"]["message"] == text


def test_token_with_lone_surrogate_is_refused() -> None:
    """A JWT whose name holds a lone surrogate is refused, so it can never be broadcast."""
    import jwt

    secret = "x" * 32
    token = jwt.encode({"sub": "u", "name": "\ud800", "exp": 4_000_000_000}, secret)
    with pytest.raises(ClientError, match="UTF-8"):
        TokenVerifier(secret=secret).verify(token)


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[RoomcastServer]:
    """A server running in its own thread and event loop, for synchronous clients."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with running_server(max_message_rate=1e9, message_burst=10**9) as srv:
            box["server"], box["loop"], box["stop"] = (
                srv,
                asyncio.get_running_loop(),
                asyncio.Event(),
            )
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield box["server"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(10)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(commands, min_size=1, max_size=15))
def test_protocol_state_survives_any_sequence(
    threaded_server: RoomcastServer, sequence: list[dict[str, Any]]
) -> None:
    """Any sequence of frames: the connection stays open, every reply is strict JSON,
    and nothing is an internal error."""
    with connect(threaded_server.url, open_timeout=5, close_timeout=2) as ws:
        for command in sequence:
            ws.send(json.dumps(command))
        ws.send(
            json.dumps(
                {
                    "type": "JOIN_ROOM",
                    "payload": {"name": "end", "userId": "end-user-zz", "roomId": "sentinel"},
                }
            )
        )
        while True:
            reply = strict_json(ws.recv(timeout=5))
            assert not (
                reply["type"] == "ERROR" and reply["payload"]["code"] == "internal_error"
            ), reply
            if reply["type"] == "ROOM_HISTORY" and reply["payload"]["roomId"] == "sentinel":
                break
            if reply["type"] == "ERROR" and reply["payload"].get("roomId") == "sentinel":
                break  # e.g. the sequence bound the connection to another user first
