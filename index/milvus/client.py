"""A Milvus collection answers reads only while it is loaded (held in the query nodes' memory);
vecnest's collections are loaded when they are created. A Milvus that restarts can come back with
them released (milvus-lite's server always does): every read then fails with "collection not
loaded" (Milvus error 101) until someone loads it again, and vecnest would answer 503 for good.
So a call that fails that way loads its collection and is tried once more."""

import logging
from typing import Any

from index.remote import WrappedClient

log = logging.getLogger(__name__)

COLLECTION_NOT_LOADED = 101  # Milvus's error code (merr.ErrCollectionNotLoaded)


def loading(client: Any) -> Any:
    """`client` (a `pymilvus.MilvusClient`) as the catalog holds it: a call that finds its
    collection released loads it and runs again, once."""
    if isinstance(client, WrappedClient):
        return client

    def load_released(method: Any, args: tuple, kwargs: dict) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            collection = kwargs.get("collection_name", args[0] if args else None)
            if getattr(exc, "code", None) != COLLECTION_NOT_LOADED or not isinstance(collection, str):
                raise
            log.warning("Milvus collection %s is released (the engine restarted?): loading it again", collection)
            client.load_collection(collection)
            return method(*args, **kwargs)

    return WrappedClient(client, load_released)
