"""The settings page where a user makes, lists and revokes their API tokens.

Plain sync views: a form page, on a thread of its own like login and the admin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from chat.logouts import end_everywhere
from chat.models import ApiToken
from chat.tokens import credential_key, issue_token, revoke_token

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=ApiToken._meta.get_field("name").max_length,
        strip=True,
        help_text="What the token is for, e.g. “backup script”.",
    )


@require_http_methods(["GET", "POST"])
@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    """The user's tokens, and a form to make one; a new token's secret is shown once."""
    user = logged_in_user(request)
    form = TokenForm(request.POST if request.method == "POST" else None)
    new_secret = None
    if form.is_valid():
        _, new_secret = issue_token(user, form.cleaned_data["name"])
        form = TokenForm()
    context = {
        "form": form,
        "new_secret": new_secret,
        "tokens": ApiToken.objects.filter(owner=user).order_by("-created_at"),
    }
    # Rendered, not redirected: the secret exists only in this response, never in a
    # session or cookie. A reload asks before posting again; no cache keeps a copy.
    response = render(request, "chat/tokens.html", context)
    add_never_cache_headers(response)
    return response


@require_POST
@login_required
def revoke(request: HttpRequest, token_id: int) -> HttpResponseRedirect:
    """Revoke one of the user's tokens; someone else's is as missing as a deleted one."""
    if not revoke_token(logged_in_user(request), token_id):
        raise Http404("No such token.")
    # Its open event streams end now, on every process (and else within
    # CHAT_SESSION_CHECK_SECONDS, as for a revocation in the admin).
    end_everywhere(credential_key(token_id))
    return redirect("chat:tokens")


def logged_in_user(request: HttpRequest) -> User:
    """The user that `login_required` let through."""
    user = request.user
    assert user.is_authenticated  # for the type checker: the decorator redirected the rest
    return user
