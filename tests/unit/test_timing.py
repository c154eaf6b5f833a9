"""Latency summaries (hostkvm.timing): pure functions over lists of ns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostkvm import timing


def per_value_histogram(values: list[int]) -> list[list[int]]:
    """The definition, one value at a time: bucket k = bit_length holds [2^(k-1), 2^k)."""
    buckets: dict[int, int] = {}
    for v in values:
        buckets[v.bit_length()] = buckets.get(v.bit_length(), 0) + 1
    return [[0 if k == 0 else 1 << (k - 1), 1 << k, n] for k, n in sorted(buckets.items())]


def test_log2_histogram_bucket_edges() -> None:
    assert timing.log2_histogram([0, 1, 2, 3, 4, 7, 8, 1023, 1024]) == [
        [0, 1, 1], [1, 2, 1], [2, 4, 2], [4, 8, 2], [8, 16, 1], [512, 1024, 1], [1024, 2048, 1],
    ]
    assert timing.log2_histogram([]) == []


def test_log2_histogram_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match="negative"):
        timing.log2_histogram([5, -1])


@given(st.lists(st.integers(min_value=0, max_value=1 << 40)))
def test_log2_histogram_matches_the_definition(values: list[int]) -> None:
    assert timing.log2_histogram(values) == per_value_histogram(values)
    assert sum(n for _, _, n in timing.log2_histogram(values)) == len(values)


def test_summarize_percentiles_nearest_rank() -> None:
    s = timing.summarize(range(100, 0, -1))  # 1..100, unsorted
    assert (s["count"], s["min"], s["p50"], s["p90"], s["p99"], s["max"]) == (100, 1, 50, 90, 99, 100)
    assert s["histogram"] == per_value_histogram(list(range(1, 101)))
    assert timing.summarize([]) == {"count": 0}


def test_group_by_parallel_keys() -> None:
    g = timing.group([5, 1, 7, 3], ["b", "a", "b", "a"])
    assert list(g) == ["a", "b"]
    assert (g["a"]["count"], g["a"]["max"], g["b"]["min"]) == (2, 3, 5)
    with pytest.raises(ValueError, match="3 values but 2 keys"):
        timing.group([1, 2, 3], ["a", "b"])


def test_first_touch_classes_per_page() -> None:
    gpas = [0x1000, 0x1004, 0x2000, 0x1ff8, 0x2000]
    assert timing.first_touch_classes(gpas) == ["first_touch", "repeat", "first_touch", "repeat", "repeat"]


@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1),
       st.sampled_from([0, 1, 50, 90, 99, 99.9, 100]))
def test_percentile_is_the_nearest_rank(values: list[int], q: float) -> None:
    v = sorted(values)
    p = timing.percentile(v, q)
    at_or_below = sum(1 for x in v if x <= p)
    assert at_or_below * 100 >= q * len(v)  # at least q% at or below it
    assert sum(1 for x in v if x < p) * 100 < max(q, 1e-9) * len(v) or p == v[0]  # and the smallest such


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 10**6))))
def test_group_matches_a_plain_grouping_with_few_and_many_keys(pairs: list[tuple[int, int]]) -> None:
    keys, values = [k for k, _ in pairs], [v for _, v in pairs]
    plain: dict[int, list[int]] = {}
    for k, v in pairs:
        plain.setdefault(k, []).append(v)
    assert timing.group(values, keys) == {k: timing.summarize(plain[k]) for k in sorted(plain)}


@given(st.lists(st.integers(0, 1 << 20)))
def test_first_touch_classes_match_the_definition(gpas: list[int]) -> None:
    seen: set[int] = set()
    expect = []
    for g in gpas:
        expect.append("repeat" if g >> 12 in seen else "first_touch")
        seen.add(g >> 12)
    assert timing.first_touch_classes(gpas) == expect


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50))),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), min_size=1, max_size=80))
def test_group_cuts_nearly_whole_groups_out_of_the_sorted_values(
        few: list[tuple[int, int]], many: list[tuple[int, int]]) -> None:
    """A big group next to a few others (with repeated values) summarizes as if sorted on its own."""
    pairs = [(9, v) for _, v in many] + few
    keys, values = [k for k, _ in pairs], [v for _, v in pairs]
    assert timing.group(values, keys, sorted_values=sorted(values)) == timing.group(values, keys)


def test_group_checks_its_sorted_values() -> None:
    with pytest.raises(ValueError, match="sorted values"):
        timing.group([3, 1, 2], ["p", "q", "p"], sorted_values=[1, 2])
    assert timing.group([3, 1, 2], ["p", "q", "p"], sorted_values=[1, 2, 3])["p"] == timing.summarize([3, 2])
