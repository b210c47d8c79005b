"""The toy drawing DSL: a few primitives that draw on a grid and return the new grid.

Toy programs start with `from draw import *`; the sandbox loads this file standalone as a module
named `draw` (as it loads the BARC `common`), so it imports only numpy. A program is one call per
line, each replacing the grid with a drawn copy:

    from draw import *

    def transform(g):
        g = rect(g, 1, 1, 3, 4, 2)
        g = line(g, 0, 0, 5, 5, 7)
        return g

What is covered:
- `pixel`, `line` (horizontal, vertical or diagonal), `rect` (filled) and `border` (outline);
  points are (row, column), rectangles are given by two opposite corners, corners inclusive;
- `blank` and `noisy` canvases for task generators (not exported to programs).

What is not covered: clipping. A point outside the grid, a colour outside 0-9 or a line that is not
straight raises ValueError, so a wrong program fails loudly instead of drawing something else.
Inputs are never modified (they may be read-only arrays): every primitive returns a new array.
"""

import numpy as np

__all__ = ["pixel", "line", "rect", "border"]


def _check(g: np.ndarray, points: tuple[tuple[int, int], ...], color: int) -> np.ndarray:
    g = np.array(g, dtype=np.uint8)  # a writable copy, whatever came in
    if g.ndim != 2:
        raise ValueError(f"grid must be 2-D, got shape {g.shape}")
    h, w = g.shape
    for row, col in points:
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"point ({row}, {col}) outside the {h}x{w} grid")
    if not 0 <= color <= 9:
        raise ValueError(f"colour must be 0-9, got {color}")
    return g


def pixel(g: np.ndarray, row: int, col: int, color: int) -> np.ndarray:
    """One cell."""
    g = _check(g, ((row, col),), color)
    g[row, col] = color
    return g


def line(g: np.ndarray, r0: int, c0: int, r1: int, c1: int, color: int) -> np.ndarray:
    """A straight line from (r0, c0) to (r1, c1), both ends included: horizontal, vertical or 45 degrees."""
    g = _check(g, ((r0, c0), (r1, c1)), color)
    dr, dc = r1 - r0, c1 - c0
    if dr != 0 and dc != 0 and abs(dr) != abs(dc):
        raise ValueError(f"line ({r0}, {c0})-({r1}, {c1}) is neither horizontal, vertical nor diagonal")
    n = max(abs(dr), abs(dc))
    steps = np.arange(n + 1)
    g[r0 + np.sign(dr) * steps, c0 + np.sign(dc) * steps] = color
    return g


def rect(g: np.ndarray, r0: int, c0: int, r1: int, c1: int, color: int) -> np.ndarray:
    """A filled rectangle with opposite corners (r0, c0) and (r1, c1)."""
    g = _check(g, ((r0, c0), (r1, c1)), color)
    g[min(r0, r1):max(r0, r1) + 1, min(c0, c1):max(c0, c1) + 1] = color
    return g


def border(g: np.ndarray, r0: int, c0: int, r1: int, c1: int, color: int) -> np.ndarray:
    """The one-cell outline of the rectangle with opposite corners (r0, c0) and (r1, c1)."""
    g = _check(g, ((r0, c0), (r1, c1)), color)
    top, bottom, left, right = min(r0, r1), max(r0, r1), min(c0, c1), max(c0, c1)
    g[top, left:right + 1] = color
    g[bottom, left:right + 1] = color
    g[top:bottom + 1, left] = color
    g[top:bottom + 1, right] = color
    return g


# --- canvases (for generators; programs receive theirs as input) --------------------------------

def blank(height: int, width: int, color: int = 0) -> np.ndarray:
    """A grid of one colour."""
    return np.full((height, width), color, dtype=np.uint8)


def noisy(height: int, width: int, color: int, density: float, rng: np.random.Generator) -> np.ndarray:
    """A `color` grid with about `density` of its cells set to random colours (0-9, `color` included)."""
    g = blank(height, width, color)
    mask = rng.random((height, width)) < density
    g[mask] = rng.integers(0, 10, size=int(mask.sum()))
    return g
