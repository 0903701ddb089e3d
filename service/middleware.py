"""Plain ASGI middlewares: the guard (Host, origin, content type, API key, rate limit), the
request-body size limit (413), dropping work whose client has gone, and request metrics."""

import asyncio
import json
import logging
import re
import time
from urllib.parse import urlsplit

from service.auth import PRINCIPAL, KeyRing, presented_key
from service.metrics import Metrics
from service.settings import LOOPBACK_HOSTS, Settings

log = logging.getLogger(__name__)

# Requests whose work (mostly encoding) is worth abandoning when the client disconnects. State
# changes (collections, upgrades) always run to the end, whoever is still listening.
_CANCELLABLE = re.compile(
    r"^(POST /v1/embeddings|POST /v1/collections/[^/]+/search(/batch)?|"
    r"PUT /v1/collections/[^/]+/documents)$"
)


class BodySizeLimit:
    """Reject bodies over `max_bytes` with 413 before any handler parses them, and cancel a
    search, embedding or upsert whose client disconnects before its answer.

    The body is read here (bounded) and replayed to the app, so chunked uploads without a
    Content-Length are limited too. Once the body is read, the next ASGI message is
    `http.disconnect`: the client went away, or the response is complete. Arriving first, it
    cancels the handler: a job still queued for the encoder is skipped, and a large request
    stops after the chunk being encoded, instead of encoding for nobody.
    """

    def __init__(self, app, max_bytes: int, metrics: Metrics, unbuffered: set[str] = frozenset()):  # type: ignore[assignment]
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.unbuffered = unbuffered  # paths whose handler streams the body under its own limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in self.unbuffered:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._reject(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False
        cancellable = _CANCELLABLE.match(f"{scope.get('method')} {scope.get('path')}")
        after_body = asyncio.ensure_future(receive()) if cancellable else None  # disconnect, or response end

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await (asyncio.shield(after_body) if after_body is not None else receive())

        if after_body is None:
            return await self.app(scope, replay, send)
        # The handler runs in this task; a disconnect arriving first cancels it (one task for
        # the receive, none for the handler: the hot path's per-request cost).
        task = asyncio.current_task()
        assert task is not None
        gone = False

        def on_after_body(done: asyncio.Future) -> None:
            nonlocal gone
            if not done.cancelled() and done.exception() is None:
                gone = True
                task.cancel()

        after_body.add_done_callback(on_after_body)
        try:
            return await self.app(scope, replay, send)
        except asyncio.CancelledError:
            if not gone:  # cancelled from outside (shutdown): not ours to swallow
                raise
            task.uncancel()
            self.metrics.errors.labels("client_disconnected").inc()  # the client left first
        finally:
            after_body.remove_done_callback(on_after_body)
            after_body.cancel()

    async def _reject(self, send) -> None:
        self.metrics.errors.labels("body_too_large").inc()
        await send_error(send, 413, "body_too_large", f"request body exceeds {self.max_bytes} bytes", close=True)


async def send_error(
    send, status: int, code: str, message: str, headers: dict[str, str] | None = None, close: bool = False
) -> None:
    """An error response in the API's one shape, `{"error": {"code", "message"}}`, from a middleware."""
    payload = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


_DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
_OPEN = ("/healthz", "/readyz")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_ARCHIVE_TYPES = {"application/x-tar", "application/octet-stream"}


class Guard:
    """What every request passes before any handler runs (and before its body is read):

    1. its `Host` is one the server answers to (400): a DNS-rebinding page names its own host;
    2. a browser `Origin` is the server's own or a configured CORS origin (403): no cross-site
       POST from a web page, even one without a body;
    3. the API key is a configured one (401), unless the path is open (health; metrics and docs
       when configured public) or no keys are configured (loopback only); on an open path a
       valid key sent still names the caller (`/readyz` shows it its collections' failures);
    4. a body is `application/json` (415): browsers send `text/plain` and forms without a
       preflight (the archive upload of a restore is `application/x-tar`);
    5. the key's rate limit has room (429 with Retry-After).

    The caller's `Principal` goes into the scope for the routes' authorization (`service.auth`).
    """

    def __init__(
        self,
        app,
        settings: Settings,
        keys: KeyRing,
        metrics: Metrics,
        archives: set[str] = frozenset(),  # type: ignore[assignment]
    ):
        self.app = app
        self.archives = archives  # paths whose body is a backup archive, not JSON
        self.keys = keys
        self.metrics = metrics
        hosts = {settings.host, *LOOPBACK_HOSTS, *settings.allowed_hosts}
        self.any_host = "*" in hosts
        self.hosts = {h.lower().strip("[]") for h in hosts}
        self.origins = set(settings.cors_origins)
        self.open = set(_OPEN)
        if settings.public_metrics:
            self.open.add("/metrics")
        if settings.public_docs:
            self.open.update(_DOCS)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, code, message, extra = refusal
            self.metrics.errors.labels(code).inc()
            return await send_error(send, status, code, message, extra)
        return await self.app(scope, receive, send)

    def _refusal(self, scope, headers: dict[bytes, bytes]) -> tuple[int, str, str, dict[str, str] | None] | None:
        host = _hostname(headers.get(b"host", b"").decode("latin-1"))
        if not self.any_host and host not in self.hosts:
            return 400, "invalid_host", f"this server does not answer to host {host!r}", None
        origin = headers.get(b"origin")
        if origin is not None and not self._allowed_origin(origin.decode("latin-1")):
            return 403, "cross_origin", "requests from this browser origin are not allowed (see cors_origins)", None
        method, path = scope.get("method", ""), scope.get("path", "")
        principal = None
        if self.keys.enabled and path in self.open:  # open, but a key sent says who asks (/readyz's detail)
            presented = presented_key(headers)
            caller = self.keys.authenticate(presented) if presented else None
            if caller is not None:
                scope[PRINCIPAL] = caller
        elif self.keys.enabled:
            presented = presented_key(headers)
            principal = self.keys.authenticate(presented) if presented else None
            if principal is None:
                log.info("401 %s %s: %s", method, path, "unknown API key" if presented else "no API key")
                return (
                    401,
                    "unauthorized",
                    "a valid API key is required: Authorization: Bearer <key>, or api-key: <key>",
                    {"WWW-Authenticate": "Bearer"},
                )
            scope[PRINCIPAL] = principal
        if method in _BODY_METHODS and _has_body(headers):
            media = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if path in self.archives:
                if media not in _ARCHIVE_TYPES:
                    return 415, "unsupported_media_type", "send the archive as application/x-tar", None
            elif media != "application/json":
                return 415, "unsupported_media_type", "request bodies must be application/json", None
        wait = self.keys.retry_after(principal) if principal is not None else 0.0
        if principal is not None and wait > 0:
            return (
                429,
                "rate_limited",
                f"key {principal.id} is over its rate limit; retry after {wait:.2f} s",
                {"Retry-After": str(max(1, round(wait + 0.499)))},
            )
        return None

    def _allowed_origin(self, origin: str) -> bool:
        if origin in self.origins or "*" in self.origins:
            return True
        return self.any_host or _hostname(urlsplit(origin).netloc) in self.hosts


def _hostname(netloc: str) -> str:
    """`host` of `host:port`, `[v6]:port`, `[v6]` or `host`, lower-cased, brackets dropped."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return b"transfer-encoding" in headers


class RequestMetrics:
    """Count and time every HTTP request by route template (never the raw path), method, status."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_and_record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.request_seconds.labels(template, method).observe(time.perf_counter() - start)
