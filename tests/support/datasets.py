"""Readers for the shared evaluation data, read in place from ../shared/data (never copied).

Set VECNEST_SHARED_DATA to read it from elsewhere.
"""

import csv
import gzip
import json
import os
from functools import cache
from pathlib import Path

import numpy as np

SHARED_DATA = Path(os.environ.get("VECNEST_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")


def shared_path(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the shared data must sit at ../shared/data "
            f"beside the repository (or set VECNEST_SHARED_DATA)"
        )
    return path


def _jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@cache
def scifact_corpus() -> tuple[dict, ...]:
    """5,183 abstracts: dicts with `_id`, `title`, `text`."""
    return tuple(_jsonl(shared_path("scifact", "corpus.jsonl.gz")))


def scifact_text(doc: dict) -> str:
    """The text MTEB embeds for a BEIR document: title and body joined by a space."""
    return f"{doc.get('title', '')} {doc['text']}".strip()


@cache
def scifact_queries() -> dict[str, str]:
    return {q["_id"]: q["text"] for q in _jsonl(shared_path("scifact", "queries.jsonl.gz"))}


@cache
def scifact_qrels(split: str = "test") -> dict[str, dict[str, int]]:
    """query id → {corpus id: relevance}."""
    qrels: dict[str, dict[str, int]] = {}
    with gzip.open(shared_path("scifact", "qrels", f"{split}.tsv.gz"), "rt") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


@cache
def wordnet_glosses() -> tuple[tuple[str, str, str, str], ...]:
    """117,659 `(synset_id, pos, lemmas, gloss)` rows of WordNet 3.0."""
    with gzip.open(shared_path("wordnet", "wordnet_glosses.tsv.gz"), "rt", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return tuple((r[0], r[1], r[2], r[3]) for r in reader if len(r) >= 4)


def read_vecs(path: Path, dtype: str) -> np.ndarray:
    """Read a gzipped .fvecs/.ivecs file (each row: int32 dim, then dim values)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dim = int(np.frombuffer(raw[:4], "<i4")[0])
    rows = np.frombuffer(raw, "<i4" if dtype == "int32" else "<f4").reshape(-1, dim + 1)
    return np.ascontiguousarray(rows[:, 1:]).view("<i4" if dtype == "int32" else "<f4")
