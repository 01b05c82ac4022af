"""`/metrics` (chat.metrics): Prometheus's view of this process, through
`chatsite.asgi.application` and a real daphne. Counters and histograms belong to the
process and outlive each test, so tests compare a scrape before with one after."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator
from prometheus_client.parser import text_string_to_metric_families

from chat import chats
from chatsite.asgi import application
from tests.api_client import EventReader, url
from tests.asgi_client import logged_in_application_client
from tests.chat_socket import ChatSocket
from tests.live_daphne import serve
from tests.llm_server import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-secret"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def metrics_token(request):
    """The token set for the tests through the application (a live server is given its own
    in its environment: it needs the test settings' module, which an override hides)."""
    if "llm_server" not in request.fixturenames or "llm" in request.fixturenames:
        request.getfixturevalue("settings").CHAT_METRICS_TOKEN = TOKEN


async def scrape(
    authorization: str | None = f"Bearer {TOKEN}",
    method: str = "GET",
    host: bytes = b"10.1.2.3:8000",  # Prometheus asks by address, not in ALLOWED_HOSTS
) -> tuple[int, dict[bytes, bytes], str]:
    headers = [(b"host", host)]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    communicator = HttpCommunicator(application, method, "/metrics", headers=headers)
    response = await communicator.get_response(10)
    await communicator.wait(10)  # the application closes what it opened (a request's body)
    return response["status"], dict(response["headers"]), response["body"].decode()


async def samples() -> Samples:
    status, _, text = await scrape()
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def reply(socket: ChatSocket, stop_after: int | None = None) -> list[dict[str, Any]]:
    """Send a message; its frames up to `done` (sending `stop` after delta `stop_after`)."""
    await socket.send(type="send", content="Hi", client_msg_id=str(uuid.uuid4()))
    frames = []
    if stop_after is not None:
        frames = await until_delta(socket, stop_after)
        await socket.send(type="stop")
    return frames + await socket.receive_until("done")


async def until_delta(socket: ChatSocket, seq: int) -> list[dict[str, Any]]:
    frames = []
    while True:
        frames.append(await socket.receive())
        if frames[-1]["type"] == "delta" and frames[-1]["seq"] >= seq:
            return frames


def frames_sent(frames: list[dict[str, Any]]) -> int:
    return max((f["seq"] for f in frames if f["type"] == "delta"), default=0)


# --- Access ---------------------------------------------------------------------------------


async def test_metrics_off_without_a_token(settings):
    """No token set: no metrics; the path is Django's, which knows no such page."""
    settings.CHAT_METRICS_TOKEN = ""
    status, _, text = await scrape(host=b"testserver")
    assert status == 404
    assert "chat_open_sockets" not in text


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"]
)
async def test_metrics_refused_without_the_token(authorization):
    status, headers, text = await scrape(authorization)
    assert status == 401
    assert headers[b"www-authenticate"] == b"Bearer"
    assert "chat_" not in text


async def test_metrics_served_to_the_token():
    status, headers, text = await scrape()
    assert status == 200
    assert headers[b"content-type"].startswith(b"text/plain; version=")
    for name in (
        "chat_open_sockets",
        "chat_event_streams",
        "chat_replies_running",
        'chat_replies_ended_total{status="complete"}',
        'chat_replies_ended_total{status="interrupted"}',
        "chat_first_token_seconds_bucket",
        "chat_frame_gap_seconds_count",
        "chat_event_loop_lag_seconds_sum",
        "process_cpu_seconds_total",
    ):
        assert f"\n{name}" in text
    assert (await scrape(method="POST"))[0] == 405
    assert (await scrape(method="HEAD"))[:3:2] == (200, "")


async def test_each_process_serves_its_own(llm_server):
    """A real daphne, its token from the environment: its own counts, from zero."""
    with serve(llm_server, CHAT_METRICS_TOKEN="live-token") as server:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/metrics") as refused:
                assert refused.status == 401
            bearer = {"Authorization": "Bearer live-token"}
            async with http.get(server.url + "/metrics", headers=bearer) as served:
                text = await served.text()
    assert served.status == 200
    assert '\nchat_replies_ended_total{status="complete"} 0.0\n' in text
    assert "\nchat_open_sockets 0.0\n" in text
    assert "\nprocess_resident_memory_bytes " in text


# --- Replies ----------------------------------------------------------------------------------


async def test_replies_counted_by_how_they_ended(llm, user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    before = await samples()

    llm.behaviour = Behaviour(tokens=12, token_delay=0.03)
    complete = await reply(socket)
    llm.behaviour = Behaviour(tokens=200, token_delay=0.03)
    stopped = await reply(socket, stop_after=2)
    llm.behaviour = Behaviour(tokens=12, token_delay=0.03, fault="error_event", fault_after=6)
    failed = await reply(socket)

    after = await samples()
    assert [complete[-1]["status"], stopped[-1]["status"], failed[-1]["status"]] == [
        "complete",
        "stopped",
        "failed",
    ]
    ended = {s: grew(before, after, "chat_replies_ended_total", status=s) for s in ENDINGS}
    assert ended == {"complete": 1, "stopped": 1, "failed": 1, "interrupted": 0}
    # Each reply's first frame, then a gap before each of its others.
    assert grew(before, after, "chat_first_token_seconds_count") == 3
    frames = [frames_sent(f) for f in (complete, stopped, failed)]
    assert all(n >= 2 for n in frames)
    assert grew(before, after, "chat_frame_gap_seconds_count") == sum(n - 1 for n in frames)
    # 12 tokens at 30 ms: no reply waits a second for its first, no gap reaches a second.
    assert grew(before, after, "chat_first_token_seconds_bucket", le="1.0") == 3
    assert grew(before, after, "chat_frame_gap_seconds_sum") < sum(frames) * 1.0


ENDINGS = ("complete", "stopped", "failed", "interrupted")


async def test_interrupted_replies_counted(llm, user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    llm.behaviour = Behaviour(tokens=200, token_delay=0.03)
    before = await samples()
    await socket.send(type="send", content="Hi", client_msg_id=str(uuid.uuid4()))
    await until_delta(socket, 1)

    await chats.service().interrupt_all()  # the server stops

    assert (await socket.receive_until("done"))[-1]["status"] == "interrupted"
    after = await samples()
    assert grew(before, after, "chat_replies_ended_total", status="interrupted") == 1
    assert grew(before, after, "chat_replies_ended_total", status="stopped") == 0


async def test_a_stalled_model_shows_as_a_long_gap(llm, user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    llm.behaviour = Behaviour(
        tokens=8, token_delay=0.02, fault="stall", fault_after=4, stall_seconds=0.6
    )
    before = await samples()

    assert (await reply(socket))[-1]["status"] == "complete"

    after = await samples()
    over_half_a_second = grew(before, after, "chat_frame_gap_seconds_count") - grew(
        before, after, "chat_frame_gap_seconds_bucket", le="0.5"
    )
    assert over_half_a_second == 1
    assert grew(before, after, "chat_frame_gap_seconds_sum") >= 0.6


async def test_a_blocked_event_loop_shows_as_lag(llm, user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    llm.behaviour = Behaviour(tokens=60, token_delay=0.02)
    before = await samples()
    await socket.send(type="send", content="Hi", client_msg_id=str(uuid.uuid4()))
    await until_delta(socket, 1)

    # Something holds the loop for 0.4 s, as a synchronous call would.
    asyncio.get_running_loop().call_soon(time.sleep, 0.4)
    await socket.receive_until("done")

    after = await samples()
    ticks = grew(before, after, "chat_event_loop_lag_seconds_count")
    assert ticks >= 5  # about one per frame interval while the reply ran
    late = ticks - grew(before, after, "chat_event_loop_lag_seconds_bucket", le="0.25")
    assert late == 1
    assert grew(before, after, "chat_event_loop_lag_seconds_sum") >= 0.25


# --- What is open now ---------------------------------------------------------------------------


async def test_gauges_count_what_is_open(llm, user, conversation, make_conversation, open_socket):
    llm.behaviour = Behaviour(tokens=200, token_delay=0.03)
    now = await samples()
    assert value(now, "chat_open_sockets") == value(now, "chat_replies_running") == 0

    first = await open_socket(user, conversation.id)
    await open_socket(user, conversation.id)
    elsewhere = await open_socket(user, (await sync_to_async(make_conversation)(user)).id)
    now = await samples()
    assert value(now, "chat_open_sockets") == 3
    assert value(now, "chat_event_streams") == value(now, "chat_replies_running") == 0

    await first.send(type="send", content="Hi", client_msg_id=str(uuid.uuid4()))
    await until_delta(first, 1)
    client = await logged_in_application_client(user)
    following = EventReader(await client.get(url(conversation, "events")))
    state = await following.next()
    assert state is not None and state.event == "state"
    now = await samples()
    assert value(now, "chat_replies_running") == 1
    assert value(now, "chat_event_streams") == 1
    assert value(now, "chat_open_sockets") == 3

    await following.close()
    await elsewhere.close()
    await first.send(type="stop")
    await first.receive_until("done")
    now = await samples()
    assert value(now, "chat_replies_running") == 0
    assert value(now, "chat_event_streams") == 0
    assert value(now, "chat_open_sockets") == 2
