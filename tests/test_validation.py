"""Validators of user input (symphonyd/validation.py): sizes, by example and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from symphonyd.errors import Invalid
from symphonyd.validation import MAX_SIZE, parse_size


def test_sizes_by_example() -> None:
    assert parse_size("512M") == 512 << 20
    assert parse_size("10G") == parse_size("10GiB") == parse_size("10") == 10 << 30
    assert parse_size("1T") == 1 << 40
    assert parse_size("100B") == 100
    assert parse_size(4096) == 4096
    for bad in ("0", "-1G", "ten", "", "1P", True, 1.5, None, "1" * 400):
        with pytest.raises(Invalid):
            parse_size(bad)
    with pytest.raises(Invalid, match="larger than any pool"):
        parse_size("2000000T")


@given(st.integers(min_value=1, max_value=1 << 30), st.sampled_from(["K", "M", "G"]))
def test_a_size_with_a_unit_is_that_many_units(count: int, unit: str) -> None:
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
    if count * factor > MAX_SIZE:
        with pytest.raises(Invalid):
            parse_size(f"{count}{unit}")
    else:
        assert parse_size(f"{count}{unit}") == parse_size(f"{count}{unit}iB") == count * factor


@given(st.integers())
def test_integers_are_bytes_or_refused(value: int) -> None:
    if 0 < value <= MAX_SIZE:
        assert parse_size(value) == value
    else:
        with pytest.raises(Invalid):
            parse_size(value)
