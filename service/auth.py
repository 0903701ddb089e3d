"""Who may call what: API keys with roles, the route → role table, and per-key rate limits.

Authentication (which key, if any) runs in the `Guard` middleware before a body is read;
authorization (may this key do this to this collection) runs as a dependency of every API
route, from `RULES`: one entry per route, keyed by the route's name (its operationId).
`check_rules` refuses to build an app with a route that has no entry, so a new route cannot be
served without a decision about who may call it.

Keys are kept only as SHA-256 digests and compared with `hmac.compare_digest` against every
configured key (no early exit), so neither the comparison nor the lookup leaks a key through
timing. Logs name a key by its `name` or a hash prefix, never by the key.
"""

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import Request

from index import VecnestError
from service.settings import ApiKey, Role, Settings

log = logging.getLogger(__name__)

PRINCIPAL = "vecnest.principal"  # the ASGI scope key the guard stores the caller under
_RANK: dict[Role, int] = {"read": 0, "write": 1, "admin": 2}


class Forbidden(VecnestError):
    """A valid key whose role or collections do not allow the operation (403). (No key, or an
    unknown one, is answered 401 by the guard before any route runs.)"""

    code = "forbidden"


@dataclass(frozen=True)
class Principal:
    id: str  # what logs show: the key's name, or "key-" + a prefix of its digest
    role: Role
    collections: frozenset[str] | None  # None: every collection

    def has(self, role: Role) -> bool:
        return _RANK[self.role] >= _RANK[role]

    def may_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def visible(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if self.may_use(n)]


# Without configured keys the server listens on loopback only, and whoever reaches it is admin.
ANONYMOUS = Principal("anonymous", "admin", None)


@dataclass(frozen=True)
class Rule:
    role: Role | None  # None: open (health checks); else the least role that may call
    collection: bool = False  # the path's `name` is a collection the key must be allowed


RULES: dict[str, Rule] = {
    # health: open, so orchestrators need no key; /metrics by the guard (public_metrics)
    "healthz": Rule(None),
    "readyz": Rule(None),
    "metrics": Rule("read"),
    # collections
    "create_collection": Rule("admin"),
    "list_collections": Rule("read"),  # lists only the key's collections
    "describe_collection": Rule("read", collection=True),
    "update_collection": Rule("admin", collection=True),
    "drop_collection": Rule("admin", collection=True),
    "refit_elasticizer": Rule("admin", collection=True),
    "measure_recall": Rule("write", collection=True),
    # documents and search
    "upsert_documents": Rule("write", collection=True),
    "delete_documents": Rule("write", collection=True),
    "delete_document": Rule("write", collection=True),
    "get_document": Rule("read", collection=True),
    "list_documents": Rule("read", collection=True),
    "search": Rule("read", collection=True),
    "search_batch": Rule("read", collection=True),
    "create_embeddings": Rule("read"),  # its `collection`, when given, is checked by the route
    # encoder upgrades (finalize deletes the previous generation for good)
    "start_upgrade": Rule("admin", collection=True),
    "list_upgrades": Rule("admin", collection=True),
    "get_upgrade": Rule("admin", collection=True),
    "cut_over": Rule("admin", collection=True),
    "roll_back": Rule("admin", collection=True),
    "finalize": Rule("admin", collection=True),
    "abort": Rule("admin", collection=True),
    # backups (a restore replaces a collection; an archive holds every document)
    "create_snapshot": Rule("admin", collection=True),
    "list_snapshots": Rule("admin", collection=True),
    "download_snapshot": Rule("admin", collection=True),
    "delete_snapshot": Rule("admin", collection=True),
    "restore_snapshot": Rule("admin", collection=True),
    "restore_upload": Rule("admin"),
}


def check_rules(route_names: Iterable[str]) -> None:
    """Refuse routes without a rule in `RULES` (raised when the app is built)."""
    missing = sorted(set(route_names) - set(RULES))
    if missing:
        raise RuntimeError(f"routes without an authorization rule in service/auth.py RULES: {', '.join(missing)}")


def principal_of(request: Request) -> Principal:
    return request.scope.get(PRINCIPAL, ANONYMOUS)


async def authorize(request: Request) -> None:
    """FastAPI dependency of every API route: the route's rule against the caller's key."""
    route = request.scope.get("route")
    permit(request.scope, route.name if route is not None else None, request.path_params.get("name", ""))


def permit(scope: dict, route_name: str | None, collection: str) -> None:
    """The rule of `route_name` (unknown: admin only) against the caller in `scope`: raises
    Forbidden when the key's role or collections do not allow it. `collection` is the path's
    collection name, for rules that limit collections."""
    rule = RULES[route_name] if route_name is not None else Rule("admin")
    if rule.role is None:
        return
    principal = scope.get(PRINCIPAL, ANONYMOUS)
    if not principal.has(rule.role):
        _forbid(scope, principal, f"this operation needs the {rule.role} role; the key has {principal.role}")
    if rule.collection and not principal.may_use(collection):
        _forbid(scope, principal, f"the key may not use collection {collection!r}")


def require_collection(request: Request, name: str | None) -> None:
    """For a collection a route names in its body or query rather than its path (a new one, a
    restore's target): the key must be allowed it. `None` (the route would take a name from
    elsewhere, such as the archive) is allowed to unscoped keys only."""
    principal = principal_of(request)
    if name is None and principal.collections is not None:
        _forbid(request.scope, principal, "a key limited to collections must name the collection (?collection=NAME)")
    if name is not None and not principal.may_use(name):
        _forbid(request.scope, principal, f"the key may not use collection {name!r}")


def _forbid(scope: dict, principal: Principal, message: str) -> None:
    method, path = scope.get("method"), scope.get("path")
    log.warning("403 %s %s: key %s (%s): %s", method, path, principal.id, principal.role, message)
    raise Forbidden(message)


class KeyRing:
    """The configured keys, as digests. `authenticate` returns the caller, or None."""

    def __init__(self, keys: list[ApiKey], default_rate: float | None = None):
        self._keys: list[tuple[bytes, Principal, float | None]] = []
        for k in keys:
            digest = _digest(k.key.get_secret_value())
            key_id = k.name or "key-" + digest.hex()[:8]
            collections = frozenset(k.collections) if k.collections is not None else None
            self._keys.append((digest, Principal(key_id, k.role, collections), k.rate_limit or default_rate))
        self._limits = {p.id: _Bucket(rate) for _, p, rate in self._keys if rate is not None}

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, presented: str) -> Principal | None:
        digest = _digest(presented)
        found = None
        for candidate, principal, _ in self._keys:  # every key, whatever matched: no timing by position
            if hmac.compare_digest(digest, candidate):
                found = principal
        return found

    def retry_after(self, principal: Principal) -> float:
        """0 when the key may make a request now (and takes its token), else seconds to wait."""
        bucket = self._limits.get(principal.id)
        return 0.0 if bucket is None else bucket.take()


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key of `Authorization: Bearer <key>` (OpenAI-style clients) or `api-key: <key>` (Qdrant's)."""
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, value = auth.decode("latin-1").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None
    key = headers.get(b"api-key")
    return key.decode("latin-1").strip() if key else None


def unauthenticated_exposure(settings: Settings) -> str | None:
    """Why the server must not start as configured, or None: without keys it serves loopback
    only, unless `allow_unauthenticated` says a proxy in front authenticates."""
    if settings.api_keys or settings.loopback or settings.allow_unauthenticated:
        return None
    return (
        f"no API keys are configured and host {settings.host!r} is not a loopback address: anyone who can "
        "reach the port could drop collections. Set VECNEST_API_KEYS (or VECNEST_API_KEYS_FILE), listen on "
        "127.0.0.1, or set VECNEST_ALLOW_UNAUTHENTICATED=true when a proxy in front authenticates"
    )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class _Bucket:
    """A token bucket: `rate` requests per second on average, bursts of up to `max(1, rate)`."""

    def __init__(self, rate: float):
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.at = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate
