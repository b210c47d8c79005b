import numpy as np

from arcsl.grids import make_grid, parse_task
from arcsl.scoring import Attempt, AttemptScores, SplitScores
from arcsl.selection import prediction_grids, select_attempts

G = make_grid
TASK = parse_task("t1", {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[5, 5]]}]}, "test")
TASK_2TESTS = parse_task("t2", {"train": [{"input": [[1]], "output": [[2]]}],
                                "test": [{"input": [[5, 5]]}, {"input": [[6, 6]]}]}, "test")
X, Y, Z = G([[1]]), G([[2]]), G([[3]])


def attempt(*test_outputs, program="p", train=(False, 0.0, 0.0), task=TASK) -> Attempt:
    """An attempt with the given test grids (None = unusable) and train scores (is_correct, correct_grids, pixel)."""
    is_correct, correct_grids, pixel = train
    scores = AttemptScores(SplitScores(pixel, correct_grids, is_correct), None)
    return Attempt(task_id=task.id, program=program, error=None, train_outputs=None, test_outputs=list(test_outputs),
                   scores=scores)


def grids(task, attempts) -> list[list[np.ndarray]]:
    return prediction_grids(select_attempts(task, attempts))


def same(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


PERFECT = (True, 1.0, 1.0)


def test_an_answer_correct_on_train_beats_an_answer_with_more_votes():
    attempts = [attempt(X, program="a"), attempt(X, program="b"), attempt(Y, program="c", train=PERFECT)]
    first, second = grids(TASK, attempts)[0]
    assert same(first, Y) and same(second, X)


def test_more_correct_train_grids_beat_a_higher_train_pixel_score():
    attempts = [attempt(X, program="a", train=(False, 0.0, 0.9)), attempt(Y, program="b", train=(False, 0.5, 0.6))]
    assert same(grids(TASK, attempts)[0][0], Y)


def test_train_pixel_score_breaks_ties_of_correct_train_grids():
    attempts = [attempt(X, program="a", train=(False, 0.5, 0.6)), attempt(Y, program="b", train=(False, 0.5, 0.7))]
    assert same(grids(TASK, attempts)[0][0], Y)


def test_votes_break_ties_of_train_correctness():
    attempts = [attempt(X, program="a"), attempt(Y, program="b"), attempt(Y, program="c")]
    choice = select_attempts(TASK, attempts)[0][0]
    assert same(choice.grid, Y) and choice.votes == 2 and choice.attempt_indices == (1, 2)


def test_votes_count_distinct_programs_not_attempts():
    attempts = [attempt(X, program="same"), attempt(X, program="same\n"), attempt(Y, program="b"), attempt(Y, program="c")]
    first, second = select_attempts(TASK, attempts)[0]
    assert same(first.grid, Y) and first.votes == 2 and second.votes == 1


def test_shorter_code_breaks_ties_of_votes():
    attempts = [attempt(X, program="a much longer program"), attempt(Y, program="short")]
    assert same(grids(TASK, attempts)[0][0], Y)


def test_the_two_attempts_are_distinct_grids():
    attempts = [attempt(X, program="a"), attempt(X, program="b"), attempt(Y, program="c")]
    first, second = grids(TASK, attempts)[0]
    assert same(first, X) and same(second, Y)


def test_ties_prefer_the_answers_of_one_program_on_every_test_input():
    # Q comes first, but P's answer to test input 1 also wins R's vote; at test input 0, where P and Q
    # tie on every rule, P's answer must win so that both predictions come from the same program.
    a0, a1, b0, b1 = G([[1, 1]]), G([[2, 2]]), G([[3, 3]]), G([[4, 4]])
    q = attempt(b0, b1, program="Q", train=PERFECT, task=TASK_2TESTS)
    p = attempt(a0, a1, program="P", train=PERFECT, task=TASK_2TESTS)
    r = attempt(None, a1, program="R", task=TASK_2TESTS)
    first_at_0, first_at_1 = (per_test[0] for per_test in select_attempts(TASK_2TESTS, [q, p, r]))
    assert same(first_at_1.grid, a1) and same(first_at_0.grid, a0)


def test_a_task_without_candidates_gets_the_test_input_and_a_black_grid():
    first, second = select_attempts(TASK, [attempt(None)])[0]
    assert same(first.grid, G([[5, 5]])) and same(second.grid, G([[0]])) and first.is_fallback and second.is_fallback


def test_a_single_candidate_is_completed_by_the_fallback():
    first, second = select_attempts(TASK, [attempt(X)])[0]
    assert not first.is_fallback and same(second.grid, G([[5, 5]])) and second.votes == 0


def test_the_fallback_never_repeats_a_chosen_grid():
    task = parse_task("t3", {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[0]]}]}, "test")
    first, second = grids(task, [attempt(G([[0]]), task=task)])[0]
    assert same(first, G([[0]])) and same(second, G([[1]]))


def test_an_unusable_grid_for_one_test_input_leaves_the_other_input_a_candidate():
    chosen = select_attempts(TASK_2TESTS, [attempt(X, None, task=TASK_2TESTS)])
    assert same(chosen[0][0].grid, X) and chosen[1][0].is_fallback and same(chosen[1][0].grid, G([[6, 6]]))


def test_every_test_input_gets_exactly_two_predictions():
    chosen = select_attempts(TASK_2TESTS, [attempt(X, Y, program=str(i), task=TASK_2TESTS) for i in range(3)])
    assert [len(c) for c in chosen] == [2, 2]


def test_a_refinement_votes_with_its_parents_lineage_not_on_its_own():
    import dataclasses
    parent = dataclasses.replace(attempt(X, program="parent"), key="0.0")
    child = dataclasses.replace(attempt(X, program="child"), key="1.0", parent="0.0")
    grandchild = dataclasses.replace(attempt(X, program="grandchild"), key="2.0", parent="1.0")
    others = [dataclasses.replace(attempt(Y, program=p), key=k) for p, k in (("b", "0.1"), ("c", "0.2"))]
    first, second = select_attempts(TASK, [parent, child, grandchild, *others])[0]
    assert same(first.grid, Y) and first.votes == 2 and second.votes == 1  # three programs of X, one lineage
    alone = [dataclasses.replace(a, parent=None) for a in (parent, child, grandchild)]  # as fresh samples: 3 votes
    assert same(select_attempts(TASK, [*alone, *others])[0][0].grid, X)
