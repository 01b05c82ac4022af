"""The long fuzz: the suite's fuzz tests (tests/test_fuzz_socket.py, tests/test_fuzz_api.py)
with many more examples, random instead of derandomized, on one backend or on both.

    python -m bench.fuzz                                # this environment's backend
    python -m bench.fuzz --both                         # SQLite, then PostgreSQL + Redis
    python -m bench.fuzz --socket-examples 3000 --api-examples 1000

Each websocket example is a batch of 10 to 60 frames; each API example is one request to
one operation, valid or invalid (11 operations, both kinds). Prints one Markdown table of
what each test sent, how long it took and how many of the other user's chats completed
meanwhile; pytest's own output says what failed. bench/fuzz.md has the figures of a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.processes import ROOT

Figures = dict[str, Any]

PG_URL = "postgres://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
SOCKET_TESTS = "tests/test_fuzz_socket.py"
API_TESTS = "tests/test_fuzz_api.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket-examples", type=int, default=3000, help="batches of frames")
    parser.add_argument("--api-examples", type=int, default=1000, help="per operation and kind")
    parser.add_argument("--both", action="store_true", help="SQLite, then PostgreSQL + Redis")
    args = parser.parse_args(argv)
    both: list[dict[str, str] | None] = [{}, {"DATABASE_URL": PG_URL, "REDIS_URL": REDIS_URL}]
    backends = both if args.both else [None]
    failed = False
    rows: list[dict[str, object]] = []
    for backend in backends:
        for tests, examples in [
            (SOCKET_TESTS, args.socket_examples),
            (API_TESTS, args.api_examples),
        ]:
            outcome, figures = run(tests, examples, backend)
            failed |= outcome != 0
            rows += summarize(tests, outcome, figures)
    print_table(rows)
    return 1 if failed else 0


def run(tests: str, examples: int, backend: dict[str, str] | None) -> tuple[int, list[Figures]]:
    """Run one test file with `examples`; its exit status and the figures its tests reported."""
    environment = dict(os.environ, CHAT_FUZZ_EXAMPLES=str(examples))
    if backend is not None:
        for name in ("DATABASE_URL", "REDIS_URL"):
            environment.pop(name, None)
        environment.update(backend)
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as report:
        environment["CHAT_FUZZ_REPORT"] = report.name
        command = [sys.executable, "-m", "pytest", tests, "-q", "-p", "no:cacheprovider"]
        # The suite's per-test timeout is for the suite's size.
        outcome = subprocess.run([*command, "-o", "timeout=0"], cwd=ROOT, env=environment)  # noqa: S603
        lines = Path(report.name).read_text().splitlines()
    return outcome.returncode, [json.loads(line) for line in lines]


def summarize(tests: str, outcome: int, figures: list[Figures]) -> list[dict[str, object]]:
    """One row per test function (the API's operations summed)."""
    by_test: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for figure in figures:
        name = str(figure["test"]).split("[")[0]
        row = by_test[(str(figure["backend"]), name)]
        for key in ("frames", "requests", "seconds", "bystander_chats"):
            row[key] += figure.get(key, 0)
    return [
        {"backend": backend, "test": name, **row, "passed": outcome == 0}
        for (backend, name), row in by_test.items()
    ] or [{"backend": "?", "test": tests, "passed": False}]


def print_table(rows: list[dict[str, object]]) -> None:
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| backend | test | frames | requests | seconds | other user's chats | passed |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cells = [row.get(key, "") for key in ("backend", "test", "frames", "requests")]
        cells += [row.get("seconds", ""), row.get("bystander_chats", ""), row["passed"]]
        print(
            "| "
            + " | ".join(str(int(c)) if isinstance(c, float) else str(c) for c in cells)
            + " |"
        )


if __name__ == "__main__":
    sys.exit(main())
