"""Refinement's pure parts: which attempts become parents, and the view and feedback a parent is shown with."""

import numpy as np

from arcsl.augment import Augmentation, augment, transform_grid
from arcsl.grids import Pair, Task, make_grid
from arcsl.prompting import MAX_ERROR_CHARS
from arcsl.refine import behaviour, choose_parents, parent_view
from arcsl.scoring import Attempt, score_attempt

TASK = Task("refine0", (Pair(make_grid([[1, 0], [0, 0]]), make_grid([[1, 1], [0, 0]])),
                        Pair(make_grid([[0, 2, 0]]), make_grid([[2, 2, 2]]))), (Pair(make_grid([[3, 0]])),))
RIGHT = [make_grid([[1, 1], [0, 0]]), make_grid([[2, 2, 2]])]
HALF = [make_grid([[1, 1], [0, 0]]), make_grid([[0, 2, 0]])]   # one of two exact
NONE = [make_grid([[1, 0], [0, 0]]), make_grid([[0, 2, 0]])]   # the identity


def attempt(outputs, program="p", key="0.0", error=None, message="", aug=None) -> Attempt:
    return Attempt(task_id=TASK.id, program=program, error=error, message=message, train_outputs=outputs,
                   test_outputs=None, scores=score_attempt(TASK, outputs, None), key=key, augmentation=aug)


def keys(parents) -> list[str]:
    return [a.key for a in parents]


def test_parents_are_the_best_wrong_attempts_one_per_behaviour_the_shortest_program():
    attempts = [attempt(NONE, "identity", "0.0"), attempt(HALF, "a long half program", "0.1"),
                attempt(HALF, "half", "0.2"), attempt(RIGHT, "right", "0.3"),
                attempt(None, "crash", "0.4", error="exception"), attempt(None, None, "0.5", error="no_code")]
    assert keys(choose_parents(attempts, 5, 1, {})) == ["0.2", "0.0", "0.4"]  # no exact one, no program-less one
    assert keys(choose_parents(attempts, 1, 1, {})) == ["0.2"]


def test_a_behaviour_refined_as_often_as_allowed_is_passed_over():
    attempts = [attempt(NONE, "identity", "0.0"), attempt(HALF, "half", "0.1")]
    assert keys(choose_parents(attempts, 2, 2, {behaviour(attempts[1]): 2})) == ["0.0"]
    assert keys(choose_parents(attempts, 2, 2, {behaviour(attempts[1]): 1})) == ["0.1", "0.0"]


def test_a_parent_is_shown_in_its_own_view_with_its_outputs_in_that_frame():
    aug = Augmentation(dihedral=1, colors=(0, 2, 1, 3, 4, 5, 6, 7, 8, 9), train_order=(1, 0))
    view, feedback = parent_view(TASK, attempt(HALF, aug=aug))
    assert all(np.array_equal(a.input, b.input) for a, b in zip(view.train, augment(TASK, aug).train))
    assert feedback.error == "" and len(feedback.outputs) == 2
    for shown, original in zip(feedback.outputs, aug.train_order):
        assert np.array_equal(shown, transform_grid(HALF[original], aug))
    # the exact grid stays exact in the view: the feedback compares like with like
    exact = [i for i, o in enumerate(aug.train_order) if o == 0][0]
    assert np.array_equal(feedback.outputs[exact], view.train[exact].output)


def test_a_failed_parent_is_shown_with_its_error_text_cut_short():
    _, feedback = parent_view(TASK, attempt(None, error="exception", message="ValueError: " + "x" * 1000))
    assert feedback.outputs is None and feedback.error.startswith("ValueError: x")
    assert len(feedback.error) == MAX_ERROR_CHARS and feedback.error.endswith("...")
    _, timeout = parent_view(TASK, attempt(None, error="timeout"))
    assert timeout.error == "timeout"


def test_behaviour_tells_outputs_and_error_classes_apart():
    assert behaviour(attempt(HALF)) == behaviour(attempt(HALF, "other program"))
    assert behaviour(attempt(HALF)) != behaviour(attempt(NONE))
    assert behaviour(attempt(None, error="timeout")) != behaviour(attempt(None, error="exception"))
    # a crash at another place is another behaviour: each may be refined
    assert behaviour(attempt(None, error="exception", message="ValueError: a")) != \
        behaviour(attempt(None, error="exception", message="ValueError: b"))
