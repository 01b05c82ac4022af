"""A client that stops reading holds up no one else, on a real server.

daphne never makes a send wait (it buffers, and its pings drop a client that stops
answering); uvicorn makes a send wait while the client does not read. On both, a tab that
reads sees the whole reply while another tab of the same conversation reads nothing; on
uvicorn the silent socket falls CHAT_SOCKET_BACKLOG frames behind and is closed with 4408
(`chat.outbox`), and an event stream that stops being read ends with `too_slow`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

import aiohttp
import pytest

from chat.frame_limits import FRAME_BYTES
from chat.models import Message
from tests import live_daphne
from tests.api_client import atoken_headers
from tests.api_client import url as api_url
from tests.live_tabs import next_frame, send_frame, until
from tests.llm_server import Behaviour, FakeLLM
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

CLOSE_TOO_SLOW = 4408
BACKLOG = 5
TOKENS = 1500
# The silent client's receive buffer: small, so that the server's buffers fill behind it,
# yet wide enough that reading what was left afterwards takes a moment, not minutes.
RECEIVE_WINDOW = 65536
# uvicorn: enough text to fill the kernel's buffers (up to 4 MiB here) and the server's own.
# daphne refuses a websocket message over 1 MiB (the `done` frame holds the whole reply).
WORDS = {"uvicorn": "x" * 4000 + " ", "daphne": "x" * 500 + " "}


@contextmanager
def serve(kind: str, llm_server: FakeLLM) -> Iterator[int]:
    """The app on daphne or uvicorn; its port."""
    environment = {"CHAT_SOCKET_BACKLOG": str(BACKLOG), "CHAT_MAX_REPLY_TOKENS": str(TOKENS)}
    with live_daphne.serve(llm_server, server=kind, **environment) as live:
        yield live.port


@asynccontextmanager
async def silent_client(port: int, request: str) -> AsyncIterator[socket.socket]:
    """A client that sends `request`, reads the response's headers and then nothing,
    through a small receive window, as a phone on a dead network."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_WINDOW)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, request.encode())
        headers = b""
        while b"\r\n\r\n" not in headers:
            headers += await loop.sock_recv(sock, 1)  # not a byte past the headers
        assert headers.split(b" ")[1] in (b"101", b"200"), headers
        yield sock
    finally:
        sock.close()


def upgrade(port: int, path: str, cookie: str) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://localhost:{port}\r\nCookie: {cookie}\r\n\r\n"
    )


class Reader:
    """Reads what a silent client left unread, once it reads again."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, bytearray()

    async def take(self, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        while len(self.buffer) < n:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise EOFError
            self.buffer.extend(chunk)
        taken = bytes(self.buffer[:n])
        del self.buffer[:n]
        return taken

    async def websocket_frame(self) -> tuple[int, bytes]:
        """The next frame from the server (never masked): its opcode and payload."""
        header = await self.take(2)
        opcode, length = header[0] & 0x0F, header[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.take(8))
        return opcode, await self.take(length)

    async def to_the_end(self) -> bytes:
        """Everything up to the connection's end."""
        with suppress(EOFError):
            while True:
                await self.take(len(self.buffer) + 1)
        return bytes(self.buffer)


async def last_websocket_frame(sock: socket.socket) -> tuple[int, bytes]:
    """The close frame, or the frame with the reply's `done` if none comes first."""
    reader = Reader(sock)
    while True:
        opcode, payload = await reader.websocket_frame()
        if opcode == 0x8 or b'"type": "done"' in payload:
            return opcode, payload


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_a_client_that_stops_reading_holds_up_no_other_tab(
    server, llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(words=[WORDS[server]] * TOKENS, token_delay=0.001)
    cookie = await login_cookie(user)
    path = f"/ws/conversations/{conversation.id}/"
    with serve(server, llm_server) as port:
        url, origin = f"ws://localhost:{port}{path}", f"http://localhost:{port}"
        async with (
            silent_client(port, upgrade(port, path, cookie)) as silent,
            aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
            http.ws_connect(url, origin=origin, max_msg_size=0) as tab,
        ):
            assert (await next_frame(tab))["type"] == "state"
            await tab.send_json(send_frame("Long"))
            # Never held up by the tab that reads nothing.
            done = await asyncio.wait_for(until(tab, "done"), 60)
            assert done["status"] == "complete"

            opcode, payload = await asyncio.wait_for(last_websocket_frame(silent), 30)
            if server == "uvicorn":
                # Its server held its sends: it fell behind, and was closed.
                assert opcode == 0x8
                assert struct.unpack("!H", payload[:2])[0] == CLOSE_TOO_SLOW
            else:
                # daphne buffered every frame for it, to the last.
                assert opcode == 0x1

            # Opened again, it catches up from its `state`.
            async with http.ws_connect(url, origin=origin, max_msg_size=0) as again:
                state = await next_frame(again)
    reply = await Message.objects.aget(id=done["message_id"])
    assert reply.content == WORDS[server] * TOKENS
    if server == "daphne":
        assert state["messages"][-1]["content"] == reply.content
    else:
        # Six megabytes of reply: more than a `state` holds (`chat.frame_limits`), so it is
        # left out, and the frame still comes, within the limit.
        assert len(json.dumps(reply.content)) > FRAME_BYTES
        assert state["type"] == "state"
        assert str(reply.id) not in {message["id"] for message in state["messages"]}


async def test_an_event_stream_that_stops_being_read_ends_too_slow(llm_server, user, conversation):
    """On uvicorn, whose sends wait for the client: an SSE reply that nobody reads."""
    llm_server.reset()
    llm_server.behaviour = Behaviour(words=[WORDS["uvicorn"]] * TOKENS, token_delay=0.001)
    authorization = (await atoken_headers(user))["Authorization"]
    body = json.dumps({"content": "Long"})
    with serve("uvicorn", llm_server) as port:
        request = (
            f"POST {api_url(conversation, 'messages')} HTTP/1.1\r\nHost: localhost:{port}\r\n"
            f"Authorization: {authorization}\r\nAccept: text/event-stream\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        )
        async with silent_client(port, request) as silent:
            async with asyncio.timeout(60):
                await wait_until(
                    lambda: Message.objects.filter(
                        conversation=conversation, role="assistant", status="complete"
                    ).aexists(),
                    interval=0.1,
                )
            rest = await asyncio.wait_for(Reader(silent).to_the_end(), 30)
    assert b"event: error" in rest
    assert b'"code": "too_slow"' in rest
    assert b"event: done" not in rest  # what waited was dropped for the error
