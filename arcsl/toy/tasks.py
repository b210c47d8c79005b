"""Seeded generator of toy drawing tasks: inputs, the same N drawing calls on each, and the program.

A task shows `num_train` input grids of one size (a single colour, or a colour with random noise)
and the outputs after the same N calls of `draw.py`; `num_test` more pairs are held out. The
ground-truth program writes one call per line:

    from draw import *

    def transform(g):
        g = rect(g, 1, 1, 3, 4, 2)
        g = pixel(g, 6, 0, 5)
        return g

What is covered:
- every call changes the output: a call whose removal leaves every train output unchanged is
  dropped (repeatedly, until none is), and new calls are drawn until the task has exactly N;
- a canonical line order: calls are sorted by their first point (row, then column), as far as
  overlaps allow: a call that overwrites another in a different colour stays after it, so the
  outputs do not change. A program written in reading order is easier to continue and to cut;
- reproducibility: the same seed gives the same tasks;
- wrong parent programs for refinement (`random_parent`): the task's calls after 1-3 edits, each a
  call replaced by a random one (`wrong`), deleted (`missing`), a random call inserted at a random line
  (`extra`), or one number of a call off by one or another colour (`near`), with what the parent drew
  on the train inputs (`Feedback`, as the sandbox would report it). Edits happen in place and the
  parent is not reordered or pruned, so an inserted line may break the canonical order and a line may
  draw nothing visible: both are mistakes a model makes too.

What is not covered: executing model-written programs as Python (the sandbox's job); programs in
the exact format can be applied without exec: `apply_calls(grid, parse_program(text))`.
"""

import re
from dataclasses import dataclass

import numpy as np

from arcsl.grids import Grid, Pair, Task
from arcsl.prompting import Feedback, cut_error
from arcsl.toy import draw
from arcsl.toy.config import CALL_NAMES, TaskConfig

HEADER = "from draw import *\n\ndef transform(g):\n"
FOOTER = "    return g"
LINE_PREFIXES = tuple(f"    g = {name}(g, " for name in CALL_NAMES)
NUM_ARGS = {"pixel": 3, "line": 5, "rect": 5, "border": 5}  # colour last
_LINE_RE = re.compile(r"    g = (\w+)\(g, (\d+(?:, \d+)*)\)")
EDIT_KINDS = ("wrong", "missing", "extra", "near")  # how `random_parent` breaks a program


@dataclass(frozen=True, slots=True)
class Call:
    """One drawing call: `name` is a primitive of `draw.py`, `args` its integers (points, then colour)."""
    name: str
    args: tuple[int, ...]

    @property
    def text(self) -> str:
        return f"    g = {self.name}(g, {', '.join(str(a) for a in self.args)})"

    @property
    def color(self) -> int:
        return self.args[-1]

    @property
    def first_point(self) -> tuple[int, int]:
        return self.args[0], self.args[1]


@dataclass(frozen=True, slots=True)
class ToyTask:
    task: Task
    program: str
    num_calls: int


# --- programs as text ---------------------------------------------------------------------------

def program_text(calls: list[Call]) -> str:
    """The program that makes `calls`, one per line."""
    return HEADER + "".join(c.text + "\n" for c in calls) + FOOTER


def parse_program(text: str) -> list[Call]:
    """The calls of a program in the generator's exact format; raises ValueError on anything else."""
    if not text.startswith(HEADER) or not text.endswith(FOOTER):
        raise ValueError("not a toy program: header or footer missing")
    body = text[len(HEADER):len(text) - len(FOOTER)]
    calls = []
    for i, line in enumerate(body.split("\n")[:-1] if body else []):
        m = _LINE_RE.fullmatch(line)
        if m is None or m.group(1) not in NUM_ARGS:
            raise ValueError(f"line {i}: not a drawing call: {line!r}")
        args = tuple(int(a) for a in m.group(2).split(", "))
        if len(args) != NUM_ARGS[m.group(1)]:
            raise ValueError(f"line {i}: {m.group(1)} takes {NUM_ARGS[m.group(1)]} numbers, got {len(args)}")
        calls.append(Call(m.group(1), args))
    return calls


def apply_calls(grid: Grid, calls: list[Call]) -> np.ndarray:
    """The grid after `calls`, run directly through the primitives (no exec)."""
    g = np.asarray(grid)
    for c in calls:
        g = getattr(draw, c.name)(g, *c.args)
    return np.array(g, dtype=np.uint8)


# --- random canvases and calls ------------------------------------------------------------------

def random_canvas(height: int, width: int, rng: np.random.Generator, cfg: TaskConfig) -> np.ndarray:
    color = 0 if rng.random() < cfg.black_probability else int(rng.integers(10))
    if rng.random() < cfg.noise_probability:
        return draw.noisy(height, width, color, rng.uniform(0.05, cfg.max_noise_density), rng)
    return draw.blank(height, width, color)


def _span(n: int, min_len: int, max_len: int, rng: np.random.Generator) -> tuple[int, int]:
    """Two ends a < b inside 0..n-1 with min_len <= b - a + 1 <= max_len (max_len clipped to n)."""
    length = int(rng.integers(min_len, min(max_len, n) + 1))
    start = int(rng.integers(0, n - length + 1))
    return start, start + length - 1


def random_call(height: int, width: int, rng: np.random.Generator, cfg: TaskConfig) -> Call:
    """One call with its points inside a height x width grid, in canonical argument order."""
    longest = max(height, width) if cfg.max_shape_side == -1 else cfg.max_shape_side
    weights = np.asarray(cfg.call_weights, dtype=float)
    name = CALL_NAMES[int(rng.choice(len(CALL_NAMES), p=weights / weights.sum()))]
    color = int(rng.integers(10))
    if name == "pixel":
        return Call(name, (int(rng.integers(height)), int(rng.integers(width)), color))
    if name in ("rect", "border"):
        smallest = 2 if name == "rect" else 3
        r0, r1 = _span(height, smallest, longest, rng)
        c0, c1 = _span(width, smallest, longest, rng)
        return Call(name, (r0, c0, r1, c1, color))
    direction = int(rng.integers(4))  # horizontal, vertical, down-right, down-left
    if direction == 0:
        c0, c1 = _span(width, 2, longest, rng)
        r = int(rng.integers(height))
        return Call(name, (r, c0, r, c1, color))
    if direction == 1:
        r0, r1 = _span(height, 2, longest, rng)
        c = int(rng.integers(width))
        return Call(name, (r0, c, r1, c, color))
    length = int(rng.integers(2, min(longest, height, width) + 1))  # a diagonal fits the smaller side
    r0 = int(rng.integers(height - length + 1))
    if direction == 2:
        c0 = int(rng.integers(width - length + 1))
        return Call(name, (r0, c0, r0 + length - 1, c0 + length - 1, color))
    c0 = int(rng.integers(length - 1, width))
    return Call(name, (r0, c0, r0 + length - 1, c0 - length + 1, color))


# --- pruning and ordering -----------------------------------------------------------------------

def prune_calls(calls: list[Call], inputs: list[Grid]) -> list[Call]:
    """Drop calls whose removal leaves every output unchanged, until each remaining call matters."""
    targets = [apply_calls(x, calls) for x in inputs]
    changed = True
    while changed:
        changed = False
        for i in range(len(calls)):
            without = calls[:i] + calls[i + 1:]
            if all(np.array_equal(apply_calls(x, without), y) for x, y in zip(inputs, targets)):
                calls, changed = without, True
                break
    return calls


def call_cells(call: Call, height: int, width: int) -> np.ndarray:
    """Boolean mask of the cells `call` paints. Shape: (height, width)."""
    return getattr(draw, call.name)(draw.blank(height, width, 0), *call.args[:-1], 1).astype(bool)


def canonical_order(calls: list[Call], height: int, width: int, rng: np.random.Generator | None = None) -> list[Call]:
    """Sort calls by first point, keeping every overlapping pair of different colours in its order.

    With `rng`, any order that keeps those pairs instead (a random topological order), drawn from `rng`.

    Each cell ends with the colour of the last call covering it; those pairs are the only ones
    whose order can change a cell, so the outputs are the same on every input.
    """
    cells = [call_cells(c, height, width) for c in calls]
    must_follow = [{i for i in range(j) if calls[i].color != calls[j].color and (cells[i] & cells[j]).any()}
                   for j in range(len(calls))]
    placed: list[int] = []
    remaining = set(range(len(calls)))
    while remaining:
        ready = [j for j in remaining if must_follow[j] <= set(placed)]
        j = (min(ready, key=lambda k: (calls[k].first_point, calls[k].name, calls[k].args)) if rng is None
             else sorted(ready)[int(rng.integers(len(ready)))])
        placed.append(j)
        remaining.remove(j)
    return [calls[j] for j in placed]


# --- tasks --------------------------------------------------------------------------------------

def make_task(task_id: str, inputs: list[Grid], calls: list[Call], num_train: int) -> ToyTask:
    """A task from given inputs and calls: the first `num_train` inputs are train pairs, the rest test."""
    pairs = []
    for x in inputs:
        x = np.array(x, dtype=np.uint8)
        y = apply_calls(x, calls)
        x.setflags(write=False)
        y.setflags(write=False)
        pairs.append(Pair(x, y))
    return ToyTask(Task(task_id, tuple(pairs[:num_train]), tuple(pairs[num_train:])), program_text(calls), len(calls))


def generate_task(task_id: str, num_calls: int, rng: np.random.Generator, cfg: TaskConfig,
                  max_attempts: int = 20) -> ToyTask:
    """A random task with exactly `num_calls` calls, each visible in the train outputs.

    Draws a new canvas size and inputs when `num_calls` effective calls do not fit after
    `10 * num_calls` tries; raises ValueError after `max_attempts` canvases.
    """
    for _ in range(max_attempts):
        height, width = (int(s) for s in rng.integers(cfg.min_side, cfg.max_side + 1, size=2))
        inputs = [random_canvas(height, width, rng, cfg) for _ in range(cfg.num_train + cfg.num_test)]
        train_inputs = inputs[:cfg.num_train]
        calls: list[Call] = []
        for _ in range(10 * num_calls):
            if len(calls) == num_calls:
                break
            calls = prune_calls(calls + [random_call(height, width, rng, cfg)], train_inputs)
        if len(calls) == num_calls:
            order_rng = rng if cfg.line_order == "random" else None
            return make_task(task_id, inputs, canonical_order(calls, height, width, order_rng), cfg.num_train)
    raise ValueError(f"could not fit {num_calls} visible calls on {cfg.min_side}..{cfg.max_side} grids "
                     f"in {max_attempts} canvases; allow larger grids or smaller shapes (max_shape_side)")


def random_program(num_calls: int, rng: np.random.Generator, cfg: TaskConfig) -> str:
    """A program of `num_calls` random calls in canonical order, with no task: text for a code prior.

    Nothing is pruned (a call may be hidden by later ones): the text teaches what programs look like
    at any length, never which program solves a task.
    """
    height, width = (int(s) for s in rng.integers(cfg.min_side, cfg.max_side + 1, size=2))
    calls = [random_call(height, width, rng, cfg) for _ in range(num_calls)]
    return program_text(canonical_order(calls, height, width))


def generate_tasks(seed: int, num_tasks: int, num_calls: int, cfg: TaskConfig) -> list[ToyTask]:
    """`num_tasks` tasks with `num_calls` calls each, the same for the same seed."""
    rng = np.random.default_rng([seed, num_calls])
    return [generate_task(f"toy-{num_calls}c-{seed}-{i:04d}", num_calls, rng, cfg) for i in range(num_tasks)]


# --- wrong parents, for refinement --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Parent:
    """A wrong program for a task: its calls, the edits that made it from the task's, and what it drew."""
    calls: tuple[Call, ...]
    edits: tuple[str, ...]  # the kinds (EDIT_KINDS) of its edits, in the order made
    feedback: Feedback  # its outputs on the task's train inputs, or its error

    @property
    def program(self) -> str:
        return program_text(list(self.calls))


def run_calls(calls: list[Call], inputs: list[Grid]) -> Feedback:
    """What `calls` draw on `inputs`, as the sandbox reports a program: every output, or the first error."""
    try:
        return Feedback(outputs=tuple(apply_calls(x, calls) for x in inputs))
    except ValueError as e:  # the DSL refuses the call (a point outside the grid, a bent line)
        return Feedback(outputs=None, error=cut_error(f"ValueError: {e}"))


def near_miss(call: Call, rng: np.random.Generator) -> Call:
    """`call` with one number changed: a coordinate by +-1 (possibly past the grid's last row or column) or
    the colour to another."""
    args = list(call.args)
    i = int(rng.integers(len(args)))
    if i == len(args) - 1:
        args[i] = (args[i] + int(rng.integers(1, 10))) % 10
    else:
        step = 1 if rng.random() < 0.5 else -1
        # 0 only goes up: programs never hold a minus sign (parse_program refuses one; the model never saw one)
        args[i] += step if args[i] + step >= 0 else 1
    return Call(call.name, tuple(args))


def edit_calls(calls: list[Call], kind: str, height: int, width: int, rng: np.random.Generator,
               cfg: TaskConfig) -> list[Call]:
    """`calls` with one edit of `kind` (one of EDIT_KINDS) at a random line; new calls fit height x width."""
    if kind == "extra":
        i = int(rng.integers(len(calls) + 1))
        return calls[:i] + [random_call(height, width, rng, cfg)] + calls[i:]
    assert calls, f"a {kind!r} edit needs a call to change"
    i = int(rng.integers(len(calls)))
    if kind == "missing":
        return calls[:i] + calls[i + 1:]
    new = random_call(height, width, rng, cfg) if kind == "wrong" else near_miss(calls[i], rng)
    return calls[:i] + [new] + calls[i + 1:]


def random_parent(toy: ToyTask, rng: np.random.Generator, cfg: TaskConfig, max_edits: int = 3,
                  max_attempts: int = 100) -> Parent:
    """A wrong program for `toy`: its calls after 1..max_edits random edits, and what it drew on the train inputs.

    Each edit's kind is drawn uniformly from those that apply (an empty program can only gain a call).
    A parent that draws every train output right has nothing to fix and is drawn again; raises
    ValueError after `max_attempts` such parents.
    """
    truth = parse_program(toy.program)
    inputs = [p.input for p in toy.task.train]
    height, width = inputs[0].shape
    for _ in range(max_attempts):
        calls, edits = truth, []
        for _ in range(int(rng.integers(1, max_edits + 1))):
            kinds = EDIT_KINDS if calls else ("extra",)
            edits.append(kinds[int(rng.integers(len(kinds)))])
            calls = edit_calls(calls, edits[-1], height, width, rng, cfg)
        feedback = run_calls(calls, inputs)
        if feedback.outputs is None or not all(np.array_equal(y, p.output)
                                                for y, p in zip(feedback.outputs, toy.task.train)):
            return Parent(tuple(calls), tuple(edits), feedback)
    raise ValueError(f"no parent of {toy.task.id} in {max_attempts} attempts differs from its program on the "
                     f"train outputs")
