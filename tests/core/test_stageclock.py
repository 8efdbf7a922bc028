"""The per-thread clock of a prediction's parts (normalize, forward, blend, classify)."""

from __future__ import annotations

import threading
import time

from geoseg import stageclock


def test_parts_count_only_inside_a_collect_of_the_same_thread() -> None:
    with stageclock.part("forward"):  # outside a collect: nothing is kept, nothing fails
        pass
    assert stageclock.spent() == 0.0
    seen: dict[str, dict[str, float]] = {}

    def other() -> None:
        with stageclock.collect() as acc, stageclock.part("forward"):
            time.sleep(0.05)
        seen["other"] = acc

    with stageclock.collect() as acc:
        with stageclock.part("normalize"):
            time.sleep(0.02)
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        stageclock.add("blend", 0.5)
        # a nested collect keeps its own account
        with stageclock.collect() as inner, stageclock.part("classify"):
            pass
        assert set(inner) == {"classify"}
        assert abs(stageclock.spent() - sum(acc.values())) < 1e-12
    assert set(acc) == {"normalize", "blend"}
    assert 0.02 <= acc["normalize"] < 0.5 and acc["blend"] == 0.5
    assert set(seen["other"]) == {"forward"} and seen["other"]["forward"] >= 0.05
    stageclock.add("forward", 1.0)  # the collect is closed: ignored
    assert stageclock.spent() == 0.0


def test_a_part_counts_the_time_of_a_block_that_raises() -> None:
    with stageclock.collect() as acc:
        try:
            with stageclock.part("forward"):
                time.sleep(0.01)
                raise ValueError("model failed")
        except ValueError:
            pass
    assert acc["forward"] >= 0.01


def test_a_part_counts_the_threads_cpu_apart_from_its_wall() -> None:
    """``cpu``: the collecting thread's CPU seconds per part; a part that waits (a sleep, an
    engine's own pool) has wall seconds but almost no CPU, a part that computes has both."""
    with stageclock.collect() as acc:
        with stageclock.part("forward"):
            time.sleep(0.1)
        with stageclock.part("classify"):
            t0 = time.thread_time()
            while time.thread_time() - t0 < 0.05:
                pass
        stageclock.add("blend", 0.5)  # a remainder: wall only
    assert acc["forward"] >= 0.1 and acc.cpu["forward"] < 0.05
    assert acc.cpu["classify"] >= 0.05 and acc["classify"] >= acc.cpu["classify"] - 0.01
    assert "blend" not in acc.cpu and set(acc) == {"forward", "classify", "blend"}
