import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from arcsl.gridtext import barc_to_grid, digits_to_grid, grid_to_barc, grid_to_digits

grids = st.integers(1, 30).flatmap(
    lambda h: st.integers(1, 30).flatmap(lambda w: arrays(np.uint8, (h, w), elements=st.integers(0, 9))))


def test_barc_format_matches_the_spec_example():
    assert grid_to_barc(np.array([[0, 1], [2, 0]])) == "Black Blue\nRed Black\n"


def test_barc_format_names_all_ten_colours():
    text = grid_to_barc(np.arange(10).reshape(1, 10))
    assert text == "Black Blue Red Green Yellow Gray Pink Orange Purple Brown\n"


def test_digit_format_is_one_digit_per_cell():
    assert grid_to_digits(np.array([[0, 1], [2, 9]])) == "01\n29\n"


@given(grids)
def test_barc_text_round_trips(grid):
    assert np.array_equal(barc_to_grid(grid_to_barc(grid)), grid)


@given(grids)
def test_digit_text_round_trips(grid):
    assert np.array_equal(digits_to_grid(grid_to_digits(grid)), grid)


@pytest.mark.parametrize("text, message", [
    ("Black Blu\n", "line 0: unknown colour name 'Blu'"),
    ("Black  Blue\n", "unknown colour name ''"),
    ("Black Blue\nRed\n", "ragged rows"),
    ("Black", "must end with a newline"),
])
def test_barc_parser_rejects_what_the_writer_cannot_produce(text, message):
    with pytest.raises(ValueError, match=message):
        barc_to_grid(text)


@pytest.mark.parametrize("text, message", [("01\n2a\n", "line 1: expected only digits"), ("0 1\n", "line 0"),
                                           ("\n", "line 0")])
def test_digit_parser_rejects_non_digits(text, message):
    with pytest.raises(ValueError, match=message):
        digits_to_grid(text)
