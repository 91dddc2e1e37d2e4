"""The write-batching helper every batching store uses (adapters/batching.py)."""

from __future__ import annotations

import asyncio

import pytest

from roomcast.adapters.batching import Batcher
from roomcast.core.errors import StoreError, StoreOverloaded


async def test_batches_keep_call_order_and_share_round_trips() -> None:
    """What is queued while a batch is written goes out together, in call order."""
    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(ops: list[int]) -> list[object]:
        batches.append(ops)
        await gate.wait()
        return [op * 10 for op in ops]

    batcher: Batcher[int] = Batcher(flush, name="test", batch_max=3)
    batcher.start()
    first = batcher.submit(0)
    await asyncio.sleep(0)  # the writer takes the first op alone
    rest = [batcher.submit(n) for n in range(1, 6)]
    gate.set()
    assert await asyncio.gather(first, *rest) == [0, 10, 20, 30, 40, 50]
    assert batches == [[0], [1, 2, 3], [4, 5]]
    await batcher.stop()


async def test_a_caller_that_gave_up_is_not_written_later() -> None:
    """A write whose caller timed out (and was told nothing was done) is dropped from
    the queue, not written after all."""
    written: list[str] = []
    gate = asyncio.Event()

    async def flush(ops: list[str]) -> list[object]:
        written.extend(ops)
        await gate.wait()
        return [None] * len(ops)

    batcher: Batcher[str] = Batcher(flush, name="test", timeout=0.05)
    batcher.start()
    blocking = batcher.submit("first")
    await asyncio.sleep(0)  # the writer takes "first" alone and waits on it
    with pytest.raises(StoreError, match="no answer"):
        await batcher.run("late")  # queued behind "first", gives up
    gate.set()
    await blocking
    assert await batcher.run("after") is None
    assert written == ["first", "after"]
    await batcher.stop()


async def test_bounded_queue_and_stop_finishes_what_was_queued() -> None:
    gate = asyncio.Event()

    async def flush(ops: list[int]) -> list[object]:
        await gate.wait()
        return list(ops)

    batcher: Batcher[int] = Batcher(flush, name="test", queue_max=2)
    batcher.start()
    inflight = batcher.submit(0)
    await asyncio.sleep(0)
    queued = [batcher.submit(1), batcher.submit(2)]
    with pytest.raises(StoreOverloaded):
        batcher.submit(3)
    stopping = asyncio.create_task(batcher.stop())
    await asyncio.sleep(0.01)
    gate.set()
    await stopping
    assert await asyncio.gather(inflight, *queued) == [0, 1, 2]
    with pytest.raises(StoreError, match="not open"):
        batcher.submit(4)
