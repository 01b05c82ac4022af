"""Personal API tokens: only hashes stored, a secret that authenticates until revoked, and
the settings page where their owner makes, lists and revokes them."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat.models import ApiToken
from chat.tokens import issue_token, revoke_token, user_for_bearer

TOKENS_URL = reverse("chat:tokens")


def revoke_url(token: ApiToken) -> str:
    return reverse("chat:revoke_token", args=[token.pk])


@pytest.fixture
def logged_in(client, user):
    client.force_login(user)
    return client


# --- Issuing and checking ----------------------------------------------------------------


@pytest.mark.django_db
def test_issue_token_stores_only_the_hash(user):
    token, secret = issue_token(user, "backup script")

    assert secret.startswith("chat_")
    assert len(secret) >= len("chat_") + 43
    stored = ApiToken.objects.get()
    assert stored.pk == token.pk
    assert stored.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert stored.prefix == secret[: len(stored.prefix)]
    assert len(stored.prefix) < 12
    stored_text = [str(value) for value in ApiToken.objects.values().get().values()]
    assert not any(secret in value for value in stored_text)


@pytest.mark.django_db
def test_issue_token_secrets_differ(user):
    secrets = {issue_token(user, "same name")[1] for _ in range(3)}
    assert len(secrets) == 3


@pytest.mark.django_db(transaction=True)
async def test_user_for_bearer_secret_authenticates_owner(user):
    token, secret = await sync_to_async(issue_token)(user, "script")

    found = await user_for_bearer(f"Bearer {secret}")

    assert found is not None
    assert found.pk == user.pk
    await token.arefresh_from_db()
    assert token.last_used_at is not None


@pytest.mark.django_db(transaction=True)
async def test_user_for_bearer_scheme_is_case_insensitive(user):
    _, secret = await sync_to_async(issue_token)(user, "script")
    found = await user_for_bearer(f"bearer  {secret} ")
    assert found is not None
    assert found.pk == user.pk


@pytest.mark.django_db(transaction=True)
async def test_user_for_bearer_writes_last_used_at_most_once_a_minute(user):
    token, secret = await sync_to_async(issue_token)(user, "script")
    await user_for_bearer(f"Bearer {secret}")
    await token.arefresh_from_db()
    first_use = token.last_used_at
    assert first_use is not None

    await user_for_bearer(f"Bearer {secret}")
    await token.arefresh_from_db()
    assert token.last_used_at == first_use

    long_ago = first_use - timedelta(minutes=2)
    await ApiToken.objects.filter(pk=token.pk).aupdate(last_used_at=long_ago)
    await user_for_bearer(f"Bearer {secret}")
    await token.arefresh_from_db()
    assert token.last_used_at is not None
    assert token.last_used_at > first_use


@pytest.mark.django_db(transaction=True)
async def test_user_for_bearer_revoked_token_is_none(user):
    token, secret = await sync_to_async(issue_token)(user, "script")
    assert await sync_to_async(revoke_token)(user, token.pk)
    assert await user_for_bearer(f"Bearer {secret}") is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token chat_x",
        "chat_x",
        "Bearer not-one-of-ours",
        "Bearer chat_" + "x" * 500,
    ],
)
async def test_user_for_bearer_malformed_header_is_none(user, header):
    await sync_to_async(issue_token)(user, "script")
    assert await user_for_bearer(header) is None


@pytest.mark.django_db(transaction=True)
async def test_user_for_bearer_wrong_secret_is_none(user):
    _, secret = await sync_to_async(issue_token)(user, "script")
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert await user_for_bearer(f"Bearer {wrong}") is None


@pytest.mark.django_db(transaction=True)
async def test_user_for_bearer_deactivated_owner_is_none(user):
    _, secret = await sync_to_async(issue_token)(user, "script")
    user.is_active = False
    await user.asave(update_fields=["is_active"])
    assert await user_for_bearer(f"Bearer {secret}") is None


@pytest.mark.django_db
def test_revoke_token_keeps_first_revocation_time(user):
    token, _ = issue_token(user, "script")
    assert revoke_token(user, token.pk)
    token.refresh_from_db()
    first = token.revoked_at
    assert first is not None

    assert revoke_token(user, token.pk)
    token.refresh_from_db()
    assert token.revoked_at == first


@pytest.mark.django_db
def test_revoke_token_of_another_user_is_false(user, other_user):
    token, _ = issue_token(user, "script")
    assert not revoke_token(other_user, token.pk)
    token.refresh_from_db()
    assert token.revoked_at is None


# --- The settings page -------------------------------------------------------------------


@pytest.mark.django_db
def test_tokens_page_anonymous_redirects_to_login(client):
    response = client.get(TOKENS_URL)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={TOKENS_URL}"


@pytest.mark.django_db
def test_tokens_page_create_anonymous_redirects_and_creates_nothing(client):
    response = client.post(TOKENS_URL, {"name": "script"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert not ApiToken.objects.exists()


@pytest.mark.django_db
def test_tokens_page_lists_only_my_tokens(logged_in, user, other_user):
    issue_token(user, "my backup script")
    mine_revoked, _ = issue_token(user, "old laptop")
    revoke_token(user, mine_revoked.pk)
    issue_token(other_user, "someone else's")

    response = logged_in.get(TOKENS_URL)

    assert response.status_code == 200
    page = response.content.decode()
    assert "my backup script" in page
    assert "old laptop" in page
    assert "someone else" not in page
    assert [t.name for t in response.context["tokens"]] == ["old laptop", "my backup script"]
    # One revoke button: the revoked token has none.
    assert page.count('/revoke/"') == 1
    assert "chat_" in page  # the prefixes


@pytest.mark.django_db
def test_tokens_page_create_shows_secret_once(logged_in, user):
    response = logged_in.post(TOKENS_URL, {"name": "  deploy bot  "})

    assert response.status_code == 200
    secret = response.context["new_secret"]
    assert secret.startswith("chat_")
    assert secret in response.content.decode()
    assert "will not be shown again" in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    token = ApiToken.objects.get()
    assert token.owner == user
    assert token.name == "deploy bot"

    reloaded = logged_in.get(TOKENS_URL)
    assert secret not in reloaded.content.decode()
    assert "deploy bot" in reloaded.content.decode()


@pytest.mark.django_db
def test_tokens_page_create_without_name_shows_error(logged_in):
    response = logged_in.post(TOKENS_URL, {"name": "   "})

    assert response.status_code == 200
    assert response.context["new_secret"] is None
    assert response.context["form"].errors
    assert not ApiToken.objects.exists()


@pytest.mark.django_db
def test_tokens_page_forms_need_csrf(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    token, _ = issue_token(user, "script")

    assert client.post(TOKENS_URL, {"name": "script"}).status_code == 403
    assert client.post(revoke_url(token)).status_code == 403
    assert ApiToken.objects.count() == 1
    assert ApiToken.objects.get().revoked_at is None


@pytest.mark.django_db
def test_tokens_page_revoke_redirects_to_list(logged_in, user):
    token, _ = issue_token(user, "script")

    response = logged_in.post(revoke_url(token))

    assert response.status_code == 302
    assert response["Location"] == TOKENS_URL
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert token.revoked_at <= timezone.now()


@pytest.mark.django_db
def test_tokens_page_revoke_by_get_is_refused(logged_in, user):
    token, _ = issue_token(user, "script")
    assert logged_in.get(revoke_url(token)).status_code == 405
    token.refresh_from_db()
    assert token.revoked_at is None


@pytest.mark.django_db
def test_tokens_page_revoke_someone_elses_is_404(logged_in, other_user):
    theirs, _ = issue_token(other_user, "theirs")

    response = logged_in.post(revoke_url(theirs))

    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


@pytest.mark.django_db
def test_tokens_page_revoke_missing_is_404(logged_in):
    assert logged_in.post(reverse("chat:revoke_token", args=[999_999])).status_code == 404


@pytest.mark.django_db
def test_tokens_page_has_no_inline_script_or_style(logged_in, user):
    issue_token(user, "script")
    page = logged_in.get(TOKENS_URL).content.decode()
    assert "<script" not in page
    assert "<style" not in page
    assert " style=" not in page


@pytest.mark.django_db
def test_header_links_to_tokens_page(logged_in):
    assert f'href="{TOKENS_URL}"' in logged_in.get(reverse("chat:index")).content.decode()


# --- The admin -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_lists_tokens_without_hash(admin_client, user):
    token, secret = issue_token(user, "script")

    changelist = admin_client.get(reverse("admin:chat_apitoken_changelist"))
    change = admin_client.get(reverse("admin:chat_apitoken_change", args=[token.pk]))

    assert changelist.status_code == change.status_code == 200
    for response in (changelist, change):
        page = response.content.decode()
        assert "script" in page
        assert token.prefix in page
        assert token.key_hash not in page
        assert secret not in page
    assert admin_client.get(reverse("admin:chat_apitoken_add")).status_code == 403
