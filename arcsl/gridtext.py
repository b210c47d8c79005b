"""Grids as text: the BARC colour-name format and a compact digit format, each with its parser.

BARC format (what the BARC induction models, xu3kev/BARC, were trained on): one row
per line, cells as colour names separated by single spaces, a final newline. Digit format: one row
per line, one digit per cell, a final newline; the shortest lossless text, used by the toy domain
and in logs. Both parsers reject anything the writers could not have produced.
"""

import numpy as np

from arcsl.grids import Grid, make_grid

COLOR_NAMES = ("Black", "Blue", "Red", "Green", "Yellow", "Gray", "Pink", "Orange", "Purple", "Brown")
_COLOR_INDEX = {name: i for i, name in enumerate(COLOR_NAMES)}


def grid_to_barc(grid: Grid) -> str:
    """[[0, 1], [2, 0]] -> 'Black Blue\\nRed Black\\n'."""
    return "".join(" ".join(COLOR_NAMES[v] for v in row) + "\n" for row in np.asarray(grid).tolist())


def barc_to_grid(text: str) -> Grid:
    """Parse `grid_to_barc` output back into a grid; raises ValueError naming the bad line."""
    rows = []
    for i, line in enumerate(_lines(text)):
        try:
            rows.append([_COLOR_INDEX[name] for name in line.split(" ")])
        except KeyError as e:
            raise ValueError(f"line {i}: unknown colour name {e.args[0]!r}; expected one of {', '.join(COLOR_NAMES)}") from None
    return make_grid(rows)


def grid_to_digits(grid: Grid) -> str:
    """[[0, 1], [2, 0]] -> '01\\n20\\n'."""
    return "".join("".join(str(v) for v in row) + "\n" for row in np.asarray(grid).tolist())


def digits_to_grid(text: str) -> Grid:
    """Parse `grid_to_digits` output back into a grid; raises ValueError naming the bad line."""
    rows = []
    for i, line in enumerate(_lines(text)):
        if not line.isdigit() or not line.isascii():
            raise ValueError(f"line {i}: expected only digits 0-9, got {line!r}")
        rows.append([int(c) for c in line])
    return make_grid(rows)


def _lines(text: str) -> list[str]:
    if not text.endswith("\n"):
        raise ValueError("grid text must end with a newline")
    return text[:-1].split("\n")
