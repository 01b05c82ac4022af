"""Which pages may open a websocket: a list of its own, never `*`, scheme and port compared.

Each case runs in a fresh interpreter, since the ASGI application reads its origins once,
when it is built."""

from __future__ import annotations

import os
import subprocess
import sys

from django.conf import settings

# Opens a socket through `chatsite.asgi.application` from each origin given; prints
# "accepted" (the handshake went through; with no cookie the consumer then closes 4401)
# or "refused" (closed at the handshake) per origin.
PROBE = """
import asyncio, sys
from channels.testing import WebsocketCommunicator
from chatsite.asgi import application

async def probe(origin):
    path = "/ws/conversations/00000000-0000-0000-0000-000000000000/"
    communicator = WebsocketCommunicator(application, path, headers=[(b"origin", origin.encode())])
    connected, _ = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return "accepted" if connected else "refused"

async def main():
    for origin in sys.argv[1:]:
        print(await probe(origin))

asyncio.run(main())
"""


def run(code: str, *args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_SECRET_KEY": "origins-test-" + "x" * 40,
        "DJANGO_DEBUG": "",
        **environment,
    }
    return subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code, *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_origins_compare_scheme_and_port():
    origins = [
        "https://chat.example.com",
        "http://chat.example.com",
        "https://chat.example.com:8443",
        "https://evil.example.net",
        "https://chat.example.com:443",
    ]
    result = run(
        PROBE,
        *origins,
        DJANGO_ALLOWED_HOSTS="chat.example.com",
        CHAT_WEBSOCKET_ORIGINS="https://chat.example.com",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["accepted", "refused", "refused", "refused", "accepted"]


def test_origins_default_to_the_allowed_hosts():
    result = run(
        PROBE,
        "http://chat.example.com:8000",
        "https://other.example.com",
        DJANGO_ALLOWED_HOSTS="chat.example.com",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["accepted", "refused"]


def test_a_wildcard_origin_is_refused_at_start():
    for environment in (
        {"DJANGO_ALLOWED_HOSTS": "*"},
        {"DJANGO_ALLOWED_HOSTS": "chat.example.com", "CHAT_WEBSOCKET_ORIGINS": "*"},
    ):
        result = run("import chatsite.asgi", **environment)
        assert result.returncode != 0
        assert "CHAT_WEBSOCKET_ORIGINS" in result.stderr
