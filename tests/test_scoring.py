import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcsl.augment import Augmentation, augment
from arcsl.grids import make_grid, parse_task
from arcsl.scoring import (Attempt, SplitScores, curve_ks, fingerprint, metrics_rows, pass_at_k, pixel_score,
                           score_attempt, score_split, score_task, solved_at_2)

G = make_grid

# train: fill the row with its first colour; two train pairs, two test inputs
TASK = parse_task("t1", {
    "train": [{"input": [[1, 0]], "output": [[1, 1]]}, {"input": [[2, 0]], "output": [[2, 2]]}],
    "test": [{"input": [[3, 0]], "output": [[3, 3]]}, {"input": [[4, 0]], "output": [[4, 4]]}],
}, "test")
TASK_NO_SOLUTIONS = parse_task("t1", {
    "train": [{"input": [[1, 0]], "output": [[1, 1]]}, {"input": [[2, 0]], "output": [[2, 2]]}],
    "test": [{"input": [[3, 0]]}, {"input": [[4, 0]]}],
}, "test")


def attempt(train, test, program="x = 1", error=None, task=TASK) -> Attempt:
    train = None if train is None else [None if g is None else G(g) for g in train]
    test = None if test is None else [None if g is None else G(g) for g in test]
    return Attempt(task_id=task.id, program=program, error=error, train_outputs=train, test_outputs=test,
                   scores=score_attempt(task, train, test))


PERFECT = attempt([[[1, 1]], [[2, 2]]], [[[3, 3]], [[4, 4]]], program="a")
TRAIN_ONLY = attempt([[[1, 1]], [[2, 2]]], [[[3, 0]], [[0, 0]]], program="bb")
TEST_ONLY = attempt([[[1, 0]], [[2, 2]]], [[[3, 3]], [[4, 4]]], program="ccc")
CRASHED = attempt(None, None, program="d", error="exception")
NO_CODE = attempt(None, None, program=None, error="no_code")


def brute_force_overlap(a: np.ndarray, b: np.ndarray) -> int:
    best = 0
    for dy in range(-b.shape[0] + 1, a.shape[0]):
        for dx in range(-b.shape[1] + 1, a.shape[1]):
            matches = sum(int(a[y, x] == b[y - dy, x - dx])
                          for y in range(max(0, dy), min(a.shape[0], b.shape[0] + dy))
                          for x in range(max(0, dx), min(a.shape[1], b.shape[1] + dx)))
            best = max(best, matches)
    return best


small_grids = st.integers(1, 5).flatmap(lambda h: st.integers(1, 5).flatmap(
    lambda w: st.lists(st.lists(st.integers(0, 3), min_size=w, max_size=w), min_size=h, max_size=h))).map(G)


# --- pixel score --------------------------------------------------------------------------------

def test_pixel_score_of_same_shape_is_the_fraction_of_equal_cells():
    assert pixel_score(G([[1, 2], [3, 4]]), G([[1, 2], [3, 0]])) == 0.75


def test_pixel_score_of_a_row_slid_over_a_square_divides_best_overlap_by_the_bounding_box():
    square = G([[1, 2], [3, 4]])
    assert pixel_score(square, G([[3, 4]])) == 2 / 4  # bottom row matches
    assert pixel_score(square, G([[2, 9]])) == 1 / 4  # the 2 matches only with the row shifted left by one


def test_pixel_score_of_a_wrong_shape_is_below_one_even_when_it_fits_inside():
    assert pixel_score(G([[1, 1], [1, 1]]), G([[1]])) == 1 / 4


def test_pixel_score_without_common_colours_is_zero():
    assert pixel_score(G([[1, 1, 1]]), G([[2], [2]])) == 0.0


def test_pixel_score_of_a_missing_grid_is_zero():
    assert pixel_score(G([[1]]), None) == 0.0


@settings(max_examples=60, deadline=None)
@given(small_grids, small_grids)
def test_pixel_score_of_different_shapes_equals_brute_force_sliding(a, b):
    if a.shape != b.shape:
        expected = brute_force_overlap(a, b) / (max(a.shape[0], b.shape[0]) * max(a.shape[1], b.shape[1]))
        assert pixel_score(a, b) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(small_grids, small_grids)
def test_pixel_score_is_symmetric(a, b):
    assert pixel_score(a, b) == pixel_score(b, a)


def test_fingerprint_tells_apart_grids_with_the_same_cells_in_another_shape():
    assert fingerprint([G([[1, 2], [3, 4]])]) != fingerprint([G([[1, 2, 3, 4]])])


# --- attempt scores -----------------------------------------------------------------------------

def test_split_scores_count_exact_grids_and_average_pixel_scores():
    s = score_split([G([[1, 1]]), G([[2, 2]])], [G([[1, 1]]), G([[2]])])
    assert s == SplitScores(pixel_score=(1 + 1 / 2) / 2, correct_grids=0.5, is_correct=False)


def test_an_attempt_that_produced_nothing_scores_zero():
    assert CRASHED.scores.train == SplitScores(0.0, 0.0, False)
    assert CRASHED.scores.test == SplitScores(0.0, 0.0, False)


def test_an_attempt_with_one_unusable_grid_loses_only_that_grid():
    a = attempt([[[1, 1]], None], None)
    assert a.scores.train == SplitScores(0.5, 0.5, False)


def test_test_scores_are_none_when_the_solutions_are_unknown():
    a = attempt([[[1, 1]], [[2, 2]]], [[[3, 3]], [[4, 4]]], task=TASK_NO_SOLUTIONS)
    assert a.scores.train.is_correct and a.scores.test is None


def test_scoring_against_a_view_is_refused():
    view = augment(TASK, Augmentation(dihedral=1))
    with pytest.raises(AssertionError, match="not a view"):
        score_attempt(view, None, None)


def test_attempt_survives_a_json_round_trip():
    a = Attempt(task_id="t1", program="p", error=None, train_outputs=[G([[1, 1]]), None],
                test_outputs=[G([[3, 3]]), G([[4]])], scores=PERFECT.scores, round=2,
                augmentation=Augmentation(dihedral=3, train_order=(1, 0)), prompt_hash="h", response="r",
                model_id="m+lora1", timings={"execute": 0.5})
    b = Attempt.from_json(json.loads(json.dumps(a.to_json())))
    assert b.to_json() == a.to_json() and b.augmentation == a.augmentation and b.scores == a.scores


# --- pass@k and solved@2 ------------------------------------------------------------------------

@pytest.mark.parametrize("n, c, k, expected", [(4, 1, 2, 0.5), (5, 0, 3, 0.0), (5, 5, 1, 1.0), (10, 3, 1, 0.3),
                                               (4, 2, 3, 1.0), (5, 1, 4, 0.8)])
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_equals_the_fraction_of_k_subsets_holding_a_correct_attempt():
    correct = [True, False, False, True, False, False]
    for k in range(1, len(correct) + 1):
        subsets = list(itertools.combinations(correct, k))
        assert pass_at_k(len(correct), sum(correct), k) == pytest.approx(sum(map(any, subsets)) / len(subsets))


def test_pass_at_k_stays_exact_for_thousands_of_attempts():
    assert pass_at_k(4096, 1, 2048) == pytest.approx(0.5)
    assert 0 < pass_at_k(4096, 1, 1) < 1 and not math.isnan(pass_at_k(4096, 4000, 7))


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError, match="n=3 c=1 k=4"):
        pass_at_k(3, 1, 4)


def test_pass_at_k_curve_uses_powers_of_two_and_n():
    assert (curve_ks(8), curve_ks(6), curve_ks(1), curve_ks(0)) == ([1, 2, 4, 8], [1, 2, 4, 6], [1], [])


def test_solved_at_2_is_the_fraction_of_test_inputs_with_an_exact_attempt():
    assert solved_at_2(TASK, [[G([[3, 3]]), G([[0]])], [G([[0]]), G([[1]])]]) == 0.5


def test_solved_at_2_counts_an_exact_second_attempt():
    assert solved_at_2(TASK, [[G([[0]]), G([[3, 3]])], [G([[0]]), G([[4, 4]])]]) == 1.0


def test_solved_at_2_ignores_a_third_prediction():
    assert solved_at_2(TASK, [[G([[0]]), G([[1]]), G([[3, 3]])], [G([[4, 4]])]]) == 0.5


# --- task scores --------------------------------------------------------------------------------

def test_task_scores_of_a_hand_made_mix_of_attempts():
    attempts = [PERFECT, TRAIN_ONLY, TEST_ONLY, CRASHED, NO_CODE]
    s = score_task(TASK, attempts, [[G([[3, 3]]), G([[3, 0]])], [G([[0, 0]]), G([[1]])]])
    assert (s.n_preds, s.valid_code, s.valid_outputs, s.unique_outputs) == (5, 0.8, 0.6, 0.6)
    assert s.train_pixel_score == pytest.approx((1 + 1 + 0.75) / 5)
    assert (s.train_correct_grids, s.train_pass_rate, s.train_is_correct) == (pytest.approx(2.5 / 5), 0.4, True)
    assert s.test_pixel_score == pytest.approx((1 + 0.25 + 1) / 5)
    assert (s.test_correct_grids, s.test_pass_rate, s.test_is_correct) == (pytest.approx(0.4), 0.4, True)
    assert (s.seeds_is_correct, s.oracle_pass_at_n, s.solved_at_2) == (True, True, 0.5)
    assert s.pass_at_k == pytest.approx({1: 0.2, 2: 0.4, 4: 0.8, 5: 1.0})


def test_seeds_is_correct_may_combine_two_programs_while_the_oracle_needs_one():
    s = score_task(TASK, [TRAIN_ONLY, TEST_ONLY], None)
    assert s.seeds_is_correct is True and s.oracle_pass_at_n is False and s.pass_at_k == {1: 0.0, 2: 0.0}


def test_unique_outputs_counts_distinct_fingerprints_of_valid_attempts_over_all_attempts():
    twin = attempt([[[1, 1]], [[2, 2]]], [[[3, 3]], [[4, 4]]], program="another program")
    assert score_task(TASK, [PERFECT, twin, TEST_ONLY, CRASHED], None).unique_outputs == 2 / 4


def test_valid_code_excludes_missing_code_and_syntax_errors_only():
    broken = attempt(None, None, program="def (", error="syntax_error")
    timeout = attempt(None, None, program="while True: pass", error="timeout")
    assert score_task(TASK, [broken, timeout, NO_CODE], None).valid_code == pytest.approx(1 / 3)


def test_task_without_solutions_leaves_test_columns_empty():
    s = score_task(TASK_NO_SOLUTIONS, [attempt([[[1, 1]], [[2, 2]]], None, task=TASK_NO_SOLUTIONS)], None)
    assert s.train_pass_rate == 1.0
    assert (s.test_pixel_score, s.test_is_correct, s.seeds_is_correct, s.oracle_pass_at_n, s.solved_at_2,
            s.pass_at_k) == (None, None, None, None, None, {})


def test_task_with_no_attempts_scores_zero_without_dividing_by_zero():
    s = score_task(TASK, [], None)
    assert (s.n_preds, s.valid_outputs, s.train_pixel_score, s.test_is_correct, s.pass_at_k) == (0, 0.0, 0.0, False, {})


def test_metrics_rows_end_with_a_mean_row_over_tasks_that_have_each_value():
    with_solutions = score_task(TASK, [PERFECT, CRASHED], None)
    without = score_task(TASK_NO_SOLUTIONS, [attempt([[[1, 1]], [[0]]], None, task=TASK_NO_SOLUTIONS)], None)
    rows = metrics_rows([with_solutions, without])
    assert [r["task_id"] for r in rows] == ["t1", "t1", "MEAN"]
    assert rows[0]["train_is_correct"] == 1 and rows[1]["test_pass_rate"] is None
    assert rows[2]["train_pass_rate"] == pytest.approx((0.5 + 0.0) / 2)
    assert rows[2]["test_pass_rate"] == 0.5 and rows[2]["pass@2"] == 1.0
