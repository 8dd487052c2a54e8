"""Amounts leave the platform as exact text: the same value, no exponent, no trailing zeros."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from spine.platform.schema import money_text


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=8, min_value=-(10**10), max_value=10**10
    )
)
def test_the_text_is_the_same_amount_written_plainly(amount: Decimal) -> None:
    text = money_text(amount)
    assert Decimal(text) == amount
    assert "E" not in text.upper()
    assert text == "0" or not text.endswith(("0", ".")) or "." not in text


def test_examples() -> None:
    assert money_text(Decimal("0.00000000")) == "0"
    assert money_text(Decimal("-0")) == "0"
    assert money_text(Decimal("1.50000000")) == "1.5"
    assert money_text(Decimal("1E+3")) == "1000"
    assert money_text(Decimal("0.00000001")) == "0.00000001"
