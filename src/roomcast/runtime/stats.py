"""Operational numbers, counted as plain integers on the hot path and turned into
Prometheus metrics only when /metrics is scraped."""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from roomcast.ports import Broker
from roomcast.runtime.delivery import Delivery
from roomcast.runtime.hub import Hub

# Fine below 30 ms, where a fan-out pass's latency target lies.
SEND_WAIT_BUCKETS: tuple[float, ...] = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005)
SEND_WAIT_BUCKETS += (0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0)


class Stats:
    """Counters the server, sessions and node update."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.refused: Counter[str] = Counter()  # upgrade refusals by reason
        self.messages_in: Counter[str] = Counter()  # client messages by type
        self.errors: Counter[str] = Counter()  # ERROR frames by code
        self.closes: Counter[int] = Counter()  # server-initiated closes by code
        self.loop_lag = 0.0  # seconds, last measurement
        self.registry = CollectorRegistry(auto_describe=True)
        self.store_latency = Buckets(
            "roomcast_store_append_seconds",
            "Time to store one chat message (until it is durable).",
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.send_wait = Buckets(
            "roomcast_send_wait_seconds",
            "Per write pass: how long its first frame waited in roomcast, from being queued "
            "until every connection in the pass had its frames written to the kernel.",
            SEND_WAIT_BUCKETS,
        )


class Buckets:
    """A histogram observed on the hot path: a list increment and an add (no lock, no
    label lookup), turned into a Prometheus histogram only when /metrics is scraped."""

    __slots__ = ("bounds", "counts", "name", "sum", "text")

    def __init__(self, name: str, text: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.text = text
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def metric(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.text)
        running, cumulative = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        family.add_metric([], cumulative, self.sum)
        return family


class ObservedNode(Protocol):
    hub: Hub
    broker: Broker
    delivery: Delivery


class Observed(Protocol):
    """What the collector reads of a server."""

    stats: Stats

    @property
    def node(self) -> ObservedNode: ...

    def connection_count(self) -> int: ...

    def queued_bytes(self) -> int: ...


class _Collector(Collector):
    def __init__(self, server: Observed) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server, stats = self.server, self.server.stats
        hub = server.node.hub
        yield _gauge(
            "roomcast_connections", "Open WebSocket connections.", server.connection_count()
        )
        yield _counter(
            "roomcast_connections_total", "WebSocket connections accepted.", stats.connections_total
        )
        yield _counter(
            "roomcast_handshakes_refused_total",
            "Upgrades refused, by reason.",
            stats.refused,
            "reason",
        )
        yield _gauge("roomcast_rooms", "Rooms with members on this node.", hub.room_count())
        yield _counter(
            "roomcast_messages_in_total",
            "Client messages handled, by type.",
            stats.messages_in,
            "type",
        )
        yield _counter(
            "roomcast_events_published_total", "Events published to rooms.", hub.publishes
        )
        yield _counter("roomcast_deliveries_total", "Frames handed to connections.", hub.deliveries)
        yield _counter("roomcast_errors_total", "ERROR frames sent, by code.", stats.errors, "code")
        yield _counter(
            "roomcast_closes_total",
            "Connections closed by the server, by code.",
            {str(k): v for k, v in stats.closes.items()},
            "code",
        )
        yield _gauge(
            "roomcast_queue_bytes",
            "Bytes queued for all connections, unsent.",
            server.queued_bytes(),
        )
        yield _gauge(
            "roomcast_event_loop_lag_seconds", "How late the event loop woke up.", stats.loop_lag
        )
        yield stats.store_latency.metric()
        yield stats.send_wait.metric()
        yield from _broker(server.node)


def _broker(node: ObservedNode) -> Iterator[Metric]:
    broker, delivery = node.broker, node.delivery
    yield _gauge("roomcast_broker_connected", "1 while the broker's link is up.", broker.connected)
    yield _gauge(
        "roomcast_broker_subscriptions", "Rooms this node subscribes to.", len(delivery.hosted)
    )
    yield _counter("roomcast_broker_received_total", "Publications received.", broker.received)
    yield _counter(
        "roomcast_broker_dropped_total",
        "Publications dropped: malformed, or of an inter-node format version not known here.",
        broker.dropped,
    )
    yield _counter("roomcast_broker_reconnects_total", "Broker reconnections.", broker.reconnects)
    yield _counter(
        "roomcast_gaps_filled_total",
        "Missed messages found and delivered from the history.",
        delivery.gaps_filled,
    )
    yield _counter(
        "roomcast_history_resets_total",
        "Gaps the history could not fill, or histories lost (members got recovered: false).",
        delivery.resets,
    )


def _counter(
    name: str, text: str, value: int | Counter[str] | dict[str, int], label: str = ""
) -> Metric:
    family = CounterMetricFamily(
        name.removesuffix("_total"), text, labels=[label] if label else None
    )
    if isinstance(value, dict):
        for key, count in sorted(value.items()):
            family.add_metric([key], count)
    else:
        family.add_metric([], value)
    return family


def _gauge(name: str, text: str, value: float) -> Metric:
    return GaugeMetricFamily(name, text, value=value)


def register(server: Observed) -> Callable[[], bytes]:
    """Attach the server's collector; returns the function that renders a scrape."""
    server.stats.registry.register(_Collector(server))
    return lambda: generate_latest(server.stats.registry)


async def watch_loop_lag(stats: Stats, interval: float = 0.5) -> None:
    """Measure, forever, how much later than asked the event loop wakes up."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        stats.loop_lag = max(0.0, loop.time() - started - interval)


__all__ = ["Stats", "register", "watch_loop_lag"]
