"""Hindsight relabelling: every rule of the issue, and every RelabelConfig setting, changes the training set."""

import dataclasses

import numpy as np
import pytest

from arcsl.augment import Augmentation, augment, transform_grid
from arcsl.config import RelabelConfig
from arcsl.grids import Pair, Task, make_grid
from arcsl.prompting import barc_prompt
from arcsl.gridtext import grid_to_barc
from arcsl.relabel import relabelled_task, train_fingerprint, training_set
from arcsl.scoring import Attempt, score_attempt

# the rule "colour every cell of the first row 5"; three train pairs, two test inputs
INPUTS = [make_grid([[1, 0], [0, 2]]), make_grid([[0, 3, 0], [4, 0, 0]]), make_grid([[6], [0]])]
TASK = Task("relabel0", tuple(Pair(g, make_grid(np.vstack([np.full((1, g.shape[1]), 5), g[1:]]))) for g in INPUTS),
            (Pair(make_grid([[7, 7]]), make_grid([[5, 5]])), Pair(make_grid([[8]]), make_grid([[5]]))))
TEST_OUT = [make_grid([[5, 5]]), make_grid([[5]])]


def attempt(train_outputs, program: str = "p", round_: int = 0, aug: Augmentation | None = None,
            test_outputs=TEST_OUT, error: str | None = None) -> Attempt:
    scores = score_attempt(TASK, train_outputs, test_outputs)
    return Attempt(task_id=TASK.id, program=program, error=error, train_outputs=train_outputs,
                   test_outputs=test_outputs, scores=scores, round=round_, augmentation=aug)


def painted(value: int) -> list:
    """Outputs of a program that paints the first row of every train input `value`."""
    return [make_grid(np.vstack([np.full((1, g.shape[1]), value), g[1:]])) for g in INPUTS]


SOLVED = painted(5)                     # exact on every train pair
WRONG = painted(9)                      # wrong colour everywhere: no exact grid
NEAR = SOLVED[:2] + WRONG[2:]           # 2 of 3 grids exact
FAR = SOLVED[:1] + WRONG[1:]            # 1 of 3 grids exact
IDENTITY = list(INPUTS)                 # returns its input


def programs(chosen: list[Attempt]) -> list[str]:
    return [a.program for a in chosen]


def choose(attempts, round_=0, trained=frozenset(), seed=0, **cfg) -> list[Attempt]:
    return training_set(TASK, attempts, round_, set(trained), RelabelConfig(**cfg), np.random.default_rng(seed))


# --- relabelled tasks ---------------------------------------------------------------------------

def test_a_relabelled_task_is_the_view_with_the_programs_outputs_in_its_orientation_and_colours():
    aug = Augmentation(dihedral=3, colors=(0, 2, 3, 4, 5, 6, 7, 8, 9, 1), train_order=(2, 0, 1), test_index=1)
    relabelled = relabelled_task(TASK, attempt(WRONG, aug=aug))
    view = augment(TASK, aug)
    assert relabelled.augmentation == aug
    for pair, view_pair, original in zip(relabelled.train, view.train, aug.train_order):
        assert np.array_equal(pair.input, view_pair.input)
        assert np.array_equal(pair.output, transform_grid(WRONG[original], aug))
    assert all(p.output is None for p in relabelled.test)
    # the prompt shows the view's test input that the attempt's prompt showed, and the program's outputs
    text = barc_prompt(relabelled).messages[-1]["content"]
    assert grid_to_barc(view.test[1].input) in text.split("input grid for the test example")[1]
    assert grid_to_barc(transform_grid(WRONG[2], aug)) in text.split("Example 2")[0]


def test_only_attempts_with_valid_outputs_become_examples():
    partial = [*WRONG[:2], None]
    attempts = [attempt(None, "crashed", error="runtime_error"), attempt(partial, "one grid missing"),
                attempt(WRONG, "test grids missing", test_outputs=[None, None]), attempt(NEAR, "valid")]
    assert programs(choose(attempts)) == ["valid"]


def test_equal_outputs_give_one_example_the_shortest_program():
    attempts = [attempt(WRONG, "a longer program"), attempt(WRONG, "short"), attempt(WRONG, "not short")]
    assert programs(choose(attempts)) == ["short"]


# --- one test per setting -----------------------------------------------------------------------

def test_relabel_rounds_last_takes_the_round_just_searched_and_all_takes_every_round():
    attempts = [attempt(WRONG, round_=0), attempt(NEAR, round_=1)]
    assert [a.round for a in choose(attempts, round_=1, relabel_rounds="last")] == [1]
    assert sorted(a.round for a in choose(attempts, round_=1, relabel_rounds="all")) == [0, 1]


def test_skip_trained_leaves_out_outputs_trained_on_in_earlier_rounds():
    attempts = [attempt(WRONG, "trained"), attempt(NEAR, "new")]
    trained = {train_fingerprint(attempt(WRONG))}
    assert programs(choose(attempts, trained=trained, skip_trained=True)) == ["new"]
    assert len(choose(attempts, trained=trained, skip_trained=False)) == 2


def test_drop_identity_leaves_out_programs_that_return_their_input():
    attempts = [attempt(IDENTITY, "identity"), attempt(WRONG, "wrong")]
    assert programs(choose(attempts, drop_identity=True)) == ["wrong"]
    assert len(choose(attempts, drop_identity=False)) == 2


def test_max_examples_keeps_the_best_by_train_score():
    attempts = [attempt(WRONG, "wrong"), attempt(SOLVED, "solved"), attempt(FAR, "far"), attempt(NEAR, "near")]
    assert programs(choose(attempts, max_examples=2, example_order="best-first")) == ["solved", "near"]
    assert len(choose(attempts, max_examples=-1)) == 4


def test_example_order_sorts_by_train_score_or_shuffles():
    attempts = [attempt(FAR, "far"), attempt(SOLVED, "solved"), attempt(WRONG, "wrong"), attempt(NEAR, "near")]
    best_first = ["solved", "near", "far", "wrong"]
    assert programs(choose(attempts, example_order="best-first")) == best_first
    assert programs(choose(attempts, example_order="worst-first")) == best_first[::-1]
    shuffled = [programs(choose(attempts, example_order="random", seed=s)) for s in range(6)]
    assert all(sorted(s) == sorted(best_first) for s in shuffled)
    assert any(s not in (best_first, best_first[::-1]) for s in shuffled)


def test_prune_programs_hook_drops_toy_lines_that_change_no_output():
    from arcsl.prompting import BARC_FORMAT
    from arcsl.toy.prompt import TOY_FORMAT
    from arcsl.toy.tasks import FOOTER, HEADER

    prune = TOY_FORMAT.prune
    hidden_then_twice = HEADER + "    g = pixel(g, 0, 0, 7)\n" + "    g = pixel(g, 0, 0, 5)\n" * 2 + FOOTER
    assert prune(hidden_then_twice, TASK) == HEADER + "    g = pixel(g, 0, 0, 5)\n" + FOOTER
    assert prune("not a program", TASK) == "not a program"
    assert BARC_FORMAT.prune is None  # Python in general: trained on as written


def test_every_relabel_setting_has_a_test_here():
    names = {f.name for f in dataclasses.fields(RelabelConfig)}
    tested = {name for name in names if any(name in fn for fn in globals() if fn.startswith("test_"))}
    assert tested == names


@pytest.mark.parametrize("bad", [dict(relabel_rounds="first"), dict(example_order="shortest-first"),
                                 dict(max_examples=0), dict(max_examples=-2), dict(refine_examples=-2)])
def test_bad_relabel_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        RelabelConfig(**bad)


# --- refinement in hindsight ----------------------------------------------------------------------

def child_of(parent: Attempt, train_outputs, key: str, program: str = "c", round_: int = 1) -> Attempt:
    a = attempt(train_outputs, program=program, round_=round_, aug=parent.augmentation)
    return dataclasses.replace(a, key=key, parent=parent.key)


def refinements(attempts, round_=1, trained=frozenset(), **cfg) -> list[tuple[str, str]]:
    from arcsl.relabel import refinement_set
    chosen = refinement_set(TASK, attempts, round_, set(trained), RelabelConfig(**cfg), np.random.default_rng(0))
    return [(p.key, c.key) for p, c in chosen]


def test_a_refined_attempt_whose_outputs_differ_from_its_parents_is_a_refinement_example():
    parent = dataclasses.replace(attempt(WRONG, program="p"), key="0.0")
    same = child_of(parent, WRONG, "1.0")        # nothing refined: the parent's outputs
    better = child_of(parent, NEAR, "1.1")
    crashed = dataclasses.replace(child_of(parent, None, "1.2"), error="exception", test_outputs=None)
    fresh = dataclasses.replace(attempt(FAR, round_=1), key="1.3")  # no parent
    assert refinements([parent, same, better, crashed, fresh]) == [("0.0", "1.1")]


def test_refinement_examples_follow_the_round_and_trained_rules_and_refine_examples_caps_them():
    from arcsl.relabel import refinement_key
    parent = dataclasses.replace(attempt(WRONG, program="p"), key="0.0")
    old = child_of(parent, FAR, "1.0", round_=1)
    near, solved = child_of(parent, NEAR, "2.0", round_=2), child_of(parent, SOLVED, "2.1", round_=2)
    attempts = [parent, old, near, solved]
    assert refinements(attempts, round_=2) == [("0.0", "2.0"), ("0.0", "2.1")]  # worst first
    assert refinements(attempts, round_=2, relabel_rounds="all") == [("0.0", "1.0"), ("0.0", "2.0"), ("0.0", "2.1")]
    assert refinements(attempts, round_=2, refine_examples=1) == [("0.0", "2.1")]  # the best kept
    assert refinements(attempts, round_=2, refine_examples=0) == []
    assert refinements(attempts, round_=2, trained={refinement_key(parent, solved)}) == [("0.0", "2.0")]
    same_output = child_of(parent, NEAR, "2.2", program="a longer child")  # one example per distinct output
    assert refinements(attempts + [same_output], round_=2) == [("0.0", "2.0"), ("0.0", "2.1")]


def test_a_refinement_example_is_the_parents_refine_prompt_on_the_task_relabelled_to_the_child():
    from arcsl.prompting import BARC_FORMAT
    from arcsl.relabel import refinement_examples
    aug = Augmentation(dihedral=1, train_order=(1, 2, 0))
    parent = dataclasses.replace(attempt(IDENTITY, program="def transform(g):\n    return g\n", aug=aug), key="0.0")
    child = dataclasses.replace(child_of(parent, NEAR, "1.0"), response="the child's response")
    [(prompt, completion)] = refinement_examples(TASK, [(parent, child)], BARC_FORMAT, prune_programs=False)
    assert completion == "the child's response"
    relabelled = relabelled_task(TASK, child)
    text = prompt.messages[-1]["content"]
    # the expected outputs shown are the child's, in the view; the parent's (identity) outputs are its inputs
    assert text.startswith(barc_prompt(relabelled).messages[-1]["content"].split("Here is the input grid")[0])
    assert "return g\n```" in text
    first_shown = relabelled.train[0]
    assert f"On example 1 it produced:\n{grid_to_barc(first_shown.input)}" in text
