"""Tests for arcsl/dsl/common.py, the clean-room BARC `common` DSL.

Expected values are the behaviour of BARC's original `common` module (xu3kev/BARC), observed by running it
under Python 3.11, numpy 2.4 and scipy 1.17, its odd corners included: programs depend on them.
Coordinates are grid[x, y] with x on axis 0.
"""

import importlib.util
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from arcsl.dsl import common
from arcsl.dsl.common import (
    Color, MirrorSymmetry, Symmetry, TranslationalSymmetry, apply_diagonal_symmetry,
    apply_symmetry, blit, blit_object, blit_sprite, bounding_box, bounding_box_mask,
    check_between_objects, collision, contact, crop, detect_mirror_symmetry, detect_objects,
    detect_rotational_symmetry, detect_translational_symmetry, draw_line,
    find_connected_components, flood_fill, generate_sprite, is_contiguous, object_boundary,
    object_colors, object_interior, object_neighbors, object_position, orbit,
    random_free_location_for_object, random_free_location_for_sprite, random_sprite,
    randomly_scatter_points, randomly_spaced_indices, scale_pattern, scale_sprite,
    show_colored_grid, translate, visualize,
)

COMMON_PATH = Path(common.__file__)

SPEC_NAMES = {
    "np", "random", "Color", "flood_fill", "draw_line", "find_connected_components",
    "randomly_scatter_points", "scale_pattern", "scale_sprite", "blit", "blit_object",
    "blit_sprite", "bounding_box", "bounding_box_mask", "object_position", "object_colors",
    "crop", "translate", "collision", "contact", "randomly_spaced_indices",
    "check_between_objects", "random_free_location_for_sprite",
    "random_free_location_for_object", "object_interior", "object_boundary", "object_neighbors",
    "Symmetry", "orbit", "TranslationalSymmetry", "detect_translational_symmetry",
    "MirrorSymmetry", "detect_mirror_symmetry", "detect_rotational_symmetry",
    "show_colored_grid", "visualize", "apply_symmetry", "apply_diagonal_symmetry",
    "is_contiguous", "generate_sprite", "random_sprite", "detect_objects",
}

MOVES_4 = [(0, 1), (0, -1), (1, 0), (-1, 0)]


def grid(rows):
    return np.array(rows, dtype=np.int64)


def cells(mask):
    return [tuple(int(v) for v in p) for p in np.argwhere(mask)]


@pytest.fixture
def common_module(monkeypatch):
    """The file loaded standalone as module `common`, the way the sandbox loads it."""
    spec = importlib.util.spec_from_file_location("common", COMMON_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "common", module)
    return module


def star_import():
    namespace = {}
    exec("from common import *", namespace)
    namespace.pop("__builtins__")
    return namespace


# --- the module surface (§3) ----------------------------------------------------------------

def test_star_import_exposes_exactly_the_spec_names(common_module):
    assert set(star_import()) == SPEC_NAMES


def test_star_import_reexports_numpy_and_the_stdlib_random_module(common_module):
    namespace = star_import()
    assert namespace["np"] is np
    assert namespace["random"] is random


def test_star_import_gives_barc_model_colour_aliases(common_module):
    color = star_import()["Color"]
    assert (color.PURPLE, color.BROWN, color.GRAY) == (8, 9, 5)
    assert (color.TEAL, color.MAROON, color.GREY) == (8, 9, 5)


def test_program_using_np_random_and_purple_without_imports_runs(common_module):
    program = (
        "from common import *\n"
        "def transform(input_grid):\n"
        "    output_grid = np.copy(input_grid)\n"
        "    output_grid[output_grid != Color.BLACK] = Color.PURPLE\n"
        "    output_grid[0, 0] = random.choice([Color.BROWN])\n"
        "    return output_grid\n"
    )
    namespace = {}
    exec(program, namespace)
    assert namespace["transform"](grid([[0, 1], [2, 0]])).tolist() == [[9, 8], [8, 0]]


def test_module_imports_math_only_under_a_private_name(common_module):
    namespace = {}
    exec("from common import *", namespace)
    with pytest.raises(NameError):
        exec("math.floor(1.5)", namespace)


def test_loading_the_module_does_not_import_scipy():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('common', {str(COMMON_PATH)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print('scipy' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


# --- Color (§4.1) ---------------------------------------------------------------------------

def test_color_constants_are_plain_ints_with_the_arc_values():
    values = [Color.BLACK, Color.BLUE, Color.RED, Color.GREEN, Color.YELLOW, Color.GREY,
              Color.PINK, Color.ORANGE, Color.TEAL, Color.MAROON]
    assert values == list(range(10))
    assert all(type(v) is int for v in values)
    assert (Color.TRANSPARENT, Color.BACKGROUND) == (0, 0)


def test_color_palettes_are_ordered_lists():
    assert Color.ALL_COLORS == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert Color.NOT_BLACK == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_color_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError):
        Color.CYAN


# --- flood_fill (§4.2) ----------------------------------------------------------------------

def test_flood_fill_stops_at_other_colours():
    g = grid([[1, 1, 2], [1, 2, 1], [2, 1, 1]])
    assert flood_fill(g, 0, 0, 5) is None
    assert g.tolist() == [[5, 5, 2], [5, 2, 1], [2, 1, 1]]


def test_flood_fill_with_connectivity_8_crosses_diagonals():
    g = grid([[1, 1, 2], [1, 2, 1], [2, 1, 1]])
    flood_fill(g, 0, 0, 5, connectivity=8)
    assert g.tolist() == [[5, 5, 2], [5, 2, 5], [2, 5, 5]]


def test_flood_fill_rejects_other_connectivity_with_assertion_error():
    with pytest.raises(AssertionError, match="flood_fill: Connectivity must be 4 or 8."):
        flood_fill(grid([[0]]), 0, 0, 1, connectivity=6)


def test_flood_fill_out_of_range_start_raises_index_error_before_connectivity_check():
    with pytest.raises(IndexError):
        flood_fill(grid([[0]]), 3, 0, 1, connectivity=6)


def test_flood_fill_from_negative_row_leaks_into_row_zero():
    g = grid([[0, 0], [1, 1], [0, 0]])
    flood_fill(g, -1, 0, 7)
    # (2, 0) is painted through wrap-around, then row 0; (2, 1) is never a neighbour.
    assert g.tolist() == [[7, 7], [1, 1], [7, 0]]


def test_flood_fill_fills_a_blank_30x30_grid():
    g = np.zeros((30, 30), dtype=np.int64)
    flood_fill(g, 15, 15, 3)
    assert (g == 3).all()


# --- draw_line (§4.3) -----------------------------------------------------------------------

def test_draw_line_off_axis_end_point_runs_diagonally_past_it():
    g = np.zeros((6, 6), dtype=np.int64)
    assert draw_line(g, 0, 0, end_x=2, end_y=4, color=1) == (4, 4)
    assert cells(g) == [(i, i) for i in range(5)]


def test_draw_line_starting_off_grid_paints_from_where_it_enters():
    g = np.zeros((3, 3), dtype=np.int64)
    assert draw_line(g, -2, 1, direction=(1, 0), color=4) == (2, 1)
    assert cells(g) == [(0, 1), (1, 1), (2, 1)]


def test_draw_line_stops_before_a_stop_colour():
    g = grid([[0], [0], [3], [0]])
    assert draw_line(g, 0, 0, direction=(1, 0), color=1, stop_at_color=[3]) == (1, 0)
    assert g[:, 0].tolist() == [1, 1, 3, 0]


def test_draw_line_stop_colour_at_start_paints_nothing_and_returns_start():
    g = grid([[3, 0]])
    assert draw_line(g, 0, 0, direction=(0, 1), color=1, stop_at_color=[3]) == (0, 0)
    assert g.tolist() == [[3, 0]]


def test_draw_line_without_length_crosses_the_whole_grid():
    g = np.zeros((2, 5), dtype=np.int64)
    assert draw_line(g, 0, 0, direction=(0, 1), color=2) == (0, 4)
    assert g.tolist() == [[2, 2, 2, 2, 2], [0, 0, 0, 0, 0]]


def test_draw_line_normalises_direction_to_signs():
    g = np.zeros((4, 4), dtype=np.int64)
    assert draw_line(g, 0, 3, length=2, direction=(3, -2), color=1) == (1, 2)
    assert cells(g) == [(0, 3), (1, 2)]


def test_draw_line_non_positive_length_paints_nothing():
    g = np.zeros((2, 2), dtype=np.int64)
    assert draw_line(g, 1, 1, length=0, direction=(1, 0), color=1) == (1, 1)
    assert not g.any()


def test_draw_line_requires_both_or_neither_end_coordinate():
    with pytest.raises(AssertionError, match="Either both or neither"):
        draw_line(np.zeros((2, 2)), 0, 0, end_x=1, color=1)


def test_draw_line_rejects_fractional_start_but_accepts_integral_floats():
    with pytest.raises(AssertionError, match="x and y must be integers"):
        draw_line(np.zeros((2, 2)), 0.5, 0, direction=(1, 0), color=1)
    end = draw_line(np.zeros((2, 2)), 1.0, 0, direction=(0, 1), color=1)
    assert end == (1, 1) and type(end[0]) is int


def test_draw_line_without_color_raises_type_error_on_int_grid():
    with pytest.raises(TypeError):
        draw_line(np.zeros((2, 2), dtype=np.int64), 0, 0, direction=(1, 0))


def test_draw_line_without_direction_or_end_raises_type_error():
    with pytest.raises(TypeError):
        draw_line(np.zeros((2, 2), dtype=np.int64), 0, 0, color=1)


# --- find_connected_components (§4.4) -------------------------------------------------------

def test_find_connected_components_orders_colours_by_set_order_not_sorted():
    components = find_connected_components(grid([[1, 0, 8]]))
    assert [c.tolist() for c in components] == [[[0, 0, 8]], [[1, 0, 0]]]


def test_find_connected_components_colour_order_depends_on_first_appearance():
    first = [int(c.max()) for c in find_connected_components(grid([[9, 1, 2]]))]
    second = [int(c.max()) for c in find_connected_components(grid([[1, 9, 2]]))]
    assert (first, second) == ([9, 2, 1], [1, 2, 9])


def test_find_connected_components_orders_within_a_colour_by_first_row_major_cell():
    components = find_connected_components(grid([[0, 1], [1, 0]]))
    assert [c.tolist() for c in components] == [[[0, 1], [0, 0]], [[0, 0], [1, 0]]]


def test_find_connected_components_non_monochromatic_mixes_colours():
    components = find_connected_components(grid([[1, 2, 0], [0, 0, 3]]), monochromatic=False)
    assert [c.tolist() for c in components] == [[[1, 2, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 3]]]


def test_find_connected_components_connectivity_8_joins_diagonals():
    g = grid([[1, 0], [0, 1]])
    assert len(find_connected_components(g, connectivity=4)) == 2
    assert len(find_connected_components(g, connectivity=8)) == 1


def test_find_connected_components_returns_int64_copies_even_for_bool_input():
    g = np.array([[True, False]])
    (component,) = find_connected_components(g)
    assert component.dtype == np.int64 and component.tolist() == [[1, 0]]
    component[0, 0] = 0
    assert g[0, 0]


def test_find_connected_components_rejects_connectivity_6_with_value_error():
    with pytest.raises(ValueError, match="Connectivity must be 4 or 8."):
        find_connected_components(grid([[1]]), connectivity=6)


def test_find_connected_components_of_a_blank_grid_is_empty():
    assert find_connected_components(np.zeros((3, 3), dtype=np.int64)) == []


# --- randomly_scatter_points (§4.5) ---------------------------------------------------------

def test_randomly_scatter_points_paints_ceil_density_cells_and_returns_the_grid():
    g = np.zeros((3, 3), dtype=np.int64)
    np.random.seed(0)
    assert randomly_scatter_points(g, 4) is g
    assert np.count_nonzero(g == 4) == 5


def test_randomly_scatter_points_draws_two_numpy_randints_per_attempt():
    g = grid([[1, 0], [0, 0]])
    state = random.getstate()
    np.random.seed(7)
    randomly_scatter_points(g, 2, density=0.5)
    np.random.seed(7)
    expected = grid([[1, 0], [0, 0]])
    painted = 0
    while painted < 2:
        x, y = np.random.randint(0, 2), np.random.randint(0, 2)
        if expected[x, y] == 0:
            expected[x, y], painted = 2, painted + 1
    assert g.tolist() == expected.tolist()
    assert random.getstate() == state  # the stdlib generator is untouched


# --- scaling (§4.6, §4.7) -------------------------------------------------------------------

def test_scale_pattern_prints_deprecation_and_scales(capsys):
    assert scale_pattern(grid([[1, 2]]), 2).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]
    assert capsys.readouterr().out == "scale_pattern: DEPRECATED, switch to scale_sprite\n"


def test_scale_sprite_turns_each_cell_into_a_block():
    assert scale_sprite(grid([[1], [2]]), 2).tolist() == [[1, 1], [1, 1], [2, 2], [2, 2]]


def test_scale_sprite_keeps_bool_dtype_and_accepts_numpy_int_factor():
    result = scale_sprite(np.array([[True, False]]), np.int64(3))
    assert result.dtype == bool and result.shape == (3, 6)


def test_scale_sprite_rejects_float_factor_with_type_error():
    with pytest.raises(TypeError):
        scale_sprite(grid([[1]]), 2.0)


def test_scale_sprite_zero_factor_gives_empty_array():
    assert scale_sprite(grid([[1, 2]]), 0).shape == (0, 0)


# --- blitting (§4.8-§4.10) ------------------------------------------------------------------

def test_blit_is_opaque_by_default_and_returns_the_grid():
    g = np.ones((2, 2), dtype=np.int64)
    assert blit(g, grid([[0, 5]])) is g
    assert g.tolist() == [[0, 5], [1, 1]]


def test_blit_with_background_skips_those_sprite_cells():
    g = np.ones((2, 2), dtype=np.int64)
    blit(g, grid([[0, 5]]), background=0)
    assert g.tolist() == [[1, 5], [1, 1]]


def test_blit_clips_sprite_at_negative_offsets():
    g = np.zeros((2, 2), dtype=np.int64)
    blit(g, grid([[1, 2], [3, 4]]), -1, -1)
    assert g.tolist() == [[4, 0], [0, 0]]


def test_blit_truncates_float_offsets_toward_zero():
    g = np.zeros((3, 3), dtype=np.int64)
    blit(g, grid([[7]]), 1.7, -0.5)
    assert cells(g) == [(1, 0)]


def test_blit_casts_values_to_the_grid_dtype():
    g = np.zeros((1, 1), dtype=bool)
    blit(g, grid([[3]]))
    assert g[0, 0] is np.True_


def test_blit_object_draws_in_place_with_black_transparent():
    g = np.ones((2, 2), dtype=np.int64)
    assert blit_object(g, grid([[0, 2], [0, 0]])) is g
    assert g.tolist() == [[1, 2], [1, 1]]


def test_blit_sprite_treats_black_as_transparent_by_default():
    g = np.ones((2, 3), dtype=np.int64)
    blit_sprite(g, grid([[0, 4]]), 1, 1)
    assert g.tolist() == [[1, 1, 1], [1, 1, 4]]


def test_blit_sprite_with_background_none_is_opaque():
    g = np.ones((2, 3), dtype=np.int64)
    blit_sprite(g, grid([[0, 4]]), x=1, y=1, background=None)
    assert g.tolist() == [[1, 1, 1], [1, 0, 4]]


def test_blit_sprite_requires_x_and_y():
    with pytest.raises(TypeError):
        blit_sprite(np.zeros((2, 2)), grid([[1]]))


# --- bounding boxes and positions (§4.11-§4.15) ---------------------------------------------

def test_bounding_box_returns_x_y_width_height_as_python_ints():
    g = np.zeros((4, 5), dtype=np.int64)
    g[1, 2] = g[2, 4] = 3
    box = bounding_box(g)
    assert box == (1, 2, 2, 3) and all(type(v) is int for v in box)


def test_bounding_box_of_an_empty_grid_is_shape_and_negative_shape():
    assert bounding_box(np.zeros((3, 4), dtype=np.int64)) == (3, 4, -3, -4)


def test_bounding_box_counts_true_cells_of_a_bool_mask():
    assert bounding_box(np.array([[False, False], [False, True]])) == (1, 1, 1, 1)


def test_bounding_box_of_a_nested_list_raises_attribute_error():
    with pytest.raises(AttributeError):
        bounding_box([[0, 1]])


def test_bounding_box_mask_is_true_on_the_box_only():
    g = np.zeros((3, 4), dtype=np.int64)
    g[0, 1] = g[1, 2] = 5
    assert bounding_box_mask(g).tolist() == [
        [False, True, True, False], [False, True, True, False], [False, False, False, False]]


def test_bounding_box_mask_of_an_empty_grid_is_all_false():
    mask = bounding_box_mask(np.zeros((2, 2), dtype=np.int64))
    assert mask.dtype == bool and not mask.any()


OBJECT = np.zeros((5, 5), dtype=np.int64)
OBJECT[1, 1] = OBJECT[2, 3] = 1  # bounding box x=1, y=1, width 2, height 3


@pytest.mark.parametrize("anchor, expected", [
    ("upper left", (1, 1)), ("upper right", (2, 1)), ("lower left", (1, 3)),
    ("lower right", (2, 3)), ("center", (1.5, 2)), ("upper center", (1.5, 1)),
    ("lower center", (1.5, 3)), ("left center", (1, 2)), ("right center", (2, 2)),
    ("Top Left", (1, 1)), ("BOTTOM right", (2, 3)),
])
def test_object_position_follows_the_anchor_table(anchor, expected):
    assert object_position(OBJECT, anchor=anchor) == expected


def test_object_position_keeps_half_integers_as_floats_and_whole_values_as_ints():
    px, py = object_position(OBJECT, anchor="center")
    assert (type(px), type(py)) == (float, int)


def test_object_position_rejects_unknown_anchor_with_assertion_error():
    with pytest.raises(AssertionError, match="Invalid anchor"):
        object_position(OBJECT, anchor="middle")


def test_object_position_rejects_non_string_anchor_with_attribute_error():
    with pytest.raises(AttributeError):
        object_position(OBJECT, anchor=3)


def test_object_position_of_an_empty_object_uses_the_empty_box():
    empty = np.zeros((3, 4), dtype=np.int64)
    assert object_position(empty) == (3, 4)
    assert object_position(empty, anchor="center") == (1, 1.5)


def test_object_colors_uses_set_order_and_numpy_scalars():
    colors = object_colors(grid([[1, 8, 0, 9, 2]]))
    assert colors == [8, 1, 2, 9]
    assert all(type(c) is np.int64 for c in colors)


def test_object_colors_includes_zero_when_background_is_absent():
    assert object_colors(grid([[0, 3]]), background=7) == [0, 3]


def test_object_colors_of_an_empty_object_is_empty():
    assert object_colors(np.zeros((2, 2), dtype=np.int64)) == []


def test_crop_returns_a_view_that_writes_through():
    g = np.zeros((4, 4), dtype=np.int64)
    g[1, 2] = g[2, 3] = 6
    view = crop(g)
    assert view.tolist() == [[6, 0], [0, 6]]
    view[...] = 1
    assert g[1:3, 2:4].tolist() == [[1, 1], [1, 1]]


def test_crop_of_an_empty_grid_is_zero_by_zero():
    assert crop(np.zeros((3, 3), dtype=np.int64)).shape == (0, 0)


# --- translate (§4.16) ----------------------------------------------------------------------

def test_translate_shifts_and_loses_cells_moved_off_the_array():
    obj = grid([[1, 2], [3, 4]])
    assert translate(obj, 1, 0).tolist() == [[0, 0], [1, 2]]
    assert translate(obj, 0, -1).tolist() == [[2, 0], [4, 0]]


def test_translate_fills_vacated_cells_with_background_and_keeps_dtype():
    result = translate(np.array([[1, 9]], dtype=np.uint8), 0, 1, background=9)
    assert result.dtype == np.uint8 and result.tolist() == [[9, 1]]


def test_translate_rejects_float_shift_with_index_error():
    with pytest.raises(IndexError):
        translate(grid([[1]]), 0.0, 0)


# --- collision and contact (§4.17, §4.18) ---------------------------------------------------

DOT = np.zeros((3, 3), dtype=np.int64)
DOT[1, 1] = 1
PIXEL = grid([[2]])


def test_collision_detects_overlap_of_placed_objects():
    assert collision(object1=DOT, object2=PIXEL, x2=1, y2=1) is True
    assert collision(object1=DOT, object2=PIXEL, x2=0, y2=1) is False


def test_collision_truncates_the_offset_difference_toward_zero():
    assert collision(object1=DOT, object2=PIXEL, x2=1.9, y2=1.9) is True
    assert collision(object1=DOT, object2=PIXEL, x1=0.5, x2=1, y2=1) is False


def test_collision_called_positionally_raises_attribute_error():
    with pytest.raises(AttributeError):
        collision(DOT, PIXEL)


def test_contact_counts_edge_neighbours_and_overlap():
    assert contact(object1=DOT, object2=PIXEL, x2=1, y2=2) is True
    assert contact(object1=DOT, object2=PIXEL, x2=1, y2=1) is True
    assert contact(object1=DOT, object2=PIXEL, x2=0, y2=3) is False


def test_contact_counts_diagonal_neighbours_only_with_connectivity_8():
    assert contact(object1=DOT, object2=PIXEL, x2=2, y2=2) is False
    assert contact(object1=DOT, object2=PIXEL, x2=2, y2=2, connectivity=8) is True


def test_contact_rejects_connectivity_6_with_value_error():
    with pytest.raises(ValueError, match="Connectivity must be 4 or 8."):
        contact(object1=DOT, object2=PIXEL, connectivity=6)


# --- randomly_spaced_indices (§4.19) --------------------------------------------------------

def test_randomly_spaced_indices_are_sorted_padded_and_inside_the_borders():
    for seed in range(20):
        random.seed(seed)
        indices = randomly_spaced_indices(12, 3, border_size=2, padding=1)
        assert indices.dtype == np.int64
        assert list(indices) == sorted(indices)
        assert indices[0] >= 2 and indices[-1] <= 12 - 3
        assert np.all(np.diff(indices) >= 2)


def test_randomly_spaced_indices_right_border_is_effectively_two():
    assert randomly_spaced_indices(6, 1, border_size=3).tolist() == [3]


def test_randomly_spaced_indices_uses_one_random_choice_per_index():
    random.seed(11)
    result = randomly_spaced_indices(5, 1, border_size=0)
    random.seed(11)
    assert result.tolist() == [random.choice(range(5))]


def test_randomly_spaced_indices_with_zero_indices_is_empty():
    assert randomly_spaced_indices(10, 0).tolist() == []


def test_randomly_spaced_indices_running_out_of_candidates_raises_index_error():
    with pytest.raises(IndexError):
        randomly_spaced_indices(3, 2, border_size=0, padding=2)


# --- check_between_objects (§4.20) ----------------------------------------------------------

LEFT = np.zeros((5, 5), dtype=np.int64)
LEFT[0, 1:4] = 1
RIGHT = np.zeros((5, 5), dtype=np.int64)
RIGHT[4, 1:4] = 2


def test_check_between_objects_finds_pixel_in_the_x_corridor():
    assert check_between_objects(LEFT, RIGHT, 2, 2) is True
    assert check_between_objects(RIGHT, LEFT, 2, 2) is True


def test_check_between_objects_rejects_pixel_outside_the_corridor():
    assert check_between_objects(LEFT, RIGHT, 2, 0) is False
    assert check_between_objects(LEFT, RIGHT, 0, 2) is False


def test_check_between_objects_padding_narrows_the_corridor():
    assert check_between_objects(LEFT, RIGHT, 2, 2, padding=1) is True
    assert check_between_objects(LEFT, RIGHT, 2, 3, padding=1) is False


def test_check_between_objects_finds_pixel_in_the_y_corridor():
    assert check_between_objects(LEFT.T.copy(), RIGHT.T.copy(), 2, 2) is True


# --- random free locations (§4.21, §4.22) ---------------------------------------------------

def test_random_free_location_chooses_from_free_positions_x_outer_y_inner():
    g = np.zeros((3, 3), dtype=np.int64)
    g[1, 1] = 1
    random.seed(3)
    location = random_free_location_for_sprite(g, grid([[5]]))
    random.seed(3)
    assert location == random.choice(
        [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)])
    assert all(type(v) is int for v in location)


def test_random_free_location_lets_background_sprite_cells_cover_anything():
    g = grid([[0, 0], [0, 1]])
    assert random_free_location_for_sprite(g, grid([[1, 1], [1, 0]])) == (0, 0)


def test_random_free_location_padding_dilates_with_the_given_connectivity():
    g = np.zeros((3, 3), dtype=np.int64)
    g[0, 0] = 1
    block = np.ones((2, 2), dtype=np.int64)
    assert random_free_location_for_sprite(g, block, padding=1, padding_connectivity=4) == (1, 1)
    with pytest.raises(ValueError, match="No free location for sprite found."):
        random_free_location_for_sprite(g, block, padding=1, padding_connectivity=8)


def test_random_free_location_checks_padding_connectivity_only_when_padding():
    g = np.zeros((1, 1), dtype=np.int64)
    assert random_free_location_for_sprite(g, grid([[1]]), padding_connectivity=5) == (0, 0)
    with pytest.raises(ValueError, match="padding_connectivity must be 4 or 8."):
        random_free_location_for_sprite(g, grid([[1]]), padding=1, padding_connectivity=5)


def test_random_free_location_keeps_border_size_from_every_edge():
    g = np.zeros((4, 4), dtype=np.int64)
    assert random_free_location_for_sprite(g, np.ones((2, 2)), border_size=1) == (1, 1)


def test_random_free_location_for_a_sprite_larger_than_the_grid_raises_value_error():
    with pytest.raises(ValueError, match="No free location for sprite found."):
        random_free_location_for_sprite(np.zeros((2, 2)), np.ones((3, 1)))


def test_random_free_location_for_object_is_an_alias():
    g = np.zeros((4, 4), dtype=np.int64)
    random.seed(9)
    expected = random_free_location_for_sprite(g, grid([[1]]), border_size=1)
    random.seed(9)
    assert random_free_location_for_object(g, grid([[1]]), border_size=1) == expected


# --- object interior, boundary, neighbours (§4.23-§4.25) ------------------------------------

RING = np.zeros((5, 5), dtype=np.int64)
RING[1:4, 1:4] = 3
RING[2, 2] = 0


def test_object_interior_includes_enclosed_holes():
    interior = object_interior(RING)
    assert interior.dtype == bool
    assert cells(interior) == [(x, y) for x in range(1, 4) for y in range(1, 4)]


def test_object_interior_walls_meeting_diagonally_still_enclose():
    diamond = grid([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    assert object_interior(diamond)[1, 1]


def test_object_interior_is_all_true_when_background_does_not_touch_the_border():
    assert object_interior(RING, background=3).all()


def test_object_boundary_excludes_cells_touching_only_holes():
    g = np.zeros((7, 7), dtype=np.int64)
    g[1:6, 1:6] = 1
    g[3, 3] = 0
    boundary = object_boundary(g)
    expected = np.zeros((7, 7), dtype=bool)
    expected[1:6, 1:6] = True
    expected[2:5, 2:5] = False
    assert boundary.tolist() == expected.tolist()


def test_object_boundary_includes_object_cells_on_the_grid_frame():
    assert object_boundary(np.ones((3, 3), dtype=np.int64)).tolist() == [
        [True, True, True], [True, False, True], [True, True, True]]


def test_object_boundary_excludes_cells_only_diagonal_to_the_exterior():
    g = np.zeros((5, 5), dtype=np.int64)
    g[1:4, 1:4] = 1
    g[1, 1] = 0
    assert not object_boundary(g)[2, 2]


def test_object_neighbors_includes_the_enclosed_hole():
    neighbors = object_neighbors(RING)
    assert neighbors[2, 2]
    assert np.count_nonzero(neighbors) == 13


def test_object_neighbors_with_connectivity_8_adds_diagonal_cells():
    neighbors = object_neighbors(RING, connectivity=8)
    assert np.count_nonzero(neighbors) == 17 and neighbors[0, 0]


def test_object_neighbors_rejects_connectivity_6_with_value_error():
    with pytest.raises(ValueError, match="Connectivity must be 4 or 8."):
        object_neighbors(RING, connectivity=6)


# --- symmetry objects and orbit (§4.26-§4.28, §4.31) ----------------------------------------

def test_symmetry_base_apply_returns_none():
    assert Symmetry().apply(1, 2) is None


def test_mirror_symmetry_is_not_a_symmetry_subclass_but_translation_is():
    assert not isinstance(MirrorSymmetry(1, None), Symmetry)
    assert isinstance(TranslationalSymmetry(1, 0), Symmetry)


def test_translational_symmetry_applies_iters_times_the_vector():
    symmetry = TranslationalSymmetry(2, -1)
    assert symmetry.apply(1, 5, 3) == (7, 2)
    assert symmetry.apply(1, 5, -1) == (-1, 6)


def test_translational_symmetry_rounds_floats_half_to_even_but_truncates_arrays():
    symmetry = TranslationalSymmetry(-4, 0)
    assert symmetry.apply(0.5, 0) == (-4, 0)  # -3.5 rounds to the even -4
    xs, _ = symmetry.apply(np.array([0.5]), np.array([0]))
    assert xs.tolist() == [-3]  # astype(int) truncates toward zero


def test_translational_symmetry_iter_range_crosses_the_grid():
    assert TranslationalSymmetry(2, 0)._iter_range((5, 9)) == (-3, 4)
    assert TranslationalSymmetry(2, 3)._iter_range((3, 10)) == (-4, 5)
    assert TranslationalSymmetry(0, 0)._iter_range((5, 5)) == (0, 1)


def test_translational_symmetry_repr_names_both_components():
    symmetry = TranslationalSymmetry(1, -2)
    assert repr(symmetry) == "TranslationalSymmetry(translate_x=1, translate_y=-2)"
    assert str(symmetry) == repr(symmetry)


def test_mirror_symmetry_reflects_for_odd_iters_only():
    symmetry = MirrorSymmetry(1.5, None)
    assert symmetry.apply(0, 4) == (3, 4)
    assert symmetry.apply(0.25, 4, iters=2) == (0.25, 4)  # even: unchanged and uncast
    assert symmetry._iter_range((5, 5)) == (0, 2)


def test_mirror_symmetry_repr_shows_both_centres():
    assert repr(MirrorSymmetry(1.5, None)) == "MirrorSymmetry(mirror_x=1.5, mirror_y=None)"


def test_orbit_collects_images_in_set_order():
    assert orbit(np.zeros((4, 4)), 0, 1, [MirrorSymmetry(1.5, None)]) == [(0, 1), (3, 1)]
    assert orbit(np.zeros((5, 1)), 0, 0, [TranslationalSymmetry(2, 0)]) == [
        (4, 0), (2, 0), (0, 0)]


def test_orbit_with_no_symmetries_returns_the_point_even_off_grid():
    assert orbit(np.zeros((2, 2)), 10, 10, []) == [(10, 10)]


def test_orbit_drops_combinations_that_leave_the_grid():
    assert orbit(np.zeros((2, 2)), 5, 0, [MirrorSymmetry(None, 0.5)]) == []


def test_orbit_of_a_bare_symmetry_raises_attribute_error():
    with pytest.raises(AttributeError):
        orbit(np.zeros((2, 2)), 0, 0, [Symmetry()])


# --- symmetry detection (§4.29-§4.33) -------------------------------------------------------

PLUS = grid([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


def test_detect_translational_symmetry_prefers_negative_shift_on_ties():
    stripes = grid([[1, 1], [2, 2], [1, 1], [2, 2]])
    assert [repr(s) for s in detect_translational_symmetry(stripes)] == [
        "TranslationalSymmetry(translate_x=-2, translate_y=0)",
        "TranslationalSymmetry(translate_x=0, translate_y=-1)"]


def test_detect_translational_symmetry_falls_back_to_a_diagonal_shift():
    assert [repr(s) for s in detect_translational_symmetry(np.eye(3, dtype=np.int64))] == [
        "TranslationalSymmetry(translate_x=1, translate_y=1)"]


def test_detect_translational_symmetry_of_an_empty_grid_is_empty():
    assert detect_translational_symmetry(np.zeros((3, 3), dtype=np.int64)) == []


def test_detect_mirror_symmetry_returns_three_ties_for_a_doubly_symmetric_grid():
    assert [repr(s) for s in detect_mirror_symmetry(PLUS)] == [
        "MirrorSymmetry(mirror_x=1, mirror_y=None)",
        "MirrorSymmetry(mirror_x=None, mirror_y=1)",
        "MirrorSymmetry(mirror_x=1, mirror_y=1)"]


def test_detect_mirror_symmetry_of_a_single_pixel_gives_three_ties_on_it():
    g = np.zeros((3, 3), dtype=np.int64)
    g[0, 2] = 4
    assert [(s.mirror_x, s.mirror_y) for s in detect_mirror_symmetry(g)] == [
        (0, None), (None, 2), (0, 2)]


def test_detect_mirror_symmetry_finds_half_integer_centres():
    (symmetry,) = detect_mirror_symmetry(grid([[1, 2], [1, 2]]))
    assert (symmetry.mirror_x, symmetry.mirror_y) == (0.5, None)


def test_detect_mirror_symmetry_of_an_empty_grid_is_empty():
    assert detect_mirror_symmetry(np.zeros((3, 3), dtype=np.int64)) == []


def test_detect_rotational_symmetry_finds_the_centre_of_a_plus():
    symmetry = detect_rotational_symmetry(PLUS)
    assert (symmetry.center_x, symmetry.center_y) == (1, 1)
    assert isinstance(symmetry, Symmetry)


def test_detect_rotational_symmetry_apply_rotates_and_ignores_negative_iters():
    symmetry = detect_rotational_symmetry(PLUS)
    assert symmetry.apply(0, 1) == (1, 2)
    assert symmetry.apply(0, 1, 4) == (0, 1)
    assert symmetry.apply(0, 1, -1) == (0, 1)
    assert symmetry._iter_range((3, 3)) == (0, 4)


def test_detect_rotational_symmetry_ignores_180_degree_only_symmetry():
    assert detect_rotational_symmetry(grid([[1, 2], [2, 1]])) is None


def test_orbit_under_detected_rotation_visits_the_four_arms():
    symmetry = detect_rotational_symmetry(PLUS)
    assert sorted(orbit(PLUS, 0, 1, [symmetry])) == [(0, 1), (1, 0), (1, 2), (2, 1)]


# --- debug output (§4.34, §4.35) ------------------------------------------------------------

def test_show_colored_grid_prints_the_transpose_in_ansi_colours(capsys):
    show_colored_grid(grid([[1, 2]]))
    assert capsys.readouterr().out == "\x1b[38;5;4m1\x1b[0m\n\x1b[38;5;1m2\x1b[0m\n"


def test_show_colored_grid_rejects_values_of_ten_or_more():
    with pytest.raises(IndexError):
        show_colored_grid(grid([[10]]))


def test_visualize_prints_examples_and_the_failure_count(capsys):
    calls = []

    def flaky_transform(input_grid):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first call fails")
        return input_grid

    assert visualize(lambda: grid([[1]]), flaky_transform, n_examples=2, n_attempts=5) is None
    out = capsys.readouterr().out
    assert "Example 1" in out and "Example 2" in out and "Example 3" not in out
    assert "1/3 failures" in out and "RuntimeError: first call fails" in out


# --- apply_symmetry, apply_diagonal_symmetry, is_contiguous (§4.36-§4.38) ------------------

def test_apply_symmetry_horizontal_mirrors_axis_0_with_the_lower_half_winning():
    sprite = grid([[1, 0], [3, 2]])
    assert apply_symmetry(sprite, "horizontal") is sprite
    assert sprite.tolist() == [[1, 2], [1, 2]]


def test_apply_symmetry_vertical_mirrors_axis_1():
    assert apply_symmetry(grid([[0, 5, 7], [4, 0, 0]]), "vertical").tolist() == [
        [7, 5, 7], [4, 0, 4]]


def test_apply_symmetry_rejects_unknown_type_with_value_error():
    with pytest.raises(ValueError, match="Invalid symmetry type diagonal."):
        apply_symmetry(grid([[1]]), "diagonal")


def test_apply_diagonal_symmetry_copies_across_the_main_diagonal():
    assert apply_diagonal_symmetry(grid([[0, 1], [2, 0]])).tolist() == [[0, 1], [1, 0]]
    assert apply_diagonal_symmetry(grid([[0, 0], [2, 0]])).tolist() == [[0, 2], [2, 0]]


def test_apply_diagonal_symmetry_rejects_non_square_sprite():
    with pytest.raises(ValueError, match="Diagonal symmetry requires a square sprite."):
        apply_diagonal_symmetry(grid([[1, 2]]))


def test_is_contiguous_needs_exactly_one_component():
    assert is_contiguous(grid([[1, 1], [0, 0]])) is True
    assert is_contiguous(grid([[1, 0], [0, 1]])) is False
    assert is_contiguous(grid([[1, 0], [0, 1]]), connectivity=8) is True
    assert is_contiguous(np.zeros((2, 2), dtype=np.int64)) is False


def test_is_contiguous_rejects_connectivity_6_with_value_error():
    with pytest.raises(ValueError, match="Connectivity must be 4 or 8."):
        is_contiguous(grid([[1]]), connectivity=6)


# --- generate_sprite and random_sprite (§4.39, §4.40) ---------------------------------------

def test_generate_sprite_draws_start_cell_then_walk_steps_in_order():
    random.seed(5)
    sprite = generate_sprite(1, 1, "not_symmetric", color_palate=[3])
    after = random.random()
    random.seed(5)
    random.randint(0, 0), random.randint(0, 0)
    if random.random() < 0.33:
        random.choice(range(1))
    random.choice(MOVES_4)
    assert sprite.tolist() == [[3]] and sprite.dtype == np.int64
    assert after == random.random()


def test_generate_sprite_draws_its_palette_from_all_colors_without_background():
    random.seed(2)
    sprite = generate_sprite(1, 1, "not_symmetric")
    random.seed(2)
    k = 1
    while k < 9 and random.random() < 0.3:
        k += 1
    palette = random.sample([1, 2, 3, 4, 5, 6, 7, 8, 9], k)
    assert sprite.tolist() == [[palette[0]]]


@pytest.mark.parametrize("symmetry_type, flip", [
    ("horizontal", lambda s: s[::-1]), ("vertical", lambda s: s[:, ::-1]),
    ("radial", np.rot90)])
def test_generate_sprite_output_has_the_requested_symmetry(symmetry_type, flip):
    for seed in range(5):
        random.seed(seed)
        sprite = generate_sprite(4, 4, symmetry_type)
        assert sprite.shape == (4, 4)
        assert np.array_equal(sprite, flip(sprite))


def test_generate_sprite_diagonal_is_symmetric_about_one_of_the_diagonals():
    for seed in range(5):
        random.seed(seed)
        s = generate_sprite(4, 4, "diagonal")
        assert np.array_equal(s, s.T) or np.array_equal(s[::-1], s[::-1].T)


def test_generate_sprite_mirror_is_symmetric_on_both_axes_and_contiguous():
    for seed in range(5):
        random.seed(seed)
        sprite = generate_sprite(5, 4, "mirror")
        assert np.array_equal(sprite, sprite[::-1]) and np.array_equal(sprite, sprite[:, ::-1])
        assert is_contiguous(sprite)


def test_generate_sprite_radial_requires_a_square():
    with pytest.raises(AssertionError, match="Radial symmetry requires a square grid."):
        generate_sprite(3, 4, "radial")


def test_generate_sprite_rejects_unknown_symmetry_type():
    with pytest.raises(ValueError, match="Invalid symmetry type spiral."):
        generate_sprite(3, 3, "spiral", color_palate=[1])


def test_generate_sprite_checks_connectivity_after_drawing_the_start_cell():
    random.seed(0)
    with pytest.raises(ValueError, match="Connectivity must be 4 or 8."):
        generate_sprite(3, 3, "not_symmetric", color_palate=[1], connectivity=6)
    after = random.random()
    random.seed(0)
    random.randint(0, 2), random.randint(0, 2)
    assert after == random.random()


def test_random_sprite_touches_all_four_edges_and_is_contiguous():
    for seed in range(30):
        random.seed(seed)
        sprite = random_sprite([3, 4, 5], range(3, 6))
        assert sprite.shape[0] in (3, 4, 5) and sprite.shape[1] in (3, 4, 5)
        for edge in (sprite[0], sprite[-1], sprite[:, 0], sprite[:, -1]):
            assert edge.any()
        assert is_contiguous(sprite)


def test_random_sprite_of_size_one_skips_the_gauss_draw():
    random.seed(4)
    sprite = random_sprite(1, 1, symmetry="not_symmetric", color_palette=[6])
    after = random.random()
    random.seed(4)
    random.choice([1]), random.choice([1])
    random.randint(0, 0), random.randint(0, 0)
    if random.random() < 0.33:
        random.choice(range(1))
    random.choice(MOVES_4)
    assert sprite.tolist() == [[6]]
    assert after == random.random()


def test_random_sprite_draws_density_by_gauss_for_larger_sizes():
    random.seed(1)
    sprite = random_sprite(6, 6, symmetry="not_symmetric", color_palette=[2])
    random.seed(1)
    random.choice([6]), random.choice([6])
    density = min(0.95, max(0.4, random.gauss(0.5, 0.1)))
    expected = generate_sprite(6, 6, "not_symmetric", fill_percentage=density, color_palate=[2])
    assert np.array_equal(sprite, expected)
    assert np.count_nonzero(sprite) == math.ceil(density * 36)


def test_random_sprite_radial_without_a_square_size_raises_index_error():
    with pytest.raises(IndexError):
        random_sprite(3, 4, symmetry="radial")


# --- detect_objects (§4.41) -----------------------------------------------------------------

TWO_OBJECTS = np.zeros((3, 4), dtype=np.int64)
TWO_OBJECTS[0, 0] = 1
TWO_OBJECTS[1:3, 2:4] = 2


def test_detect_objects_with_default_arguments_finds_nothing():
    assert detect_objects(TWO_OBJECTS) == []


def test_detect_objects_ignores_a_positional_predicate():
    assert len(detect_objects(TWO_OBJECTS, lambda sprite: False, connectivity=4)) == 2


def test_detect_objects_sorts_largest_box_first():
    objects = detect_objects(TWO_OBJECTS, connectivity=4)
    assert [int(o.max()) for o in objects] == [2, 1]


def test_detect_objects_passes_cropped_components_to_the_predicate():
    shapes = []
    detect_objects(TWO_OBJECTS, predicate=lambda s: shapes.append(s.shape) or True,
                   connectivity=4)
    assert shapes == [(1, 1), (2, 2)]


def test_detect_objects_colors_filter_empty_list_means_no_filter_for_components():
    assert len(detect_objects(TWO_OBJECTS, connectivity=4, colors=[])) == 2
    assert [int(o.max()) for o in detect_objects(TWO_OBJECTS, connectivity=4, colors=[1])] == [1]


def test_detect_objects_colors_empty_list_rejects_every_window():
    assert detect_objects(TWO_OBJECTS, allowed_dimensions=[(1, 1)], colors=[]) == []


def test_detect_objects_keeps_components_only_if_grid_shape_is_an_allowed_tuple():
    g = grid([[1, 2], [0, 0]])
    kept = detect_objects(g, monochromatic=True, connectivity=4, allowed_dimensions=[(2, 2)],
                          can_overlap=True)
    dropped = detect_objects(g, monochromatic=True, connectivity=4,
                             allowed_dimensions=[[2, 2]], can_overlap=True)
    assert [o.tolist() for o in kept] == [[[1, 0], [0, 0]], [[0, 2], [0, 0]], [[1, 2], [0, 0]]]
    assert [o.tolist() for o in dropped] == [[[1, 2], [0, 0]]]


def test_detect_objects_window_scan_keeps_duplicates_when_overlap_is_allowed():
    block = np.zeros((4, 4), dtype=np.int64)
    block[1:3, 1:3] = 5
    windows = detect_objects(block, connectivity=4, allowed_dimensions=[(2, 2)],
                             can_overlap=True)
    assert len(windows) == 9
    assert windows[0].tolist()[1] == [0, 5, 0, 0]  # first window: top-left (0, 0)


def test_detect_objects_overlap_removal_keeps_a_window_covering_everything():
    block = np.zeros((4, 4), dtype=np.int64)
    block[1:3, 1:3] = 5
    (only,) = detect_objects(block, connectivity=4, allowed_dimensions=[(2, 2)])
    assert np.array_equal(only, block)


def test_detect_objects_overlap_tie_goes_to_the_later_candidate():
    (chosen,) = detect_objects(grid([[1, 1, 1]]), allowed_dimensions=[(1, 2)])
    assert chosen.tolist() == [[0, 1, 1]]


def test_detect_objects_lists_loners_before_chosen_overlapping_objects():
    objects = detect_objects(grid([[1, 1, 1, 0, 0, 0, 2]]), allowed_dimensions=[(1, 2)])
    assert [o.tolist()[0] for o in objects] == [
        [0, 0, 0, 0, 0, 0, 2], [1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0]]
