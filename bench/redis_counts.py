"""A Redis of the benchmark's own, and what it has done: commands by name and its CPU.

The benchmark reads `INFO commandstats` and `INFO cpu` around each phase; on a server of
its own (`redis-server` on a free port, keeping nothing on disk) nothing else counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from bench.processes import HOST, Child, free_port


def own_redis(folder: Path) -> tuple[Child, str]:
    """A Redis server of the benchmark's own, on a free port, keeping nothing on disk."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("no redis-server on PATH: install it, or pass --redis-url")
    port = free_port()
    argv = [executable, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(folder)]
    return Child("redis", argv, {}, folder), f"redis://{HOST}:{port}/0"


@dataclass
class RedisCount:
    """What Redis says it has done so far: commands by name, and its CPU."""

    commands: dict[str, int]
    cpu_s: float

    def minus(self, before: RedisCount) -> RedisCount:
        names = self.commands.keys() | before.commands.keys()
        commands = {n: self.commands.get(n, 0) - before.commands.get(n, 0) for n in names}
        return RedisCount({n: c for n, c in commands.items() if c}, self.cpu_s - before.cpu_s)

    @property
    def total(self) -> int:
        return sum(self.commands.values())


async def redis_count(redis: Redis) -> RedisCount:
    """Commands by name (`INFO commandstats`) and the server's CPU as it says of itself
    (`INFO cpu`: its getrusage, all its threads, finer than /proc's clock ticks). The INFO
    commands that ask count too: two per reading."""
    stats = await redis.info("commandstats")
    commands = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    cpu = await redis.info("cpu")
    return RedisCount(commands, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))


def per_item(count: RedisCount, n: int) -> dict[str, float]:
    return {name: round(calls / n, 3) for name, calls in sorted(count.commands.items())}


@contextlib.contextmanager
def redis_server(url: str | None, folder: Path) -> Iterator[str]:
    """A Redis for the run: the benchmark's own, or `url`'s database flushed first (its
    command counts and CPU are then the whole server's, other clients' too)."""
    if url is not None:
        asyncio.run(_flush(url))
        yield url
        return
    server, own_url = own_redis(folder)
    with server:
        server.wait_for_port(int(own_url.rsplit(":", 1)[1].split("/")[0]))
        yield own_url


async def _flush(url: str) -> None:
    redis = Redis.from_url(url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
