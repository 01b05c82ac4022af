"""ASGI entry point: HTTP (and static files) to Django, websockets to the chat consumer."""

from __future__ import annotations

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

# Set up Django before importing anything that touches models (what get_asgi_application
# does; the handler is ours, below).
django.setup(set_prefix=False)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from chat.chats import services  # noqa: E402
from chat.handlers import SharedOrmThreadASGIHandler  # noqa: E402
from chat.health import HealthCheck  # noqa: E402
from chat.metrics import MetricsRoute  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from chat.shutdown import Lifespan, save_replies_on_daphne_shutdown  # noqa: E402
from chat.sse_routes import EventStreamRoutes  # noqa: E402

application = ProtocolTypeRouter(
    {
        # daphne serves the static files itself, in development and production alike, so that
        # `make run` and a bare `daphne chatsite.asgi:application` need nothing in front. The
        # metrics (chat.metrics), the health check (chat.health) and the API's event streams
        # (chat.sse_routes) are answered before Django's request cycle.
        "http": MetricsRoute(
            HealthCheck(EventStreamRoutes(ASGIStaticFilesHandler(SharedOrmThreadASGIHandler()))),
            services,
        ),
        # The consumer reads the session cookie itself (chat.consumers.session_cookie).
        "websocket": OriginValidator(
            URLRouter(websocket_urlpatterns), settings.CHAT_WEBSOCKET_ORIGINS
        ),
        # Start and stop, from servers that say them (uvicorn; daphne: chat.shutdown).
        "lifespan": Lifespan(),
    }
)

save_replies_on_daphne_shutdown()

# Everything loaded by now (Django, the app, their modules) lives as long as the process:
# move it out of the garbage collector's reach, so that a full collection under load walks
# only what the chats allocate. Without this, one landing among 200 streaming replies held
# the event loop long enough to double the longest gap between frames (README, "How it
# stays fast").
gc.freeze()
