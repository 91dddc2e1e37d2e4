"""What every benchmark report records about where it ran: date, commit, machine."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("aiohttp", "websockets", "picows", "aiofastnet", "uvloop", "msgspec", "redis")


def machine_info() -> dict[str, Any]:
    """CPU model and count, kernel, Python and the versions of the libraries that matter."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpus": os.cpu_count(),
        "nproc": len(os.sched_getaffinity(0)),  # the CPUs this process may run on
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libraries": versions,
        "clk_tck": os.sysconf("SC_CLK_TCK"),
    }


def git_commit(where: Path | None = None) -> str:
    """The checked-out commit of the repository at `where` (default: this file's), with
    "-dirty" when files other than bench/results/ have uncommitted changes (results are
    what benchmarks write); "unknown" outside a git checkout."""
    where = where or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(where), *args], capture_output=True, text=True, check=False
            )
        except OSError:
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if commit is None:
        return "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":/!bench/results")
    return f"{commit}-dirty" if changed else commit


def header() -> dict[str, Any]:
    """The fields every report starts with."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine_info(),
    }
