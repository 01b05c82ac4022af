"""Helpers for the API's tests: its URLs, personal tokens, and server-sent events read
from a test client's streaming response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from chat.tokens import issue_token, revoke_token

LIST_URL = "/api/conversations/"
MODELS_URL = "/api/models/"
SSE = {"Accept": "text/event-stream"}


def url(conversation: Any, action: str = "") -> str:
    """A conversation's URL, or one of its actions' (`messages`, `events`, ...)."""
    pk = getattr(conversation, "pk", conversation)
    return f"/api/conversations/{pk}/" + (f"{action}/" if action else "")


def token_headers(user: User, *, revoked: bool = False) -> dict[str, str]:
    """`Authorization` for a new personal token of `user`'s."""
    token, secret = issue_token(user, "tests")
    if revoked:
        revoke_token(user, token.pk)
    return {"Authorization": f"Bearer {secret}"}


async def atoken_headers(user: User, *, revoked: bool = False) -> dict[str, str]:
    return await sync_to_async(token_headers)(user, revoked=revoked)


# --- Server-sent events ---------------------------------------------------------------------


@dataclass
class Event:
    event: str
    data: dict[str, Any]
    id: str | None = None


def parse(block: str) -> Event | None:
    """One event; None for a comment (a keep-alive)."""
    fields: dict[str, str] = {}
    for line in block.splitlines():
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        fields[name] = value
    if not fields:
        return None
    return Event(fields["event"], json.loads(fields["data"]), fields.get("id"))


class EventReader:
    """Reads a streaming SSE response event by event, keeping the raw text."""

    def __init__(self, response: Any) -> None:
        self.chunks: AsyncIterator[bytes] = aiter(response.streaming_content)
        self.response = response
        self.raw = ""
        self._buffer = ""
        self.ended = False

    async def next(self) -> Event | None:
        """The next event; None when the stream has ended."""
        while "\n\n" not in self._buffer:
            try:
                chunk = await anext(self.chunks)
            except StopAsyncIteration:
                self.ended = True
                return None
            text = chunk.decode()
            self.raw += text
            self._buffer += text
        block, self._buffer = self._buffer.split("\n\n", 1)
        event = parse(block)
        return event if event is not None else await self.next()

    async def until(self, stop: Callable[[Event], bool]) -> list[Event]:
        """Events up to and including the first that `stop` accepts."""
        events = []
        while (event := await self.next()) is not None:
            events.append(event)
            if stop(event):
                return events
        raise AssertionError(f"the stream ended before the event looked for: {events}")

    async def rest(self) -> list[Event]:
        events = []
        while (event := await self.next()) is not None:
            events.append(event)
        return events

    async def close(self) -> None:
        """Go away mid-stream, as a client that disconnects."""
        await self.chunks.aclose()  # type: ignore[attr-defined]


def is_type(kind: str) -> Callable[[Event], bool]:
    return lambda event: event.event == kind


def deltas_of(events: list[Event]) -> list[Event]:
    return [e for e in events if e.event == "delta"]


def delta_text(events: list[Event], after: int = 0) -> str:
    """The text of the delta events, checking that their ids count on from `after`."""
    deltas = deltas_of(events)
    assert [int(e.id or 0) for e in deltas] == list(range(after + 1, after + 1 + len(deltas)))
    assert all(int(e.id or 0) == e.data["seq"] for e in deltas)
    return "".join(e.data["text"] for e in deltas)
