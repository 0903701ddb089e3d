"""`POST /v1/embeddings` in the OpenAI request/response shape."""

import base64

from fastapi import APIRouter, Depends, Request

from service import schemas
from service.auth import require_collection
from service.engine import Engine
from service.ops.embeddings import embed
from service.routes import ERRORS, JsonRoute, get_engine

router = APIRouter(prefix="/v1", tags=["embeddings"], responses=ERRORS, route_class=JsonRoute)


@router.post("/embeddings", response_model=schemas.EmbeddingsResponse, response_model_exclude_none=True)
async def create_embeddings(request: Request, body: schemas.EmbeddingsRequest, engine: Engine = Depends(get_engine)):
    """Embed `input` (a string or a list of strings) with `model` (default: the server's
    default model). `encoding_format="base64"` returns little-endian float32 bytes, as the
    OpenAI clients expect; `dimensions` truncates and re-normalises (in the rotated space of
    `collection`, when given, so the vectors match its Matryoshka indexes)."""
    if body.collection is not None:
        require_collection(request, body.collection)
    X, model, tokens, truncated = await embed(engine, body)
    if body.encoding_format == "base64":
        data = [base64.b64encode(x.astype("<f4").tobytes()).decode() for x in X]
    else:
        data = X.tolist()
    return schemas.EmbeddingsResponse(
        data=[schemas.Embedding(index=i, embedding=e) for i, e in enumerate(data)],
        model=model,
        usage=schemas.Usage(prompt_tokens=tokens, total_tokens=tokens),
        truncated=truncated or None,
    )
