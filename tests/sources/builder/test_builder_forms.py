"""Every builder condition and computed-trait form, compiled and run on SQLite and PostgreSQL in every storage
layout, against an independent evaluation in plain Python (tests/builder_reference.py) over the same event log.

The statement checked is the one the pushdown runs (``to_sql`` text with its parameters); its values must be
canonical JSON wherever SQL writes them exactly, and read back (as streaming does) to the reference's values
everywhere. The streamed path (``BuilderSource.read_rows``) must give the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.builder_harness import LAYOUTS, Source, audience, layout_id, members, open_source, trait, trait_values


@pytest.fixture(scope="module", params=LAYOUTS, ids=layout_id)
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    yield from open_source(request, tmp_path_factory)


CONDITIONS = {
    "performed": '{ performed = "Order" }',
    "at_least_within": '{ performed = "Order", at_least = 3, within = "30d" }',
    "at_most_weeks": '{ performed = "Order", at_most = 2, within = "2w" }',
    "exactly_hours": '{ performed = "View", exactly = 2, within = "720h" }',
    "minutes": '{ performed = "Order", within = "43200m" }',
    "between": '{ performed = "Order", between = ["90d", "30d"] }',
    "did_not_perform": '{ did_not_perform = "Signup" }',
    "did_not_perform_window_where": (
        '{ did_not_perform = "Order", within = "30d", where = [{ property = "amount", op = ">", value = 20 }] }'
    ),
    "eq_text": '{ performed = "Order", where = [{ property = "category", op = "=", value = "tea" }] }',
    "eq_int": '{ performed = "Order", where = [{ property = "amount", op = "=", value = 5 }] }',
    "eq_float_matches_int": '{ performed = "Order", where = [{ property = "amount", op = "=", value = 5.0 }] }',
    "eq_bool": '{ performed = "Order", where = [{ property = "flag", op = "=", value = true }] }',
    "ne_text": '{ performed = "Order", at_least = 2, where = [{ property = "category", op = "!=", value = "tea" }] }',
    "ne_number": '{ performed = "Order", at_least = 3, where = [{ property = "amount", op = "!=", value = 5 }] }',
    "ne_bool": '{ performed = "View", where = [{ property = "flag", op = "!=", value = false }] }',
    "lt_text_code_point": '{ performed = "Order", where = [{ property = "category", op = "<", value = "a" }] }',
    "le_number": '{ performed = "Order", at_least = 2, where = [{ property = "amount", op = "<=", value = 10 }] }',
    "gt_float": '{ performed = "Order", at_least = 2, where = [{ property = "amount", op = ">", value = 20.5 }] }',
    "ge_text": '{ performed = "View", where = [{ property = "category", op = ">=", value = "tea" }] }',
    "contains_case": '{ performed = "Order", where = [{ property = "category", op = "contains", value = "tEA" }] }',
    "contains_substring": (
        '{ performed = "View", where = [{ property = "category", op = "contains", value = "fee b" }] }'
    ),
    "contains_non_ascii": '{ performed = "Order", where = [{ property = "category", op = "contains", value = "é" }] }',
    "in_mixed": '{ performed = "Order", where = [{ property = "category", op = "in", value = ["tea", 5, true] }] }',
    "in_numbers": '{ performed = "Order", where = [{ property = "amount", op = "in", value = [1, 2.5, 3, 8] }] }',
    "exists": '{ performed = "Signup", where = [{ property = "category", op = "exists" }] }',
    "not_exists": '{ performed = "Order", where = [{ property = "amount", op = "not_exists" }] }',
    "several_filters": (
        '{ performed = "Order", within = "60d", where = [{ property = "amount", op = ">=", value = 10 }, '
        '{ property = "category", op = "!=", value = "coffee" }, { property = "flag", op = "exists" }] }'
    ),
    "trait_eq": '{ trait = "country", op = "=", value = "FR" }',
    "trait_ne": '{ trait = "country", op = "!=", value = "FR" }',
    "trait_lt_text": '{ trait = "country", op = "<", value = "a" }',
    "trait_ge_int": '{ trait = "age", op = ">=", value = 40 }',
    "trait_lt_float": '{ trait = "score", op = "<", value = 5.5 }',
    "trait_bool": '{ trait = "vip", op = "=", value = true }',
    "trait_in": '{ trait = "country", op = "in", value = ["FR", "US"] }',
    "trait_contains": '{ trait = "country", op = "contains", value = "R" }',
    "trait_exists": '{ trait = "age", op = "exists" }',
    "trait_not_exists": '{ trait = "country", op = "not_exists" }',
    "not": '{ not = { performed = "Order", within = "30d" } }',
    "all_any_not": (
        '{ all = [ { any = [ { performed = "View", at_least = 2 }, { trait = "vip", op = "=", value = true } ] }, '
        '{ not = { did_not_perform = "Order", between = ["60d", "7d"] } }, { trait = "age", op = "<", value = 60 } ] }'
    ),
}


@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_condition_matches_the_reference(source: Source, name: str) -> None:
    got, expected = members(source, audience(CONDITIONS[name]))
    assert got == expected


def test_in_audience_and_not_in_audience(source: Source) -> None:
    body = (
        '[[audiences]]\nname = "Buyers"\ncondition = { performed = "Order", at_least = 2, within = "30d" }\n'
        '[[audiences]]\nname = "French"\ncondition = { trait = "country", op = "=", value = "FR" }\n'
        '[[audiences]]\nname = "Under Test"\n'
        'condition = { any = [ { in_audience = "buyers" }, { all = [ { not_in_audience = "french" }, '
        '{ performed = "View" } ] } ] }\n'
    )
    got, expected = members(source, body)
    assert got == expected
    buyers, _ = members(source, body, "buyers")
    assert buyers and buyers <= got


TRAITS = {
    "count": '{ count = "Order" }',
    "count_window_where": (
        '{ count = "Order", within = "30d", where = [{ property = "category", op = "in", value = ["tea", "B"] }] }'
    ),
    "sum": '{ sum = "Order", property = "amount" }',
    "sum_mixed_int_float": '{ sum = "Order", property = "qty" }',
    "sum_between": '{ sum = "Order", property = "amount", between = ["90d", "30d"] }',
    "avg": '{ avg = "Order", property = "amount" }',
    "avg_integers": '{ avg = "View", property = "qty", within = "60d" }',
    "min": '{ min = "Order", property = "amount" }',
    "max": '{ max = "Order", property = "amount", within = "30d" }',
    "min_qty": '{ min = "View", property = "qty" }',
    "most_frequent": '{ most_frequent = "View", property = "category" }',
    "most_frequent_numbers": '{ most_frequent = "Order", property = "amount" }',
    "most_frequent_filtered": (
        '{ most_frequent = "Order", property = "category", within = "60d", '
        'where = [{ property = "amount", op = ">", value = 10 }] }'
    ),
    "first": '{ first = "Order", property = "category" }',
    "last": '{ last = "Order", property = "category", within = "30d" }',
    "first_amount": '{ first = "Order", property = "amount", within = "7d" }',
    "last_flag": '{ last = "View", property = "flag" }',
    "unique_list": '{ unique_list = "Order", property = "category" }',
    "unique_list_numbers": '{ unique_list = "Order", property = "amount", within = "30d" }',
    "unique_list_flags": '{ unique_list = "View", property = "flag" }',
    "unique_count": '{ unique_count = "Order", property = "category" }',
    "unique_count_window": '{ unique_count = "View", property = "amount", between = ["60d", "1d"] }',
}


@pytest.mark.parametrize("name", sorted(TRAITS))
def test_trait_matches_the_reference(source: Source, name: str) -> None:
    got, expected = trait_values(source, trait(TRAITS[name]))
    assert got == expected


def _value(src: Source, compute: str, user: str) -> Any:
    got, expected = trait_values(src, trait(compute))
    assert got == expected
    return json.loads(got[user]) if user in got else None


def test_window_edges_are_exact(source: Source) -> None:
    """'edge' has Orders exactly 90d, 90d-1s and 30d before as-of, exactly at as-of and 1s after (amounts 8, 16, 1,
    2, 4): within 30d keeps only the one at as-of; between 90d and 30d keeps 16 and 1."""
    assert _value(source, '{ count = "Order", within = "30d" }', "edge") == 1
    assert _value(source, '{ sum = "Order", property = "amount", within = "30d" }', "edge") == 2
    assert _value(source, '{ sum = "Order", property = "amount", between = ["90d", "30d"] }', "edge") == 17
    assert _value(source, '{ sum = "Order", property = "amount" }', "edge") == 27  # never the one after as-of
    assert _value(source, '{ last = "Order", property = "amount" }', "edge") == 2


def test_ties_nulls_and_code_point_order(source: Source) -> None:
    ties = "ties"  # three Orders at one instant: categories é, a, B; amounts 5.0, 5, 7
    assert _value(source, '{ first = "Order", property = "category" }', ties) == "B"
    assert _value(source, '{ last = "Order", property = "category" }', ties) == "B"
    assert _value(source, '{ unique_list = "Order", property = "category" }', ties) == ["B", "a", "é"]
    first_amount = _value(source, '{ first = "Order", property = "amount" }', ties)
    # PostgreSQL's float8 column holds 5 as 5.0: the integer 5 exists only where types are kept
    assert first_amount == 5 and isinstance(
        first_amount, float if source.layout == "columns" and source.backend == "postgres" else int
    )
    assert _value(source, '{ most_frequent = "View", property = "category" }', "freq") == "a"
    assert _value(source, '{ most_frequent = "View", property = "category" }', "freq1") is None
    total = _value(source, '{ sum = "Order", property = "amount", within = "7d" }', "floats")
    assert total == 3.3 and isinstance(total, float)  # exact: not 3.3000000000000003
    for user in ("ghost", "quiet"):
        assert _value(source, '{ count = "Order" }', user) is None
    got, _ = members(source, audience('{ did_not_perform = "Order" }'))
    assert "quiet" in got and "ghost" not in got and None not in got
