"""``human()``: the 3-significant-digit SI figures of the summary / models tables.

The oracle is the figure written out by hand. A value that rounds up to 1000 of one prefix is
1 of the next: ``mobileconv summary mobilenetv3_small_100 --batch-size 434 --input-size 32``
printed ``1e+03 KB`` for its 999,936-byte layers.
"""
import pytest

from mobileconv.profile.report import human


@pytest.mark.parametrize("value, unit, expected", [
    (999_936, "B", "1 MB"),
    (999_500, "", "1M"),
    (999_499, "", "999K"),
    (999_999_999, "", "1G"),
    (999_600_000_000, "", "1T"),
    (1_000_000, "B", "1 MB"),
    (4_134_606, "", "4.13M"),
    (802_816, "B", "803 KB"),
    (48, "B", "48 B"),
    (0, "", "0"),
])
def test_three_significant_digits_with_the_prefix_of_the_rounded_value(value, unit, expected):
    assert human(value, unit) == expected
