"""The search-and-learn loop with a scripted engine: the algorithm, the driver's events, and one test per
LoopConfig setting showing it does what its help text says."""

import dataclasses

import numpy as np
import pytest

import arcsl.loop
import arcsl.scheduler
from arcsl.catalog import prompt_format
from arcsl.config import FinetuneConfig, LoopConfig, RelabelConfig, SamplingConfig, SandboxConfig
from arcsl.engine.types import ChatPrompt
from arcsl.grids import load_tasks, select_tasks
from arcsl.loop import (LoopSettings, RoundDone, TaskDone, TaskFailed, TaskStarted, run_tasks, search_and_learn,
                        split_by_counts)
from arcsl.sandbox import SandboxPool
from arcsl.scheduler import DeadlinePlanner, Scheduler
from fakes import CRASH, IDENTITY, NO_CODE, ROTATE_180, ROTATE_180_LONG, SCALE_2, FakeClock, ScriptedEngine

TASK_IDS = ["c59eb873", "3c9b0459"]  # scale x2 (3 train pairs), rotate 180 (4 train pairs): both dihedral-equivariant


@pytest.fixture(scope="module")
def tasks():
    return {t.id: t for t in select_tasks(load_tasks("arc-agi-1/training").tasks, TASK_IDS)}


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(SandboxConfig(sandbox_workers=2, timeout_s=2.0)) as p:
        yield p


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """The clock of the loop and the deadline planner, made fake: time passes only while the scripted engine works."""
    fake = FakeClock()
    monkeypatch.setattr(arcsl.loop, "time", fake)
    monkeypatch.setattr(arcsl.scheduler, "time", fake)
    return fake


def drive(tasks: list, engine, pool, settings: LoopSettings, planner: DeadlinePlanner | None = None, **kwargs) -> list:
    """Every event of the driver on `tasks`, handed out by a scheduler in this process."""
    scheduler = Scheduler(tasks, planner or DeadlinePlanner(-1, 0), settings.loop.max_rounds)
    return list(run_tasks(scheduler, engine, pool, settings, **kwargs))


def settings(relabel: RelabelConfig | None = None, **loop) -> LoopSettings:
    base = dict(initial_programs=8, programs_per_round=8, max_rounds=2, samples_per_view=4, stop="never")
    cfg = LoopConfig(**(base | loop))
    return LoopSettings(cfg, relabel or RelabelConfig(), SamplingConfig(), FinetuneConfig(),
                        prompt_format(cfg.prompt_format))


# --- the algorithm ------------------------------------------------------------------------------

def test_wrong_programs_are_relabelled_and_trained_on_each_round(tasks, pool):
    engine = ScriptedEngine({3: [IDENTITY, CRASH, NO_CODE, IDENTITY]})
    result = search_and_learn(tasks["c59eb873"], engine, pool, settings())
    assert [r.round for r in result.rounds] == [0, 1, 2]
    assert engine.num_resets == 1
    # round 1 trains on the one distinct valid output (identity); round 2 skips it as already trained
    assert [len(e) for e in engine.finetuned] == [1]
    assert [r.num_examples for r in result.rounds] == [0, 1, 0]
    prompt, completion = engine.finetuned[0][0]
    assert completion == IDENTITY and "Example 3" in prompt.messages[-1]["content"]


def test_relabelled_prompt_shows_the_programs_outputs_not_the_tasks(tasks, pool):
    engine = ScriptedEngine({3: [IDENTITY]})
    search_and_learn(tasks["c59eb873"], engine, pool, settings(max_rounds=1, augment_dihedral=False,
                                                               augment_colors="none", augment_train_order=False))
    text = engine.finetuned[0][0][0].messages[-1]["content"]
    example = text.split("Example 1\nInput:\n")[1].split("\n\n\n")[0]
    grid_in, grid_out = example.split("\n\nOutput:\n")
    assert grid_in == grid_out  # the identity program's output is its input


def test_relabel_settings_reach_the_fine_tuning(tasks, pool):
    task = tasks["c59eb873"]
    engine = ScriptedEngine({3: [SCALE_2, IDENTITY]})
    search_and_learn(task, engine, pool, settings(max_rounds=1, relabel=RelabelConfig(example_order="best-first")))
    assert [c for _, c in engine.finetuned[0]] == [SCALE_2, IDENTITY]
    engine = ScriptedEngine({3: [SCALE_2, IDENTITY]})
    search_and_learn(task, engine, pool, settings(max_rounds=1, relabel=RelabelConfig(max_examples=1,
                                                                                      drop_identity=True)))
    assert [c for _, c in engine.finetuned[0]] == [SCALE_2]


def test_toy_programs_are_pruned_before_training_unless_prune_programs_is_off(tasks):
    from arcsl.toy.tasks import FOOTER, HEADER

    twice = HEADER + "    g = pixel(g, 0, 0, 5)\n" * 2 + FOOTER
    for prune, lines in ((True, 1), (False, 2)):
        engine = ScriptedEngine({0: [twice]})
        with SandboxPool(SandboxConfig(sandbox_workers=1), dsl_path=prompt_format("toy").dsl_path) as toy_pool:
            search_and_learn(tasks["c59eb873"], engine, toy_pool, settings(
                max_rounds=1, prompt_format="toy", augment_dihedral=False, augment_colors="none",
                augment_train_order=False, relabel=RelabelConfig(prune_programs=prune)))
        [(_, completion)] = engine.finetuned[0]
        assert completion.count("pixel(") == lines


def test_solutions_survive_augmentation_and_are_selected(tasks, pool):
    engine = ScriptedEngine({4: [CRASH, IDENTITY, ROTATE_180, NO_CODE]})
    task = tasks["3c9b0459"]
    result = search_and_learn(task, engine, pool, settings(max_rounds=0, augment_colors="all"))
    correct = [a for a in result.attempts if a.program and "rot90" in a.program]
    assert correct and all(a.scores.train.is_correct and a.scores.test.is_correct for a in correct)
    assert len({a.augmentation for a in correct}) > 1  # several views, each mapped back correctly
    assert np.array_equal(result.predictions[0][0], task.test[0].output)
    assert result.scores.solved_at_2 == 1.0


class WatchedPool:
    """The pool, keeping each batch the loop opens, for a test to look at while the engine samples."""

    def __init__(self, pool: SandboxPool):
        self.pool, self.batches = pool, []

    def batch(self):
        self.batches.append(self.pool.batch())
        return self.batches[-1]


def attempt_summary(a) -> tuple:
    grids = [None if g is None else [x.tolist() for x in g] for g in (a.train_outputs, a.test_outputs)]
    return a.augmentation, a.round, a.response, a.program, a.error, a.scores, grids


def test_programs_run_while_the_engine_samples_once_per_view_and_give_the_same_attempts(tasks, pool):
    scripts = {3: [IDENTITY, SCALE_2, IDENTITY, NO_CODE]}  # 4 samples a view: 3 distinct programs, one twice
    watched, waits = WatchedPool(pool), []

    def all_run() -> bool:  # the streaming engine idles after each prompt until every program so far has run
        batch = watched.batches[-1]
        waits.append((batch, len(batch.jobs)))
        return len(batch.jobs) > 0 and batch.num_pending == 0

    streaming = ScriptedEngine(scripts, streams=True, busy_until=all_run)
    streamed = search_and_learn(tasks["c59eb873"], streaming, watched, settings(max_rounds=1))
    plain = ScriptedEngine(scripts)  # ignores on_complete and idle: everything runs after its sample call
    search_only = search_and_learn(tasks["c59eb873"], plain, watched, settings(max_rounds=1))
    assert len(streaming.streamed) == 2 * 8  # every sample of both rounds was handed over as it was drawn
    for batch in watched.batches[:2]:  # the streaming rounds: no job was submitted after the engine's last wait
        assert max(n for b, n in waits if b is batch) == len(batch.jobs)
    assert [len(b.jobs) for b in watched.batches] == [2 * 3] * 4  # 2 views x 3 programs, the twice-drawn one once
    assert [attempt_summary(a) for a in streamed.attempts] == [attempt_summary(a) for a in search_only.attempts]
    assert streaming.finetuned == plain.finetuned


# --- timings and progress -----------------------------------------------------------------------

def test_phase_timings_cover_the_round(tasks, pool):
    result = search_and_learn(tasks["c59eb873"], ScriptedEngine({3: [IDENTITY]}), pool, settings(max_rounds=1))
    for r in result.rounds:
        assert set(r.seconds) == {"sampling", "execution", "relabelling", "finetuning", "reset", "other"}
        assert all(v >= 0 for v in r.seconds.values())
    assert result.rounds[1].seconds["relabelling"] > 0


def test_on_phase_hears_each_phase_as_it_starts_with_the_round_and_the_best_score_so_far(tasks, pool):
    events, ended = [], []
    for event in run_tasks(Scheduler([tasks["c59eb873"]], DeadlinePlanner(-1, 0), 2),
                           ScriptedEngine({3: [SCALE_2, IDENTITY]}), pool,
                           settings(max_rounds=2, relabel=RelabelConfig(skip_trained=False)), on_phase=events.append):
        if isinstance(event, RoundDone):
            ended.append((event.stats.round, len(events)))
    learning = ["relabelling", "finetuning", "sampling", "execution"]
    assert [(e.round, e.phase) for e in events] == ([(0, p) for p in ("reset", "sampling", "execution")]
                                                    + [(1, p) for p in learning] + [(2, p) for p in learning])
    assert ended == [(0, 3), (1, 7), (2, 11)]  # every phase of a round is heard before the round ends
    assert {e.task_id for e in events} == {"c59eb873"}
    # the best train score is the one before the phase: nothing before the first search, SCALE_2's 1.0 after it
    assert [e.best_train_score for e in events[:3]] == [0.0, 0.0, 0.0]
    assert all(e.best_train_score == 1.0 for e in events[3:])


# --- one test per LoopConfig setting ------------------------------------------------------------

def test_programs_and_samples_per_view_set_the_programs_of_each_round(tasks, pool):
    """initial_programs, programs_per_round, samples_per_view."""
    engine = ScriptedEngine({3: [IDENTITY]})
    result = search_and_learn(tasks["c59eb873"], engine, pool, settings(initial_programs=12, programs_per_round=4))
    assert [r.num_programs for r in result.rounds] == [12, 4, 4]
    assert engine.sampled == [3, 1, 1]  # views = programs / samples_per_view
    assert len(result.attempts) == 20
    engine = ScriptedEngine({3: [IDENTITY]})
    result = search_and_learn(tasks["c59eb873"], engine, pool, settings(samples_per_view=2, max_rounds=0))
    assert engine.sampled == [4] and len(result.attempts) == 8


def test_max_rounds_bounds_the_learning_rounds_and_zero_is_search_only(tasks, pool):
    for max_rounds in (0, 1, 3):
        engine = ScriptedEngine({3: [IDENTITY]})
        result = search_and_learn(tasks["c59eb873"], engine, pool,
                                  settings(max_rounds=max_rounds, relabel=RelabelConfig(skip_trained=False)))
        assert len(result.rounds) == max_rounds + 1 and result.stop_reason == "max-rounds"
        assert len(engine.finetuned) == max_rounds


def test_stop_ends_a_task_once_solved_as_configured(tasks, pool):
    engine = ScriptedEngine({4: [ROTATE_180, ROTATE_180_LONG, IDENTITY, CRASH]})
    result = search_and_learn(tasks["3c9b0459"], engine, pool, settings(stop="two-solutions"))
    # both programs give the same test output, so they count as one solution: the task runs every round
    assert result.stop_reason == "max-rounds" and result.rounds[-1].num_solutions == 1
    engine = ScriptedEngine({3: [SCALE_2, IDENTITY]})
    result = search_and_learn(tasks["c59eb873"], engine, pool, settings(stop="one-solution"))
    assert result.stop_reason == "solved" and len(result.rounds) == 1
    result = search_and_learn(tasks["c59eb873"], engine, pool, settings(stop="never"))
    assert result.stop_reason == "max-rounds" and len(result.rounds) == 3 and result.scores.solved_at_2 == 1.0


def test_task_time_s_starts_no_round_once_the_task_budget_is_spent(tasks, pool, clock):
    def rounds_run(task_time_s: float) -> tuple[int, str]:
        engine = ScriptedEngine({3: [IDENTITY]}, clock=clock, sample_s=100.0)
        result = search_and_learn(tasks["c59eb873"], engine, pool, settings(max_rounds=3, task_time_s=task_time_s))
        return len(result.rounds), result.stop_reason

    assert rounds_run(150.0) == (2, "task-time")  # 100 s after round 0: go on; 200 s after round 1: stop
    assert rounds_run(-1) == (4, "max-rounds")


def test_the_deadline_starts_no_round_that_would_end_after_it(tasks, pool, clock):
    engine = ScriptedEngine({3: [IDENTITY]}, clock=clock, sample_s=100.0)
    planner = DeadlinePlanner(250.0, 0.0)
    [result] = [e.result for e in drive([tasks["c59eb873"]], engine, pool, settings(max_rounds=3), planner)
                if isinstance(e, TaskDone)]
    # round 0 ends at 100 s and round 1 at 200 s; round 2 would end at 300 s, after the deadline
    assert len(result.rounds) == 2 and result.stop_reason == "deadline" and clock.now <= planner.deadline


def test_prompt_format_chooses_the_prompt_how_the_program_is_read_and_where_sampling_stops(tasks, pool):
    program = "def transform(input_grid):\n    return input_grid\n"
    engine = ScriptedEngine({0: [program]})  # toy prompts have no "Example" headers
    result = search_and_learn(tasks["c59eb873"], engine, pool, settings(prompt_format="toy", max_rounds=0))
    assert all(isinstance(p, str) and p.startswith("in\n") for p in engine.prompts)
    assert all(a.program == program and a.has_valid_outputs for a in result.attempts)  # the completion is the program
    assert engine.stops == [None]  # the toy model ends with EOS: no stop rule reaches the engine
    engine = ScriptedEngine({3: [IDENTITY]})
    result = search_and_learn(tasks["c59eb873"], engine, pool, settings(prompt_format="barc", max_rounds=0))
    assert all(isinstance(p, ChatPrompt) for p in engine.prompts)
    assert engine.stops == [prompt_format("barc").stop]  # the format's own rule, handed to the engine
    assert all(a.program == program and a.response == IDENTITY for a in result.attempts)  # read from the fence


def _views(tasks, pool, **loop) -> list:
    """The augmentations of one 16-view search."""
    result = search_and_learn(tasks["3c9b0459"], ScriptedEngine({4: [IDENTITY]}), pool,
                              settings(initial_programs=16, samples_per_view=1, max_rounds=0, **loop))
    return [a.augmentation for a in result.attempts]


def test_augment_dihedral_turns_and_flips_the_views_or_not(tasks, pool):
    assert any(v.dihedral != 0 for v in _views(tasks, pool, augment_dihedral=True))
    assert all(v.dihedral == 0 for v in _views(tasks, pool, augment_dihedral=False))


def test_augment_colors_permutes_no_colour_all_but_black_or_all(tasks, pool):
    identity = tuple(range(10))
    assert all(v.colors == identity for v in _views(tasks, pool, augment_colors="none"))
    kept = _views(tasks, pool, augment_colors="keep-background")
    assert all(v.colors[0] == 0 for v in kept) and any(v.colors != identity for v in kept)
    assert any(v.colors[0] != 0 for v in _views(tasks, pool, augment_colors="all"))


def test_augment_train_order_shuffles_the_train_pairs_or_not(tasks, pool):
    assert any(v.train_order not in (None, (0, 1, 2, 3)) for v in _views(tasks, pool, augment_train_order=True))
    assert all(v.train_order is None for v in _views(tasks, pool, augment_train_order=False))


def test_seed_chooses_the_views_and_the_samples_and_the_same_seed_repeats_them(tasks, pool):
    def run(seed: int) -> list:
        engine = ScriptedEngine({3: [IDENTITY, CRASH, NO_CODE, SCALE_2]})
        result = search_and_learn(tasks["c59eb873"], engine, pool, settings(seed=seed, max_rounds=1))
        return [(a.augmentation, a.response, a.round) for a in result.attempts] + [engine.finetuned]

    assert run(0) == run(0)
    assert run(0) != run(1)


@pytest.mark.parametrize("bad", [dict(samples_per_view=0), dict(initial_programs=6), dict(programs_per_round=0),
                                 dict(max_rounds=-1), dict(stop="sometimes"), dict(augment_colors="some"),
                                 dict(task_time_s=0), dict(task_group_size=0)])
def test_bad_loop_settings_are_refused_with_the_settings_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LoopConfig(**bad)


def test_an_unknown_prompt_format_is_refused_naming_the_flag_and_the_choices():
    with pytest.raises(ValueError, match="--prompt-format 'chatml' .* barc, toy"):
        prompt_format("chatml")


# --- the driver ---------------------------------------------------------------------------------

def test_the_driver_reports_each_task_start_round_and_end_in_order(tasks, pool):
    engine = ScriptedEngine({3: [SCALE_2], 4: [IDENTITY]}, num_adapters=2)
    events = drive([tasks["c59eb873"], tasks["3c9b0459"]], engine, pool, settings(max_rounds=1, stop="one-solution"),
                   tasks_in_flight=2)
    kinds = [(type(e).__name__, e.task.id) for e in events]
    assert kinds == [("TaskStarted", "c59eb873"), ("TaskStarted", "3c9b0459"),
                     ("RoundDone", "c59eb873"), ("RoundDone", "3c9b0459"), ("TaskDone", "c59eb873"),  # solved
                     ("RoundDone", "3c9b0459"), ("TaskDone", "3c9b0459")]
    assert [e.result.stop_reason for e in events if isinstance(e, TaskDone)] == ["solved", "max-rounds"]
    assert all(e.max_rounds == 1 for e in events if isinstance(e, TaskStarted))


def test_a_round_that_raises_fails_its_tasks_and_the_driver_goes_on(tasks, pool):
    engine = ScriptedEngine({3: [SCALE_2], 4: [IDENTITY]}, failures={("sample", 0): RuntimeError("GPU fell off")})
    events = drive([tasks["c59eb873"], tasks["3c9b0459"]], engine, pool, settings(max_rounds=0))
    failed = [e for e in events if isinstance(e, TaskFailed)]
    assert [(e.task.id, str(e.error)) for e in failed] == [("c59eb873", "GPU fell off")]
    assert [e.result.task_id for e in events if isinstance(e, TaskDone)] == ["3c9b0459"]


def test_the_driver_refuses_more_tasks_in_flight_than_adapters(tasks, pool):
    with pytest.raises(ValueError, match="--tasks-in-flight 3 .* num_adapters=2"):
        drive([tasks["c59eb873"]], ScriptedEngine({3: [SCALE_2]}, num_adapters=2), pool, settings(), tasks_in_flight=3)


def train_pairs_shown(example) -> int:
    """Which task a relabelled example comes from, by the number of train pairs its prompt shows (3 or 4 here)."""
    return example[0].messages[-1]["content"].count("\nExample ")


def test_task_group_size_makes_tasks_learn_together_in_one_adapter_fine_tuned_once_a_round(tasks, pool):
    engine = ScriptedEngine({3: [SCALE_2, IDENTITY], 4: [IDENTITY, CRASH]}, num_adapters=1)
    events = drive([tasks["c59eb873"], tasks["3c9b0459"]], engine, pool,
                   settings(max_rounds=2, stop="one-solution", task_group_size=2,
                            relabel=RelabelConfig(skip_trained=False)), tasks_in_flight=2)
    assert engine.reset_adapters == [0]  # one fresh LoRA for the group
    assert engine.sampled_adapters == [[0] * 4, [0] * 2, [0] * 2]  # 2 views a task; c59eb873 solved in round 0
    # c59eb873 left its group when solved: the group's one call a round holds only 3c9b0459's examples
    assert engine.finetuned_adapters == [0, 0]
    assert [sorted({train_pairs_shown(e) for e in call}) for call in engine.finetuned] == [[4], [4]]
    done = {e.task.id: e.result for e in events if isinstance(e, TaskDone)}
    assert done["c59eb873"].stop_reason == "solved" and done["3c9b0459"].stop_reason == "max-rounds"
    assert [r.num_examples for r in done["3c9b0459"].rounds] == [0, 1, 1]

    engine = ScriptedEngine({3: [IDENTITY], 4: [IDENTITY, CRASH]}, num_adapters=1)
    events = drive([tasks["c59eb873"], tasks["3c9b0459"]], engine, pool,
                   settings(max_rounds=1, task_group_size=2), tasks_in_flight=2)
    assert [sorted(train_pairs_shown(e) for e in call) for call in engine.finetuned] == [[3, 4]]  # both, one call
    rounds = [e.stats for e in events if isinstance(e, RoundDone)]
    assert [r.num_examples for r in rounds] == [0, 0, 1, 1]


def test_a_task_group_hands_its_adapter_on_only_when_all_its_tasks_have_stopped(tasks, pool):
    third = dataclasses.replace(tasks["c59eb873"], id="c59eb873-copy")
    engine = ScriptedEngine({3: [SCALE_2], 4: [IDENTITY]}, num_adapters=1)
    events = drive([tasks["c59eb873"], tasks["3c9b0459"], third], engine, pool,
                   settings(max_rounds=1, stop="one-solution", task_group_size=2), tasks_in_flight=2)
    kinds = [(type(e).__name__, e.task.id) for e in events if not isinstance(e, RoundDone)]
    assert kinds == [("TaskStarted", "c59eb873"), ("TaskStarted", "3c9b0459"), ("TaskDone", "c59eb873"),
                     ("TaskDone", "3c9b0459"), ("TaskStarted", "c59eb873-copy"), ("TaskDone", "c59eb873-copy")]
    assert engine.reset_adapters == [0, 0]  # a fresh LoRA for each group
    with pytest.raises(ValueError, match=r"--tasks-in-flight 3 in groups of 2 needs .* one LoRA adapter per group in flight \(2\)"):
        drive([tasks["c59eb873"]], engine, pool, settings(task_group_size=2), tasks_in_flight=3)


def test_near_a_deadline_each_adapter_learns_in_a_slot_in_proportion_to_its_tasks(tasks, pool, clock):
    from arcsl.loop import run_round, start_run

    engine = ScriptedEngine({3: [IDENTITY, CRASH], 4: [IDENTITY, CRASH]}, clock=clock, num_adapters=2)
    stops = []
    finetune = engine.finetune
    engine.finetune = lambda examples, cfg, seed, adapter, stop_at: stops.append(stop_at) or finetune(
        examples, cfg, seed, adapter, stop_at)
    group = settings(max_rounds=1, task_group_size=2)
    third = dataclasses.replace(tasks["c59eb873"], id="c59eb873-copy")
    runs = [start_run(tasks["c59eb873"], group, 0), start_run(third, group, 0), start_run(tasks["3c9b0459"], group, 1)]
    run_round(runs, engine, pool)
    start = clock.now
    run_round(runs, engine, pool, learn_until=start + 30.0)
    assert stops == [start + 20.0, start + 30.0]  # 2 tasks' worth, then 1 task's


def test_tasks_searched_together_must_share_their_settings(tasks, pool):
    from arcsl.loop import run_round, start_run

    runs = [start_run(tasks["c59eb873"], settings(), 0), start_run(tasks["3c9b0459"], settings(seed=1), 1)]
    with pytest.raises(AssertionError, match="share their settings"):
        run_round(runs, ScriptedEngine({3: [SCALE_2], 4: [IDENTITY]}, num_adapters=2), pool)


def test_splitting_a_calls_results_back_checks_the_counts():
    assert split_by_counts([1, 2, 3, 4, 5], [2, 0, 3], "x") == [[1, 2], [], [3, 4, 5]]
    with pytest.raises(AssertionError, match="completions by task: 5 items for owners that asked for 6"):
        split_by_counts([1, 2, 3, 4, 5], [2, 4], "completions by task")


# --- refinement ---------------------------------------------------------------------------------

def test_refine_programs_spend_part_of_later_rounds_refining_and_only_refinement_solves_here(tasks, pool):
    """The scripted model writes the identity or crashes when sampling afresh and the right program only when it
    refines: search-and-learn alone never solves the task; with refinement the first refined round does."""
    scripts, refined = {4: [IDENTITY, CRASH, NO_CODE]}, {4: [ROTATE_180]}
    without = search_and_learn(tasks["3c9b0459"], ScriptedEngine(scripts, refined), pool,
                               settings(max_rounds=2, stop="one-solution"))
    assert not without.scores.train_is_correct and without.scores.num_refined == 0
    engine = ScriptedEngine(scripts, refined)
    result = search_and_learn(tasks["3c9b0459"], engine, pool,
                              settings(max_rounds=2, stop="one-solution", refine_programs=4))
    assert result.stop_reason == "solved" and [r.num_programs for r in result.rounds] == [8, 8]
    children = [a for a in result.attempts if a.parent is not None]
    assert len(children) == 4 and all(a.round == 1 and a.program and "rot90" in a.program for a in children)
    parent = {a.key: a for a in result.attempts}[children[0].parent]
    assert parent.round == 0 and parent.error is None  # the best attempt: the identity, not a crash
    assert children[0].augmentation == parent.augmentation  # refined in the view its parent was sampled in
    assert result.scores.num_refined == 4 and result.scores.refined_improved == 4
    assert result.scores.solved_by_refinement is True
    refine_prompts = [p for p in engine.prompts if "Here is a Python program" in p.messages[-1]["content"]]
    assert len(refine_prompts) == 1 and "return input_grid" in refine_prompts[0].messages[-1]["content"]


def test_refine_programs_zero_gives_the_attempts_of_a25482b_bit_for_bit(tasks, pool):
    """The digest of every attempt, answer and fine-tuning example of a scripted run, computed on main at a25482b
    (before refinement existed) with the same script: refine_programs 0 changes nothing."""
    import hashlib
    import json

    engine = ScriptedEngine({3: [SCALE_2, IDENTITY, CRASH, NO_CODE], 4: [IDENTITY, ROTATE_180_LONG, CRASH]},
                            num_adapters=2)
    events = drive([tasks["c59eb873"], tasks["3c9b0459"]], engine, pool, settings(refine_programs=0),
                   tasks_in_flight=2)
    h = hashlib.sha256()
    for e in events:
        if isinstance(e, TaskDone):
            for a in e.result.attempts:
                h.update(json.dumps([a.task_id, a.round, a.prompt_hash, a.response, a.output_fingerprint, a.error,
                                     a.augmentation.to_json() if a.augmentation else None]).encode())
            h.update(json.dumps([[g.tolist() for g in p] for p in e.result.predictions]).encode())
    h.update(json.dumps([[list(map(str, ex)) for ex in call] for call in engine.finetuned]).encode())
    assert h.hexdigest()[:16] == "920f81ba7ba5c7f5"


def test_refinements_are_learnt_in_hindsight_as_refine_prompts_of_their_parent(tasks, pool):
    engine = ScriptedEngine({4: [IDENTITY, CRASH]}, {4: [ROTATE_180_LONG, CRASH]})
    search_and_learn(tasks["3c9b0459"], engine, pool,
                     settings(max_rounds=2, refine_programs=4, augment_dihedral=False, augment_colors="none"))
    assert len(engine.finetuned) == 2  # round 1 learns the fresh identity; round 2 its refinement too
    refine_examples = [(p, c) for p, c in engine.finetuned[1] if "Here is a Python program" in p.messages[-1]["content"]]
    assert [c for _, c in refine_examples] == [ROTATE_180_LONG]
    text = refine_examples[0][0].messages[-1]["content"]
    assert "return input_grid\n```" in text  # the parent: the identity
    # relabelled to the child's outputs, which here are the task's own: the parent's output differs in cells
    assert "It differs from the expected output" in text


def test_refine_per_parent_caps_how_often_one_behaviour_is_refined(tasks, pool):
    engine = ScriptedEngine({4: [IDENTITY]}, {4: [IDENTITY]})
    result = search_and_learn(tasks["3c9b0459"], engine, pool,
                              settings(max_rounds=3, refine_programs=4, refine_per_parent=2))
    # one behaviour (the identity's outputs): refined in rounds 1 and 2, then fresh samples only
    assert [sum(a.parent is not None for a in result.attempts if a.round == r) for r in range(4)] == [0, 4, 4, 0]
    assert [r.num_programs for r in result.rounds] == [8, 8, 8, 8]


def test_refinement_with_a_format_that_has_none_is_refused_naming_the_flag():
    with pytest.raises(ValueError, match=r"--refine-programs 4: the prompt format 'plain' has no refine prompt"):
        LoopSettings(LoopConfig(refine_programs=4, samples_per_view=4, programs_per_round=8), RelabelConfig(),
                     SamplingConfig(), FinetuneConfig(), dataclasses.replace(prompt_format("barc"), name="plain",
                                                                             refine=None))
    with pytest.raises(ValueError, match="refine_programs must be a multiple of samples_per_view"):
        LoopConfig(refine_programs=6, samples_per_view=4)
    with pytest.raises(ValueError, match="refine_programs must be .* to programs_per_round"):
        LoopConfig(refine_programs=16, samples_per_view=4, programs_per_round=8)
    with pytest.raises(ValueError, match="refine_per_parent must be >= 1"):
        LoopConfig(refine_per_parent=0)


SETTING_TESTS = {  # LoopConfig field -> the test that shows it does what its help says
    "initial_programs": test_programs_and_samples_per_view_set_the_programs_of_each_round,
    "programs_per_round": test_programs_and_samples_per_view_set_the_programs_of_each_round,
    "samples_per_view": test_programs_and_samples_per_view_set_the_programs_of_each_round,
    "max_rounds": test_max_rounds_bounds_the_learning_rounds_and_zero_is_search_only,
    "stop": test_stop_ends_a_task_once_solved_as_configured,
    "task_time_s": test_task_time_s_starts_no_round_once_the_task_budget_is_spent,
    "prompt_format": test_prompt_format_chooses_the_prompt_how_the_program_is_read_and_where_sampling_stops,
    "augment_dihedral": test_augment_dihedral_turns_and_flips_the_views_or_not,
    "augment_colors": test_augment_colors_permutes_no_colour_all_but_black_or_all,
    "augment_train_order": test_augment_train_order_shuffles_the_train_pairs_or_not,
    "seed": test_seed_chooses_the_views_and_the_samples_and_the_same_seed_repeats_them,
    "task_group_size": test_task_group_size_makes_tasks_learn_together_in_one_adapter_fine_tuned_once_a_round,
    "refine_programs": test_refine_programs_spend_part_of_later_rounds_refining_and_only_refinement_solves_here,
    "refine_per_parent": test_refine_per_parent_caps_how_often_one_behaviour_is_refined,
}


def test_every_loop_setting_has_a_test():
    assert set(SETTING_TESTS) == {f.name for f in dataclasses.fields(LoopConfig)}
