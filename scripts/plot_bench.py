"""Draw docs/perf-receivers.png from `roomcast bench fanout` reports: server CPU per
delivery and p99 latency against the number of receivers in the room.

    python scripts/plot_bench.py bench/results/bench-fanout-*-receivers-2026-11-26.json

Needs matplotlib (pip install matplotlib); it is not a dependency of roomcast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

OUT = Path(__file__).resolve().parent.parent / "docs" / "perf-receivers.png"


def main(paths: list[str]) -> None:
    rows = []
    for path in paths:
        for r in json.loads(Path(path).read_text())["results"]:
            rows.append((r["receivers"], r["us_per_delivery"], r["latency_ms"]["p99"], r["rate"]))
    rows.sort()
    receivers = [r[0] for r in rows]
    fig, left = plt.subplots(figsize=(7, 4), dpi=110)
    left.plot(receivers, [r[1] for r in rows], "o-", color="tab:blue")
    left.set_xscale("log")
    left.set_xlabel("receivers in the room (messages/s chosen for ~100,000 deliveries/s)")
    left.set_ylabel("server CPU per delivery (µs)", color="tab:blue")
    left.set_ylim(bottom=0)
    right = left.twinx()
    right.plot(receivers, [r[2] for r in rows], "s--", color="tab:red")
    right.set_ylabel("p99 latency (ms)", color="tab:red")
    right.set_ylim(bottom=0)
    for i, (n, us, _, rate) in enumerate(rows):
        shift = (-75, 4) if i == len(rows) - 1 else (4, 6)
        left.annotate(f"{n:,} × {rate:g}/s", (n, us), textcoords="offset points", xytext=shift)
    left.set_title("roomcast fan-out, one core: cost and latency as the room grows")
    fig.tight_layout()
    fig.savefig(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1:])
