"""Plain ASGI middlewares: the request-body size limit (413), dropping work whose client has
gone, and request metrics."""

import asyncio
import json
import re
import time

from service.metrics import Metrics

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

    def __init__(self, app, max_bytes: int, metrics: Metrics):
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
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
        handler = asyncio.ensure_future(self.app(scope, replay, send))
        try:
            await asyncio.wait((handler, after_body), return_when=asyncio.FIRST_COMPLETED)
            if handler.done():
                return handler.result()
            self.metrics.errors.labels("client_disconnected").inc()  # the client left first
        finally:
            after_body.cancel()
            if not handler.done():  # stop working for nobody (or we are being cancelled)
                handler.cancel()
                try:
                    await handler
                except asyncio.CancelledError:
                    pass

    async def _reject(self, send) -> None:
        self.metrics.errors.labels("body_too_large").inc()
        payload = json.dumps(
            {"error": {"code": "body_too_large", "message": f"request body exceeds {self.max_bytes} bytes"}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


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
