from __future__ import annotations

from gateway.bounded_memo import remember


def test_a_memo_never_holds_more_than_its_limit_and_keeps_the_newest_entry() -> None:
    memo: dict[str, int] = {}
    for n in range(10):
        assert remember(memo, 4, f"k{n}", n) == n
        assert len(memo) <= 4
        assert memo[f"k{n}"] == n
    # Emptied when full: the last fill started at k8, so the older keys are gone.
    assert sorted(memo) == ["k8", "k9"]


def test_a_known_key_is_replaced_not_added_twice() -> None:
    memo = {"a": 1}
    assert remember(memo, 4, "a", 2) == 2
    assert memo == {"a": 2}
