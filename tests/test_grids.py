import copy
import json

import numpy as np
import pytest

from arcsl.config import DataConfig
from arcsl.grids import (NAMED_DATASETS, TaskError, grid_problem, load_dataset, load_tasks, make_grid,
                         parse_task, select_tasks, task_to_json)
from conftest import SOLUTIONS, TASK_A, TASK_B


def test_kaggle_challenges_load_with_solutions_found_beside_them(kaggle_files):
    tasks = load_tasks(str(kaggle_files)).tasks
    assert [t.id for t in tasks] == ["aaaa0001", "bbbb0002"]
    assert tasks[1].test[1].output.tolist() == [[9]]
    assert all(t.has_test_outputs for t in tasks)


def test_grids_are_read_only_uint8_arrays(kaggle_files):
    grid = load_tasks(str(kaggle_files)).tasks[0].train[0].input
    assert grid.dtype == np.uint8 and grid.shape == (2, 2)
    with pytest.raises(ValueError):
        grid[0, 0] = 4


def test_challenges_without_solutions_have_no_test_outputs(tmp_path):
    path = tmp_path / "x_challenges.json"
    path.write_text(json.dumps({"aaaa0001": TASK_A}))
    task = load_tasks(str(path)).tasks[0]
    assert task.test[0].output is None and not task.has_test_outputs


def test_explicit_solutions_file_is_used(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"aaaa0001": TASK_A, "bbbb0002": TASK_B}))
    sol = tmp_path / "answers.json"
    sol.write_text(json.dumps(SOLUTIONS))
    assert load_tasks(str(path), str(sol)).tasks[0].test[0].output.tolist() == [[0, 5, 5]]


def test_directory_of_task_files_loads_in_name_order(tmp_path):
    for name, task in [("bbbb0002", TASK_B), ("aaaa0001", TASK_A)]:
        (tmp_path / f"{name}.json").write_text(json.dumps(task))
    assert [t.id for t in load_tasks(str(tmp_path)).tasks] == ["aaaa0001", "bbbb0002"]


def test_single_task_file_loads_under_its_file_name(tmp_path):
    path = tmp_path / "cafe0001.json"
    path.write_text(json.dumps(TASK_A))
    assert [t.id for t in load_tasks(str(path)).tasks] == ["cafe0001"]


@pytest.mark.parametrize("name, count", [("arc-agi-1/training", 400), ("arc-agi-1/evaluation", 400),
                                         ("arc-agi-2/training", 1000), ("arc-agi-2/evaluation", 120)])
def test_named_datasets_have_the_published_task_counts(name, count):
    tasks = load_tasks(name).tasks
    assert len(tasks) == count
    assert all(t.has_test_outputs for t in tasks)


def test_every_named_dataset_loads_without_invalid_tasks():
    for name in NAMED_DATASETS:
        result = load_tasks(name)
        assert result.tasks and not result.skipped, name


def _corrupt(kaggle_files, edit):
    data = json.loads(kaggle_files.read_text())
    edit(data)
    kaggle_files.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, field, problem", [
    (lambda d: d["bbbb0002"]["train"][0]["input"].__setitem__(1, [4, 5]), "train[0].input", "ragged rows"),
    (lambda d: d["bbbb0002"]["train"][0]["output"][0].__setitem__(0, 10), "train[0].output", "value 10"),
    (lambda d: d["bbbb0002"]["train"][0]["output"][0].__setitem__(0, -1), "train[0].output", "value -1"),
    (lambda d: d["bbbb0002"]["train"][0]["output"][0].__setitem__(0, True), "train[0].output", "value True"),
    (lambda d: d["bbbb0002"]["train"][0]["output"][0].__setitem__(0, 1.5), "train[0].output", "value 1.5"),
    (lambda d: d["bbbb0002"]["train"][0].pop("output"), "train[0]", "missing key 'output'"),
    (lambda d: d["bbbb0002"]["test"][1].pop("input"), "test[1]", "missing key 'input'"),
    (lambda d: d["bbbb0002"].pop("test"), "task", "missing key 'test'"),
    (lambda d: d["bbbb0002"]["train"][0].__setitem__("input", [[1] * 31]), "train[0].input", "outside 1..30"),
    (lambda d: d["bbbb0002"]["train"][0].__setitem__("input", []), "train[0].input", "non-empty list"),
    (lambda d: d["bbbb0002"].__setitem__("train", []), "train", "non-empty list of pairs"),
])
def test_corrupt_task_error_names_file_task_and_field(kaggle_files, edit, field, problem):
    _corrupt(kaggle_files, edit)
    with pytest.raises(TaskError) as info:
        load_tasks(str(kaggle_files))
    message = str(info.value)
    assert str(kaggle_files) in message and "task bbbb0002" in message
    assert f"{field}:" in message and problem in message


def test_malformed_json_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken_challenges.json"
    path.write_text('{"aaaa0001": {"train": [}\n')
    with pytest.raises(TaskError, match=r"broken_challenges.json: line 1 column \d+: malformed JSON"):
        load_tasks(str(path))


@pytest.mark.parametrize("solutions, problem", [
    ({"aaaa0001": [[[0, 5, 5]]]}, "task bbbb0002: solutions: missing"),
    (SOLUTIONS | {"zzzz9999": [[[1]]]}, "task zzzz9999: solutions: task not in the challenges"),
    ({"aaaa0001": [[[0, 5, 5]]], "bbbb0002": [[[7, 7]]]}, "task bbbb0002: solutions: expected 2 grids"),
    ({"aaaa0001": [[[0, 5, 5]]], "bbbb0002": [[[7, 7]], [[9, 12]]]}, "task bbbb0002: solutions[1]: row 0 column 1"),
])
def test_solutions_that_do_not_match_the_challenges_are_rejected(kaggle_files, solutions, problem):
    (kaggle_files.parent / "mini_solutions.json").write_text(json.dumps(solutions))
    with pytest.raises(TaskError, match="mini_solutions.json: " + problem.replace("[", r"\[").replace("]", r"\]")):
        load_tasks(str(kaggle_files))


def test_skip_invalid_reports_every_skipped_task_and_keeps_the_rest(kaggle_files):
    _corrupt(kaggle_files, lambda d: d["aaaa0001"]["train"][1].__setitem__("output", [[3, 11]]))
    result = load_tasks(str(kaggle_files), skip_invalid=True)
    assert [t.id for t in result.tasks] == ["bbbb0002"]
    assert [e.task_id for e in result.skipped] == ["aaaa0001"]
    assert result.skipped[0].where == "train[1].output"


def test_a_corrupted_copy_of_a_bundled_dataset_names_task_and_field(tmp_path):
    tasks = load_tasks("arc-agi-1/evaluation").tasks[:3]
    data = {t.id: task_to_json(t) for t in tasks}
    broken = copy.deepcopy(data)
    broken[tasks[2].id]["test"][0]["input"][0][0] = 12
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(TaskError, match=f"task {tasks[2].id}: test\\[0\\].input: row 0 column 0: value 12"):
        load_tasks(str(path))


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="arc-agi-1/evaluation"):
        load_tasks("arc-agi-3/evaluation")


def test_selection_by_ids_keeps_the_given_order(kaggle_files):
    tasks = load_tasks(str(kaggle_files)).tasks
    assert [t.id for t in select_tasks(tasks, ["bbbb0002", "aaaa0001"])] == ["bbbb0002", "aaaa0001"]


def test_selection_by_unknown_id_is_an_error_naming_it(kaggle_files):
    with pytest.raises(ValueError, match="unknown task ids: nope"):
        select_tasks(load_tasks(str(kaggle_files)).tasks, ["nope"])


def test_size_sort_is_deterministic_with_ties_broken_by_id():
    tasks = load_tasks("arc-agi-1/evaluation").tasks
    large = select_tasks(tasks, sort="large-first", limit=10)
    assert [t.num_cells for t in large] == sorted((t.num_cells for t in large), reverse=True)
    assert [t.id for t in large] == [t.id for t in select_tasks(list(reversed(tasks)), sort="large-first", limit=10)]
    small = select_tasks(tasks, sort="small-first", limit=5)
    assert small[0].num_cells == min(t.num_cells for t in tasks)


def test_load_dataset_applies_limit_after_sorting(kaggle_files):
    result = load_dataset(DataConfig(dataset=str(kaggle_files), sort="large-first", limit=1))
    assert [t.id for t in result.tasks] == ["aaaa0001"]  # 4+4+1+2+3 cells vs 6+1+1+2


def test_data_config_rejects_unknown_sort_naming_the_choices():
    with pytest.raises(ValueError, match="none, small-first, large-first"):
        DataConfig(sort="biggest")


def test_task_round_trips_through_json(kaggle_files):
    task = load_tasks(str(kaggle_files)).tasks[1]
    again = parse_task(task.id, task_to_json(task), "mem")
    assert task_to_json(again) == task_to_json(task)


def test_grid_problem_accepts_numpy_arrays_and_make_grid_rejects_bad_ones():
    assert grid_problem(np.zeros((3, 4), dtype=int)) is None
    with pytest.raises(ValueError, match="ragged"):
        make_grid([[1, 2], [3]])


def test_num_cells_counts_train_grids_and_test_inputs_only(kaggle_files):
    task = load_tasks(str(kaggle_files)).tasks[1]
    assert task.num_cells == 6 + 1 + 1 + 2
