"""The API's event streams answered in front of Django (`chat.sse_routes`): they skip
Django's request cycle, and every request they do not serve reaches Django, which answers
it as it would have. Through `chatsite.asgi.application`; tests/test_api_replies.py runs
the replies' tests both ways."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from channels.testing import ApplicationCommunicator
from django.core.signals import request_started
from django.test import AsyncClient

from chat.models import Message
from chatsite.asgi import application
from tests.api_client import SSE, EventReader, atoken_headers, url
from tests.asgi_client import ApplicationClient, logged_in_application_client, send_csrf_token
from tests.llm_server import Behaviour, expected_text

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def django_requests() -> Iterator[list[str]]:
    """The paths of the requests that Django's request cycle handles from now on."""
    paths: list[str] = []

    def started(sender: Any, scope: dict[str, Any] | None = None, **kwargs: Any) -> None:
        paths.append(scope["path"] if scope else "?")

    request_started.connect(started)
    yield paths
    request_started.disconnect(started)


async def post(client: Any, path: str, data: Any, **headers: str) -> Any:
    body = data if isinstance(data, str) else json.dumps(data)
    return await client.post(path, body, content_type="application/json", headers=headers)


async def test_event_streams_skip_djangos_request_cycle(llm, user, conversation, django_requests):
    llm.behaviour = Behaviour(tokens=5)
    client = await logged_in_application_client(user)
    django_requests.clear()

    sent = await post(client, url(conversation, "messages"), {"content": "Hi"}, **SSE)
    events = await EventReader(sent).rest()
    followed = await EventReader(await client.get(url(conversation, "events"))).rest()
    regenerated = await post(client, url(conversation, "regenerate"), "", **SSE)
    regenerated_events = await EventReader(regenerated).rest()

    assert django_requests == []
    assert events[-1].event == "done" and events[-1].data["content"] == expected_text(5)
    assert [e.event for e in followed] == ["state"]
    assert regenerated_events[-1].event == "done"
    # The same route without `Accept: text/event-stream` is Django's.
    answered = await post(client, url(conversation, "messages"), {"content": "Again"})
    assert answered.status_code == 201
    assert django_requests == [url(conversation, "messages")]


async def test_event_stream_headers_are_djangos(llm, user, conversation):
    """What Django's middleware and the view would add to an event stream, but the page
    policies (CSP) that concern only HTML."""
    llm.behaviour = Behaviour(tokens=2)
    served = await logged_in_application_client(user)
    by_django = AsyncClient()
    await by_django.aforce_login(user)

    ours = await post(served, url(conversation, "messages"), {"content": "Hi"}, **SSE)
    await EventReader(ours).rest()
    theirs = await post(by_django, url(conversation, "messages"), {"content": "Hi"}, **SSE)
    await EventReader(theirs).rest()

    page_only = {"content-security-policy"}
    expected = {k.lower(): v for k, v in theirs.headers.items() if k.lower() not in page_only}
    assert {k.lower(): v for k, v in ours.headers.items()} == expected


def refused_requests(conversation: Any, other: Any) -> list[tuple[str, str, dict[str, str], Any]]:
    """(method, path, headers, body) of requests for a stream that must be refused."""
    messages = url(conversation, "messages")
    return [
        ("POST", messages, {"Content-Type": "application/json"}, "{"),
        ("POST", messages, {"Content-Type": "application/json"}, {"content": 5}),
        ("POST", messages, {"Content-Type": "application/json"}, {"content": "x" * 10**6}),
        ("POST", messages, {"Content-Type": "application/json"}, [1, 2]),
        ("POST", url(other, "messages"), {"Content-Type": "application/json"}, {"content": "Hi"}),
        ("POST", url(other, "regenerate"), {}, None),
        ("GET", url(conversation, "events"), {"Last-Event-ID": "x"}, None),
        ("GET", url(conversation, "events") + "?after=-1", {}, None),
        ("GET", url(other, "events"), {}, None),
    ]


async def ask(client: Any, method: str, path: str, headers: dict[str, str], body: Any) -> Any:
    """`(status, JSON body)` of the answer to a request for a stream."""
    headers = {**headers, **SSE}
    if method == "POST":
        data = "" if body is None else body if isinstance(body, str) else json.dumps(body)
        content_type = headers.pop("Content-Type", "application/octet-stream")
        response = await client.post(path, data, content_type=content_type, headers=headers)
    else:
        response = await client.get(path, headers=headers)
    return response.status_code, response.json()


@pytest.fixture
def the_other_conversation(other_user: Any, make_conversation: Any) -> Any:
    return make_conversation(other_user)


@pytest.mark.parametrize("index", range(9))
async def test_refusals_are_answered_as_django_answers_them(
    llm, user, conversation, the_other_conversation, index, settings
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000
    method, path, headers, body = refused_requests(conversation, the_other_conversation)[index]
    by_django = AsyncClient(enforce_csrf_checks=True)
    await by_django.aforce_login(user)
    send_csrf_token(by_django)
    answers = []
    for client in (await logged_in_application_client(user), by_django):
        answers.append(await ask(client, method, path, headers, body))

    ours, djangos = answers
    assert ours == djangos
    assert 400 <= ours[0] < 500
    assert not await Message.objects.filter(role="assistant").aexists()


async def test_no_login_and_bad_token_are_djangos_401(llm, conversation, user, django_requests):
    revoked = await atoken_headers(user, revoked=True)
    for headers in ({}, {"Authorization": "Bearer chat_nope"}, revoked):
        response = await post(
            ApplicationClient(), url(conversation, "messages"), {"content": "Hi"}, **SSE, **headers
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    assert len(django_requests) == 3  # each went on to Django


async def test_session_without_csrf_token_is_refused(llm, user, conversation, django_requests):
    client = ApplicationClient()
    await client.aforce_login(user)  # no CSRF token

    response = await post(client, url(conversation, "messages"), {"content": "Hi"}, **SSE)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"
    assert not await Message.objects.filter(conversation=conversation).aexists()


async def test_token_needs_no_csrf_token(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=3)
    headers = await atoken_headers(user)

    messages = url(conversation, "messages")
    response = await post(ApplicationClient(), messages, {"content": "Hi"}, **SSE, **headers)

    assert response.status_code == 200
    assert (await EventReader(response).rest())[-1].data["content"] == expected_text(3)


async def test_disallowed_host_is_djangos_400(llm, user, conversation, django_requests):
    client = await logged_in_application_client(user)

    response = await post(
        client, url(conversation, "messages"), {"content": "Hi"}, **SSE, Host="evil.example"
    )

    assert response.status_code == 400
    assert django_requests == [url(conversation, "messages")]
    assert not await Message.objects.filter(conversation=conversation).aexists()


async def test_body_in_several_parts(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=3)
    headers = {**await atoken_headers(user), **SSE, "Content-Type": "application/json"}
    path = url(conversation, "messages")
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(b"host", b"testserver")]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ["127.0.0.1", 40000],
        "server": ["testserver", 80],
    }
    client = ApplicationCommunicator(application, scope)
    for part, more in ((b'{"cont', True), (b'ent": "H', True), (b'i"}', False)):
        await client.send_input({"type": "http.request", "body": part, "more_body": more})

    start = await client.receive_output(5)
    body = b""
    while True:
        message = await client.receive_output(5)
        body += message["body"]
        if not message.get("more_body"):
            break

    assert start["status"] == 200
    assert b"event: done" in body
    user_message = await Message.objects.aget(conversation=conversation, role="user")
    assert user_message.content == "Hi"
