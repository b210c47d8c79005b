"""Toy tasks as plain text for the small model: task -> prompt; the completion is the program.

The prompt shows every train pair as an `in` grid and an `out` grid in the digit format, one blank
line after each pair; the model then writes the program, which starts with `tasks.HEADER`, and ends
it with the tokenizer's EOS token. Test inputs are left out: the program is the same for every input.

    in
    000
    000
    out
    220
    220

A refine prompt (`refine_prompt`) shows a wrong parent program and what it drew, for the model to
write the corrected program. Each pair gains a `got` block: the parent's grid with every correct cell
as `.` (so the `out` grid and this block tell everything it drew), `shape HxW` for a grid of another
shape, or `none` for no grid. A parent that failed shows the plain pairs and one `error` line instead.
Then `fix`, the parent program, and `to`, after which the model writes the program as usual:

    in
    000
    000
    out
    220
    220
    got
    .0.
    ...

    fix
    from draw import *
    ...
        return g
    to

No chat template and no instructions: the model was trained from scratch on these formats only.
`TOY_FORMAT` is that format as the core's `PromptFormat`: no stop rule (the model ends with EOS), the
`draw` DSL, pruning of relabelled programs to the lines that change an output, and refinement.
"""

from pathlib import Path

from arcsl.gridtext import grid_to_digits
from arcsl.grids import Grid, Task
from arcsl.prompting import Feedback, PromptFormat, differing_cells
from arcsl.toy.tasks import parse_program, program_text, prune_calls

# of a failed parent's error in a refine prompt; shorter than the core's MAX_ERROR_CHARS: the DSL's own
# messages are one short line, and a character-level model pays one position per character
ERROR_LINE_CHARS = 80


def task_prompt(task: Task) -> str:
    """The prompt for `task`: its train pairs, in order."""
    return "".join(f"in\n{grid_to_digits(p.input)}out\n{grid_to_digits(p.output)}\n" for p in task.train)


def training_example(task: Task, program: str) -> tuple[str, str]:
    """(prompt, completion) for fine-tuning on `task` solved by `program`."""
    return task_prompt(task), program


def got_text(expected: Grid, produced: Grid | None) -> str:
    """What a parent drew for one pair: its digits with correct cells as `.`, its shape, or `none`.

    >>> import numpy as np
    >>> got_text(np.array([[1, 2], [3, 4]]), np.array([[1, 5], [3, 4]]))
    '.5\\n..\\n'
    """
    if produced is None:
        return "none\n"
    if produced.shape != expected.shape:
        return f"shape {produced.shape[0]}x{produced.shape[1]}\n"
    wrong = differing_cells(expected, produced)
    return "".join("".join(str(v) if w else "." for v, w in zip(row, is_wrong)) + "\n"
                   for row, is_wrong in zip(produced.tolist(), wrong.tolist()))


def refine_prompt(view: Task, program: str, feedback: Feedback) -> str:
    """The prompt to correct `program` on `view`: each train pair with what the program drew (or, if it
    failed, the plain pairs and its error), then `fix`, the program and `to`."""
    if feedback.outputs is None:
        error = feedback.error.replace("\n", " ")[:ERROR_LINE_CHARS]
        pairs = task_prompt(view) + f"error {error}\n"
    else:
        pairs = "".join(f"in\n{grid_to_digits(p.input)}out\n{grid_to_digits(p.output)}got\n{got_text(p.output, y)}\n"
                        for p, y in zip(view.train, feedback.outputs, strict=True))
    parent = program if program.endswith("\n") else program + "\n"
    return f"{pairs}fix\n{parent}to\n"


def refine_example(view: Task, parent: str, feedback: Feedback, program: str) -> tuple[str, str]:
    """(prompt, completion) for training to turn `parent`, which did `feedback` on `view`, into `program`."""
    return refine_prompt(view, parent, feedback), program


def pruned_program(completion: str, task: Task) -> str:
    """`completion` without the lines that change no train output of `task` (as the generator's
    programs are), for training on it; a completion that does not parse is returned as it is."""
    try:
        return program_text(prune_calls(parse_program(completion), [p.input for p in task.train]))
    except ValueError:  # not in the generator's format, or a call that raises on these inputs
        return completion


def completion_program(completion: str) -> str | None:
    """The completion is the program itself: its text, or None if blank."""
    return completion if completion.strip() else None


TOY_FORMAT = PromptFormat("toy", task_prompt, completion_program, None, Path(__file__).with_name("draw.py"),
                          pruned_program, refine=refine_prompt)
