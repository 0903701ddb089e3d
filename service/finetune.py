"""`vecnest finetune`: make any local sentence-transformers model truly Matryoshka.

Trains with `MatryoshkaLoss` (or `Matryoshka2dLoss`, which also trains shallow layers) around
in-batch-negatives ranking loss on (query, positive[, negative]) pairs, on the CPU, and writes
a model directory vecnest serves as is; its `vecnest.json` declares the trained dims so
collections truncate natively. Progress is printed every few steps; a checkpoint is written
every `--checkpoint-every` steps and `--resume` continues from it with the same data order.
"""

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT = ".checkpoint"


@dataclass
class FinetuneConfig:
    base: str  # model alias or directory
    pairs: str  # JSONL of {"query", "positive"[, "negative"]} (or "anchor"/"positive")
    out: str
    dims: list[int] = field(default_factory=lambda: [384, 256, 128, 64, 32])
    layers_2d: bool = False  # Matryoshka2dLoss: also train the first layers (2D Matryoshka)
    init: str = "pca"  # "pca": start from the model followed by its PCA rotation; "none": as is
    epochs: int = 2
    batch_size: int = 32
    lr: float = 3e-5
    warmup: float = 0.1
    max_seq_length: int = 256
    seed: int = 0
    checkpoint_every: int = 10
    progress_every: int = 1


def read_pairs(path: str) -> list[tuple[str, ...]]:
    """`(query, positive)` or `(query, positive, negative)` tuples from a JSONL file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                query = item.get("query", item.get("anchor"))
                positive = item["positive"]
            except (ValueError, KeyError, AttributeError) as exc:
                raise SystemExit(f"{path}:{n}: expected a JSON object with query and positive ({exc})") from None
            if not (isinstance(query, str) and query.strip() and isinstance(positive, str) and positive.strip()):
                raise SystemExit(f"{path}:{n}: query and positive must be non-empty strings")
            negative = item.get("negative")
            rows.append(
                (query, positive, negative) if isinstance(negative, str) and negative.strip() else (query, positive)
            )
    if len(rows) < 2:
        raise SystemExit(f"{path}: need at least 2 pairs, found {len(rows)}")
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise SystemExit(f"{path}: either every pair has a negative or none does")
    return rows


def batches(rows: list[tuple[str, ...]], size: int, seed: int) -> list[list[tuple[str, ...]]]:
    """Shuffled batches in which no text repeats: with in-batch negatives, a repeated positive
    would count as a negative of its own query."""
    order = rows[:]
    random.Random(seed).shuffle(order)
    out, pending = [], order
    while pending:
        batch, seen, rest = [], set(), []
        for row in pending:
            if len(batch) < size and not (set(row) & seen):
                batch.append(row)
                seen.update(row)
            else:
                rest.append(row)
        out.append(batch)
        pending = rest
    return [b for b in out if len(b) > 1]


def finetune(cfg: FinetuneConfig, resume: bool = False) -> Path:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        Matryoshka2dLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    from service.encoders import MODEL_CARD, EncoderRegistry
    from service.settings import Settings

    out, ckpt = Path(cfg.out), Path(cfg.out) / CHECKPOINT
    state_file = ckpt / "state.pt"
    if out.exists() and any(out.iterdir()) and not resume:
        raise SystemExit(f"{out} is not empty; pass --resume to continue a run, or choose another --out")
    if resume and not state_file.exists():
        raise SystemExit(f"nothing to resume: {state_file} does not exist")
    if resume:
        saved = json.loads((ckpt / "config.json").read_text())
        if saved != asdict(cfg):
            raise SystemExit(f"--resume needs the same settings as the interrupted run; it used {saved}")

    torch.manual_seed(cfg.seed)
    base = EncoderRegistry(Settings(allow_model_paths=True)).resolve(cfg.base)  # the operator names it
    model = SentenceTransformer(base.path, device="cpu", local_files_only=True, trust_remote_code=False)
    model.max_seq_length = cfg.max_seq_length
    rows = read_pairs(cfg.pairs)
    if cfg.init == "pca" and not resume:
        model = _with_pca_rotation(model, sorted({t for row in rows for t in row}), cfg.seed)
    elif cfg.init == "pca":
        model = _with_pca_rotation(model, None, cfg.seed)  # same shape; the checkpoint holds the weights
    dim = model.get_embedding_dimension()
    dims = sorted({d for d in cfg.dims if 0 < d <= dim} | {dim}, reverse=True)
    ranking = MultipleNegativesRankingLoss(model)
    loss = Matryoshka2dLoss(model, ranking, dims) if cfg.layers_2d else MatryoshkaLoss(model, ranking, dims)

    epochs = [batches(rows, cfg.batch_size, cfg.seed + e) for e in range(cfg.epochs)]
    total = sum(len(e) for e in epochs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    warmup = max(1, int(cfg.warmup * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    step = 0
    if resume:
        state = torch.load(state_file, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resuming at step {step}/{total}", flush=True)
    else:
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    print(
        f"fine-tuning {base.name} on {len(rows)} pairs: {cfg.epochs} epochs x {len(epochs[0])} batches of "
        f"{cfg.batch_size}, dims {dims}{', 2D (layers too)' if cfg.layers_2d else ''}",
        flush=True,
    )
    model.train()
    start, done_before, losses = time.monotonic(), step, []
    flat = [b for e in epochs for b in e]
    for batch in flat[step:]:
        features = [_features(model, [row[i] for row in batch]) for i in range(len(batch[0]))]
        value = loss(features, labels=None)
        optimizer.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        losses.append(float(value.detach()))
        if step % cfg.progress_every == 0 or step == total:
            rate = (time.monotonic() - start) / (step - done_before)
            print(
                f"step {step}/{total}  loss {np.mean(losses[-cfg.progress_every :]):.4f}  "
                f"lr {schedule.get_last_lr()[0]:.2e}  {rate:.1f} s/step  eta {rate * (total - step) / 60:.1f} min",
                flush=True,
            )
        if step % cfg.checkpoint_every == 0 and step < total:
            _checkpoint(state_file, model, optimizer, schedule, step)
    model.eval()
    _write_model(model, out)
    shutil.rmtree(ckpt, ignore_errors=True)
    (out / MODEL_CARD).write_text(
        json.dumps(
            {
                "matryoshka_dims": dims,
                "layers_2d": cfg.layers_2d,
                "init": cfg.init,
                "base_model": base.name,
                "trained_on": os.path.basename(cfg.pairs),
                "pairs": len(rows),
                "steps": total,
                "final_loss": round(float(np.mean(losses[-10:])), 5) if losses else None,
            },
            indent=2,
        )
    )
    print(
        f"wrote {out} (declared Matryoshka dims {dims}): serve it with model={out.resolve().name!r} and "
        f"VECNEST_MODEL_DIRS='{json.dumps([str(out.resolve().parent)])}', or as an alias in VECNEST_MODELS",
        flush=True,
    )
    return out


def _with_pca_rotation(model, texts: list[str] | None, seed: int):
    """The model followed by an orthogonal Dense layer holding the uncentred PCA rotation of its
    embeddings of `texts` (the training texts): the same space, but prefixes start out carrying
    the most energy, so Matryoshka training begins from the elasticizer's prefixes, not the
    model's arbitrary ones. With `texts=None` the layer starts as the identity (for --resume)."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    from index import fit_pca_rotation, sample_labels

    dim = model.get_embedding_dimension()
    if texts is None:
        R = np.eye(dim, dtype=np.float32)
    else:
        sample = [texts[i] for i in sample_labels(np.arange(len(texts)), 20000, seed)]
        print(f"fitting the PCA rotation on {len(sample)} training texts", flush=True)
        R = fit_pca_rotation(model.encode(sample, normalize_embeddings=True, batch_size=32)).rotation
    rotate = Dense(dim, dim, bias=False, activation_function=torch.nn.Identity(), init_weight=torch.tensor(R.T))
    modules = [m for m in model.children() if not isinstance(m, Normalize)]
    return SentenceTransformer(modules=[*modules, rotate, Normalize()], device="cpu")


def _features(model, texts: list[str]) -> dict:
    prepare = getattr(model, "preprocess", None) or model.tokenize
    return prepare(texts)


def _checkpoint(path: Path, model, optimizer, schedule, step: int) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def _write_model(model, out: Path) -> None:
    """Save next to the checkpoint folder, then move the files into `out`."""
    tmp = out / ".model-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    for entry in tmp.iterdir():
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    tmp.rmdir()


def main(args) -> int:
    cfg = FinetuneConfig(
        base=args.base,
        pairs=args.pairs,
        out=args.out,
        dims=[int(d) for d in args.dims.split(",")]
        if args.dims
        else FinetuneConfig.__dataclass_fields__["dims"].default_factory(),
        layers_2d=args.layers_2d,
        init=args.init,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_seq_length=args.max_seq_length,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    if cfg.batch_size < 2 or cfg.epochs < 1 or not math.isfinite(cfg.lr) or cfg.lr <= 0:
        print("vecnest finetune: batch size ≥ 2, epochs ≥ 1 and a positive learning rate are required", file=sys.stderr)
        return 2
    try:
        finetune(cfg, resume=args.resume)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(f"vecnest finetune: {exc.code}", file=sys.stderr)
            return 2
        raise
    return 0
