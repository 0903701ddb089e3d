"""Persisting the PCA rotation: fit on a sample of the store, save as a verified .npy file."""

import io
import logging
import os

import numpy as np

from index.elastic import PcaFit, pca_from_moment, sample_labels, second_moment
from index.files import npy_bytes, sha256_hex, write_atomic
from index.manifest import Manifest, Rotation
from index.store import Store
from index.vectorfile import VectorFile

log = logging.getLogger(__name__)


def fit_from_store(store: Store, vectors: VectorFile, sample: int, seed: int) -> PcaFit:
    """Fit on up to `sample` stored vectors (chosen with `seed`; sorted, so the fit is
    deterministic), streamed in chunks: memory stays O(D²) whatever the sample size. Raises
    `Invalid` on an empty store."""
    labels = sample_labels(store.live_labels(), sample, seed)
    return pca_from_moment(*second_moment(vectors.gather(labels[s : s + 8192])[1] for s in range(0, len(labels), 8192)))


def save_rotation(folder: str, fit: PcaFit, seed: int, seq: int, dims: list[int]) -> Rotation:
    """Write the fitted matrix as `rotation-<sha>.npy` (atomically) and return its manifest record."""
    data = npy_bytes(fit.rotation)
    digest = sha256_hex(data)
    name = f"rotation-{digest[:16]}.npy"
    write_atomic(os.path.join(folder, name), data)
    return Rotation(
        file=name,
        sha256=digest,
        seed=seed,
        n_fit=fit.n_fit,
        fitted_seq=seq,
        energy={str(d): round(fit.energy(d), 6) for d in dims},
    )


def load_rotation(folder: str, manifest: Manifest) -> np.ndarray | None:
    """The manifest's rotation matrix, or None when there is none or its file does not verify."""
    record = manifest.rotation
    if record is None:
        return None
    path = os.path.join(folder, record.file)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if sha256_hex(data) != record.sha256:
            raise ValueError("checksum mismatch")
        R = np.load(io.BytesIO(data))
        if R.shape != (manifest.dim, manifest.dim):
            raise ValueError(f"shape {R.shape}")
    except (OSError, ValueError) as exc:
        log.warning(
            "collection %s: rotation %s is unusable (%s); prefixes fall back to plain truncation "
            "until the rotation is fitted again",
            manifest.name,
            record.file,
            exc,
        )
        return None
    return np.ascontiguousarray(R, np.float32)
