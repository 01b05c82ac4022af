"""The page's rendering benchmark (bench/browser_render.py) runs end to end on a short
reply; its timings are never asserted (noisy machines)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.browser


def test_render_bench_short_reply_reports_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "render.json"
    argv = ["--tokens", "400", "--rate", "1000", "--json", str(out)]
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "bench.browser_render", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "| longest main-thread task (ms) |" in done.stdout
    figures = json.loads(out.read_text())["figures"]
    assert figures["tokens"] == 400
    assert figures["code_blocks"] >= 1  # the reply was rendered as Markdown
    assert figures["frames"] >= 2
    assert figures["longest_task_ms"] > 0
    assert figures["script_ms"] > 0
