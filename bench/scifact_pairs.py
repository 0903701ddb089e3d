"""Training pairs for `vecnest finetune` from SciFact's TRAIN split (never the test split).

    python bench/scifact_pairs.py --out bench/out/scifact-train-pairs.jsonl

Each line pairs a train claim with an abstract it cites: {"query", "positive"}.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.datasets import scifact_corpus, scifact_qrels, scifact_queries, scifact_text


def pairs() -> list[dict]:
    corpus = {d["_id"]: d for d in scifact_corpus()}
    queries = scifact_queries()
    train, test = scifact_qrels("train"), scifact_qrels("test")
    assert not set(train) & set(test), "train and test claims overlap"
    return [
        {"query": queries[q], "positive": scifact_text(corpus[d])}
        for q, rels in sorted(train.items())
        for d, rel in rels.items()
        if rel > 0 and d in corpus
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/out/scifact-train-pairs.jsonl")
    args = parser.parse_args()
    rows = pairs()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} train pairs to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
