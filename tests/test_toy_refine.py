from collections import Counter

import numpy as np
import pytest

from arcsl.grids import Pair, Task
from arcsl.prompting import Feedback
from arcsl.toy.config import ModelConfig, PretrainConfig, TaskConfig
from arcsl.toy.prompt import TOY_FORMAT, refine_example, refine_prompt, task_prompt, training_example
from arcsl.toy.tasks import (EDIT_KINDS, Call, apply_calls, edit_calls, generate_task, near_miss, parse_program,
                             program_text, random_parent, random_program, run_calls)

SMALL = TaskConfig(min_side=3, max_side=5)
PARENT = program_text([Call("pixel", (0, 0, 1))])


def grid(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


def tiny_task() -> Task:
    """Three train pairs of different shapes: one per kind of `got` block."""
    return Task("tiny", (Pair(grid([[0, 0], [0, 0]]), grid([[1, 2], [0, 0]])),
                         Pair(grid([[0, 0, 0]]), grid([[4, 4, 4]])),
                         Pair(grid([[7]]), grid([[8]]))), ())


def drawn_parents(n: int, seed: int = 0) -> list:
    """(task, parent) for `n` random tasks of 1-5 calls on small grids."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        toy = generate_task("t", int(rng.integers(1, 6)), rng, SMALL)
        pairs.append((toy, random_parent(toy, rng, SMALL)))
    return pairs


# --- the refine prompt --------------------------------------------------------------------------

def test_refine_prompt_marks_correct_cells_and_shows_other_shapes_and_missing_grids():
    feedback = Feedback(outputs=(grid([[1, 0], [0, 3]]), grid([[4, 4], [4, 4]]), None))
    assert refine_prompt(tiny_task(), PARENT, feedback) == (
        "in\n00\n00\nout\n12\n00\ngot\n.0\n.3\n\n"
        "in\n000\nout\n444\ngot\nshape 2x2\n\n"
        "in\n7\nout\n8\ngot\nnone\n\n"
        "fix\nfrom draw import *\n\ndef transform(g):\n    g = pixel(g, 0, 0, 1)\n    return g\nto\n")


def test_refine_prompt_of_a_failed_program_shows_plain_pairs_and_its_error():
    feedback = Feedback(outputs=None, error="ValueError: point (5, 5) outside the 2x2 grid")
    assert refine_prompt(tiny_task(), PARENT, feedback) == (
        "in\n00\n00\nout\n12\n00\n\nin\n000\nout\n444\n\nin\n7\nout\n8\n\n"
        "error ValueError: point (5, 5) outside the 2x2 grid\n"
        "fix\nfrom draw import *\n\ndef transform(g):\n    g = pixel(g, 0, 0, 1)\n    return g\nto\n")


def test_refine_prompt_puts_a_long_error_on_one_line_of_80_characters():
    error = "Traceback (most recent call last):\n" + "x" * 200
    prompt = refine_prompt(tiny_task(), PARENT, Feedback(outputs=None, error=error))
    line = next(line for line in prompt.split("\n") if line.startswith("error "))
    assert line == "error " + ("Traceback (most recent call last): " + "x" * 200)[:80]


def test_refine_prompt_is_the_same_whether_the_parent_ends_with_a_newline_or_not():
    feedback = Feedback(outputs=(grid([[1, 2], [0, 0]]), grid([[4, 4, 4]]), grid([[8]])))
    assert refine_prompt(tiny_task(), PARENT, feedback) == refine_prompt(tiny_task(), PARENT + "\n", feedback)


def test_a_right_output_is_all_dots_and_the_pairs_part_extends_the_plain_prompt_pair_by_pair():
    task = tiny_task()
    feedback = Feedback(outputs=tuple(p.output for p in task.train))
    prompt = refine_prompt(task, PARENT, feedback)
    assert "got\n..\n..\n\n" in prompt and "got\n...\n\n" in prompt and "got\n.\n\n" in prompt
    assert prompt.replace("got\n..\n..\n", "").replace("got\n...\n", "").replace("got\n.\n", "") == (
        task_prompt(task) + f"fix\n{PARENT}\nto\n")


def test_toy_format_refines_with_the_toy_refine_prompt():
    assert TOY_FORMAT.refine is refine_prompt


def test_refine_example_pairs_the_refine_prompt_with_the_program():
    feedback = Feedback(outputs=None, error="ValueError: x")
    truth = program_text([Call("pixel", (0, 1, 2))])
    assert refine_example(tiny_task(), PARENT, feedback, truth) == (refine_prompt(tiny_task(), PARENT, feedback), truth)


# --- wrong parents ------------------------------------------------------------------------------

def test_parents_are_reproducible_from_their_seed():
    a, b = drawn_parents(20, seed=4), drawn_parents(20, seed=4)
    assert [p.calls for _, p in a] == [p.calls for _, p in b] and [p.edits for _, p in a] == [p.edits for _, p in b]
    assert [p.calls for _, p in a] != [p.calls for _, p in drawn_parents(20, seed=5)]


def test_a_parent_draws_a_wrong_train_output_or_fails_and_its_feedback_is_what_its_calls_do():
    for toy, parent in drawn_parents(100):
        inputs = [p.input for p in toy.task.train]
        assert parse_program(parent.program) == list(parent.calls)
        if parent.feedback.outputs is not None:
            assert all(np.array_equal(y, apply_calls(x, list(parent.calls)))
                       for x, y in zip(inputs, parent.feedback.outputs, strict=True))
            assert not all(np.array_equal(y, p.output) for y, p in zip(parent.feedback.outputs, toy.task.train))


def test_parents_have_one_to_three_edits_and_every_kind_of_edit_occurs():
    parents = [p for _, p in drawn_parents(100)]
    assert {len(p.edits) for p in parents} == {1, 2, 3}
    assert set(Counter(kind for p in parents for kind in p.edits)) == set(EDIT_KINDS)


def test_failed_parents_report_the_dsl_error_as_the_sandbox_would():
    failed = [(toy, p) for toy, p in drawn_parents(100) if p.feedback.outputs is None]
    assert failed, "no parent failed in 100 draws"
    for toy, parent in failed:
        with pytest.raises(ValueError) as raised:
            for pair in toy.task.train:
                apply_calls(pair.input, list(parent.calls))
        assert parent.feedback == Feedback(outputs=None, error=f"ValueError: {raised.value}")


def test_run_calls_gives_no_outputs_and_the_error_for_a_point_outside_the_grid():
    assert run_calls([Call("pixel", (3, 0, 1))], [grid([[0] * 3] * 3)]) == Feedback(
        outputs=None, error="ValueError: point (3, 0) outside the 3x3 grid")


def test_a_near_miss_changes_one_coordinate_by_one_or_the_colour_and_never_goes_negative():
    call = Call("rect", (0, 2, 3, 0, 5))
    for seed in range(50):
        changed = [(a, b) for a, b in zip(call.args, near_miss(call, np.random.default_rng(seed)).args) if a != b]
        assert len(changed) == 1
        (before, after), = changed
        assert (abs(before - after) == 1 and after >= 0) or (before == 5 and 0 <= after <= 9)


def test_missing_extra_and_wrong_edits_delete_insert_and_replace_one_call():
    calls = [Call("pixel", (0, 0, 1)), Call("pixel", (1, 1, 2)), Call("pixel", (2, 2, 3))]
    rng = np.random.default_rng(0)
    missing = edit_calls(calls, "missing", 4, 4, rng, SMALL)
    extra = edit_calls(calls, "extra", 4, 4, rng, SMALL)
    wrong = edit_calls(calls, "wrong", 4, 4, rng, SMALL)
    assert len(missing) == 2 and all(c in calls for c in missing)
    assert len(extra) == 4 and sum(c in calls for c in extra) >= 3
    assert len(wrong) == 3 and sum(a == b for a, b in zip(wrong, calls)) >= 2


# --- tokenizer and pretraining ------------------------------------------------------------------

def test_tokenizer_round_trips_a_refine_prompt_and_its_program():
    from arcsl.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    for toy, parent in drawn_parents(10):
        text = refine_prompt(toy.task, parent.program, parent.feedback) + toy.program
        ids = tokenizer(text).input_ids
        assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids, skip_special_tokens=True) == text


def old_draw_example(cfg: PretrainConfig, task_cfg: TaskConfig, rng: np.random.Generator) -> tuple[str, str]:
    """`draw_example` as it was before refinement: the stream refine_fraction 0 must keep."""
    if rng.random() < cfg.prior_fraction:
        return "", random_program(int(rng.integers(1, cfg.prior_max_calls + 1)), rng, task_cfg)
    toy = generate_task("pretrain", int(rng.integers(cfg.min_calls, cfg.max_calls + 1)), rng, task_cfg)
    return training_example(toy.task, toy.program)


@pytest.mark.parametrize("prior_fraction", [0.0, 0.3])
def test_refine_fraction_zero_draws_the_same_examples_as_before(prior_fraction):
    from arcsl.toy.pretrain import draw_example

    cfg = PretrainConfig(prior_fraction=prior_fraction)
    new_rng, old_rng = np.random.default_rng(7), np.random.default_rng(7)
    assert ([draw_example(cfg, SMALL, new_rng) for _ in range(40)]
            == [old_draw_example(cfg, SMALL, old_rng) for _ in range(40)])
    assert new_rng.random() == old_rng.random()  # and no extra draw


def test_refinement_examples_show_a_parent_and_complete_with_the_tasks_program():
    from arcsl.toy.pretrain import draw_example

    rng = np.random.default_rng(0)
    examples = [draw_example(PretrainConfig(refine_fraction=0.999), SMALL, rng) for _ in range(20)]
    for prompt, program in examples:
        assert prompt.startswith("in\n") and "\nfix\nfrom draw import *\n" in prompt and prompt.endswith("\nto\n")
        assert 1 <= len(parse_program(program)) <= 5


def test_refine_fraction_splits_the_stream_between_prior_refine_and_plain_examples():
    from arcsl.toy.pretrain import draw_example

    rng = np.random.default_rng(0)
    cfg = PretrainConfig(prior_fraction=0.25, refine_fraction=0.5, prior_max_calls=3)
    prompts = [draw_example(cfg, SMALL, rng)[0] for _ in range(200)]
    kinds = Counter("prior" if not p else "refine" if "\nfix\n" in p else "plain" for p in prompts)
    assert 30 <= kinds["prior"] <= 70 and 80 <= kinds["refine"] <= 120 and 30 <= kinds["plain"] <= 70


@pytest.mark.parametrize("bad", [{"refine_fraction": -0.1}, {"refine_fraction": 1.0},
                                 {"prior_fraction": 0.5, "refine_fraction": 0.5}])
def test_pretrain_config_refuses_refine_fractions_that_leave_no_plain_tasks(bad):
    with pytest.raises(ValueError, match="refine_fraction"):
        PretrainConfig(**bad)


def test_line_gaps_and_the_position_gap_skip_the_parent_program_in_the_prompt():
    from arcsl.toy.pretrain import IGNORE, encode_batch
    from arcsl.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    toy, parent = drawn_parents(1)[0]
    example = refine_example(toy.task, parent.program, parent.feedback, toy.program)
    num_prompt = len(tokenizer(example[0]).input_ids)
    cfg = PretrainConfig(max_position_gap=100, max_line_gap=50)
    for seed in range(8):
        batch = encode_batch([example], tokenizer, cfg, np.random.default_rng(seed))
        assert batch["position_ids"][0, :num_prompt].tolist() == list(range(num_prompt))
        assert (batch["labels"][0, :num_prompt] == IGNORE).all() and (batch["labels"][0, num_prompt] != IGNORE)


def test_refinement_examples_of_10x10_tasks_fit_the_model_with_every_gap():
    from arcsl.toy.pretrain import draw_example
    from arcsl.toy.tokenizer import build_tokenizer

    tokenizer, cfg = build_tokenizer(), PretrainConfig(refine_fraction=0.999, max_line_gap=32)
    rng = np.random.default_rng(0)
    for prompt, program in (draw_example(cfg, TaskConfig(min_side=10), rng) for _ in range(20)):
        num_prompt, num_program = len(tokenizer(prompt).input_ids), len(tokenizer(program).input_ids)
        num_lines = len(parse_program(program)) + 1  # the calls and the return line
        longest = num_prompt + cfg.max_position_gap + num_program + 1 + num_lines * cfg.max_line_gap
        assert num_prompt < 800 and longest < ModelConfig().max_positions / 2


def test_tiny_pretraining_with_refinement_examples_runs(tmp_path):
    from arcsl.toy.pretrain import main

    assert main(["--tiny", "--max-steps", "2", "--output-dir", str(tmp_path), "--refine-fraction", "0.5"]) == 0
    assert (tmp_path / "model" / "model.safetensors").exists()
