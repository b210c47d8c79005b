"""Prompting: a view of a task -> the prompt the model sees; a completion -> program text.

The BARC induction model answers with some prose and then a ```python fenced block holding the
program (spec: /work/shared/spec/barc-prompt.md, "What the model writes"). `extract_program`
takes the first such block, falling back to the first bare ``` block, and returns its text
exactly as written: no line is dropped, stripped or rewritten (a dropped line can break the
indentation of the next). The entry point is `transform`, with `main` as the fallback for older
seed programs; the sandbox looks it up when it runs the program (arcsl.sandbox.ENTRY_POINTS).

What is covered:
- fences that start their line, indented or not; an indented fence has its indentation removed
  from the body, as Markdown does (a fence inside a list item);
- info strings `python`, `py`, `python3` in any case; other languages (```text, ```json) are skipped;
- an unclosed fence (the model hit its token limit): the block runs to the end of the completion,
  and the sandbox classifies whatever that is;
- blank blocks are skipped.

What is not covered:
- a fence that does not start its line ("here it is: ```python"), and ``` inside the program's own
  strings, which ends the block early, as in any Markdown reader;
- choosing between several python blocks: the first non-blank one wins.

A completion without a program gives None, and the sandbox reports that as ErrorKind.NO_CODE.

`PROMPT_FORMATS` names each model family's format: how a view becomes a prompt, how the program is
read from a completion, and which DSL file its programs import (`barc`: chat prompt, fenced code,
`common`; `toy`: plain-text grids, the completion is the program, `draw`).
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from arcsl.engine import ChatPrompt
from arcsl.grids import Grid, Task
from arcsl.gridtext import grid_to_barc
from arcsl.sandbox import DSL_PATH
from arcsl.toy.prompt import pruned_program, task_prompt

PYTHON_INFO_STRINGS = frozenset({"python", "py", "python3"})

_OPENING = re.compile(r"([ \t]*)```[ \t]*([^\s`]*)[^`]*")  # an opening fence line, with its info string
_CLOSING = re.compile(r"[ \t]*```[ \t\r]*")


def extract_program(completion: str) -> str | None:
    """The program in a model's completion, or None if it contains none.

    >>> extract_program("Here:\\n```python\\ndef transform(g):\\n    return g\\n```\\nDone.")
    'def transform(g):\\n    return g\\n'
    """
    blocks = [(info, body) for info, body in _fenced_blocks(completion) if body.strip()]
    for info, body in blocks:
        if info.lower() in PYTHON_INFO_STRINGS:
            return body
    for info, body in blocks:
        if not info:
            return body
    return None


def _fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(info string, body) for each fenced block in order; a body keeps its final newline."""
    # split("\n"), not splitlines(): splitlines also splits on \x0c, \u2028..., which may sit
    # inside the program's string literals.
    lines = text.split("\n")
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
        if end < len(lines):  # closed: the last body line ended with the newline before the fence
            body += "\n" if i + 1 < end else ""
        yield opening[2], body
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
    """The user turn of the BARC induction models, character for character (shared/spec/barc-prompt.md)."""
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


def bare_program(completion: str) -> str | None:
    """Formats whose completion is the program itself (the toy model): the text, or None if blank."""
    return completion if completion.strip() else None


@dataclass(frozen=True, slots=True)
class PromptFormat:
    """How one model family is spoken to: its prompt, where its program sits, the DSL it imports."""
    build: Callable[[Task], ChatPrompt | str]
    extract: Callable[[str], str | None]
    dsl_path: Path  # importable in the sandbox by its file stem (`common`, `draw`)
    # (completion, relabelled task) -> the completion to train on, simplified; None: trained on as written
    prune: Callable[[str, Task], str] | None = None


PROMPT_FORMATS: dict[str, PromptFormat] = {
    "barc": PromptFormat(barc_prompt, extract_program, DSL_PATH),
    "toy": PromptFormat(task_prompt, bare_program, Path(__file__).parent / "toy" / "draw.py", pruned_program),
}
