"""Routes of the JSON API, mounted under /api/ (README, "JSON API"): django-ninja's, made
to answer in the API's JSON error shape where ninja would not (a method a route does not
take, a path that is no route)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseNotAllowed
from django.urls import URLPattern, URLResolver, path, re_path
from django.views.decorators.csrf import csrf_exempt

from chat.api import api, error_response

app_name = "api"  # the namespace ninja reverses its own routes in (NinjaAPI.urls_namespace)


def with_json_405(view: Any) -> Any:
    """An async ninja view whose 405 (plain text from ninja) is the API's JSON error."""

    async def json_405_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response: HttpResponseBase = await view(request, *args, **kwargs)
        if isinstance(response, HttpResponseNotAllowed):
            allowed = ", ".join(sorted(m.strip() for m in response["Allow"].split(",")))
            response = error_response(405, "method_not_allowed", f"Allowed: {allowed}.")
            response["Allow"] = allowed
        return response

    json_405_view.csrf_exempt = True  # type: ignore[attr-defined]  # as ninja's: auth checks CSRF
    return json_405_view


@csrf_exempt  # nothing to protect: a POST to no route is a 404, whoever sends it
async def no_such_route(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    return error_response(404, "not_found", "No such API route.")


def routes() -> list[URLPattern | URLResolver]:
    patterns: list[URLPattern | URLResolver] = []
    for pattern in api.urls[0]:
        if not isinstance(pattern, URLPattern):
            patterns.append(pattern)
        elif pattern.name == "api-root":
            # ninja's root names the prefix for its own `reverse`; it answers an HTML 404.
            patterns.append(path("", no_such_route, name="api-root"))
        elif iscoroutinefunction(pattern.callback):
            view = with_json_405(pattern.callback)
            patterns.append(URLPattern(pattern.pattern, view, pattern.default_args, pattern.name))
        else:
            patterns.append(pattern)  # the OpenAPI document
    return patterns


urlpatterns = [*routes(), re_path(r"", no_such_route)]
