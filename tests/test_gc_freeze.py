"""The objects loaded at start-up are out of the garbage collector's reach (README, "How it
stays fast"): a full collection under load then walks only what the chats allocate."""

from __future__ import annotations

import gc

import chatsite.asgi  # noqa: F401  (builds the application, then freezes)


def test_start_up_objects_are_frozen():
    # Django and the app alone are far more than this many objects.
    assert gc.get_freeze_count() > 50_000
