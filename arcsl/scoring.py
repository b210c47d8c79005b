"""Scores of attempts and tasks: pixel score, exact grids, pass@k, solved@2 and the metrics table.

An `Attempt` is one sampled program with the grids it produced, already mapped back to the original
task's orientation, colours and train order. `score_attempt` compares those grids with the known
outputs; `score_task` summarises all attempts of a task in the columns the seed experiments report
(so runs stay comparable with them), plus two honest columns the seeds lacked:

- `oracle_pass_at_n` and the `pass_at_k` curve: one and the same program is exact on every train
  and every test grid. The seeds' `is_correct` (here `seeds_is_correct`) multiplies "some program
  solves train" by "some program solves test", which may be two different programs.
- `solved_at_2`: the Kaggle metric for the two predictions per test input actually selected.

With refinement, an attempt records its key within the task and its parent's, and `score_task` counts the
refined attempts, those better on train than their parent, and whether a refinement solved the task first.

Everything here is pure (values in, values out). What is not covered: choosing the two predictions
(`selection.py`), running programs (`sandbox.py`), recording attempts (`store.py`).
"""

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from arcsl.augment import Augmentation
from arcsl.grids import Grid, Task, make_grid

# Error classes meaning the response held no runnable program (the seeds' "valid code" column).
CODE_ERRORS = ("no_code", "syntax_error")


# --- grids --------------------------------------------------------------------------------------

def grids_equal(a: Grid | None, b: Grid | None) -> bool:
    """Same shape and same colours everywhere; a missing grid equals nothing."""
    return a is not None and b is not None and a.shape == b.shape and bool(np.array_equal(a, b))


def pixel_score(expected: Grid, predicted: Grid | None) -> float:
    """Similarity in [0, 1] of a predicted grid to the expected one.

    Same shape: the fraction of equal cells. Different shapes: the most equal cells over every
    placement of one grid over the other (overlapping by at least one cell), divided by
    max(height) x max(width), so a grid of the wrong shape never scores 1. A missing grid scores 0.
    """
    if predicted is None:
        return 0.0
    a, b = np.asarray(expected), np.asarray(predicted)
    if a.shape == b.shape:
        return float(np.mean(a == b))
    colours = np.intersect1d(a, b)
    if colours.size == 0:
        return 0.0
    # equal cells at every offset = sum over colours of the cross-correlation of the two colour masks,
    # computed with FFTs padded to the full size (no wrap-around): ~30x faster than direct for 30x30
    full = (a.shape[0] + b.shape[0] - 1, a.shape[1] + b.shape[1] - 1)
    masks_a = np.fft.rfft2(a[None] == colours[:, None, None], s=full)
    masks_b = np.fft.rfft2((b[None] == colours[:, None, None])[:, ::-1, ::-1], s=full)
    matches = np.fft.irfft2((masks_a * masks_b).sum(axis=0), s=full)
    return int(np.rint(matches.max())) / (max(a.shape[0], b.shape[0]) * max(a.shape[1], b.shape[1]))


def fingerprint(grids: Sequence[Grid | None]) -> str:
    """A short hash of a list of grids (shapes included, so 2x2 and 4x1 differ; None is a grid of its own)."""
    h = hashlib.sha256()
    for grid in grids:
        h.update(b"none;" if grid is None else f"{grid.shape};".encode() + np.ascontiguousarray(grid, np.uint8).tobytes())
    return h.hexdigest()[:16]


# --- attempts -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SplitScores:
    """How an attempt's grids for one split (train or test) compare with the known outputs."""
    pixel_score: float    # mean over the split's grids of `pixel_score`; a missing grid counts 0
    correct_grids: float  # fraction of the split's grids that are exactly right
    is_correct: bool      # every grid of the split is exactly right


@dataclass(frozen=True, slots=True)
class AttemptScores:
    train: SplitScores
    test: SplitScores | None  # None when the test outputs are unknown


def score_split(expected: Sequence[Grid], predicted: Sequence[Grid | None] | None) -> SplitScores:
    """Compare predicted grids with expected ones, pair by pair; `predicted` None = nothing produced."""
    predicted = [None] * len(expected) if predicted is None else list(predicted)
    assert len(predicted) == len(expected), f"expected {len(expected)} predicted grids, got {len(predicted)}"
    exact = [grids_equal(e, p) for e, p in zip(expected, predicted)]
    pixels = [1.0 if ok else pixel_score(e, p) for ok, e, p in zip(exact, expected, predicted)]
    return SplitScores(float(np.mean(pixels)), sum(exact) / len(exact), all(exact))


def score_attempt(task: Task, train_outputs: Sequence[Grid | None] | None,
                  test_outputs: Sequence[Grid | None] | None) -> AttemptScores:
    """Scores of a program's outputs on the original `task` (not a view): train always, test when known."""
    assert task.augmentation is None, f"task {task.id}: score against the original task, not a view ({task.augmentation})"
    assert test_outputs is None or len(test_outputs) == len(task.test), \
        f"task {task.id}: {len(test_outputs)} test outputs for {len(task.test)} test inputs"
    train = score_split([p.output for p in task.train], train_outputs)
    test = score_split([p.output for p in task.test], test_outputs) if task.has_test_outputs else None
    return AttemptScores(train, test)


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Attempt:
    """One sampled program and what it produced, in the original task's orientation, colours and train order.

    `train_outputs[i]` answers `task.train[i]` and `test_outputs[j]` answers `task.test[j]`. A whole list
    is None when the program produced nothing (see `error`); one entry is None when that grid is unusable.
    Selection treats every grid given as usable, so leave out the grids of a program you do not trust
    (e.g. a non-deterministic one).
    """
    task_id: str
    program: str | None                        # code extracted from the response; None = there was none
    error: str | None                          # sandbox error class ("no_code", "timeout", ...); None = ran cleanly
    train_outputs: list[Grid | None] | None
    test_outputs: list[Grid | None] | None
    scores: AttemptScores                      # from `score_attempt`
    round: int = 0                             # search-and-learn round that sampled it
    augmentation: Augmentation | None = None   # the view the prompt showed; None = the task as published
    prompt_hash: str = ""
    response: str = ""                         # the model's full completion text
    model_id: str = ""                         # the base model that sampled it (hub id or path), as --model gave it
    timings: dict[str, float] = field(default_factory=dict)  # seconds by phase, e.g. {"execution": 0.12}
    message: str = ""                          # the sandbox's error text ("ValueError: ..."); "" = ran cleanly
    key: str = ""                              # its id within the task ("round.index"), for lineage
    parent: str | None = None                  # the key of the attempt it refines; None = a fresh sample

    @property
    def is_valid_code(self) -> bool:
        return bool(self.program and self.program.strip()) and self.error not in CODE_ERRORS

    @property
    def has_valid_outputs(self) -> bool:
        grids = [*(self.train_outputs or [None]), *(self.test_outputs or [None])]
        return self.error is None and all(g is not None for g in grids)

    @property
    def code_length(self) -> int:
        return len(self.program or "")

    @property
    def output_fingerprint(self) -> str:
        """Fingerprint of every output grid, train then test: equal programs' behaviour hashes equal."""
        return fingerprint([*(self.train_outputs or [None]), *(self.test_outputs or [None])])

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (grids as nested lists), the inverse of `from_json`."""
        return _jsonable(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Attempt":
        def grids(value: list | None) -> list[Grid | None] | None:
            return None if value is None else [None if g is None else make_grid(g) for g in value]

        s = data["scores"]
        scores = AttemptScores(SplitScores(**s["train"]), None if s["test"] is None else SplitScores(**s["test"]))
        aug = data.get("augmentation")
        return cls(task_id=data["task_id"], program=data["program"], error=data["error"],
                   train_outputs=grids(data["train_outputs"]), test_outputs=grids(data["test_outputs"]),
                   scores=scores, round=data.get("round", 0),
                   augmentation=None if aug is None else Augmentation.from_json(aug),
                   prompt_hash=data.get("prompt_hash", ""), response=data.get("response", ""),
                   model_id=data.get("model_id", ""), timings=dict(data.get("timings", {})),
                   message=data.get("message", ""), key=data.get("key", ""), parent=data.get("parent"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --- tasks --------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of the chance that k of n attempts (c of them correct) hold a correct one.

    pass@k = 1 - C(n-c, k) / C(n, k): the probability that k attempts drawn without replacement
    from the n include a correct one (Chen et al. 2021). Exact: Python integers.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def curve_ks(n: int) -> list[int]:
    """The k of a pass@k curve over n attempts: powers of two below n, and n itself."""
    return sorted({2 ** i for i in range(max(n, 1).bit_length()) if 2 ** i <= n} | ({n} if n else set()))


def solved_at_2(task: Task, predictions: Sequence[Sequence[Grid]]) -> float:
    """Kaggle score of one task: the fraction of test inputs where one of the first two predictions is exact.

    Args:
        predictions: per test input, the predicted grids (attempt_1, attempt_2); missing entries count as wrong.
    """
    assert task.has_test_outputs, f"task {task.id}: solved@2 needs the test outputs"
    hits = [i < len(predictions) and any(grids_equal(p.output, g) for g in list(predictions[i])[:2])
            for i, p in enumerate(task.test)]
    return sum(hits) / len(hits)


@dataclass(frozen=True, slots=True)
class TaskScores:
    """All attempts of one task, summarised. Fractions are over all attempts; a failed attempt scores 0.

    test_* columns, `seeds_is_correct`, `oracle_pass_at_n`, `solved_at_2` and `pass_at_k` are None
    (empty) when the test outputs are unknown.
    """
    task_id: str
    n_preds: int                      # attempts
    valid_code: float                 # fraction with a program that parses
    valid_outputs: float              # fraction that ran cleanly and produced every grid
    unique_outputs: float             # distinct output fingerprints among valid attempts / n_preds
    train_pixel_score: float          # mean over attempts of the train pixel score
    train_correct_grids: float        # mean over attempts of the fraction of exact train grids
    train_pass_rate: float            # fraction of attempts exact on every train grid
    train_is_correct: bool            # some attempt is exact on every train grid
    test_pixel_score: float | None
    test_correct_grids: float | None
    test_pass_rate: float | None
    test_is_correct: bool | None      # some attempt is exact on every test grid
    seeds_is_correct: bool | None     # the seeds' is_correct: train_is_correct and test_is_correct, maybe 2 programs
    oracle_pass_at_n: bool | None     # one attempt is exact on every train and test grid
    solved_at_2: float | None         # Kaggle score of the selected predictions
    pass_at_k: dict[int, float] = field(default_factory=dict)  # k -> pass@k of the oracle criterion, k in curve_ks(n)
    num_refined: int = 0              # attempts that refine another one (a parent) rather than start afresh
    refined_improved: int = 0         # of those, the ones with a better train score than their parent
    solved_by_refinement: bool | None = None  # the task's first solving attempt (exact on train and test; on
    # train alone when the test outputs are unknown) was a refinement; None: never solved

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TaskScores":
        """Inverse of `asdict` through JSON (which turns the pass@k keys into strings)."""
        return cls(**{**data, "pass_at_k": {int(k): v for k, v in data.get("pass_at_k", {}).items()}})


def score_task(task: Task, attempts: Sequence[Attempt], predictions: Sequence[Sequence[Grid]] | None) -> TaskScores:
    """Summarise a task's attempts (see `TaskScores`); `predictions` are the two selected grids per test input."""
    wrong = [a.task_id for a in attempts if a.task_id != task.id]
    assert not wrong, f"task {task.id}: got attempts of other tasks: {sorted(set(wrong))}"
    n = len(attempts)

    def mean(values: list) -> float:
        return float(np.mean(values)) if values else 0.0

    unscored = [i for i, a in enumerate(attempts) if task.has_test_outputs and a.scores.test is None]
    assert not unscored, f"task {task.id}: attempts {unscored} were scored without the test outputs the task has"
    train = [a.scores.train for a in attempts]
    valid = [a for a in attempts if a.has_valid_outputs]
    known = task.has_test_outputs
    test = [a.scores.test for a in attempts] if known else []
    oracle = [a.scores.train.is_correct and a.scores.test.is_correct for a in attempts] if known else []
    return TaskScores(
        task_id=task.id, n_preds=n,
        valid_code=mean([a.is_valid_code for a in attempts]),
        valid_outputs=len(valid) / n if n else 0.0,
        unique_outputs=len({a.output_fingerprint for a in valid}) / n if n else 0.0,
        train_pixel_score=mean([s.pixel_score for s in train]),
        train_correct_grids=mean([s.correct_grids for s in train]),
        train_pass_rate=mean([s.is_correct for s in train]),
        train_is_correct=any(s.is_correct for s in train),
        test_pixel_score=mean([s.pixel_score for s in test]) if known else None,
        test_correct_grids=mean([s.correct_grids for s in test]) if known else None,
        test_pass_rate=mean([s.is_correct for s in test]) if known else None,
        test_is_correct=any(s.is_correct for s in test) if known else None,
        seeds_is_correct=(any(s.is_correct for s in train) and any(s.is_correct for s in test)) if known else None,
        oracle_pass_at_n=any(oracle) if known else None,
        solved_at_2=solved_at_2(task, predictions) if known and predictions is not None else None,
        pass_at_k={k: pass_at_k(n, sum(oracle), k) for k in curve_ks(n)} if known else {},
        **refinement_counts(attempts, oracle if known else [s.is_correct for s in train]),
    )


def train_quality(attempt: Attempt) -> tuple[float, float]:
    """How close an attempt is on the train pairs: its fraction of exact grids, then its pixel score."""
    return attempt.scores.train.correct_grids, attempt.scores.train.pixel_score


def refinement_counts(attempts: Sequence[Attempt], solved: Sequence[bool]) -> dict[str, Any]:
    """`TaskScores`' refinement fields: attempts with a parent, those better on train than it, and whether the
    first attempt with `solved` true was one."""
    by_key = {a.key: a for a in attempts if a.key}
    refined = [a for a in attempts if a.parent is not None]
    improved = [a for a in refined if a.parent in by_key and train_quality(a) > train_quality(by_key[a.parent])]
    first = next((a for a, ok in zip(attempts, solved) if ok), None)
    return {"num_refined": len(refined), "refined_improved": len(improved),
            "solved_by_refinement": None if first is None else first.parent is not None}


# --- the metrics table --------------------------------------------------------------------------

METRIC_COLUMNS = ("n_preds", "valid_code", "valid_outputs", "unique_outputs",
                  "train_pixel_score", "train_correct_grids", "train_pass_rate", "train_is_correct",
                  "test_pixel_score", "test_correct_grids", "test_pass_rate", "test_is_correct",
                  "seeds_is_correct", "oracle_pass_at_n", "solved_at_2",
                  "num_refined", "refined_improved", "solved_by_refinement")


def metrics_rows(scores: Sequence[TaskScores]) -> list[dict[str, Any]]:
    """One row per task (`task_id`, METRIC_COLUMNS, then `pass@k` columns) and a last MEAN row.

    Booleans become 0/1, unknown values None. The MEAN row averages each column over the tasks that
    have a value in it (a pass@k column only over tasks with at least k attempts).
    """
    ks = sorted({k for s in scores for k in s.pass_at_k})
    rows = []
    for s in scores:
        row: dict[str, Any] = {"task_id": s.task_id}
        for col in METRIC_COLUMNS:
            value = getattr(s, col)
            row[col] = int(value) if isinstance(value, bool) else value
        row |= {f"pass@{k}": s.pass_at_k.get(k) for k in ks}
        rows.append(row)
    mean_row: dict[str, Any] = {"task_id": "MEAN"}
    for col in [c for c in (rows[0] if rows else {"task_id": None}) if c != "task_id"]:
        values = [r[col] for r in rows if r[col] is not None]
        mean_row[col] = float(np.mean(values)) if values else None
    return rows + [mean_row]
