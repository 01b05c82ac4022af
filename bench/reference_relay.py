"""The reference: a websocket relay written the way most apps are, to measure ours against.

    OPENAI_BASE_URL=http://127.0.0.1:8081/v1 daphne bench.reference_relay:application

On `{"type": "send", "content": ...}` it awaits the SDK's typed chunks (the default client,
`async for chunk in stream`) and sends one `delta` frame per token, then `done`, inside the
receive loop. No login, no database: everything it skips only flatters it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import openai

MODEL = os.environ.get("BENCH_MODEL", "test-model")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

client = openai.AsyncOpenAI(api_key=os.environ.get("OPENAI_API_KEY") or "unused")


async def relay(send: Send, content: str) -> None:
    """Stream one reply to the socket, a frame per chunk with text."""
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], stream=True
    )
    seq, parts = 0, []
    async with stream:
        async for chunk in stream:
            if chunk.choices and (text := chunk.choices[0].delta.content):
                seq += 1
                parts.append(text)
                frame = {"type": "delta", "seq": seq, "text": text}
                await send({"type": "websocket.send", "text": json.dumps(frame)})
    done = {"type": "done", "status": "complete", "content": "".join(parts)}
    await send({"type": "websocket.send", "text": json.dumps(done)})


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": b"websockets only\n"})
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        frame = json.loads(message.get("text") or "{}")
        if frame.get("type") == "send":
            await relay(send, str(frame.get("content", "")))
