import csv
import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from arcsl.augment import Augmentation
from arcsl.grids import make_grid, parse_task
from arcsl.scoring import Attempt, score_attempt, score_task
from arcsl.store import SCHEMA_VERSION, export_attempts_jsonl, export_metrics_csv, open_store

G = make_grid


def task_named(task_id: str):
    return parse_task(task_id, {"train": [{"input": [[1, 0]], "output": [[1, 1]]}],
                                "test": [{"input": [[3, 0]], "output": [[3, 3]]}]}, "test")


TASK = task_named("t1")


def attempt(task_id="t1", test=((3, 3),), program="p", round=0) -> Attempt:
    train, tests = [G([[1, 1]])], [G([list(test[0])])]
    return Attempt(task_id=task_id, program=program, error=None, train_outputs=train, test_outputs=tests,
                   scores=score_attempt(TASK, train, tests), round=round,
                   augmentation=Augmentation(dihedral=2), prompt_hash="abc", response=f"```{program}```",
                   model_id="base+lora", timings={"execute": 0.25})


def finish(store, task_id="t1", attempts=()):
    scored = score_task(task_named(task_id), list(attempts), [[G([[3, 3]]), G([[0]])]])
    store.finish_task(task_id, scored, [[G([[3, 3]]), G([[0]])]])


# --- format and round trips ---------------------------------------------------------------------

def test_a_new_store_is_in_wal_mode_with_the_schema_version(tmp_path):
    open_store(tmp_path / "run.db").close()
    db = sqlite3.connect(tmp_path / "run.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_attempts_come_back_from_the_store_field_for_field(tmp_path):
    with open_store(tmp_path / "run.db") as store:
        store.start_task("t1")
        written = [attempt(program="a", round=1), attempt(test=((0, 3),), program="b")]
        store.add_attempts(written)
        assert [a.to_json() for a in store.attempts("t1")] == [a.to_json() for a in written]


def test_scores_are_plain_columns_that_sql_can_average(tmp_path):
    with open_store(tmp_path / "run.db") as store:
        store.start_task("t1")
        store.add_attempts([attempt(test=((3, 3),)), attempt(test=((3, 0),))])
    db = sqlite3.connect(tmp_path / "run.db")
    assert db.execute("SELECT AVG(test_pixel_score), SUM(test_is_correct) FROM attempts").fetchone() == (0.75, 1)


def test_finished_tasks_keep_their_scores_and_predictions(tmp_path):
    with open_store(tmp_path / "run.db") as store:
        store.start_task("t1")
        store.add_attempts([attempt()])
        finish(store, attempts=[attempt()])
        assert store.finished_task_ids() == {"t1"} and store.task_status("t1") == "finished"
        assert store.task_scores()[0].pass_at_k == {1: 1.0}
        assert [g.tolist() for g in store.predictions()["t1"][0]] == [[[3, 3]], [[0]]]


def test_phase_timings_are_recorded_per_task_and_round(tmp_path):
    with open_store(tmp_path / "run.db") as store:
        store.start_task("t1")
        store.add_phase_timings("t1", 2, {"sample": 1.5, "finetune": 3.0})
        timings = [(t.round, t.phase, t.seconds) for t in store.phase_timings("t1")]
        assert timings == [(2, "sample", 1.5), (2, "finetune", 3.0)]


# --- task life cycle and resume -----------------------------------------------------------------

def test_attempts_of_a_task_not_started_are_refused(tmp_path):
    with open_store(tmp_path / "run.db") as store:
        with pytest.raises(ValueError, match="task t9 is not started"):
            store.add_attempts([attempt(task_id="t9")])


def test_a_batch_is_stored_whole_or_not_at_all(tmp_path):
    with open_store(tmp_path / "run.db") as store:
        store.start_task("t1")
        with pytest.raises(ValueError):
            store.add_attempts([attempt(), attempt(task_id="t9")])
        assert store.num_attempts() == 0


def test_restarting_an_unfinished_task_drops_its_old_attempts_and_timings(tmp_path):
    with open_store(tmp_path / "run.db") as store:
        store.start_task("t1")
        store.add_attempts([attempt(), attempt()])
        store.add_phase_timings("t1", 0, {"sample": 1.0})
    with open_store(tmp_path / "run.db", resume=True) as store:
        assert store.task_status("t1") == "running" and store.finished_task_ids() == set()
        store.start_task("t1")
        assert store.attempts("t1") == [] and store.phase_timings("t1") == []


def test_starting_a_finished_task_again_is_refused(tmp_path):
    with open_store(tmp_path / "run.db") as store:
        store.start_task("t1")
        finish(store)
        with pytest.raises(ValueError, match="already finished"):
            store.start_task("t1")


def test_reopening_a_store_that_holds_tasks_needs_resume(tmp_path):
    with open_store(tmp_path / "run.db") as store:
        store.start_task("t1")
    with pytest.raises(ValueError, match=r"run\.db: the results store already holds 1 tasks; pass --resume"):
        open_store(tmp_path / "run.db")


def test_each_start_and_resume_logs_its_config(tmp_path):
    open_store(tmp_path / "run.db", config={"lr": 1e-4}).close()
    with open_store(tmp_path / "run.db", config={"lr": 1e-4}) as store:
        store.start_task("t1")
    with open_store(tmp_path / "run.db", resume=True, config={"lr": 2e-4}) as store:
        assert [(r["is_resume"], r["config"]) for r in store.runs()] == [(False, {"lr": 1e-4}), (False, {"lr": 1e-4}),
                                                                         (True, {"lr": 2e-4})]


def test_a_refined_attempts_lineage_and_error_text_come_back_from_the_store(tmp_path):
    import dataclasses
    with open_store(tmp_path / "run.db") as store:
        store.start_task("t1")
        parent = dataclasses.replace(attempt(program="a"), key="0.0", error="exception", message="ValueError: no")
        child = dataclasses.replace(attempt(program="b", round=1), key="1.0", parent="0.0")
        store.add_attempts([parent, child])
        back = store.attempts("t1")
        assert [(a.key, a.parent, a.message) for a in back] == [("0.0", None, "ValueError: no"), ("1.0", "0.0", "")]


def test_a_version_1_store_is_brought_up_to_date_and_keeps_its_attempts(tmp_path):
    import re
    from arcsl.store import ADDED_COLUMNS, SCHEMA
    old_schema = re.sub(r",\n    message TEXT.*?\n(?=\);)", "\n", SCHEMA, flags=re.S)  # version 1: no lineage
    assert "parent" not in old_schema and len(ADDED_COLUMNS[2]) == 3
    db = sqlite3.connect(tmp_path / "run.db")
    db.executescript(old_schema + "PRAGMA user_version = 1;")
    db.execute("INSERT INTO tasks (task_id, status, started_at) VALUES ('t1', 'running', 0)")
    db.execute("INSERT INTO attempts (task_id, round, prompt_hash, response, output_fingerprint, train_pixel_score, "
               "train_correct_grids, train_is_correct, model_id, timings, created_at) "
               "VALUES ('t1', 0, 'h', 'r', 'f', 0.5, 0, 0, 'm', '{}', 0)")
    db.commit()
    db.close()
    with open_store(tmp_path / "run.db", resume=True) as store:
        [old] = store.attempts("t1")
        assert (old.response, old.key, old.parent, old.message) == ("r", "", None, "")
        store.add_attempts([attempt()])
    assert sqlite3.connect(tmp_path / "run.db").execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def test_a_store_of_another_schema_version_is_refused_naming_the_file(tmp_path):
    open_store(tmp_path / "run.db").close()
    sqlite3.connect(tmp_path / "run.db").execute("PRAGMA user_version = 99")
    expected = rf"run\.db: results store has schema version 99; this arcsl reads version {SCHEMA_VERSION}"
    with pytest.raises(ValueError, match=expected):
        open_store(tmp_path / "run.db", resume=True)


def test_a_file_that_is_not_a_database_is_refused_naming_the_file(tmp_path):
    (tmp_path / "run.db").write_text("this is not sqlite " * 100)
    with pytest.raises(ValueError, match=r"run\.db: not a readable results store"):
        open_store(tmp_path / "run.db")


# --- crash safety -------------------------------------------------------------------------------

BATCH, BATCHES, NUM_TASKS = 8, 3, 10
WRITER = f"""
import sys
from arcsl.grids import make_grid, parse_task
from arcsl.scoring import Attempt, score_attempt, score_task
from arcsl.store import open_store

grid = make_grid([[(r * c) % 10 for c in range(30)] for r in range(30)])
store = open_store(sys.argv[1], resume=True, config={{"writer": True}})
done = store.finished_task_ids()
for t in range({NUM_TASKS}):
    task_id = f"t{{t:03d}}"
    if task_id in done:
        continue
    store.start_task(task_id)
    pair = {{"input": [[1]], "output": [[2]]}}
    task = parse_task(task_id, {{"train": [pair], "test": [pair]}}, "w")
    attempts = []
    for b in range({BATCHES}):
        batch = [Attempt(task_id=task_id, program="p", error=None, train_outputs=[grid], test_outputs=[grid],
                         scores=score_attempt(task, [grid], [grid]), round=b,
                         response="x" * 3000) for _ in range({BATCH})]
        store.add_attempts(batch)
        attempts += batch
    store.add_phase_timings(task_id, 0, {{"sample": 1.0}})
    store.finish_task(task_id, score_task(task, attempts, [[grid, grid]]), [[grid, grid]])
"""


def _count_attempts(path) -> int:
    try:
        return sqlite3.connect(path).execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    except sqlite3.OperationalError:  # the writer has not created the schema yet
        return 0


def _check_intact(path) -> None:
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    counts = dict(db.execute("SELECT tasks.task_id, COUNT(attempts.id) FROM tasks LEFT JOIN attempts "
                             "USING (task_id) GROUP BY tasks.task_id").fetchall())
    assert all(n % BATCH == 0 for n in counts.values()), f"a batch was stored in part: {counts}"
    finished = {r[0] for r in db.execute("SELECT task_id FROM tasks WHERE status = 'finished'")}
    assert all(counts[t] == BATCH * BATCHES for t in finished)
    assert len(counts) - len(finished) <= 1, "more than one task left running by one writer"


def test_a_writer_killed_mid_run_leaves_the_store_intact_and_the_run_resumable(tmp_path):
    path = tmp_path / "run.db"
    for delay in (0.0, 0.011, 0.023):  # kill at different points of the write cycle
        before = _count_attempts(path)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while _count_attempts(path) < before + 2 * BATCH and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert writer.returncode == -signal.SIGKILL, f"the writer ended before it was killed: {writer.stderr.read()}"
        _check_intact(path)
    finished = subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    _check_intact(path)
    with open_store(path, resume=True) as store:
        assert len(store.finished_task_ids()) == NUM_TASKS and store.num_attempts() == NUM_TASKS * BATCH * BATCHES
        assert sum(r["is_resume"] for r in store.runs()) >= 3


# --- exports ------------------------------------------------------------------------------------

def test_metrics_csv_has_a_row_per_finished_task_and_a_mean_row(tmp_path):
    with open_store(tmp_path / "run.db") as store:
        for task_id in ("t1", "t2"):
            store.start_task(task_id)
            finish(store, task_id, attempts=[attempt()] if task_id == "t1" else [])
        store.start_task("t3")  # unfinished: not in the metrics
        export_metrics_csv(store, tmp_path / "metrics.csv")
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["task_id"] for r in rows] == ["t1", "t2", "MEAN"]
    assert rows[-1]["n_preds"] == "0.5" and rows[0]["solved_at_2"] == "1" and rows[-1]["pass@1"] == "1"


def test_attempts_jsonl_has_one_json_attempt_per_line(tmp_path):
    with open_store(tmp_path / "run.db") as store:
        store.start_task("t1")
        store.add_attempts([attempt(program="a"), attempt(program="b")])
        export_attempts_jsonl(store, tmp_path / "attempts.jsonl")
    lines = (tmp_path / "attempts.jsonl").read_text().splitlines()
    assert [Attempt.from_json(json.loads(line)).program for line in lines] == ["a", "b"]
