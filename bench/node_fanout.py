"""Fan-out at rates a Python client cannot receive: Node's `ws` as the load generator.

Runs bench/node/fanout.mjs (one sender at a fixed rate, N receivers in one room) against
a running server, reads the server's CPU time from /proc when the script says its
measured window opens and closes, and prints µs of server CPU per delivery, deliveries/s,
latency, loss and the generator's own CPU (a run above 85% of a core is marked invalid).

    (cd bench/node && npm install)        # once: the ws package
    python bench/node_fanout.py --port 8080 --receivers 1000 --rate 200 --rate 400
    python bench/node_fanout.py --port 8080 --baseline aiohttp --rate 400   # same run, bare

Server pids are found from the port (or give --server-pid). With --baseline, a bare
broadcast server (bench/servers.py) is started on the server's CPUs and measured
right after, for a ratio. Loopback only; everything it starts it stops by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from roomcast.bench.baseline import LIBS, bare_server
from roomcast.bench.measure import listener_pids, send_wait_buckets, send_wait_ms, wait_text
from roomcast.bench.report import header

SCRIPT = Path(__file__).resolve().parent / "node" / "fanout.mjs"
SERVERS = Path(__file__).resolve().parent / "servers.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def measure(port: int, pids: list[int], args: argparse.Namespace, rate: float) -> dict[str, Any]:
    node = shutil.which("node") or "node"
    cmd = [node, str(SCRIPT), "--ports", str(port), "--receivers", str(args.receivers)]
    cmd += ["--pids", ",".join(map(str, pids))]
    cmd += ["--rate", str(rate), "--duration", str(args.duration), "--warmup", str(args.warmup)]
    gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    if args.gen_cpus:
        os.sched_setaffinity(gen.pid, args.gen_cpus)
    assert gen.stdout is not None
    # The generator reads the clock and the CPU ticks itself when it starts and stops
    # counting; the send-wait histogram is scraped here once each mark arrives.
    marks: dict[str, tuple[float, int, int]] = {}
    waits: dict[str, dict[float, float] | None] = {}
    result: dict[str, Any] = {}
    url = f"ws://127.0.0.1:{port}/"
    for line in gen.stdout:
        if line.startswith("WINDOW_"):
            mark, wall_ms, server_ticks, own_ticks = line.split()
            marks[mark] = (int(wall_ms) / 1000, int(server_ticks), int(own_ticks))
            waits[mark] = send_wait_buckets([url])
        elif line.startswith("{"):
            result = json.loads(line)
    gen.wait(30)
    (t0, s0, g0), (t1, s1, g1) = marks["WINDOW_START"], marks["WINDOW_END"]
    seconds = t1 - t0
    server_cpu = (s1 - s0) / CLK_TCK
    gen_pct = 100 * (g1 - g0) / CLK_TCK / seconds
    deliveries = result["window_deliveries"]
    invalid = [f"generator at {gen_pct:.0f}% of a core"] if gen_pct > 85 else []
    if result["sender_max_lag_ms"] > 100:
        invalid.append(f"sender {result['sender_max_lag_ms']:.0f} ms behind")
    return {
        **result,
        "server_send_wait_ms": send_wait_ms(waits["WINDOW_START"], waits["WINDOW_END"]),
        "deliveries_per_s": deliveries / seconds,
        "us_per_delivery": server_cpu * 1e6 / max(deliveries, 1),
        "server_cpu_pct": 100 * server_cpu / seconds,
        "gen_cpu_pct": gen_pct,
        "invalid": invalid,
    }


def baseline(args: argparse.Namespace, rate: float, cpus: set[int]) -> dict[str, Any]:
    with bare_server(SERVERS, args.baseline, cpus) as (port, pid):
        time.sleep(0.2)
        return measure(port, [pid], args, rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--server-pid", type=int, action="append")
    parser.add_argument("--receivers", type=int, default=1000)
    parser.add_argument("--rate", type=float, action="append")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--baseline", choices=LIBS)
    parser.add_argument("--gen-cpus", type=int, nargs="*", help="pin the generator")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pids = args.server_pid or listener_pids(args.port)
    if not pids:
        sys.exit(f"nothing listens on port {args.port}")
    cpus = os.sched_getaffinity(pids[0])
    rows = []
    for rate in args.rate or [200.0, 400.0]:
        ours = {"server": "roomcast", **measure(args.port, pids, args, rate)}
        rows.append(ours)
        if args.baseline:
            bare = {"server": f"bare {args.baseline}", **baseline(args, rate, cpus)}
            ours["x_baseline"] = ours["us_per_delivery"] / bare["us_per_delivery"]
            rows.append(bare)
    print(
        "| server | receivers × msg/s | deliveries/s | µs/delivery | × bare | server CPU "
        "| p50 / p99 ms | server's wait p99 | lost / dup | generator |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['x_baseline']:.2f}" if "x_baseline" in r else ""
        flag = " INVALID: " + "; ".join(r["invalid"]) if r["invalid"] else ""
        lat = r["latency_ms"]
        waited = wait_text(r.get("server_send_wait_ms")) or "—"
        print(
            f"| {r['server']} | {r['receivers']:,} × {r['rate']:g} | {r['deliveries_per_s']:,.0f} "
            f"| {r['us_per_delivery']:.2f} | {ratio} | {r['server_cpu_pct']:.0f}% "
            f"| {lat['p50']:.0f} / {lat['p99']:.0f} | {waited} | {r['lost']} / {r['duplicates']} "
            f"| {r['gen_cpu_pct']:.0f}%{flag} |"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                {**header(), "args": vars(args) | {"out": None}, "runs": rows},
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
