"""A deterministic encoder without a model: for tests where the model is not the point.

Each word gets a fixed random unit vector (seeded by a hash of the word); a text's token
matrix is its words' vectors, and its vector the normalised mean of them. Texts that share
words are therefore near one another (a bag of words, not meaning): enough to test storage,
routing, validation and the API without torch. Same text, same vectors, in any batch and
process. Fewer `layers` add a fixed, text-dependent perturbation, so a shallower encoder
gives different but close vectors, as a real one does.
"""

import hashlib
import re
from collections.abc import Sequence

import numpy as np

WORD = re.compile(r"\w+")


def _unit(seed_text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


class FakeEncoder:
    """The `service.encoders.Encoder` interface, in numpy."""

    def __init__(self, name: str = "fake", dim: int = 384, num_layers: int = 6, max_chars: int = 1024):
        self.id = name
        self.path = f"fake:{name}"
        self.dim = dim
        self.num_layers = num_layers
        self.max_chars = max_chars
        self.matryoshka_dims: list[int] | None = None
        self.calls: list[int] = []  # texts per call, for tests that count model calls

    def _words(self, text: str) -> list[str]:
        return WORD.findall(text[: self.max_chars].lower()) or ["<empty>"]

    def _tokens(self, text: str, layers: int | None) -> np.ndarray:
        # A word's vector plus a little of its text's own direction, so that the same word in two
        # texts scores high but not identically (no ties), as contextual token embeddings do.
        context = 0.25 * _unit(f"context:{text}", self.dim)
        if layers is not None and layers < self.num_layers:
            context = context + 0.05 * (self.num_layers - layers) * _unit(f"{layers}:{text}", self.dim)
        T = np.stack([_unit(w, self.dim) for w in self._words(text)]) + context
        return (T / np.linalg.norm(T, axis=1, keepdims=True)).astype(np.float32)

    def encode(self, texts: Sequence[str], kind: str = "query", layers: int | None = None) -> np.ndarray:
        self.calls.append(len(texts))
        X = np.stack([self._tokens(t, layers).mean(axis=0) for t in texts]) if texts else np.zeros((0, self.dim))
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(X, dtype=np.float32)

    def encode_tokens(self, texts: Sequence[str], kind: str = "query", layers: int | None = None) -> list[np.ndarray]:
        self.calls.append(len(texts))
        return [self._tokens(t, layers) for t in texts]

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(self._words(t)) + 2 for t in texts)
