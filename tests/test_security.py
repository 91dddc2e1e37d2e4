"""Hardening: origins, per-address caps, tokens, rate limits, slow and dead peers."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest
import websockets

from roomcast.core.tokens import mint
from roomcast.runtime.server import RoomcastServer
from roomcast.testing import TEST_ADMIN_TOKEN, running_server
from tests.helpers import Client, timeout, wait_until

SECRET = "a-test-secret-that-is-at-least-32-bytes-long"
UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


def masked(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """One client frame (masked, as RFC 6455 requires), for raw-socket tests only."""
    mask = b"\x11\x22\x33\x44"
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([first, 0x80 | len(payload)]) + mask + body


async def raw_upgrade(
    port: int, extra: str = "", source: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0) if source else None
    )
    writer.write(UPGRADE.format(host=f"127.0.0.1:{port}", extra=extra).encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(5))
    return reader, writer, head


# ------------------------------------------------------------------ origins


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("http://localhost:5173", True),
        ("http://127.0.0.1:3000", True),
        ("https://evil.example", False),
        ("null", False),
        ("http://localhost.evil.example", False),
    ],
)
async def test_origin_check(server: RoomcastServer, origin: str | None, allowed: bool) -> None:
    """Foreign Origins get HTTP 403 before any frame; no Origin, localhost and our own pass."""
    extra = f"Origin: {origin}\r\n" if origin else ""
    _, writer, head = await raw_upgrade(server.port, extra)
    writer.close()
    assert head.startswith(b"HTTP/1.1 101" if allowed else b"HTTP/1.1 403"), head


async def test_own_origin_and_listed_origins() -> None:
    """The server's own origin, and origins given with --allowed-origin, are accepted."""
    async with running_server(allowed_origins=("https://app.example",)) as srv:
        for origin, status in (
            (f"http://127.0.0.1:{srv.port}", b"101"),
            ("https://app.example", b"101"),
            ("https://other.example", b"403"),
        ):
            _, writer, head = await raw_upgrade(srv.port, f"Origin: {origin}\r\n")
            writer.close()
            assert head.split()[1] == status, (origin, head)


# ------------------------------------------------------------------ per-address cap


async def test_connections_per_address_cap() -> None:
    """Past max_connections_per_ip an address gets 429 before the upgrade; others do not."""
    async with running_server(max_connections_per_ip=2) as srv:
        first = await Client.connect(srv.url)
        second = await Client.connect(srv.url)
        _, writer, head = await raw_upgrade(srv.port)
        writer.close()
        assert head.startswith(b"HTTP/1.1 429"), head
        other = await Client.connect(srv.url, local_addr=("127.0.0.2", 0))  # another address
        await other.join("r", "u")
        await first.close()
        await asyncio.sleep(0.1)
        third = await Client.connect(srv.url)  # a slot is free again
        for c in (second, other, third):
            await c.close()


async def test_forwarded_address_only_from_trusted_proxies() -> None:
    """X-Forwarded-For counts only when the peer is a trusted proxy."""
    async with running_server(max_connections_per_ip=1, trusted_proxies=("127.0.0.1",)) as srv:
        a = await Client.connect(srv.url, additional_headers={"X-Forwarded-For": "10.0.0.1"})
        b = await Client.connect(srv.url, additional_headers={"X-Forwarded-For": "10.0.0.2"})
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(srv.url, additional_headers={"X-Forwarded-For": "10.0.0.1"})
        assert refused.value.response.status_code == 429
        await a.close()
        await b.close()
    async with running_server(max_connections_per_ip=1) as srv:  # no trusted proxy
        a = await Client.connect(srv.url, additional_headers={"X-Forwarded-For": "10.0.0.1"})
        with pytest.raises(websockets.InvalidStatus):
            await Client.connect(srv.url, additional_headers={"X-Forwarded-For": "10.0.0.2"})
        await a.close()


# ------------------------------------------------------------------ JWT


@pytest.fixture
async def jwt_server() -> RoomcastServer:
    async with running_server(auth="jwt", jwt_secret=SECRET, handshake_timeout=2.0) as srv:
        yield srv  # type: ignore[misc]


async def test_jwt_token_in_url_names_the_user(jwt_server: RoomcastServer) -> None:
    """With --auth jwt the token's sub and name are used, whatever the payload says."""
    token = mint(SECRET, user="alice", name="Alice")
    client = await Client.connect(jwt_server.url + f"?token={token}")
    await client.send("JOIN_ROOM", name="whoever", userId="mallory", roomId="r")
    await client.expect("ROOM_HISTORY")
    await client.send("SEND_MESSAGE", userId="mallory", roomId="r", message="hi")
    chat = await client.expect("ADD_CHAT")
    assert (chat["userId"], chat["name"]) == ("alice", "Alice")
    await client.close()


@pytest.mark.parametrize(
    "token",
    [
        mint(SECRET, user="alice", ttl_seconds=-10),
        mint("another-secret-that-is-32-bytes-or-more", user="alice"),
        "not.a.token",
    ],
    ids=["expired", "wrong-signature", "garbage"],
)
async def test_bad_tokens_are_refused(jwt_server: RoomcastServer, token: str) -> None:
    """Expired, wrongly signed and malformed tokens get 401 in the URL, ERROR in AUTH."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        await Client.connect(jwt_server.url + f"?token={token}")
    assert refused.value.response.status_code == 401
    client = await Client.connect(jwt_server.url)
    await client.send("AUTH", token=token)
    await client.expect_error("unauthorized")
    await client.close()


async def test_missing_token_cannot_join_and_is_closed(jwt_server: RoomcastServer) -> None:
    """Without a token a connection cannot join, and is closed with 4001 after the
    handshake timeout."""
    client = await Client.connect(jwt_server.url)
    await client.send("JOIN_ROOM", name="n", userId="u", roomId="r")
    await client.expect_error("unauthorized")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.expect("never", wait=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4001


async def test_token_rooms_and_admin_claims(jwt_server: RoomcastServer) -> None:
    """A token's rooms claim limits joins; admin: true makes an admin."""
    client = await Client.connect(jwt_server.url)
    await client.send("AUTH", token=mint(SECRET, user="bob", rooms=["a"]))
    assert (await client.expect("AUTH_OK"))["userId"] == "bob"
    await client.send("JOIN_ROOM", name="b", userId="x", roomId="b")
    await client.expect_error("forbidden")
    await client.join("a", "x")
    await client.send("CREATE_ROOM", name="nope")
    await client.expect_error("forbidden")
    host = await Client.connect(jwt_server.url + f"?token={mint(SECRET, user='h', admin=True)}")
    await host.send("CREATE_ROOM", roomId="new", name="New")
    await host.expect("ROOM_CREATED")
    await client.close()
    await host.close()


async def test_refresh_keeps_the_connection_and_expiry_closes_it(
    jwt_server: RoomcastServer,
) -> None:
    """AUTH with a fresh token extends the connection; an unrefreshed token closes it
    with 4001 when it expires; a refresh for another user is refused."""
    client = await Client.connect(
        jwt_server.url + f"?token={mint(SECRET, user='c', ttl_seconds=2)}"
    )
    await client.join("r", "c")
    await client.send("AUTH", token=mint(SECRET, user="someone-else"))
    await client.expect_error("user_mismatch")
    # exp is whole seconds: the first token ends 1-2 s from now, the refreshed one 5-6 s.
    await client.send("AUTH", token=mint(SECRET, user="c", ttl_seconds=6))
    await client.expect("AUTH_OK")
    await asyncio.sleep(2.5)  # past the first token's expiry
    await client.send("SEND_MESSAGE", userId="c", roomId="r", message="still here")
    await client.expect("ADD_CHAT")
    _, code = await client.read_until_closed(wait=timeout(8))
    assert code == 4001


def test_token_command_mints_a_working_token(capsys: pytest.CaptureFixture[str]) -> None:
    """`roomcast token` prints an HS256 token the server accepts."""
    from roomcast.cli import main
    from roomcast.core.tokens import TokenVerifier

    assert main(["token", "--jwt-secret", SECRET, "--user", "u1", "--name", "U", "--admin"]) == 0
    token = capsys.readouterr().out.strip()
    identity = TokenVerifier(secret=SECRET).verify(token)
    assert (identity.user_id, identity.name, identity.admin) == ("u1", "U", True)
    assert main(["token", "--user", "u1"]) == 2  # no secret


# ------------------------------------------------------------------ floods


async def test_flood_is_rate_limited_and_others_keep_their_latency() -> None:
    """A flooding client gets rate_limited and is then closed with 4029; a normal client
    in the same room keeps getting answers quickly."""
    async with running_server(
        max_message_rate=50, message_burst=50, rate_limit_close_after=500
    ) as srv:
        flooder = await Client.connect(srv.url)
        calm = await Client.connect(srv.url)
        await flooder.join("r", "f")
        await calm.join("r", "c")

        async def flood() -> None:
            try:
                for i in range(5_000):
                    await flooder.send("SEND_MESSAGE", userId="f", roomId="r", message=f"spam {i}")
            except websockets.ConnectionClosed:
                pass

        task = asyncio.ensure_future(flood())
        latencies = []
        for i in range(10):
            started = time.perf_counter()
            await calm.send("SEND_MESSAGE", userId="c", roomId="r", message=f"calm {i}")
            while (await calm.expect("ADD_CHAT"))["message"] != f"calm {i}":
                pass
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
        await task
        frames, code = await flooder.read_until_closed()
        assert "rate_limited" in [f["payload"].get("code") for f in frames if f["type"] == "ERROR"]
        assert code == 4029
        assert max(latencies) < timeout(1.0)
        await calm.close()


# ------------------------------------------------------------------ slow and dead peers


async def test_slowloris_handshakes_are_reaped() -> None:
    """1,000 half-sent requests are closed by the server within the handshake timeout,
    while a real client connects quickly meanwhile."""
    async with running_server(handshake_timeout=2.0) as srv:
        streams = []
        for _ in range(1_000):
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # never finished
            streams.append((r, w))
        started = time.perf_counter()
        client = await Client.connect(srv.url)
        await client.join("r", "u")
        assert time.perf_counter() - started < timeout(1.0)
        assert await wait_until(lambda: all(r.at_eof() for r, _ in streams), 4)
        open_sockets = sum(not r.at_eof() for r, _ in streams)
        for _, w in streams:
            w.close()
        assert open_sockets == 0
        await client.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_reader_that_never_reads_is_closed_and_memory_stays_bounded() -> None:
    """A client that stops reading while its room gets ~2 MiB/s is closed within
    seconds; server memory stays bounded; a healthy client loses nothing."""
    async with running_server(
        max_queue_bytes=512 * 1024, max_message_rate=10_000, message_burst=10_000
    ) as srv:
        _reader, writer, head = await raw_upgrade(srv.port)
        assert head.startswith(b"HTTP/1.1 101")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        join = b'{"type":"JOIN_ROOM","payload":{"name":"z","userId":"z","roomId":"r"}}'
        writer.write(masked(0x1, join[:125]) if len(join) < 126 else b"")
        sender, healthy = await Client.connect(srv.url), await Client.connect(srv.url)
        await sender.join("r", "s")
        await healthy.join("r", "h")
        assert await wait_until(lambda: srv.node.hub.member_count("r") == 3)
        before = _rss_kib(os.getpid())
        text = "x" * 1900
        sent = 0
        started = time.perf_counter()
        while srv.node.hub.member_count("r") == 3 and time.perf_counter() - started < 10:
            await sender.send("SEND_MESSAGE", userId="s", roomId="r", message=text)
            await sender.expect("ADD_CHAT")
            sent += 1
            if sent % 100 == 0:
                await asyncio.sleep(0.09)  # about 2 MiB/s
        assert srv.node.hub.member_count("r") == 2, "the non-reader was not dropped"
        assert time.perf_counter() - started < timeout(10)
        assert _rss_kib(os.getpid()) - before < 64 * 1024
        offsets = [(await healthy.expect("ADD_CHAT"))["offset"] for _ in range(sent)]
        assert offsets == list(range(1, sent + 1))
        writer.close()
        await sender.close()
        await healthy.close()


async def test_keepalive_detects_a_dead_peer_with_a_full_queue() -> None:
    """A peer that neither reads nor answers pings is closed by the keepalive even
    though its outgoing queue is full (far below the slow-consumer cap)."""
    async with running_server(
        ping_interval=1.0,
        max_queue_bytes=64 * 1024 * 1024,
        max_message_rate=10_000,
        message_burst=10_000,
    ) as srv:
        _, writer, head = await raw_upgrade(srv.port)
        assert head.startswith(b"HTTP/1.1 101")
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(
            masked(0x1, b'{"type":"JOIN_ROOM","payload":{"name":"d","userId":"d","roomId":"r"}}')
        )
        sender = await Client.connect(srv.url)
        await sender.join("r", "s")
        assert await wait_until(lambda: srv.node.hub.member_count("r") == 2)
        for _ in range(300):  # ~600 KB: fills the socket buffers, stays under the cap
            await sender.send("SEND_MESSAGE", userId="s", roomId="r", message="y" * 1900)
            await sender.expect("ADD_CHAT")
        started = time.perf_counter()
        assert await wait_until(lambda: srv.node.hub.member_count("r") == 1, 10)
        assert time.perf_counter() - started < timeout(5)
        writer.close()
        await sender.close()


# ------------------------------------------------------------------ frame-level abuse


async def test_compressed_frames_are_refused(server: RoomcastServer) -> None:
    """permessage-deflate is not negotiated: a frame with RSV1 set (a compression bomb's
    carrier) is a protocol error, closed with 1002."""
    reader, writer, head = await raw_upgrade(
        server.port, "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    )
    assert b"permessage-deflate" not in head.lower()
    writer.write(masked(0x1, b"\xf2\x48\xcd\xc9\xc9\x07\x00", rsv1=True))
    reply = await asyncio.wait_for(reader.read(64), timeout(5))
    assert reply[0] == 0x88
    assert int.from_bytes(reply[2:4], "big") == 1002
    writer.close()


async def test_five_thousand_tiny_fragments(server: RoomcastServer) -> None:
    """A message split into 5,000 one-byte fragments is reassembled and answered, and
    the server keeps serving others."""
    text = b'{"type":"JOIN_ROOM","payload":{"name":"f","userId":"f","roomId":"frag"}}'
    text = text + b" " * (5_000 - len(text))
    reader, writer, _head = await raw_upgrade(server.port)
    frames = [
        masked(0x1 if i == 0 else 0x0, text[i : i + 1], fin=i == len(text) - 1)
        for i in range(len(text))
    ]
    writer.write(b"".join(frames))
    reply = await asyncio.wait_for(reader.read(4096), timeout(5))
    assert b"ROOM_HISTORY" in reply
    other = await Client.connect(server.url)
    await other.join("frag", "o")
    await other.close()
    writer.close()


async def test_admin_token_in_url_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Tokens in URLs never reach the logs."""
    caplog.set_level("DEBUG")
    async with running_server() as srv:
        client = await Client.connect(srv.url + f"?token={TEST_ADMIN_TOKEN}")
        await client.join("r", "u")
        await client.close()
    server_side = [r for r in caplog.records if not r.name.startswith("websockets")]
    assert server_side, "the server logged nothing at DEBUG"
    assert all(TEST_ADMIN_TOKEN not in r.getMessage() for r in server_side)


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
async def test_public_key_tokens(tmp_path: Path, algorithm: str) -> None:
    """--jwt-public-key verifies ES256 and RS256 tokens signed with the private key;
    an HS256 token forged with the public key as a secret is refused."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "ES256"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = tmp_path / "public.pem"
    pem.write_bytes(public)
    good = jwt.encode({"sub": "kim", "exp": int(time.time()) + 60}, key, algorithm=algorithm)
    async with running_server(auth="jwt", jwt_public_key=str(pem)) as srv:
        client = await Client.connect(srv.url + f"?token={good}")
        await client.send("JOIN_ROOM", name="k", userId="ignored", roomId="r")
        await client.expect("ROOM_HISTORY")
        await client.send("SEND_MESSAGE", userId="ignored", roomId="r", message="signed")
        assert (await client.expect("ADD_CHAT"))["userId"] == "kim"
        await client.close()
        forged = jwt.encode(
            {"sub": "eve", "exp": int(time.time()) + 60}, "x" * 32, algorithm="HS256"
        )
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(srv.url + f"?token={forged}")
        assert refused.value.response.status_code == 401


async def test_permessage_deflate_when_enabled_is_bounded_after_inflate() -> None:
    """With --permessage-deflate, compressed messages work, and a compression bomb
    (10 MB of one letter, a few KB on the wire) is closed with 1009 once inflated past
    max_frame_bytes, without the server inflating it all."""
    async with running_server(permessage_deflate=True) as srv:
        client = await Client.connect(srv.url, compression="deflate", max_size=None)
        assert client.ws.response is not None
        assert "permessage-deflate" in client.ws.response.headers.get(
            "Sec-WebSocket-Extensions", ""
        )
        await client.join("z", "u")
        await client.send("SEND_MESSAGE", userId="u", roomId="z", message="a" * 1500)
        assert (await client.expect("ADD_CHAT"))["message"] == "a" * 1500
        await client.send_raw("b" * 10_000_000)
        _, code = await client.read_until_closed()
        assert code == 1009
        other = await Client.connect(srv.url)
        await other.join("z", "o")
        await other.close()
