"""Settings for the test suite: the project's settings with test-only secrets and speedups."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-not-a-secret")
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")

from chatsite.settings import *  # noqa: E402, F403
from chatsite.settings import DATABASES, env_bool  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Threads (the ORM thread of async code) cannot share an in-memory SQLite database; and
# each run gets its own file, so that two runs on one machine do not share one.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    test_db = Path(tempfile.gettempdir()) / f"chat-test-{os.getpid()}.sqlite3"
    DATABASES["default"]["TEST"] = {"NAME": str(test_db)}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_chat_{os.getpid()}"}

# Fail fast in tests: a stalled model is detected in a second, not a minute.
CHAT_READ_TIMEOUT = 1.0
CHAT_CONNECT_TIMEOUT = 1.0
CHAT_MESSAGES_PER_MINUTE = 1000
# Many replies and conversations of one user at once (the load tests); each cap has its
# own test with a small value. A live server's test may set its own
# (tests/test_multiprocess.py, tests/test_limits_across_processes.py, test_page_draft.py).
CHAT_CONVERSATIONS_PER_MINUTE = int(os.environ.get("CHAT_CONVERSATIONS_PER_MINUTE", 1000))
CHAT_REPLIES_RUNNING_PER_USER = int(os.environ.get("CHAT_REPLIES_RUNNING_PER_USER", 1000))
CHAT_SOCKETS_PER_USER = int(os.environ.get("CHAT_SOCKETS_PER_USER", 1000))

# The model's titles come after first replies, as requests and frames of their own: off,
# so that tests count the requests and read the frames of replies alone. The titles' own
# tests turn them on (tests/test_titles.py), a live server's through the variable.
CHAT_GENERATE_TITLES = env_bool("CHAT_GENERATE_TITLES", False)
