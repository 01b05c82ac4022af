"""Prometheus metrics of this process at `/metrics`, for an operator's scraper.

What the chat service holds (open sockets, event streams, running replies) is counted when
Prometheus asks, from the services' own state: nothing is counted per event. Replies are
counted once each as they end, by status. The histograms are observed where the time is
known: a reply's first frame and the gaps between its frames (`chat.replies`), and how
late the reply clock wakes from its sleep (`chat.clock`), which is the event loop's lag.

Each process serves its own figures, from memory: Prometheus scrapes every process as a
target of its own (prometheus-client's multiprocess mode is not used). Answered in front
of Django (`chatsite.asgi`), like `/healthz`, and only with CHAT_METRICS_TOKEN set, to a
request that carries it as `Authorization: Bearer <token>`: the figures reveal the load.
"""

from __future__ import annotations

import asyncio
import hmac
import math
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from django.conf import settings
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from chat.health import ASGIApp, Receive, Scope, Send
from chat.watchers import Held

if TYPE_CHECKING:
    from chat.chats import ChatService

PATH = "/metrics"

# The chat services are handed in (chatsite.asgi), not imported: the chat service's replies
# record into this module.
Services = Callable[[], list[tuple[asyncio.AbstractEventLoop, "ChatService"]]]


class Buckets:
    """A histogram for the event loop's hot paths: an observation is a bisect and two
    additions, where prometheus-client's `Histogram.observe` takes a lock per bucket (2-4
    us against 0.3-0.8; frames are observed several times a second per reply). Observed
    from the event loop's thread only; read when Prometheus asks."""

    __slots__ = ("bounds", "counts", "documentation", "name", "total")

    def __init__(self, name: str, documentation: str, bounds: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is above every bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def family(self) -> HistogramMetricFamily:
        buckets, cumulative = [], 0
        for bound, count in zip([*self.bounds, math.inf], self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
        return HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.total
        )


# --- What is recorded as it happens (per process) -----------------------------------------

ENDINGS = ("complete", "stopped", "failed", "interrupted")
REPLIES_ENDED = Counter(
    "chat_replies_ended",
    "Replies that ended on this process, by how (the status of their `done` frame).",
    ["status"],
    registry=None,
)
_ENDED = {status: REPLIES_ENDED.labels(status) for status in ENDINGS}

FIRST_TOKEN = Buckets(
    "chat_first_token_seconds",
    "From a reply being asked for (send, regenerate, edit) to its first delta frame.",
    (0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 5, 10, 30, 60),
)
FRAME_GAPS = Buckets(
    "chat_frame_gap_seconds",
    "Between two delta frames of one reply.",
    (0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1, 2.5, 5, 10, 30),
)
LOOP_LAG = Buckets(
    "chat_event_loop_lag_seconds",
    "How late the reply clock woke from its sleep, every frame interval while replies run.",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def count_ending(status: str) -> None:
    """One reply has ended with `status`."""
    _ENDED[status].inc()


# --- What is counted when Prometheus asks ---------------------------------------------------


class Recorded(Collector):
    """The histograms above."""

    def collect(self) -> Iterator[Metric]:
        for buckets in (FIRST_TOKEN, FRAME_GAPS, LOOP_LAG):
            yield buckets.family()


class LiveState(Collector):
    """Open sockets, event streams and running replies, read from the chat services of
    this process's running event loops."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        sockets = streams = running = 0
        for loop, service in self.services():
            if loop.is_closed():
                continue
            for attachment in _attachments(service):
                # A socket counts once it is let in (counted among its user's); an event
                # stream's watcher is the queue its client reads (chat.sse).
                if getattr(attachment, "user_id", None) is not None:
                    sockets += 1
                elif hasattr(attachment.watcher, "client_left"):
                    streams += 1
            running += sum(reply.task is not None for reply in service.replies.all_running())
        yield GaugeMetricFamily(
            "chat_open_sockets", "Websockets open on this process.", value=sockets
        )
        yield GaugeMetricFamily(
            "chat_event_streams",
            "Server-sent event streams of the API open on this process.",
            value=streams,
        )
        yield GaugeMetricFamily(
            "chat_replies_running", "Replies this process is generating.", value=running
        )


def _attachments(service: ChatService) -> Iterator[Held]:
    for watching in service.watchers._by_conversation.values():
        for attachment in watching:
            if isinstance(attachment, Held):
                yield attachment


def registry(services: Services) -> CollectorRegistry:
    """This process's metrics, with prometheus-client's own of the process (CPU, memory,
    file descriptors), of Python and of its garbage collector."""
    found = CollectorRegistry(auto_describe=True)
    for collector in (
        LiveState(services),
        REPLIES_ENDED,
        Recorded(),
        PROCESS_COLLECTOR,
        PLATFORM_COLLECTOR,
        GC_COLLECTOR,
    ):
        found.register(collector)
    return found


# --- The route ------------------------------------------------------------------------------


class MetricsRoute:
    """Answers GET /metrics to the holder of CHAT_METRICS_TOKEN; hands every other request
    (and every request while no token is set) to `app`."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.registry = registry(services)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or not settings.CHAT_METRICS_TOKEN:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not _authorized(headers.get(b"authorization", b"")):
            await _answer(send, 401, b"unauthorized\n", [(b"www-authenticate", b"Bearer")])
        elif scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
        else:
            encode, content_type = choose_encoder(headers.get(b"accept", b"").decode("latin-1"))
            body = encode(self.registry)
            head = scope["method"] == "HEAD"
            await _answer(send, 200, body, content_type=content_type.encode(), head=head)


def _authorized(authorization: bytes) -> bool:
    scheme, _, token = authorization.partition(b" ")
    expected = settings.CHAT_METRICS_TOKEN.encode()
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), expected)


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    head: bool = False,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"cache-control", b"no-store"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})
