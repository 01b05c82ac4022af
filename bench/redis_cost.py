"""What one PUBLISH costs Redis's one thread, by the number of processes subscribed.

    .venv/bin/python -m bench.redis_cost [--frames 50000] [--payload 120]

Starts a `redis-server` of its own on a free port, subscribes 0, 1, 2 and 4 connections
(as that many processes watching a conversation would) to 200 channels, publishes
`--frames` frames of `--payload` bytes spread over those channels in pipelines of
`--pipeline` (as `chat.fanout` sends the frames of a turn of its loop: many under load,
few when idle), reads every delivery, and prints the server's CPU (`INFO cpu`) per
PUBLISH.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from redis.asyncio import Redis

from bench.redis_counts import own_redis

CHANNELS = 200


async def redis_cpu(redis: Redis) -> float:
    cpu = await redis.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def drain(redis: Redis, expected: int, ready: asyncio.Event) -> None:
    """One subscribing process: every channel (`ready` once all are confirmed), every
    message read."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(*(f"chat:frames:{i}" for i in range(CHANNELS)))
    confirmed = heard = 0
    while heard < expected:
        message = await pubsub.get_message(timeout=5.0)
        if message is None:
            raise RuntimeError(f"heard {heard} of {expected}")
        heard += message["type"] == "message"
        confirmed += message["type"] == "subscribe"
        if confirmed == CHANNELS:
            ready.set()
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def publish_cost(
    url: str, subscribers: int, frames: int, payload: bytes, pipeline: int
) -> float:
    """Redis's CPU per PUBLISH (us) with `subscribers` connections hearing every channel."""
    publisher = Redis.from_url(url)
    listeners = [Redis.from_url(url) for _ in range(subscribers)]
    ready = [asyncio.Event() for _ in listeners]
    draining = [
        asyncio.create_task(drain(listener, frames, event))
        for listener, event in zip(listeners, ready, strict=True)
    ]
    await asyncio.gather(*(event.wait() for event in ready))
    before = await redis_cpu(publisher)
    for start in range(0, frames, pipeline):
        async with publisher.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + pipeline, frames)):
                pipe.publish(f"chat:frames:{i % CHANNELS}", payload)
            await pipe.execute()
    await asyncio.gather(*draining)
    cpu = await redis_cpu(publisher) - before
    for client in (publisher, *listeners):
        await client.aclose()
    return cpu * 1e6 / frames


async def measure(url: str, frames: int, payload: bytes, pipeline: int) -> None:
    print(f"pipelines of {pipeline} PUBLISH")
    print("| subscribers | Redis CPU per PUBLISH (us) |")
    print("| ---: | ---: |")
    for subscribers in (0, 1, 2, 4):
        cost = await publish_cost(url, subscribers, frames, payload, pipeline)
        print(f"| {subscribers} | {cost:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--payload", type=int, default=120, help="bytes per frame (120)")
    parser.add_argument("--pipeline", type=int, default=100, help="PUBLISH per pipeline (100)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chat-redis-") as folder:
        server, url = own_redis(Path(folder))
        with server:
            server.wait_for_port(int(url.rsplit(":", 1)[1].split("/")[0]))
            asyncio.run(measure(url, args.frames, b"x" * args.payload, args.pipeline))


if __name__ == "__main__":
    main()
