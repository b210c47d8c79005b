"""Prompting: a view of a task -> the prompt the model sees; a completion -> program text.

A `PromptFormat` is one object holding everything a model family needs: how a view becomes a prompt,
how the program is read from a completion, where sampling may stop (a `StopRule` the engine calls
without knowing what it looks for), which DSL file the sandbox lets its programs import, and an
optional pruning hook for relabelled programs and refine builder ((view, parent program, what it did on the
view's train inputs as a `Feedback`) -> a prompt asking for a corrected program). This module defines
`BARC_FORMAT`. Its refine prompt is BARC's prompt (same system text and grids) followed by the parent in a
```python block, per example its output in colour names and the cells where it differs from the expected
one (an X mask), or its shape, or the error text, then the instruction to write a corrected `transform`.
Other domains define their own (the toy domain's is `arcsl.toy.prompt.TOY_FORMAT`), and the edge
(`arcsl.catalog`) maps the names a user types to them.

The BARC induction model answers with some prose and then a ```python fenced block holding the
program: what the BARC induction models (xu3kev/BARC) were trained to write. `extract_program` takes the
first such block, falling back to the first bare ``` block, and returns its text exactly as written:
no line is dropped, stripped or rewritten (a dropped line can break the indentation of the next). The
entry point is `transform`, with `main` as the fallback for older seed programs; the sandbox looks it
up when it runs the program (arcsl.sandbox.ENTRY_POINTS).

What is covered:
- fences that start their line, indented or not; an indented fence has its indentation removed
  from the body, as Markdown does (a fence inside a list item);
- info strings `python`, `py`, `python3` in any case; other languages (```text, ```json) are skipped;
- an unclosed fence (the model hit its token limit): the block runs to the end of the completion,
  and the sandbox classifies whatever that is;
- blank blocks are skipped;
- BARC's stop rule, `code_end`, reads blocks exactly as `extract_program` does and stops only once the
  answer is settled: a closed, non-blank python block whose closing fence line has ended. Text cut there
  gives the same program as the whole completion would, whatever follows (a property test checks it).
  A completion whose program sits in a bare ``` block is not stopped early (a later ```python block
  would take precedence); it ends at the end token, as the model writes one after its code.

What is not covered:
- a fence that does not start its line ("here it is: ```python"), and ``` inside the program's own
  strings, which ends the block early, as in any Markdown reader;
- choosing between several python blocks: the first non-blank one wins.

A completion without a program gives None, and the sandbox reports that as ErrorKind.NO_CODE.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arcsl.engine.types import ChatPrompt, StopRule
from arcsl.grids import Grid, Task
from arcsl.gridtext import grid_to_barc
from arcsl.sandbox import DSL_PATH

PYTHON_INFO_STRINGS = frozenset({"python", "py", "python3"})

_OPENING = re.compile(r"([ \t]*)```[ \t]*([^\s`]*)[^`]*")  # an opening fence line, with its info string
_CLOSING = re.compile(r"[ \t]*```[ \t\r]*")


def extract_program(completion: str) -> str | None:
    """The program in a model's completion, or None if it contains none.

    >>> extract_program("Here:\\n```python\\ndef transform(g):\\n    return g\\n```\\nDone.")
    'def transform(g):\\n    return g\\n'
    """
    blocks = [b for b in _fenced_blocks(completion) if b.body.strip()]
    for block in blocks:
        if block.info.lower() in PYTHON_INFO_STRINGS:
            return block.body
    for block in blocks:
        if not block.info:
            return block.body
    return None


def code_end(completion: str) -> int | None:
    """BARC's stop rule: the end of the closing fence of the program `extract_program` returns, once that
    fence's line has ended (a later character could still make it no fence); None until then.

    >>> text = "Plan:\\n```text\\nsteps\\n```\\n```python\\nx = 1\\n```\\nDone"
    >>> text[code_end(text):]
    '\\nDone'
    >>> code_end("Plan:\\n```python\\nx = 1\\n```") is None  # the fence line may still grow (````, ```python)
    True
    """
    if "```" not in completion:  # the common case while the model writes prose: no block has started
        return None
    complete_lines = completion[:completion.rfind("\n") + 1]
    for block in _fenced_blocks(complete_lines):
        if block.end is not None and block.info.lower() in PYTHON_INFO_STRINGS and block.body.strip():
            return block.end
    return None


@dataclass(frozen=True, slots=True)
class _Block:
    info: str        # the opening fence's info string ("python", "" for a bare fence)
    body: str        # the lines between the fences, dedented; keeps its final newline when closed
    end: int | None  # index just past the closing fence line's text (before its newline); None: unclosed


def _fenced_blocks(text: str) -> Iterator[_Block]:
    """Each fenced block of `text`, in order."""
    # split("\n"), not splitlines(): splitlines also splits on \x0c, \u2028..., which may sit
    # inside the program's string literals.
    lines = text.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    i = 0
    while i < len(lines):
        opening = _OPENING.fullmatch(lines[i])
        if opening is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not _CLOSING.fullmatch(lines[end]):
            end += 1
        indent = len(opening[1])
        body = "\n".join(_dedent(line, indent) for line in lines[i + 1:end])
        is_closed = end < len(lines)
        if is_closed:  # the last body line ended with the newline before the fence
            body += "\n" if i + 1 < end else ""
        yield _Block(opening[2], body, starts[end] + len(lines[end]) if is_closed else None)
        i = end + 1


def _dedent(line: str, indent: int) -> str:
    """Remove up to `indent` leading spaces or tabs: the fence's own indentation, nothing more."""
    removable = len(line) - len(line.lstrip(" \t"))
    return line[min(indent, removable):]


# --- prompt formats: a view of a task -> the prompt the model sees ----------------------------

BARC_SYSTEM = ("You are a world-class puzzle solver with exceptional pattern recognition skills and expertise in "
               "Python programming. Your task is to analyze puzzles and provide Python solutions.")
BARC_INTRO = ("Given input-output grid pairs as reference examples, carefully observe the patterns to predict the "
              "output grid for new test input. Each pair follows the same transformation rule. Grids are 2D arrays "
              "represented as strings, with cells (colors) separated by spaces and rows by newlines.")
BARC_INSTRUCTION = ("\nWrite a Python function `transform` that can convert any given input grid to its "
                    "corresponding output grid based on the pattern observed in the reference examples.")
BARC_ASSISTANT_PREFIX = ("Let's solve this puzzle using Python code with the common library functions. We'll first "
                         "reason about the problem and then write the code to solve it. The `transform` function will "
                         "take the input grid and return the output grid. Here is the Python code with the comments "
                         "describing how to solve the problem:\n")


def barc_user_message(train: list[tuple[Grid, Grid]], test_input: Grid) -> str:
    """The user turn of the BARC induction models, character for character: an introduction, each train pair as
    `Example i` with its grids in colour names, then the test input and the instruction to write `transform`."""
    examples = "".join(f"Example {i}\nInput:\n{grid_to_barc(a)}\nOutput:\n{grid_to_barc(b)}\n\n"
                       for i, (a, b) in enumerate(train, start=1))
    return (BARC_INTRO + "\nHere are the input and output grids for the reference examples:\n" + examples
            + "Here is the input grid for the test example:\nInput:\n" + grid_to_barc(test_input) + BARC_INSTRUCTION)


def barc_prompt(view: Task) -> ChatPrompt:
    """BARC prompt for a view: its train pairs in view order and the test input its augmentation picks."""
    test_index = view.augmentation.test_index if view.augmentation is not None else 0
    train = [(p.input, p.output) for p in view.train]
    return ChatPrompt(messages=[{"role": "system", "content": BARC_SYSTEM},
                                {"role": "user", "content": barc_user_message(train, view.test[test_index].input)}],
                      assistant_prefix=BARC_ASSISTANT_PREFIX)


# --- refinement: a view, a parent program and what it did -> a prompt for a corrected program ---

MAX_ERROR_CHARS = 300  # of a parent's error text in a refine prompt (the sandbox cuts a program's own at 300
# too; its messages of crashes and start-up failures run longer)


def cut_error(text: str) -> str:
    """An error text as a refine prompt shows it: at most MAX_ERROR_CHARS, an ellipsis marking a cut."""
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


@dataclass(frozen=True, slots=True)
class Feedback:
    """What a parent program did on a view's train inputs, in the view's frame (its orientation, colours and
    train order): what a refine prompt shows beside the expected outputs."""
    outputs: tuple[Grid | None, ...] | None  # per train pair of the view, the grid it produced (None: no grid);
    # None: the program failed (see `error`)
    error: str = ""  # the failure as the sandbox reported it ("ValueError: ...", "timeout"), `cut_error`; "" if ran


def differing_cells(expected: Grid, produced: Grid) -> np.ndarray:
    """Where a produced grid of the expected shape differs from it. Shape: expected.shape (bool)."""
    assert expected.shape == produced.shape, f"shapes differ: {expected.shape} and {produced.shape}"
    return np.asarray(expected) != np.asarray(produced)


BARC_REFINE_INTRO = "\nHere is a Python program that was written to solve this puzzle:\n"
BARC_REFINE_INSTRUCTION = ("\nThe program is not correct. Write a corrected Python function `transform` that converts "
                           "every input grid of the reference examples to its output grid.")


def barc_feedback(view: Task, feedback: Feedback) -> str:
    """What the parent did, in BARC's grid text: its error, or per example its output and where it is wrong."""
    if feedback.outputs is None:
        # the sandbox runs a program on the test inputs too, and an error on any input voids every output
        return f"Running it failed with this error:\n{feedback.error}\n"
    return "\n".join(_barc_example_feedback(i, pair.output, produced)
                     for i, (pair, produced) in enumerate(zip(view.train, feedback.outputs, strict=True), start=1))


def _barc_example_feedback(i: int, expected: Grid, produced: Grid | None) -> str:
    if produced is None:
        return f"On example {i} it produced no grid.\n"
    text = f"On example {i} it produced:\n{grid_to_barc(produced)}"
    if produced.shape != expected.shape:
        (h, w), (eh, ew) = produced.shape, expected.shape
        return text + f"This grid is {h}x{w}; the expected output is {eh}x{ew}.\n"
    wrong = differing_cells(expected, produced)
    if not wrong.any():
        return text + "This is the expected output.\n"
    mask = "".join(" ".join("X" if w else "." for w in row) + "\n" for row in wrong.tolist())
    return text + (f"It differs from the expected output in {int(wrong.sum())} of {wrong.size} cells, marked X "
                   f"(. is a correct cell):\n{mask}")


def barc_refine_prompt(view: Task, program: str, feedback: Feedback) -> ChatPrompt:
    """BARC's prompt for the view (same system text and grids), then the parent program in a ```python block, what
    it did on the reference examples, and the instruction to write a corrected `transform`."""
    task_prompt = barc_prompt(view)
    user = task_prompt.messages[-1]["content"].removesuffix(BARC_INSTRUCTION)
    fence = program if program.endswith("\n") else program + "\n"
    user += f"{BARC_REFINE_INTRO}```python\n{fence}```\n\n{barc_feedback(view, feedback)}{BARC_REFINE_INSTRUCTION}"
    return ChatPrompt(messages=[*task_prompt.messages[:-1], {"role": "user", "content": user}],
                      assistant_prefix=BARC_ASSISTANT_PREFIX)


@dataclass(frozen=True, slots=True)
class PromptFormat:
    """How one model family is spoken to: its prompt, where its program sits, where sampling may stop,
    the DSL its programs import, how a relabelled program may be simplified for training, and how a
    program is shown with what it did, to be corrected (refinement)."""
    name: str  # what --prompt-format calls it
    build: Callable[[Task], ChatPrompt | str]
    extract: Callable[[str], str | None]
    stop: StopRule | None  # handed to the engine; None: samples end at an end token or the token limit
    dsl_path: Path  # importable in the sandbox by its file stem (`common`, `draw`)
    # (completion, relabelled task) -> the completion to train on, simplified; None: trained on as written
    prune: Callable[[str, Task], str] | None = None
    # (view, parent program, what it did on the view's train inputs) -> the prompt; None: no refinement
    refine: Callable[[Task, str, Feedback], ChatPrompt | str] | None = None


BARC_FORMAT = PromptFormat("barc", barc_prompt, extract_program, code_end, DSL_PATH, refine=barc_refine_prompt)
