"""Kaggle `submission.json`: reading it back (writing, validating and scoring arrive with the scoring issue).

Format: {task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}, one entry per test input, in order.
"""

from pathlib import Path
from typing import Any

from arcsl.grids import Grid, TaskError, grid_problem, make_grid, read_json

ATTEMPT_KEYS = ("attempt_1", "attempt_2")


def parse_submission(data: Any, source: str) -> dict[str, dict[int, list[Grid]]]:
    """task id -> test index -> [attempt_1, attempt_2] grids; raises TaskError naming task and field."""
    if not isinstance(data, dict):
        raise TaskError(source, None, "file", "expected an object mapping task id to a list of attempts")
    out: dict[str, dict[int, list[Grid]]] = {}
    for task_id, entries in data.items():
        if not isinstance(entries, list):
            raise TaskError(source, task_id, "task", "expected a list with one entry per test input")
        out[task_id] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise TaskError(source, task_id, f"[{i}]", "expected an object with attempt_1 and attempt_2")
            grids = []
            for key in ATTEMPT_KEYS:
                if key not in entry:
                    raise TaskError(source, task_id, f"[{i}]", f"missing key '{key}'")
                problem = grid_problem(entry[key])
                if problem:
                    raise TaskError(source, task_id, f"[{i}].{key}", problem)
                grids.append(make_grid(entry[key]))
            out[task_id][i] = grids
    return out


def read_submission(path: Path) -> dict[str, dict[int, list[Grid]]]:
    """Read and check a submission file (see `parse_submission`)."""
    return parse_submission(read_json(Path(path)), str(path))
