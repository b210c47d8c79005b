import json

import numpy as np
from PIL import Image

from arcsl.cli import main
from arcsl.grids import Pair, Task, load_tasks, make_grid
from arcsl.render import PALETTE_RGB, cell_box, layout, render_html, render_png

TASK = Task("demo", (Pair(make_grid([[0, 1, 2], [3, 4, 5]]), make_grid([[6, 7], [8, 9]])),),
            (Pair(make_grid([[9, 8, 7]]), make_grid([[1]])),))


def _assert_pixels_match(image: np.ndarray, placements, cell=16):
    for p in placements:
        for (r, c), colour in np.ndenumerate(p.grid):
            left, top, right, bottom = cell_box(p, r, c, cell)
            block = image[top:bottom + 1, left:right + 1]
            assert (block == PALETTE_RGB[colour]).all(), (p.label, r, c)


def test_png_cells_have_the_arc_palette_colours(tmp_path):
    render_png(TASK, tmp_path / "t.png")
    image = np.asarray(Image.open(tmp_path / "t.png").convert("RGB"))
    placements, (width, height) = layout(TASK)
    assert image.shape == (height, width, 3)
    _assert_pixels_match(image, placements)


def test_predictions_are_drawn_beside_their_test_input(tmp_path):
    predictions = {0: [make_grid([[2, 2]]), make_grid([[3]])]}
    render_png(TASK, tmp_path / "t.png", predictions, cell=5)
    placements, _ = layout(TASK, predictions, cell=5)
    assert [p.label for p in placements][-2:] == ["attempt 1", "attempt 2"]
    _assert_pixels_match(np.asarray(Image.open(tmp_path / "t.png").convert("RGB")), placements, cell=5)


def test_html_page_is_self_contained_and_shows_every_cell(tmp_path):
    render_html(TASK, tmp_path / "t.html")
    page = (tmp_path / "t.html").read_text()
    assert "<script" not in page and "http" not in page
    assert page.count("<td ") == 6 + 4 + 3 + 1
    assert "#870C25" in page  # colour 9


def test_show_command_writes_a_correct_png_for_a_bundled_task(tmp_path, capsys):
    assert main(["show", "00576224", "--dataset", "arc-agi-1/evaluation", "--output-dir", str(tmp_path)]) == 0
    task = load_tasks("arc-agi-1/evaluation").tasks
    task = next(t for t in task if t.id == "00576224")
    image = np.asarray(Image.open(tmp_path / "00576224.png").convert("RGB"))
    _assert_pixels_match(image, layout(task)[0])
    assert (tmp_path / "00576224.html").exists()


def test_show_command_draws_submission_attempts(tmp_path):
    submission = tmp_path / "submission.json"
    submission.write_text(json.dumps({"00576224": [{"attempt_1": [[1, 2]], "attempt_2": [[3]]}]}))
    assert main(["show", "00576224", "--dataset", "arc-agi-1/evaluation", "--output-dir", str(tmp_path),
                 "--predictions", str(submission)]) == 0
    task = next(t for t in load_tasks("arc-agi-1/evaluation").tasks if t.id == "00576224")
    placements, _ = layout(task, {0: [make_grid([[1, 2]]), make_grid([[3]])]})
    _assert_pixels_match(np.asarray(Image.open(tmp_path / "00576224.png").convert("RGB")), placements)
