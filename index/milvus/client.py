"""A Milvus collection answers reads only while it is loaded (held in the query nodes' memory);
vecnest's collections are loaded when they are created. A Milvus that restarts can come back with
them released (milvus-lite's server always does): every read then fails with "collection not
loaded" (Milvus error 101) until someone loads it again, and vecnest would answer 503 for good.
So a call that fails that way loads its collection and is tried once more."""

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

COLLECTION_NOT_LOADED = 101  # Milvus's error code (merr.ErrCollectionNotLoaded)


class LoadingClient:
    """A `pymilvus.MilvusClient` whose calls load a released collection and retry once.
    Attributes that are not methods pass through unchanged."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def loading(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                collection = kwargs.get("collection_name", args[0] if args else None)
                if getattr(exc, "code", None) != COLLECTION_NOT_LOADED or not isinstance(collection, str):
                    raise
                log.warning("Milvus collection %s is released (the engine restarted?): loading it again", collection)
                self._client.load_collection(collection)
                return attr(*args, **kwargs)

        return loading


def loading(client: Any) -> Any:
    """`client` as the catalog holds it."""
    return client if isinstance(client, LoadingClient) else LoadingClient(client)
