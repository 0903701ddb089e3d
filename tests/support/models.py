"""Local model directories for upgrade tests, derived from the bundled MiniLM (no download).

- `rotated_minilm`: MiniLM followed by a fixed Dense layer (a random orthogonal matrix, plus
  optional noise, to `out_dim` dims) and normalisation: a different model whose space a map can
  recover (exactly when the noise is 0 and the dims agree).
- `shallow_minilm`: MiniLM cut to its first `layers` transformer blocks, saved as its own
  model: a genuinely different (and much worse) encoder.
"""

import os

import numpy as np


def _bundled():
    from sentence_transformers import SentenceTransformer

    from service.encoders import _bundled_minilm_dir

    return SentenceTransformer(_bundled_minilm_dir(), device="cpu", local_files_only=True)


def rotated_minilm(path: str, seed: int = 0, noise: float = 0.0, out_dim: int = 384) -> str:
    import torch
    from sentence_transformers import SentenceTransformer, models

    if os.path.exists(os.path.join(path, "modules.json")):
        return path
    base = _bundled()
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((max(384, out_dim), min(384, out_dim)))
    Q, _ = np.linalg.qr(A)
    M = Q if out_dim >= 384 else Q.T  # (out_dim, 384) as torch Linear's weight: y = M x
    M = M.reshape(out_dim, 384) if M.shape == (out_dim, 384) else M.T
    M = M + noise * rng.standard_normal(M.shape) / np.sqrt(384)
    dense = models.Dense(384, out_dim, bias=False, activation_function=torch.nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(torch.tensor(M, dtype=torch.float32))
    model = SentenceTransformer(modules=[base[0], base[1], dense, models.Normalize()], device="cpu")
    model.save(path)
    return path


def shallow_minilm(path: str, layers: int) -> str:
    if os.path.exists(os.path.join(path, "modules.json")):
        return path
    model = _bundled()
    auto = model[0].auto_model
    auto.encoder.layer = auto.encoder.layer[:layers]
    auto.config.num_hidden_layers = layers
    model.save(path)
    return path
