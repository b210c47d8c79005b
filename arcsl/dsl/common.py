"""The BARC `common` DSL, rebuilt clean-room from a behavioural specification of BARC's module.

BARC seed programs and the programs the BARC induction models write start with
`from common import *`. The sandbox loads this file standalone as a module named `common`, so it
imports only the stdlib and numpy at load time; scipy is imported on first use, because importing
it costs about half a second and the sandbox may load this module once per program.

What is covered:
- every public name of the original module, with the same parameter names, defaults, return
  types, result orderings and kinds of error (spec §2-§5);
- the odd corners the spec marks as gotchas (off-axis `draw_line` end points, `crop` returning a
  view, unsorted set-order colour groups, `detect_objects` ignoring a positional predicate, ...):
  programs depend on them, so they are kept, not fixed;
- the same stdlib `random` / `numpy.random` calls in the same order (spec §6), so seeded input
  generators draw the same grids;
- the star-import surface (spec §3): the public names plus `np` and `random`. Every helper and
  module-level import is underscore-prefixed so that it does not leak into programs;
- `Color.PURPLE`, `Color.BROWN` (and `GRAY`), which BARC-model programs use.

What is not covered:
- the original's recursion limits: fills are iterative, so a fill past ~990 cells succeeds where
  the original raises RecursionError (never on ARC-sized grids);
- `blit` of a sprite that is a view of the grid it is pasted into behaves as if the sprite were
  copied first (numpy slice assignment); the spec does not say what the original does there;
- `show_colored_grid(text=False)` draws with matplotlib, which is optional and imported on use.

Coordinates: grid[x, y], x indexes axis 0 ("left/right"), y indexes axis 1 ("upper/lower").
"""

import itertools as _itertools
import math as _math
import random
import traceback as _traceback
from collections.abc import Callable as _Callable

import numpy as np


class Color:
    """Colour constants (plain ints) and the two palettes (ordered lists)."""

    BLACK = 0
    BLUE = 1
    RED = 2
    GREEN = 3
    YELLOW = 4
    GREY = 5
    GRAY = 5
    PINK = 6
    ORANGE = 7
    TEAL = 8
    # BARC's fine-tuning data renamed Teal->Purple and Maroon->Brown, so BARC-model programs write
    # these; the original module lacks them.
    PURPLE = 8
    MAROON = 9
    BROWN = 9
    TRANSPARENT = 0
    BACKGROUND = 0
    # Lists in this exact order: generators call random.choice/sample on them.
    ALL_COLORS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    NOT_BLACK = [1, 2, 3, 4, 5, 6, 7, 8, 9]


# --- shared helpers -------------------------------------------------------------------------

# Also the random-walk moves of generate_sprite, whose random.choice depends on this order.
_EDGE_STEPS = ((0, 1), (0, -1), (1, 0), (-1, 0))
_DIAGONAL_STEPS = ((1, 1), (1, -1), (-1, 1), (-1, -1))


def _steps(connectivity: int, name: str = "Connectivity") -> tuple[tuple[int, int], ...]:
    """Neighbour offsets for 4- or 8-connectivity; ValueError naming `name` otherwise."""
    if connectivity == 4:
        return _EDGE_STEPS
    if connectivity == 8:
        return _EDGE_STEPS + _DIAGONAL_STEPS
    raise ValueError(f"{name} must be 4 or 8.")


def _structure(connectivity: int, name: str = "Connectivity") -> np.ndarray:
    """3x3 bool structuring element for scipy.ndimage: a cross (4) or a full square (8)."""
    structure = np.zeros((3, 3), dtype=bool)
    structure[1, 1] = True
    for dx, dy in _steps(connectivity, name):
        structure[1 + dx, 1 + dy] = True
    return structure


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """scipy.ndimage.label; its label numbers follow each component's first row-major cell."""
    from scipy import ndimage  # on first use: keeps loading `common` cheap

    return ndimage.label(mask, structure=_structure(connectivity))


def _near(mask: np.ndarray, steps) -> np.ndarray:
    """True where `mask` is True at some (x + dx, y + dy) for a step; no wrap-around."""
    n, m = mask.shape
    padded = np.zeros((n + 2, m + 2), dtype=bool)
    padded[1:-1, 1:-1] = mask
    result = np.zeros((n, m), dtype=bool)
    for dx, dy in steps:
        result |= padded[1 + dx:1 + dx + n, 1 + dy:1 + dy + m]
    return result


def _only_colors(array: np.ndarray, colors, background) -> bool:
    """Whether every cell is background or one of `colors`."""
    # list(): np.isin would treat a set as a single object and match nothing.
    return bool(np.all((array == background) | np.isin(array, list(colors))))


# --- painting -------------------------------------------------------------------------------

def flood_fill(grid: np.ndarray, x: int, y: int, color: int, connectivity: int = 4) -> None:
    """Recolour, in place, the same-colour region that contains grid[x, y]."""
    old = grid[x, y]  # read first: an out-of-range start raises IndexError before the check below
    if connectivity not in (4, 8):
        raise AssertionError("flood_fill: Connectivity must be 4 or 8.")
    if old == color:
        return
    grid[x, y] = color
    if grid[x, y] == old:  # the colour casts to the old value (42 in a bool grid): nothing changes
        return
    n, m = grid.shape
    steps = _steps(connectivity)
    # Neighbours come from the raw coordinates, so a negative start (read through numpy's
    # wrap-around) reaches row 0 but not its "previous" row, as in the original.
    stack = [(x, y)]
    while stack:
        cx, cy = stack.pop()
        for dx, dy in steps:
            nx, ny = cx + dx, cy + dy
            if 0 <= nx < n and 0 <= ny < m and grid[nx, ny] == old:
                grid[nx, ny] = color
                stack.append((nx, ny))


def _sign(value):
    """-1, 0 or +1 by floor division, as the original does (0.5 becomes 1.0, a float)."""
    return value // abs(value) if value != 0 else 0


def draw_line(grid: np.ndarray, x: int, y: int, end_x: int | None = None, end_y: int | None = None,
              length: int | None = None, direction: tuple[int, int] | None = None,
              color: int | None = None, stop_at_color=()) -> tuple[int, int]:
    """Paint a ray or segment in place; return the last painted cell (the start if none).

    An end point off the horizontal, vertical and 45-degree lines is not reached: only the sign of
    each direction component is kept. Off-grid cells are skipped without stopping the walk.
    """
    if (end_x is None) != (end_y is None):
        raise AssertionError(
            "draw_line: Either both or neither of end_x and end_y must be specified.")
    if x != int(x) or y != int(y):
        raise AssertionError("draw_line: x and y must be integers.")
    x, y = int(x), int(y)
    if end_x is not None:
        length = max(abs(end_x - x), abs(end_y - y)) + 1
        direction = (end_x - x, end_y - y)
    elif length is None:
        length = 2 * max(grid.shape)  # long enough to cross the whole grid
    dx, dy = direction
    dx, dy = _sign(dx), _sign(dy)
    n, m = grid.shape
    stop_x, stop_y = x, y
    for i in range(length):
        cx, cy = x + i * dx, y + i * dy
        if not (0 <= cx < n and 0 <= cy < m):
            continue  # a line may enter the grid later (seed 05269061)
        if grid[cx, cy] in stop_at_color:
            break
        grid[cx, cy] = color
        stop_x, stop_y = cx, cy
    return stop_x, stop_y


def randomly_scatter_points(grid: np.ndarray, color: int, density: float = 0.5,
                            background: int = Color.BLACK) -> np.ndarray:
    """Paint ceil(density * n * m) random background cells in place (numpy RNG); return grid."""
    n, m = grid.shape
    painted = 0
    while painted < density * n * m:  # never ends if too few background cells remain
        x = np.random.randint(0, n)
        y = np.random.randint(0, m)
        if grid[x, y] == background:
            grid[x, y] = color
            painted += 1
    return grid


def scale_pattern(pattern: np.ndarray, scale_factor: int) -> np.ndarray:
    """Deprecated duplicate of scale_sprite that prints a warning first."""
    print("scale_pattern: DEPRECATED, switch to scale_sprite")
    return scale_sprite(pattern, scale_factor)


def scale_sprite(sprite: np.ndarray, factor: int) -> np.ndarray:
    """Each cell becomes a factor x factor block. Shape (n*factor, m*factor), dtype kept."""
    # np.ones rejects a float factor with TypeError, as the original does.
    return np.kron(sprite, np.ones((factor, factor), dtype=sprite.dtype))


def blit(grid: np.ndarray, sprite: np.ndarray, x: int = 0, y: int = 0,
         background: int | None = None) -> np.ndarray:
    """Paste sprite into grid in place with its (0, 0) at (x, y), clipped; return grid.

    background=None copies every cell (opaque); otherwise sprite cells equal to it are skipped.
    """
    x, y = int(x), int(y)
    n, m = grid.shape
    sprite_n, sprite_m = sprite.shape
    x0, x1 = max(x, 0), min(x + sprite_n, n)
    y0, y1 = max(y, 0), min(y + sprite_m, m)
    if x0 >= x1 or y0 >= y1:
        return grid
    patch = sprite[x0 - x:x1 - x, y0 - y:y1 - y]
    target = grid[x0:x1, y0:y1]
    if background is None:
        target[...] = patch
    else:
        keep = patch != background
        target[keep] = patch[keep]
    return grid


def blit_object(grid: np.ndarray, obj: np.ndarray, background: int = Color.BLACK) -> np.ndarray:
    """Paste a full-size object where it is, background transparent; return grid."""
    return blit(grid, obj, 0, 0, background)


def blit_sprite(grid: np.ndarray, sprite: np.ndarray, x: int, y: int,
                background: int | None = Color.BLACK) -> np.ndarray:
    """Paste sprite at (x, y), black transparent by default (unlike blit); return grid."""
    return blit(grid, sprite, x, y, background)


# --- measuring objects ----------------------------------------------------------------------

def bounding_box(grid: np.ndarray, background: int = Color.BLACK) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the non-background cells; (n, m, -n, -m) if there are none."""
    n, m = grid.shape
    mask = grid != background
    if not mask.any():
        return n, m, -n, -m
    xs = np.flatnonzero(mask.any(axis=1))
    ys = np.flatnonzero(mask.any(axis=0))
    x, y = int(xs[0]), int(ys[0])
    return x, y, int(xs[-1]) - x + 1, int(ys[-1]) - y + 1


def bounding_box_mask(grid: np.ndarray, background: int = Color.BLACK) -> np.ndarray:
    """Bool mask, grid-shaped, True on the bounding box (all False for an empty grid)."""
    x, y, width, height = bounding_box(grid, background)
    mask = np.zeros(grid.shape, dtype=bool)
    mask[x:x + width, y:y + height] = True  # the empty box's slices are empty
    return mask


# Fractions of (width - 1, height - 1) added to the box corner, by normalised anchor.
_ANCHORS = {
    "upperleft": (0, 0), "upperright": (1, 0), "lowerleft": (0, 1), "lowerright": (1, 1),
    "center": (0.5, 0.5), "uppercenter": (0.5, 0), "lowercenter": (0.5, 1),
    "leftcenter": (0, 0.5), "rightcenter": (1, 0.5),
}


def _int_if_whole(value):
    """A Python int when within 1e-6 of one; otherwise a Python float (half-integers stay)."""
    rounded = round(value)
    return int(rounded) if abs(value - rounded) < 1e-6 else float(value)


def object_position(obj: np.ndarray, background: int = Color.BLACK,
                    anchor: str = "upper left") -> tuple[int | float, int | float]:
    """A point of the bounding box: a corner, an edge centre or the centre.

    "right" is larger x (axis 0) and "lower" larger y (axis 1); "top"/"bottom" are synonyms.
    """
    key = anchor.lower().replace(" ", "").replace("top", "upper").replace("bottom", "lower")
    if key not in _ANCHORS:
        raise AssertionError("Invalid anchor")
    x, y, width, height = bounding_box(obj, background)
    fx, fy = _ANCHORS[key]
    return _int_if_whole(x + fx * (width - 1)), _int_if_whole(y + fy * (height - 1))


def object_colors(obj: np.ndarray, background: int = Color.BLACK) -> list:
    """Distinct non-background values (numpy scalars) in CPython set order, not sorted."""
    return list(set(obj.flatten()) - {background})


def crop(grid: np.ndarray, background: int = Color.BLACK) -> np.ndarray:
    """The bounding box of the non-background cells, as a view: writes reach the grid."""
    x, y, width, height = bounding_box(grid, background)
    return grid[x:x + width, y:y + height]


def translate(obj: np.ndarray, x: int, y: int, background: int = Color.BLACK) -> np.ndarray:
    """A new array with every cell moved by (x, y); cells moved off the array are lost."""
    n, m = obj.shape
    result = np.full_like(obj, background)
    xs, ys = np.indices(obj.shape)
    to_x, to_y = xs + x, ys + y
    inside = (to_x >= 0) & (to_x < n) & (to_y >= 0) & (to_y < m)
    # Index arrays (not slices) make a float shift, even 0.0, raise IndexError as in the original.
    result[to_x[inside], to_y[inside]] = obj[inside]
    return result


# --- relations between objects --------------------------------------------------------------

def _shifted_overlap(mask1: np.ndarray, mask2: np.ndarray, dx: int, dy: int) -> bool:
    """Whether mask1[i, j] and mask2[i - dx, j - dy] are both True for some (i, j)."""
    (n1, m1), (n2, m2) = mask1.shape, mask2.shape
    x0, x1 = max(0, dx), min(n1, n2 + dx)
    y0, y1 = max(0, dy), min(m1, m2 + dy)
    if x0 >= x1 or y0 >= y1:
        return False
    return bool((mask1[x0:x1, y0:y1] & mask2[x0 - dx:x1 - dx, y0 - dy:y1 - dy]).any())


def _touches(object1, object2, x1, y1, x2, y2, background, steps) -> bool:
    """Whether object1 at (x1, y1) meets object2 at (x2, y2) within one of the steps."""
    dx, dy = int(x2 - x1), int(y2 - y1)
    # A missing object (None) gives a plain bool here, whose .shape raises AttributeError.
    mask1, mask2 = object1 != background, object2 != background
    return any(_shifted_overlap(mask1, mask2, dx + sx, dy + sy) for sx, sy in steps)


def collision(_=None, object1: np.ndarray | None = None, object2: np.ndarray | None = None,
              x1: int = 0, y1: int = 0, x2: int = 0, y2: int = 0,
              background: int = Color.BLACK) -> bool:
    """Whether the non-background cells of the two placed objects overlap.

    The leading `_` forces keywords: collision(a, b) leaves object2 None and raises AttributeError.
    """
    return _touches(object1, object2, x1, y1, x2, y2, background, ((0, 0),))


def contact(_=None, object1: np.ndarray | None = None, object2: np.ndarray | None = None,
            x1: int = 0, y1: int = 0, x2: int = 0, y2: int = 0,
            background: int = Color.BLACK, connectivity: int = 4) -> bool:
    """Whether the two placed objects overlap or are 4- (or 8-) adjacent."""
    steps = ((0, 0),) + _steps(connectivity)
    return _touches(object1, object2, x1, y1, x2, y2, background, steps)


def check_between_objects(obj1: np.ndarray, obj2: np.ndarray, x: int, y: int, padding: int = 0,
                          background: int = Color.BLACK) -> bool:
    """Whether pixel (x, y) lies in the corridor between the two objects, along x or along y."""
    # The original first orders the objects by position; both tests below are symmetric in the
    # two objects, so the order cannot change the answer and is skipped.
    xa, ya, wa, ha = bounding_box(obj1, background)
    xb, yb, wb, hb = bounding_box(obj2, background)
    between_x = (xa + wa <= x < xb or xb + wb <= x < xa) and (
        y - padding >= max(ya, yb) and y + padding < min(ya + ha, yb + hb))
    between_y = (ya + ha <= y < yb or yb + hb <= y < ya) and (
        x - padding >= max(xa, xb) and x + padding < min(xa + wa, xb + wb))
    return bool(between_x or between_y)


# --- random placement -----------------------------------------------------------------------

def randomly_spaced_indices(max_len: int, n_indices: int, border_size: int = 1,
                            padding: int = 1) -> np.ndarray:
    """Sorted int64 array of n_indices random positions, no two within `padding` of each other."""
    if border_size > 0:
        # The largest index is always max_len - 3: the right border is effectively 2 whatever
        # border_size is, as in the original.
        inner = randomly_spaced_indices(max_len - border_size - 2, n_indices, 0, padding)
        return inner + border_size
    chosen: list[int] = []
    while len(chosen) < n_indices:
        candidates = [i for i in range(max_len) if all(abs(i - c) > padding for c in chosen)]
        chosen.append(random.choice(candidates))  # IndexError once the candidates run out
    return np.array(sorted(chosen), dtype=np.int64)


def random_free_location_for_sprite(grid: np.ndarray, sprite: np.ndarray,
                                    background: int = Color.BLACK, border_size: int = 0,
                                    padding: int = 0,
                                    padding_connectivity: int = 8) -> tuple[int, int]:
    """Random top-left (x, y) where no non-background sprite cell lands on an occupied cell.

    Occupied cells are the grid's non-background cells, grown by `padding` dilation rounds.
    """
    n, m = grid.shape
    sprite_n, sprite_m = sprite.shape
    occupied = grid != background
    if padding > 0:
        from scipy import ndimage  # on first use: keeps loading `common` cheap

        structure = _structure(padding_connectivity, "padding_connectivity")
        occupied = ndimage.binary_dilation(occupied, structure, iterations=padding)
    # Candidates x in [border, n - border - sprite_n], y likewise, both bounds inclusive.
    num_x = max(0, n - 2 * border_size - sprite_n + 1)
    num_y = max(0, m - 2 * border_size - sprite_m + 1)
    free = np.ones((num_x, num_y), dtype=bool)
    for i, j in zip(*np.nonzero(sprite != background)):
        x0, y0 = border_size + i, border_size + j
        free &= ~occupied[x0:x0 + num_x, y0:y0 + num_y]
    # np.nonzero walks x outer, y inner: the list order random.choice sees in the original.
    positions = [(border_size + int(i), border_size + int(j)) for i, j in zip(*np.nonzero(free))]
    if not positions:
        raise ValueError("No free location for sprite found.")
    return random.choice(positions)


def random_free_location_for_object(*args, **kwargs) -> tuple[int, int]:
    """Alias of random_free_location_for_sprite."""
    return random_free_location_for_sprite(*args, **kwargs)


# --- object shape ---------------------------------------------------------------------------

def object_interior(grid: np.ndarray, background: int = Color.BLACK) -> np.ndarray:
    """Bool mask of cells not reachable from the border through background (4-connected).

    That is the object cells plus the holes they enclose; diagonal-only gaps still enclose.
    """
    labels, _ = _label(grid == background, 4)
    frame = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return ~np.isin(labels, frame[frame > 0])


def object_boundary(grid: np.ndarray, background: int = Color.BLACK) -> np.ndarray:
    """Bool mask of object cells 4-adjacent to the exterior or on the grid's outer frame."""
    exterior = ~object_interior(grid, background)
    on_frame = np.zeros(grid.shape, dtype=bool)
    on_frame[[0, -1], :] = True
    on_frame[:, [0, -1]] = True
    return (grid != background) & (_near(exterior, _EDGE_STEPS) | on_frame)


def object_neighbors(grid: np.ndarray, background: int = Color.BLACK,
                     connectivity: int = 4) -> np.ndarray:
    """Bool mask of background cells 4- (or 8-) adjacent to the boundary, holes included."""
    boundary = object_boundary(grid, background)
    steps = _steps(connectivity)  # checked after the boundary, as in the original
    return (grid == background) & _near(boundary, steps)


def is_contiguous(bitmask: np.ndarray, background: int = Color.BLACK,
                  connectivity: int = 4) -> bool:
    """Whether the non-background cells form exactly one connected component (empty: False)."""
    _, count = _label(bitmask != background, connectivity)
    return count == 1


# --- connected components and object detection ----------------------------------------------

def _components(grid: np.ndarray, mask: np.ndarray, background, connectivity: int) -> list:
    """One full-size array per connected piece of mask, background elsewhere."""
    labels, count = _label(mask, connectivity)
    components = []
    for k in range(1, count + 1):
        component = np.full(grid.shape, background)  # int64 for an int background, as original
        piece = labels == k
        component[piece] = grid[piece]
        components.append(component)
    return components


def find_connected_components(grid: np.ndarray, background: int = Color.BLACK,
                              connectivity: int = 4,
                              monochromatic: bool = True) -> list[np.ndarray]:
    """Split the grid into full-size objects, one per connected component.

    Each group is ordered by first cell in row-major order. With monochromatic=True each colour
    is split separately and the colour groups follow CPython set order, which is not sorted.
    """
    _steps(connectivity)  # ValueError before anything else
    if not monochromatic:
        return _components(grid, grid != background, background, connectivity)
    components = []
    # Exactly this set, built in row-major order: sorting the colours breaks seed 4c5c2cf0.
    for color in set(grid.flatten()) - {background}:
        components += _components(grid, grid == color, background, connectivity)
    return components


def _component_candidates(grid, predicate, background, monochromatic, connectivity, colors):
    """detect_objects step 1: filtered components, or none when connectivity is falsy."""
    if not connectivity:
        return []
    candidates = find_connected_components(grid, background, connectivity, monochromatic)
    if colors:  # an empty list means "no filter" here, unlike in the window scan
        candidates = [c for c in candidates if _only_colors(c, colors, background)]
    if predicate is not None:
        candidates = [c for c in candidates if predicate(crop(c, background))]
    return candidates


def _window_candidates(grid, predicate, background, allowed_dimensions, colors):
    """detect_objects step 2: every accepted window pasted into a full-size background array."""
    n, m = grid.shape
    windows = []
    for h, w in allowed_dimensions:
        for i in range(n - h + 1):
            for j in range(m - w + 1):
                window = grid[i:i + h, j:j + w]
                if not np.any(window != background):
                    continue
                if colors is not None and not _only_colors(window, colors, background):
                    continue
                if predicate is not None and not predicate(window):  # uncropped view
                    continue
                obj = np.full(grid.shape, background)
                obj[i:i + h, j:j + w] = window
                windows.append(obj)
    return windows


def _best_cover(masks: list, start: int, chosen: list, covered: np.ndarray, target: int):
    """Exhaustive search for non-overlapping masks covering the most cells.

    Tries with masks[start] first and returns at once if that covers `target` cells; on a tie
    the branch without it wins. Returns (chosen indices, number of covered cells).
    """
    if start == len(masks):
        return chosen, int(np.count_nonzero(covered))
    mask = masks[start]
    if (mask & covered).any():
        return _best_cover(masks, start + 1, chosen, covered, target)
    with_it = _best_cover(masks, start + 1, chosen + [start], covered | mask, target)
    if with_it[1] == target:
        return with_it
    without_it = _best_cover(masks, start + 1, chosen, covered, target)
    return with_it if with_it[1] > without_it[1] else without_it


def _remove_overlaps(candidates: list, background) -> list:
    """detect_objects step 3: objects that overlap nothing, then the best overlapping subset."""
    # Stable descending sort by (box area, pixel count); it re-sorts plain components too.
    candidates = sorted(
        candidates, reverse=True,
        key=lambda c: (crop(c, background).size, int(np.count_nonzero(c != background))))
    masks = [c != background for c in candidates]
    overlapping = [any((a & b).any() for j, b in enumerate(masks) if j != i)
                   for i, a in enumerate(masks)]
    loners = [c for c, o in zip(candidates, overlapping) if not o]
    rest = [i for i, o in enumerate(overlapping) if o]
    if not rest:
        return loners
    rest_masks = [masks[i] for i in rest]
    target = int(np.count_nonzero(np.logical_or.reduce(rest_masks)))
    chosen, _ = _best_cover(rest_masks, 0, [], np.zeros_like(rest_masks[0]), target)
    return loners + [candidates[rest[k]] for k in chosen]


def detect_objects(grid: np.ndarray, _=None, predicate: _Callable | None = None,
                   background: int = Color.BLACK, monochromatic: bool = False,
                   connectivity: int | None = None, allowed_dimensions: list | None = None,
                   colors: list | None = None, can_overlap: bool = False) -> list[np.ndarray]:
    """Full-size objects from connected components and/or a window scan, de-overlapped.

    Gotchas kept from the original: a positional predicate lands in `_` and is ignored; with the
    default connectivity=None no components are found; components survive allowed_dimensions
    only if the grid's own shape is listed; the output is re-sorted largest box first.
    """
    components = _component_candidates(grid, predicate, background, monochromatic,
                                        connectivity, colors)
    windows = []
    if allowed_dimensions:
        components = [c for c in components if c.shape in allowed_dimensions]
        windows = [w for w in _window_candidates(grid, predicate, background,
                                                 allowed_dimensions, colors)
                   if not any(np.array_equal(w, c) for c in components)]
    candidates = components + windows
    return candidates if can_overlap else _remove_overlaps(candidates, background)


# --- symmetries -----------------------------------------------------------------------------

def _cast(value):
    """Symmetry results: arrays truncate to int, floats round half-to-even, ints pass through."""
    if isinstance(value, np.ndarray):
        return value.astype(int)
    if isinstance(value, float):  # np.float64 included
        return int(round(value))
    return value


class Symmetry:
    """Nominal base class of the symmetries (MirrorSymmetry does not subclass it)."""

    def apply(self, x, y, iters=1):
        """No-op placeholder; returns None."""


class TranslationalSymmetry(Symmetry):
    """Repeat by the vector (translate_x, translate_y)."""

    def __init__(self, translate_x, translate_y):
        self.translate_x = translate_x
        self.translate_y = translate_y

    def apply(self, x, y, iters=1):
        """(x, y) moved by iters times the vector; negative iters move backwards."""
        return _cast(x + iters * self.translate_x), _cast(y + iters * self.translate_y)

    def _iter_range(self, grid_shape):
        """Iteration counts (-k, k + 1) with k steps enough to cross the grid."""
        n, m = grid_shape
        k = _math.ceil(n / abs(self.translate_x)) if self.translate_x != 0 else 0
        if self.translate_y != 0:
            k = max(k, _math.ceil(m / abs(self.translate_y)))
        return -k, k + 1

    def __repr__(self):
        return (f"TranslationalSymmetry(translate_x={self.translate_x}, "
                f"translate_y={self.translate_y})")


class MirrorSymmetry:
    """Reflection about the line x = mirror_x and/or y = mirror_y (None: that axis unchanged)."""

    def __init__(self, mirror_x, mirror_y):
        self.mirror_x = mirror_x
        self.mirror_y = mirror_y

    def apply(self, x, y, iters=1):
        """The reflected point for odd iters; (x, y) unchanged and uncast for even iters."""
        if iters % 2 == 0:
            return x, y
        if self.mirror_x is not None:
            x = 2 * self.mirror_x - x
        if self.mirror_y is not None:
            y = 2 * self.mirror_y - y
        return _cast(x), _cast(y)

    def _iter_range(self, grid_shape):
        """Iteration counts 0 and 1."""
        return 0, 2

    def __repr__(self):
        return f"MirrorSymmetry(mirror_x={self.mirror_x}, mirror_y={self.mirror_y})"


class _RotationalSymmetry(Symmetry):
    """90-degree rotation about (center_x, center_y), made by detect_rotational_symmetry only."""

    def __init__(self, center_x, center_y):
        self.center_x = center_x
        self.center_y = center_y

    def apply(self, x, y, iters=1):
        """(x, y) turned by iters steps (u, v) -> (v, -u); negative iters do not rotate at all."""
        u, v = x - self.center_x, y - self.center_y
        for _ in range(iters):
            u, v = v, -u
        return _cast(self.center_x + u), _cast(self.center_y + v)

    def _iter_range(self, grid_shape):
        """Iteration counts 0..3."""
        return 0, 4


def orbit(grid: np.ndarray, x: int, y: int, symmetries: list) -> list[tuple]:
    """All points (x, y) reaches under the symmetries, in CPython set order over the tuples.

    Combinations that leave the grid at any step are dropped; an empty list gives [(x, y)].
    """
    n, m = grid.shape
    ranges = [range(*symmetry._iter_range(grid.shape)) for symmetry in symmetries]
    points = []
    for counts in _itertools.product(*ranges):
        px, py = x, y
        for symmetry, count in zip(symmetries, counts):
            px, py = symmetry.apply(px, py, count)
            if not (0 <= px < n and 0 <= py < m):
                break
        else:
            points.append((px, py))
    return list(set(points))


def _score_symmetry(grid: np.ndarray, symmetry, ignore_colors, background=None):
    """(perfect, off, conflict) counts of mapping every occupied cell once by the symmetry.

    Occupied: not an ignored colour (nor background if given). A cell mapped onto an ignored
    colour is neither perfect nor a conflict.
    """
    n, m = grid.shape
    ignored = np.isin(grid, list(ignore_colors))
    occupied = ~ignored
    if background is not None:
        occupied &= grid != background
    xs, ys = np.nonzero(occupied)
    to_x, to_y = symmetry.apply(xs, ys)
    inside = (to_x >= 0) & (to_x < n) & (to_y >= 0) & (to_y < m)
    source = grid[xs[inside], ys[inside]]
    to_x, to_y = to_x[inside], to_y[inside]
    target = grid[to_x, to_y]
    perfect = np.sum(source == target)
    conflict = np.sum((source != target) & ~ignored[to_x, to_y])
    return perfect, np.sum(~inside), conflict


def _positive_translations(grid, candidates, ignore_colors, background):
    """(score, symmetry) for every candidate scoring above 0."""
    scored = []
    for symmetry in candidates:
        perfect, off, conflict = _score_symmetry(grid, symmetry, ignore_colors, background)
        score = perfect - 0.01 * off - 100000 * conflict
        if score > 0:
            scored.append((score, symmetry))
    return scored


def detect_translational_symmetry(grid: np.ndarray, ignore_colors=(Color.BLACK,),
                                  background: int | None = None) -> list[TranslationalSymmetry]:
    """[best x-shift, best y-shift] (either may be missing), else [best diagonal shift] or []."""
    n, m = grid.shape
    along_x = [TranslationalSymmetry(t, 0) for t in range(1, n)]
    along_x += [TranslationalSymmetry(-t, 0) for t in range(1, n)]
    along_y = [TranslationalSymmetry(0, t) for t in range(1, m)]
    along_y += [TranslationalSymmetry(0, -t) for t in range(1, m)]
    best = []
    # Ties go to the smallest signed shift, so a negative shift beats its positive twin.
    x_scores = _positive_translations(grid, along_x, ignore_colors, background)
    if x_scores:
        best.append(max(x_scores, key=lambda p: (p[0], -p[1].translate_x))[1])
    y_scores = _positive_translations(grid, along_y, ignore_colors, background)
    if y_scores:
        best.append(max(y_scores, key=lambda p: (p[0], -p[1].translate_y))[1])
    if best:
        return best
    diagonal = [TranslationalSymmetry(tx, ty) for tx in range(1, n) for ty in range(1, m)]
    xy_scores = _positive_translations(grid, diagonal, ignore_colors, background)
    if not xy_scores:
        return []
    # max keeps the first of exact ties, in enumeration order.
    return [max(xy_scores, key=lambda p: (p[0], -(p[1].translate_x + p[1].translate_y)))[1]]


def detect_mirror_symmetry(grid: np.ndarray, ignore_colors=(Color.BLACK,),
                           background: int | None = None) -> list[MirrorSymmetry]:
    """Every reflection tied at the best score: x-only, then y-only, then both axes.

    A grid symmetric about both axes gives three entries (the third is a point reflection).
    """
    n, m = grid.shape
    halves = (0, 0.5)  # z = 0 keeps int centres, z = 0.5 gives float ones
    candidates = [MirrorSymmetry(xc + z, None) for xc in range(n) for z in halves]
    candidates += [MirrorSymmetry(None, yc + z) for yc in range(m) for z in halves]
    candidates += [MirrorSymmetry(xc + z, yc + z)
                   for xc in range(n) for yc in range(m) for z in halves]
    best, best_score = [], 0
    for symmetry in candidates:
        perfect, off, conflict = _score_symmetry(grid, symmetry, ignore_colors, background)
        if conflict > 0 or perfect == 0:
            continue
        score = perfect - 0.01 * off - 10000 * conflict
        if score > best_score:
            best, best_score = [symmetry], score
        elif score == best_score:  # a score of exactly 0 is accepted when nothing beats it
            best.append(symmetry)
    return best


def detect_rotational_symmetry(grid: np.ndarray, ignore_colors=(Color.BLACK,),
                               background: int | None = None):
    """The first best-scoring 90-degree rotation centre, or None if no score is positive."""
    n, m = grid.shape
    best, best_score = None, 0
    for xc in range(n):
        for yc in range(m):
            for z in (0, 0.5):
                symmetry = _RotationalSymmetry(xc + z, yc + z)
                perfect, off, conflict = _score_symmetry(grid, symmetry, ignore_colors, background)
                score = perfect - 5 * off - 1000 * conflict
                if score > best_score:
                    best, best_score = symmetry, score
    return best


def apply_symmetry(sprite: np.ndarray, symmetry_type: str,
                   background: int = Color.BLACK) -> np.ndarray:
    """Mirror sprite in place along axis 0 ("horizontal") or axis 1 ("vertical"); return it."""
    if symmetry_type == "horizontal":
        _mirror_axis0(sprite, background)
    elif symmetry_type == "vertical":
        _mirror_axis0(sprite.T, background)  # the transposed view writes through
    else:
        raise ValueError(f"Invalid symmetry type {symmetry_type}.")
    return sprite


def _mirror_axis0(view: np.ndarray, background) -> None:
    """Make view symmetric along axis 0; a non-background cell in the lower-index half wins."""
    half = view.shape[0] // 2
    low, high = view[:half], view[::-1][:half]
    merged = np.where(low != background, low, high)
    low[...] = merged
    high[...] = merged


def apply_diagonal_symmetry(sprite: np.ndarray, background: int = Color.BLACK) -> np.ndarray:
    """Make a square sprite symmetric about x = y in place; sprite[x, y] (x < y) wins; return it."""
    n, m = sprite.shape
    if n != m:
        raise ValueError("Diagonal symmetry requires a square sprite.")
    xs, ys = np.triu_indices(n, k=1)
    upper, lower = sprite[xs, ys], sprite[ys, xs]
    merged = np.where(upper != background, upper, lower)
    sprite[xs, ys] = merged
    sprite[ys, xs] = merged
    return sprite


# --- debugging output -----------------------------------------------------------------------

_ANSI_CODES = [0, 4, 1, 2, 3, 7, 13, 202, 6, 196]
_ARC_HEX = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
            "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]


def show_colored_grid(grid: np.ndarray, text: bool = True) -> None:
    """Print the grid transposed (one line per y) in ANSI colours, or plot it with matplotlib."""
    if not text:
        import matplotlib.pyplot as plt  # optional dependency, debug only
        from matplotlib.colors import ListedColormap

        plt.imshow(grid.T, cmap=ListedColormap(_ARC_HEX), vmin=0, vmax=9)
        plt.show()
        return
    n, m = grid.shape
    for y in range(m):
        # A value of 10 or more raises IndexError; negatives index from the end, as original.
        print("".join(f"\033[38;5;{_ANSI_CODES[grid[x, y]]}m{grid[x, y]}\033[0m"
                      for x in range(n)))


def visualize(input_generator, transform, n_examples: int = 5, n_attempts: int = 100) -> None:
    """Print up to n_examples generated inputs with their transforms, then the failure rate."""
    num_ok, failures, num_tried = 0, [], 0
    for num_tried in range(1, n_attempts + 1):
        try:
            input_grid = input_generator()
            output_grid = transform(input_grid.copy())
        except Exception:  # a failing generator or transform is what this reports
            failures.append(_traceback.format_exc())
            continue
        num_ok += 1
        print(f"Example {num_ok}")
        print("Input:")
        show_colored_grid(input_grid)
        print("Output:")
        show_colored_grid(output_grid)
        print("-" * 20)
        if num_ok >= n_examples:
            break
    if failures:
        print(f"{len(failures)}/{num_tried} failures ({len(failures) / num_tried:.0%}). "
              "For example:")
        print(failures[0])


# --- random sprites -------------------------------------------------------------------------

def _random_palette(max_colors: int, background) -> list[int]:
    """k colours, k grown from 1 with probability 0.3 per step, sampled without background."""
    k = 1
    while k < max_colors and random.random() < 0.3:
        k += 1
    return random.sample([c for c in Color.ALL_COLORS if c != background], k)


def _walk_canvas(n: int, m: int, symmetry_type: str, background):
    """Background canvas the walk draws on (a quarter for mirror/radial), start cell, flip."""
    shape, flip = (n, m), False
    if symmetry_type == "not_symmetric":
        start = random.randint(0, n - 1), random.randint(0, m - 1)
    elif symmetry_type == "horizontal":
        start = random.randint(0, n - 1), m // 2
    elif symmetry_type == "vertical":
        start = n // 2, random.randint(0, m - 1)
    elif symmetry_type == "diagonal":
        flip = random.choice([True, False])
        x = random.randint(0, n - 1)
        start = x, (x if flip else n - 1 - x)
    elif symmetry_type == "mirror":
        shape = int(n / 2 + 0.5), int(m / 2 + 0.5)
        start = random.randint(0, shape[0] - 1), random.randint(0, shape[1] - 1)
    elif symmetry_type == "radial":
        if n != m:
            raise AssertionError("Radial symmetry requires a square grid.")
        shape = int(n / 2 + 0.5), int(m / 2 + 0.5)
        start = shape[0] - 1, shape[1] - 1
    else:
        raise ValueError(f"Invalid symmetry type {symmetry_type}.")
    return np.full(shape, background), start, flip


def _random_walk(canvas, start, palette, moves, fill_percentage, background) -> None:
    """Paint a random walk on canvas, in place, until fill_percentage of it is non-background."""
    n, m = canvas.shape
    x, y = start
    index = 0
    while np.count_nonzero(canvas != background) < fill_percentage * n * m:
        canvas[x, y] = palette[index]
        if random.random() < 0.33:
            index = random.choice(range(len(palette)))
        dx, dy = random.choice(moves)
        if 0 <= x + dx < n and 0 <= y + dy < m:
            x, y = x + dx, y + dy


def _radial_from_quarter(quarter: np.ndarray, n: int, background) -> np.ndarray:
    """n x n sprite: the quarter at (0, 0), then three transparent pastes of the rotated whole."""
    sprite = np.full((n, n), background)
    blit(sprite, quarter, 0, 0, background)
    for _ in range(3):
        blit(sprite, np.rot90(sprite), 0, 0, background)
    return sprite


def _mirror_from_quarter(quarter: np.ndarray, n: int, m: int, background) -> np.ndarray:
    """n x m sprite from the quarter and its three flips; on odd sides they share the middle."""
    qn, qm = quarter.shape
    ox, oy = qn - n % 2, qm - m % 2
    sprite = np.full((n, m), background)
    sprite[:qn, :qm] = quarter  # opaque writes in this order: later ones win the middle line
    sprite[ox:ox + qn, :qm] = quarter[::-1, :]
    sprite[:qn, oy:oy + qm] = quarter[:, ::-1]
    sprite[ox:ox + qn, oy:oy + qm] = quarter[::-1, ::-1]
    return sprite


def generate_sprite(n: int, m: int, symmetry_type: str, fill_percentage: float = 0.5,
                    max_colors: int = 9, color_palate: list[int] | None = None,
                    connectivity: int = 4, background: int = Color.BLACK) -> np.ndarray:
    """Random-walk sprite of shape (n, m) with the given symmetry (stdlib random only).

    symmetry_type: not_symmetric, horizontal, vertical, diagonal, mirror or radial.
    The parameter really is spelled `color_palate`, as in the original.
    """
    palette = _random_palette(max_colors, background) if color_palate is None else color_palate
    while True:
        canvas, start, flip = _walk_canvas(n, m, symmetry_type, background)
        moves = _steps(connectivity)  # checked after the start cell is drawn, as in the original
        _random_walk(canvas, start, palette, moves, fill_percentage, background)
        if symmetry_type in ("horizontal", "vertical"):
            return apply_symmetry(canvas, symmetry_type, background)
        if symmetry_type == "diagonal":
            # flip: symmetrise the axis-0-reversed view, i.e. about the anti-diagonal.
            apply_diagonal_symmetry(canvas[::-1] if flip else canvas, background)
            return canvas
        if symmetry_type == "radial":
            return _radial_from_quarter(canvas, n, background)
        if symmetry_type != "mirror":
            return canvas
        sprite = _mirror_from_quarter(canvas, n, m, background)
        if is_contiguous(sprite, background, connectivity):
            return sprite
        # Not contiguous: start over with the same arguments and the palette already drawn.


def _as_choices(dimension) -> list:
    """A range becomes a list, a list stays, anything else (a tuple too) becomes [dimension]."""
    if isinstance(dimension, range):
        return list(dimension)
    return dimension if isinstance(dimension, list) else [dimension]


def _sprite_density(n: int, m: int, density: float) -> float:
    """Density adjusted for the chosen size; only the general case draws (random.gauss)."""
    if n == 1 or m == 1:
        return 1
    if n == 2 or m == 2:
        return max(density, 0.6)
    if n == 3 or m == 3:
        return max(density, 0.5)
    if density == 1:
        return 1
    return min(0.95, max(0.4, random.gauss(density, 0.1)))


def _draw_random_sprite(n, m, density, symmetry, color_palette, connectivity, background):
    """One attempt of random_sprite: choose symmetry and size, generate, check contiguity."""
    n_choices, m_choices = _as_choices(n), _as_choices(m)
    squares = [(a, b) for a in n_choices for b in m_choices if a == b]
    types = ["horizontal", "vertical", "not_symmetric", "mirror"]
    if squares:
        types += ["diagonal", "radial"]
    symmetry = symmetry or random.choice(types)
    if symmetry in ("diagonal", "radial"):
        n, m = random.choice(squares)  # IndexError when no square size exists
    else:
        n = random.choice(n_choices)
        m = random.choice(m_choices)
    sprite = generate_sprite(n, m, symmetry_type=symmetry, color_palate=color_palette,
                             fill_percentage=_sprite_density(n, m, density),
                             connectivity=connectivity, background=background)
    if not is_contiguous(sprite, background, connectivity):
        raise AssertionError("Generated sprite is not contiguous.")
    return sprite


def random_sprite(n, m, density: float = 0.5, symmetry: str | None = None,
                  color_palette: list[int] | None = None, connectivity: int = 4,
                  background: int = Color.BLACK) -> np.ndarray:
    """Random connected sprite with a non-background cell on each of its four edges.

    n and m may be ints, lists or ranges of allowed sizes; symmetry None picks one at random.
    """
    while True:
        sprite = _draw_random_sprite(n, m, density, symmetry, color_palette, connectivity,
                                     background)
        edges = (sprite[0], sprite[-1], sprite[:, 0], sprite[:, -1])
        if all(np.any(edge != background) for edge in edges):
            return sprite
        # Retry with the original arguments, so a free symmetry and size are drawn again.
