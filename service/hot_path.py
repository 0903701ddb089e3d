"""`HotPath`: the few routes that carry the load (searches and upserts), served without
FastAPI's per-request machinery.

FastAPI matches a request against every route, solves its dependencies, validates the body,
runs the endpoint, then validates and serialises its return value again: measured here, about
as much event-loop time as the search itself. A hot route skips all of that around the very
same endpoint function: its path is matched by the route's own regex, the caller is authorised
by the route's rule in `service.auth.RULES`, the body is validated in one pass from the bytes
by the route's body model, the endpoint is awaited with the engine, and its return value is
serialised once by the route's response model (as FastAPI would: `exclude_none` included).

The FastAPI route stays registered and stays the reference: it is what the OpenAPI schema
describes, and every request the hot path does not take whole goes to it: a body that fails
validation (so that 422s keep FastAPI's exact wording), a method or path that differs. Errors
become responses through `service.errors`, as they do for every other route.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from index import VecnestError
from service import auth
from service.errors import domain_error_response, unexpected_error_response
from service.metrics import Metrics


@dataclass(frozen=True)
class _Hot:
    route: APIRoute
    pattern: re.Pattern
    body_name: str
    body: TypeAdapter
    response: TypeAdapter
    exclude_none: bool
    engine_name: str


def hot(route: APIRoute, engine_dependency: Callable) -> _Hot:
    """What serving `route` directly needs. Only routes whose inputs are string path
    parameters, one JSON body and the engine qualify: anything else is refused here, when the
    app is built, instead of being served differently from FastAPI."""
    d = route.dependant
    extra = [x for x in d.dependencies if x.call is not engine_dependency]
    if extra or d.query_params or d.header_params or d.cookie_params or len(d.body_params) != 1:
        raise RuntimeError(f"route {route.name} has inputs the hot path does not serve")
    if any(p.field_info.annotation is not str for p in d.path_params):
        raise RuntimeError(f"route {route.name}: the hot path serves string path parameters only")
    (engine,) = [x.name for x in d.dependencies]
    assert route.body_field is not None and route.response_model is not None
    return _Hot(
        route=route,
        pattern=route.path_regex,
        body_name=d.body_params[0].name,
        body=TypeAdapter(route.body_field.field_info.annotation),
        response=TypeAdapter(route.response_model),
        exclude_none=route.response_model_exclude_none,
        engine_name=engine,
    )


class HotPath:
    """ASGI middleware, inside the guard and the body limit (so keys, hosts, content types and
    sizes are checked as for every route) and in front of the FastAPI app."""

    def __init__(self, app, routes: list[_Hot], engine: Callable[[], Any], metrics: Metrics):
        self.app = app
        self.routes: dict[str, list[_Hot]] = {}
        for r in routes:
            for method in r.route.methods:
                self.routes.setdefault(method, []).append(r)
        self.engine = engine
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for r in self.routes.get(scope["method"], ()):
            found = r.pattern.match(scope["path"])
            if found is not None:
                return await self._serve(r, found.groupdict(), scope, receive, send)
        return await self._app(scope, receive, send)

    async def _app(self, scope, receive, send) -> None:
        """The FastAPI app, with an error it leaves unhandled answered here, as the one 500
        (its traceback logged), while no response has started. Starlette's outermost handler
        answers it too, but then raises it again for the server, and uvicorn closes a
        connection whose app raised: the client's next request on it met a reset."""
        started = False

        async def watched(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:
                raise
            await unexpected_error_response(exc, scope["method"], scope["path"], self.metrics)(scope, receive, send)

    async def _serve(self, r: _Hot, params: dict[str, str], scope, receive, send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            parsed = r.body.validate_json(body)
        except ValidationError:  # FastAPI answers it, with the same 422 as ever
            return await self._app(scope, _replay(body, receive), send)
        scope["route"] = r.route  # for request metrics, by template
        scope["path_params"] = params
        try:
            auth.permit(scope, r.route.name, params.get("name", ""))
            result = await r.route.endpoint(**params, **{r.body_name: parsed, r.engine_name: self.engine()})
            payload = r.response.dump_json(result, exclude_none=r.exclude_none)
        except VecnestError as exc:
            return await domain_error_response(exc, self.metrics)(scope, receive, send)
        except Exception as exc:
            return await unexpected_error_response(exc, scope["method"], scope["path"], self.metrics)(
                scope, receive, send
            )
        await send(
            {
                "type": "http.response.start",
                "status": r.route.status_code or 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
