"""Retrieval metrics as BEIR/MTEB compute them (pytrec_eval's ndcg_cut and recall)."""

import math


def ndcg_at_k(run: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int = 10) -> float:
    """Mean nDCG@k over the queries in `qrels`; `run` maps query id → ranked doc ids."""
    total = 0.0
    for qid, relevant in qrels.items():
        ranked = run.get(qid, [])[:k]
        dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked))
        ideal = sorted(relevant.values(), reverse=True)[:k]
        idcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal))
        total += dcg / idcg if idcg > 0 else 0.0
    return total / len(qrels)


def recall_at_k(run: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int = 100) -> float:
    """Mean fraction of each query's relevant documents found in its top k."""
    total = 0.0
    for qid, relevant in qrels.items():
        hits = {doc for doc, rel in relevant.items() if rel > 0}
        total += len(hits & set(run.get(qid, [])[:k])) / len(hits) if hits else 0.0
    return total / len(qrels)


def overlap_at_k(found: list[list], truth: list[list], k: int) -> float:
    """Mean |found[:k] ∩ truth[:k]| / k: recall@k against an exact oracle."""
    return sum(len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)) / len(truth)
