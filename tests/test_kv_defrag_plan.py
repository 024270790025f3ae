import numpy as np
import pytest

from llmds_torch.kv.defrag import plan_moves


def carry_out(rounds, occupied):
    """Run the rounds on a toy memory; check no round reads a page it writes or overwrites a page."""
    content = np.where(occupied, np.arange(occupied.size), -1)
    for moves in rounds:
        srcs, dsts = {s for s, _ in moves}, [d for _, d in moves]
        assert not srcs & set(dsts) and len(set(dsts)) == len(dsts)
        assert all(content[d] == -1 for d in dsts)
        values = [content[s] for s, _ in moves]
        for s, _ in moves:
            content[s] = -1
        for d, value in zip(dsts, values):
            content[d] = value
    return content


@pytest.mark.parametrize("seed", range(5))
def test_random_permutations_end_where_planned(seed):
    rng = np.random.default_rng(seed)
    for _ in range(2000):
        n = int(rng.integers(1, 12))
        occupied = rng.random(n) < rng.random()
        live = np.flatnonzero(occupied)
        if live.size == n:
            continue
        old_to_new = np.full(n, -1)
        old_to_new[live] = rng.permutation(n)[:live.size]
        content = carry_out(plan_moves(old_to_new, occupied), occupied)
        for page in live:
            assert content[old_to_new[page]] == page


def test_cycle_is_broken_through_a_spare_page():
    occupied = np.array([True, True, False])
    rounds = plan_moves(np.array([1, 0, -1]), occupied)
    assert rounds[0] == [(0, 2)]
    content = carry_out(rounds, occupied)
    assert content.tolist() == [1, 0, -1]


def test_full_pool_cycle_cannot_be_planned():
    with pytest.raises(RuntimeError, match="free page"):
        plan_moves(np.array([1, 0]), np.array([True, True]))
