"""Tests for arcsl.prompting: pulling the program out of a model completion, leaving it intact, and the stop
rule that ends sampling once that program is settled."""

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcsl import prompting
from arcsl.catalog import PROMPT_FORMATS
from arcsl.prompting import code_end, extract_program

PREFILL = ("Let's solve this puzzle using Python code with the common library functions. "
           "We'll first reason about the problem and then write the code to solve it. "
           "The `transform` function will take the input grid and return the output grid. "
           "Here is the Python code with the comments describing how to solve the problem:\n")

PROGRAM = '''from common import *

import numpy as np
from typing import *

# concepts:
# random_sprite, re.compile, import os  (words in comments are just words)
# description:
# Each red pixel becomes a blue one.

def transform(input_grid):
    output_grid = input_grid.copy()

    output_grid[output_grid == Color.RED] = Color.BLUE
    return output_grid


if __name__ == "__main__":
    visualize(generate_input, transform)
'''


def test_a_barc_style_completion_gives_back_the_program_exactly():
    completion = PREFILL + "```python\n" + PROGRAM + "```\n"
    assert extract_program(completion) == PROGRAM


def test_text_after_the_closing_fence_is_not_part_of_the_program():
    completion = "```python\n" + PROGRAM + "```\n\nThis works because ```blue``` is nice.\n```\nx\n```\n"
    assert extract_program(completion) == PROGRAM


def test_the_first_python_block_wins_over_later_ones():
    completion = "```python\ndef transform(g):\n    return g\n```\n```python\ndef transform(g):\n    return 1\n```\n"
    assert extract_program(completion) == "def transform(g):\n    return g\n"


def test_a_python_block_wins_over_an_earlier_bare_block():
    completion = "Grid:\n```\n1 2\n3 4\n```\nCode:\n```python\ndef transform(g):\n    return g\n```\n"
    assert extract_program(completion) == "def transform(g):\n    return g\n"


def test_a_bare_block_is_the_fallback_when_there_is_no_python_block():
    completion = "Code:\n```\ndef transform(g):\n    return g\n```\n"
    assert extract_program(completion) == "def transform(g):\n    return g\n"


def test_blocks_in_other_languages_are_never_taken():
    assert extract_program("```text\nhello\n```\n```json\n{}\n```\n") is None


def test_the_closing_fence_of_a_text_block_does_not_open_a_bare_block():
    completion = "```text\nnot code\n```\nprose\n```\ndef transform(g):\n    return g\n```\n"
    assert extract_program(completion) == "def transform(g):\n    return g\n"


def test_info_strings_py_and_python3_in_any_case_count_as_python():
    for info in ("py", "python3", "Python", "PYTHON", " python"):
        assert extract_program(f"```{info}\nx = 1\n```") == "x = 1\n", info


def test_a_completion_without_code_gives_none():
    assert extract_program("I think the rule is to flip the grid.") is None
    assert extract_program("") is None


def test_blank_blocks_are_skipped():
    completion = "```python\n\n   \n```\n```python\ndef transform(g):\n    return g\n```\n"
    assert extract_program(completion) == "def transform(g):\n    return g\n"
    assert extract_program("```python\n```\n") is None


def test_an_unclosed_block_runs_to_the_end_of_the_completion():
    truncated = "```python\ndef transform(g):\n    out = g.copy()\n    return ou"
    assert extract_program(truncated) == "def transform(g):\n    out = g.copy()\n    return ou"


def test_blank_lines_and_indentation_inside_the_program_survive():
    program = "def transform(g):\n\n\n    if True:\n\n        return g\n\t\n"
    assert extract_program("```python\n" + program + "```") == program


def test_an_indented_fence_has_only_its_own_indentation_removed():
    completion = "1. The code:\n   ```python\n   def transform(g):\n       return g\n   ```\n"
    assert extract_program(completion) == "def transform(g):\n    return g\n"


def test_crlf_line_endings_are_kept_as_written():
    completion = "text\r\n```python\r\ndef transform(g):\r\n    return g\r\n```\r\n"
    assert extract_program(completion) == "def transform(g):\r\n    return g\r\n"


def test_unusual_line_separators_inside_string_literals_are_not_line_breaks():
    program = 'def transform(g):\n    s = "a\x0cb\u2028c"\n    return g\n'
    assert extract_program("```python\n" + program + "```\n") == program


def test_a_fence_that_does_not_start_its_line_is_not_a_fence():
    assert extract_program("Here it is: ```python\nx = 1\n```") is None


_NO_FENCE_LINES = st.lists(st.text(st.characters(blacklist_characters="`\n"), max_size=30), max_size=8)


@given(_NO_FENCE_LINES)
def test_any_program_without_backticks_comes_back_unchanged(lines):
    program = "\n".join(lines) + "\n"
    if program.strip():
        assert extract_program("Some prose.\n```python\n" + program + "```\nMore prose.") == program


# --- where sampling stops ----------------------------------------------------------------------

# pieces a completion is made of: fences with and without info strings, stray backticks, line ends, code
_PIECES = ["```", "```python", "```py", "```text", "```json", " ```", "`", "``", "````", "\n", "\r\n", " ", "\t",
           "x = 1", "def transform(g):", "    return g", "Plan:", "python", "Notes", "a"]
_COMPLETIONS = st.lists(st.sampled_from(_PIECES), max_size=30).map("".join)


def _first_stop(fmt, completion: str) -> tuple[int, int] | None:
    """(characters seen, cut) where sampling `completion` one character at a time would stop, or None."""
    if fmt.stop is None:
        return None
    for seen in range(len(completion) + 1):
        cut = fmt.stop(completion[:seen])
        if cut is not None:
            return seen, cut
    return None


@pytest.mark.parametrize("name", list(PROMPT_FORMATS))
@settings(max_examples=400, deadline=None)
@given(completion=_COMPLETIONS)
def test_cutting_at_the_stop_point_never_changes_the_program_extracted(name, completion):
    fmt = PROMPT_FORMATS[name]
    stopped = _first_stop(fmt, completion)
    if stopped is None:  # sampling runs to an end token: the whole completion is read
        return
    seen, cut = stopped
    assert cut <= seen
    # whatever the model would have written after the stop, the program is the one the cut text holds
    assert fmt.extract(completion[:cut]) == fmt.extract(completion)
    assert all(fmt.stop(completion[:n]) == cut for n in range(seen, len(completion) + 1))  # it stays stopped


def test_the_issues_counterexample_is_not_cut_before_its_program():
    completion = "Notes:\n```text\nplan\n```\n```python\ndef transform(g):\n    return g\n```\nDone."
    assert code_end(completion[:completion.index("def")]) is None  # the text block closed, but it is no program
    assert completion[:code_end(completion)].endswith("return g\n```")
    assert extract_program(completion[:code_end(completion)]) == "def transform(g):\n    return g\n"


def test_inline_backticks_in_prose_do_not_stop_sampling():
    assert code_end("Use ``` to fence code, e.g. ```python x```.\nMore prose\n") is None


def test_a_closed_block_stops_only_once_its_fence_line_has_ended():
    assert code_end("```python\nx = 1\n```") is None      # may become ```` or ```python: no fence yet
    assert code_end("```python\nx = 1\n```  \n") == len("```python\nx = 1\n```  ")


def test_blank_and_bare_blocks_do_not_stop_sampling():
    assert code_end("```python\n\n```\n") is None   # blank: extraction skips it, a program may follow
    assert code_end("```\nx = 1\n```\n") is None     # bare: a later python block would win over it


def test_the_module_doctest_passes():
    assert doctest.testmod(prompting).failed == 0


# --- refine prompts -------------------------------------------------------------------------------

def test_barc_refine_prompt_is_the_task_then_the_program_then_what_it_did_golden():
    from arcsl.grids import Pair, Task, make_grid
    from arcsl.prompting import BARC_ASSISTANT_PREFIX, BARC_FORMAT, BARC_SYSTEM, Feedback

    view = Task("r", (Pair(make_grid([[0, 1], [1, 0]]), make_grid([[1, 1], [1, 0]])),
                      Pair(make_grid([[2]]), make_grid([[3]])), Pair(make_grid([[4]]), make_grid([[4]]))),
                (Pair(make_grid([[0]])),))
    produced = Feedback((make_grid([[0, 1], [1, 0]]), make_grid([[3, 3]]), make_grid([[4]])))
    prompt = BARC_FORMAT.refine(view, "def transform(g):\n    return g", produced)
    assert prompt.messages[0] == {"role": "system", "content": BARC_SYSTEM}
    assert prompt.assistant_prefix == BARC_ASSISTANT_PREFIX
    assert prompt.messages[1]["content"] == (
        "Given input-output grid pairs as reference examples, carefully observe the patterns to predict the output "
        "grid for new test input. Each pair follows the same transformation rule. Grids are 2D arrays represented as "
        "strings, with cells (colors) separated by spaces and rows by newlines.\n"
        "Here are the input and output grids for the reference examples:\n"
        "Example 1\nInput:\nBlack Blue\nBlue Black\n\nOutput:\nBlue Blue\nBlue Black\n\n\n"
        "Example 2\nInput:\nRed\n\nOutput:\nGreen\n\n\n"
        "Example 3\nInput:\nYellow\n\nOutput:\nYellow\n\n\n"
        "Here is the input grid for the test example:\nInput:\nBlack\n\n"
        "Here is a Python program that was written to solve this puzzle:\n"
        "```python\ndef transform(g):\n    return g\n```\n\n"
        "On example 1 it produced:\nBlack Blue\nBlue Black\n"
        "It differs from the expected output in 1 of 4 cells, marked X (. is a correct cell):\nX .\n. .\n\n"
        "On example 2 it produced:\nGreen Green\nThis grid is 1x2; the expected output is 1x1.\n\n"
        "On example 3 it produced:\nYellow\nThis is the expected output.\n\n"
        "The program is not correct. Write a corrected Python function `transform` that converts every input grid "
        "of the reference examples to its output grid.")
    failed = BARC_FORMAT.refine(view, "def transform(g):\n    return g\n", Feedback(None, "ValueError: bad"))
    assert failed.messages[1]["content"].endswith(
        "```python\ndef transform(g):\n    return g\n```\n\n"
        "Running it failed with this error:\nValueError: bad\n\n"
        "The program is not correct. Write a corrected Python function `transform` that converts every input grid "
        "of the reference examples to its output grid.")
    no_grid = BARC_FORMAT.refine(view, "x = 1\n", Feedback((None, make_grid([[3]]), make_grid([[4]]))))
    assert "On example 1 it produced no grid.\n\nOn example 2 it produced:\nGreen\nThis is the expected output." \
        in no_grid.messages[1]["content"]
