"""Kaggle `submission.json`: building, writing, reading, validating and scoring it.

Format: {task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}, one entry per test input, in order.
Kaggle scores a task as the fraction of its test inputs where attempt_1 or attempt_2 is exact, and a
submission as the mean over the tasks of the dataset.

`build_submission` covers every task of the dataset: a task that failed or was never reached gets
the fallback guesses of `selection.py`, because a missing task makes the whole submission invalid.
What is not covered: choosing the predictions (`selection.py`).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from arcsl.grids import Grid, Task, TaskError, grid_problem, make_grid, read_json
from arcsl.scoring import grids_equal
from arcsl.selection import prediction_grids, select_attempts

ATTEMPT_KEYS = ("attempt_1", "attempt_2")


# --- building and writing -----------------------------------------------------------------------

def build_submission(tasks: Sequence[Task], predictions: Mapping[str, Sequence[Sequence[Grid]]]) -> dict[str, list]:
    """The submission JSON value for every task in `tasks`.

    Args:
        predictions: task id -> per test input [attempt_1, attempt_2]; tasks absent from it (failed
            or not reached) get `select_attempts(task, [])`, the documented fallback.
    """
    out = {}
    for task in tasks:
        grids = predictions.get(task.id)
        if grids is None:
            grids = prediction_grids(select_attempts(task, []))
        assert len(grids) == len(task.test), f"task {task.id}: {len(grids)} predictions for {len(task.test)} test inputs"
        assert all(len(pair) == len(ATTEMPT_KEYS) for pair in grids), f"task {task.id}: need 2 grids per test input"
        out[task.id] = [{key: g.tolist() for key, g in zip(ATTEMPT_KEYS, pair)} for pair in grids]
    return out


def write_submission(path: Path, submission: dict[str, list]) -> None:
    """Write atomically (temporary file, then rename): a crash never leaves a half-written submission."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(submission, separators=(",", ":")))
    os.replace(tmp, path)


# --- reading ------------------------------------------------------------------------------------

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


# --- validating ---------------------------------------------------------------------------------

def _describe(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _entry_problems(entry: Any, i: int, source: str, task_id: str) -> list[str]:
    if not isinstance(entry, dict):
        return [str(TaskError(source, task_id, f"[{i}]", f"expected an object with attempt_1 and attempt_2, "
                                                          f"got {_describe(entry)}"))]
    problems = [str(TaskError(source, task_id, f"[{i}]", f"unknown key '{key}'"))
                for key in entry if key not in ATTEMPT_KEYS]
    for key in ATTEMPT_KEYS:
        problem = "missing" if key not in entry else grid_problem(entry[key])
        if problem:
            problems.append(str(TaskError(source, task_id, f"[{i}].{key}", problem)))
    return problems


def submission_problems(data: Any, tasks: Sequence[Task], source: str = "submission") -> list[str]:
    """Every way `data` fails to be a submission for exactly `tasks`, each naming task and field; [] = valid.

    Checks: every task present and no other; one entry per test input; attempt_1 and attempt_2 in
    each entry and nothing else; each a valid ARC grid (rectangular, colours 0-9, sides 1-30).
    """
    if not isinstance(data, dict):
        return [str(TaskError(source, None, "file", f"expected an object mapping task id to a list of "
                                                    f"entries, got {_describe(data)}"))]
    problems = []
    for task in tasks:
        if task.id not in data:
            problems.append(str(TaskError(source, task.id, "task", "missing from the submission")))
            continue
        entries = data[task.id]
        if not isinstance(entries, list):
            problems.append(str(TaskError(source, task.id, "entries", f"expected a list with one entry per test "
                                                                      f"input, got {_describe(entries)}")))
            continue
        if len(entries) != len(task.test):
            problems.append(str(TaskError(source, task.id, "entries", f"{len(entries)} entries for "
                                                                      f"{len(task.test)} test inputs")))
        for i, entry in enumerate(entries):
            problems += _entry_problems(entry, i, source, task.id)
    known = {t.id for t in tasks}
    problems += [str(TaskError(source, task_id, "task", "not in the challenges"))
                 for task_id in data if task_id not in known]
    return problems


def validate_submission_file(path: Path, tasks: Sequence[Task]) -> list[str]:
    """`submission_problems` of a file; an unreadable or malformed JSON file raises TaskError."""
    return submission_problems(read_json(Path(path)), tasks, str(path))


# --- scoring ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SubmissionScore:
    """Kaggle score of one task of a submission."""
    task_id: str
    num_test: int      # test inputs
    num_correct: int   # test inputs where attempt_1 or attempt_2 is exact
    is_missing: bool   # the submission has no entry for the task (it scores 0)

    @property
    def score(self) -> float:
        return self.num_correct / self.num_test


def score_submission(submission: Mapping[str, Mapping[int, Sequence[Grid]]], tasks: Sequence[Task]) -> list[SubmissionScore]:
    """Score a parsed submission (`parse_submission`) against tasks with known test outputs, one row per task."""
    out = []
    for task in tasks:
        if not task.has_test_outputs:
            raise ValueError(f"task {task.id} has no test outputs to score against; pass --solutions")
        entries = submission.get(task.id, {})
        correct = sum(any(grids_equal(p.output, g) for g in list(entries.get(i, []))[:2]) for i, p in enumerate(task.test))
        out.append(SubmissionScore(task.id, len(task.test), correct, task.id not in submission))
    return out


def overall_score(scores: Sequence[SubmissionScore]) -> float:
    """The Kaggle figure: the mean of the task scores (each task weighs the same, whatever its test inputs)."""
    return sum(s.score for s in scores) / len(scores) if scores else 0.0
