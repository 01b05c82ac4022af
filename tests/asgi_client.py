"""Django's test client, its requests served by `chatsite.asgi.application` as a server
would serve them, instead of straight by Django's handler (which skips the ASGI routing
in front of Django: the websocket router, `chat.sse_routes`).

It sends what the page sends: the session cookie, and the CSRF cookie with its token in
`X-CSRFToken` (Django's test client skips the CSRF check; a server does not). A streaming
answer is read as it comes; closing it (`aclose` on `streaming_content`) is the client
going away.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

from channels.testing import ApplicationCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.middleware.csrf import get_token
from django.test import AsyncClient, RequestFactory

from chatsite.asgi import application

TIMEOUT = 10.0  # seconds an answer may take to begin, and each chunk of it to come


class ApplicationHandler:
    """In place of the test client's handler: the scope it builds goes to the application."""

    async def __call__(self, scope: dict[str, Any]) -> HttpResponseBase:
        body_file = scope.pop("_body_file", None)
        body = body_file.read() if body_file is not None else b""
        query = scope.get("query_string", b"")
        scope = {
            **scope,
            "path": scope["path"],
            "raw_path": scope["path"].encode(),
            "root_path": "",
            "query_string": query.encode() if isinstance(query, str) else query,
            "server": list(scope["server"]),
        }
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "http.request", "body": body})
        start = await communicator.receive_output(TIMEOUT)
        assert start["type"] == "http.response.start", start
        first = await communicator.receive_output(TIMEOUT)
        response: HttpResponseBase
        if first.get("more_body", False):
            response = StreamingHttpResponse(_rest(communicator, first["body"]))
        else:
            response = HttpResponse(first["body"])
            await communicator.wait(TIMEOUT)
        # The test client reads which view answered from it.
        setattr(response, "asgi_request", ASGIRequest(scope, io.BytesIO(body)))  # noqa: B010
        response.status_code = start["status"]
        for name, value in start["headers"]:
            if name.lower() != b"set-cookie":
                response.headers[name.decode("latin-1")] = value.decode("latin-1")
        return response


async def _rest(communicator: ApplicationCommunicator, first: bytes) -> AsyncIterator[bytes]:
    try:
        yield first
        while True:
            message = await communicator.receive_output(TIMEOUT)
            yield message["body"]
            if not message.get("more_body", False):
                break
        await communicator.wait(TIMEOUT)
    finally:
        # Closed early: the client goes away, as a browser's tab that closes.
        if not communicator.future.done():
            await communicator.send_input({"type": "http.disconnect"})
            await communicator.wait(TIMEOUT)


class ApplicationClient(AsyncClient):
    """Django's `AsyncClient`, served by the whole ASGI application."""

    def __init__(self, **defaults: Any) -> None:
        super().__init__(**defaults)
        self.handler = ApplicationHandler()  # type: ignore[assignment]


def send_csrf_token(client: AsyncClient) -> None:
    """Give the client a CSRF cookie, and its token to send with every request, as the
    page does."""
    token = get_token(RequestFactory().get("/"))
    client.cookies[settings.CSRF_COOKIE_NAME] = token
    client.defaults["X-CSRFToken"] = token  # type: ignore[typeddict-unknown-key]  # a header


async def logged_in_application_client(user: User) -> ApplicationClient:
    """An `ApplicationClient` with a session of its own, logged in as `user`."""
    client = ApplicationClient()
    await client.aforce_login(user)
    send_csrf_token(client)
    return client
