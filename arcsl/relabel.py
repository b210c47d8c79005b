"""Hindsight relabelling: a wrong program is a right answer to the task it actually solves.

An attempt with valid outputs (it ran cleanly and produced a grid for every input it was shown)
becomes a relabelled task: the same view's train inputs (and the test input its prompt showed)
paired with the outputs the program produced, in the view's orientation and colours, so the prompt
text matches the grids the model saw. The training target is the model's original response.

`training_set` picks which attempts of a task to train on in a round (each rule is a RelabelConfig
setting): the candidates are the last round's attempts or all so far; one per distinct train output,
the shortest program; minus outputs trained on in earlier rounds of the task; minus programs that
leave every input unchanged; the best by train score up to a cap; in worst-first, best-first or
random order. `training_examples` turns the chosen attempts into (prompt, completion) pairs through a
prompt format: the per-task rounds (`loop.py`) and `arcsl finetune` (`offline.py`) both use it.

Refinement in hindsight: a refined attempt B (sampled from a prompt showing its parent A and what A did)
whose train outputs differ from A's is a correct refinement of the task relabelled to B's outputs. Its
example is (A's refine prompt on that relabelled task, B's response): the refiner learns to turn A into B,
knowing what B computes. `refinement_set` picks those pairs (the same rules: last round or all, one per
distinct (parent behaviour, child output), minus those trained on, minus identity, the best up to
`RelabelConfig.refine_examples`, in the round's example order); `refinement_examples` renders them.

Pure functions only: no model, no I/O. What is not covered: rendering prompts (the format's own `build`)
and fine-tuning (`engine/finetune.py`).
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from arcsl.config import RelabelConfig
from arcsl.grids import Pair, Task
from arcsl.refine import behaviour, parent_view
from arcsl.scoring import Attempt, fingerprint, grids_equal, train_quality

if TYPE_CHECKING:
    from arcsl.prompting import PromptFormat


def relabelled_task(task: Task, attempt: Attempt) -> Task:
    """The view `attempt` was sampled from, its train outputs replaced by the program's outputs."""
    assert attempt.train_outputs is not None and all(g is not None for g in attempt.train_outputs), \
        f"task {task.id}: only attempts with every train output can be relabelled"
    view, produced = parent_view(task, attempt)  # its outputs in the view's frame and train order
    train = tuple(Pair(p.input, out) for p, out in zip(view.train, produced.outputs, strict=True))
    return Task(task.id, train, tuple(Pair(p.input) for p in view.test), view.augmentation)


def train_fingerprint(attempt: Attempt) -> str:
    """Identity of the relabelled task an attempt gives: its train outputs in the original frame."""
    return fingerprint(attempt.train_outputs or [])


def is_identity(task: Task, attempt: Attempt) -> bool:
    """The program returned every train input unchanged."""
    return all(grids_equal(p.input, out) for p, out in zip(task.train, attempt.train_outputs or []))


def training_set(task: Task, attempts: list[Attempt], round_: int, trained: set[str],
                 cfg: RelabelConfig, rng: np.random.Generator) -> list[Attempt]:
    """Choose the attempts to fine-tune on before round `round_` (+1): one per distinct output.

    Args:
        attempts: every attempt of the task so far (any round).
        round_: the round just finished; with cfg.relabel_rounds == "last" only its attempts are candidates.
        trained: train fingerprints already trained on for this task (with cfg.skip_trained).
    Returns the chosen attempts in training order; relabel each with `relabelled_task`.
    """
    candidates = [a for a in attempts if (cfg.relabel_rounds == "all" or a.round == round_) and a.has_valid_outputs]
    if cfg.drop_identity:
        candidates = [a for a in candidates if not is_identity(task, a)]
    shortest: dict[str, Attempt] = {}
    for a in candidates:  # one example per distinct output: the shortest program that produced it
        key = train_fingerprint(a)
        if key not in shortest or a.code_length < shortest[key].code_length:
            shortest[key] = a
    chosen = [a for key, a in shortest.items() if not (cfg.skip_trained and key in trained)]
    return _capped_in_order(chosen, cfg.max_examples, cfg.example_order, rng, train_quality)


def _capped_in_order(chosen: list, cap: int, order: str, rng: np.random.Generator,
                     quality: Callable[[Any], tuple[float, float]]) -> list:
    chosen = sorted(chosen, key=quality, reverse=True)  # best first, so a cap keeps the best
    if cap != -1:
        chosen = chosen[:cap]
    if order == "worst-first":
        chosen.reverse()
    elif order == "random":
        chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    return chosen


def refinement_key(parent: Attempt, child: Attempt) -> str:
    """Identity of a refinement example: the parent's behaviour and the child's train outputs."""
    return f"refine:{behaviour(parent)}>{train_fingerprint(child)}"


def refinement_set(task: Task, attempts: list[Attempt], round_: int, trained: set[str], cfg: RelabelConfig,
                   rng: np.random.Generator) -> list[tuple[Attempt, Attempt]]:
    """Choose the (parent, child) refinements to fine-tune on before round `round_` (+1), as `training_set` chooses
    attempts (`trained` holds `refinement_key`s here); at most cfg.refine_examples, -1 = no cap.
    With no refinement among `attempts` (or refine_examples 0), nothing is chosen and `rng` is not used."""
    if cfg.refine_examples == 0:
        return []
    by_key = {a.key: a for a in attempts if a.key}
    shortest: dict[str, tuple[Attempt, Attempt]] = {}
    for child in attempts:
        parent = by_key.get(child.parent) if child.parent is not None else None
        if (parent is None or not child.has_valid_outputs
                or (cfg.relabel_rounds == "last" and child.round != round_)
                or (cfg.drop_identity and is_identity(task, child))):
            continue
        if parent.train_outputs is not None and train_fingerprint(parent) == train_fingerprint(child):
            continue  # the same outputs as its parent: nothing was refined
        key = refinement_key(parent, child)
        if key not in shortest or child.code_length < shortest[key][1].code_length:
            shortest[key] = (parent, child)
    chosen = [pc for key, pc in shortest.items() if not (cfg.skip_trained and key in trained)]
    if not chosen:
        return []
    return _capped_in_order(chosen, cfg.refine_examples, cfg.example_order, rng, lambda pc: train_quality(pc[1]))


def refinement_examples(task: Task, chosen: list[tuple[Attempt, Attempt]], fmt: "PromptFormat",
                        prune_programs: bool) -> list[tuple]:
    """(prompt, completion) pairs to fine-tune on: for each (parent, child), the parent's refine prompt on the task
    relabelled to the child's outputs, and the child's response (pruned as `training_examples` prunes)."""
    assert fmt.refine is not None or not chosen, f"prompt format {fmt.name!r} has no refine prompt"
    prune = fmt.prune if prune_programs else None
    examples = []
    for parent, child in chosen:
        assert child.augmentation == parent.augmentation, \
            f"task {task.id}: refinement {child.key} was sampled in another view than its parent {parent.key}"
        relabelled = relabelled_task(task, child)
        _, feedback = parent_view(task, parent)
        completion = prune(child.response, relabelled) if prune else child.response
        examples.append((fmt.refine(relabelled, parent.program or "", feedback), completion))
    return examples


def training_examples(task: Task, chosen: list[Attempt], fmt: "PromptFormat", prune_programs: bool) -> list[tuple]:
    """(prompt, completion) pairs to fine-tune on: each chosen attempt's relabelled task in `fmt`, and its
    response, pruned of the lines that change no train output where `prune_programs` and the format can."""
    prune = fmt.prune if prune_programs else None
    examples = []
    for a in chosen:
        relabelled = relabelled_task(task, a)
        examples.append((fmt.build(relabelled), prune(a.response, relabelled) if prune else a.response))
    return examples
