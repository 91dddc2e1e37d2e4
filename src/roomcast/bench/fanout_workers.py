"""The fan-out generator's client processes (`fanout.py` starts and times them): receivers
that keep each frame's arrival time and stamp, and a sender at a fixed rate. picows
clients on uvloop, 127.0.0.1 only.

Each message text ends with a sequence number and the send time (``time.time_ns()``,
comparable across processes), so receivers compute latency, lost and duplicated messages
after the run (`tally`).
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array
from collections.abc import Coroutine
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any, Protocol

import msgspec

from roomcast.bench.clients import load_picows

ROOM = "bench"
SENDER_ID = 999_999_999
# Message text: "<padding> <seq:08d> <time_ns:019d>" (an ADD_CHAT frame of about 200 bytes).
# It ends the "message" field, which ADD_CHAT follows with the sender's fixed name and upvotes,
# so the 28-byte stamp sits at a fixed distance from the end of every frame.
PADDING = "x" * 60
SUFFIX = b'","name":"user' + str(SENDER_ID).encode() + b'","upvotes":0}}'
# roomcast's ADD_CHAT has more fields after "message", of a fixed length too.
ROOMCAST_SUFFIX_LEN = (
    len(b'","upvotes":0,"priority":"normal","answered":false,"createdAt":') + 13 + 2
)
# Where the stamp ends, counted from the end of a frame; worker processes are spawned,
# so the choice travels in the environment.
_SUFFIX_LEN = int(os.environ.get("LOADGEN_SUFFIX_LEN", len(SUFFIX)))
STAMP = slice(-_SUFFIX_LEN - 28, -_SUFFIX_LEN)


@dataclass(frozen=True)
class Plan:
    """Shared schedule, in time.time_ns() units: message k is due at start_ns + k*period_ns."""

    start_ns: int
    period_ns: int
    n_total: int  # messages sent: warm-up + window + tail
    k0: int  # first sequence number sent inside the measured window
    k1: int  # first one after it
    t0: int  # measured window [t0, t1)
    t1: int
    listen_until: int


def join_frame(user: int) -> bytes:
    payload = {"name": f"user{user}", "userId": str(user), "roomId": ROOM}
    return msgspec.json.encode({"type": "JOIN_ROOM", "payload": payload})


class Arrivals(Protocol):
    arrivals: array[int]
    stamps: list[bytes]


def receiver_class(picows: Any) -> Any:
    """The receivers' picows listener class."""

    class Receiver(picows.WSListener):  # type: ignore[misc]
        """Keeps each frame's arrival time and stamp, nothing more: the generator is the
        bottleneck of this benchmark, so all the accounting is done after the run (tally)."""

        def __init__(self) -> None:
            self.arrivals = array("q")
            self.stamps: list[bytes] = []

        def on_ws_frame(self, transport: Any, frame: Any, _now: Any = time.time_ns) -> None:
            self.arrivals.append(_now())
            self.stamps.append(frame.get_payload_as_bytes()[STAMP])

    return Receiver


def tally(listeners: list[Arrivals], plan: Plan) -> dict[str, Any]:
    """Deliveries in the window, latency of messages sent in it, lost and duplicated ones."""
    window = lost = dups = unexpected = 0
    latencies = array("q")
    t0, t1, k0, k1 = plan.t0, plan.t1, plan.k0, plan.k1
    for listener in listeners:
        seen = bytearray(plan.n_total)
        for arrived, stamp in zip(listener.arrivals, listener.stamps, strict=True):
            try:
                seq = int(stamp[:8])
                sent = int(stamp[9:])
                count = seen[seq]
            except (ValueError, IndexError):
                if t0 <= arrived < t1:  # join answers and presence before the window are fine
                    unexpected += 1
                continue
            if count < 255:
                seen[seq] = count + 1
            if t0 <= arrived < t1:
                window += 1
            if k0 <= seq < k1:
                latencies.append(arrived - sent)
        measured = seen[k0:k1]
        lost += measured.count(0)
        dups += sum(measured) - (len(measured) - measured.count(0))
        listener.arrivals, listener.stamps = array("q"), []
    return {
        "window_deliveries": window,
        "lost": lost,
        "duplicates": dups,
        "unexpected": unexpected,
        "latencies": latencies,
    }


def echo_class(picows: Any) -> Any:
    """The sender's picows listener class."""
    text, close = picows.WSMsgType.TEXT, picows.WSMsgType.CLOSE

    class Echo(picows.WSListener):  # type: ignore[misc]
        """The sender's listener: its own echoes are deliveries too, and as the sender's
        process is nearly idle, their latency shows the server's share of the receivers'
        latency."""

        def __init__(self) -> None:
            self.t0 = self.t1 = 0
            self.window_deliveries = 0
            self.latencies: list[int] = []

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            now = time.time_ns()
            if frame.msg_type == text and self.t0 <= now < self.t1:
                self.window_deliveries += 1
                self.latencies.append(now - int(frame.get_payload_as_bytes()[STAMP][9:]))
            elif frame.msg_type == close:
                transport.disconnect()

    return Echo


async def get(queue: Queue[Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, queue.get)


async def sleep_until(t_ns: int) -> None:
    await asyncio.sleep(max(0.0, (t_ns - time.time_ns()) / 1e9))


async def receivers(
    idx: int, url: str, n: int, batch: int, go: Event, ctl: Queue[Any], out: Queue[Any]
) -> None:
    picows = load_picows()
    receiver = receiver_class(picows)
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    conns: list[tuple[Any, Arrivals]] = []
    errors: list[str] = []
    for start in range(0, n, batch):
        size = min(batch, n - start)
        results = await asyncio.gather(
            *(picows.ws_connect(receiver, url) for _ in range(size)), return_exceptions=True
        )
        for res in results:
            if isinstance(res, BaseException):
                errors.append(repr(res))
            else:
                conns.append((res[0], res[1]))
    for user, (transport, _) in enumerate(conns):
        transport.send(picows.WSMsgType.TEXT, join_frame(idx * 1_000_000 + user))
    out.put(("ready", idx, len(conns), errors[:3]))
    plan: Plan = await get(ctl)
    await sleep_until(plan.listen_until)
    result = tally([listener for _, listener in conns], plan)
    out.put(("result", idx, {"connected": len(conns), **result}))
    await close_all(picows, [transport for transport, _ in conns])


async def close_all(picows: Any, transports: list[Any]) -> None:
    """Close handshake (so servers log no errors), then drop what is still open."""
    for transport in transports:
        transport.send_close(picows.WSCloseCode.OK)
    waits = [asyncio.ensure_future(t.wait_disconnected()) for t in transports]
    await asyncio.wait(waits, timeout=3.0)
    for transport in transports:
        transport.disconnect()


async def sender(url: str, ctl: Queue[Any], out: Queue[Any]) -> None:
    picows = load_picows()
    transport, echo = await picows.ws_connect(echo_class(picows), url)
    text_frame = picows.WSMsgType.TEXT
    transport.send(text_frame, join_frame(SENDER_ID))
    out.put(("ready", "sender", 1, []))
    plan: Plan = await get(ctl)
    echo.t0, echo.t1 = plan.t0, plan.t1
    max_lag = 0
    for k in range(plan.n_total):
        due = plan.start_ns + k * plan.period_ns
        if due > time.time_ns():
            await sleep_until(due)
        now = time.time_ns()
        max_lag = max(max_lag, now - due)
        text = f"{PADDING} {k:08d} {now:019d}"
        payload = {"userId": str(SENDER_ID), "roomId": ROOM, "message": text}
        frame = msgspec.json.encode({"type": "SEND_MESSAGE", "payload": payload})
        transport.send(text_frame, frame)
    await sleep_until(plan.listen_until)
    echoes = sorted(echo.latencies)
    result = {
        "window_deliveries": echo.window_deliveries,
        "max_lag_ms": max_lag / 1e6,
        "echo_p50_ms": percentile(echoes, 0.5) / 1e6,
        "echo_p99_ms": percentile(echoes, 0.99) / 1e6,
    }
    out.put(("result", "sender", result))
    await close_all(picows, [transport])


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    import uvloop

    uvloop.run(coro)


def receiver_process(*args: Any) -> None:
    run_loop(receivers(*args))


def sender_process(*args: Any) -> None:
    run_loop(sender(*args))


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])
