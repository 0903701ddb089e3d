"""`Embedder`: the models, the inference thread they run on, and which model each collection uses.

Every model call goes through the one inference thread (`service/inference.py`). A collection's
encoder is attached when it is opened or created (on a shared backend: when first used); a
collection whose model cannot be loaded any more is marked unavailable for text (its vectors
still serve). `embed` is the one place that
turns texts into what a collection indexes: a vector per text for dense collections, a token
matrix per text for multi-vector ones.
"""

import asyncio
import time
import weakref
from typing import Any

import numpy as np

from index import CollectionBackend, Invalid, Manifest, NotReady
from service.cpu import CoreShare
from service.encoders import Encoder, EncoderLoader, EncoderRegistry, Kind, check_layers
from service.inference import EncodeStats, InferenceQueue
from service.metrics import Metrics
from service.request_kinds import request_kind
from service.settings import Settings


def check_encoder_info(manifest: Manifest) -> None:
    """A manifest's `encoder` as this service writes it (`ops/collections._encoder_info`), or
    Invalid: {model, dim, layers, and tokens or matryoshka_dims}. index/ keeps it opaque; a
    manifest restored from an uploaded archive is checked here before it serves."""
    info = manifest.encoder
    if info is None:
        return
    token_dim = manifest.multivector.token_dim if manifest.multivector is not None else None
    valid = (
        isinstance(info.get("model"), str)
        and bool(info["model"])
        and _positive_int(info.get("dim"))
        and info["dim"] == (token_dim or manifest.dim)
        and (info.get("layers") is None or _positive_int(info["layers"]))
        and isinstance(info.get("tokens", False), bool)
        and (
            info.get("matryoshka_dims") is None
            or (isinstance(info["matryoshka_dims"], list) and all(map(_positive_int, info["matryoshka_dims"])))
        )
    )
    if not valid:
        raise Invalid(
            f"collection {manifest.name!r}: its manifest's encoder {str(info)[:200]} is not "
            f"{{model, dim (the vectors' {token_dim or manifest.dim}), layers, ...}}",
            code="invalid_archive",
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class Embedder:
    def __init__(
        self, settings: Settings, metrics: Metrics, loader: EncoderLoader | None = None, cores: CoreShare | None = None
    ):
        self.metrics = metrics
        self.registry = EncoderRegistry(settings, loader)
        self.inference = InferenceQueue(
            settings.encode_queue_size,
            settings.encode_batch_size,
            self._on_batch,
            settings.torch_threads,
            settings.encode_queue_texts,
            settings.encode_batch_wait_ms / 1000,
            settings.background_call_ms / 1000,
            cores,
        )
        # A collection (a generation, during an upgrade) → its encoder; forgotten with the object.
        self._of: weakref.WeakKeyDictionary[CollectionBackend, Encoder] = weakref.WeakKeyDictionary()
        self._unavailable: dict[str, str] = {}  # collection name → why it cannot encode text

    def start(self) -> None:
        self.inference.start()

    def stop(self) -> None:
        self.inference.stop()

    # -- models -------------------------------------------------------------------------------
    async def load(self, model: str | None, expected_dim: int | None = None) -> Encoder:
        """The encoder of `model` (an alias or a directory; None: the default), loaded once."""
        ref = self.registry.resolve(model)
        encoder = await self.inference.call(lambda: self.registry.load(ref))
        if expected_dim is not None and encoder.dim != expected_dim:
            raise Invalid(
                f"model {ref.name!r} now produces {encoder.dim}-dim vectors but the collection holds "
                f"{expected_dim}-dim ones; restore the model or recreate the collection",
                code="model_mismatch",
            )
        return encoder

    def same_model(self, a: str, b: str) -> bool:
        """Whether two model names (aliases or directories) resolve to the same model."""
        ra, rb = self.registry.resolve(a), self.registry.resolve(b)
        return a == b or (ra.path, ra.runtime) == (rb.path, rb.runtime)

    # -- which collection uses which ----------------------------------------------------------
    def attach(self, collection: CollectionBackend, encoder: Encoder | None) -> None:
        if encoder is not None:
            self._of[collection] = encoder

    async def encoder_of(self, collection: CollectionBackend) -> Encoder | None:
        """The collection's encoder, loaded and attached on first use when its manifest names one
        that is not attached yet: a collection another replica created on a shared backend, or
        one opened at start-up. A model that cannot be loaded marks the collection unavailable
        for text (NotReady), its vectors still serve."""
        encoder = self.of(collection)
        info = collection.manifest.encoder
        if encoder is not None or info is None:
            return encoder
        try:
            check_encoder_info(collection.manifest)  # a restored archive's, say: never a KeyError at start-up
            encoder = await self.load(info["model"], info["dim"])
        except Invalid as exc:
            self.mark_unavailable(collection.name, exc.message)
            return self.of(collection)  # raises NotReady with the reason
        self.attach(collection, encoder)
        return encoder

    def mark_unavailable(self, name: str, reason: str) -> None:
        self._unavailable[name] = reason

    def forget(self, name: str) -> None:
        """A dropped collection's name may be reused by a new collection with a working model."""
        self._unavailable.pop(name, None)

    def of(self, collection: CollectionBackend) -> Encoder | None:
        """The collection's encoder; None for collections of vectors (or token matrices) only."""
        if collection.name in self._unavailable:
            raise NotReady(
                f"collection {collection.name!r} cannot encode text: {self._unavailable[collection.name]}",
                code="encoder_unavailable",
            )
        return self._of.get(collection)

    # -- encoding -----------------------------------------------------------------------------
    async def embed(
        self,
        label: str,
        encoder: Encoder,
        texts: list[str],
        kind: Kind,
        layers: int | None = None,
        tokens: bool = False,
        background: bool = False,
    ) -> Any:
        """`(n, dim)` vectors, or with `tokens` one `(n_i, dim)` token matrix per text, computed
        on the inference thread; `label` names the collection in the metrics. `background`
        work (upgrades) waits behind user requests, in short model calls."""
        if layers is not None:
            check_layers(encoder, layers)
        t0 = time.perf_counter()
        encode = self.inference.encode_tokens if tokens else self.inference.encode
        out = await encode(encoder, texts, kind, layers, background)
        self.metrics.stage_seconds.labels(label, "", "encode").observe(time.perf_counter() - t0)
        return out

    async def embed_for(
        self,
        collection: CollectionBackend,
        texts: list[str],
        kind: Kind,
        layers: int | None = None,
        encoder: Encoder | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """Texts as `collection` indexes them: vectors `(n, D)`, or token matrices for a
        multi-vector collection. `encoder` defaults to the collection's own; `layers` to its
        configured ones. Invalid when the collection has no model."""
        encoder = encoder or await self.encoder_of(collection)
        if encoder is None:
            raise Invalid(
                f"collection {collection.name!r} has no model: send {request_kind(collection).alternative}",
                code="vector_required",
            )
        info = collection.manifest.encoder or {}
        layers = layers or info.get("layers")
        return await self.embed(
            collection.name, encoder, texts, kind, layers, tokens=request_kind(collection).embeds_tokens
        )

    async def count_tokens(self, encoder: Encoder, texts: list[str]) -> int:
        """How many tokens the model reads of `texts` (on the encoder's tokenizer thread: the model
        thread does not wait for it)."""
        return await asyncio.to_thread(encoder.count_tokens, texts)

    def _on_batch(self, stats: EncodeStats) -> None:
        m = self.metrics
        m.encode_batch_texts.labels(stats.model).observe(stats.texts)
        m.encode_batch_requests.labels(stats.model).observe(stats.requests)
        m.encoded_texts.labels(stats.model).inc(stats.texts)
        for wait in stats.queue_wait_s:
            m.stage_seconds.labels("", "", "queue_wait").observe(wait)
        m.encode_queue_depth.set(self.inference.depth)
