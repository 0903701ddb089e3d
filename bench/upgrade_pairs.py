"""Which pairs should an upgrade's map be fitted on? SciFact new→old nDCG@10 of each map family
fitted on three sets of (new, old) embedding pairs drawn from the same 1,600 sampled abstracts
that `bench/upgrade.py` fits on:

  abstracts            one pair per abstract (what the server fits on)
  sentences            one pair per title and per sentence of those abstracts (query-sized texts:
                       SciFact's queries are one-sentence claims, the abstracts ~250 tokens)
  abstracts+sentences  both

and, with `--mlp`, a non-linear map beside the linear families: a one-hidden-layer MLP
(d_n → 1024 → d_o, GELU) trained on abstracts+sentences to maximise the cosine with the old
vector (AdamW, 60 epochs, seeded; a few minutes on two cores).

Search is exact (brute force over the old model's 5,183 abstract vectors), so the figures
differ from `bench/upgrade.py`'s (HNSW) only by the graph's misses.

    python bench/upgrade_pairs.py [--new all-mpnet-base-v2] [--mlp]
"""

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.upgrade import MAP_FAMILIES, embedded, load_encoder, scifact_test
from index import upgrades
from index.exact import exact_top_k
from index.procrustes import fit_map_kind, map_queries
from index.vectors import normalize
from tests.support.evaluate import ndcg_at_k

MIN_WORDS = 4  # shorter fragments ("et al.", numbered headings) are not sentences


def sentences_of(doc: dict) -> list[str]:
    """The title and each sentence of the abstract with at least MIN_WORDS words."""
    parts = re.split(r"(?<=[.!?])\s+", doc["text"])
    return ([doc["title"]] if doc.get("title") else []) + [s for s in parts if len(s.split()) >= MIN_WORDS]


def fit_mlp(P_new: np.ndarray, P_old: np.ndarray, hidden: int = 1024, epochs: int = 60, seed: int = 0):
    """A map `(n, d_n) → (n, d_o)` as a function: an MLP trained on the pairs `P_new (N, d_n)`,
    `P_old (N, d_o)` (unit rows) to maximise the cosine of its output with the old vector."""
    import torch

    torch.manual_seed(seed)
    X, Y = torch.tensor(P_new, dtype=torch.float32), torch.tensor(P_old, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, Y.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        order = torch.randperm(len(X))
        for start in range(0, len(X), 256):
            batch = order[start : start + 256]
            out = torch.nn.functional.normalize(net(X[batch]), dim=1)
            loss = (1 - (out * Y[batch]).sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def apply(Q: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return normalize(net(torch.tensor(Q, dtype=torch.float32)).numpy())

    return apply


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new", default="all-mpnet-base-v2")
    parser.add_argument("--sample", type=int, default=2000, help="as bench/upgrade.py: 80%% of it is fitted on")
    parser.add_argument("--mlp", action="store_true", help="also train a one-hidden-layer MLP map")
    args = parser.parse_args()

    corpus, ids, texts, qrels, _, qids, qtexts = scifact_test()
    # the same draw as bench/upgrade.py's quality(): its fit rows are these
    rows = np.random.default_rng(0).permutation(len(ids))[: min(args.sample, len(ids))]
    fit_rows, _ = (rows[part] for part in upgrades.split_sample(len(rows), 0.2, 0))
    sentences = [s for i in fit_rows for s in sentences_of(corpus[i])]

    old, new = load_encoder(None), load_encoder(args.new)
    X_old = normalize(embedded("upgrade-corpus", old, texts, "document"))  # (5183, d_o)
    Q_old = embedded("upgrade-queries", old, qtexts, "query")  # (300, d_o)
    Q_new = embedded("upgrade-queries", new, qtexts, "query")  # (300, d_n)
    A_new = embedded("pairs-abstracts", new, [texts[i] for i in fit_rows], "document")
    A_old = X_old[fit_rows]
    S_new = embedded("pairs-sentences", new, sentences, "document")
    S_old = embedded("pairs-sentences", old, sentences, "document")

    def ndcg(Q: np.ndarray) -> float:
        top = exact_top_k(normalize(Q), [(np.arange(len(ids)), X_old)], 10, "cosine").labels
        return ndcg_at_k({q: [ids[j] for j in r] for q, r in zip(qids, top)}, qrels, 10)

    pair_sets = {
        "abstracts": (A_new, A_old),
        "sentences": (S_new, S_old),
        "abstracts+sentences": (np.vstack([A_new, S_new]), np.vstack([A_old, S_old])),
    }
    print(f"\nold→old (the bar) nDCG@10 {ndcg(Q_old):.4f}\n")
    print("| fitted on | pairs | " + " | ".join(f"new→old, {k}" for k in MAP_FAMILIES) + " |")
    print("|---|---|" + "---|" * len(MAP_FAMILIES))
    for name, (P_new, P_old) in pair_sets.items():
        scores = [ndcg(map_queries(Q_new, fit_map_kind(kind, P_new, P_old))) for kind in MAP_FAMILIES]
        print(f"| {name} | {len(P_new):,} | " + " | ".join(f"{s:.4f}" for s in scores) + " |")
    if args.mlp:
        P_new, P_old = pair_sets["abstracts+sentences"]
        mapped = fit_mlp(P_new, P_old)(Q_new)
        cosine = float(np.einsum("ij,ij->i", mapped, normalize(Q_old)).mean())
        print(
            f"\nMLP map (abstracts+sentences, {len(P_new):,} pairs): new→old nDCG@10 {ndcg(mapped):.4f}, "
            f"mean cosine of mapped and old test queries {cosine:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
