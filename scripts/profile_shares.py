"""Shares of busy samples per function, from a py-spy raw profile.

    py-spy record -p PID -r 200 -f raw -o profile.txt --nonblocking -d 30
    python scripts/profile_shares.py profile.txt --top 30

Each line of a raw profile is a stack (frames joined by ";") and a sample count.
Samples whose innermost frames wait in the event loop's selector are idle and left out.
"Inclusive" counts a function once per sample it is anywhere on the stack; "self"
counts the innermost frame only (time in C code called from it lands there too).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def name(frame: str) -> str:
    """`function (path/to/file.py:12)` -> `function (file.py)`."""
    function, _, where = frame.partition(" (")
    if not where:
        return frame
    return f"{function} ({where.split(':')[0].rsplit('/', 1)[-1]})"


def shares(path: Path) -> tuple[int, int, Counter[str], Counter[str]]:
    """(busy samples, idle samples, inclusive counts, self counts)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if any("select (" in f or "poll (" in f for f in frames[-2:]):
            idle += n
            continue
        busy += n
        for function in {name(f) for f in frames}:
            inclusive[function] += n
        own[name(frames[-1])] += n
    return busy, idle, inclusive, own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    busy, idle, inclusive, own = shares(args.profile)
    print(f"{busy} busy samples, {idle} idle")
    for title, counts in (("inclusive", inclusive), ("self", own)):
        print(f"\n| {title} | share |\n|---|---|")
        for function, n in counts.most_common(args.top):
            print(f"| {function} | {100 * n / max(busy, 1):.1f}% |")


if __name__ == "__main__":
    main()
