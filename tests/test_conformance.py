"""RFC 6455 conformance: the Autobahn TestSuite's cases, driven by kosoku, against an
echo route on the production WebSocket stack (aiohttp's reader, roomcast's outbox and
pre-encoded frames), with only the size cap raised."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from roomcast.testing import running_server
from tests.helpers import timeout

ALLOW = json.loads((Path(__file__).parent / "autobahn-allowlist.json").read_text())
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}


async def test_autobahn_cases(tmp_path: Path) -> None:
    """Every Autobahn case passes, or is allow-listed with a reason."""
    kosoku = shutil.which("kosoku", path=str(Path(sys.executable).parent)) or shutil.which("kosoku")
    if kosoku is None:
        pytest.fail("kosoku is not installed (it is in the test extra)")
    async with running_server(echo_path="/echo", max_message_rate=1e9, message_burst=10**9) as srv:
        proc = await asyncio.create_subprocess_exec(
            kosoku,
            "-p",
            "2",
            "-o",
            str(tmp_path),
            f"ws://127.0.0.1:{srv.port}/echo",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(proc.communicate(), timeout(300))
    report = json.loads((tmp_path / "index.json").read_text())
    results = {case: r for agent in report.values() for case, r in agent.items()}
    assert len(results) > 500, output.decode()[-2000:]
    unexpected = {}
    for case, result in results.items():
        behavior = result["behavior"]
        if behavior in PASSING:
            continue
        if behavior == "FAILED" and case in ALLOW["failed"]:
            continue
        if behavior == "UNIMPLEMENTED" and case.split(".")[0] in ALLOW["unimplemented_groups"]:
            continue
        unexpected[case] = behavior
    assert unexpected == {}, output.decode()[-3000:]
    for case in ALLOW["failed"]:  # keep the allow-list honest: drop entries that pass now
        assert results[case]["behavior"] == "FAILED", f"{case} passes now: remove it"
