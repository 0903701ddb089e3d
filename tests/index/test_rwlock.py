"""The graph lock: writers are not starved by searches, and a background read (a recall
re-run's, on a thread that may be paused or niced) never makes searches queue behind a writer."""

import threading

from index.rwlock import RWLock
from tests.support.waiting import wait_for


class _Holder(threading.Thread):
    """Takes the lock (`kind`: "read", "background" or "write"), records when, holds it until released."""

    def __init__(self, lock: RWLock, kind: str, log: list[str]):
        super().__init__(daemon=True)
        self.lock, self.kind, self.log = lock, kind, log
        self.acquired, self.release = threading.Event(), threading.Event()

    def run(self) -> None:
        held = self.lock.write() if self.kind == "write" else self.lock.read(background=self.kind == "background")
        with held:
            self.log.append(self.kind)
            self.acquired.set()
            self.release.wait(10)


def _start(lock: RWLock, kind: str, log: list[str]) -> _Holder:
    holder = _Holder(lock, kind, log)
    holder.start()
    return holder


def _writer_waiting_behind(lock: RWLock, kind: str, log: list[str]) -> tuple[_Holder, _Holder]:
    """A `kind` read that holds the lock, and a writer queued behind it."""
    holder = _start(lock, kind, log)
    assert holder.acquired.wait(10)
    writer = _start(lock, "write", log)
    assert wait_for(lambda: lock._waiting_writers == 1)
    return holder, writer


def test_a_waiting_writer_blocks_new_searches_and_goes_first():
    lock, log = RWLock(), []
    first, writer = _writer_waiting_behind(lock, "read", log)
    second = _start(lock, "read", log)
    assert not second.acquired.wait(0.2)  # queued behind the writer
    first.release.set()
    assert writer.acquired.wait(10)
    writer.release.set()
    assert second.acquired.wait(10)
    second.release.set()
    assert log == ["read", "write", "read"]


def test_searches_pass_a_writer_that_waits_for_a_background_read():
    lock, log = RWLock(), []
    background, writer = _writer_waiting_behind(lock, "background", log)
    search = _start(lock, "read", log)
    assert search.acquired.wait(10)  # not held up by the background read's writer
    another_background = _start(lock, "background", log)
    assert not another_background.acquired.wait(0.2)  # background reads never pass a waiting writer
    search.release.set()
    search.join(10)
    assert not writer.acquired.is_set()  # the background read still holds the lock
    background.release.set()
    assert writer.acquired.wait(10)  # and once it ends, the writer goes before later reads
    late_search = _start(lock, "read", log)
    assert not late_search.acquired.wait(0.2)
    writer.release.set()
    assert another_background.acquired.wait(10) and late_search.acquired.wait(10)
    another_background.release.set()
    late_search.release.set()
    assert log[:3] == ["background", "read", "write"]
    assert sorted(log[3:]) == ["background", "read"]
