"""User-facing checks live in one module (cmkit._validate); cmkit.limits re-exports require_int."""

import pytest

import cmkit.limits
from cmkit._validate import check_choice, require_int


def test_limits_reexports_the_one_require_int():
    assert cmkit.limits.require_int is require_int


def test_check_choice_names_the_value_and_lists_the_choices():
    check_choice("mode", "a", ("a", "b"))
    check_choice("padding", None, (None, 0, 1))
    with pytest.raises(ValueError, match=r"^mode must be one of 'a', 'b', got 'c'$"):
        check_choice("mode", "c", ("a", "b"))
    with pytest.raises(ValueError, match=r"padding must be one of None, 0, 1, got 2"):
        check_choice("padding", 2, iter((None, 0, 1)))
