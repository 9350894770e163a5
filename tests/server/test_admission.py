"""server.admission: eviction and admission by popularity per byte; the popularity stays bounded."""

from __future__ import annotations

import pytest

from server.admission import Policy, Popularity


def test_popularity_forgets_ids_asked_for_long_ago() -> None:
    pop = Popularity(min_window=100)
    for i in range(10_000):  # 10,000 distinct ids, each asked for once
        pop.touch(f"id-{i}", entries=5)
    assert len(pop) <= 100 and pop["id-0"] == 0


def _asked(policy: Policy, counts: dict[str, int]) -> None:
    for key, n in counts.items():
        for _ in range(n):
            policy.touch(key, entries=len(counts))


def test_the_victim_is_the_coldest_per_byte_among_the_sample() -> None:
    policy = Policy(sample=3)
    _asked(policy, {"a": 4, "b": 1, "c": 2, "d": 0})
    lru_first = [("a", 100), ("b", 100), ("c", 10), ("d", 100)]
    # b: 1/100 per byte beats a (4/100) and c (2/10); d is colder still but outside the sample of 3.
    assert policy.victim(lru_first, keep="x") == ("b", 100)
    # The newcomer itself is never the victim, nor counted in the sample: now d is in it.
    assert policy.victim(lru_first, keep="b") == ("d", 100)
    assert policy.victim([("x", 5)], keep="x") is None


def test_sample_one_is_lru_and_ties_go_to_the_least_recent() -> None:
    policy = Policy(sample=1)
    _asked(policy, {"a": 9, "b": 1})
    assert policy.victim([("a", 1), ("b", 1)], keep="z") == ("a", 1)
    ties = Policy(sample=8)
    assert ties.victim([("a", 1), ("b", 1), ("c", 1)], keep="z") == ("a", 1)


def test_admission_compares_per_byte() -> None:
    policy = Policy()
    _asked(policy, {"big": 4, "small": 1})
    assert policy.colder("big", 1000, "small", 10)  # 4/1000 < 1/10
    assert not policy.colder("small", 10, "big", 1000)


def test_a_sample_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Policy(sample=0)
