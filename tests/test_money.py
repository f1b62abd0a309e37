from decimal import Decimal

import pytest

from zmqbalance.errors import InvalidAmount
from zmqbalance.money import MAX_UNITS, check_scale, format_units, parse_amount


@pytest.mark.parametrize(
    ("value", "units"),
    [
        (1, 1_000_000),
        (2557, 2_557_000_000),
        ("12.50", 12_500_000),
        ("2557.68", 2_557_680_000),
        ("0.000001", 1),
        ("1.50000000", 1_500_000),
        ("0012.5", 12_500_000),
        (0.1, 100_000),
        (0.2, 200_000),
        (1000.1, 1_000_100_000),
        (1e-6, 1),
        (2.5, 2_500_000),
        ("9223372036854.775807", MAX_UNITS),
    ],
)
def test_parse_amount_exact(value: object, units: int) -> None:
    assert parse_amount(value, 6) == units


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "0"),
        (-5, "-5"),
        (0.0, "0.0"),
        (-1.5, "-1.5"),
        ("0", "'0'"),
        ("0.000", "'0.000'"),
        ("-5", "'-5'"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        ("1e309", "'1e309'"),
        ("nan", "'nan'"),
        ("abc", "'abc'"),
        ("", "''"),
        (" 1", "' 1'"),
        ("+1", "'+1'"),
        ("1.", "'1.'"),
        ("1,5", "'1,5'"),
        ("١٢", "'١٢'"),  # Arabic-Indic digits are not ASCII digits
        ("1.0000001", "'1.0000001'"),
        (1e-7, "1e-07"),
        (0.1 + 0.2, "0.30000000000000004"),
        ("9223372036854.775808", "'9223372036854.775808'"),
        (9_223_372_036_855, "9223372036855"),
        (1e20, "1e+20"),
        ("99999999999999999999", "'99999999999999999999'"),
    ],
)
def test_parse_amount_rejects_and_names_value(value: object, shown: str) -> None:
    with pytest.raises(InvalidAmount) as info:
        parse_amount(value, 6)
    assert shown in info.value.message


def test_parse_amount_digits_past_precision() -> None:
    # 31 decimals: more than Decimal's default 28-digit precision, so rounding would hide them.
    with pytest.raises(InvalidAmount) as info:
        parse_amount("1.0000000000000000000000000000001", 6)
    assert "more than 6 digits" in info.value.message


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "missing"),
        (True, "boolean"),
        (b"1", "bytes"),
        ([1], "list"),
        (Decimal("1"), "Decimal"),
        ("1" * 65, "65 characters"),
    ],
)
def test_parse_amount_rejects_type(value: object, words: str) -> None:
    with pytest.raises(InvalidAmount) as info:
        parse_amount(value, 6)
    assert words in info.value.message


def test_parse_amount_scale_zero() -> None:
    assert parse_amount("5", 0) == 5
    assert parse_amount("5.000", 0) == 5
    with pytest.raises(InvalidAmount):
        parse_amount("5.5", 0)


def test_parse_amount_scale_two() -> None:
    assert parse_amount("0.01", 2) == 1
    with pytest.raises(InvalidAmount):
        parse_amount("0.001", 2)


def test_sum_of_tenths_is_exact() -> None:
    total = parse_amount(0.1, 6) + parse_amount(0.2, 6) - parse_amount(0.3, 6)
    assert format_units(total, 6) == "0.000000"


@pytest.mark.parametrize(
    ("units", "scale", "text"),
    [
        (0, 6, "0.000000"),
        (1, 6, "0.000001"),
        (-1_500_000, 6, "-1.500000"),
        (-5_000_000, 6, "-5.000000"),
        (2_557_680_000, 6, "2557.680000"),
        (MAX_UNITS, 6, "9223372036854.775807"),
        (-MAX_UNITS, 6, "-9223372036854.775807"),
        (42, 0, "42"),
        (-42, 0, "-42"),
        (-5, 2, "-0.05"),
    ],
)
def test_format_units(units: int, scale: int, text: str) -> None:
    assert format_units(units, scale) == text


def test_format_parse_round_trip() -> None:
    for units in (1, 999_999, 1_000_000, 123_456_789_012, MAX_UNITS):
        assert parse_amount(format_units(units, 6), 6) == units


def test_check_scale_bounds() -> None:
    assert check_scale(0) == 0
    assert check_scale(12) == 12
    with pytest.raises(ValueError):
        check_scale(-1)
    with pytest.raises(ValueError):
        check_scale(13)
