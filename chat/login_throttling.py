"""Login throttling with django-axes: the check that refuses a locked-out login before any
password is hashed, and the page such a login gets.

After `CHAT_LOGIN_FAILURES` failed logins for one username from one address, that pair is
refused for `CHAT_LOGIN_COOLOFF_MINUTES` (settings: "Login throttling"). Each refused
attempt counts as a failure and so starts the wait over: the page can say exactly how long.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlencode

from axes.backends import AxesStandaloneBackend  # type: ignore[import-untyped]
from axes.helpers import get_client_username, get_cool_off  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse


class LoginThrottleBackend(AxesStandaloneBackend):  # type: ignore[misc]
    """axes' lockout check, for logins that come with a request.

    A login from code (the test client's `login`, a shell) has no address to count by;
    axes would raise, and there is no one to throttle, so it goes on to the next backend.
    Every login page (ours, the admin's) passes its request.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is not None:
            super().authenticate(request, username, password, **kwargs)


def lockout_response(request: HttpRequest, *_: Any) -> HttpResponse:
    """The 429 page of a locked-out login: how long to wait, and the way back.

    axes passes `(request, response, credentials)` or, from its async path,
    `(request, credentials)`; nothing here needs more than the request.
    """
    cool_off = get_cool_off(request)
    assert cool_off is not None  # settings require a cool-off: no lockout without an end
    seconds = math.ceil(cool_off.total_seconds())
    next_url = request.POST.get("next", "")
    context = {
        "username": get_client_username(request) or "",
        "minutes": math.ceil(seconds / 60),
        "login_url": request.path + (f"?{urlencode({'next': next_url})}" if next_url else ""),
    }
    response = TemplateResponse(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(seconds)
    return response.render()
