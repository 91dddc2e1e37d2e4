"""Fan-out load generator for the transport benchmark (127.0.0.1 only).

Scenario: one room, R receivers + 1 sender. The sender sends SEND_MESSAGE at a fixed rate for
warm-up + duration + tail seconds; each message text ends with a sequence number and the
send time (``time.time_ns()``, comparable across processes), so receivers compute latency,
lost and duplicated messages. Receivers are spread over N worker processes; the sender has
its own process (`fanout_workers.py`, picows clients). During the measured window the main
process reads the server's CPU time (utime + stime from /proc/PID/stat) and the generator's
own, and prints one JSON object:

* ``us_per_delivery`` = server CPU seconds * 1e6 / deliveries received in the window;
* ``deliveries_per_s``, latency p50/p99/max (ms) of messages sent in the window;
* ``lost`` / ``duplicates`` of those messages, summed over receivers;
* ``gen_cpu_pct`` (sum over the generator's processes, % of one core) and ``invalid``
  reasons (a generator process above 85 % of a core, or all of them above 85 % of the cores
  they may run on; receivers that failed to connect; a sender behind its schedule).

    python -m roomcast.bench.fanout --port 8765 --server-pid 1234 --rate 200

(`roomcast bench fanout` runs it against a URL and finds the server's pid itself.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from typing import Any

from roomcast.bench.clients import load_picows
from roomcast.bench.fanout_workers import (
    ROOMCAST_SUFFIX_LEN,
    Plan,
    percentile,
    receiver_process,
    sender_process,
)
from roomcast.bench.measure import (
    CLK_TCK,
    GEN_CPU_LIMIT,
    cpu_ticks,
    send_wait_buckets,
    send_wait_ms,
)

MAX_SENDER_LAG_MS = 100.0
MAX_UNEXPECTED = 0.001  # share of frames that may be unparsable (e.g. server pings)


def collect(
    out: Queue[Any], kind: str, keys: list[Any], deadline: float, procs: Sequence[BaseProcess]
) -> dict[Any, Any]:
    """Wait for one (kind, key, value...) message from each key; workers report in any order."""
    got: dict[Any, Any] = {}
    while len(got) < len(keys):
        try:
            msg = out.get(timeout=1.0)
        except queue.Empty:
            crashed = [p.pid for p in procs if p.exitcode not in (None, 0)]
            if crashed or time.monotonic() > deadline:
                raise RuntimeError(f"no {kind} from {keys} (crashed: {crashed})") from None
            continue
        if msg[0] != kind or msg[1] not in keys:
            raise RuntimeError(f"expected {kind} from {keys}, got {msg[:2]}")
        got[msg[1]] = msg[2:]
    return got


def run(args: argparse.Namespace) -> dict[str, Any]:
    # Several ports: several nodes sharing the room; worker i connects to port i mod n.
    urls = [f"ws://127.0.0.1:{port}/" for port in args.port]
    url = urls[0]
    ctx = mp.get_context("spawn")
    out: Queue[Any] = ctx.Queue()
    shares = [
        args.receivers // args.workers + (i < args.receivers % args.workers)
        for i in range(args.workers)
    ]
    gos = [ctx.Event() for _ in shares]
    ctls: list[Queue[Any]] = [ctx.Queue() for _ in range(args.workers + 1)]
    procs = [
        ctx.Process(
            target=receiver_process,
            args=(i, urls[i % len(urls)], n, args.batch, gos[i], ctls[i], out),
            daemon=True,
        )
        for i, n in enumerate(shares)
    ]
    procs.append(ctx.Process(target=sender_process, args=(url, ctls[-1], out), daemon=True))
    invalid: list[str] = []
    try:
        for p in procs[:-1]:
            p.start()
        deadline = time.monotonic() + 120
        connected = 0
        for i, go in enumerate(gos):  # one worker at a time: batches never overlap
            go.set()
            n, errors = collect(out, "ready", [i], deadline, procs)[i]
            connected += n
            if errors:
                invalid.append(f"worker {i}: {len(errors)}+ connect errors, e.g. {errors[0]}")
        if connected < args.receivers:
            invalid.append(f"only {connected}/{args.receivers} receivers connected")
        procs[-1].start()
        collect(out, "ready", ["sender"], deadline, procs)

        period_ns = round(1e9 / args.rate)
        start_ns = time.time_ns() + 500_000_000
        k0 = round(args.warmup * args.rate)
        k1 = k0 + round(args.duration * args.rate)
        n_total = k1 + round(args.tail * args.rate)
        t0 = start_ns + k0 * period_ns
        t1 = start_ns + k1 * period_ns
        plan = Plan(
            start_ns,
            period_ns,
            n_total,
            k0,
            k1,
            t0,
            t1,
            listen_until=start_ns + n_total * period_ns + int(args.drain * 1e9),
        )
        for ctl in ctls:
            ctl.put(plan)

        gen_pids = [os.getpid()] + [p.pid for p in procs if p.pid is not None]
        time.sleep(max(0.0, (t0 - time.time_ns() - 300_000_000) / 1e9))
        a_wait = send_wait_buckets(urls) if args.roomcast else None  # not in the CPU window
        time.sleep(max(0.0, (t0 - time.time_ns()) / 1e9))
        a_ns, a_srv = time.time_ns(), sum(cpu_ticks(pid) for pid in args.server_pid)
        a_extra = sum(cpu_ticks(pid) for pid in args.extra_pid)
        a_gen = [cpu_ticks(pid) for pid in gen_pids]
        time.sleep(max(0.0, (t1 - time.time_ns()) / 1e9))
        b_ns, b_srv = time.time_ns(), sum(cpu_ticks(pid) for pid in args.server_pid)
        b_extra = sum(cpu_ticks(pid) for pid in args.extra_pid)
        b_gen = [cpu_ticks(pid) for pid in gen_pids]
        b_wait = send_wait_buckets(urls) if args.roomcast else None

        deadline = time.monotonic() + (plan.listen_until - time.time_ns()) / 1e9 + 60
        got = collect(out, "result", [*range(args.workers), "sender"], deadline, procs)
        results = [got[i][0] for i in range(args.workers)]
        sender_result = got["sender"][0]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()  # SIGTERM to this worker's own pid
                p.join()

    elapsed = (b_ns - a_ns) / 1e9
    server_cpu = (b_srv - a_srv) / CLK_TCK
    gen_pct = [100.0 * (b - a) / CLK_TCK / elapsed for a, b in zip(a_gen, b_gen, strict=True)]
    receiver_deliveries = sum(r["window_deliveries"] for r in results)
    deliveries = receiver_deliveries + sender_result["window_deliveries"]
    latencies = sorted(x for r in results for x in r["latencies"])
    cores = len(os.sched_getaffinity(0))
    if max(gen_pct) > GEN_CPU_LIMIT:
        invalid.append(f"a generator process used {max(gen_pct):.0f}% of a core")
    if sum(gen_pct) > GEN_CPU_LIMIT * cores:
        invalid.append(f"generator used {sum(gen_pct):.0f}% of its {cores} core(s)")
    if sender_result["max_lag_ms"] > MAX_SENDER_LAG_MS:
        invalid.append(f"sender {sender_result['max_lag_ms']:.0f} ms behind schedule")
    if deliveries == 0:
        invalid.append("no deliveries in the window")
    late = max(a_ns - t0, b_ns - t1) / 1e6  # CPU read this long after the window's edges
    if late > 5:
        invalid.append(f"CPU window read {late:.0f} ms late")
    unexpected = sum(r["unexpected"] for r in results)
    if unexpected > MAX_UNEXPECTED * max(1, deliveries):
        invalid.append(f"{unexpected} unparsable frames")
    return {
        "receivers": args.receivers,
        "connected": sum(r["connected"] for r in results),
        "workers": args.workers,
        "rate": args.rate,
        "offered_deliveries_per_s": args.rate * (args.receivers + 1),
        "window_s": elapsed,
        "server_cpu_s": server_cpu,
        "server_cpu_pct": 100.0 * server_cpu / elapsed,
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / elapsed,
        "us_per_delivery": server_cpu * 1e6 / deliveries if deliveries else None,
        "extra_cpu_pct": 100.0 * (b_extra - a_extra) / CLK_TCK / elapsed,
        "extra_us_per_delivery": (
            (b_extra - a_extra) / CLK_TCK * 1e6 / deliveries if deliveries else None
        ),
        "latency_ms": {
            "p50": percentile(latencies, 0.50) / 1e6,
            "p99": percentile(latencies, 0.99) / 1e6,
            "max": (latencies[-1] if latencies else float("nan")) / 1e6,
        },
        "expected": (plan.k1 - plan.k0) * sum(r["connected"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "unexpected_frames": unexpected,
        "server_send_wait_ms": send_wait_ms(a_wait, b_wait),
        "sender_max_lag_ms": sender_result["max_lag_ms"],
        "sender_echo_latency_ms": {
            "p50": sender_result["echo_p50_ms"],
            "p99": sender_result["echo_p99_ms"],
        },
        "gen_cpu_pct": sum(gen_pct),
        "gen_cpu_pct_per_process": gen_pct,
        "gen_cores": cores,
        "invalid": invalid,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, nargs="+", required=True, help="one per node")
    parser.add_argument(
        "--server-pid", type=int, nargs="+", required=True, help="server processes (CPU summed)"
    )
    parser.add_argument(
        "--extra-pid", type=int, nargs="*", default=[], help="e.g. redis-server: CPU reported apart"
    )
    parser.add_argument("--receivers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--tail", type=float, default=1.0, help="seconds sent after window")
    parser.add_argument("--drain", type=float, default=2.0, help="seconds listened after")
    parser.add_argument("--workers", type=int, default=1, help="receiver processes")
    parser.add_argument("--batch", type=int, default=100, help="connections opened at once")
    parser.add_argument(
        "--roomcast", action="store_true", help="the server is roomcast (its ADD_CHAT layout)"
    )
    args = parser.parse_args()
    load_picows()  # exits with how to install it, before any worker starts
    if args.roomcast and "LOADGEN_SUFFIX_LEN" not in os.environ:
        os.environ["LOADGEN_SUFFIX_LEN"] = str(ROOMCAST_SUFFIX_LEN)
        again = [sys.executable, "-m", "roomcast.bench.fanout", *sys.argv[1:]]
        os.execv(sys.executable, again)  # with the layout set
    result = run(args)
    lat = result["latency_ms"]
    invalid = "; ".join(result["invalid"])
    print(
        f"{result['us_per_delivery'] or float('nan'):.2f} us/delivery, "
        f"{result['deliveries_per_s']:.0f} deliveries/s, p50 {lat['p50']:.1f} ms, "
        f"p99 {lat['p99']:.1f} ms, lost {result['lost']}, dup {result['duplicates']}, "
        f"gen {result['gen_cpu_pct']:.0f}%" + (f" INVALID: {invalid}" if invalid else ""),
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
