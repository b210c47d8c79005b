import json

import numpy as np
import pytest

from arcsl.cli import main
from arcsl.config import (DataConfig, FinetuneConfig, LoopConfig, RelabelConfig, RunConfig, SamplingConfig,
                          SandboxConfig, SolveConfig)
from arcsl.grids import load_tasks, select_tasks
from arcsl.loop import LoopSettings, search_and_learn
from arcsl.sandbox import SandboxPool
from arcsl.solve import solve
from arcsl.store import open_store
from fakes import CRASH, IDENTITY, NO_CODE, ROTATE_180, ROTATE_180_LONG, SCALE_2, ScriptedEngine

TASK_IDS = ["c59eb873", "3c9b0459"]  # scale x2 (3 train pairs), rotate 180 (4 train pairs): both dihedral-equivariant


@pytest.fixture(scope="module")
def tasks():
    return {t.id: t for t in select_tasks(load_tasks("arc-agi-1/training").tasks, TASK_IDS)}


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(SandboxConfig(num_workers=2, timeout_s=2.0)) as p:
        yield p


def settings(**loop) -> LoopSettings:
    base = dict(initial_predictions=8, predictions_per_round=8, max_rounds=2, samples_per_view=4, stop="never")
    return LoopSettings(LoopConfig(**(base | loop)), RelabelConfig(), SamplingConfig(), FinetuneConfig())


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


def test_predictions_per_round_sets_the_number_of_programs_per_round(tasks, pool):
    engine = ScriptedEngine({3: [IDENTITY]})
    result = search_and_learn(tasks["c59eb873"], engine, pool, settings(initial_predictions=12,
                                                                        predictions_per_round=4))
    assert [r.num_predictions for r in result.rounds] == [12, 4, 4]
    assert engine.sampled == [3, 1, 1]  # views = predictions / samples_per_view
    assert len(result.attempts) == 20


def test_task_stops_early_once_two_distinct_programs_solve_it(tasks, pool):
    engine = ScriptedEngine({4: [ROTATE_180, ROTATE_180_LONG, IDENTITY, CRASH]})
    result = search_and_learn(tasks["3c9b0459"], engine, pool, settings(stop="two-solutions"))
    # both programs give the same test output, so they count as one solution: the task runs every round
    assert result.stop_reason == "max-rounds" and result.rounds[-1].num_solutions == 1
    engine = ScriptedEngine({3: [SCALE_2, IDENTITY]})
    result = search_and_learn(tasks["c59eb873"], engine, pool, settings(stop="one-solution"))
    assert result.stop_reason == "solved" and len(result.rounds) == 1


def test_solutions_survive_augmentation_and_are_selected(tasks, pool):
    engine = ScriptedEngine({4: [CRASH, IDENTITY, ROTATE_180, NO_CODE]})
    task = tasks["3c9b0459"]
    result = search_and_learn(task, engine, pool, settings(max_rounds=0, augment_colors="all"))
    correct = [a for a in result.attempts if a.program and "rot90" in a.program]
    assert correct and all(a.scores.train.is_correct and a.scores.test.is_correct for a in correct)
    assert len({a.augmentation for a in correct}) > 1  # several views, each mapped back correctly
    assert np.array_equal(result.predictions[0][0], task.test[0].output)
    assert result.scores.solved_at_2 == 1.0


def test_phase_timings_cover_the_round(tasks, pool):
    result = search_and_learn(tasks["c59eb873"], ScriptedEngine({3: [IDENTITY]}), pool, settings(max_rounds=1))
    for r in result.rounds:
        assert set(r.seconds) == {"sampling", "execution", "relabelling", "finetuning", "reset", "other"}
        assert all(v >= 0 for v in r.seconds.values())
    assert result.rounds[1].seconds["relabelling"] > 0


def _solve_config(tmp_path, **run) -> SolveConfig:
    return SolveConfig(data=DataConfig(dataset="arc-agi-1/training", task_ids=TASK_IDS),
                       loop=LoopConfig(initial_predictions=8, predictions_per_round=8, max_rounds=1, samples_per_view=4),
                       sandbox=SandboxConfig(num_workers=2, timeout_s=2.0),
                       run=RunConfig(output_dir=str(tmp_path / "run"), progress=False, **run))


SCRIPTS = {3: [SCALE_2, IDENTITY, CRASH, NO_CODE], 4: [ROTATE_180, IDENTITY, NO_CODE, CRASH]}


def test_solve_writes_a_submission_that_scores_100_percent(tmp_path, capsys):
    summary = solve(_solve_config(tmp_path), engine=ScriptedEngine(SCRIPTS))
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


def test_resume_skips_finished_tasks(tmp_path):
    solve(_solve_config(tmp_path), engine=ScriptedEngine(SCRIPTS))
    engine = ScriptedEngine(SCRIPTS)
    summary = solve(_solve_config(tmp_path, resume=True), engine=engine)
    assert summary.num_skipped == 2 and summary.num_finished == 0 and engine.sampled == []


def test_existing_run_without_resume_is_refused(tmp_path):
    solve(_solve_config(tmp_path), engine=ScriptedEngine(SCRIPTS))
    with pytest.raises(ValueError, match="--resume"):
        solve(_solve_config(tmp_path), engine=ScriptedEngine(SCRIPTS))


def test_config_is_saved_and_round_trips(tmp_path):
    cfg = _solve_config(tmp_path)
    solve(cfg, engine=ScriptedEngine(SCRIPTS))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["loop"]["initial_predictions"] == 8 and saved["data"]["task_ids"] == TASK_IDS
