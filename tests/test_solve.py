"""`arcsl solve` with a scripted engine: outputs, resume, failures, task order, progress, and the deadline
planner under a fake clock; one test per RunConfig setting."""

import dataclasses
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import arcsl.loop
import arcsl.scheduler
import arcsl.solve
from arcsl.catalog import prompt_format
from arcsl.cli import main
from arcsl.config import DataConfig, LoopConfig, RunConfig, SandboxConfig, SolveConfig
from arcsl.scheduler import DeadlinePlanner
from arcsl.grids import load_tasks, select_tasks, task_to_json
from arcsl.loop import RoundStats, start_run
from arcsl.selection import prediction_grids, select_attempts
from arcsl.solve import BAR_FORMAT, status_text
from arcsl.store import open_store
from arcsl.submission import read_submission, submission_problems
from arcsl.workers import engine_config
import test_workers
from fakes import CRASH, IDENTITY, NO_CODE, ROTATE_180, SCALE_2, FakeClock, ScriptedEngine

TASK_IDS = ["c59eb873", "3c9b0459"]  # scale x2 (3 train pairs, 170 cells), rotate 180 (4 train pairs, 81 cells)
SCRIPTS = {3: [SCALE_2, IDENTITY, CRASH, NO_CODE], 4: [ROTATE_180, IDENTITY, NO_CODE, CRASH]}


@pytest.fixture(scope="module")
def tasks():
    return select_tasks(load_tasks("arc-agi-1/training").tasks, TASK_IDS)


@pytest.fixture(scope="module")
def dataset(tasks, tmp_path_factory) -> str:
    """The two tasks as a directory of task files: loads in milliseconds, unlike the whole named dataset."""
    path = tmp_path_factory.mktemp("tasks")
    for t in tasks:
        (path / f"{t.id}.json").write_text(json.dumps(task_to_json(t)))
    return str(path)


def solve(cfg: SolveConfig, engine) -> arcsl.solve.RunSummary:
    """`arcsl.solve.solve` with the prompt format the config names, as the CLI resolves it."""
    return arcsl.solve.solve(cfg, prompt_format(cfg.loop.prompt_format), engine=engine)


def config(tmp_path, dataset: str = "arc-agi-1/training", sort: str = "none", loop: dict | None = None,
           **run) -> SolveConfig:
    base = dict(initial_programs=8, programs_per_round=8, max_rounds=1, samples_per_view=4)
    return SolveConfig(data=DataConfig(dataset=dataset, task_ids=None if sort != "none" else TASK_IDS, sort=sort),
                       loop=LoopConfig(**(base | (loop or {}))),
                       sandbox=SandboxConfig(sandbox_workers=2, timeout_s=2.0),
                       run=RunConfig(**(dict(output_dir=str(tmp_path / "run"), progress=False) | run)))


def rounds_per_task(tmp_path, task_ids: list[str] = TASK_IDS) -> dict[str, int]:
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        timings = store.phase_timings()
    return {task_id: 1 + max((t.round for t in timings if t.task_id == task_id), default=-1) for task_id in task_ids}


def submission(tmp_path, tasks) -> dict:
    """The run's submission.json, checked to be valid for every task."""
    data = json.loads((tmp_path / "run" / "submission.json").read_text())
    assert submission_problems(data, tasks, "submission.json") == []
    return data


# --- outputs ------------------------------------------------------------------------------------

def test_solve_writes_a_submission_that_scores_100_percent(tmp_path, capsys):
    summary = solve(config(tmp_path), engine=ScriptedEngine(SCRIPTS))
    out = tmp_path / "run"
    for name in ("submission.json", "metrics.csv", "attempts.jsonl", "config.json", "report.html", "rounds.png",
                 "results.sqlite"):
        assert (out / name).exists(), name
    assert summary.num_finished == 2 and summary.mean_scores["solved_at_2"] == 1.0
    capsys.readouterr()
    assert main(["score", str(out / "submission.json"), "--dataset", "arc-agi-1/training",
                 "--task-ids", *TASK_IDS]) == 0
    assert "score 100.00%" in capsys.readouterr().out
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[-1].startswith("MEAN") and len(lines) == 4
    # one distinct solution per task is not "two-solutions": both tasks run their learning round
    assert sum(1 for _ in open(out / "attempts.jsonl")) == 2 * (8 + 8)
    report = (out / "report.html").read_text()
    assert all(task_id in report for task_id in TASK_IDS) and "np.rot90(input_grid, 2)" in report


def test_config_is_saved_and_round_trips(tmp_path, dataset):
    cfg = config(tmp_path, dataset)
    solve(cfg, engine=ScriptedEngine(SCRIPTS))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["loop"]["initial_programs"] == 8 and saved["data"]["task_ids"] == TASK_IDS
    assert cfg.run.tasks_in_flight == 0 and saved["run"]["tasks_in_flight"] == 1  # auto, recorded as chosen
    resolved = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, tasks_in_flight=1))
    assert SolveConfig(**{name: type(getattr(cfg, name))(**value) for name, value in saved.items()}) == resolved


def test_tasks_in_flight_auto_fills_a_decode_step_and_is_recorded(tmp_path, dataset, capsys):
    from arcsl.workers import auto_tasks_in_flight

    assert auto_tasks_in_flight(64, 128, 400, 1) == 2 and auto_tasks_in_flight(16, 64, 8, 1) == 4
    assert auto_tasks_in_flight(64, 128, 400, 4) == 2 and auto_tasks_in_flight(8, 128, 5, 2) == 3  # a share each
    assert auto_tasks_in_flight(256, 128, 400, 1) == 1
    solve(config(tmp_path, dataset, loop=dict(max_rounds=0, programs_per_round=16)),
          engine=ScriptedEngine(SCRIPTS, num_adapters=4))  # 64 rows on a CPU engine: 4, but there are 2 tasks
    assert json.loads((tmp_path / "run" / "config.json").read_text())["run"]["tasks_in_flight"] == 2
    assert "2 tasks from " in capsys.readouterr().err.split(", 2 in flight\n")[0]  # the start says the figure


# --- resume and failures ------------------------------------------------------------------------

def test_resume_skips_finished_tasks(tmp_path, dataset):
    solve(config(tmp_path, dataset), engine=ScriptedEngine(SCRIPTS))
    engine = ScriptedEngine(SCRIPTS)
    summary = solve(config(tmp_path, dataset, resume=True), engine=engine)
    assert summary.num_skipped == 2 and summary.num_finished == 0 and engine.sampled == []


def test_resume_with_settings_that_change_results_is_refused_before_anything_is_written(tmp_path, dataset):
    killed = ScriptedEngine(SCRIPTS, failures={("finetune", 1): KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        solve(config(tmp_path, dataset), engine=killed)
    written = (tmp_path / "run" / "config.json").read_text()
    changed = config(tmp_path, dataset, loop=dict(max_rounds=3, seed=1), resume=True)
    with pytest.raises(ValueError, match=r"loop.max_rounds: 1 -> 3; loop.seed: 0 -> 1\. Resume with the run's"):
        solve(changed, engine=ScriptedEngine(SCRIPTS))
    assert (tmp_path / "run" / "config.json").read_text() == written
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        assert len(store.runs()) == 1 and store.task_status("3c9b0459") == "running"
    # what does not change a task's results may change: the deadline, the workers, the progress display...
    same = config(tmp_path, dataset, resume=True, deadline_s=1e6, deadline_margin_s=5.0, progress=True)
    summary = solve(dataclasses.replace(same, sandbox=SandboxConfig(sandbox_workers=1, timeout_s=2.0)),
                    engine=ScriptedEngine(SCRIPTS))
    assert summary.num_skipped == 1 and summary.num_finished == 1


def test_resume_starts_an_interrupted_task_over(tmp_path, dataset, tasks):
    killed = ScriptedEngine(SCRIPTS, failures={("finetune", 1): KeyboardInterrupt()})  # in the second task's round 1
    with pytest.raises(KeyboardInterrupt):
        solve(config(tmp_path, dataset), engine=killed)
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        assert store.task_status("c59eb873") == "finished" and store.task_status("3c9b0459") == "running"
    submission(tmp_path, tasks)  # the killed run left a valid submission
    engine = ScriptedEngine(SCRIPTS)
    summary = solve(config(tmp_path, dataset, resume=True), engine=engine)
    assert summary.num_skipped == 1 and summary.num_finished == 1 and engine.num_resets == 1
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        assert len(store.attempts("3c9b0459")) == 8 + 8  # the interrupted run's 8 attempts are gone
        assert store.finished_task_ids() == set(TASK_IDS)


def test_existing_run_without_resume_is_refused(tmp_path, dataset):
    solve(config(tmp_path, dataset), engine=ScriptedEngine(SCRIPTS))
    with pytest.raises(ValueError, match="--resume"):
        solve(config(tmp_path, dataset), engine=ScriptedEngine(SCRIPTS))


def test_a_failed_task_keeps_the_answers_of_its_attempts_and_the_run_goes_on(tmp_path, dataset, tasks, capsys):
    # c59eb873 fails at its first search (no attempt); 3c9b0459 fails at its fine-tuning, after a search that solved it
    engine = ScriptedEngine(SCRIPTS, failures={("sample", 0): RuntimeError("GPU fell off"),
                                               ("finetune", 0): RuntimeError("out of memory")})
    summary = solve(config(tmp_path, dataset), engine=engine)
    assert summary.num_finished == 0 and capsys.readouterr().err.count("failed: RuntimeError") == 2
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        assert store.task_status("c59eb873") == "running"  # nothing to answer with: --resume tries it again
        assert store.task_status("3c9b0459") == "finished"
    answers = read_submission(tmp_path / "run" / "submission.json")
    assert np.array_equal(answers["3c9b0459"][0][0], tasks[1].test[0].output)
    fallback = prediction_grids(select_attempts(tasks[0], []))
    assert all(np.array_equal(a, b) for a, b in zip(answers["c59eb873"][0], fallback[0]))


# --- task order and progress --------------------------------------------------------------------

def test_sort_large_first_solves_the_largest_task_first(tmp_path, dataset):
    engine = ScriptedEngine(SCRIPTS)  # the directory lists 3c9b0459 first; c59eb873 has more cells
    solve(config(tmp_path, dataset, sort="large-first", loop=dict(max_rounds=0)), engine=engine)
    shown = [p.messages[-1]["content"].count("\nExample ") for p in engine.prompts]
    assert shown == [3, 3, 4, 4]  # c59eb873's views (3 train pairs), then 3c9b0459's (4)


def test_the_progress_line_fits_80_columns_with_many_tasks_in_flight():
    from tqdm import tqdm

    postfix = status_text(64, 123, "round 31 relabelling")
    line = tqdm.format_meter(399, 400, 40_000.0, ncols=80, bar_format=BAR_FORMAT, postfix=postfix)
    assert len(line) <= 80 and "399/400 tasks" in line and "64 in flight, 123 solved, round 31 relabelling" in line


def test_progress_shows_a_bar_over_tasks_with_the_phase_or_nothing(tmp_path, dataset, capsys):
    solve(config(tmp_path, dataset, progress=True), engine=ScriptedEngine(SCRIPTS))
    shown = capsys.readouterr().err
    assert "2/2 tasks" in shown and "1 in flight, 1 solved, round 1 execution" in shown
    assert "c59eb873: max-rounds after 2 rounds, best train 1.00, test 1.00" in shown  # a line per finished task
    solve(config(tmp_path / "quiet", dataset, loop=dict(max_rounds=0)), engine=ScriptedEngine(SCRIPTS))
    shown = capsys.readouterr().err
    assert "2/2" not in shown and "c59eb873: " not in shown


def test_the_start_says_what_runs_where_in_a_few_lines(tmp_path, dataset, capsys):
    solve(config(tmp_path, dataset, loop=dict(max_rounds=0)), engine=ScriptedEngine(SCRIPTS))
    start = capsys.readouterr().err.split("\n")[:4]
    assert start[0] == f"arcsl solve: 2 tasks from {dataset}"
    assert start[3] == f"  output: {tmp_path / 'run'} (settings in {tmp_path / 'run' / 'config.json'})"
    assert all(len(line) < 200 for line in start)


def test_wandb_logs_every_task_and_the_mean(tmp_path, dataset, monkeypatch):
    logged, summary = [], {}
    run = types.SimpleNamespace(log=logged.append, summary=summary, finish=lambda: logged.append("finished"))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kwargs: run))
    solve(config(tmp_path, dataset, wandb=True, loop=dict(max_rounds=0)), engine=ScriptedEngine(SCRIPTS))
    assert [entry["task"] for entry in logged[:-1]] == [0, 1] and logged[-1] == "finished"
    assert summary["mean/solved_at_2"] == 1.0
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ValueError, match="pip install"):
        solve(config(tmp_path / "again", dataset, wandb=True), engine=ScriptedEngine(SCRIPTS))


# --- the deadline -------------------------------------------------------------------------------

@pytest.fixture
def given(monkeypatch) -> list[int]:
    """The max_rounds each task was started with, in start order (a spy on the driver's `start_run`)."""
    seen = []

    def spy(*args, **kwargs):
        run = start_run(*args, **kwargs)
        seen.append(run.max_rounds)
        return run

    monkeypatch.setattr(arcsl.loop, "start_run", spy)
    return seen


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """The clock of the loop, the planner and solve, made fake: time passes only while the scripted engine works."""
    fake = FakeClock()
    for module in (arcsl.loop, arcsl.scheduler, arcsl.solve):
        monkeypatch.setattr(module, "time", fake)
    return fake


def planner(deadline_s: float, searches: tuple[float, ...] = (), margin_s: float = 0.0) -> DeadlinePlanner:
    p = DeadlinePlanner(deadline_s, margin_s)
    for seconds in searches:
        p.observe(RoundStats(0, 8, 0, 0, 0.0, {"sampling": seconds * 0.75, "execution": seconds * 0.25}))
    return p


def test_without_a_deadline_every_task_starts_and_learns(clock):
    p = planner(-1, searches=(100.0,))
    clock.advance(1e9)
    assert p.may_start() and p.may_learn(1000) and p.task_deadline(1000) is None


def test_deadline_margin_s_is_kept_free_before_the_deadline(clock):
    assert planner(1000.0, margin_s=60.0).deadline == clock.now + 940.0


def test_learning_is_allowed_while_the_time_left_covers_a_search_for_each_remaining_task(clock):
    p = planner(1000.0, searches=(80.0, 120.0))
    p.observe(RoundStats(1, 8, 5, 0, 0.0, {"finetuning": 500.0}))  # a learning round says nothing of a search
    assert p.search_s == 100.0
    assert p.may_learn(9)  # 1000 s left: its search and a learning round, then 8 more searches
    assert not p.may_learn(10)
    clock.advance(1.0)
    assert not p.may_learn(9)


def test_the_task_deadline_keeps_one_search_for_each_later_task(clock):
    p = planner(1000.0, searches=(100.0,))
    assert p.task_deadline(1) == p.deadline
    assert p.task_deadline(4) == p.deadline - 300.0


def test_before_any_search_is_seen_a_task_may_learn_until_its_own_search_shows_the_cost(clock):
    p = planner(1000.0)
    assert p.may_learn(100) and p.task_deadline(100) == p.deadline
    p.observe(RoundStats(0, 8, 0, 0, 0.0, {"sampling": 100.0}))  # what solve does after the task's round 0
    assert p.task_deadline(100) == p.deadline - 9900.0


def test_no_task_starts_when_its_search_would_end_after_the_deadline(clock):
    p = planner(1000.0, searches=(100.0,))
    clock.advance(899.0)
    assert p.may_start()
    clock.advance(1.0)
    assert not p.may_start()


@pytest.mark.parametrize("deadline_s, rounds, max_rounds", [
    (10_000.0, [4, 4], [3, 3]),  # time for everything
    (450.0, [3, 1], [3, 0]),     # the first task stops before a round that would eat the second's search,
                                 # which gets search only
    (150.0, [1, 0], [3]),        # the first task searches once; the second is never started
])
def test_deadline_s_shares_the_run_time_and_the_submission_is_always_complete(
        tmp_path, dataset, tasks, clock, given, deadline_s, rounds, max_rounds):
    started = clock.now
    engine = ScriptedEngine(SCRIPTS, clock=clock, sample_s=100.0)  # every search takes 100 s, nothing else takes time
    summary = solve(config(tmp_path, dataset, loop=dict(max_rounds=3, stop="never"), deadline_s=deadline_s,
                           deadline_margin_s=0.0), engine=engine)
    assert list(rounds_per_task(tmp_path).values()) == rounds and given == max_rounds
    assert clock.now - started <= deadline_s
    assert summary.num_finished == sum(r > 0 for r in rounds)
    answers = submission(tmp_path, tasks)
    if rounds[1] == 0:  # never reached: the documented fallback
        fallback = prediction_grids(select_attempts(tasks[1], []))
        assert answers["3c9b0459"] == [{"attempt_1": fallback[0][0].tolist(), "attempt_2": fallback[0][1].tolist()}]


# --- tasks in flight ----------------------------------------------------------------------------

# solved at once by the scripts: c59eb873 (SCALE_2), 3c9b0459 and 6150a2bd (ROTATE_180); never: 74dd1130, a416b8f3
FIVE_IDS = ["c59eb873", "74dd1130", "6150a2bd", "3c9b0459", "a416b8f3"]
FIVE_SCRIPTS = SCRIPTS | {2: [ROTATE_180, IDENTITY]}  # with 4 samples per view, every view gets every script


@pytest.fixture(scope="module")
def five_dataset(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("five")
    for t in select_tasks(load_tasks("arc-agi-1/training").tasks, FIVE_IDS):
        (path / f"{t.id}.json").write_text(json.dumps(task_to_json(t)))
    return str(path)


def in_flight_config(tmp_path, dataset: str, task_ids: list[str], tasks_in_flight: int, run: dict | None = None,
                     **loop) -> SolveConfig:
    cfg = config(tmp_path, dataset, loop=loop, **(dict(tasks_in_flight=tasks_in_flight) | (run or {})))
    return dataclasses.replace(cfg, data=DataConfig(dataset=dataset, task_ids=task_ids))


def stored_results(tmp_path) -> dict[str, tuple]:
    """Every task's scores (rounded: their sums follow the order of the attempts) and attempts (as sortable
    texts, without timings: the order of a view's samples follows the sampling call's seed)."""
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        scores = {s.task_id: {k: round(v, 12) if isinstance(v, float) else v for k, v in dataclasses.asdict(s).items()}
                  for s in store.task_scores()}
        return {task_id: (scores[task_id], sorted(repr((a.round, a.augmentation, a.prompt_hash, a.response, a.program,
                                                        a.error, a.scores)) for a in store.attempts(task_id)))
                for task_id in FIVE_IDS}


@pytest.mark.parametrize("tasks_in_flight", [2, 3])
def test_a_task_in_flight_gets_the_attempts_it_gets_alone(tmp_path, five_dataset, tasks_in_flight):
    alone = solve(in_flight_config(tmp_path / "alone", five_dataset, FIVE_IDS, 1, stop="one-solution", max_rounds=2),
                  engine=ScriptedEngine(FIVE_SCRIPTS))
    engine = ScriptedEngine(FIVE_SCRIPTS, num_adapters=tasks_in_flight)
    together = solve(in_flight_config(tmp_path / "together", five_dataset, FIVE_IDS, tasks_in_flight,
                                      stop="one-solution", max_rounds=2), engine=engine)
    assert stored_results(tmp_path / "together") == stored_results(tmp_path / "alone")
    assert alone.num_finished == together.num_finished == 5
    assert (tmp_path / "together" / "run" / "submission.json").read_text() == \
        (tmp_path / "alone" / "run" / "submission.json").read_text()
    assert max(len(a) for a in engine.sampled_adapters) > 2  # tasks did share sampling calls


def test_a_task_that_stops_hands_its_adapter_to_the_next_task_at_once(tmp_path, five_dataset):
    engine = ScriptedEngine(FIVE_SCRIPTS, num_adapters=2)
    solve(in_flight_config(tmp_path, five_dataset, FIVE_IDS[:3], 2, stop="one-solution", max_rounds=2), engine=engine)
    # c59eb873 (adapter 0) is solved in round 0; 6150a2bd takes adapter 0 for its round 0 beside 74dd1130's round 1
    assert engine.sampled_adapters == [[0, 0, 1, 1], [1, 1, 0, 0], [1, 1]]
    assert engine.reset_adapters == [0, 1, 0] and set(engine.finetuned_adapters) == {1}
    assert rounds_per_task(tmp_path, FIVE_IDS[:3]) == {"c59eb873": 1, "74dd1130": 3, "6150a2bd": 1}


def test_resume_starts_the_interrupted_tasks_in_flight_over(tmp_path, dataset, tasks):
    killed = ScriptedEngine(SCRIPTS, num_adapters=2, failures={("finetune", 1): KeyboardInterrupt()})  # round 1
    with pytest.raises(KeyboardInterrupt):
        solve(config(tmp_path, dataset, tasks_in_flight=2), engine=killed)
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        assert [store.task_status(t) for t in TASK_IDS] == ["running", "running"]
        assert [len(store.attempts(t)) for t in TASK_IDS] == [8, 8]
    submission(tmp_path, tasks)
    engine = ScriptedEngine(SCRIPTS, num_adapters=2)
    summary = solve(config(tmp_path, dataset, resume=True, tasks_in_flight=2), engine=engine)
    assert summary.num_skipped == 0 and summary.num_finished == 2 and engine.reset_adapters == [0, 1]
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        assert [len(store.attempts(t)) for t in TASK_IDS] == [16, 16] and store.finished_task_ids() == set(TASK_IDS)


def test_a_failed_round_fails_its_tasks_in_flight_and_the_next_tasks_go_on(tmp_path, five_dataset, capsys):
    engine = ScriptedEngine(FIVE_SCRIPTS, num_adapters=2, failures={("sample", 0): RuntimeError("GPU fell off")})
    summary = solve(in_flight_config(tmp_path, five_dataset, FIVE_IDS[:3], 2, max_rounds=0), engine=engine)
    assert capsys.readouterr().err.count("failed: RuntimeError") == 2 and summary.num_finished == 1
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        assert store.finished_task_ids() == {"6150a2bd"}


def test_an_engine_with_fewer_adapters_than_tasks_in_flight_is_refused_before_anything_is_written(tmp_path, dataset):
    with pytest.raises(ValueError, match="--tasks-in-flight 3 .* one LoRA adapter per task .* num_adapters=2"):
        solve(config(tmp_path, dataset, tasks_in_flight=3), engine=ScriptedEngine(SCRIPTS, num_adapters=2))
    assert not (tmp_path / "run").exists()


def test_a_task_group_fine_tunes_once_a_round_and_shares_its_time(tmp_path, dataset, clock):
    started = clock.now
    engine = ScriptedEngine(SCRIPTS, clock=clock, sample_s=100.0, finetune_s=10.0, num_adapters=1)
    cfg = config(tmp_path, dataset, tasks_in_flight=2, loop=dict(max_rounds=1, stop="never", task_group_size=2))
    assert engine_config(cfg).num_adapters == 1  # what a worker loads: one adapter per group
    solve(cfg, engine=engine)
    assert clock.now - started == 2 * 100.0 + 10.0 and engine.finetuned_adapters == [0]  # one call for both
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        finetuning = [t.seconds for t in store.phase_timings() if t.phase == "finetuning" and t.round == 1]
    assert finetuning == pytest.approx([5.0, 5.0])  # each task's share of the group's call


def test_tasks_in_flight_share_each_rounds_time_so_their_timings_add_up_to_the_wall_time(tmp_path, dataset, clock):
    started = clock.now
    engine = ScriptedEngine(SCRIPTS, clock=clock, sample_s=100.0, finetune_s=10.0, num_adapters=2)
    solve(config(tmp_path, dataset, tasks_in_flight=2, loop=dict(max_rounds=1, stop="never")), engine=engine)
    with open_store(tmp_path / "run" / "results.sqlite", resume=True) as store:
        timings = store.phase_timings()
    assert clock.now - started == 2 * 100.0 + 2 * 10.0  # two shared rounds, a fine-tuning each in round 1
    assert sum(t.seconds for t in timings) == clock.now - started
    by = {(t.task_id, t.round, t.phase): t.seconds for t in timings}
    assert all(by[task_id, r, "sampling"] == 50.0 for task_id in TASK_IDS for r in (0, 1))  # half of each call
    assert all(by[task_id, 1, "finetuning"] == 10.0 for task_id in TASK_IDS)  # its own


def test_tasks_in_flight_search_that_many_tasks_in_one_sampling_call_each_in_its_own_adapter(tmp_path, dataset,
                                                                                              capsys):
    engine = ScriptedEngine(SCRIPTS, num_adapters=2)
    solve(config(tmp_path, dataset, progress=True, tasks_in_flight=2, loop=dict(stop="never")), engine=engine)
    assert engine.sampled_adapters == [[0, 0, 1, 1], [0, 0, 1, 1]]  # a round: both tasks' 2 views, in one call
    assert engine.reset_adapters == [0, 1] and engine.finetuned_adapters == [0, 1]
    shown = capsys.readouterr().err
    assert "2 tasks from" in shown and "2 in flight, 0 solved, round 1 execution" in shown


@pytest.mark.parametrize("deadline_s, rounds, max_rounds", [
    (10_000.0, [4, 4, 4], [3, 3, 3]),  # time for everything: the third task runs alone after the first two
    (350.0, [2, 2, 1], [3, 3, 0]),     # the first two stop before a round that would eat the third's search,
                                       # which gets search only
    (150.0, [1, 1, 0], [3, 3]),        # the first two search once; the third is never started
])
def test_the_deadline_holds_with_tasks_in_flight(tmp_path, five_dataset, clock, given, deadline_s, rounds,
                                                 max_rounds):
    started = clock.now
    engine = ScriptedEngine(FIVE_SCRIPTS, clock=clock, sample_s=100.0, num_adapters=2)  # a round: 100 s
    task_ids = ["c59eb873", "3c9b0459", "74dd1130"]
    summary = solve(in_flight_config(tmp_path, five_dataset, task_ids, 2, max_rounds=3, stop="never",
                                     run=dict(deadline_s=deadline_s, deadline_margin_s=0.0)), engine=engine)
    assert list(rounds_per_task(tmp_path, task_ids).values()) == rounds and given == max_rounds
    assert clock.now - started <= deadline_s
    assert summary.num_finished == sum(r > 0 for r in rounds)


@pytest.mark.parametrize("deadline_s", [5.0, 60.0, 75.0, 200.0])
def test_the_deadline_holds_with_tasks_in_flight_whose_fine_tuning_takes_time(tmp_path, five_dataset, clock,
                                                                            deadline_s):
    # 4 tasks in flight, a search of 10 s and 20 s of fine-tuning per task: a learning round takes 90 s,
    # 9 times the search round before it (the round that ran 19 s past a 20 s deadline on the demo); with 5 s,
    # the first search itself does not fit
    started = clock.now
    engine = ScriptedEngine(FIVE_SCRIPTS, clock=clock, sample_s=10.0, finetune_s=20.0, num_adapters=4)
    solve(in_flight_config(tmp_path, five_dataset, FIVE_IDS, 4, max_rounds=3, stop="never",
                           run=dict(deadline_s=deadline_s, deadline_margin_s=0.0)), engine=engine)
    assert clock.now - started <= deadline_s + max(engine.step_s, default=0.0)  # late by a fine-tuning step at most
    assert sum(rounds_per_task(tmp_path, FIVE_IDS).values()) >= 4 + (deadline_s >= 75)  # the time was used


def test_every_flag_the_readme_names_for_solve_exists(capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Search and learn: `arcsl solve`")[1].split("\n## ")[0]
    with pytest.raises(SystemExit):
        main(["solve", "--help"])
    flag = r"(?<![\w-])--[a-z][a-z0-9-]*"
    named, known = set(re.findall(flag, section)), set(re.findall(flag, capsys.readouterr().out))
    assert named and named <= known, sorted(named - known)


SETTING_TESTS = {  # RunConfig field -> the test that shows it does what its help says
    "output_dir": test_solve_writes_a_submission_that_scores_100_percent,
    "resume": test_resume_starts_an_interrupted_task_over,
    "deadline_s": test_deadline_s_shares_the_run_time_and_the_submission_is_always_complete,
    "deadline_margin_s": test_deadline_margin_s_is_kept_free_before_the_deadline,
    "workers": test_workers.test_two_workers_give_the_results_of_one_and_repeat_exactly,
    "ray_address": test_workers.test_ray_actors_run_the_same_workers_on_a_local_cluster,
    "tasks_in_flight": test_tasks_in_flight_search_that_many_tasks_in_one_sampling_call_each_in_its_own_adapter,
    "progress": test_progress_shows_a_bar_over_tasks_with_the_phase_or_nothing,
    "wandb": test_wandb_logs_every_task_and_the_mean,
}


def test_every_run_setting_has_a_test():
    assert set(SETTING_TESTS) == {f.name for f in dataclasses.fields(RunConfig)}


# --- refinement ---------------------------------------------------------------------------------

REFINE_SCRIPTS = {3: [IDENTITY, CRASH], 4: [IDENTITY, NO_CODE]}  # fresh samples never solve
REFINED = {3: [SCALE_2, CRASH], 4: [ROTATE_180, IDENTITY]}      # refinements do


def refine_config(tmp_path, dataset, **run):
    return config(tmp_path, dataset, loop=dict(max_rounds=2, refine_programs=4, task_group_size=2, stop="never"),
                  tasks_in_flight=2, **run)


def lineage(out: Path) -> dict[str, list]:
    with open_store(out / "results.sqlite", resume=True) as store:
        return {t: [(a.key, a.parent, a.round, a.prompt_hash, a.response, a.error) for a in store.attempts(t)]
                for t in TASK_IDS}


def test_refinement_runs_with_task_groups_and_a_deadline_and_reports_what_it_did(tmp_path, dataset, capsys):
    solve(refine_config(tmp_path, dataset, deadline_s=3600.0),
          engine=ScriptedEngine(REFINE_SCRIPTS, REFINED, num_adapters=1))
    import csv
    # c59eb873: the identity is refined in round 1, the crash in round 2; 3c9b0459: the identity in round 1, and
    # in round 2 nothing is left to refine (the identity's one refinement is spent, the rest have no program)
    children = {t: [(key, parent) for key, parent, *_ in attempts if parent is not None]
                for t, attempts in lineage(tmp_path / "run").items()}
    assert {t: len(c) for t, c in children.items()} == {"c59eb873": 8, "3c9b0459": 4}
    keys = {t: {key for key, *_ in attempts} for t, attempts in lineage(tmp_path / "run").items()}
    assert all(parent in keys[t] for t, c in children.items() for _, parent in c)
    rows = {r["task_id"]: r for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open())}
    assert [(rows[t]["num_refined"], rows[t]["solved_by_refinement"]) for t in TASK_IDS] == [("8", "1"), ("4", "1")]
    assert "first solved by a refinement" in (tmp_path / "run" / "report.html").read_text()
    assert "refinement: 12 attempts refined a parent" in capsys.readouterr().out


def test_a_resumed_run_with_refinement_gives_the_uninterrupted_runs_attempts(tmp_path, dataset):
    solve(refine_config(tmp_path / "whole", dataset), engine=ScriptedEngine(REFINE_SCRIPTS, REFINED, num_adapters=1))
    killed = ScriptedEngine(REFINE_SCRIPTS, REFINED, num_adapters=1, failures={("finetune", 1): KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        solve(refine_config(tmp_path / "cut", dataset), engine=killed)
    solve(refine_config(tmp_path / "cut", dataset, resume=True),
          engine=ScriptedEngine(REFINE_SCRIPTS, REFINED, num_adapters=1))
    assert lineage(tmp_path / "cut" / "run") == lineage(tmp_path / "whole" / "run")


def test_refinement_with_a_format_without_refine_prompts_is_refused_before_anything_is_written(tmp_path, dataset):
    cfg = refine_config(tmp_path, dataset)
    plain = dataclasses.replace(prompt_format("barc"), refine=None)
    with pytest.raises(ValueError, match="--refine-programs 4: the prompt format 'barc' has no refine prompt"):
        arcsl.solve.solve(cfg, plain, engine=ScriptedEngine(REFINE_SCRIPTS))
    assert not (tmp_path / "run").exists()


def test_arcsl_finetune_learns_a_runs_refinements_as_refine_prompts_unless_refine_examples_is_0(tmp_path, dataset):
    from arcsl.catalog import PROMPT_FORMATS
    from arcsl.config import OfflineConfig, RelabelConfig
    from arcsl.offline import examples_from_runs

    solve(refine_config(tmp_path, dataset), engine=ScriptedEngine(REFINE_SCRIPTS, REFINED, num_adapters=1))
    offline = OfflineConfig(from_run=[str(tmp_path / "run")], examples_per_task=-1)

    def refine_prompts(relabel: RelabelConfig) -> int:
        examples, _, _ = examples_from_runs(offline.from_run, offline, relabel, PROMPT_FORMATS)
        return sum("Here is a Python program" in p.messages[-1]["content"] for p, _ in examples)

    assert refine_prompts(RelabelConfig()) >= 2  # a refinement that changed the outputs, per task
    assert refine_prompts(RelabelConfig(refine_examples=1)) == 2
    assert refine_prompts(RelabelConfig(refine_examples=0)) == 0
