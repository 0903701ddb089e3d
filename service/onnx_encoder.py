"""`OnnxInt8Encoder`: a sentence-transformers model run by onnxruntime with int8 weights.

Chosen by naming the model with the runtime: `all-MiniLM-L6-v2@onnx-int8` (a collection's
`model`, or `default_model`). The first load exports the model's transformer to ONNX (torch's
exporter), quantises its weights to int8 (onnxruntime's dynamic quantisation: int8 weights per
output channel, activations quantised per batch), and keeps the result under `cache_dir`, keyed by the model's
files, so later loads (and restarts) only open it. Pooling and normalisation are the model's own,
read from its sentence-transformers configuration; models whose pipeline is anything but
transformer → pooling (mean, CLS or max) → optional normalisation are refused.

Quality is measured, not assumed: bench/beir.py --runtime onnx-int8 gives SciFact nDCG@10 beside
the float model (the issue's bar: within 0.005), and tests/e2e/test_quality.py asserts it.
No layer choice (the graph is fixed) and no token embeddings (multi-vector collections use torch).
"""

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from index import Invalid
from service.tokenize_ahead import TokenizeAhead

log = logging.getLogger(__name__)

RUNTIME = "onnx-int8"
_MODULES = {
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
    "sentence_transformers.base.modules.transformer.Transformer",
    "sentence_transformers.sentence_transformer.modules.Pooling",
    "sentence_transformers.sentence_transformer.modules.Normalize",
}


class OnnxInt8Encoder:
    """Call only from one thread (the inference thread), as every encoder."""

    num_layers = None  # the exported graph has a fixed depth
    gives_tokens = False  # one vector per text: no multi-vector collections

    def __init__(self, name: str, path: str, cache_dir: str, batch_size: int = 16, threads: int | None = None):
        import onnxruntime
        from tokenizers import Tokenizer

        from service.encoders import CHARS_PER_TOKEN, _declared_matryoshka_dims

        self.id, self.path = name, path
        modules = _read_json(path, "modules.json")
        kinds = [m.get("type", "") for m in modules]
        if not kinds or any(k not in _MODULES for k in kinds) or not kinds[0].endswith("Transformer"):
            raise Invalid(
                f"model {name!r}: the {RUNTIME} runtime runs transformer + pooling (+ normalize) models only; "
                f"this one has {', '.join(k.rsplit('.', 1)[-1] for k in kinds) or 'no modules.json'}",
                code="runtime_unsupported",
            )
        pooling_dir = next(m.get("path", "") for m in modules if m.get("type", "").endswith("Pooling"))
        pooling = _read_json(os.path.join(path, pooling_dir), "config.json")
        self._pooling = (
            "cls"
            if pooling.get("pooling_mode_cls_token")
            else "max"
            if pooling.get("pooling_mode_max_tokens")
            else "mean"
        )
        self._normalize = any(k.endswith("Normalize") for k in kinds)
        max_len = int(_read_json(path, "sentence_bert_config.json").get("max_seq_length") or 512)
        self.max_chars = CHARS_PER_TOKEN * max_len
        self._tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self._tokenizer.enable_truncation(max_len)
        self._tokenizer.no_padding()
        self._tokenize = TokenizeAhead()
        self._batch_size = batch_size
        self._between_passes: list[Callable[[], None]] = []  # see pause_points
        onnx_path = _int8_model(path, cache_dir)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dim = int(self.encode(["dimension probe"], "document").shape[1])
        self.matryoshka_dims = _declared_matryoshka_dims(path, self.dim)

    def encode(self, texts: Sequence[str], kind: str = "query", layers: int | None = None) -> np.ndarray:
        """`(n, dim)` float32 unit rows; texts of similar length run together (less padding)."""
        if layers is not None:
            raise Invalid(f"model {self.id!r} does not support choosing layers", code="invalid_layers")
        texts = [t[: self.max_chars] for t in texts]
        out = None
        for n, (positions, encodings) in enumerate(
            self._tokenize.chunks(texts, self._batch_size, self._tokenizer.encode_batch)
        ):
            if n:  # between two forward passes of this call
                for callback in list(self._between_passes):
                    callback()
            vectors = self._run(encodings)
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), np.float32)
            out[positions] = vectors
        return out if out is not None else np.zeros((0, self.dim), np.float32)

    @contextmanager
    def pause_points(self, callback: Callable[[], None]) -> Iterator[None]:
        """Calls `callback()` between the forward passes (of `batch_size` texts) of every call
        made meanwhile: ONNX Runtime runs a pass whole, so a long call's points where other calls
        may run, on this same thread, are between its passes. A call made from `callback` meets
        these points too: `callback` must return at once when re-entered."""
        self._between_passes.append(callback)
        try:
            yield
        finally:
            self._between_passes.remove(callback)

    def _run(self, encodings: list) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), np.int64)
        mask = np.zeros((len(encodings), width), np.int64)
        types = np.zeros((len(encodings), width), np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        (hidden,) = self._session.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in self._inputs})
        if self._pooling == "cls":
            pooled = hidden[:, 0]
        elif self._pooling == "max":
            pooled = np.where(mask[..., None] > 0, hidden, -np.inf).max(axis=1)
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        pooled = pooled.astype(np.float32)
        if self._normalize:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled

    def encode_tokens(self, texts: Sequence[str], kind: str = "query", layers: int | None = None) -> list[np.ndarray]:
        raise Invalid(
            f"model {self.id!r}: the {RUNTIME} runtime gives one vector per text; "
            f"multi-vector collections use the model without a runtime suffix",
            code="runtime_unsupported",
        )

    def count_tokens(self, texts: Sequence[str]) -> int:
        encodings = self._tokenize.run(self._tokenizer.encode_batch, [t[: self.max_chars] for t in texts])
        return sum(len(e.ids) for e in encodings)


def _read_json(path: str, name: str) -> dict | list:
    try:
        with open(os.path.join(path, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _model_key(path: str) -> str:
    """The model's identity: a digest of its configuration and weight files (size and head)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full) and (name.endswith((".json", ".txt", ".safetensors", ".bin"))):
            digest.update(name.encode() + str(os.path.getsize(full)).encode())
            with open(full, "rb") as f:
                digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def _int8_model(path: str, cache_dir: str) -> str:
    """The int8 ONNX file of the model at `path`: from the cache, or exported and quantised now."""
    name = f"{os.path.basename(os.path.normpath(path))}-{_model_key(path)}-int8-per-channel.onnx"
    target = os.path.join(cache_dir, name)
    if os.path.exists(target):
        return target
    os.makedirs(cache_dir, exist_ok=True)
    log.info("exporting %s to ONNX and quantising it to int8 (once; kept in %s)", path, cache_dir)
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        fp32 = os.path.join(work, "model.onnx")
        _export(path, fp32)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8 = os.path.join(work, "model-int8.onnx")
        # Per output channel: one scale per row of each weight matrix. Per tensor, embeddings of
        # gloss texts kept a mean cosine of 0.962 to the float model's; per channel, 0.994.
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
        os.replace(int8, target)  # atomic: a crash leaves no half-written model behind
    return target


def _export(path: str, out: str) -> None:
    import inspect

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False).eval()
    accepted = [
        n for n in ("input_ids", "attention_mask", "token_type_ids") if n in inspect.signature(model.forward).parameters
    ]

    class Hidden(torch.nn.Module):
        """The transformer with positional inputs and one output: what the graph needs."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(accepted, inputs)), return_dict=True).last_hidden_state

    example = tuple(
        torch.ones((2, 8), dtype=torch.long) if n != "token_type_ids" else torch.zeros((2, 8), dtype=torch.long)
        for n in accepted
    )
    axes = {n: {0: "batch", 1: "tokens"} for n in [*accepted, "last_hidden_state"]}
    with torch.inference_mode():
        torch.onnx.export(
            Hidden(),
            example,
            out,
            input_names=accepted,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
