"""Settings for chatsite: every value that differs between machines comes from the environment."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from chat.redis_clients import DRIVER_INFO  # redis-py told who it is (why: there)

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


# --- Core -------------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set DJANGO_SECRET_KEY (or DJANGO_DEBUG=1 for development).")
    SECRET_KEY = "django-insecure-development-only-key"  # noqa: S105

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
# The pages that may open a websocket: `https://chat.example.com` compares scheme, host and
# port; a bare host (the default: the allowed hosts) any scheme and port. A wildcard would
# let any site's page chat as its visitor, with their cookie.
CHAT_WEBSOCKET_ORIGINS = env_list("CHAT_WEBSOCKET_ORIGINS") or list(ALLOWED_HOSTS)
if "*" in CHAT_WEBSOCKET_ORIGINS:
    raise ImproperlyConfigured(
        "Websocket origins cannot be '*': set CHAT_WEBSOCKET_ORIGINS to the origins of your "
        "pages, e.g. https://chat.example.com (DJANGO_ALLOWED_HOSTS has '*')."
    )

INSTALLED_APPS = [
    "daphne",  # first: its runserver replaces Django's, and its checks insist
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Turns a login that axes locked out into its page (chat.login_throttling).
    "axes.middleware.AxesMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent writers from the ORM thread and management commands: WAL, writers take
    # the lock up front, and wait for it rather than failing with "database is locked".
    # One file, no server: keep the connection open rather than reopen it for every step.
    DATABASES["default"]["CONN_MAX_AGE"] = None
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI persistent connections are off; psycopg's pool keeps them instead.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Websockets and async views share one ORM thread; sync views (login, admin) run on a
    # thread of their own per request, each holding a pooled connection while it runs.
    DATABASES["default"]["OPTIONS"] = {
        "pool": {"min_size": 1, "max_size": env_int("CHAT_DB_POOL_SIZE", 10), "timeout": 10}
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer ----------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "driver_info": DRIVER_INFO}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Auth, sessions, security -------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    # First: a locked-out login is refused before the next backend hashes its password.
    "chat.login_throttling.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "login"

# Sessions are read on every request and websocket connect: from the cache, written through
# to the database. Several processes (REDIS_URL) share Redis as the cache, so that a logout
# in one is a logout in all; one process keeps them in its own memory.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
CACHES: dict[str, dict[str, Any]]
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"driver_info": DRIVER_INFO},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            # A session each for this many users; the least recently used go back to the database.
            "OPTIONS": {"MAX_ENTRIES": 10_000},
        }
    }
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = not DEBUG and env_bool("DJANGO_SECURE_COOKIES", True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# The JSON API answers a CSRF refusal in its own error shape.
CSRF_FAILURE_VIEW = "chat.api.csrf_failure"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# django-csp's header on every response whose view sets none: the page's own scripts and
# styles only (no inline script, event handler attribute or eval), no image from elsewhere,
# sockets and fetches to this origin.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# HTTPS is enforced where the operator says it works: by default the TLS proxy in front
# redirects plain HTTP, and HSTS, hard to take back, waits until HTTPS is known to work.
# Behind a proxy, requests count as HTTPS only when it says so in the header it always sets.
_proxy_ssl_header = os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER", "").strip()
if _proxy_ssl_header:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https")
SECURE_SSL_REDIRECT = not DEBUG and env_bool("DJANGO_SECURE_SSL_REDIRECT")
SECURE_HSTS_SECONDS = 0 if DEBUG else env_int("DJANGO_SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD")

# --- Login throttling (django-axes) ------------------------------------------------------

# CHAT_LOGIN_FAILURES failed logins for one username from one address lock that pair out
# for the cool-off; each attempt meanwhile starts it over. By the pair, so that an attacker
# cannot lock a user out everywhere, only from where the attacker is. A success resets it.
CHAT_LOGIN_FAILURES = env_int("CHAT_LOGIN_FAILURES", 5)
CHAT_LOGIN_COOLOFF_MINUTES = env_float("CHAT_LOGIN_COOLOFF_MINUTES", 15.0)
if CHAT_LOGIN_COOLOFF_MINUTES <= 0:
    raise ImproperlyConfigured("CHAT_LOGIN_COOLOFF_MINUTES must be above 0.")
AXES_ENABLED = CHAT_LOGIN_FAILURES > 0
AXES_FAILURE_LIMIT = max(CHAT_LOGIN_FAILURES, 1)
AXES_COOLOFF_TIME = timedelta(minutes=CHAT_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "chat.login_throttling.lockout_response"
# Attempts are kept until their cool-off ends; successful logins are not logged, and
# failures are logged with the username and address only.
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False
# The client's address: the direct peer's; behind a proxy, the right-most address of the
# header it sets or appends to, which is what the proxy saw (a client can only add to the
# left), or with more proxies that append, the one CHAT_CLIENT_IP_PROXY_COUNT further left.
_client_ip_header = os.environ.get("CHAT_CLIENT_IP_HEADER", "").strip()
if _client_ip_header:
    AXES_IPWARE_META_PRECEDENCE_ORDER = (
        "HTTP_" + _client_ip_header.upper().replace("-", "_"),
        "REMOTE_ADDR",
    )
    AXES_IPWARE_PROXY_COUNT = env_int("CHAT_CLIENT_IP_PROXY_COUNT", 0)
    # Count from the right even when a client sent the header itself.
    IPWARE_STRICT = False

# --- Static files, i18n -----------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
    # One line per upstream request is noise at a thousand chats.
    "loggers": {"httpx2": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}

# --- The model endpoint and the chat's limits -------------------------------------------------

OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "")
OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", "")
# Set by `manage.py serve` when it runs the bundled offline model (no endpoint configured).
CHAT_LOCAL_MODEL = env_bool("CHAT_LOCAL_MODEL")
CHAT_MODELS = env_list(
    "CHAT_MODELS",
    "gpt-4o-mini" if (OPENAI_API_KEY or OPENAI_BASE_URL) else "SmolLM2-135M-Instruct",
)

CHAT_CONNECT_TIMEOUT = env_float("CHAT_CONNECT_TIMEOUT", 5.0)
CHAT_READ_TIMEOUT = env_float("CHAT_READ_TIMEOUT", 60.0)
CHAT_MAX_RETRIES = env_int("CHAT_MAX_RETRIES", 2)
# Requests the model may serve at once (0: no limit); the rest wait their turn here.
CHAT_UPSTREAM_CONCURRENCY = env_int("CHAT_UPSTREAM_CONCURRENCY", 0)
# The prompt's budget in (estimated) tokens: older turns are dropped to fit (0: no limit).
CHAT_CONTEXT_TOKENS = env_int("CHAT_CONTEXT_TOKENS", 0)
# The longest reply asked for (`max_tokens`; 0: the server's default).
CHAT_MAX_REPLY_TOKENS = env_int("CHAT_MAX_REPLY_TOKENS", 4096)
# After a conversation's first reply the model writes its title (chat.titles).
CHAT_GENERATE_TITLES = env_bool("CHAT_GENERATE_TITLES", True)

CHAT_MAX_INPUT_CHARS = env_int("CHAT_MAX_INPUT_CHARS", 16_000)
CHAT_MESSAGES_PER_MINUTE = env_int("CHAT_MESSAGES_PER_MINUTE", 20)
CHAT_TOKENS_PER_DAY = env_int("CHAT_TOKENS_PER_DAY", 0)
CHAT_REPLIES_RUNNING_PER_USER = env_int("CHAT_REPLIES_RUNNING_PER_USER", 4)
CHAT_CONVERSATIONS_PER_MINUTE = env_int("CHAT_CONVERSATIONS_PER_MINUTE", 30)
# Over all processes (chat.socket_counts).
CHAT_SOCKETS_PER_USER = env_int("CHAT_SOCKETS_PER_USER", 50)
CHAT_STATE_MESSAGES = env_int("CHAT_STATE_MESSAGES", 100)
# Frames that may wait for a client slow to read (chat.outbox) before its socket is closed
# (4408) or its event stream ended: at 10 delta frames a second, 20 s of a reply.
CHAT_SOCKET_BACKLOG = env_int("CHAT_SOCKET_BACKLOG", 200)

CHAT_FRAME_INTERVAL = env_float("CHAT_FRAME_INTERVAL", 0.1)
CHAT_CHECKPOINT_INTERVAL = env_float("CHAT_CHECKPOINT_INTERVAL", 1.0)
CHAT_STALE_REPLY_SECONDS = env_float("CHAT_STALE_REPLY_SECONDS", 120.0)
# How often the sessions of open sockets are checked again (expired, deleted, password
# changed, user deactivated: their sockets close).
CHAT_SESSION_CHECK_SECONDS = env_float("CHAT_SESSION_CHECK_SECONDS", 5.0)
# Set: GET /metrics answers Prometheus with this as `Authorization: Bearer <token>`
# (chat.metrics); unset, there are no metrics.
CHAT_METRICS_TOKEN = os.environ.get("CHAT_METRICS_TOKEN", "")
