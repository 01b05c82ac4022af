"""Login throttling (django-axes, `chat.login_throttling`): failed logins for one username
from one address lock that pair out for a while, with a page that says how long; a
locked-out attempt hashes no password, even the right one."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from axes.models import AccessAttempt  # type: ignore[import-untyped]
from channels.testing import HttpCommunicator
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import MD5PasswordHasher
from django.db.models import F
from django.test import Client

from chatsite.asgi import application
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOGIN_URL = "/accounts/login/"
ADMIN_LOGIN_URL = "/admin/login/"
FAILURES = 3
COOL_OFF = timedelta(minutes=15)
ATTACKER = "203.0.113.7"
ELSEWHERE = "198.51.100.20"
WRONG = "not the password"

# Every password hashed while the counting hasher is configured.
hashed: list[str] = []


class CountingHasher(MD5PasswordHasher):
    """The suite's hasher, counting each hash it computes (checking a password is one)."""

    def encode(self, password: str, salt: str) -> str:
        hashed.append(password)
        return super().encode(password, salt)


@pytest.fixture(autouse=True)
def throttling(settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = FAILURES
    settings.AXES_COOLOFF_TIME = COOL_OFF


@pytest.fixture
def hashes(settings: Any) -> list[str]:
    """The passwords hashed from now on."""
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]
    hashed.clear()
    return hashed


def log_in(
    client: Client,
    username: str,
    password: str,
    address: str = ATTACKER,
    url: str = LOGIN_URL,
    **extra: Any,
) -> Any:
    data = {"username": username, "password": password, "next": "/c/somewhere/"}
    return client.post(url, data, REMOTE_ADDR=address, **extra)


def fail(client: Client, username: str, times: int, address: str = ATTACKER, **extra: Any) -> Any:
    """Fails to log in `times` times; the last response."""
    for _ in range(times):
        response = log_in(client, username, WRONG, address, **extra)
    return response


def is_logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


# --- Locking out ----------------------------------------------------------------------------


def test_failures_below_the_limit_show_the_form_again(client, user):
    response = fail(client, user.username, FAILURES - 1)
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


def test_failures_lock_out_with_a_page_that_says_when_to_retry(client, user):
    response = fail(client, user.username, FAILURES)

    assert response.status_code == 429
    assert response["Retry-After"] == "900"
    page = response.content.decode()
    assert "Too many failed logins" in page
    assert "Try again in 15 minutes" in page
    assert f"<strong>{user.username}</strong>" in page
    # The way back keeps where the user was going.
    assert f'href="{LOGIN_URL}?next=%2Fc%2Fsomewhere%2F"' in page
    assert "Content-Security-Policy" in response


def test_right_password_during_lockout_fails_without_hashing(client, user, hashes):
    fail(client, user.username, FAILURES - 1)
    assert hashes  # a real failure costs a hash: the counter sees them
    fail(client, user.username, 1)
    hashes.clear()

    response = log_in(client, user.username, PASSWORD)

    assert response.status_code == 429
    assert hashes == []
    assert not is_logged_in(client)


def test_unknown_username_locked_out_without_hashing(client, db, hashes):
    fail(client, "nobody", FAILURES)
    hashes.clear()
    assert log_in(client, "nobody", WRONG).status_code == 429
    assert hashes == []


def test_lockout_is_of_the_pair_not_the_user_or_the_address(client, user, other_user):
    fail(client, user.username, FAILURES)

    assert log_in(Client(), user.username, PASSWORD, ELSEWHERE).status_code == 302
    assert log_in(Client(), other_user.username, PASSWORD, ATTACKER).status_code == 302


def test_admin_login_is_throttled(client, db, hashes):
    admin = get_user_model().objects.create_superuser("root", "", PASSWORD)
    response = fail(client, admin.username, FAILURES, url=ADMIN_LOGIN_URL)
    assert response.status_code == 429
    assert response["Retry-After"] == "900"
    hashes.clear()

    response = log_in(client, admin.username, PASSWORD, url=ADMIN_LOGIN_URL)

    assert response.status_code == 429
    assert hashes == []
    assert not is_logged_in(client)


# --- Going on -------------------------------------------------------------------------------


def test_after_the_cool_off_the_user_logs_in(client, user):
    fail(client, user.username, FAILURES)
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - COOL_OFF)

    response = log_in(client, user.username, PASSWORD)

    assert (response.status_code, response["Location"]) == (302, "/c/somewhere/")
    assert is_logged_in(client)


def test_attempt_during_lockout_starts_the_wait_over(client, user):
    fail(client, user.username, FAILURES)
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - COOL_OFF / 2)
    assert log_in(client, user.username, PASSWORD).status_code == 429

    AccessAttempt.objects.update(attempt_time=F("attempt_time") - COOL_OFF / 2)

    assert log_in(client, user.username, PASSWORD).status_code == 429


def test_a_success_resets_the_count(client, user):
    fail(client, user.username, FAILURES - 1)
    assert log_in(client, user.username, PASSWORD).status_code == 302
    client.logout()

    assert fail(client, user.username, FAILURES - 1).status_code == 200
    assert log_in(client, user.username, PASSWORD).status_code == 302


# --- The client's address -------------------------------------------------------------------


def test_forwarded_header_ignored_by_default(client, user):
    """Without a configured header the address is the direct peer's: a client cannot pick
    a new one for each attempt."""
    for i in range(FAILURES):
        response = log_in(client, user.username, WRONG, HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
    assert response.status_code == 429


def test_behind_a_proxy_the_address_it_saw_counts(client, user, settings):
    """What CHAT_CLIENT_IP_HEADER=X-Forwarded-For sets: the right-most address is the one the
    proxy appended; whatever the client put to its left changes nothing."""
    settings.AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR")
    settings.AXES_IPWARE_PROXY_COUNT = 0
    settings.IPWARE_STRICT = False
    proxy = "10.0.0.2"
    for i in range(FAILURES):
        forwarded = f"192.0.2.{i}, {ATTACKER}"
        response = log_in(client, user.username, WRONG, proxy, HTTP_X_FORWARDED_FOR=forwarded)
    assert response.status_code == 429

    other = log_in(Client(), user.username, PASSWORD, proxy, HTTP_X_FORWARDED_FOR=ELSEWHERE)
    assert other.status_code == 302


def test_client_ip_header_setting_reads_the_header_from_the_right():
    """The environment variables become the settings the test above uses."""
    code = (
        "from django.conf import settings as s; "
        "print(s.AXES_IPWARE_META_PRECEDENCE_ORDER, s.AXES_IPWARE_PROXY_COUNT, s.IPWARE_STRICT)"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("DJANGO_")}
    env |= {
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_SECRET_KEY": "tests-only-not-a-secret",
        "CHAT_CLIENT_IP_HEADER": "X-Forwarded-For",
        "CHAT_CLIENT_IP_PROXY_COUNT": "1",
    }
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split("\n")[-2] == "('HTTP_X_FORWARDED_FOR', 'REMOTE_ADDR') 1 False"


# --- Through the ASGI application (axes' async middleware step) ----------------------------

CSRF_SECRET = "a" * 32


async def post_login(username: str, password: str) -> Any:
    body = urlencode(
        {"csrfmiddlewaretoken": CSRF_SECRET, "username": username, "password": password}
    )
    headers = [
        (b"host", b"testserver"),
        (b"cookie", f"{django_settings.CSRF_COOKIE_NAME}={CSRF_SECRET}".encode()),
        (b"content-type", b"application/x-www-form-urlencoded"),
    ]
    communicator = HttpCommunicator(application, "POST", LOGIN_URL, body.encode(), headers)
    communicator.scope["client"] = [ATTACKER, 50000]  # read when the request starts
    response = await communicator.get_response(10)
    await communicator.wait(10)
    return response


@pytest.mark.django_db(transaction=True)
async def test_lockout_through_the_asgi_application(user, hashes):
    for _ in range(FAILURES - 1):
        assert (await post_login(user.username, WRONG))["status"] == 200
    hashes.clear()
    assert (await post_login(user.username, WRONG))["status"] == 429
    assert hashes  # the last real attempt
    hashes.clear()

    response = await post_login(user.username, PASSWORD)

    assert response["status"] == 429
    assert (b"Retry-After", b"900") in response["headers"]
    assert b"Try again in 15 minutes" in response["body"]
    assert hashes == []
