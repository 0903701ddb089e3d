"""The one small error hierarchy of vecnest.

The service maps each class to an HTTP status in one handler; `code` is the stable,
machine-readable name that goes into the JSON error body.
"""


class VecnestError(Exception):
    """Base class: an expected failure caused by the request or the state, never a bug."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(VecnestError):
    code = "not_found"


class Conflict(VecnestError):
    code = "conflict"


class Invalid(VecnestError):
    code = "invalid"


class TooLarge(VecnestError):
    code = "too_large"


class Overloaded(VecnestError):
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class NotReady(VecnestError):
    """Not now (503): the message says why; with `retry_after_s`, when to try again."""

    code = "not_ready"

    def __init__(self, message: str, *, retry_after_s: float | None = None, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


def being_restored(name: str) -> NotReady:
    """Collection `name` while a restore replaces it: it exists before and after, so not "not
    found" (a client could drop its own state, or create the collection afresh) but "retry"."""
    return NotReady(
        f"collection {name!r} is being restored from a backup; retry in a moment",
        code="collection_restoring",
        retry_after_s=1.0,
    )


def gone_meanwhile(exc: BaseException) -> bool:
    """Whether `exc` says the collection a use case held was dropped, or replaced by a restore,
    while it ran: background work drops the job, a request runs again on what serves now."""
    return getattr(exc, "code", None) in ("collection_not_found", "collection_restoring")


class InsufficientStorage(VecnestError):
    """The disk is full: nothing was written (507). Writes succeed again once space is freed."""

    code = "insufficient_storage"


class ReadOnly(VecnestError):
    """The data directory cannot be written (503): reads go on, writes are refused."""

    code = "read_only"
