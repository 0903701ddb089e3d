"""Embedding helpers for benchmarks: through vecnest's `/v1/embeddings`, cached under bench/out/cache."""

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

CACHE = Path(__file__).resolve().parent / "out" / "cache"


def embed_http(client: httpx.Client, texts: list[str], batch: int = 64, **options) -> np.ndarray:
    """`(n, d)` float32 via `POST /v1/embeddings` (base64 transport); `options`: model, layers, ..."""
    out = []
    for start in range(0, len(texts), batch):
        r = client.post(
            "/v1/embeddings",
            json={
                "input": texts[start : start + batch],
                "encoding_format": "base64",
                **{k: v for k, v in options.items() if v is not None},
            },
        )
        r.raise_for_status()
        out += [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]]
    return np.stack(out).astype(np.float32)


def cached(
    name: str, key: str, texts: list[str], compute: Callable[[list[str]], np.ndarray], aliases: tuple[str, ...] = ()
) -> np.ndarray:
    """`compute(texts)`, remembered on disk by `name`, `key` (the model and options) and the texts;
    `aliases`: older keys of the same values, read when the key's own file is missing."""

    def path_of(k: str) -> Path:
        digest = hashlib.sha256((k + "\x00" + "\x00".join(texts)).encode()).hexdigest()[:16]
        return CACHE / f"{name}-{digest}.npy"

    path = path_of(key)
    if path.exists():
        return np.load(path)
    for alias in aliases:
        if path_of(alias).exists():
            return np.load(path_of(alias))
    X = compute(texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, X)
    return X
