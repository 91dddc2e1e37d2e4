"""`roomcast bench SCENARIO`: run one scenario against a running server, print a table,
write JSON.

    roomcast bench fanout --url ws://127.0.0.1:8080/ --rate 50 --rate 200
    roomcast bench fanout --url ws://127.0.0.1:8081/ --url ws://127.0.0.1:8082/   # 2 nodes
    roomcast bench rooms --url ws://127.0.0.1:8080/          # 100 rooms x 10, all sending
    roomcast bench idle --url ws://127.0.0.1:8080/ --connections 10000
    roomcast bench handshakes --url ws://127.0.0.1:8080/ --connections 2000
    roomcast bench rooms --baseline aiohttp   # then the same on a bare aiohttp server

`--baseline` runs a bare server from bench/servers.py, so it needs a checkout of the
repository (found from this package's source or the current directory).

The server must allow the load: serve it with `--max-message-rate 1e9 --message-burst
1000000000 --max-connections-per-ip 1000000` (and `ulimit -n` above the connections).
Its pids are found from the URLs' ports; `--server-pid` names them instead (e.g. to add
a redis-server's).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from roomcast import __version__
from roomcast.bench import baseline, scenarios
from roomcast.bench.clients import load_picows
from roomcast.bench.measure import listener_pids, loopback_port, wait_text
from roomcast.bench.report import header

SCENARIOS = ("fanout", "rooms", "idle", "handshakes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument(
        "--url", action="append", default=None, help="a node's ws:// URL (repeat for several)"
    )
    parser.add_argument("--server-pid", type=int, action="append", default=None)
    parser.add_argument("--out", type=Path, help="JSON file (default ./roomcast-bench-...)")
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke test")
    parser.add_argument(
        "--baseline",
        choices=baseline.LIBS,
        help="also run the scenario against a bare server on this library (same CPUs, "
        "right after; bench/servers.py of a checkout) and report roomcast's cost as a "
        "ratio to it",
    )
    fan = parser.add_argument_group("fanout")
    fan.add_argument("--receivers", type=int, default=1000)
    fan.add_argument("--rate", type=float, action="append", help="messages/s (repeatable)")
    fan.add_argument("--workers", type=int, default=2, help="receiver processes")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--duration", type=float, default=8.0, help="measured seconds")
    timing.add_argument("--warmup", type=float, default=2.0)
    many = parser.add_argument_group("rooms")
    many.add_argument("--rooms", type=int, default=100)
    many.add_argument("--members", type=int, default=10)
    conns = parser.add_argument_group("idle and handshakes")
    conns.add_argument("--connections", type=int, default=None)
    conns.add_argument("--per-room", type=int, default=10, help="idle: members per room")
    conns.add_argument("--batch", type=int, default=100, help="connections opened at once")


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def _generate(
    args: argparse.Namespace, rate: float, ports: list[int], pids: list[int], roomcast: bool
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "roomcast.bench.fanout", *(["--roomcast"] if roomcast else [])]
    cmd += ["--port", *map(str, ports), "--server-pid", *map(str, pids)]
    cmd += ["--rate", str(rate), "--receivers", str(args.receivers)]
    cmd += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
    cmd += ["--workers", str(args.workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("load generator failed: " + proc.stderr[-1000:])
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _baseline(args: argparse.Namespace, rate: float, cpus: set[int]) -> dict[str, Any]:
    """Measure a bare server on `cpus` like roomcast."""
    with baseline.bare_server(args.servers, args.baseline, cpus) as (port, pid):
        return _generate(args, rate, [port], [pid], roomcast=False)


def _fanout(args: argparse.Namespace, ports: list[int], pids: list[int]) -> list[dict[str, Any]]:
    results = []
    cpus = os.sched_getaffinity(pids[0])
    for rate in args.rate or ([200.0] if args.quick else [50.0, 200.0]):
        _progress(f"fanout: {args.receivers:,} receivers at {rate:g} msg/s ...")
        result = _generate(args, rate, ports, pids, roomcast=True)
        results.append({"scenario": "fanout", "server": "roomcast", "nodes": len(ports), **result})
        if args.baseline:
            _progress(f"fanout: the same against bare {args.baseline} ...")
            base = _baseline(args, rate, cpus)
            results.append(
                {"scenario": "fanout", "server": f"bare {args.baseline}", "nodes": 1, **base}
            )
            if base["us_per_delivery"] and result["us_per_delivery"]:
                results[-2]["x_baseline"] = result["us_per_delivery"] / base["us_per_delivery"]
    return results


# The figure each scenario compares with its baseline (lower is better).
COST = {
    "rooms": "server_cpu_us_per_delivery",
    "idle": "kib_per_connection",
    "handshakes": "server_cpu_us_per_connection",
}


def _one(args: argparse.Namespace, url: str, pids: list[int]) -> dict[str, Any]:
    """One run of a scenario other than fanout against the server at `url`."""
    if args.scenario == "rooms":
        return asyncio.run(
            scenarios.rooms(
                url,
                pids,
                room_count=args.rooms,
                members=args.members,
                warmup=args.warmup,
                duration=args.duration,
                progress=_progress,
            )
        )
    if args.scenario == "idle":
        return asyncio.run(
            scenarios.idle(
                url,
                pids,
                count=args.connections or (500 if args.quick else 10_000),
                per_room=args.per_room,
                batch=args.batch,
                settle=1.0 if args.quick else 3.0,
                progress=_progress,
            )
        )
    return asyncio.run(
        scenarios.handshakes(
            url,
            pids,
            count=args.connections or (300 if args.quick else 2_000),
            batch=args.batch,
            progress=_progress,
        )
    )


def _others(args: argparse.Namespace, urls: list[str], pids: list[int]) -> list[dict[str, Any]]:
    """A scenario other than fanout against roomcast, then against the bare baseline."""
    results = [_one(args, urls[0], pids)]
    results[0]["server"] = "roomcast"
    if args.baseline:
        cpus = os.sched_getaffinity(pids[0])
        _progress(f"{args.scenario}: the same against bare {args.baseline} ...")
        with baseline.bare_server(args.servers, args.baseline, cpus) as (port, pid):
            base = _one(args, f"ws://127.0.0.1:{port}/", [pid])
        base["server"] = f"bare {args.baseline}"
        key = COST[args.scenario]
        if base[key] and results[0][key]:
            results[0]["x_baseline"] = results[0][key] / base[key]
        results.append(base)
    return results


def _row(r: dict[str, Any]) -> str:
    flag = " INVALID: " + "; ".join(r["invalid"]) if r.get("invalid") else ""
    ratio = f" (×{r['x_baseline']:.2f} bare)" if "x_baseline" in r else ""
    who = r.get("server", "roomcast")
    wait = wait_text(r.get("server_send_wait_ms"))
    waited = f" (server's wait p99 {wait})" if wait else ""
    if r["scenario"] == "fanout":
        lat = r["latency_ms"]
        return (
            f"| fanout {r['server']}, {r['receivers']:,} rcv × {r['rate']:g}/s, "
            f"{r['nodes']} node(s) | {r['deliveries_per_s']:,.0f} deliveries/s "
            f"| {r['us_per_delivery']:.2f} µs/delivery{ratio} "
            f"| p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} / max {lat['max']:.1f} ms{waited} "
            f"| lost {r['lost']}, dup {r['duplicates']} | gen {r['gen_cpu_pct']:.0f}%{flag} |"
        )
    if r["scenario"] == "rooms":
        lat = r["latency_ms"]
        return (
            f"| rooms {who}, {r['rooms']} × {r['members']}, all sending "
            f"| {r['deliveries_per_s']:,.0f} deliveries/s "
            f"| {r['server_cpu_us_per_delivery']:.2f} µs/delivery{ratio} "
            f"| p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} / max {lat['max']:.1f} ms{waited} "
            f"| server {r['server_cpu_pct']:.0f}% | gen {r['gen_cpu_pct']:.0f}%{flag} |"
        )
    if r["scenario"] == "idle":
        return (
            f"| idle {who}, {r['connections']:,} joined in {r['rooms']:,} rooms "
            f"| {r['kib_per_connection']:.1f} KiB RSS/connection{ratio} "
            f"| RSS {r['server_rss_kib_before'] / 1024:.0f} → "
            f"{r['server_rss_kib_after'] / 1024:.0f} MiB | | |{flag} |"
        )
    return (
        f"| handshakes {who}, {r['connections']:,} | {r['per_s']:,.0f} opened+joined/s "
        f"| {r['server_cpu_us_per_connection']:.0f} µs server CPU/connection{ratio} "
        f"| server {r['server_cpu_pct']:.0f}% | | gen {r['gen_cpu_pct']:.0f}%{flag} |"
    )


def run(args: argparse.Namespace) -> int:
    urls = args.url or ["ws://127.0.0.1:8080/"]
    try:
        ports = [loopback_port(u) for u in urls]
    except ValueError as exc:
        print(f"roomcast bench: {exc}", file=sys.stderr)
        return 2
    args.servers = baseline.find_servers() if args.baseline else None
    if args.baseline and args.servers is None:
        print(f"roomcast bench: {baseline.NOT_FOUND}", file=sys.stderr)
        return 2
    load_picows()  # exits with how to install it
    pids = args.server_pid or sorted({p for port in ports for p in listener_pids(port)})
    if not pids:
        print(f"roomcast bench: nothing listens on {urls} (start roomcast serve)", file=sys.stderr)
        return 2
    if args.quick:
        args.duration, args.warmup = min(args.duration, 3.0), min(args.warmup, 1.0)
        args.receivers = min(args.receivers, 200)
        args.rooms, args.members = min(args.rooms, 20), min(args.members, 5)
    try:
        results = (
            _fanout(args, ports, pids) if args.scenario == "fanout" else _others(args, urls, pids)
        )
    except RuntimeError as exc:  # a load generator or a bare server that failed
        print(f"roomcast bench: {exc}", file=sys.stderr)
        return 1
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print("| scenario | throughput | server cost | latency / memory | | generator |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(_row(r))
    out = args.out or Path(f"roomcast-bench-{args.scenario}-{dt.datetime.now():%Y%m%d-%H%M%S}.json")
    report = {
        "roomcast": __version__,
        **header(),
        "urls": urls,
        "server_pids": pids,
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "servers")},
        "results": results,
    }
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}", file=sys.stderr)
    return 0
