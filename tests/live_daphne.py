"""The app served by a real daphne (or uvicorn) in a child process, on this test run's
database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import connections

from tests.llm_server import FakeLLM

SERVER_START_TIMEOUT = 20.0  # seconds
SERVER_STOP_TIMEOUT = 15.0  # daphne gives open sockets up to 10 s to close
DAPHNE = [sys.executable, "-m", "daphne", "--bind", "127.0.0.1"]
LISTENING = re.compile(r"Listening on TCP address [\d.]+:(\d+)")
# uvicorn, for what differs there: its sends wait for the client, and it speaks the ASGI
# lifespan protocol (chat.shutdown), which daphne does not.
UVICORN = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--ws", "websockets-sansio"]
UVICORN_LISTENING = re.compile(r"Uvicorn running on http://[\d.]+:(\d+)")
SERVERS = {"daphne": (DAPHNE, LISTENING), "uvicorn": (UVICORN, UVICORN_LISTENING)}


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"


@contextmanager
def serve(
    llm_server: FakeLLM, *, server: str = "daphne", **environment: str
) -> Iterator[LiveServer]:
    """daphne (or `server`) serving the app on the test database, its model pointed at
    `llm_server`; `environment` adds to or overrides its environment."""
    with tempfile.TemporaryDirectory() as tmp:
        live = start(llm_server, Path(tmp) / "server.log", environment, server=server)
        try:
            yield live
        finally:
            stop(live.process)


def start(
    llm_server: FakeLLM,
    log: Path,
    environment: Mapping[str, str],
    port: int = 0,
    *,
    server: str = "daphne",
) -> LiveServer:
    """daphne (or `server`) started on `port` (0: one the system picks), logging to `log`,
    with `environment` as `serve`'s; the caller stops it. Returns once it listens."""
    command, listening = SERVERS[server]
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [*command, "--port", str(port), "chatsite.asgi:application"],
            cwd=settings.BASE_DIR,
            env={**server_environment(llm_server), **environment},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        return LiveServer(process, wait_for_port(process, log, listening), log)
    except BaseException:
        stop(process)
        raise


def database_url(db: dict[str, Any]) -> str:
    """A DATABASE_URL for the test database this process set up."""
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    if db["ENGINE"] == "django.db.backends.postgresql":
        auth = quote(db["USER"] or "", safe="")
        if db["PASSWORD"]:
            auth += ":" + quote(db["PASSWORD"], safe="")
        port = f":{db['PORT']}" if db["PORT"] else ""
        return f"postgres://{auth}@{db['HOST'] or 'localhost'}{port}/{quote(db['NAME'])}"
    raise NotImplementedError(f"no live server for {db['ENGINE']}")


def server_environment(llm_server: FakeLLM) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
        "DATABASE_URL": database_url(connections["default"].settings_dict),
        "OPENAI_BASE_URL": llm_server.base_url,
        "OPENAI_API_KEY": "test-key",
    }


def wait_for_port(
    server: subprocess.Popen[bytes], log: Path, listening: re.Pattern[str] = LISTENING
) -> int:
    """The port the server chose, read from its log."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline and server.poll() is None:
        if found := listening.search(log.read_text()):
            return int(found.group(1))
        time.sleep(0.05)
    raise RuntimeError(f"the server did not start:\n{log.read_text()}")


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
