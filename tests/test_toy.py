import json
from pathlib import Path

import numpy as np
import pytest

from arcsl.toy import draw
from arcsl.toy.config import SHIPPED_MODEL_DIR, TaskConfig
from arcsl.toy.evaluate import execute_program, score_programs
from arcsl.toy.prompt import task_prompt
from arcsl.toy.tasks import (Call, apply_calls, canonical_order, generate_task, generate_tasks, parse_program,
                             program_text)

SHIPPED_MODEL = SHIPPED_MODEL_DIR


# --- the DSL ------------------------------------------------------------------------------------

def test_pixel_sets_one_cell_at_row_then_column():
    g = draw.pixel(draw.blank(3, 4), 1, 2, 7)
    assert g[1, 2] == 7 and g.sum() == 7


def test_line_draws_horizontal_vertical_and_both_diagonals():
    assert draw.line(draw.blank(3, 5), 1, 0, 1, 4, 2)[1].tolist() == [2] * 5
    assert draw.line(draw.blank(3, 5), 0, 3, 2, 3, 2)[:, 3].tolist() == [2] * 3
    assert np.diag(draw.line(draw.blank(3, 3), 0, 0, 2, 2, 4)).tolist() == [4] * 3
    assert np.diag(np.fliplr(draw.line(draw.blank(3, 3), 0, 2, 2, 0, 4))).tolist() == [4] * 3


def test_line_that_is_not_straight_raises():
    with pytest.raises(ValueError, match="neither horizontal"):
        draw.line(draw.blank(5, 5), 0, 0, 1, 3, 1)


def test_rect_fills_and_border_outlines_the_same_corners():
    filled = draw.rect(draw.blank(5, 5), 3, 3, 1, 1, 6)  # corners in any order
    outline = draw.border(draw.blank(5, 5), 1, 1, 3, 3, 6)
    assert (filled[1:4, 1:4] == 6).all() and filled.sum() == 9 * 6
    assert outline.sum() == 8 * 6 and outline[2, 2] == 0


def test_points_outside_the_grid_and_bad_colours_raise():
    with pytest.raises(ValueError, match="outside the 3x3 grid"):
        draw.pixel(draw.blank(3, 3), 3, 0, 1)
    with pytest.raises(ValueError, match="colour must be 0-9"):
        draw.rect(draw.blank(3, 3), 0, 0, 1, 1, 10)


def test_primitives_never_modify_a_read_only_input():
    g = draw.blank(4, 4, 5)
    g.setflags(write=False)
    out = draw.border(g, 0, 0, 3, 3, 1)
    assert (g == 5).all() and out[0, 0] == 1


def test_noisy_canvas_is_reproducible_from_its_rng():
    a = draw.noisy(6, 7, 3, 0.4, np.random.default_rng(5))
    b = draw.noisy(6, 7, 3, 0.4, np.random.default_rng(5))
    assert np.array_equal(a, b) and a.shape == (6, 7) and (a != 3).any()


def test_draw_imports_nothing_from_arcsl():
    source = Path(draw.__file__).read_text()
    assert "arcsl" not in source.split('"""')[2]  # the code after the docstring


# --- the generator ------------------------------------------------------------------------------

def test_generator_is_reproducible_from_its_seed():
    a, b = generate_tasks(3, 4, 3, TaskConfig()), generate_tasks(3, 4, 3, TaskConfig())
    assert [t.program for t in a] == [t.program for t in b]
    assert all(np.array_equal(p.output, q.output) for s, t in zip(a, b) for p, q in zip(s.task.train, t.task.train))


@pytest.mark.parametrize("num_calls", [1, 3, 5, 9])
def test_every_line_of_a_generated_program_changes_a_train_output(num_calls):
    for toy in generate_tasks(0, 10, num_calls, TaskConfig()):
        calls = parse_program(toy.program)
        assert len(calls) == num_calls == toy.num_calls
        inputs = [p.input for p in toy.task.train]
        for i in range(len(calls)):
            without = calls[:i] + calls[i + 1:]
            assert any(not np.array_equal(apply_calls(x, without), p.output) for x, p in zip(inputs, toy.task.train))


def test_generated_outputs_are_the_program_run_on_every_input():
    toy = generate_task("t", 4, np.random.default_rng(1), TaskConfig())
    for pair in toy.task.train + toy.task.test:
        assert np.array_equal(execute_program(toy.program, [pair.input])[0], pair.output)


def test_canonical_order_keeps_overwrites_and_sorts_the_rest():
    under, over, apart = Call("rect", (2, 2, 4, 4, 1)), Call("pixel", (3, 3, 2)), Call("pixel", (0, 0, 5))
    assert canonical_order([under, over, apart], 5, 5) == [apart, under, over]
    assert canonical_order([over, under], 5, 5) == [over, under]  # the pixel is under the rect: keep it first


def test_random_line_order_keeps_overwrites_and_varies_the_rest():
    under, over, apart = Call("rect", (2, 2, 4, 4, 1)), Call("pixel", (3, 3, 2)), Call("pixel", (0, 0, 5))
    orders = {tuple(canonical_order([under, over, apart], 5, 5, np.random.default_rng(s))) for s in range(20)}
    assert orders == {(apart, under, over), (under, apart, over), (under, over, apart)}  # `over` always after `under`


def test_random_line_order_tasks_are_reproducible_and_their_programs_make_the_outputs():
    cfg = TaskConfig(line_order="random")
    tasks = generate_tasks(3, 10, 5, cfg)
    assert [t.program for t in tasks] == [t.program for t in generate_tasks(3, 10, 5, cfg)]
    assert [t.program for t in tasks] != [t.program for t in generate_tasks(3, 10, 5, TaskConfig())]
    for toy in tasks:
        for pair in toy.task.train + toy.task.test:
            assert np.array_equal(apply_calls(pair.input, parse_program(toy.program)), pair.output)


def test_program_text_parses_back_to_its_calls():
    calls = [Call("line", (0, 9, 9, 0, 3)), Call("border", (1, 1, 8, 8, 0)), Call("pixel", (4, 4, 7))]
    assert parse_program(program_text(calls)) == calls


def test_task_prompt_shows_train_pairs_in_digit_format():
    toy = generate_task("t", 1, np.random.default_rng(0), TaskConfig(min_side=3, max_side=3))
    prompt = task_prompt(toy.task)
    assert prompt.count("in\n") == 2 and prompt.count("out\n") == 2 and prompt.endswith("\n\n")


def test_scoring_counts_right_wrong_and_broken_programs():
    toy = generate_task("t", 2, np.random.default_rng(2), TaskConfig())
    wrong = program_text(parse_program(toy.program)[:1])
    outcome = score_programs(toy, [toy.program, wrong, "def transform(g): return g"], "in")
    assert (outcome.num_correct, outcome.num_errors, outcome.is_solved) == (1, 1, True)


# --- tokenizer, model, pretraining --------------------------------------------------------------

def test_tokenizer_round_trips_every_prompt_and_program():
    from arcsl.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    for toy in generate_tasks(0, 5, 5, TaskConfig()):
        text = task_prompt(toy.task) + toy.program
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_a_drawing_call_costs_at_most_eleven_tokens():
    from arcsl.toy.tokenizer import build_tokenizer

    line = Call("border", (1, 2, 3, 4, 5)).text + "\n"
    assert len(build_tokenizer()(line, add_special_tokens=False).input_ids) == 11


def test_pad_bos_and_eos_are_distinct():
    from arcsl.toy.tokenizer import build_tokenizer

    t = build_tokenizer()
    assert len({t.pad_token_id, t.bos_token_id, t.eos_token_id, t.unk_token_id}) == 4


def test_line_gaps_move_only_line_starts_and_keep_order():
    from arcsl.toy.pretrain import completion_positions, line_starts
    from arcsl.toy.tokenizer import build_tokenizer

    t = build_tokenizer()
    program = program_text([Call("pixel", (0, 1, 2)), Call("rect", (1, 1, 2, 2, 3)), Call("pixel", (3, 3, 4))])
    ids = t(program, add_special_tokens=False).input_ids
    starts = line_starts(t)
    assert sum(i in starts for i in ids) == 4  # three calls and the return line
    assert completion_positions(ids, 7, starts, 0, np.random.default_rng(0)) == list(range(7, 7 + len(ids)))
    positions = completion_positions(ids, 7, starts, 50, np.random.default_rng(0))
    steps = np.diff(positions)
    assert (steps >= 1).all() and steps.max() > 1
    assert all(i in starts for i, step in zip(ids[1:], steps) if step > 1)  # gaps only open a line


def test_code_prior_examples_are_programs_without_a_prompt():
    from arcsl.toy.config import PretrainConfig
    from arcsl.toy.pretrain import draw_example

    rng = np.random.default_rng(0)
    prior = [draw_example(PretrainConfig(prior_fraction=0.999, prior_max_calls=30), TaskConfig(), rng)
             for _ in range(20)]
    assert all(prompt == "" for prompt, _ in prior)
    lengths = [len(parse_program(program)) for _, program in prior]
    assert max(lengths) > 5 and all(1 <= n <= 30 for n in lengths)
    tasks = [draw_example(PretrainConfig(), TaskConfig(), rng) for _ in range(20)]
    assert all(prompt and 1 <= len(parse_program(program)) <= 5 for prompt, program in tasks)


@pytest.mark.parametrize("bad", [{"prior_fraction": 1.0}, {"prior_fraction": -0.1}, {"prior_max_calls": 0},
                                 {"max_line_gap": -1}])
def test_pretrain_config_refuses_bad_prior_and_gap_settings(bad):
    from arcsl.toy.config import PretrainConfig

    with pytest.raises(ValueError, match=next(iter(bad))):
        PretrainConfig(**bad)


def test_tiny_pretraining_with_line_gaps_and_code_prior_runs(tmp_path):
    from arcsl.toy.pretrain import main

    assert main(["--tiny", "--max-steps", "2", "--output-dir", str(tmp_path), "--max-line-gap", "16",
                 "--prior-fraction", "0.5", "--prior-max-calls", "8"]) == 0
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_tiny_pretraining_runs_a_step_and_resumes_from_its_checkpoint(tmp_path):
    from arcsl.toy.pretrain import main

    assert main(["--tiny", "--max-steps", "1", "--output-dir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "checkpoint" / "meta.json").read_text())["step"] == 1
    assert main(["--tiny", "--max-steps", "2", "--output-dir", str(tmp_path)]) == 0
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    assert (tmp_path / "model" / "model.safetensors").exists() and (tmp_path / "model" / "tokenizer.json").exists()


def test_pretraining_can_start_from_a_saved_model(tmp_path):
    from arcsl.toy.pretrain import main

    assert main(["--tiny", "--max-steps", "1", "--output-dir", str(tmp_path / "a")]) == 0
    assert main(["--tiny", "--max-steps", "1", "--output-dir", str(tmp_path / "b"),
                 "--init-from", str(tmp_path / "a" / "model")]) == 0
    assert (tmp_path / "b" / "model" / "model.safetensors").exists()


def test_shipped_model_loads_with_auto_classes_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_MODEL)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL)
    assert model.config.vocab_size == len(tokenizer) and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (SHIPPED_MODEL / "model.safetensors").stat().st_size < 16 * 2**20
