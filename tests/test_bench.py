"""`roomcast bench` in smoke mode: every scenario runs against a real server process and
writes a report with figures. (Speed is measured by the benchmark, never asserted here.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import NodeProcess, needs_redis, prefix
from tests.helpers import timeout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node() -> Iterator[NodeProcess]:
    server = NodeProcess(
        "", "", "--store", "memory://", "--max-connections-per-ip", "1000000"
    ).start()
    yield server
    server.stop()


def python(*args: str) -> str:
    """Run `python ARGS` to the end; it must succeed. Its standard output."""
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout(180), check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def bench(node: NodeProcess, tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "report.json"
    stdout = python(
        "-m", "roomcast", "bench", *args, "--quick", "--url", node.url, "--out", str(out)
    )
    assert "| scenario |" in stdout
    report: dict[str, object] = json.loads(out.read_text())
    assert report["server_pids"] == [node.proc.pid if node.proc else -1]
    assert report["machine"]["nproc"] >= 1  # type: ignore[index]
    assert report["commit"] != "unknown"  # tests run in a git checkout
    return report


def test_bench_handshakes(node: NodeProcess, tmp_path: Path) -> None:
    (result,) = bench(node, tmp_path, "handshakes")["results"]  # type: ignore[misc]
    assert result["connections"] == 300
    assert result["per_s"] > 0
    assert result["server_cpu_us_per_connection"] > 0


def test_bench_idle(node: NodeProcess, tmp_path: Path) -> None:
    (result,) = bench(node, tmp_path, "idle")["results"]  # type: ignore[misc]
    assert result["connections"] == 500
    assert result["server_rss_kib_after"] > 0


def test_bench_rooms(node: NodeProcess, tmp_path: Path) -> None:
    (result,) = bench(node, tmp_path, "rooms")["results"]  # type: ignore[misc]
    assert result["deliveries_per_s"] > 0
    assert result["server_cpu_us_per_delivery"] > 0
    assert not any("ERROR" in reason for reason in result["invalid"])


def test_bench_fanout_against_a_bare_baseline(node: NodeProcess, tmp_path: Path) -> None:
    report = bench(node, tmp_path, "fanout", "--rate", "50", "--baseline", "aiohttp")
    ours, bare = report["results"]  # type: ignore[misc]
    assert (ours["server"], bare["server"]) == ("roomcast", "bare aiohttp")
    for result in (ours, bare):
        assert result["connected"] == 200
        assert result["deliveries"] > 0
        assert result["lost"] == 0
        assert result["duplicates"] == 0
    assert ours["x_baseline"] == ours["us_per_delivery"] / bare["us_per_delivery"]
    # roomcast's own account of how long frames waited, read from its /metrics in the
    # window; a bare server has none
    wait = ours["server_send_wait_ms"]
    assert wait["passes"] > 0
    assert wait["p99"] is not None  # within the histogram's finite buckets (≤ 1 s)
    assert bare["server_send_wait_ms"] is None


@pytest.mark.parametrize(
    ("scenario", "lib", "cost"),
    [
        ("rooms", "picows", "server_cpu_us_per_delivery"),
        ("handshakes", "aiohttp", "server_cpu_us_per_connection"),
        ("idle", "websockets", "kib_per_connection"),
    ],
)
def test_every_scenario_runs_against_a_bare_baseline_too(
    node: NodeProcess, tmp_path: Path, scenario: str, lib: str, cost: str
) -> None:
    """The bare servers answer joins and echo messages, so each scenario completes on
    them as on roomcast, and roomcast's figure comes out as a ratio to theirs."""
    ours, bare = bench(node, tmp_path, scenario, "--baseline", lib)["results"]  # type: ignore[misc]
    assert (ours["server"], bare["server"]) == ("roomcast", f"bare {lib}")
    assert not any("failed" in reason for r in (ours, bare) for reason in r["invalid"])
    if scenario == "rooms":
        assert bare["deliveries_per_s"] > 0
        assert bare["latency_ms"]["p50"] > 0
        assert ours["server_send_wait_ms"]["passes"] > 0
        assert bare["server_send_wait_ms"] is None
    assert ours["x_baseline"] == ours[cost] / bare[cost]


@needs_redis
def test_fanout_over_two_nodes_joined_by_redis(redis_url: str, tmp_path: Path) -> None:
    """The multi-node scenario: receivers spread over two nodes sharing the room through
    Redis; every message reaches every receiver once, and both nodes' CPU is counted."""
    key_prefix = prefix()
    nodes = [NodeProcess(redis_url, key_prefix, "--max-connections-per-ip", "1000000")]
    nodes.append(NodeProcess(redis_url, key_prefix, "--max-connections-per-ip", "1000000"))
    try:
        for node in nodes:
            node.start()
        out = tmp_path / "report.json"
        python(
            "-m", "roomcast", "bench", "fanout", "--quick", "--rate", "50",
            "--url", nodes[0].url, "--url", nodes[1].url, "--out", str(out),
        )  # fmt: skip
        report = json.loads(out.read_text())
        (result,) = report["results"]
        assert sorted(report["server_pids"]) == sorted(n.proc.pid for n in nodes if n.proc)
        assert result["nodes"] == 2
        assert result["connected"] == 200
        assert (result["lost"], result["duplicates"]) == (0, 0)
        assert result["deliveries"] > 0
        assert result["server_send_wait_ms"]["passes"] > 0  # both nodes' /metrics, summed
    finally:
        for node in nodes:
            node.stop()


def test_bench_refuses_remote_urls(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "roomcast", "bench", "idle", "--url", "ws://example.org/"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "this machine only" in proc.stderr


ROOT = Path(__file__).resolve().parent.parent


def test_baseline_servers_are_found_in_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--baseline runs bench/servers.py of the checkout holding the package's source or
    the current directory, seen from any folder inside it; never a bench/servers.py of
    some other project."""
    from roomcast.bench import baseline

    assert baseline.find_servers() == ROOT / "bench" / "servers.py"  # this checkout
    monkeypatch.setattr(baseline, "PACKAGE_DIR", tmp_path / "site-packages" / "roomcast")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "servers.py").write_text("")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "deep" / "er")
    assert baseline.find_servers() is None  # not roomcast's: no src/roomcast beside it
    (tmp_path / "src" / "roomcast").mkdir(parents=True)
    assert baseline.find_servers() == tmp_path / "bench" / "servers.py"


def test_baseline_outside_a_checkout_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed roomcast has no bare servers: --baseline stops before measuring
    anything, with one line and no traceback."""
    from roomcast.bench import baseline
    from roomcast.cli import main

    monkeypatch.setattr(baseline, "PACKAGE_DIR", tmp_path / "site-packages" / "roomcast")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "idle", "--baseline", "aiohttp", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "roomcast bench: --baseline needs a checkout of the roomcast repository: "
        "bench/servers.py not found"
    ]
    assert not (tmp_path / "r").exists()


def test_bare_servers_run_from_the_checkout() -> None:
    """bench/servers.py runs as a script of its own (it is not in the package)."""
    stdout = python(str(ROOT / "bench" / "servers.py"), "--help")
    assert "--lib" in stdout
    assert not (ROOT / "src" / "roomcast" / "bench" / "servers.py").exists()


def test_ab_compares_two_server_configurations(tmp_path: Path) -> None:
    """bench/ab.py starts each configuration itself and reports the ratio of medians."""
    out = tmp_path / "ab.json"
    stdout = python(
        str(ROOT / "bench" / "ab.py"), "handshakes", "--rounds", "1", "--quick", "--out", str(out)
    )
    report = json.loads(out.read_text())
    assert [run["config"] for run in report["runs"]] == ["A", "B"]
    assert report["a"] == "--gc-threshold 0"
    assert all(run["connections"] == 300 for run in report["runs"])
    assert report["b_over_a"] == report["median_b"] / report["median_a"]
    assert "B/A =" in stdout


def test_memory_breaks_an_idle_connection_down_by_package() -> None:
    stdout = python(str(ROOT / "bench" / "memory.py"), "--connections", "100")
    assert "100 idle joined connections" in stdout
    assert "| aiohttp |" in stdout
    assert "| roomcast |" in stdout


def test_reports_name_the_commit_and_whether_code_had_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A benchmark's report names the commit; "-dirty" when code had uncommitted
    changes anywhere in the checkout, not when only bench/results/ did (benchmarks
    write there)."""
    from roomcast.bench.report import git_commit

    for name in [n for n in os.environ if n.startswith("GIT_")]:
        monkeypatch.delenv(name)  # e.g. GIT_DIR from a hook must not point elsewhere
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "commit.gpgsign=false", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    assert git_commit(tmp_path) == "unknown"  # not a checkout
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "bench" / "results" / "old.json").write_text("{}\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "one")
    head = git("rev-parse", "--short", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "bench" / "results" / "old.json").write_text('{"new": 1}\n')
    assert git_commit(tmp_path / "bench") == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{head}-dirty"
    assert git_commit(tmp_path / "bench") == f"{head}-dirty"  # seen from a subfolder too
