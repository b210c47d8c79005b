"""Refinement: which attempts of a task are worth correcting, and the view and feedback each is shown with.

A refinement is a sample from a prompt that shows the task, a *parent* program and what it did (its outputs
beside the expected ones, or its error), and asks for a corrected program (`PromptFormat.refine` renders it).
The loop spends `LoopConfig.refine_programs` of each round after the first on refinements, the rest on fresh
samples (`loop.plan_search`); the refined attempts record their parent's key, and their correct refinements
are learnt in hindsight (`relabel.refinement_set`).

Parent choice (`choose_parents`), a rule that spreads the budget over distinct behaviours:
- candidates: the task's attempts with a program that is not exact on every train pair (an exact one needs no
  correction), including programs that failed (the error is what they are shown);
- attempts with the same *behaviour* (train outputs, or the error of a failed program) are one candidate,
  represented by the shortest program, then the earliest; so near-identical parents do not crowd the budget;
- a behaviour is refined at most `refine_per_parent` times in a task (each time one prompt of
  `samples_per_view` programs): a lineage that does not improve gives way to the next best;
- the best candidates by train score (exact grids, then pixels) first; ties by code length, then age.

The view: a parent is shown in the view it was sampled from, since its program was written in that view's
orientation and colours; its outputs are mapped into that frame (and train order), so the feedback shows what
the program computed on what the prompt shows. Its refinements are sampled in that view too, and mapped back
like any attempt.

Pure functions only. What is not covered: rendering the prompt (the format's `refine`), sampling (`loop.py`).
"""

from collections.abc import Mapping, Sequence

from arcsl.augment import Augmentation, augment, transform_grid
from arcsl.config import LoopConfig
from arcsl.grids import Task
from arcsl.prompting import Feedback, PromptFormat, cut_error
from arcsl.scoring import Attempt, fingerprint, train_quality


def check_refinement(loop: LoopConfig, fmt: PromptFormat) -> None:
    """Refuses --refine-programs with a prompt format that has no refine prompt."""
    if loop.refine_programs and fmt.refine is None:
        raise ValueError(f"--refine-programs {loop.refine_programs}: the prompt format {fmt.name!r} has no refine "
                         "prompt; use --refine-programs 0 or a format with one (barc, toy)")


def behaviour(attempt: Attempt) -> str:
    """What a program did on the train inputs, as a key: its train outputs, or its error when it failed (class and
    text: crashes at different places are different behaviours)."""
    if attempt.train_outputs is None:
        return f"error:{attempt.error}:{attempt.message}"
    return fingerprint(attempt.train_outputs)


def choose_parents(attempts: Sequence[Attempt], count: int, per_parent: int,
                   refined: Mapping[str, int]) -> list[Attempt]:
    """Up to `count` attempts to refine, best first (see the module docstring for the rule).

    Args:
        attempts: every attempt of the task so far, in the order they were made.
        per_parent: the most times one behaviour is refined in a task.
        refined: behaviour -> times it has been refined so far in this task.
    """
    representative: dict[str, tuple[int, Attempt]] = {}
    for i, a in enumerate(attempts):
        if a.program is None or a.scores.train.is_correct:
            continue
        key = behaviour(a)
        if refined.get(key, 0) >= per_parent:
            continue
        if key not in representative or a.code_length < representative[key][1].code_length:
            representative[key] = (i, a)
    ranked = sorted(representative.values(), key=lambda ia: (tuple(-x for x in train_quality(ia[1])),
                                                              ia[1].code_length, ia[0]))
    return [a for _, a in ranked[:count]]


def error_text(attempt: Attempt) -> str:
    """A failed attempt's error as a refine prompt shows it: the sandbox's text, else its error class; truncated."""
    return cut_error(attempt.message or attempt.error or "")


def parent_view(task: Task, attempt: Attempt) -> tuple[Task, Feedback]:
    """The view `attempt` was sampled from (with the task's own outputs) and what it did there: its train
    outputs in the view's frame and train order, or its error."""
    aug = attempt.augmentation or Augmentation()
    view = augment(task, aug)
    if attempt.train_outputs is None:
        return view, Feedback(outputs=None, error=error_text(attempt))
    order = aug.train_order or range(len(task.train))
    outputs = tuple(None if attempt.train_outputs[i] is None else transform_grid(attempt.train_outputs[i], aug)
                    for i in order)
    return view, Feedback(outputs=outputs)
