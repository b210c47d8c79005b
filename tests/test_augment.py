import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from arcsl.augment import (Augmentation, augment, dihedral, dihedral_inverse, inverse, random_augmentation,
                           restore_train_order, transform_grid)
from arcsl.grids import load_tasks

grids = st.integers(1, 30).flatmap(
    lambda h: st.integers(1, 30).flatmap(lambda w: arrays(np.uint8, (h, w), elements=st.integers(0, 9))))
permutations = st.permutations(list(range(10))).map(tuple)


@given(grids, st.integers(0, 7))
def test_dihedral_inverse_undoes_every_transform(grid, k):
    assert np.array_equal(dihedral_inverse(dihedral(grid, k), k), grid)


@given(grids, st.integers(0, 7), permutations)
def test_inverse_of_transform_is_the_original_grid(grid, k, colors):
    aug = Augmentation(dihedral=k, colors=colors)
    assert np.array_equal(inverse(transform_grid(grid, aug), aug), grid)


def test_the_eight_dihedral_transforms_are_distinct():
    grid = np.arange(6, dtype=np.uint8).reshape(2, 3)
    images = {dihedral(grid, k).tobytes() + bytes(dihedral(grid, k).shape) for k in range(8)}
    assert len(images) == 8


def test_transform_1_is_a_counter_clockwise_quarter_turn():
    assert dihedral(np.array([[1, 2], [3, 4]]), 1).tolist() == [[2, 4], [1, 3]]


def test_colour_permutation_maps_each_colour_as_specified():
    aug = Augmentation(colors=(0, 2, 1, 3, 4, 5, 6, 7, 8, 9))
    assert transform_grid(np.array([[0, 1, 2, 3]], dtype=np.uint8), aug).tolist() == [[0, 2, 1, 3]]


@given(st.integers(0, 2**32 - 1))
def test_augmentation_round_trips_through_json(seed):
    aug = random_augmentation(_TASK, np.random.default_rng(seed), colors="all")
    assert Augmentation.from_json(json.loads(json.dumps(aug.to_json()))) == aug


def test_augment_refuses_a_task_that_is_already_a_view():
    view = augment(_TASK, Augmentation(dihedral=1))
    with pytest.raises(ValueError, match="already a view"):
        augment(view, Augmentation(dihedral=1))


def test_view_records_its_augmentation_and_original_task_has_none():
    aug = random_augmentation(_TASK, np.random.default_rng(0))
    assert augment(_TASK, aug).augmentation == aug and _TASK.augmentation is None


def test_view_train_pairs_follow_train_order_and_map_back():
    aug = Augmentation(dihedral=5, colors=(0, 3, 4, 5, 6, 7, 8, 9, 1, 2), train_order=(2, 0, 1))
    view = augment(_TASK, aug)
    outputs = [p.output for p in view.train]  # a perfect program's outputs on the view
    restored = [inverse(g, aug) for g in restore_train_order(outputs, aug)]
    assert all(np.array_equal(r, p.output) for r, p in zip(restored, _TASK.train))
    assert np.array_equal(inverse(view.train[0].input, aug), _TASK.train[2].input)


def test_test_pairs_keep_their_order_and_test_index_is_recorded():
    task = next(t for t in load_tasks("arc-agi-1/evaluation").tasks if len(t.test) == 2)
    aug = Augmentation(dihedral=3, test_index=1)
    view = augment(task, aug)
    assert np.array_equal(inverse(view.test[1].input, aug), task.test[1].input)


def test_keep_background_never_moves_colour_zero():
    rng = np.random.default_rng(1)
    assert all(random_augmentation(_TASK, rng).colors[0] == 0 for _ in range(50))


def test_random_augmentation_is_reproducible_from_the_seed():
    a = [random_augmentation(_TASK, np.random.default_rng(7), colors="all") for _ in range(2)]
    assert a[0] == a[1]


def test_disabled_options_give_the_identity_view():
    aug = random_augmentation(_TASK, np.random.default_rng(3), use_dihedral=False, colors="none",
                              shuffle_train=False, random_test=False)
    assert aug.is_identity and aug.test_index == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"dihedral": 8}, "dihedral must be in 0..7"),
    ({"colors": (0,) * 10}, "permutation of 0..9"),
    ({"train_order": (0, 0)}, "permutation of 0..n-1"),
])
def test_invalid_augmentation_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augmentation(**kwargs)


def test_augmentation_that_does_not_fit_the_task_names_it():
    with pytest.raises(ValueError, match=f"task {_TASK.id}: test_index 5"):
        augment(_TASK, Augmentation(test_index=5))


def test_unknown_json_field_is_rejected():
    with pytest.raises(ValueError, match="unknown augmentation fields"):
        Augmentation.from_json({"dihedral": 1, "flip": True})


_TASK = next(t for t in load_tasks("arc-agi-1/training").tasks if len(t.train) == 3)
