"""A multi-line key listing from the checkpoint loader becomes one CLI line that still names a key of each kind."""
import pytest

from mobileconv.cli._args import call_with_one_line_errors


def fail(message):
    raise ValueError(message)


def test_each_listing_keeps_its_heading_and_first_item():
    message = ("w.safetensors does not fit the model; the model was not changed.\n"
               "  missing keys (2): a.weight, b.weight\n"
               "  shape mismatch keys (2): c.weight: checkpoint [96, 1, 3, 3] vs model [64, 1, 3, 3], d.bias: "
               "checkpoint [96] vs model [64]\n"
               "  unexpected keys (1): e.weight")
    with pytest.raises(ValueError) as info:
        call_with_one_line_errors(fail, message)
    assert str(info.value) == ("w.safetensors does not fit the model; the model was not changed. (missing keys (2): "
                               "a.weight, ...; shape mismatch keys (2): c.weight: checkpoint [96, 1, 3, 3] vs model "
                               "[64, 1, 3, 3], ...; unexpected keys (1): e.weight)")


def test_a_one_line_error_is_raised_as_it_is():
    with pytest.raises(ValueError, match="^just this$"):
        call_with_one_line_errors(fail, "just this")
