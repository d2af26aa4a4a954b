"""Trait keys (python-slugify) and the canonical value encoding the diff relies on."""

from __future__ import annotations

import decimal
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audience_sync.keys import is_valid_key, trait_key
from audience_sync.values import NoJsonForm, decode, encode


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Order Completed Last 30days", "order_completed_last_30days"),
        ("Café VIPs ☕", "cafe_vips"),
        ("High-Value (LTV > 500)", "high_value_ltv_500"),
        ("  Lifetime   Value ", "lifetime_value"),
        ("Über München", "uber_munchen"),
    ],
)
def test_keys_are_snake_case_as_engage_makes_them(name: str, key: str) -> None:
    assert trait_key(name) == key


@given(st.text(max_size=80))
def test_a_key_is_always_valid_or_empty_and_stable(name: str) -> None:
    key = trait_key(name)
    assert key == "" or is_valid_key(key)
    assert trait_key(key) == key


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)


@given(json_values)
def test_encoding_round_trips(value: object) -> None:
    encoded = encode(value)
    assert (encoded is None) == (value is None)
    assert decode(encoded) == value


@given(json_values, json_values)
def test_equal_text_means_equal_value_with_type(a: object, b: object) -> None:
    if encode(a) == encode(b):
        assert a == b and type(a) is type(b)


def test_falsy_values_are_values_and_distinct() -> None:
    falsy: tuple[object, ...] = (0, False, "", [], 0.0)
    assert [encode(v) for v in falsy] == ["0", "false", '""', "[]", "0.0"]
    assert encode(None) is None
    assert encode(decimal.Decimal("12.50")) == "12.5" and encode(decimal.Decimal("3")) == "3"
    with pytest.raises(TypeError):
        encode(object())


@pytest.mark.parametrize(
    "value",
    [
        math.inf,
        -math.inf,
        math.nan,
        decimal.Decimal("Infinity"),
        decimal.Decimal("-Infinity"),
        decimal.Decimal("NaN"),
        [1, math.inf],
        {"a": math.nan},
    ],
)
def test_nan_and_infinities_have_no_json_form(value: object) -> None:
    """Not "no value" (NaN used to become NULL, sending an exit) and not a crash (numeric Infinity overflowed)."""
    with pytest.raises(NoJsonForm, match="has no JSON form"):
        encode(value)
