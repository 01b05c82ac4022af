"""The OpenAPI document stays true: schemathesis sends generated requests, valid and not,
to every operation through the ASGI application, and checks that none is a server error
and every answer (status, content type, headers, body, each SSE event) is one the
document describes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from chat.models import Message
from chatsite.asgi import application
from tests.api_client import token_headers

pytestmark = pytest.mark.django_db(transaction=True)

# Loaded through the application itself, as a client would (no database needed). Valid
# and invalid requests are two runs: valid ones may name an existing conversation.
valid = schemathesis.openapi.from_asgi("/api/openapi.json", application)
invalid = schemathesis.openapi.from_asgi("/api/openapi.json", application)
# The requests authenticate with a real token (below), not generated credentials.
valid.config.generation.update(modes=[GenerationMode.POSITIVE], with_security_parameters=False)
invalid.config.generation.update(modes=[GenerationMode.NEGATIVE], with_security_parameters=False)

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# A conversation of the token's owner, which half the valid requests name instead of a
# random id; not those that start replies, which would need the model.
EXISTING = "5b0b0b5e-0000-4000-8000-000000000001"
STARTS_REPLIES = ("/messages/", "/regenerate/")


@valid.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    path = context.operation.path
    if not path_parameters or "conversation_id" not in path_parameters:
        return st.just(path_parameters)
    if path.endswith(STARTS_REPLIES):
        return st.just(path_parameters)
    return st.sampled_from([path_parameters, {**path_parameters, "conversation_id": EXISTING}])


@pytest.fixture
def authorization(user: Any, make_conversation: Any) -> Iterator[dict[str, str]]:
    """A personal token of a user with a conversation (EXISTING) and a message in it."""
    conversation = make_conversation(user, id=EXISTING, title="existing", model="model-a")
    Message.objects.create(conversation=conversation, role="user", content="Hello")
    yield token_headers(user)


@pytest.fixture(autouse=True)
def chat_models(settings: Any) -> None:
    settings.CHAT_MODELS = ["model-a", "model-b"]


@valid.parametrize()
@EXAMPLES
def test_valid_requests_are_answered_as_documented(
    case: Any, authorization: dict[str, str]
) -> None:
    # Left out: "schema-valid input is accepted". What the document cannot say is checked
    # by the service and refused with a 400: a cursor the API did not give out, a model
    # not offered (CHAT_MODELS), a blank message.
    case.call_and_validate(headers=authorization, excluded_checks=[positive_data_acceptance])


@invalid.parametrize()
@EXAMPLES
def test_invalid_requests_are_refused_as_documented(
    case: Any, authorization: dict[str, str]
) -> None:
    case.call_and_validate(headers=authorization)
