import threading

import numpy as np

from service.tokenize_ahead import TokenizeAhead


def test_chunks_cover_every_text_longest_first_prepared_on_the_helper_thread():
    texts = ["a" * n for n in (3, 9, 1, 7, 5, 2, 8)]
    threads: list[str] = []

    def prepare(batch: list[str]) -> list[int]:
        threads.append(threading.current_thread().name)
        return [len(t) for t in batch]

    ahead = TokenizeAhead()
    chunks = list(ahead.chunks(texts, 3, prepare))
    assert [len(p) for p, _ in chunks] == [3, 3, 1]
    positions = np.concatenate([p for p, _ in chunks])
    assert sorted(positions.tolist()) == list(range(len(texts)))
    assert [n for _, lengths in chunks for n in lengths] == [9, 8, 7, 5, 3, 2, 1]
    for p, lengths in chunks:  # each result belongs to the positions it came with
        assert [len(texts[i]) for i in p] == lengths
    assert threads and all(name.startswith("vecnest-tokenize") for name in threads)
    ahead.close()


def test_the_next_chunk_is_prepared_while_the_caller_holds_this_one():
    prepared = threading.Event()
    calls = []

    def prepare(batch: list[str]) -> list[str]:
        calls.append(batch)
        if len(calls) == 2:
            prepared.set()
        return batch

    ahead = TokenizeAhead()
    chunks = ahead.chunks(["x"] * 4, 2, prepare)
    next(chunks)
    assert prepared.wait(timeout=30)  # the second chunk was prepared before the caller asked for it
    assert len(list(chunks)) == 1
    assert list(ahead.chunks([], 2, prepare)) == []
    ahead.close()
