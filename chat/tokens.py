"""Personal API tokens: made and revoked by their owner, checked on every API request.

A token's secret is `chat_` and 43 random URL-safe characters (32 bytes). Only its sha256
is stored, so a request is matched by looking the hash up: the comparison that decides
is the database's on a hash, never a string comparison with the secret.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.db.models import Q
from django.utils import timezone

from chat.models import ApiToken

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# Recognisable in logs and to secret scanners; checked before any database work.
MARKER = "chat_"
# How much of the secret the lists show: the marker and four random characters.
SHOWN_CHARACTERS = len(MARKER) + 4
# A token in use is written to at most this often, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# A token's streams are keyed by this and its id (`credential_key`).
TOKEN_KEY_PREFIX = "token:"  # noqa: S105 - a name, not a secret
# Longer than any secret we make; anything longer is not worth hashing.
MAX_SECRET_LENGTH = 100


def issue_token(user: User, name: str) -> tuple[ApiToken, str]:
    """A new token of `user`'s, and its secret: shown to them once, stored only as a hash."""
    secret = MARKER + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        owner=user, name=name, prefix=secret[:SHOWN_CHARACTERS], key_hash=hash_secret(secret)
    )
    return token, secret


def revoke_token(user: User, token_id: int) -> bool:
    """Revoke one of `user`'s tokens at once; False if they have no such token.

    Revoking a revoked token keeps the time it was first revoked.
    """
    tokens = ApiToken.objects.filter(owner=user, pk=token_id)
    revoked = tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
    return bool(revoked) or tokens.exists()


async def user_for_bearer(authorization_header: str) -> User | None:
    """The owner of `live_token`, from the event loop (on the ORM thread, as the async ORM
    runs)."""
    token = await sync_to_async(live_token)(authorization_header)
    return token.owner if token is not None else None


def live_token(authorization_header: str) -> ApiToken | None:
    """The unrevoked token of an active owner in `Authorization: Bearer <secret>`, with its
    owner, or None.

    One query; a token's `last_used_at` is written at most once a minute.
    """
    secret = bearer_secret(authorization_header)
    if secret is None:
        return None
    token = (
        ApiToken.objects.select_related("owner")
        .filter(key_hash=hash_secret(secret), revoked_at__isnull=True, owner__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        # Conditional, so that requests racing through here write the row once.
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
        ApiToken.objects.filter(stale, pk=token.pk).update(last_used_at=now)
    return token


def credential_key(token_id: int) -> str:
    """What the chat service keys a token's open streams by, beside sessions' keys (which
    never hold a colon): they end when the token is revoked."""
    return f"{TOKEN_KEY_PREFIX}{token_id}"


def token_ids(keys: Iterable[str]) -> dict[str, int]:
    """The tokens among credential keys: key -> token id."""
    found = {}
    for key in keys:
        if key.startswith(TOKEN_KEY_PREFIX) and key[len(TOKEN_KEY_PREFIX) :].isdigit():
            found[key] = int(key[len(TOKEN_KEY_PREFIX) :])
    return found


def live_token_keys(keys: Iterable[str]) -> set[str]:
    """Those of the tokens' credential keys whose token still lets its owner in."""
    ids = token_ids(keys)
    live = set(
        ApiToken.objects.filter(
            pk__in=ids.values(), revoked_at__isnull=True, owner__is_active=True
        ).values_list("pk", flat=True)
    )
    return {key for key, token_id in ids.items() if token_id in live}


def bearer_secret(authorization_header: str) -> str | None:
    """The secret of a well-formed `Bearer chat_...` header, or None."""
    scheme, _, secret = authorization_header.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret.startswith(MARKER):
        return None
    if len(secret) > MAX_SECRET_LENGTH:
        return None
    return secret


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
