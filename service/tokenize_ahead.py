"""Tokenising off the model thread: the next chunk's tokens are made while the model runs this one.

A model call runs its texts in chunks of `batch_size` (longest first: similar lengths pad
less). Tokenising a chunk is a few percent of its forward pass (MiniLM, 16 glosses: 2.8 ms of
163 ms here), and on the model thread it would be that much time the cores wait. Fast
tokenizers release the GIL while they work, and torch does while it computes, so one helper
thread per encoder overlaps the two.

Every use of an encoder's tokenizer goes through its one helper thread (`run`): Hugging Face's
fast tokenizers are not safe to call from two threads at once (they reconfigure padding and
truncation on each call; "Already borrowed").
"""

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


class TokenizeAhead:
    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vecnest-tokenize")

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the tokenizer thread (anything else that touches the tokenizer)."""
        return self._thread.submit(fn, *args).result()

    def chunks(
        self, texts: Sequence[str], batch_size: int, prepare: Callable[[list[str]], T]
    ) -> Iterator[tuple[np.ndarray, T]]:
        """`(positions, prepare(those texts))` per chunk of at most `batch_size` texts, longest
        texts first (by characters); the next chunk is prepared while the caller uses this one.
        `positions` index `texts`: the caller puts each chunk's results back in place."""
        order = np.argsort([-len(t) for t in texts], kind="stable")
        parts = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        if not parts:
            return
        ahead: Future = self._thread.submit(prepare, [texts[i] for i in parts[0]])
        for k, positions in enumerate(parts):
            prepared = ahead.result()
            if k + 1 < len(parts):
                ahead = self._thread.submit(prepare, [texts[i] for i in parts[k + 1]])
            yield positions, prepared

    def close(self) -> None:
        self._thread.shutdown(wait=False)
