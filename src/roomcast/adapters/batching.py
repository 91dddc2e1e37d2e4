"""Group commit: one writer takes queued operations in call order, a batch at a time.

Callers `submit` an operation and await its result; the writer hands up to `batch_max`
queued operations to `flush` at once (one pipeline round trip), so writes reach the
backend in call order and share round trips under load. The queue is bounded: past
`queue_max` waiting operations, `submit` raises `StoreOverloaded` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from roomcast.core.errors import StoreError, StoreOverloaded

log = logging.getLogger("roomcast.batching")

Op = TypeVar("Op")
# flush(batch) -> one result per operation, in order; an Exception instance fails it.
Flush = Callable[[list[Op]], Awaitable[list[object]]]


class Batcher(Generic[Op]):
    """A bounded queue and its one writer task (see the module doc)."""

    def __init__(
        self,
        flush: Flush[Op],
        *,
        name: str,
        queue_max: int = 10_000,
        batch_max: int = 512,
        timeout: float = 15.0,
        on_failure: Callable[[BaseException], StoreError] | None = None,
    ) -> None:
        self._flush = flush
        self._name = name
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._timeout = timeout
        self._on_failure = on_failure or (lambda exc: StoreError(f"{name}: {exc!r}"))
        self._queue: list[tuple[Op, asyncio.Future[object]]] = []
        self._inflight: list[tuple[Op, asyncio.Future[object]]] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is queued or being written
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._write_forever(), name=self._name)

    async def stop(self, drain: float = 5.0) -> None:
        """Let the writer finish what is queued (for at most `drain` seconds), then stop
        it and fail whatever is still left."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), drain)
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5.0)
            self._task = None
        for _, future in [*self._inflight, *self._queue]:
            if not future.done():
                future.set_exception(StoreError(f"{self._name} closed"))
        self._queue.clear()
        self._inflight = []

    def submit(self, op: Op) -> asyncio.Future[object]:
        if self._task is None or self._stopping:
            raise StoreError(f"{self._name} is not open")
        if len(self._queue) >= self._queue_max:
            raise StoreOverloaded(f"{self._name} queue is full")
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        self._idle.clear()
        self._wakeup.set()
        return future

    async def run(self, op: Op) -> object:
        """Submit and wait, at most `timeout` seconds (queue included)."""
        try:
            return await asyncio.wait_for(self.submit(op), self._timeout)
        except TimeoutError:
            raise StoreError(f"{self._name}: no answer in {self._timeout:g} s") from None

    async def _write_forever(self) -> None:
        while not self._stopping:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue and not self._stopping:
                size = self._batch_max
                batch, self._queue = self._queue[:size], self._queue[size:]
                # A caller that gave up (its timeout) was told nothing was done: keep it so.
                batch = [item for item in batch if not item[1].done()]
                if not batch:
                    continue
                self._inflight = batch
                await self._write(batch)
                self._inflight = []
            if not self._queue:
                self._idle.set()

    async def _write(self, batch: list[tuple[Op, asyncio.Future[object]]]) -> None:
        try:
            results = await self._flush([op for op, _ in batch])
        except Exception as exc:  # the one writer must outlive any one failure
            error = self._on_failure(exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
