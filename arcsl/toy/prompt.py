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

No chat template and no instructions: the model was trained from scratch on this format only.
`TOY_FORMAT` is that format as the core's `PromptFormat`: no stop rule (the model ends with EOS), the
`draw` DSL, and pruning of relabelled programs to the lines that change an output.
"""

from pathlib import Path

from arcsl.gridtext import grid_to_digits
from arcsl.grids import Task
from arcsl.prompting import PromptFormat
from arcsl.toy.tasks import parse_program, program_text, prune_calls


def task_prompt(task: Task) -> str:
    """The prompt for `task`: its train pairs, in order."""
    return "".join(f"in\n{grid_to_digits(p.input)}out\n{grid_to_digits(p.output)}\n" for p in task.train)


def training_example(task: Task, program: str) -> tuple[str, str]:
    """(prompt, completion) for fine-tuning on `task` solved by `program`."""
    return task_prompt(task), program


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
                          pruned_program)
