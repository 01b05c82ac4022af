"""Connections to Redis that are cheap to open.

redis-py 7 looks its own version up in the installed packages' metadata every time it
opens a connection (to name itself to Redis), about 0.6 ms of CPU here. A pool opens one
for each caller that finds none free, so a burst of concurrent callers pays it once each:
when every reply still joined a channel-layer group of its own, 200 replies starting
together opened 200, and the lookup was a twentieth of the two-process benchmark's CPU.
Told once who it is, redis-py looks nothing up: every pool of the site (channels' layer
and Django's cache in settings, and the clients here) is given `DRIVER_INFO`.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.driver_info import DriverInfo

DRIVER_INFO = DriverInfo()  # the one lookup


def client(url: str, **options: Any) -> Redis:
    """An asyncio client (its own pool) for `url`."""
    return Redis.from_url(url, driver_info=DRIVER_INFO, **options)
