"""server.admission: the popularity the pack cache's admission check reads stays bounded."""

from __future__ import annotations

from server.admission import Popularity


def test_popularity_forgets_ids_asked_for_long_ago() -> None:
    pop = Popularity(min_window=100)
    for i in range(10_000):  # 10,000 distinct ids, each asked for once
        pop.touch(f"id-{i}", entries=5)
    assert len(pop) <= 100 and pop["id-0"] == 0
