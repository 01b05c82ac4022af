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
