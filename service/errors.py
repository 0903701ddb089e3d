"""The one place where errors become HTTP responses: `{"error": {"code", "message"}}`.

Domain errors carry their code; request validation becomes 422; unknown routes and methods
keep their status; anything unexpected is a 500 whose body says nothing about internals.
"""

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from index import (
    Conflict,
    InsufficientStorage,
    Invalid,
    NotFound,
    NotReady,
    Overloaded,
    ReadOnly,
    TooLarge,
    VecnestError,
)
from service.auth import Forbidden
from service.metrics import Metrics

log = logging.getLogger(__name__)

STATUS = {
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    TooLarge: 413,
    Overloaded: 429,
    NotReady: 503,
    ReadOnly: 503,
    InsufficientStorage: 507,
}
_HTTP_CODES = {404: "route_not_found", 405: "method_not_allowed", 413: "body_too_large", 400: "bad_request"}


def error_response(
    status: int, code: str, message: str, metrics: Metrics | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    if metrics is not None:
        metrics.errors.labels(code).inc()
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def domain_error_response(exc: VecnestError, metrics: Metrics | None = None) -> JSONResponse:
    status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 400)
    retry_after = exc.retry_after_s if isinstance(exc, (Overloaded, NotReady)) else None
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return error_response(status, exc.code, exc.message, metrics, headers)


def unexpected_error_response(exc: Exception, method: str, path: str, metrics: Metrics | None = None) -> JSONResponse:
    """A 500 that says nothing about internals; the log has the traceback."""
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return error_response(500, "internal", "internal error; the server log has the details", metrics)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(VecnestError)
    async def domain_error(request: Request, exc: VecnestError) -> JSONResponse:
        return domain_error_response(exc, metrics)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe(exc), metrics)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route of the path; list them all
            headers["Allow"] = ", ".join(_allowed_methods(request)) or headers.get("Allow", "")
        return error_response(exc.status_code, code, str(exc.detail), metrics, headers or None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response(exc, request.method, request.url.path, metrics)


def _allowed_methods(request: Request) -> list[str]:
    """The methods the API declares for the request's path: of the path templates that match
    it, the most concrete ones (fewest parameters), as OpenAPI matches paths
    (`/documents/delete` before `/documents/{doc_id}`)."""
    table = getattr(request.app.state, "allowed_methods", None)
    if table is None:
        table = [
            (
                re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$"),
                path.count("{"),
                {m.upper() for m in ops if m in _HTTP_METHODS},
            )
            for path, ops in request.app.openapi().get("paths", {}).items()
        ]
        request.app.state.allowed_methods = table
    matches = [(params, methods) for pattern, params, methods in table if pattern.match(request.url.path)]
    if not matches:
        return []
    fewest = min(params for params, _ in matches)
    return sorted({m for params, methods in matches if params == fewest for m in methods})


_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _describe(exc: RequestValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        if err.get("type") == "json_invalid":  # the body as a whole: its position says nothing
            parts.append(f"the body could not be read as JSON: {err.get('ctx', {}).get('error') or err.get('msg')}")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
