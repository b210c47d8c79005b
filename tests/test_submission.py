import json

import numpy as np
import pytest

from arcsl.cli import main
from arcsl.grids import load_tasks, make_grid
from arcsl.submission import (build_submission, overall_score, parse_submission, read_submission, score_submission,
                              submission_problems, write_submission)

G = make_grid


@pytest.fixture
def tasks(kaggle_files):
    """aaaa0001 (one test input, answer [[0, 5, 5]]) and bbbb0002 (two: [[7, 7]] and [[9]]), from conftest."""
    return load_tasks(str(kaggle_files)).tasks


def test_build_submission_covers_every_task_falling_back_where_there_are_no_predictions(tasks):
    sub = build_submission(tasks, {"aaaa0001": [[G([[0, 5, 5]]), G([[1]])]]})
    assert sub["aaaa0001"] == [{"attempt_1": [[0, 5, 5]], "attempt_2": [[1]]}]
    assert sub["bbbb0002"] == [{"attempt_1": [[7]], "attempt_2": [[0]]}, {"attempt_1": [[8, 9]], "attempt_2": [[0]]}]


def test_a_written_submission_reads_back_and_leaves_no_temporary_file(tasks, tmp_path):
    path = tmp_path / "out" / "submission.json"
    write_submission(path, build_submission(tasks, {}))
    assert read_submission(path)["bbbb0002"][1][0].tolist() == [[8, 9]]
    assert [p.name for p in path.parent.iterdir()] == ["submission.json"]


def test_a_built_submission_has_no_problems(tasks):
    assert submission_problems(build_submission(tasks, {}), tasks) == []


def test_validation_reports_every_problem_naming_task_and_field(tasks):
    sub = {"bbbb0002": [{"attempt_1": [[1]], "attempt_3": [[1]]}, {"attempt_1": [[1, 2], [3]], "attempt_2": [[12]]}],
           "zzzz9999": []}
    assert submission_problems(sub, tasks, "sub.json") == [
        "sub.json: task aaaa0001: task: missing from the submission",
        "sub.json: task bbbb0002: [0]: unknown key 'attempt_3'",
        "sub.json: task bbbb0002: [0].attempt_2: missing",
        "sub.json: task bbbb0002: [1].attempt_1: ragged rows: row 0 has 2 cells, row 1 has 1",
        "sub.json: task bbbb0002: [1].attempt_2: row 0 column 0: value 12 is not a colour 0-9",
        "sub.json: task zzzz9999: task: not in the challenges",
    ]


def test_validation_reports_a_wrong_number_of_entries(tasks):
    sub = build_submission(tasks, {})
    sub["bbbb0002"] = sub["bbbb0002"][:1]
    assert submission_problems(sub, tasks, "s") == ["s: task bbbb0002: entries: 1 entries for 2 test inputs"]


def test_validation_of_something_that_is_not_an_object_is_one_problem(tasks):
    assert submission_problems([1, 2], tasks, "s") == ["s: file: expected an object mapping task id to a list of "
                                                       "entries, got [1, 2]"]


def test_a_test_input_counts_as_correct_when_either_attempt_is_exact(tasks):
    sub = parse_submission({"aaaa0001": [{"attempt_1": [[0]], "attempt_2": [[0, 5, 5]]}],
                            "bbbb0002": [{"attempt_1": [[7, 7]], "attempt_2": [[0]]},
                                         {"attempt_1": [[0]], "attempt_2": [[1]]}]}, "s")
    assert [(s.task_id, s.num_correct, s.score) for s in score_submission(sub, tasks)] == [("aaaa0001", 1, 1.0),
                                                                                          ("bbbb0002", 1, 0.5)]


def test_the_overall_score_is_the_mean_of_task_scores_so_each_task_weighs_the_same(tasks):
    sub = parse_submission({"aaaa0001": [{"attempt_1": [[0, 5, 5]], "attempt_2": [[0]]}],
                            "bbbb0002": [{"attempt_1": [[7, 7]], "attempt_2": [[0]]},
                                         {"attempt_1": [[0]], "attempt_2": [[1]]}]}, "s")
    assert overall_score(score_submission(sub, tasks)) == 0.75  # (1 + 1/2) / 2, not 2 of 3 test inputs


def test_a_task_missing_from_the_submission_scores_zero(tasks):
    scores = score_submission(parse_submission({"aaaa0001": [{"attempt_1": [[0, 5, 5]], "attempt_2": [[0]]}]}, "s"), tasks)
    assert [(s.task_id, s.score, s.is_missing) for s in scores] == [("aaaa0001", 1.0, False), ("bbbb0002", 0.0, True)]


def test_scoring_without_solutions_is_an_error_that_asks_for_them(tmp_path):
    path = tmp_path / "x_challenges.json"
    path.write_text(json.dumps({"t1": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}]}}))
    with pytest.raises(ValueError, match="task t1 has no test outputs to score against; pass --solutions"):
        score_submission({}, load_tasks(str(path)).tasks)


# --- the commands -------------------------------------------------------------------------------

def test_validate_submission_command_accepts_a_valid_file(tasks, kaggle_files, tmp_path, capsys):
    write_submission(tmp_path / "s.json", build_submission(tasks, {}))
    assert main(["validate-submission", str(tmp_path / "s.json"), "--dataset", str(kaggle_files)]) == 0
    assert "valid for the 2 tasks" in capsys.readouterr().out


def test_validate_submission_command_exits_1_listing_each_problem(kaggle_files, tmp_path, capsys):
    (tmp_path / "s.json").write_text(json.dumps({"aaaa0001": [{"attempt_1": [[1]]}]}))
    assert main(["validate-submission", str(tmp_path / "s.json"), "--dataset", str(kaggle_files)]) == 1
    out = capsys.readouterr().out
    assert "task aaaa0001: [0].attempt_2: missing" in out and "task bbbb0002: task: missing" in out and "2 problems" in out


def test_score_command_reports_a_malformed_submission_in_one_line(kaggle_files, tmp_path, capsys):
    (tmp_path / "s.json").write_text("{")
    assert main(["score", str(tmp_path / "s.json"), "--dataset", str(kaggle_files)]) == 2
    assert capsys.readouterr().err.startswith(f"arcsl score: error: {tmp_path / 's.json'}: line 1")


@pytest.fixture(scope="module")
def evaluation_tasks():
    return load_tasks("arc-agi-1/evaluation").tasks


def test_score_command_gives_100_percent_to_the_arc_agi_1_evaluation_solutions(evaluation_tasks, tmp_path, capsys):
    answers = {t.id: [[p.output, G([[0]])] for p in t.test] for t in evaluation_tasks}
    write_submission(tmp_path / "s.json", build_submission(evaluation_tasks, answers))
    assert main(["score", str(tmp_path / "s.json"), "--dataset", "arc-agi-1/evaluation"]) == 0
    assert "score 100.00%: 400.00 of 400 tasks, 419 of 419 test inputs correct" in capsys.readouterr().out


def test_score_command_gives_0_percent_to_an_all_zero_submission(evaluation_tasks, tmp_path, capsys):
    zeros = {t.id: [[np.zeros_like(p.input), G([[0]])] for p in t.test] for t in evaluation_tasks}
    write_submission(tmp_path / "s.json", build_submission(evaluation_tasks, zeros))
    assert main(["score", str(tmp_path / "s.json"), "--dataset", "arc-agi-1/evaluation"]) == 0
    assert "score 0.00%: 0.00 of 400 tasks, 0 of 419 test inputs correct" in capsys.readouterr().out


def test_a_run_recorded_in_the_store_scores_in_the_submission_as_its_solved_at_2(tasks, tmp_path):
    from arcsl.scoring import Attempt, score_attempt, score_task
    from arcsl.selection import prediction_grids, select_attempts
    from arcsl.store import open_store

    task = tasks[1]  # bbbb0002: the program below answers its first test input only
    train = [G([[6]])]
    test = [G([[7, 7]]), G([[1]])]
    attempts = [Attempt(task_id=task.id, program="p", error=None, train_outputs=train, test_outputs=test,
                         scores=score_attempt(task, train, test))]
    predictions = prediction_grids(select_attempts(task, attempts))
    with open_store(tmp_path / "run.db") as store:
        store.start_task(task.id)
        store.add_attempts(attempts)
        store.finish_task(task.id, score_task(task, attempts, predictions), predictions)
        solved = {s.task_id: s.solved_at_2 for s in store.task_scores()}
        submission = build_submission(tasks, store.predictions())
    scores = score_submission(parse_submission(submission, "s"), tasks)
    assert solved == {"bbbb0002": 0.5} and [s.score for s in scores] == [0.0, 0.5]


def test_score_refuses_a_submission_that_validation_rejects(kaggle_files, tmp_path, capsys):
    answers = {"aaaa0001": [[G([[0, 5, 5]]), G([[0]])]], "bbbb0002": [[G([[7, 7]]), G([[0]])], [G([[9]]), G([[0]])]]}
    good = build_submission(load_tasks(str(kaggle_files)).tasks, answers)
    two_entries = good | {"aaaa0001": good["aaaa0001"] * 2}  # two entries for its one test input
    extra_task = good | {"cccc0003": good["aaaa0001"]}
    for bad, problem in ((two_entries, "task aaaa0001: entries: 2 entries for 1 test inputs"),
                         (extra_task, "task cccc0003: task: not in the challenges")):
        (tmp_path / "s.json").write_text(json.dumps(bad))
        assert main(["score", str(tmp_path / "s.json"), "--dataset", str(kaggle_files)]) == 1
        out = capsys.readouterr().out
        assert problem in out and "1 problems" in out and "not scored" in out and "score 100" not in out
        assert main(["score", str(tmp_path / "s.json"), "--dataset", str(kaggle_files), "--no-validate"]) == 0
        assert "score 100.00%" in capsys.readouterr().out
    (tmp_path / "s.json").write_text(json.dumps(extra_task))  # scoring a selection: other tasks are no problem
    assert main(["score", str(tmp_path / "s.json"), "--dataset", str(kaggle_files), "--task-ids", "aaaa0001"]) == 0
    assert "score 100.00%: 1.00 of 1 tasks" in capsys.readouterr().out
