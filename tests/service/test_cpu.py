"""FreeCores: torch's threads follow the cores other processes leave free; CoreShare: and the
cores this process's background work takes."""

import os
import threading

from service.cpu import CoreShare, FreeCores


def test_threads_follow_what_other_processes_use():
    tick = os.sysconf("SC_CLK_TCK")
    now, machine, own = [0.0], [0], [0]
    cores = FreeCores(every_s=1.0, cores=2, clock=lambda: now[0], read=lambda: (machine[0], own[0]))

    def second(others: float, mine: float) -> int:
        now[0] += 1.0
        machine[0] += int((others + mine) * tick)
        own[0] += int(mine * tick)
        return cores.threads(2)

    assert cores.threads(2) == 2  # nothing measured yet: every core
    assert second(others=0.1, mine=1.8) == 2  # our own load never counts against us
    assert second(others=1.0, mine=0.9) == 1  # a busy neighbour takes a core
    assert cores.free() == 1.0
    assert second(others=1.9, mine=0.1) == 1  # never fewer than one
    assert second(others=0.2, mine=1.0) == 2  # the neighbour left
    assert cores.threads(1) == 1  # never more than asked


def test_reads_this_machine():
    cores = FreeCores(every_s=0.0)
    assert 0 <= cores.free() <= cores.cores and cores.threads(cores.cores) >= 1


def test_background_work_waits_for_a_call_on_every_core_and_later_calls_leave_it_one():
    share = CoreShare(cores=2)
    started, finished = threading.Event(), threading.Event()

    def background():
        with share.background():
            started.set()
            finished.wait(30)

    with share.model_call(2) as threads:
        assert threads == 2  # nothing in the background: every core
        worker = threading.Thread(target=background)
        worker.start()
        # the background work waits for this call; a call starting meanwhile leaves it a core
        with share.model_call(2) as meanwhile:
            assert meanwhile == 1
        assert not started.wait(0.2)
    assert started.wait(30)  # the call on every core ended: the background work runs
    with share.model_call(2) as threads:
        assert threads == 1
    finished.set()
    worker.join(30)
    with share.model_call(2) as threads:
        assert threads == 2  # the background work is done
    with share.model_call(1) as threads:
        assert threads == 1  # never more than asked


def test_one_core_is_never_taken_from_the_encoder():
    share = CoreShare(cores=1)
    with share.background(), share.model_call(1) as threads:
        assert threads == 1
