"""Model actors over a cluster's nodes, and chunks in bands per node (no Ray needed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from geoseg.grid import Chunk, ChunkGrid
from geoseg.runtime.placement import ActorPlace, ChunkQueues, place_actors


def test_one_actor_per_node_with_its_cores() -> None:
    places = place_actors({"b": 4, "a": 16}, workers=2, threads=0)
    assert places == [ActorPlace("a", 16), ActorPlace("b", 4)]  # most CPUs first


def test_more_actors_than_nodes_share_a_node_cores() -> None:
    places = place_actors({"a": 8, "b": 8}, workers=4, threads=0)
    assert [p.node for p in places] == ["a", "b", "a", "b"]
    assert {p.threads for p in places} == {4}


def test_threads_given_are_kept() -> None:
    assert {p.threads for p in place_actors({"a": 8, "b": 4}, 3, threads=3)} == {3}


def test_one_node_gets_every_actor_and_shares_its_cores() -> None:
    # the one-machine case: one actor with the node's cores, as before nodes were counted
    assert place_actors({"a": 2}, 1, 0) == [ActorPlace("a", 2)]
    assert place_actors({"a": 8}, 2, 0) == [ActorPlace("a", 4)] * 2
    assert place_actors({}, 2, 3) == [ActorPlace(None, 3)] * 2  # nothing known: not pinned


def _todo(n: int) -> list[Chunk]:
    grid = ChunkGrid((64 * n, 64), 64)
    return list(grid)


def test_shares_are_contiguous_bands_in_proportion() -> None:
    todo = _todo(12)
    q = ChunkQueues.split(todo, {"a": 2, "b": 1})
    assert q.share("a") == todo[:8] and q.share("b") == todo[8:]


def test_a_node_without_chunks_left_takes_the_last_of_the_longest_share() -> None:
    todo = _todo(6)
    q = ChunkQueues.split(todo, {"a": 1, "b": 1})
    assert [q.take("b") for _ in range(3)] == todo[3:]
    assert q.take("b") == todo[2] and q.stolen == 1  # from a's far end, not its next chunk
    assert q.take("a") == todo[0]


def test_a_retry_goes_back_to_its_share() -> None:
    todo = _todo(4)
    q = ChunkQueues.split(todo, {"a": 1, "b": 1})
    first = q.take("a")
    assert first is not None
    q.put_back(first)
    assert q.share("a") == [todo[1], first] and len(q) == 4


@given(n=st.integers(0, 40), weights=st.lists(st.integers(1, 4), min_size=1, max_size=5),
       takers=st.lists(st.integers(0, 4), min_size=1, max_size=200))
def test_every_chunk_is_taken_once_whoever_asks(n: int, weights: list[int],
                                                 takers: list[int]) -> None:
    todo = _todo(n)
    q = ChunkQueues.split(todo, {f"n{i}": w for i, w in enumerate(weights)})
    assert [c for i in range(len(weights)) for c in q.share(f"n{i}")] == todo  # order kept
    got = []
    k = 0
    while q:
        c = q.take(f"n{takers[k % len(takers)] % len(weights)}")
        assert c is not None
        got.append(c)
        k += 1
    assert sorted(c.id for c in got) == sorted(c.id for c in todo)
    assert q.take("n0") is None
