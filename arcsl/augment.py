"""Augmented views of a task, each with the exact inverse that maps predictions back.

An `Augmentation` is one point of: 8 dihedral transforms x a colour permutation x an order of the
train pairs x the test input shown in the prompt. It serialises to JSON and back, and `augment`
stamps it onto the view it produces (`Task.augmentation`). `augment` refuses a task that is already
a view, so an augmentation can never be applied twice untraced: every grid a program produces on
a view is mapped back with `inverse(grid, view.augmentation)`.

What is not covered: choosing how many views a search uses (the loop), prompting (`prompting.py`).
"""

from dataclasses import asdict, dataclass

import numpy as np

from arcsl.grids import Grid, Pair, Task

NUM_DIHEDRAL = 8
COLOR_MODES = ("none", "keep-background", "all")
IDENTITY_COLORS = tuple(range(10))


@dataclass(frozen=True, slots=True)
class Augmentation:
    """One view of a task. `colors[c]` is the colour that c becomes; `train_order[i]` is the original
    index of the view's i-th train pair; `test_index` is the test input that the prompt shows."""
    dihedral: int = 0
    colors: tuple[int, ...] = IDENTITY_COLORS
    train_order: tuple[int, ...] | None = None  # None = original order (any number of pairs)
    test_index: int = 0

    def __post_init__(self):
        if not 0 <= self.dihedral < NUM_DIHEDRAL:
            raise ValueError(f"dihedral must be in 0..7, got {self.dihedral}")
        if sorted(self.colors) != list(range(10)):
            raise ValueError(f"colors must be a permutation of 0..9, got {self.colors}")
        if self.train_order is not None and sorted(self.train_order) != list(range(len(self.train_order))):
            raise ValueError(f"train_order must be a permutation of 0..n-1, got {self.train_order}")
        if self.test_index < 0:
            raise ValueError(f"test_index must be >= 0, got {self.test_index}")

    @property
    def is_identity(self) -> bool:
        return self == Augmentation(test_index=self.test_index)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Augmentation":
        unknown = set(data) - {"dihedral", "colors", "train_order", "test_index"}
        if unknown:
            raise ValueError(f"unknown augmentation fields: {sorted(unknown)}")
        order = data.get("train_order")
        return cls(dihedral=int(data.get("dihedral", 0)), colors=tuple(data.get("colors", IDENTITY_COLORS)),
                   train_order=None if order is None else tuple(order), test_index=int(data.get("test_index", 0)))


# --- grid transforms ----------------------------------------------------------------------------

def dihedral(grid: Grid, k: int) -> Grid:
    """Transform k of the dihedral group: k % 4 quarter turns counter-clockwise, transposed first if k >= 4."""
    return np.rot90(grid.T if k >= 4 else grid, k % 4)


def dihedral_inverse(grid: Grid, k: int) -> Grid:
    """Undo `dihedral(., k)`."""
    g = np.rot90(grid, -(k % 4))
    return g.T if k >= 4 else g


def _readonly(grid: np.ndarray) -> Grid:
    out = np.ascontiguousarray(grid, dtype=np.uint8)
    out.setflags(write=False)
    return out


def transform_grid(grid: Grid, aug: Augmentation) -> Grid:
    """The grid as the view shows it: dihedral transform, then colour permutation."""
    return _readonly(np.asarray(aug.colors, dtype=np.uint8)[dihedral(grid, aug.dihedral)])


def inverse(grid: Grid, aug: Augmentation) -> Grid:
    """Map a grid from the view back to the original task's orientation and colours."""
    back = np.argsort(np.asarray(aug.colors)).astype(np.uint8)  # inverse permutation
    return _readonly(dihedral_inverse(back[np.asarray(grid)], aug.dihedral))


# --- views of tasks -----------------------------------------------------------------------------

def _check_fits(task: Task, aug: Augmentation) -> None:
    if aug.train_order is not None and len(aug.train_order) != len(task.train):
        raise ValueError(f"task {task.id}: train_order has {len(aug.train_order)} entries "
                         f"but the task has {len(task.train)} train pairs")
    if aug.test_index >= len(task.test):
        raise ValueError(f"task {task.id}: test_index {aug.test_index} but the task has {len(task.test)} test inputs")


def augment(task: Task, aug: Augmentation) -> Task:
    """The view of an original task under `aug`; test pairs keep their order (`aug.test_index` picks the shown one)."""
    if task.augmentation is not None:
        raise ValueError(f"task {task.id} is already a view ({task.augmentation}); augment the original task")
    _check_fits(task, aug)

    def view(p: Pair) -> Pair:
        return Pair(transform_grid(p.input, aug), None if p.output is None else transform_grid(p.output, aug))

    order = aug.train_order or range(len(task.train))
    return Task(task.id, tuple(view(task.train[i]) for i in order), tuple(view(p) for p in task.test), aug)


def restore_train_order(items: list, aug: Augmentation) -> list:
    """Reorder per-train-pair items of a view (e.g. a program's outputs) into the original pair order."""
    if aug.train_order is None:
        return list(items)
    out = [None] * len(items)
    for view_index, original_index in enumerate(aug.train_order):
        out[original_index] = items[view_index]
    return out


def random_augmentation(task: Task, rng: np.random.Generator, use_dihedral: bool = True,
                        colors: str = "keep-background", shuffle_train: bool = True,
                        random_test: bool = True) -> Augmentation:
    """Draw one augmentation for `task`.

    Args:
        colors: "none", "keep-background" (permute 1..9, keep 0 black) or "all" (permute all 10).
        random_test: pick the shown test input at random (else the first).
    """
    if colors not in COLOR_MODES:
        raise ValueError(f"colors must be one of {', '.join(COLOR_MODES)}; got {colors!r}")
    k = int(rng.integers(NUM_DIHEDRAL)) if use_dihedral else 0
    if colors == "all":
        perm = tuple(int(c) for c in rng.permutation(10))
    elif colors == "keep-background":
        perm = (0, *(int(c) for c in rng.permutation(np.arange(1, 10))))
    else:
        perm = IDENTITY_COLORS
    order = tuple(int(i) for i in rng.permutation(len(task.train))) if shuffle_train else None
    test_index = int(rng.integers(len(task.test))) if random_test else 0
    return Augmentation(k, perm, order, test_index)
