"""`vecnest finetune`: input checks, batches without repeats, a real (tiny) CPU run, resume, 2D."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service.encoders import EncoderRegistry
from service.finetune import batches, read_pairs
from service.settings import Settings
from tests.support.datasets import wordnet_glosses

SCRIPT = Path(sys.executable).parent / "vecnest"


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """48 (lemma, gloss) pairs from WordNet: a real, tiny retrieval task."""
    rows = wordnet_glosses()[5000:5048]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"query": lemmas, "positive": gloss}) for _, _, lemmas, gloss in rows) + "\n")
    return path


def test_read_pairs_rejects_bad_files(tmp_path):
    cases = {
        "not json\n": "expected a JSON object",
        '{"query": "q"}\n{"query": "r", "positive": "s"}\n': "expected a JSON object",
        '{"query": " ", "positive": "p"}\n{"query": "r", "positive": "s"}\n': "non-empty",
        '{"query": "q", "positive": "p"}\n': "at least 2 pairs",
        '{"query": "q", "positive": "p", "negative": "n"}\n{"query": "r", "positive": "s"}\n': (
            "every pair has a negative"
        ),
    }
    for text, message in cases.items():
        path = tmp_path / "p.jsonl"
        path.write_text(text)
        with pytest.raises(SystemExit) as err:
            read_pairs(str(path))
        assert message in str(err.value.code)


def test_batches_never_repeat_a_text_and_keep_every_pair():
    rows = [(f"q{i}", f"doc{i % 7}") for i in range(40)]  # many queries cite the same 7 documents
    out = batches(rows, 8, seed=3)
    for batch in out:
        texts = [t for row in batch for t in row]
        assert len(texts) == len(set(texts))
    kept = [row for batch in out for row in batch]
    assert len(kept) == len(set(kept)) and set(kept) <= set(rows) and len(kept) >= 40 - 7


def run_finetune(*args, timeout=600):
    return subprocess.run(
        [str(SCRIPT), "finetune", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


TINY = ["--epochs", "1", "--batch-size", "8", "--max-seq-length", "32", "--dims", "384,64"]


def test_a_tiny_run_writes_a_servable_matryoshka_model(pairs_file, tmp_path):
    out = tmp_path / "model"
    r = run_finetune("--pairs", pairs_file, "--out", out, *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 6/6" in r.stdout and "eta" in r.stdout  # progress for every step
    card = json.loads((out / "vecnest.json").read_text())
    assert card["matryoshka_dims"] == [384, 64] and card["init"] == "pca" and card["pairs"] == 48
    assert not (out / ".checkpoint").exists()
    registry = EncoderRegistry(Settings(allow_model_paths=True))
    encoder = registry.load(registry.resolve(str(out)))
    assert encoder.matryoshka_dims == [64, 384] and encoder.dim == 384
    X = encoder.encode(["a domesticated carnivorous mammal", "a musical instrument"], "document")
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    again = run_finetune("--pairs", pairs_file, "--out", out, *TINY)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_resume_after_a_kill(pairs_file, tmp_path):
    out = tmp_path / "resumable"
    args = [
        "--pairs",
        pairs_file,
        "--out",
        out,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-seq-length",
        "24",
        "--dims",
        "384,64",
        "--checkpoint-every",
        "1",
        "--init",
        "none",
    ]
    proc = subprocess.Popen(
        [str(SCRIPT), "finetune", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    state = out / ".checkpoint" / "state.pt"
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run finished before a checkpoint could be interrupted"
    changed = run_finetune(*args[:-2], "--init", "pca", "--resume")
    assert changed.returncode == 2 and "same settings" in changed.stderr
    resumed = run_finetune(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step" in resumed.stdout and "step 12/12" in resumed.stdout
    assert json.loads((out / "vecnest.json").read_text())["steps"] == 12
    fresh = run_finetune("--pairs", pairs_file, "--out", tmp_path / "none", "--resume", *TINY)
    assert fresh.returncode == 2 and "nothing to resume" in fresh.stderr


def test_2d_training_runs(pairs_file, tmp_path):
    out = tmp_path / "two-d"
    r = run_finetune("--pairs", pairs_file, "--out", out, "--2d", *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "vecnest.json").read_text())["layers_2d"] is True
    registry = EncoderRegistry(Settings(allow_model_paths=True))
    encoder = registry.load(registry.resolve(str(out)))
    assert encoder.encode(["a test"], "query", layers=2).shape == (1, 384)
