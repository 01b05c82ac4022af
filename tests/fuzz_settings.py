"""Settings for a live server under fuzzing: the test settings, with each log line saying its
level and logger, so that a test can tell an error from a warning in the server's log."""

from __future__ import annotations

from tests.settings import *  # noqa: F403
from tests.settings import LOGGING

LOGGING = {
    **LOGGING,
    "formatters": {"levels": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "levels"}},
}

# The test model runs in the test's process, beside hypothesis, and keeps every request it
# is sent: a long fuzz's garbage collections there paused it for over a second (the suite's
# CHAT_READ_TIMEOUT), failing replies that the server served well. A model's context
# window, as a real one has, keeps those requests small; the longer timeout rides out the
# pauses left. A server that stalls is caught by the gaps in the other user's replies.
CHAT_CONTEXT_TOKENS = 1536
CHAT_READ_TIMEOUT = 5.0
