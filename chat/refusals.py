"""Requests the chat will not serve: one error type for every front end to translate.

The websocket answers a `Refused` with an `error` frame, the JSON API with its JSON error
and the status that `STATUS` names. A new instance is made for every refusal: a shared
one would grow its traceback with every raise and keep every frame's locals alive.
"""

from __future__ import annotations


class Refused(Exception):
    """A request we will not serve, with the error code the client sees, and for limits
    the seconds after which trying again may succeed."""

    def __init__(self, code: str, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


# The HTTP status of each refusal code; 400 for any code not named here.
STATUS = {
    "bad_request": 400,
    "not_found": 404,
    "busy": 409,
    "too_long": 413,
    "rate_limited": 429,
    "quota_exceeded": 429,
}


def bad_request(detail: str) -> Refused:
    return Refused("bad_request", detail)


def not_found(detail: str = "No such conversation.") -> Refused:
    # One answer for "missing" and "not yours": ids of others' conversations leak nothing.
    return Refused("not_found", detail)


def busy() -> Refused:
    return Refused("busy", "A reply is still being written; stop it or wait.")


def too_long(what: str, limit: int) -> Refused:
    return Refused("too_long", f"{what} may hold at most {limit} characters.")
