"""A/B: two `roomcast serve` configurations, one scenario, alternating runs in one session.

Each round starts a fresh server with configuration A, then one with B, pinned to the
first CPU, and runs `roomcast bench SCENARIO` pinned to the second CPU against each;
the table gives every run and the median of B over A. The default compares Python's
garbage-collector thresholds (`--gc-threshold 0`) with roomcast's own default.

    python bench/ab.py handshakes --rounds 3
    python bench/ab.py rooms --a "--gc-threshold 0" --b "" --rounds 2
    python bench/ab.py handshakes --a "--loop asyncio" --b "--loop uvloop"

Before and after a change: `--a-src DIR` runs A's server from another checkout's source
(`git worktree add /tmp/before COMMIT`, then `--a-src /tmp/before`); the generator is
this checkout's either way.

    python bench/ab.py fanout --a-src /tmp/before --a "" --b "" --rate 200
    python bench/ab.py fanout --a-src /tmp/before --a "--store sqlite:///a.db" \
        --b "--store sqlite:///b.db" --rate 200

Loopback only; every server it starts it stops by pid. Results go to
bench/results/ab-SCENARIO-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from roomcast.bench.measure import free_port, listener_pids
from roomcast.bench.report import header

RESULTS = Path(__file__).resolve().parent / "results"
COST = {
    "fanout": "us_per_delivery",
    "rooms": "server_cpu_us_per_delivery",
    "handshakes": "server_cpu_us_per_connection",
    "idle": "kib_per_connection",
}
SERVE = [
    "--store", "memory://", "--max-message-rate", "1e9", "--message-burst", "1000000000",
    "--max-connections-per-ip", "1000000", "--presence-broadcast-max", "10",
    "--log-level", "warning",
]  # fmt: skip


def one(
    scenario: str,
    extra: str,
    bench_args: list[str],
    cpus: tuple[int, int],
    src: Path | None = None,
) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, "-m", "roomcast", "serve", "--port", str(port), *SERVE]
    env = dict(os.environ)
    if src is not None:  # the server of another checkout
        env["PYTHONPATH"] = str(src / "src")
    work = tempfile.TemporaryDirectory()  # the server's own folder (its SQLite files)
    server = subprocess.Popen(
        [*cmd, *shlex.split(extra)], stdout=subprocess.DEVNULL, env=env, cwd=work.name
    )
    try:
        os.sched_setaffinity(server.pid, {cpus[0]})
        for _ in range(100):
            if listener_pids(port):
                break
            if server.poll() is not None:
                raise SystemExit(f"roomcast serve {extra} exited ({server.returncode})")
            time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "report.json"
            gen = [sys.executable, "-m", "roomcast", "bench", scenario, *bench_args]
            gen += ["--url", f"ws://127.0.0.1:{port}/", "--server-pid", str(server.pid)]
            run = subprocess.Popen(
                [*gen, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            try:
                os.sched_setaffinity(run.pid, {cpus[1]})
                run.communicate()
            finally:
                if run.poll() is None:  # interrupted: stop the generator too
                    run.terminate()
                    run.wait(15)
            if run.returncode != 0:
                raise RuntimeError(f"roomcast bench {scenario} failed")
            result: dict[str, Any] = json.loads(out.read_text())["results"][0]
            return result
    finally:
        server.terminate()
        server.wait(15)
        work.cleanup()


def main() -> None:
    # SIGTERM stops it like Ctrl-C: the server of the run under way is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(COST))
    parser.add_argument("--a", default="--gc-threshold 0", help="serve flags of A")
    parser.add_argument("--b", default="", help="serve flags of B")
    parser.add_argument("--a-src", type=Path, help="a checkout whose server is A")
    parser.add_argument("--b-src", type=Path, help="a checkout whose server is B")
    parser.add_argument("--rounds", type=int, default=2)
    mine = sorted(os.sched_getaffinity(0))
    parser.add_argument(
        "--cpus", type=int, nargs=2, default=(mine[0], mine[-1]), help="server, generator"
    )
    parser.add_argument("--out", type=Path)
    args, bench_args = parser.parse_known_args()
    key = COST[args.scenario]
    runs: list[dict[str, Any]] = []
    for n in range(args.rounds):
        for label, extra, src in (("A", args.a, args.a_src), ("B", args.b, args.b_src)):
            result = one(args.scenario, extra, bench_args, tuple(args.cpus), src)
            where = {"src": str(src)} if src else {}
            runs.append({"config": label, "flags": extra, "round": n + 1, **where, **result})
            p99 = result.get("latency_ms", {}).get("p99")
            print(
                f"round {n + 1} {label} [{extra or 'defaults'}]: {result[key]:.2f} {key}"
                + (f", p99 {p99:.1f} ms" if p99 is not None else "")
                + (f"  INVALID: {'; '.join(result['invalid'])}" if result["invalid"] else ""),
                flush=True,
            )
    a = statistics.median(r[key] for r in runs if r["config"] == "A")
    b = statistics.median(r[key] for r in runs if r["config"] == "B")
    invalid = sum(1 for r in runs if r["invalid"])
    print(f"median {key}: A {a:.2f}, B {b:.2f}; B/A = {b / a:.2f}")
    if invalid:
        print(f"note: {invalid} of {len(runs)} runs are marked invalid (see above); read with care")
    out = args.out or RESULTS / f"ab-{args.scenario}-{dt.date.today()}.json"
    report = {
        **header(),
        "scenario": args.scenario,
        "a": args.a,
        "b": args.b,
        "a_src": str(args.a_src or ""),
        "b_src": str(args.b_src or ""),
        "median_a": a,
        "median_b": b,
        "b_over_a": b / a,
        "invalid_runs": invalid,
        "runs": runs,
    }
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
