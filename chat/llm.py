"""The one seam to the model: the shared AsyncOpenAI client, prompts, streamed text, errors.

The stream is read from the client's raw response (`with_streaming_response`) and each SSE
line parsed with `json.loads`: the SDK's typed chunks cost about ten times the CPU per token
(README, "How it works"), and a relay of thousands of chats is mostly per-token work.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import openai
from django.conf import settings

from chat.text import estimate_prompt_tokens
from chat.turns import FairTurns

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class LLMError(Exception):
    """An upstream failure, with one of our error codes and a detail fit for the user."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


# --- The shared client ------------------------------------------------------------------


class Upstream:
    """The process's way to the model: one shared client, and the turns it hands out when
    the model serves a limited number of requests at once (`CHAT_UPSTREAM_CONCURRENCY`),
    fair between users (`chat.turns`)."""

    def __init__(self) -> None:
        self._client: openai.AsyncOpenAI | None = None
        self._turns: FairTurns | None = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = _build_client()
        return self._client

    def turn(self, user: Hashable) -> contextlib.AbstractAsyncContextManager[Any]:
        """Wait for a free slot (llama.cpp serves one request at a time): waiting here, the
        reply shows as waiting, not as timed out."""
        limit = settings.CHAT_UPSTREAM_CONCURRENCY
        if not limit:
            return contextlib.nullcontext()
        if self._turns is None:
            self._turns = FairTurns(limit)
        return self._turns.turn(user)

    async def aclose(self) -> None:
        """Close the client's connections (tests, shutdown)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _build_client() -> openai.AsyncOpenAI:
    timeout = openai.Timeout(
        settings.CHAT_READ_TIMEOUT,
        connect=settings.CHAT_CONNECT_TIMEOUT,
        pool=settings.CHAT_CONNECT_TIMEOUT,
    )
    return openai.AsyncOpenAI(
        # Local servers (llama.cpp, Ollama, vLLM) need no key, but the SDK insists on one.
        api_key=settings.OPENAI_API_KEY or "unused",
        base_url=settings.OPENAI_BASE_URL or None,
        timeout=timeout,
        # The SDK retries only before a response starts, never in the middle of a stream.
        max_retries=settings.CHAT_MAX_RETRIES,
        # aiohttp reads a stream with about half the CPU of the default transport.
        http_client=openai.DefaultAioHttpClient(timeout=timeout),
    )


# --- Prompts ----------------------------------------------------------------------------


def build_prompt(
    system_prompt: str, history: Iterable[tuple[str, str]], budget: int = 0
) -> list[dict[str, str]]:
    """The messages sent to the model: the system prompt, then the latest turns that fit
    in `budget` tokens (0: all of them). A message is sent whole or not at all, and the
    last one (the question being answered) always."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    turns = [{"role": role, "content": content} for role, content in history]
    if budget:
        left = budget - sum(message_tokens(m) for m in system)
        kept = 0
        for message in reversed(turns):
            left -= message_tokens(message)
            if left < 0 and kept:
                break
            kept += 1
        turns = turns[len(turns) - kept :]
    return system + turns


def message_tokens(message: dict[str, str]) -> int:
    return estimate_prompt_tokens([message["content"]])


# --- A short answer, not streamed ---------------------------------------------------------


async def complete(
    upstream: Upstream,
    model: str,
    messages: list[dict[str, str]],
    *,
    max_tokens: int,
    user: Hashable = None,
) -> str:
    """The whole text of one short completion, asked for at once (a conversation's title,
    `chat.titles`); raise LLMError for any upstream failure."""
    create = upstream.client.chat.completions.create
    try:
        async with upstream.turn(user):
            # The messages in `extra_body`, as for a stream (see `ReplyStream.deltas`).
            completion = await create(
                model=model, messages=[], extra_body={"messages": messages}, max_tokens=max_tokens
            )
    except openai.APIError as exc:
        raise _error_from_sdk(exc) from exc
    except ValueError as exc:  # a body that is not the JSON it says it is
        raise LLMError("upstream_malformed", "The model sent an answer we cannot read.") from exc
    if not completion.choices:
        return ""
    return completion.choices[0].message.content or ""


# --- Streaming --------------------------------------------------------------------------


class ReplyStream:
    """One streamed completion: iterate `deltas()` for text; `usage` is known once it ends.

    With `paced` set, reading from the model's socket pauses after each read until
    `release()`: tokens then wait in the kernel, and the next read takes all of them at
    once, so a reply costs one wake-up per frame instead of one per token.
    """

    def __init__(
        self,
        upstream: Upstream,
        model: str,
        messages: list[dict[str, str]],
        max_tokens: int | None = None,
        user: Hashable = None,
    ) -> None:
        self.upstream = upstream
        self.user = user  # whose turn it is at the model
        self.model = model
        self.max_tokens = max_tokens
        self.messages = messages
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.paced = False
        self._chunks_with_text = 0
        self._upstream: aiohttp.ClientResponse | None = None
        self._held = False

    async def deltas(self) -> AsyncGenerator[str]:
        """Yield the reply's text as it arrives, all that one read brought as one string;
        raise LLMError for any upstream failure.

        One generator, no helper generator inside it: every layer costs each read a hop."""
        extra: dict[str, Any] = {}
        if self.max_tokens:
            extra["max_tokens"] = self.max_tokens
        create = self.upstream.client.chat.completions.with_streaming_response.create
        try:
            # `async with` closes the upstream request however this ends: a stop must stop
            # billing.
            async with (
                self.upstream.turn(self.user),
                create(
                    model=self.model,
                    # The messages ride in `extra_body`, which the SDK sends as they are:
                    # its parameter transform walks each message through the type hints of
                    # every message kind (a quarter of a request's CPU with two messages,
                    # more with each one) and would change nothing in role/content strings.
                    messages=[],
                    stream=True,
                    extra_body={"messages": self.messages},
                    stream_options={"include_usage": True},
                    **extra,
                ) as response,
            ):
                self._upstream = _aiohttp_response(response)
                try:
                    rest = b""
                    async for chunk in response.iter_bytes():
                        lines = (rest + chunk).split(b"\n")
                        rest = lines.pop()  # an unfinished line waits for the next read
                        texts, done, error = self._parse_lines(lines)
                        if texts:
                            yield "".join(texts)  # even when a later line is broken
                        if error is not None:
                            raise error
                        if done:
                            break
                        if self.paced:
                            self._hold()
                finally:
                    self.release()  # never leave a socket paused, however the read ends
        except openai.APIError as exc:
            raise _error_from_sdk(exc) from exc
        except httpx2.TimeoutException as exc:
            raise LLMError("upstream_timeout", "The model stopped sending; timed out.") from exc
        except httpx2.HTTPError as exc:
            raise LLMError(
                "upstream_disconnected", "The connection to the model broke mid-reply."
            ) from exc
        if self.finish_reason is None:
            raise LLMError("upstream_disconnected", "The model's reply ended unfinished.")
        if self.usage is None:
            self.usage = self.estimated_usage()

    @property
    def pausable(self) -> bool:
        """Whether reading can pause: only through the SDK's aiohttp transport."""
        return self._upstream is not None

    @property
    def held(self) -> bool:
        """Whether reading is paused until the next `release()`."""
        return self._held

    def _hold(self) -> None:
        upstream = self._upstream
        # A response that has read its end has handed its connection back to the pool:
        # that socket is not this reply's to pause any more.
        if upstream is None or upstream.connection is None or upstream.content.at_eof():
            return
        transport = upstream.connection.transport
        if transport is not None and transport.is_reading():
            transport.pause_reading()
            self._held = True

    def release(self) -> None:
        """Read again: what the model sent meanwhile arrives in one read."""
        if not self._held:
            return
        self._held = False
        upstream = self._upstream
        connection = upstream.connection if upstream is not None else None
        if connection is not None and connection.transport is not None:
            connection.transport.resume_reading()

    def _parse_lines(self, lines: list[bytes]) -> tuple[list[str], bool, LLMError | None]:
        """The texts of a read's complete SSE lines, whether the stream ended among them
        (`[DONE]`), and the error that ended it, if one did."""
        texts: list[str] = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, `event:` lines
            data = line[5:].strip()
            if data == b"[DONE]":
                return texts, True, None
            try:
                texts += self._parse_chunk(data)
            except LLMError as error:
                return texts, True, error
        return texts, False, None

    def _parse_chunk(self, data: bytes) -> list[str]:
        try:
            chunk: dict[str, Any] = json.loads(data)
        except ValueError as exc:
            raise LLMError("upstream_malformed", "The model sent a chunk we cannot read.") from exc
        if not isinstance(chunk, dict):
            raise LLMError("upstream_malformed", "The model sent a chunk we cannot read.")
        if "error" in chunk:
            logger.warning("the model's stream carried an error: %r", chunk["error"])
            raise LLMError("upstream_error", _error_message(chunk["error"]))
        if usage := chunk.get("usage"):
            self.usage = Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        texts = []
        for choice in chunk.get("choices") or ():
            if text := (choice.get("delta") or {}).get("content"):
                texts.append(text)
            if reason := choice.get("finish_reason"):
                self.finish_reason = reason
        self._chunks_with_text += len(texts)
        return texts

    def estimated_usage(self) -> Usage:
        # Most servers send about one token per chunk; the prompt is estimated from its size.
        prompt = sum(message_tokens(m) for m in self.messages)
        return Usage(prompt, self._chunks_with_text, estimated=True)


def _aiohttp_response(response: object) -> aiohttp.ClientResponse | None:
    """The aiohttp response under the SDK's streamed response, to pause its socket.

    The SDK's aiohttp transport exposes it on no public attribute; if a new SDK version
    moves it, this finds None and replies simply read every token as it comes
    (`tests/test_pacing.py` fails first).
    """
    stream = getattr(getattr(response, "http_response", None), "stream", None)
    stream = getattr(stream, "_stream", stream)  # httpx wraps the transport's stream
    upstream = getattr(stream, "_aiohttp_response", None)
    return upstream if isinstance(upstream, aiohttp.ClientResponse) else None


# --- Errors -----------------------------------------------------------------------------


# The most of an upstream error message a user is shown; the whole body goes to the log.
SHOWN_ERROR_CHARS = 200


def _error_message(error: object) -> str:
    """What helps a user of an upstream error body: its message's first line, trimmed.
    Servers put stack traces, prompts and internal names after it."""
    if isinstance(error, dict):
        # OpenAI says {"message": ...}; FastAPI-based servers say {"detail": ...}.
        error = error.get("message") or error.get("detail") or error
    lines = str(error).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > SHOWN_ERROR_CHARS:
        first = first[: SHOWN_ERROR_CHARS - 1].rstrip() + "\u2026"
    return first or "No reason given."


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _error_from_sdk(exc: openai.APIError) -> LLMError:
    # The aiohttp transport reports a refused or dropped connection as a connect *timeout*.
    if isinstance(exc, openai.APIConnectionError):
        if _caused_by(exc, ConnectionRefusedError):
            return LLMError("upstream_unreachable", "The model's server cannot be reached.")
        if _caused_by(exc, aiohttp.ServerDisconnectedError):
            return LLMError("upstream_disconnected", "The model's server hung up.")
    if isinstance(exc, openai.APITimeoutError):
        return LLMError("upstream_timeout", "The model did not answer in time.")
    if isinstance(exc, openai.APIConnectionError):
        return LLMError("upstream_unreachable", "The model's server cannot be reached.")
    if isinstance(exc, openai.RateLimitError):
        return LLMError("upstream_rate_limited", "The model is busy (rate limited); try again.")
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return LLMError("upstream_auth", "The model's server refused our credentials.")
    if isinstance(exc, openai.APIStatusError):
        logger.warning("the model's server answered %s: %r", exc.status_code, exc.body)
        detail = _error_message(exc.body) if exc.body else exc.message
        status = exc.status_code
        return LLMError("upstream_error", f"The model's server answered {status}: {detail}")
    return LLMError("upstream_error", _error_message(exc.message))
