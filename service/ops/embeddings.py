"""`/v1/embeddings`: the OpenAI request/response shape, with Matryoshka `dimensions`."""

import numpy as np

from index import DimView, Invalid
from service import schemas
from service.engine import Engine
from service.ops.limits import check_count, check_texts
from service.request_kinds import request_kind


async def embed(engine: Engine, req: schemas.EmbeddingsRequest) -> tuple[np.ndarray, str, int, list[int]]:
    """`(vectors (n, d), model name, prompt tokens, indexes of inputs the model read only the start of)`.

    With `collection`, texts are embedded as that collection embeds documents (model, layers)
    and `dimensions` truncates its rotated space, so the vectors match its low-dim indexes.
    """
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts:
        raise Invalid("input must not be empty", code="empty_input")
    check_count(len(texts), engine.settings.max_batch_documents, "inputs", "too_many_inputs")
    if any(not t.strip() for t in texts):
        raise Invalid("input contains an empty string", code="empty_text")
    check_texts(engine.settings, ((f"input {i}", t) for i, t in enumerate(texts)))
    rotation, layers, label = None, req.layers, ""
    if req.collection is not None:
        collection = await engine.current(req.collection)
        if request_kind(collection).embeds_tokens:
            raise Invalid(
                f"collection {req.collection!r} embeds every token (multi-vector); /v1/embeddings returns "
                f"one vector per input",
                code="multivector_collection",
            )
        encoder = await engine.embedder.encoder_of(collection.backend)
        if encoder is None:
            raise Invalid(f"collection {req.collection!r} has no model", code="vector_required")
        info = collection.manifest.encoder or {}
        if req.model is not None and req.model != info["model"]:
            raise Invalid(
                f"collection {req.collection!r} uses model {info['model']!r}, not {req.model!r}",
                code="unknown_model",
            )
        model, rotation, label = info["model"], collection.rotation, collection.name
        layers = layers or info.get("layers")
    else:
        model = req.model or engine.settings.default_model
        encoder = await engine.embedder.load(model)
    if req.dimensions is not None and req.dimensions > encoder.dim:
        raise Invalid(f"dimensions={req.dimensions} exceeds the model's {encoder.dim}", code="invalid_dimensions")
    X = await engine.embedder.embed(label, encoder, texts, "document", layers)
    if req.dimensions is not None and req.dimensions < encoder.dim:
        X = DimView(req.dimensions, encoder.dim, "cosine", rotation).apply(X)  # rotate, truncate, re-normalise
    tokens = await engine.embedder.count_tokens(encoder, texts)
    return X, model, tokens, [i for i, t in enumerate(texts) if len(t) > encoder.max_chars]
