"""Pictures of tasks: a PNG and a self-contained HTML page, in the standard ARC palette.

One row per pair: input, output (when known), then any predicted grids for that test input.
`layout` is a pure function that places every grid, so tests (and other renderers) can find each
cell's pixels. What is not covered: interactive viewers, plots of metrics (the loop's report).
"""

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from arcsl.grids import Grid, Task

# The palette of the ARC Prize viewer, colour 0..9.
PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
PALETTE_RGB = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in PALETTE], dtype=np.uint8)
BACKGROUND_RGB = (255, 255, 255)
LINE_RGB = (85, 85, 85)
MARGIN = 8  # pixels between grids and around the picture
LABEL_HEIGHT = 14
LABEL_CHAR_WIDTH = 6  # Pillow's default bitmap font; a label never runs into the next grid


@dataclass(frozen=True, slots=True)
class Placement:
    grid: Grid
    left: int
    top: int  # of the grid itself; its label sits above it
    label: str


def layout(task: Task, predictions: dict[int, list[Grid]] | None = None,
           cell: int = 16) -> tuple[list[Placement], tuple[int, int]]:
    """Place every grid of the task; returns the placements and the picture size (width, height).

    Args:
        predictions: test index -> predicted grids, drawn right of that test pair.
        cell: side of one cell in pixels; cells are separated by 1-pixel grid lines.
    """
    rows: list[list[tuple[Grid, str]]] = []
    for i, p in enumerate(task.train):
        rows.append([(p.input, f"train {i + 1} input"), (p.output, "output")])
    for i, p in enumerate(task.test):
        row = [(p.input, f"test {i + 1} input")]
        if p.output is not None:
            row.append((p.output, "output"))
        row += [(g, f"attempt {j + 1}") for j, g in enumerate((predictions or {}).get(i, []))]
        rows.append(row)

    def extent(g: Grid) -> tuple[int, int]:
        return g.shape[1] * (cell + 1) + 1, g.shape[0] * (cell + 1) + 1

    placements, top, width = [], MARGIN, 0
    for row in rows:
        left, row_height = MARGIN, 0
        for grid, label in row:
            w, h = extent(grid)
            placements.append(Placement(grid, left, top + LABEL_HEIGHT, label))
            left += max(w, LABEL_CHAR_WIDTH * len(label)) + MARGIN
            row_height = max(row_height, h + LABEL_HEIGHT)
        width, top = max(width, left), top + row_height + MARGIN
    return placements, (width, top)


def cell_box(p: Placement, row: int, col: int, cell: int = 16) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom), inclusive, of one cell of a placed grid."""
    left, top = p.left + 1 + col * (cell + 1), p.top + 1 + row * (cell + 1)
    return left, top, left + cell - 1, top + cell - 1


def render_png(task: Task, path: Path, predictions: dict[int, list[Grid]] | None = None, cell: int = 16) -> None:
    """Write the task (and predictions) as a PNG."""
    placements, size = layout(task, predictions, cell)
    canvas = np.full((size[1], size[0], 3), BACKGROUND_RGB, dtype=np.uint8)
    for p in placements:
        h, w = p.grid.shape
        block = np.full((h * (cell + 1) + 1, w * (cell + 1) + 1, 3), LINE_RGB, dtype=np.uint8)
        cells = np.repeat(np.repeat(PALETTE_RGB[p.grid], cell, axis=0), cell, axis=1)
        # scatter the cell blocks onto the line-coloured background, leaving 1-pixel lines between them
        keep = (np.arange(block.shape[0]) % (cell + 1) != 0)[:, None] & (np.arange(block.shape[1]) % (cell + 1) != 0)
        block[keep] = cells.reshape(-1, 3)
        canvas[p.top:p.top + block.shape[0], p.left:p.left + block.shape[1]] = block
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for p in placements:
        draw.text((p.left, p.top - LABEL_HEIGHT + 1), p.label, fill=(0, 0, 0))
    image.save(path)


def grid_html(grid: Grid) -> str:
    """A grid as an HTML table with inline colours (no external resources)."""
    cells = "".join(
        "<tr>" + "".join(f'<td style="background:{PALETTE[v]}"></td>' for v in row) + "</tr>"
        for row in grid.tolist())
    return f'<table class="grid">{cells}</table>'


def render_html(task: Task, path: Path, predictions: dict[int, list[Grid]] | None = None) -> None:
    """Write the task (and predictions) as one HTML page with no external resources."""
    placements, _ = layout(task, predictions)
    rows, current_top = [], None
    for p in placements:
        if p.top != current_top:
            rows.append([])
            current_top = p.top
        rows[-1].append(f'<figure><figcaption>{html.escape(p.label)} '
                        f'<small>{p.grid.shape[0]}x{p.grid.shape[1]}</small></figcaption>{grid_html(p.grid)}</figure>')
    body = "".join(f'<div class="row">{"".join(r)}</div>' for r in rows)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ARC task {html.escape(task.id)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; }}
.row {{ display: flex; gap: 16px; align-items: flex-start; margin-bottom: 12px; }}
figure {{ margin: 0; }} figcaption {{ font-size: 12px; margin-bottom: 2px; }}
table.grid {{ border-collapse: collapse; background: #555; }}
table.grid td {{ width: 14px; height: 14px; border: 1px solid #555; padding: 0; }}
</style></head>
<body><h1>{html.escape(task.id)}</h1>{body}</body></html>
"""
    Path(path).write_text(page)


def show_tasks(tasks: list[Task], output_dir: Path, attempts: dict[str, dict[int, list[Grid]]]) -> list[Path]:
    """Write TASK_ID.png and TASK_ID.html for every task; `attempts` maps task id -> test index -> grids."""
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in tasks:
        predictions = attempts.get(task.id)
        png, page = output_dir / f"{task.id}.png", output_dir / f"{task.id}.html"
        render_png(task, png, predictions)
        render_html(task, page, predictions)
        written += [png, page]
    return written
