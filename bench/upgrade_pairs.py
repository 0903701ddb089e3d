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

Two more ways past a map that only imitates the old vectors:
  --labelled   a supervised query adapter: the linear map, started at the fitted one, trained on
               labelled SciFact *train* claims (all but the first 200, which `bench/upgrade.py`'s
               labelled gate reads) to rank each claim's relevant abstracts first among all 5,183
               old vectors (softmax cross-entropy, an L2 pull μ‖W − W₀‖² towards the fitted map).
               Printed beside the same adapter trained on the old model's own queries and the
               share of test claims citing an abstract a training claim cites: what an adapter
               learns from labels is partly which abstracts get cited, not compatibility.
  --ensemble   both models for each query: normalise(q_old + α·map(q_new)) over the old index.

Search is exact (brute force over the old model's 5,183 abstract vectors), so the figures
differ from `bench/upgrade.py`'s (HNSW) only by the graph's misses.

    python bench/upgrade_pairs.py [--new all-mpnet-base-v2] [--mlp] [--labelled] [--ensemble]
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
from tests.support.datasets import scifact_qrels
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
    parser.add_argument("--labelled", action="store_true", help="also train supervised query adapters")
    parser.add_argument("--ensemble", action="store_true", help="also score old + α·mapped new queries")
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
    if args.labelled or args.ensemble:
        labelled_and_ensemble(args, old, new, X_old, Q_old, Q_new, pair_sets["abstracts"], ndcg)
    return 0


GATE_CLAIMS = 200  # bench/upgrade.py's labelled gate reads the first 200 train claims


def fit_adapter(W0: np.ndarray, Q: np.ndarray, relevant: list[list[int]], X: np.ndarray, mu: float) -> np.ndarray:
    """`W (d_n, d_o)` started at `W0` and trained so that `normalise(Q W)` (`Q (n, d_n)`) ranks
    each query's `relevant` rows of `X (N, d_o)` first: full-softmax cross-entropy over all N
    rows (temperature 0.05, the target spread evenly over the relevant rows), plus
    `mu ‖W − W0‖²`. Adam, 200 full-batch steps, lr 1e-3 (seconds on two cores)."""
    import torch

    W = torch.tensor(W0, dtype=torch.float32, requires_grad=True)
    start = torch.tensor(W0, dtype=torch.float32)
    Xt, Qt = torch.tensor(X, dtype=torch.float32), torch.tensor(Q, dtype=torch.float32)
    target = torch.zeros(len(Qt), len(Xt))
    for i, rows in enumerate(relevant):
        target[i, rows] = 1.0 / len(rows)
    opt = torch.optim.Adam([W], lr=1e-3)
    for _ in range(200):
        logits = torch.nn.functional.normalize(Qt @ W, dim=1) @ Xt.T / 0.05
        loss = -(target * torch.log_softmax(logits, 1)).sum(1).mean() + mu * ((W - start) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return W.detach().numpy()


def labelled_and_ensemble(args, old, new, X_old, Q_old, Q_new, abstract_pairs, ndcg) -> None:
    """The `--labelled` and `--ensemble` tables (see the module docstring): SciFact test nDCG@10
    and, beside it, nDCG@10 on the gate's 200 labelled train claims (never trained on)."""
    _, ids, _, qrels, queries, qids, _ = scifact_test()
    train = scifact_qrels("train")
    tq = [q for q in train if q in queries]
    T_old = embedded("upgrade-queries", old, [queries[q] for q in tq], "query")
    T_new = embedded("upgrade-queries", new, [queries[q] for q in tq], "query")
    row = {d: j for j, d in enumerate(ids)}
    gate_ids, fit = tq[:GATE_CLAIMS], [i for i in range(GATE_CLAIMS, len(tq)) if any(d in row for d in train[tq[i]])]
    relevant = [[row[d] for d in train[tq[i]] if d in row] for i in fit]

    def ndcg_of(Q: np.ndarray, claims: list[str], labels: dict) -> float:
        top = exact_top_k(normalize(Q), [(np.arange(len(ids)), X_old)], 10, "cosine").labels
        return ndcg_at_k({q: [ids[j] for j in r] for q, r in zip(claims, top)}, {q: labels[q] for q in claims}, 10)

    def gate(Q: np.ndarray) -> float:
        return ndcg_of(Q, gate_ids, train)

    print(f"\nold→old: test {ndcg(Q_old):.4f}, gate claims {gate(T_old[:GATE_CLAIMS]):.4f}")
    maps = {kind: fit_map_kind(kind, *abstract_pairs) for kind in MAP_FAMILIES}
    if args.labelled:
        cited = {d for i in fit for d in train[tq[i]]}
        fresh = [k for k, q in enumerate(qids) if not any(d in cited for d in qrels[q])]

        def uncited(Q: np.ndarray) -> float:
            return ndcg_of(Q[fresh], [qids[k] for k in fresh], qrels)

        print(
            f"\nsupervised adapters, trained on {len(fit)} train claims; {len(fresh)} of the {len(qids)} test claims"
            "\ncite no abstract a training claim cites ('uncited')\n"
        )
        print("| adapter | μ | test nDCG@10 | uncited test | gate claims |\n|---|---|---|---|---|")
        print(f"| none: old→old | | {ndcg(Q_old):.4f} | {uncited(Q_old):.4f} | {gate(T_old[:GATE_CLAIMS]):.4f} |")
        for kind in ("orthogonal", "ridge"):
            for mu in (None, 1.0, 0.1, 0.01):
                W = maps[kind] if mu is None else fit_adapter(maps[kind], T_new[fit], relevant, X_old, mu)
                name = f"the {kind} map alone" if mu is None else f"new→old, from the {kind} map"
                print(
                    f"| {name} | {'' if mu is None else mu} | {ndcg(map_queries(Q_new, W)):.4f} | "
                    f"{uncited(map_queries(Q_new, W)):.4f} | {gate(map_queries(T_new[:GATE_CLAIMS], W)):.4f} |"
                )
        identity = np.eye(X_old.shape[1], dtype=np.float32)
        for mu in (0.1, 0.01):
            W = fit_adapter(identity, T_old[fit], relevant, X_old, mu)
            print(
                f"| old→old, from the identity | {mu} | {ndcg(Q_old @ W):.4f} | {uncited(Q_old @ W):.4f} | "
                f"{gate(T_old[:GATE_CLAIMS] @ W):.4f} |"
            )
    if args.ensemble:
        print("\nboth models per query, normalise(q_old + α·map(q_new)), test / gate claims nDCG@10\n")
        alphas = (0.25, 0.5, 0.75, 1.0)
        print("| map | " + " | ".join(f"α={a}" for a in alphas) + " |\n|---|" + "---|" * len(alphas))
        for kind, W in maps.items():
            cells = [
                f"{ndcg(normalize(Q_old) + a * map_queries(Q_new, W)):.4f} / "
                f"{gate(normalize(T_old[:GATE_CLAIMS]) + a * map_queries(T_new[:GATE_CLAIMS], W)):.4f}"
                for a in alphas
            ]
            print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
