"""The benchmark runs end to end on a tiny K; its timings are never asserted (noisy machines)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from bench.report import ROWS, SSE_ROWS, TWO_ROWS

ROOT = Path(__file__).resolve().parent.parent


def test_bench_tiny_run_prints_every_row_without_errors(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--k", "3", "--tokens", "10", "--rate", "200", "--idle-sockets", "5", "--sse"]
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "bench.run", *argv, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    for row in ROWS:
        assert f"| {row.label} |" in done.stdout
    result = json.loads(out.read_text())
    ours, reference = result["ours"], result["reference"]
    assert ours["errors"] == 0, ours["error_samples"]
    assert ours["wrong_texts"] == 0
    assert reference["errors"] == 0, reference["error_samples"]
    assert ours["tokens_relayed"] == reference["tokens_relayed"] == 3 * 10
    # The same chats over SSE, from the same server, in a table of their own.
    sse = result["sse"]
    assert sse["errors"] == 0, sse["error_samples"]
    assert sse["wrong_texts"] == 0
    assert sse["tokens_relayed"] == 3 * 10
    assert sse["cpu_per_token_us"] > 0
    assert result["sse_ratios"]["cpu_per_token"] is not None
    for row in SSE_ROWS:
        assert f"| {row.label} |" in result["sse_table"]
    assert result["sse_table"] in done.stdout


def test_bench_two_processes_tiny_run_loses_no_delta(tmp_path):
    """Each reply run on one process and watched from a tab on the other, on a Redis of the
    benchmark's own (or the suite's, in a database of its own, without redis-server)."""
    argv = ["--processes", "2", "--k", "4", "--tokens", "10", "--rate", "200", "--skip-reference"]
    if shutil.which("redis-server") is None:
        if not os.environ.get("REDIS_URL"):
            pytest.skip("neither redis-server nor REDIS_URL")
        # A database of its own on the suite's Redis: the run flushes it first.
        redis_url = urlsplit(os.environ["REDIS_URL"])._replace(path="/13")
        argv += ["--redis-url", urlunsplit(redis_url)]
    out = tmp_path / "two.json"
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "bench.run", *argv, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    for row in TWO_ROWS:
        assert f"| {row.label} |" in done.stdout
    ours = json.loads(out.read_text())["ours"]
    assert ours["errors"] == ours["sender_errors"] == 0, ours["error_samples"]
    assert ours["lost_deltas"] == ours["repeated_deltas"] == 0
    assert ours["wrong_texts"] == 0
    assert ours["tokens_relayed"] == 4 * 10
    # Every frame crossed Redis: published once, heard by both processes.
    assert ours["publishes_per_reply"] >= 1
    assert ours["subscribers_per_channel"] == 2


@pytest.mark.parametrize(
    ("script", "argv", "prints"),
    [
        ("bench.send_cost", ["--n", "6", "--batch", "3"], "6 sends in batches of 3"),
        ("bench.setup_cost", ["--n", "5"], "a socket opens"),
    ],
)
def test_step_cost_scripts_run(script, argv, prints):
    """The in-process measures of single database steps still run against today's code."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", script, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert prints in done.stdout


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")
def test_redis_cost_runs():
    """The measure of a PUBLISH alone (docs/scaling.md) still runs, on its own Redis."""
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "bench.redis_cost", "--frames", "400", "--pipeline", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| 4 |" in done.stdout
