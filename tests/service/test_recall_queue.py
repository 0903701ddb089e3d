"""The recall estimator's queue gathers sampled searches into one exact pass."""

import threading

from service.recall_estimator import FreshestFirst


def _take_in_background(queue: FreshestFirst, **gathering) -> tuple[threading.Thread, list]:
    taken: list = []
    thread = threading.Thread(target=lambda: taken.append(queue.take(10, **gathering)))
    thread.start()
    return thread, taken


def test_the_worker_waits_until_enough_samples_share_a_pass():
    queue = FreshestFirst(64)
    thread, taken = _take_in_background(queue, gather=3, gather_s=3600)
    queue.put("a")
    queue.put("b")
    thread.join(0.3)
    assert thread.is_alive() and not taken  # two of three, and the oldest is young
    queue.put("c")
    thread.join(30)
    assert taken == [["c", "b", "a"]]  # newest first


def test_a_sample_waits_no_longer_than_the_gathering_time():
    now = [0.0]
    queue = FreshestFirst(64, clock=lambda: now[0])
    queue.put("a")
    now[0] = 0.5
    queue.put("b")
    now[0] = 1.0  # the oldest has waited its second
    assert queue.take(10, gather=32, gather_s=1.0) == ["b", "a"]


def test_waiting_for_the_queue_to_drain_takes_what_is_there_at_once():
    queue = FreshestFirst(64)
    queue.put("a")
    thread, taken = _take_in_background(queue, gather=32, gather_s=3600)
    assert not queue.join(0.2)  # nothing marks "a" done here; but the join let the worker take it
    thread.join(30)
    assert taken == [["a"]]
    queue.done(1)
    assert queue.join(5)


def test_a_closed_queue_stops_a_gathering_worker():
    queue = FreshestFirst(64)
    queue.put("a")
    thread, taken = _take_in_background(queue, gather=32, gather_s=3600)
    queue.close()
    thread.join(30)
    assert taken == [None]


def test_a_pass_takes_the_newest_items_up_to_a_weight():
    """Weighted by queries: a sampled batch search counts for its queries, so one pass never
    grows to 64 batch searches; an item heavier than a pass still goes, alone."""
    queue = FreshestFirst(64, weight=len)
    for item in ("a", "bbbbb", "cc", "ddd"):
        queue.put(item)
    assert queue.take(6) == ["ddd", "cc"]  # "bbbbb" would make 10
    assert queue.take(4) == ["bbbbb"]
    queue.put("eeeeeeee")
    assert queue.take(4) == ["eeeeeeee"]
    assert queue.take(4) == ["a"]
