"""Amounts and balances as exact integers of minor units.

Rules of this module:

- A minor unit is ``10 ** -scale`` of a whole unit. Every amount and balance inside the engine is
  a Python int of minor units; binary floats never take part in arithmetic.
- An amount is parsed exactly or rejected. Nothing is rounded: an amount that needs more
  decimals than the scale is rejected. Trailing zeros past the scale are accepted because they
  change nothing (``"1.50000000"`` is exactly 1.5).
- Amounts and balances are bounded by :data:`MAX_UNITS` minor units, the largest signed 64-bit
  integer, so that every value fits a msgpack integer and a Go or Ruby int64. Text longer than
  :data:`MAX_AMOUNT_TEXT` characters is rejected before any number is built from it.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from zmqbalance.errors import InvalidAmount

MAX_UNITS = 2**63 - 1
MAX_SCALE = 12  # a larger scale would leave less than 10**6 whole units below MAX_UNITS
MAX_AMOUNT_TEXT = 64  # characters; longer than any amount below MAX_UNITS at MAX_SCALE
_DECIMAL_TEXT = re.compile(r"[0-9]+(\.[0-9]+)?")


def check_scale(scale: int) -> int:
    """Return ``scale`` if it is a supported number of digits after the point."""
    if not 0 <= scale <= MAX_SCALE:
        raise ValueError(f"--scale must be between 0 and {MAX_SCALE}, got {scale}")
    return scale


def parse_amount(value: object, scale: int) -> int:
    """Convert a wire amount into a positive number of minor units, or raise InvalidAmount.

    ``value`` may be an int (whole units), a decimal string such as ``"12.50"``, or a float
    whose shortest decimal form (``repr``) has at most ``scale`` decimals.
    """
    if type(value) is int:  # the common case first; bool is a subclass, so not this type
        units: int = value * 10**scale
        if 0 < units <= MAX_UNITS:
            return units
    if isinstance(value, bool):
        raise InvalidAmount(f"amount must be a number, got the boolean {value!r}")
    if isinstance(value, int):
        units = value * 10**scale
    elif isinstance(value, float):
        units = _float_units(value, scale)
    elif isinstance(value, str):
        units = _text_units(value, scale)
    elif value is None:
        raise InvalidAmount("amount is missing")
    else:
        raise InvalidAmount(
            f"amount must be an integer, a decimal string or a float, got {type(value).__name__}"
        )

    if units <= 0:
        raise InvalidAmount(f"amount must be greater than zero, got {value!r}")
    if units > MAX_UNITS:
        raise InvalidAmount(
            f"amount {value!r} is over the maximum of {format_units(MAX_UNITS, scale)}"
        )
    return units


def _float_units(value: float, scale: int) -> int:
    if not math.isfinite(value):
        raise InvalidAmount(f"amount must be a finite number, got {value!r}")
    return _decimal_units(Decimal(repr(value)), value, scale)


def _text_units(text: str, scale: int) -> int:
    if len(text) > MAX_AMOUNT_TEXT:
        raise InvalidAmount(
            f"amount text is {len(text)} characters long, over the limit of {MAX_AMOUNT_TEXT}"
        )
    if text.startswith("-"):
        raise InvalidAmount(f"amount must be greater than zero, got {text!r}")
    if not _DECIMAL_TEXT.fullmatch(text):
        raise InvalidAmount(f"amount {text!r} is not a decimal number such as 12.50")
    return _decimal_units(Decimal(text), text, scale)


def _decimal_units(number: Decimal, original: object, scale: int) -> int:
    """Scale an exact Decimal into minor units, rejecting digits past the scale.

    The coefficient is scaled with int arithmetic. Decimal arithmetic would round to the context
    precision (28 digits by default) and so hide a nonzero digit far past the scale.
    """
    if number.adjusted() > 19:  # at least 10**20 whole units: over MAX_UNITS at any scale
        raise InvalidAmount(
            f"amount {original!r} is over the maximum of {format_units(MAX_UNITS, scale)}"
        )
    sign, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int):  # NaN or infinity, which both callers reject first
        raise InvalidAmount(f"amount {original!r} is not a valid number")

    coefficient = int("".join(map(str, digits)))
    shift = exponent + scale
    units: int
    if shift >= 0:
        units = coefficient * 10**shift
    else:
        divisor: int = 10**-shift
        units, remainder = divmod(coefficient, divisor)
        if remainder:
            raise InvalidAmount(f"amount {original!r} has more than {scale} digits after the point")
    return -units if sign else units


def format_units(units: int, scale: int) -> str:
    """Format minor units as a decimal string with exactly ``scale`` digits after the point."""
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), 10**scale)
    if scale == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{scale}d}"
