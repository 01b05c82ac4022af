"""A Redis of the test's own, on a port of its own, keeping nothing on disk: to restart it,
or to give it limits the shared one must not have."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from redis import Redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@contextmanager
def redis_server(
    port: int, *options: str, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Debian's redis-server with `options` added, answering when this returns; its log
    goes to `log` when given."""
    with ExitStack() as files:
        output = files.enter_context(log.open("ab")) if log else subprocess.DEVNULL
        process = subprocess.Popen(  # noqa: S603 - Debian's redis-server, our arguments
            [REDIS_SERVER, "--port", str(port), "--save", "", "--appendonly", "no", *options],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            client = Redis(port=port, socket_connect_timeout=0.2)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except Exception:  # noqa: S112 - not up yet
                    time.sleep(0.05)
            client.close()
            yield process
        finally:
            process.terminate()
            process.wait(5)
