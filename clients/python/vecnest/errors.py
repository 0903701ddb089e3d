"""Typed errors mirroring the server's: each carries the HTTP status, the server's error `code`
(e.g. "collection_not_found", "wrong_dimension") and its message."""


class VecnestError(Exception):
    """Any error answer from vecnest (or no answer: `status` 0 for a transport failure)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}" if code else message)
        self.status, self.code, self.message = status, code, message


class InvalidRequest(VecnestError):
    """400/422: the request was refused and changed nothing."""


class Unauthorized(VecnestError):
    """401: no API key, or an unknown one."""


class Forbidden(VecnestError):
    """403: the key's role or collections do not allow this."""


class NotFound(VecnestError):
    """404: no such collection, document, upgrade or snapshot."""


class Conflict(VecnestError):
    """409: the collection's state does not allow this now (e.g. it exists already)."""


class PayloadTooLarge(VecnestError):
    """413: the request body is over the server's limit: send smaller batches."""


class RateLimited(VecnestError):
    """429: too many requests, after the client's retries."""


class Unavailable(VecnestError):
    """503: the server is busy or not ready, after the client's retries."""


class InsufficientStorage(VecnestError):
    """507: the server's disk is full; nothing was written."""


class ServerError(VecnestError):
    """Another 5xx."""


class TransportError(VecnestError):
    """The server could not be reached (connection refused, timeout), after the retries."""


_BY_STATUS: dict[int, type[VecnestError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: Unavailable,
    507: InsufficientStorage,
}


def error_for(status: int, body: object) -> VecnestError:
    """The typed error of an error answer `{"error": {"code", "message"}}` (or any other body)."""
    code, message = "", str(body)[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", ""))
        message = str(body["error"].get("message", message))
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else VecnestError)
    return kind(status, code, message)
