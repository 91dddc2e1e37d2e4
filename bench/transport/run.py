"""Run the transport matrix: {websockets, aiohttp, picows} x uvloop {off, on} x rates.

For each run a fresh server (`bench/servers.py`) is started pinned to CPU 0 and the
load generator (`python -m roomcast.bench.fanout`) pinned to CPU 1 (``taskset``, when there
are two CPUs); the server is stopped by its pid afterwards. Repetitions are interleaved (rep
1 of every config, then rep 2, ...) so slow noise from other tenants spreads over all
configs. Medians are taken over the valid runs of each config (over all of them, flagged,
when none is valid). Prints a Markdown table and writes bench/results/transport-<date>.json.

    python bench/transport/run.py            # full matrix, about 12 minutes
    python bench/transport/run.py --quick    # smoke test, under a minute
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from roomcast.bench.report import git_commit, machine_info

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS = REPO / "bench" / "results"
SERVERS = REPO / "bench" / "servers.py"
LIBS = ("websockets", "aiohttp", "picows", "roomcast")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinning() -> tuple[list[str], list[str]]:
    """taskset prefixes for the server (CPU 0) and the generator (CPU 1), if possible."""
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        return ["taskset", "-c", "0"], ["taskset", "-c", "1"]
    return [], []


def wait_ready(server: subprocess.Popen[str], timeout: float) -> bool:
    assert server.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(server.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return False
    return server.stdout.readline().startswith("READY")


def stop(server: subprocess.Popen[str]) -> None:
    """SIGTERM to the server's own pid (taskset execs it), SIGKILL if it lingers."""
    server.terminate()
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_one(lib: str, uvloop: bool, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    pin_server, pin_gen = pinning()
    port = free_port()
    uv_flag = "--uvloop" if uvloop else "--no-uvloop"
    cmd = [sys.executable, str(SERVERS), "--lib", lib, uv_flag]
    cmd += ["--port", str(port)]
    run: dict[str, Any] = {"lib": lib, "uvloop": uvloop, "rate": rate}
    with tempfile.TemporaryFile("w+") as err:
        server = subprocess.Popen(pin_server + cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            if not wait_ready(server, timeout=20):
                err.seek(0)
                return {**run, "error": "server did not start: " + err.read()[-500:]}
            gen = [sys.executable, "-m", "roomcast.bench.fanout", "--port", str(port)]
            gen += ["--server-pid", str(server.pid), "--rate", str(rate)]
            gen += ["--receivers", str(args.receivers), "--duration", str(args.duration)]
            gen += ["--warmup", str(args.warmup), "--tail", str(args.tail)]
            gen += ["--drain", str(args.drain), "--workers", str(args.workers)]
            if lib == "roomcast":
                gen += ["--roomcast"]
            budget = args.warmup + args.duration + args.tail + args.drain + 180
            try:
                proc = subprocess.run(pin_gen + gen, capture_output=True, text=True, timeout=budget)
            except subprocess.TimeoutExpired:
                return {**run, "error": f"loadgen exceeded {budget:.0f} s"}
            if proc.returncode != 0:
                return {**run, "error": "loadgen failed: " + proc.stderr[-800:]}
            return {**run, **json.loads(proc.stdout)}
        finally:
            stop(server)


def median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in runs:
        value: Any = r
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


def summarize(
    runs: list[dict[str, Any]], configs: list[tuple[str, bool, float]]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for lib, uvloop, rate in configs:
        mine = [r for r in runs if (r["lib"], r["uvloop"], r["rate"]) == (lib, uvloop, rate)]
        ok = [r for r in mine if "error" not in r and r["us_per_delivery"] is not None]
        valid = [r for r in ok if not r["invalid"]]
        row: dict[str, Any] = {"lib": lib, "uvloop": uvloop, "rate": rate, "runs": len(mine)}
        row["valid_runs"] = len(valid)
        row["errors"] = sorted({r["error"][:200] for r in mine if "error" in r})
        bad = [r for r in ok if r["invalid"]]
        reasons = sorted({re.sub(r"\d+%", "X%", why) for r in bad for why in r["invalid"]})
        gen = "/".join(f"{r['gen_cpu_pct']:.0f}" for r in bad)
        row["invalid_reasons"] = (
            [
                f"{len(bad)}/{len(mine)} runs invalid (generator at {gen}% of a core): "
                + "; ".join(reasons)
            ]
            if bad
            else []
        )
        use = valid or ok
        row["median_over"] = "valid runs" if valid else ("all runs (none valid)" if ok else "-")
        if use:
            row["offered_deliveries_per_s"] = use[0]["offered_deliveries_per_s"]
            row["us_per_delivery"] = median(use, "us_per_delivery")
            row["deliveries_per_s"] = median(use, "deliveries_per_s")
            row["server_cpu_pct"] = median(use, "server_cpu_pct")
            for q in ("p50", "p99", "max"):
                row[f"latency_{q}_ms"] = median(use, "latency_ms", q)
            row["echo_p99_ms"] = median(use, "sender_echo_latency_ms", "p99")
            row["lost"] = median(use, "lost")
            row["duplicates"] = median(use, "duplicates")
            row["gen_cpu_pct"] = median(use, "gen_cpu_pct")
            row["saturated"] = row["deliveries_per_s"] < 0.97 * row["offered_deliveries_per_s"]
        rows.append(row)
    for rate in sorted({row["rate"] for row in rows}):
        same = [row for row in rows if row["rate"] == rate and "us_per_delivery" in row]
        best = [row for row in same if row["valid_runs"]] or same
        if best:
            fastest = min(row["us_per_delivery"] for row in best)
            for row in same:
                row["ratio_to_fastest"] = row["us_per_delivery"] / fastest
    return rows


def per_lib(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Max deliveries/s seen and the one-core capacity implied by µs/delivery at max rate."""
    out = []
    for lib, uvloop in dict.fromkeys((row["lib"], row["uvloop"]) for row in rows):
        mine = [row for row in rows if (row["lib"], row["uvloop"]) == (lib, uvloop)]
        mine = [row for row in mine if "us_per_delivery" in row]
        if not mine:
            continue
        top = max(mine, key=lambda row: row["rate"])
        out.append(
            {
                "lib": lib,
                "uvloop": uvloop,
                "max_deliveries_per_s_seen": max(row["deliveries_per_s"] for row in mine),
                "capacity_one_core_per_s": 1e6 / top["us_per_delivery"],
                "at_rate": top["rate"],
            }
        )
    return out


def fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]], libs: list[dict[str, Any]]) -> str:
    lines = [
        "| lib | uvloop | msg/s | offered/s | µs/delivery | × fastest | deliveries/s "
        "| server CPU % | p50 ms | p99 ms | max ms | lost | gen CPU % | valid |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r.get
        valid = f"{r['valid_runs']}/{r['runs']}"
        if r["invalid_reasons"] or r["errors"]:
            valid += " *"
        lines.append(
            f"| {r['lib']} | {'on' if r['uvloop'] else 'off'} | {r['rate']:g} "
            f"| {fmt(g('offered_deliveries_per_s'), ',.0f')} | {fmt(g('us_per_delivery'), '.2f')} "
            f"| {fmt(g('ratio_to_fastest'), '.2f')} | {fmt(g('deliveries_per_s'), ',.0f')}"
            f"{' (saturated)' if g('saturated') else ''} | {fmt(g('server_cpu_pct'), '.0f')} "
            f"| {fmt(g('latency_p50_ms'), '.1f')} | {fmt(g('latency_p99_ms'), '.1f')} "
            f"| {fmt(g('latency_max_ms'), '.0f')} | {fmt(g('lost'), '.0f')} "
            f"| {fmt(g('gen_cpu_pct'), '.0f')} | {valid} |"
        )
    lines += [
        "",
        "| lib | uvloop | max deliveries/s seen | one-core capacity (1e6 / µs at top rate) |",
        "|---|---|---|---|",
    ]
    for s in libs:
        lines.append(
            f"| {s['lib']} | {'on' if s['uvloop'] else 'off'} "
            f"| {s['max_deliveries_per_s_seen']:,.0f} | {s['capacity_one_core_per_s']:,.0f} |"
        )
    notes = [
        f"* {r['lib']} uvloop={'on' if r['uvloop'] else 'off'} {r['rate']:g} msg/s: "
        + "; ".join(r["invalid_reasons"] + r["errors"])
        for r in rows
        if r["invalid_reasons"] or r["errors"]
    ]
    return "\n".join(lines + (["", *notes] if notes else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 rep, 3 s, 200 receivers, 200/s")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0])
    parser.add_argument("--libs", nargs="+", choices=LIBS, default=list(LIBS))
    parser.add_argument("--receivers", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--tail", type=float, default=1.0)
    parser.add_argument("--drain", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=1, help="receiver processes")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/...)")
    parser.add_argument("--report", type=Path, help="only re-summarize this results JSON")
    args = parser.parse_args()
    if args.report:
        report = json.loads(args.report.read_text())
        write_summary(report, args.report)
        return
    if args.quick:
        args.reps, args.duration, args.receivers, args.rates = 1, 3.0, 200, [200.0]
        args.warmup, args.tail, args.drain = 0.5, 0.5, 0.5

    started = dt.datetime.now()
    configs = [(lib, uv, rate) for lib in args.libs for uv in (False, True) for rate in args.rates]
    info = {"machine": machine_info(), "commit": git_commit()}
    info["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
    pin_server, pin_gen = pinning()
    print(
        f"{len(configs)} configs x {args.reps} reps; pinning: server {pin_server or 'none'}, "
        f"generator {pin_gen or 'none'}",
        file=sys.stderr,
    )
    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for lib, uvloop, rate in configs:
            t = time.monotonic()
            run = {"rep": rep + 1, **run_one(lib, uvloop, rate, args)}
            runs.append(run)
            label = f"rep {rep + 1} {lib:10} uvloop={'on ' if uvloop else 'off'} {rate:g}/s"
            if "error" in run:
                print(f"{label}: ERROR {run['error'][:300]}", file=sys.stderr)
            else:
                print(
                    f"{label}: {run['us_per_delivery']:.2f} µs/delivery, "
                    f"{run['deliveries_per_s']:,.0f}/s, p99 {run['latency_ms']['p99']:.1f} ms, "
                    f"lost {run['lost']}, gen {run['gen_cpu_pct']:.0f}%"
                    + (f" INVALID ({'; '.join(run['invalid'])})" if run["invalid"] else "")
                    + f" [{time.monotonic() - t:.0f} s]",
                    file=sys.stderr,
                )
    elapsed = (dt.datetime.now() - started).total_seconds()
    report = {
        "date": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed),
        "command": " ".join(["python", "bench/transport/run.py", *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "report")},
        "configs": configs,
        "pinning": {"server": pin_server, "generator": pin_gen},
        **info,
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
        "runs": runs,
    }
    suffix = "-quick" if args.quick else ""
    out = args.out or RESULTS / f"transport-{started:%Y-%m-%d}{suffix}.json"
    write_summary(report, out)
    print(f"\nwrote {out} ({elapsed:.0f} s)", file=sys.stderr)


def write_summary(report: dict[str, Any], out: Path) -> None:
    """Add the summary (medians, ratios, Markdown table) to a report, print it, save it."""
    configs = [(lib, uv, rate) for lib, uv, rate in report["configs"]]
    report["summary"] = summarize(report["runs"], configs)
    report["per_lib"] = per_lib(report["summary"])
    report["table_markdown"] = table(report["summary"], report["per_lib"])
    print(report["table_markdown"])
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = report.pop("runs")  # keep the raw runs last in the file
    out.write_text(json.dumps({**report, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
