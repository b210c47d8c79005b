"""The results store: every attempt, task status, phase timings and run configs of a run, in one SQLite file.

Why SQLite in WAL mode: no server, one file, queryable with any SQLite client, and crash-safe. Every
write method is one transaction (`add_attempts` writes a whole batch at once), committed with
synchronous=FULL: killing the process at any moment loses at most the transaction in flight, and the
file is never corrupt (SQLite discards an unfinished transaction on the next open). Several worker
processes may write to one store; writers queue on SQLite's lock for up to BUSY_TIMEOUT_S.

Resume: a task is 'running' from `start_task` until `finish_task`. A resumed run skips the tasks in
`finished_task_ids()`; calling `start_task` again on a task left 'running' by a killed run deletes its
attempts and phase timings, so the task restarts cleanly instead of mixing two runs. A resume whose
settings would change what a task computes (`config.config_changes` against the store's first run) is
refused before anything is written.

Schema (version SCHEMA_VERSION, kept in PRAGMA user_version; see SCHEMA below):
- runs: one row per start or resume of a run (time, whether it resumed, the config as JSON);
- tasks: task_id, status running/finished, times, the TaskScores and the selected predictions (JSON);
- attempts: one row per attempt; the scores are plain columns so SQL can filter and average them;
- phase_timings: (task, round, phase, seconds), filled by the loop.
Version 2 added the attempts' error text, key and parent (refinement's lineage); a version-1 store is brought
up to date when opened, its old attempts with no key or parent.

What is not covered: computing scores (`scoring.py`), choosing predictions (`selection.py`).
"""

import csv
import io
import json
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from arcsl.config import config_changes
from arcsl.grids import Grid, make_grid
from arcsl.scoring import Attempt, TaskScores, metrics_rows

SCHEMA_VERSION = 2
# columns added since version 1, with their SQL (a version-1 store gains them when opened: `_migrate`)
ADDED_COLUMNS = {2: ("message TEXT NOT NULL DEFAULT ''", "key TEXT NOT NULL DEFAULT ''", "parent TEXT")}
BUSY_TIMEOUT_S = 60.0

SCHEMA = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,                -- unix time
    is_resume INTEGER NOT NULL,
    config TEXT NOT NULL                     -- JSON
);
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished')),
    started_at REAL NOT NULL,
    finished_at REAL,
    scores TEXT,                             -- JSON of TaskScores, once finished
    predictions TEXT                         -- JSON: per test input [attempt_1, attempt_2], once finished
);
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (task_id),
    round INTEGER NOT NULL,
    augmentation TEXT,                       -- JSON of Augmentation; NULL = the task as published
    prompt_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    program TEXT,
    error TEXT,                              -- sandbox error class; NULL = ran cleanly
    train_outputs TEXT,                      -- JSON grids (original orientation, colours, train order)
    test_outputs TEXT,
    output_fingerprint TEXT NOT NULL,
    train_pixel_score REAL NOT NULL,
    train_correct_grids REAL NOT NULL,
    train_is_correct INTEGER NOT NULL,
    test_pixel_score REAL,                   -- test_*: NULL when the test outputs are unknown
    test_correct_grids REAL,
    test_is_correct INTEGER,
    model_id TEXT NOT NULL,
    timings TEXT NOT NULL,                   -- JSON {phase: seconds}
    created_at REAL NOT NULL,
    message TEXT NOT NULL DEFAULT '',        -- the sandbox's error text; '' = ran cleanly
    key TEXT NOT NULL DEFAULT '',            -- the attempt's id within its task ("round.index")
    parent TEXT                              -- the key of the attempt it refines; NULL = a fresh sample
);
CREATE INDEX attempts_by_task ON attempts (task_id);
CREATE TABLE phase_timings (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    phase TEXT NOT NULL,
    seconds REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX phase_timings_by_task ON phase_timings (task_id);
"""

ATTEMPT_COLUMNS = ("task_id", "round", "augmentation", "prompt_hash", "response", "program", "error",
                   "train_outputs", "test_outputs", "output_fingerprint", "train_pixel_score",
                   "train_correct_grids", "train_is_correct", "test_pixel_score", "test_correct_grids",
                   "test_is_correct", "model_id", "timings", "created_at", "message", "key", "parent")


@dataclass(frozen=True, slots=True)
class PhaseTiming:
    task_id: str
    round: int
    phase: str      # one of loop.PHASES: sampling, execution, relabelling, finetuning, reset, other
    seconds: float


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _attempt_row(a: Attempt, now: float) -> tuple:
    data = a.to_json()
    test = a.scores.test
    return (a.task_id, a.round, None if a.augmentation is None else _dumps(data["augmentation"]), a.prompt_hash,
            a.response, a.program, a.error, None if a.train_outputs is None else _dumps(data["train_outputs"]),
            None if a.test_outputs is None else _dumps(data["test_outputs"]), a.output_fingerprint,
            a.scores.train.pixel_score, a.scores.train.correct_grids, a.scores.train.is_correct,
            None if test is None else test.pixel_score, None if test is None else test.correct_grids,
            None if test is None else test.is_correct, a.model_id, _dumps(a.timings), now, a.message, a.key, a.parent)


def _attempt_from_row(row: sqlite3.Row) -> Attempt:
    def split(prefix: str) -> dict | None:
        if row[f"{prefix}_is_correct"] is None:
            return None
        return {"pixel_score": row[f"{prefix}_pixel_score"], "correct_grids": row[f"{prefix}_correct_grids"],
                "is_correct": bool(row[f"{prefix}_is_correct"])}

    def loads(text: str | None) -> Any:
        return None if text is None else json.loads(text)

    return Attempt.from_json({
        "task_id": row["task_id"], "program": row["program"], "error": row["error"],
        "train_outputs": loads(row["train_outputs"]), "test_outputs": loads(row["test_outputs"]),
        "scores": {"train": split("train"), "test": split("test")}, "round": row["round"],
        "augmentation": loads(row["augmentation"]), "prompt_hash": row["prompt_hash"], "response": row["response"],
        "model_id": row["model_id"], "timings": loads(row["timings"]), "message": row["message"], "key": row["key"],
        "parent": row["parent"]})


class Store:
    """An open results store; use `open_store`. Every write method is one transaction."""

    def __init__(self, path: Path, connection: sqlite3.Connection):
        self.path, self._db = Path(path), connection

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two writers queue instead of deadlocking
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _status(self, db: sqlite3.Connection, task_id: str) -> str | None:
        row = db.execute("SELECT status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else row["status"]

    def _check_running(self, db: sqlite3.Connection, task_id: str) -> None:
        status = self._status(db, task_id)
        if status != "running":
            raise ValueError(f"{self.path}: task {task_id} is {status or 'not started'}; "
                             "call start_task before writing its attempts, timings or results")

    # --- writing --------------------------------------------------------------------------------

    def record_run(self, config: dict[str, Any], is_resume: bool) -> int:
        """Log one start (or resume) of a run with its config; returns the run id."""
        with self._transaction() as db:
            cursor = db.execute("INSERT INTO runs (started_at, is_resume, config) VALUES (?, ?, ?)",
                                (time.time(), is_resume, _dumps(config)))
            return int(cursor.lastrowid)

    def start_task(self, task_id: str) -> None:
        """Mark a task running; a task left running by an interrupted run loses its old attempts and timings."""
        with self._transaction() as db:
            if self._status(db, task_id) == "finished":
                raise ValueError(f"{self.path}: task {task_id} is already finished; a resumed run skips finished tasks")
            db.execute("DELETE FROM attempts WHERE task_id = ?", (task_id,))
            db.execute("DELETE FROM phase_timings WHERE task_id = ?", (task_id,))
            db.execute("INSERT OR REPLACE INTO tasks (task_id, status, started_at) VALUES (?, 'running', ?)",
                       (task_id, time.time()))

    def add_attempts(self, attempts: Sequence[Attempt]) -> None:
        """Record a batch of scored attempts atomically: after a crash, all of them are stored or none."""
        now = time.time()
        rows = [_attempt_row(a, now) for a in attempts]  # serialise before taking the lock
        with self._transaction() as db:
            for task_id in {a.task_id for a in attempts}:
                self._check_running(db, task_id)
            db.executemany(f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) "
                           f"VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})", rows)

    def add_phase_timings(self, task_id: str, round: int, seconds_by_phase: dict[str, float]) -> None:
        """Record how long each phase of one round of a task took."""
        now = time.time()
        with self._transaction() as db:
            self._check_running(db, task_id)
            db.executemany("INSERT INTO phase_timings (task_id, round, phase, seconds, created_at) VALUES (?, ?, ?, ?, ?)",
                           [(task_id, round, phase, float(s), now) for phase, s in seconds_by_phase.items()])

    def finish_task(self, task_id: str, scores: TaskScores, predictions: Sequence[Sequence[Grid]]) -> None:
        """Mark a task finished with its scores and selected predictions (per test input [attempt_1, attempt_2])."""
        assert scores.task_id == task_id, f"scores of task {scores.task_id} given to finish task {task_id}"
        grids = [[g.tolist() for g in pair] for pair in predictions]
        with self._transaction() as db:
            self._check_running(db, task_id)
            db.execute("UPDATE tasks SET status = 'finished', finished_at = ?, scores = ?, predictions = ? "
                       "WHERE task_id = ?", (time.time(), _dumps(asdict(scores)), _dumps(grids), task_id))

    # --- reading --------------------------------------------------------------------------------

    def finished_task_ids(self) -> set[str]:
        return {r["task_id"] for r in self._db.execute("SELECT task_id FROM tasks WHERE status = 'finished'")}

    def task_status(self, task_id: str) -> str | None:
        """'running', 'finished', or None for a task never started."""
        return self._status(self._db, task_id)

    def iter_attempts(self, task_id: str | None = None) -> Iterator[Attempt]:
        """Recorded attempts (of one task, or all), in the order they were written, one at a time."""
        where, args = ("WHERE task_id = ?", (task_id,)) if task_id is not None else ("", ())
        for row in self._db.execute(f"SELECT * FROM attempts {where} ORDER BY id", args):
            yield _attempt_from_row(row)

    def attempts(self, task_id: str | None = None) -> list[Attempt]:
        return list(self.iter_attempts(task_id))

    def num_attempts(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0])

    def task_scores(self) -> list[TaskScores]:
        """Scores of the finished tasks, in the order they finished."""
        rows = self._db.execute("SELECT scores FROM tasks WHERE status = 'finished' ORDER BY finished_at, task_id")
        return [TaskScores.from_json(json.loads(r["scores"])) for r in rows]

    def predictions(self) -> dict[str, list[list[Grid]]]:
        """Selected predictions of the finished tasks: task id -> per test input [attempt_1, attempt_2]."""
        rows = self._db.execute("SELECT task_id, predictions FROM tasks WHERE status = 'finished'")
        return {r["task_id"]: [[make_grid(g) for g in pair] for pair in json.loads(r["predictions"])] for r in rows}

    def phase_timings(self, task_id: str | None = None) -> list[PhaseTiming]:
        where, args = ("WHERE task_id = ?", (task_id,)) if task_id is not None else ("", ())
        rows = self._db.execute(f"SELECT task_id, round, phase, seconds FROM phase_timings {where} ORDER BY id", args)
        return [PhaseTiming(r["task_id"], r["round"], r["phase"], r["seconds"]) for r in rows]

    def runs(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT id, started_at, is_resume, config FROM runs ORDER BY id")
        return [{"id": r["id"], "started_at": r["started_at"], "is_resume": bool(r["is_resume"]),
                 "config": json.loads(r["config"])} for r in rows]


# --- opening ------------------------------------------------------------------------------------

def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; Store opens each one explicitly
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")  # a commit survives power loss too, not only a killed process
    db.execute("PRAGMA foreign_keys = ON")
    return db


def _ensure_schema(db: sqlite3.Connection, path: Path) -> None:
    db.execute("BEGIN IMMEDIATE")  # two workers opening a new store at once: one creates, the other sees it
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
            # statement by statement: executescript would commit the transaction that guards the creation
            for statement in re.sub(r"--[^\n]*", "", SCHEMA).split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif 1 <= version < SCHEMA_VERSION:  # an older arcsl's store
            _migrate(db, version)
        elif version != SCHEMA_VERSION:
            raise ValueError(f"{path}: results store has schema version {version}; "
                             f"this arcsl reads version {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a store of an older schema version to this one, inside the caller's transaction: the columns added
    since, with their defaults (an old attempt has no message, key or parent)."""
    for v in range(version + 1, SCHEMA_VERSION + 1):
        for column in ADDED_COLUMNS.get(v, ()):
            db.execute(f"ALTER TABLE attempts ADD COLUMN {column}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def open_store(path: Path, resume: bool = False, config: dict[str, Any] | None = None) -> Store:
    """Open (creating if needed) the results store at `path` and, if `config` is given, log this run.

    Args:
        resume: continue a store that already holds tasks; without it such a store is an error,
            so that two runs never mix by accident. Worker processes that share the store of one
            run open it with resume=True once the parent has opened it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = _connect(path)
        _ensure_schema(db, path)
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{path}: not a readable results store ({e})") from None
    store = Store(path, db)
    num_tasks = db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    if num_tasks and not resume:
        store.close()
        raise ValueError(f"{path}: the results store already holds {num_tasks} tasks; "
                         "pass --resume to continue that run, or choose another output directory")
    if config is not None:
        if num_tasks and (changes := config_changes(store.runs()[0]["config"], config)):
            store.close()
            raise ValueError(f"{path}: --resume with settings other than the run's: {'; '.join(changes)}. Resume "
                             "with the run's settings (its config.json), or start a new run in another output "
                             "directory; only the run's deadline, workers, progress and the like may change")
        store.record_run(config, is_resume=bool(num_tasks))
    return store


# --- exports for humans -------------------------------------------------------------------------

def _write_atomically(path: Path, lines: Iterable[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def export_metrics_csv(store: Store, path: Path) -> None:
    """metrics.csv: one row per finished task (scoring.METRIC_COLUMNS and pass@k), then a MEAN row."""
    rows = metrics_rows(store.task_scores())
    buffer = io.StringIO()
    csv.writer(buffer).writerows([list(rows[0])] + [[_cell(v) for v in row.values()] for row in rows])
    _write_atomically(path, [buffer.getvalue()])


def export_attempts_jsonl(store: Store, path: Path) -> None:
    """attempts.jsonl: every attempt as one JSON object per line (`Attempt.to_json`), in write order."""
    _write_atomically(path, (_dumps(a.to_json()) + "\n" for a in store.iter_attempts()))
