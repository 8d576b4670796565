"""Who a Group-scoped connection's population is when its leavers are found: members, and the records merged
with them either way, link after link."""

from __future__ import annotations

from workers.sync_population import population_of


def test_the_population_is_the_members_and_the_records_they_were_merged_into_link_after_link() -> None:
    merged_into = {"pat-1": "pat-9", "pat-9": "pat-12", "pat-4": "pat-5", "pat-12": "pat-1"}  # a loop ends too
    assert population_of({"pat-1", "pat-2"}, merged_into) == {"pat-1", "pat-2", "pat-9", "pat-12"}
    assert population_of({"pat-2"}, merged_into) == {"pat-2"}, "a leaver's survivor is no member's: it goes"
    assert population_of(set(), merged_into) == set()
    assert population_of({"pat-5"}, merged_into) == {"pat-5", "pat-4"}, \
        "a record merged into a member stays: the member's overview shows its visits"
    assert population_of({"pat-12"}, merged_into) == {"pat-1", "pat-9", "pat-12"}, "back and forth, link by link"
