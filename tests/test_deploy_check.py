"""`manage.py check --deploy` with production settings reports only what the settings choose."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys

from django.conf import settings

# Warnings the production defaults choose on purpose: HTTPS is enforced once the operator
# says it works (the variables in HTTPS below). Nothing else may appear.
CHOSEN_WITHOUT_HTTPS_SETTINGS = {
    "security.W004": "HSTS is hard to take back: DJANGO_SECURE_HSTS_SECONDS turns it on",
    "security.W008": "the TLS proxy redirects plain HTTP unless DJANGO_SECURE_SSL_REDIRECT",
}

HTTPS = {
    "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
    "DJANGO_SECURE_SSL_REDIRECT": "1",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "DJANGO_SECURE_HSTS_PRELOAD": "1",
}


def deploy_check_ids(**environment: str) -> set[str]:
    """Runs the check in a fresh process with production settings and `environment`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DJANGO_")}
    env |= {
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        **environment,
    }
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-W", "error", "manage.py", "check", "--deploy"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    return set(re.findall(r"^\S*: \((\w+\.[EW]\d+)\)", output, re.MULTILINE))


def test_deploy_check_reports_only_the_chosen_warnings():
    assert deploy_check_ids() == set(CHOSEN_WITHOUT_HTTPS_SETTINGS)


def test_deploy_check_with_https_settings_reports_nothing():
    assert deploy_check_ids(**HTTPS) == set()
