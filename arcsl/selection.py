"""Choosing the two predictions per test input that go into the submission (Kaggle scores pass@2).

For each test input, the candidates are the attempts that produced a grid for it (an entry that is
not None in `Attempt.test_outputs`); equal grids are one answer. Answers are ranked by, in order:

1. train correctness of the answer's best producer: exact on every train pair, then the fraction
   of exact train grids, then the train pixel score (higher first);
2. votes: how many distinct lineages produce that grid (more first). A fresh sample's lineage is its program
   text, so distinct programs vote once each; a refinement belongs to its parent's lineage (followed up to the
   fresh sample it started from), so a parent and the near-copies refined from it vote once, not once each;
3. the code length of the best producer (shorter first);
4. the best producer's place in one order of all attempts of the task (the keys above, with an
   attempt's votes summed over the test inputs, then the attempt's index). The order is the same
   for every test input, so where 1-3 tie, the answers of one program win on every test input.

attempt_1 and attempt_2 are the two best answers, which are distinct grids by construction.

Fallback: a test input with fewer than two answers (no attempt produced a grid, or only one grid)
is filled with the test input itself, then a 1x1 black grid, then a 1x1 blue grid, skipping any
grid already chosen. These guesses rarely score, but Kaggle needs two grids for every test input.

What is not covered: scoring (`scoring.py`), writing the submission (`submission.py`). Pure functions.
"""

from dataclasses import dataclass
from typing import Sequence

from arcsl.grids import Grid, Task, make_grid
from arcsl.scoring import Attempt, grids_equal

NUM_ATTEMPTS = 2  # predictions per test input that Kaggle scores
FALLBACK_GRIDS = ([[0]], [[1]])


@dataclass(frozen=True, slots=True, eq=False)
class Choice:
    """One selected prediction for one test input."""
    grid: Grid
    votes: int                        # distinct lineages (programs, refinements counted with their parent)
    # that produce this grid; 0 for a fallback
    attempt_indices: tuple[int, ...]  # the attempts (indices into the list given) that produce it

    @property
    def is_fallback(self) -> bool:
        return not self.attempt_indices


def _train_key(a: Attempt) -> tuple[bool, float, float]:
    t = a.scores.train
    return t.is_correct, t.correct_grids, t.pixel_score


def _program_text(a: Attempt) -> str:
    return (a.program or "").strip()


def _answers(attempts: Sequence[Attempt], test_index: int) -> list[tuple[Grid, list[int]]]:
    """The distinct grids produced for one test input, each with the indices of the attempts producing it."""
    groups: dict[tuple, tuple[Grid, list[int]]] = {}
    for j, a in enumerate(attempts):
        grid = a.test_outputs[test_index] if a.test_outputs is not None else None
        if grid is not None:
            groups.setdefault((grid.shape, grid.tobytes()), (grid, []))[1].append(j)
    return list(groups.values())


def lineages(attempts: Sequence[Attempt]) -> list[str]:
    """Each attempt's lineage: the program text of the fresh sample its chain of parents starts from (its own
    text for a fresh sample, or for a refinement whose parent is not among `attempts`)."""
    by_key = {a.key: a for a in attempts if a.key}

    def root(a: Attempt) -> Attempt:
        seen = set()
        while a.parent is not None and a.parent in by_key and a.key not in seen:
            seen.add(a.key)
            a = by_key[a.parent]
        return a

    return [_program_text(root(a)) for a in attempts]


def _votes(lineage: Sequence[str], indices: list[int]) -> int:
    return len({lineage[j] for j in indices})


def _attempt_order(attempts: Sequence[Attempt], answers: list[list[tuple[Grid, list[int]]]],
                   lineage: Sequence[str]) -> list[int]:
    """rank[j]: the place of attempt j in the task-wide order (rule 4), 0 = best."""
    total_votes = [0] * len(attempts)
    for per_test in answers:
        for _, indices in per_test:
            votes = _votes(lineage, indices)
            for j in indices:
                total_votes[j] += votes
    order = sorted(range(len(attempts)), key=lambda j: (tuple(-x for x in _train_key(attempts[j])),
                                                        -total_votes[j], attempts[j].code_length, j))
    rank = [0] * len(attempts)
    for place, j in enumerate(order):
        rank[j] = place
    return rank


def _fallbacks(test_input: Grid, chosen: list[Grid], count: int) -> list[Choice]:
    out: list[Choice] = []
    for grid in (test_input, *(make_grid(g) for g in FALLBACK_GRIDS)):
        if len(out) == count:
            break
        if not any(grids_equal(grid, g) for g in chosen + [c.grid for c in out]):
            out.append(Choice(grid, 0, ()))
    return out


def select_attempts(task: Task, attempts: Sequence[Attempt]) -> list[list[Choice]]:
    """The two predictions for every test input of `task`, best first. Shape: len(task.test) x 2.

    Args:
        task: the original task (its test inputs feed the fallback).
        attempts: scored attempts of this task, in the order they were made (the last tie-break).
    """
    wrong = sorted({a.task_id for a in attempts if a.task_id != task.id})
    assert not wrong, f"task {task.id}: got attempts of other tasks: {wrong}"
    answers = [_answers(attempts, i) for i in range(len(task.test))]
    lineage = lineages(attempts)
    rank = _attempt_order(attempts, answers, lineage)

    def best_producer(indices: list[int]) -> int:
        return min(indices, key=lambda j: (tuple(-x for x in _train_key(attempts[j])), attempts[j].code_length, rank[j]))

    def answer_key(answer: tuple[Grid, list[int]]) -> tuple:
        best = best_producer(answer[1])
        return (tuple(-x for x in _train_key(attempts[best])), -_votes(lineage, answer[1]),
                attempts[best].code_length, rank[best])

    selected = []
    for i, pair in enumerate(task.test):
        ranked = sorted(answers[i], key=answer_key)[:NUM_ATTEMPTS]
        choices = [Choice(grid, _votes(lineage, indices), tuple(indices)) for grid, indices in ranked]
        selected.append(choices + _fallbacks(pair.input, [c.grid for c in choices], NUM_ATTEMPTS - len(choices)))
    return selected


def prediction_grids(choices: list[list[Choice]]) -> list[list[Grid]]:
    """Just the grids: per test input, [attempt_1, attempt_2]."""
    return [[c.grid for c in per_test] for per_test in choices]
