"""The names of this site's keys and channels in Redis, apart from those of another site
(or another test run) that shares the same Redis: each begins with a prefix drawn from the
site's database, which every process of one site shares, so that user ids, process lists
and handed-over replies never mix between sites.
"""

from __future__ import annotations

import hashlib

from django.conf import settings


def site_prefix() -> str:
    database = settings.DATABASES["default"]
    identity = "|".join(
        str(database.get(part) or "") for part in ("ENGINE", "HOST", "PORT", "NAME")
    )
    return "chat:" + hashlib.sha256(identity.encode()).hexdigest()[:12] + ":"


def name(*parts: str) -> str:
    """This site's name for a key or channel made of `parts`."""
    return site_prefix() + ":".join(parts)
