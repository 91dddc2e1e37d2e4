"""`--baseline LIB`: a bare broadcast server on another WebSocket library, measured next
to roomcast. The bare servers are not part of the package (roomcast imports no other
WebSocket server): they are `bench/servers.py` in a checkout of the repository, run as
their own process with the Python running this one."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from roomcast.bench.measure import free_port

LIBS = ("aiohttp", "picows", "websockets")
NOT_FOUND = "--baseline needs a checkout of the roomcast repository: bench/servers.py not found"
PACKAGE_DIR = Path(__file__).resolve().parent


def find_servers() -> Path | None:
    """bench/servers.py of the roomcast checkout holding this package's source (an
    editable install) or the current directory; None elsewhere (an installed wheel)."""
    for start in (PACKAGE_DIR, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            script = folder / "bench" / "servers.py"
            if script.is_file() and (folder / "src" / "roomcast").is_dir():
                return script
    return None


@contextlib.contextmanager
def bare_server(script: Path, lib: str, cpus: set[int]) -> Iterator[tuple[int, int]]:
    """The bare `lib` server of `script` (bench/servers.py) on `cpus`, as (port, pid),
    stopped by its pid afterwards."""
    port = free_port()
    cmd = [sys.executable, str(script), "--lib", lib, "--uvloop", "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        os.sched_setaffinity(server.pid, cpus)
        assert server.stdout is not None
        if not server.stdout.readline().startswith("READY"):
            raise RuntimeError(f"the bare {lib} server did not start ({script})")
        yield port, server.pid
    finally:
        server.terminate()
        server.wait(10)
