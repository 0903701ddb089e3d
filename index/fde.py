"""MUVERA fixed-dimensional encodings (FDE): a token set → one vector whose inner products
approximate Chamfer (MaxSim) similarity. Spec: ../shared/design/algorithms.md §1.

For each repetition r the token space is cut by `simhash_bits` random hyperplanes into
B = 2^bits buckets; every token is projected to `projection_dim` dims (dense ±1/√d_proj, or
the identity) and added into its bucket's block. Query blocks SUM their tokens, document
blocks AVERAGE them, and an empty document block is filled with the projected token(s)
nearest to it in Hamming distance. ⟨F_q(Q), F_doc(P)⟩ / repetitions ≈ Σ_q max_p ⟨q, p⟩.
FDEs are not normalised: they live in an inner-product index.

Pure numpy and seeded. Each set is encoded on its own, vectorised over its tokens (no per-token
Python loops): an FDE is a function of its own token set, never of the batch it arrives in.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import numpy as np

from index.errors import Invalid

Side = Literal["query", "document"]
MAX_FDE_DIM = 65536  # hnswlib stores the vectors as floats; beyond this nothing fits anyway


@dataclass(frozen=True)
class MultiVectorConfig:
    """A multi-vector collection's frozen FDE parameters (and its per-document token limit).

    Output dim = repetitions · 2^simhash_bits · projection_dim (token_dim when
    projection_dim is None, the identity), or final_dim after a Count-Sketch.
    """

    # Bounds of the parameters: `check` enforces them, the API schema shows them.
    MAX_TOKEN_DIM: ClassVar[int] = 4096
    MAX_REPETITIONS: ClassVar[int] = 128
    MAX_SIMHASH_BITS: ClassVar[int] = 10
    MAX_TOKENS_LIMIT: ClassVar[int] = 8192  # the largest per-document token limit a collection may set

    token_dim: int
    repetitions: int = 20
    simhash_bits: int = 5
    projection_dim: int | None = 16
    final_dim: int | None = None
    seed: int = 42
    fill_empty: bool = True
    max_tokens: int = 512  # tokens per document or query; more is a 4xx

    @property
    def buckets(self) -> int:
        return 1 << self.simhash_bits

    @property
    def block_dim(self) -> int:
        return self.projection_dim or self.token_dim

    @property
    def raw_dim(self) -> int:
        return self.repetitions * self.buckets * self.block_dim

    @property
    def dim(self) -> int:
        return self.final_dim or self.raw_dim

    def check(self) -> "MultiVectorConfig":
        def bad(msg: str) -> Invalid:
            return Invalid(f"multivector: {msg}", code="invalid_multivector")

        if not 1 <= self.token_dim <= self.MAX_TOKEN_DIM:
            raise bad(f"token_dim {self.token_dim} must be in 1..{self.MAX_TOKEN_DIM}")
        if not 1 <= self.repetitions <= self.MAX_REPETITIONS:
            raise bad(f"repetitions {self.repetitions} must be in 1..{self.MAX_REPETITIONS}")
        if not 0 <= self.simhash_bits <= self.MAX_SIMHASH_BITS:
            raise bad(f"simhash_bits {self.simhash_bits} must be in 0..{self.MAX_SIMHASH_BITS}")
        if self.projection_dim is not None and not 1 <= self.projection_dim <= self.token_dim:
            raise bad(f"projection_dim {self.projection_dim} must be in 1..token_dim ({self.token_dim})")
        if self.final_dim is not None and not 1 <= self.final_dim < self.raw_dim:
            raise bad(f"final_dim {self.final_dim} must be below the raw FDE dim {self.raw_dim}")
        if self.dim > MAX_FDE_DIM:
            raise bad(
                f"the FDE would have {self.dim} dims; the limit is {MAX_FDE_DIM} (use final_dim or fewer "
                f"repetitions, bits or projection dims)"
            )
        if not 1 <= self.max_tokens <= self.MAX_TOKENS_LIMIT:
            raise bad(f"max_tokens {self.max_tokens} must be in 1..{self.MAX_TOKENS_LIMIT}")
        if self.seed < 0:
            raise bad("seed must be ≥ 0")
        return self

    def to_json(self) -> dict:
        return asdict(self)


class FdeEncoder:
    """Encodes token sets with one frozen `MultiVectorConfig`. Thread-safe (read-only state)."""

    def __init__(self, config: MultiVectorConfig):
        self.config = c = config.check()
        R, k, d, P = c.repetitions, c.simhash_bits, c.token_dim, c.block_dim
        # Independent streams per repetition and per matrix: (seed, r, 0) hyperplanes, (seed, r, 1) projection.
        rngs = [[np.random.default_rng(np.random.SeedSequence([c.seed, r, m])) for m in (0, 1)] for r in range(R)]
        # float32 values (as FDEs stored by earlier versions used), held in float64 for the sign test.
        planes = np.concatenate([g.standard_normal((d, k)) for g, _ in rngs], axis=1)
        self._hyperplanes = planes.astype(np.float32).astype(np.float64)
        if c.projection_dim is None:
            self._projection = None
        else:
            signs = [p.integers(0, 2, (d, P)) * 2 - 1 for _, p in rngs]
            self._projection = (np.concatenate(signs, axis=1) / np.sqrt(P)).astype(np.float32)  # (d, R·P)
        self._bit_weights = (1 << np.arange(k)).astype(np.int64)  # bucket id = Σ bit_j · 2^j
        ids = np.arange(c.buckets)
        self._hamming = np.array([[bin(a ^ b).count("1") for b in ids] for a in ids], np.int16)  # (B, B)
        if c.final_dim is not None:
            rng = np.random.default_rng(np.random.SeedSequence([c.seed, 1 << 20, 2]))
            slot = rng.integers(0, c.final_dim, c.raw_dim)
            self._sketch_order = np.argsort(slot, kind="stable")
            self._sketch_sign = (rng.integers(0, 2, c.raw_dim) * 2 - 1).astype(np.float32)[self._sketch_order]
            self._sketch_slots, self._sketch_starts = np.unique(slot[self._sketch_order], return_index=True)

    @property
    def dim(self) -> int:
        return self.config.dim

    # -- public -------------------------------------------------------------------------------
    def documents(self, token_sets: Sequence[np.ndarray]) -> np.ndarray:
        """`(n, dim)` float32 document FDEs (block averages, empty blocks filled if configured)."""
        return self.encode(token_sets, "document", self.config.fill_empty)

    def queries(self, token_sets: Sequence[np.ndarray]) -> np.ndarray:
        """`(n, dim)` float32 query FDEs (block sums, never filled)."""
        return self.encode(token_sets, "query", False)

    def encode(self, token_sets: Sequence[np.ndarray], side: Side, fill: bool) -> np.ndarray:
        """`(n, dim)` float32 FDEs of `n` token sets `(t_i, token_dim)`, each computed from its own set.

        Per set, not per batch: BLAS may round a product's last bit differently for another
        matrix shape, and one such bit can move a token lying on a SimHash hyperplane into the
        neighbouring bucket. Encoded alone, a document's FDE does not depend on the batch it
        arrived in, so recomputing it from its stored tokens gives the same vector on the same
        machine and libraries (another CPU or BLAS may differ in the last bits).
        """
        if side == "query" and fill:
            raise Invalid(
                "empty-bucket filling applies to documents only: a filled query would count tokens twice",
                code="invalid_multivector",
            )
        if any(len(t) == 0 for t in token_sets):
            raise Invalid("a token set is empty", code="empty_tokens")
        out = np.empty((len(token_sets), self.dim), np.float32)
        for i, tokens in enumerate(token_sets):
            X = np.asarray(tokens, np.float32).reshape(-1, self.config.token_dim)
            out[i] = self._final(self._encode_set(X, side, fill)[None, :])[0]
        return out

    def buckets(self, X: np.ndarray) -> np.ndarray:
        """`(n, repetitions)` bucket ids of tokens `X (n, token_dim)`: bit j of the id is 1 where
        the token lies on the positive side of hyperplane j. The signs are taken in float64,
        where a token would have to lie within ~1e-16 of a hyperplane for rounding to matter."""
        c = self.config
        side = np.asarray(X, np.float64) @ self._hyperplanes
        bits = side.reshape(len(X), c.repetitions, c.simhash_bits) > 0
        return bits @ self._bit_weights

    def hamming(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Hamming distance between the sign patterns of bucket ids `a` and `b`."""
        return self._hamming[a, b]

    # -- internals ----------------------------------------------------------------------------
    def _encode_set(self, X: np.ndarray, side: Side, fill: bool) -> np.ndarray:
        """`(raw_dim,)`: the blocks of one token set `X (T, token_dim)`, repetition-major."""
        c = self.config
        R, B, P = c.repetitions, c.buckets, c.block_dim
        buckets = self.buckets(X)  # (T, R)
        Y = self._project(X)  # (T, R, P)
        # Scatter-add every (token, repetition) row into its block: sort by block, sum runs in order.
        block = (np.arange(R) * B + buckets).ravel()  # (T·R,)
        order = np.argsort(block, kind="stable")
        used, first = np.unique(block[order], return_index=True)
        blocks = np.zeros((R * B, P), np.float32)
        blocks[used] = np.add.reduceat(Y.reshape(-1, P)[order], first, axis=0)
        if side == "document":
            counts = np.bincount(block, minlength=R * B)
            blocks[used] /= counts[used, None]
            if fill and len(used) < R * B:
                empty = counts == 0
                blocks[empty] = self._fill(Y, buckets)[empty]
        return blocks.ravel()

    def _project(self, X: np.ndarray) -> np.ndarray:
        c = self.config
        if self._projection is None:
            return np.broadcast_to(X[:, None, :], (len(X), c.repetitions, c.token_dim))
        return (X @ self._projection).reshape(len(X), c.repetitions, c.block_dim)

    def _fill(self, Y: np.ndarray, buckets: np.ndarray) -> np.ndarray:
        """`(R·B, P)`: for every block, the mean projection `Y (T, R, P)` of the set's tokens
        nearest to it in Hamming distance. Averaging ties (instead of taking the first) keeps
        the FDE independent of token order."""
        dist = self._hamming[buckets]  # (T, R, B)
        nearest = (dist == dist.min(axis=0, keepdims=True)).astype(np.float32)
        nearest /= nearest.sum(axis=0, keepdims=True)
        return np.einsum("trb,trp->rbp", nearest, Y).reshape(-1, Y.shape[2])

    def _final(self, raw: np.ndarray) -> np.ndarray:
        """Count-Sketch `(n, raw_dim)` → `(n, final_dim)`: each coordinate adds, signed, into one slot."""
        if self.config.final_dim is None:
            return raw
        out = np.zeros((len(raw), self.config.final_dim), np.float32)
        out[:, self._sketch_slots] = np.add.reduceat(
            raw[:, self._sketch_order] * self._sketch_sign, self._sketch_starts, axis=1
        )
        return out
