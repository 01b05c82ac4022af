"""An OpenAI-compatible chat server for tests and benchmarks: deterministic replies, set faults.

In tests::

    with FakeLLM() as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test")

As a process, for a benchmark::

    python -m tests.llm_server --port 8081 --tokens 200 --rate 40
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Literal, Self

from aiohttp import web

Fault = Literal["429", "500", "stall", "cut", "malformed", "error_event"]
FAULTS: tuple[Fault, ...] = ("429", "500", "stall", "cut", "malformed", "error_event")
DEFAULT_MODEL = "test-model"
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


@dataclass
class Behaviour:
    """How the server answers one request; faults happen after `fault_after` tokens."""

    tokens: int = 20
    token_delay: float = 0.0  # seconds between two tokens
    first_token_delay: float = 0.0  # seconds before the first chunk
    fault: Fault | None = None
    fault_after: int = 0
    send_usage: bool = True  # honour stream_options.include_usage
    stall_seconds: float = 30.0
    words: Sequence[str] | None = None  # the reply's tokens, instead of w0, w1, ...
    error_message: str = "The server had an error."  # the 500 fault's message
    # Asked to go on after the reply's own first tokens (the last message is the
    # assistant's, as a continued reply's prompt ends), answer the rest of the reply, as a
    # model does; False: the whole reply anew.
    continues: bool = False

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}, expected one of {FAULTS}")

    def reply_tokens(self) -> list[str]:
        if self.words is not None:
            return list(self.words)
        return [f"w{i} " for i in range(self.tokens)]

    def going_on(self, messages: list[Any]) -> Behaviour:
        """This behaviour for a request with `messages`: with `continues`, the tokens after
        the assistant's text that ends them, when that text is the reply's own start."""
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        said = last.get("content")
        if not self.continues or last.get("role") != "assistant" or not isinstance(said, str):
            return self
        tokens = self.reply_tokens()
        starts = list(itertools.accumulate((len(token) for token in tokens), initial=0))
        if len(said) not in starts or not "".join(tokens).startswith(said):
            return self  # not the reply's own start: the whole reply
        return dataclasses.replace(self, words=tokens[starts.index(len(said)) :])


def expected_text(n: int) -> str:
    """The default reply of `n` tokens."""
    return "".join(f"w{i} " for i in range(n))


def _dumps(payload: object) -> str:
    return json.dumps(payload, separators=(",", ":"))


def _event(payload: object) -> bytes:
    return b"data: " + _dumps(payload).encode() + b"\n\n"


def _error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _count_prompt_tokens(messages: object) -> int:
    if not isinstance(messages, list):
        return 0
    contents = (m.get("content") for m in messages if isinstance(m, dict))
    return sum(len(c.split()) for c in contents if isinstance(c, str))


class ChunkEncoder:
    """The SSE lines of one streamed completion, with the constant parts encoded once."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        # A token chunk is this template with the token's JSON in place of the first null.
        template = self._choice({"content": None}, None)
        before, _, after = template.partition(b'"content":null')
        self._token_prefix, self._token_suffix = before + b'"content":', after

    def _choice(self, delta: dict[str, str | None], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _event({**self.head, "choices": [choice]})

    def role(self) -> bytes:
        return self._choice({"role": "assistant", "content": ""}, None)

    def token(self, text: str) -> bytes:
        return self._token_prefix + json.dumps(text).encode() + self._token_suffix

    def finish(self) -> bytes:
        return self._choice({}, "stop")

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return _event({**self.head, "choices": [], "usage": usage})


class FakeLLM:
    """An OpenAI-compatible HTTP server on its own thread and event loop."""

    def __init__(self, behaviour: Behaviour | None = None, host: str = "127.0.0.1", port: int = 0):
        # Configuration, mutable by tests while the server runs.
        self.behaviour = behaviour or Behaviour()
        self.models: dict[str, Behaviour] = {}
        # Requests whose first message starts with one of these texts (an instruction, as
        # a title request's) get its behaviour, whatever their model.
        self.by_instruction: dict[str, Behaviour] = {}
        self.host, self.port = host, port
        # Instrumentation, written on the server thread and read on the test thread.
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._counts = {"completed_streams": 0, "disconnects": 0, "active_streams": 0}
        self._ids = itertools.count(1)
        # Lifecycle.
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: Exception | None = None
        self._stopping = False

    # Instrumentation

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def completed_streams(self) -> int:
        """Streams sent to the end, [DONE] included."""
        with self._lock:
            return self._counts["completed_streams"]

    @property
    def disconnects(self) -> int:
        """Streams whose client went away before the end."""
        with self._lock:
            return self._counts["disconnects"]

    @property
    def active_streams(self) -> int:
        """Streams open now."""
        with self._lock:
            return self._counts["active_streams"]

    def reset(self) -> None:
        """Forget requests, counters and behaviours, for a server shared between tests."""
        with self._lock:
            self._requests.clear()
            self._counts.update(completed_streams=0, disconnects=0)
        self.behaviour = Behaviour()
        self.models = {}
        self.by_instruction = {}

    def _add(self, counter: str, delta: int) -> None:
        with self._lock:
            self._counts[counter] += delta

    # Lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> None:
        """Serve in a background thread; return once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        self._ready.clear()
        self._startup_error, self._stopping = None, False
        self._thread = threading.Thread(target=self._run, name="fake-llm", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error

    def stop(self) -> None:
        """Close every connection, then end the thread and its loop."""
        if self._thread is None or self._loop is None or self._stop_event is None:
            return
        self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._list_models)
        # handler_cancellation: a client that goes away cancels its handler at once, even
        # mid-stall. No access log: a benchmark sends hundreds of thousands of chunks.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1
        )
        try:
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port, backlog=1024)
            await site.start()
            self.port = runner.addresses[0][1]
        except Exception as exc:
            self._startup_error = exc
            await runner.cleanup()
            return
        finally:
            self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            self._stopping = True
            await runner.cleanup()

    # Handlers

    async def _list_models(self, request: web.Request) -> web.Response:
        """GET /v1/models."""
        names = dict.fromkeys([DEFAULT_MODEL, *self.models])
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "tests"} for n in names]
        return web.json_response({"object": "list", "data": data})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions, streamed or not."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            error = _error_body("Expected a JSON body with messages.", "invalid_request_error")
            return web.json_response(error, status=400)
        with self._lock:
            self._requests.append(body)
        model = str(body.get("model", DEFAULT_MODEL))
        # A copy, so that a test changing the behaviour cannot affect a running reply.
        behaviour = dataclasses.replace(self._behaviour_for(model, body["messages"]))
        behaviour = behaviour.going_on(body["messages"])
        if behaviour.fault == "429":
            error = _error_body("Rate limit reached.", "requests", "rate_limit_exceeded")
            return web.json_response(error, status=429, headers={"retry-after-ms": "10"})
        if behaviour.fault == "500":
            error = _error_body(behaviour.error_message, "server_error")
            return web.json_response(error, status=500, headers={"retry-after-ms": "10"})
        encoder = ChunkEncoder(f"chatcmpl-{next(self._ids)}", int(time.time()), model)
        prompt_tokens = _count_prompt_tokens(body["messages"])
        if body.get("stream"):
            options = body.get("stream_options") or {}
            usage = behaviour.send_usage and bool(options.get("include_usage"))
            return await self._stream(request, behaviour, encoder, prompt_tokens, usage)
        return await self._complete(request, behaviour, encoder, prompt_tokens)

    def _behaviour_for(self, model: str, messages: list[Any]) -> Behaviour:
        first = messages[0].get("content") if messages and isinstance(messages[0], dict) else None
        for instruction, behaviour in self.by_instruction.items():
            if isinstance(first, str) and first.startswith(instruction):
                return behaviour
        return self.models.get(model, self.behaviour)

    async def _complete(
        self, request: web.Request, behaviour: Behaviour, encoder: ChunkEncoder, prompt: int
    ) -> web.StreamResponse:
        """Answer in one JSON document after the whole generation time."""
        tokens = behaviour.reply_tokens()
        await asyncio.sleep(behaviour.first_token_delay + behaviour.token_delay * len(tokens))
        if behaviour.fault == "stall":
            await asyncio.sleep(behaviour.stall_seconds)
        elif behaviour.fault == "cut":
            if request.transport is not None:
                request.transport.abort()
            return web.Response()
        elif behaviour.fault == "malformed":
            return web.Response(text='{"id": "chatcmpl-', content_type="application/json")
        elif behaviour.fault == "error_event":
            return web.json_response(_error_body("Generation failed.", "server_error"), status=500)
        message = {"role": "assistant", "content": "".join(tokens)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(tokens),
            "total_tokens": prompt + len(tokens),
        }
        head = {**encoder.head, "object": "chat.completion"}
        return web.json_response({**head, "choices": [choice], "usage": usage})

    async def _stream(
        self,
        request: web.Request,
        behaviour: Behaviour,
        encoder: ChunkEncoder,
        prompt: int,
        usage: bool,
    ) -> web.StreamResponse:
        """Stream the reply as server-sent events, counting how the stream ends."""
        response = web.StreamResponse(headers=SSE_HEADERS)  # chunked: no content length
        self._add("active_streams", 1)
        try:
            await response.prepare(request)
            await self._send_reply(request, response, behaviour, encoder, prompt, usage)
        except asyncio.CancelledError:
            if not self._stopping:
                self._add("disconnects", 1)
            raise
        except ConnectionError:
            self._add("disconnects", 1)
        finally:
            self._add("active_streams", -1)
        return response

    async def _send_reply(
        self,
        request: web.Request,
        response: web.StreamResponse,
        behaviour: Behaviour,
        encoder: ChunkEncoder,
        prompt: int,
        usage: bool,
    ) -> None:
        """Write the chunks on schedule, counting the stream once it reaches its end."""
        loop = asyncio.get_running_loop()
        tokens = behaviour.reply_tokens()
        fault_at = min(behaviour.fault_after, len(tokens)) if behaviour.fault else -1
        # Deadlines, not fixed sleeps, so that the rate holds under load.
        next_at = loop.time() + behaviour.first_token_delay
        await asyncio.sleep(behaviour.first_token_delay)
        await response.write(encoder.role())
        for i, token in enumerate(tokens):
            if i == fault_at:
                if not await self._fault(request, response, behaviour):
                    return
                next_at = loop.time()
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await response.write(encoder.token(token))
            next_at += behaviour.token_delay
        if fault_at == len(tokens) and not await self._fault(request, response, behaviour):
            return
        await response.write(encoder.finish())
        if usage:
            await response.write(encoder.usage(prompt, len(tokens)))
        # Counted before the last write, so a client that has read [DONE] sees the count.
        self._add("completed_streams", 1)
        try:
            await response.write_eof(b"data: [DONE]\n\n")
        except (ConnectionError, asyncio.CancelledError):
            self._add("completed_streams", -1)
            raise

    async def _fault(
        self, request: web.Request, response: web.StreamResponse, behaviour: Behaviour
    ) -> bool:
        """Misbehave mid-stream; return whether the stream goes on afterwards."""
        if behaviour.fault == "stall":
            await asyncio.sleep(behaviour.stall_seconds)
            return True
        if behaviour.fault == "malformed":
            await response.write(b'data: {"id": "chatcmpl-broken", "choices": [\n\n')
            return True
        if behaviour.fault == "error_event":
            error = {"message": "The model failed mid-stream.", "type": "server_error"}
            await response.write(_event({"error": error}))
            await response.write_eof()
            return False
        if behaviour.fault == "cut" and request.transport is not None:
            # No terminating chunk: the client sees an incomplete chunked body.
            request.transport.abort()
        return False


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted, printing the base URL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per reply")
    parser.add_argument("--rate", type=float, default=0.0, help="tokens per second, 0: no wait")
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="seconds")
    parser.add_argument("--fault", choices=FAULTS, default=None)
    parser.add_argument("--fault-after", type=int, default=0)
    parser.add_argument("--no-usage", action="store_true", help="never send usage chunks")
    args = parser.parse_args(argv)
    behaviour = Behaviour(
        tokens=args.tokens,
        token_delay=1.0 / args.rate if args.rate > 0 else 0.0,
        first_token_delay=args.first_token_delay,
        fault=args.fault,
        fault_after=args.fault_after,
        send_usage=not args.no_usage,
    )

    def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)

    signal.signal(signal.SIGTERM, exit_on_sigterm)
    with FakeLLM(behaviour, host=args.host, port=args.port) as server:
        print(server.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
