"""Personal API tokens: made and revoked by their owner, checked on every API request.

A token's secret is `chat_` and 43 random URL-safe characters (32 bytes). Only its sha256
is stored, so a request is matched by looking the hash up: the comparison that decides
is the database's on a hash, never a string comparison with the secret.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

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
    """The active owner of the unrevoked token in `Authorization: Bearer <secret>`, or None.

    One query per request; a token's `last_used_at` is written at most once a minute.
    """
    secret = bearer_secret(authorization_header)
    if secret is None:
        return None
    token = await (
        ApiToken.objects.select_related("owner")
        .filter(key_hash=hash_secret(secret), revoked_at__isnull=True, owner__is_active=True)
        .afirst()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        # Conditional, so that requests racing through here write the row once.
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
        await ApiToken.objects.filter(stale, pk=token.pk).aupdate(last_used_at=now)
    return token.owner


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
