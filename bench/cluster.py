"""Scale-out benchmark: one room spread over 1, 2 and 3 roomcast nodes joined by Redis.

Configurations, all measured in one run (repetitions interleaved):

* ``alone``   one node, memory store, no Redis: the baseline, and what room affinity
              (nginx `hash $arg_room`) gives each node, since a room lives on one node;
* ``redis-1`` one node sharing through Redis (the cost of the broker alone);
* ``redis-2``, ``redis-3``: the room's receivers spread evenly over 2 or 3 nodes.

The servers (roomcast nodes and a private redis-server on a free port) are pinned to
CPU 0, the load generator (`roomcast.bench.fanout`, picows clients) to CPU 1. The
figures are server CPU per delivery (all nodes summed), Redis CPU per delivery,
deliveries/s and latency; every ratio is against ``alone`` of the same run. Everything
listens on 127.0.0.1 and stops by itself.

    python bench/cluster.py                 # 3 reps x 4 configs x 2 rates, ~8 minutes
    python bench/cluster.py --quick         # one short rep, for a smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "transport"))

from run import free_port, pinning  # noqa: E402

from roomcast.bench.report import header  # noqa: E402

RESULTS = HERE / "results"
CONFIGS = ("alone", "redis-1", "redis-2", "redis-3")


def wait_http(port: int, path: str, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # by its own pid
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_one(config: str, rate: float, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    pin_server, pin_gen = pinning()
    procs: list[subprocess.Popen[bytes]] = []
    redis_pid: list[str] = []
    try:
        common = [
            "--max-message-rate", "1000000000", "--message-burst", "1000000000",
            "--max-connections-per-ip", "1000000", "--presence-broadcast-max", "10",
            "--drain-time", "0", "--log-level", "warning", "--admin-token", "b" * 32,
        ]  # fmt: skip
        if config == "alone":
            stores = [["--store", "memory://"]]
        else:
            redis_port = free_port()
            redis = subprocess.Popen(
                [*pin_server, shutil.which("redis-server") or "redis-server",
                 "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(tmp)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(redis)
            redis_pid = [str(redis.pid)]
            url = f"redis://127.0.0.1:{redis_port}/0"
            stores = [["--broker", url]] * int(config.split("-")[1])
        ports = []
        for store in stores:
            port = free_port()
            cmd = [sys.executable, "-m", "roomcast", "serve", "--port", str(port), *store, *common]
            procs.append(subprocess.Popen(pin_server + cmd, stdout=subprocess.DEVNULL))
            ports.append(port)
        for port in ports:
            if not wait_http(port, "/readyz"):
                return {"config": config, "rate": rate, "error": "a node did not get ready"}
        node_pids = [str(p.pid) for p in procs if str(p.pid) not in redis_pid]
        gen = [sys.executable, "-m", "roomcast.bench.fanout", "--roomcast"]
        gen += ["--port", *map(str, ports), "--server-pid", *node_pids]
        if redis_pid:
            gen += ["--extra-pid", *redis_pid]
        gen += ["--rate", str(rate), "--receivers", str(args.receivers)]
        gen += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
        gen += ["--workers", str(args.workers), "--drain", "2"]
        budget = args.warmup + args.duration + 200
        proc = subprocess.run(pin_gen + gen, capture_output=True, text=True, timeout=budget)
        if proc.returncode != 0:
            return {"config": config, "rate": rate, "error": proc.stderr[-800:]}
        return {"config": config, "rate": rate, **json.loads(proc.stdout)}
    finally:
        for p in reversed(procs):
            stop(p)


def summarize(runs: list[dict[str, Any]], rates: list[float]) -> str:
    lines = [
        "| rate msg/s | config | nodes CPU µs/delivery | ×alone | Redis CPU µs/delivery "
        "| deliveries/s | p50 ms | p99 ms | lost | dup | valid runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rate in rates:
        base = None
        for config in CONFIGS:
            ok = [
                r for r in runs if r["config"] == config and r["rate"] == rate and "error" not in r
            ]
            if not ok:
                lines.append(f"| {rate:g} | {config} | failed | | | | | | | | 0 |")
                continue
            valid = [r for r in ok if not r["invalid"]] or ok

            def med(key: str, sub: str | None = None, rows: list[dict[str, Any]] = valid) -> float:
                return statistics.median((r[key][sub] if sub else r[key]) or 0.0 for r in rows)

            us = med("us_per_delivery")
            if config == "alone":
                base = us
            ratio = f"{us / base:.2f}" if base else "-"
            lines.append(
                f"| {rate:g} | {config} | {us:.2f} | {ratio} | {med('extra_us_per_delivery'):.2f} "
                f"| {med('deliveries_per_s'):,.0f} | {med('latency_ms', 'p50'):.1f} "
                f"| {med('latency_ms', 'p99'):.1f} | {sum(r['lost'] for r in ok)} "
                f"| {sum(r['duplicates'] for r in ok)} "
                f"| {len([r for r in ok if not r['invalid']])}/{len(ok)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 rep, 3 s, 300 receivers")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 100.0])
    parser.add_argument("--receivers", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=6, help="receiver processes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.duration, args.receivers, args.rates = 1, 3.0, 300, [50.0]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for rate in args.rates:
                for config in CONFIGS:
                    result = run_one(config, rate, args, Path(tmp))
                    runs.append(result)
                    us = result.get("us_per_delivery")
                    print(
                        f"rep {rep + 1}/{args.reps} {config:8} {rate:g}/s: "
                        + (f"{us:.2f} µs/delivery" if us else result.get("error", "?")[-200:])
                        + (" INVALID" if result.get("invalid") else ""),
                        file=sys.stderr,
                    )
    table = summarize(runs, args.rates)
    print(table)
    out = args.out or RESULTS / f"cluster-{dt.date.today()}{'-quick' if args.quick else ''}.json"
    out.write_text(
        json.dumps(
            {**header(), "args": vars(args) | {"out": None}, "runs": runs, "table": table},
            indent=1,
            default=str,
        )
    )  # fmt: skip
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
