"""Where a process's time went: the top functions of a py-spy profile in raw (collapsed) form.

    python -m bench.hotspots bench/results/profile/ours-k200.txt [--top 25]

Prints the share of samples per thread (profiles taken with `--threads`), per package (by
the sampled frame), per function where the time was spent (self), and per function the time
was spent under (inclusive). Samples are of running threads: time a thread waits for the
GIL counts, time it sleeps does not.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
THREAD = re.compile(r"^thread \(\d+\): (?P<name>.*)$")


def parse(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """(frames outermost first, as `function (file)`, samples) per distinct stack."""
    stacks = []
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            match = FRAME.match(raw)
            frames.append(f"{match['function']} ({match['file']})" if match else raw)
        stacks.append((frames, int(count)))
    return stacks


def package(frame: str) -> str:
    """`chat`, `django`, `asyncio`... from a frame's file path."""
    match = FRAME.match(frame)
    path = match["file"] if match else frame
    return path.split("/", 1)[0] if "/" in path else path


def thread(frames: list[str]) -> str:
    """The thread's name; per-request executors (a thread each) are taken together."""
    match = THREAD.match(frames[0])
    if match is None:
        return "(not recorded)"
    if re.fullmatch(r"ThreadPoolExecutor-[1-9]\d*_\d+", match["name"]):
        return "ThreadPoolExecutor-N_0, N > 0 (threads of one request each)"
    return match["name"]


def summarize(
    stacks: list[tuple[list[str], int]],
) -> tuple[int, Counter[str], Counter[str], Counter[str], Counter[str]]:
    total = sum(count for _, count in stacks)
    threads: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    for frames, count in stacks:
        threads[thread(frames)] += count
        packages[package(frames[-1])] += count
        own[frames[-1]] += count
        for frame in set(frames):
            under[frame] += count
    return total, threads, packages, own, under


def show(title: str, counts: Counter[str], total: int, top: int) -> None:
    print(f"\n{title}")
    for name, count in counts.most_common(top):
        print(f"{100 * count / total:5.1f}%  {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    total, threads, packages, own, under = summarize(parse(args.profile.read_text().splitlines()))
    if not total:
        raise SystemExit(f"{args.profile}: no samples")
    print(f"{total} samples")
    show("by thread", threads, total, args.top)
    show("by package (self)", packages, total, args.top)
    show("by function (self)", own, total, args.top)
    show("by function (inclusive)", under, total, args.top * 2)


if __name__ == "__main__":
    main()
