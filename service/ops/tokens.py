"""Token matrices from requests: JSON rows or compact base64 (float32/float16)."""

import base64
import binascii

import numpy as np

from index.errors import Invalid
from service import schemas


def has_tokens(body: schemas.TokensIn) -> bool:
    return body.vectors is not None or body.vectors_b64 is not None


def token_matrix(body: schemas.TokensIn, token_dim: int, what: str) -> np.ndarray | list | None:
    """The request's token matrix: `(n, token_dim)` from base64, the JSON rows as given (the
    collection validates shape and values), or None when it has neither."""
    if body.vectors is not None and body.vectors_b64 is not None:
        raise Invalid(f"{what}: give vectors or vectors_b64, not both", code="invalid_tokens")
    if body.vectors_b64 is None:
        return body.vectors
    try:
        raw = base64.b64decode(body.vectors_b64, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"{what}: vectors_b64 is not valid base64", code="invalid_tokens") from None
    dtype = np.dtype("<f4" if body.dtype == "float32" else "<f2")
    row = dtype.itemsize * token_dim
    if not raw or len(raw) % row:
        raise Invalid(
            f"{what}: vectors_b64 holds {len(raw)} bytes, not a whole number of {token_dim}-dim "
            f"{body.dtype} tokens ({row} bytes each)",
            code="wrong_dimension",
        )
    return np.frombuffer(raw, dtype).reshape(-1, token_dim).astype(np.float32)
