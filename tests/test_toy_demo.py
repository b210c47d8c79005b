"""The embedded default of `arcsl solve`: shipped tasks, the preset, the comparison of the two arms."""

import json
from dataclasses import replace

from arcsl import cli
from arcsl.config import LoopConfig
from arcsl.grids import load_tasks
from arcsl.solve import engine_config
from arcsl.toy import demo
from arcsl.toy.demo import DEMO_TASKS, compare, demo_config, demo_tasks, search_only
from tests.fakes import ScriptedEngine


def test_shipped_tasks_are_the_generated_ones(tmp_path):
    demo.write_tasks(tmp_path / "tasks.json")
    assert json.loads((tmp_path / "tasks.json").read_text()) == json.loads(DEMO_TASKS.read_text())
    loaded = load_tasks("toy/demo").tasks
    assert [t.id for t in loaded] == [t.task.id for t in demo_tasks()]
    assert all(8 <= t.num_calls <= 25 for t in demo_tasks())  # out of distribution: pretraining had 1-5


def test_the_demo_loads_one_adapter_per_task_in_flight():
    cfg = demo_config()
    assert cfg.loop.tasks_in_flight > 1 and engine_config(cfg).num_adapters == cfg.loop.tasks_in_flight


def test_search_only_has_the_same_budget():
    cfg = demo_config()
    alone = search_only(cfg)
    assert alone.loop.max_rounds == 0
    assert alone.loop.initial_predictions == cfg.loop.total_predictions == alone.loop.total_predictions


def test_solve_without_dataset_and_model_runs_the_demo_with_the_users_flags(monkeypatch):
    seen = []
    monkeypatch.setattr(demo, "compare", lambda cfg: seen.append(cfg))
    assert cli.main(["solve", "--max-rounds", "1", "--output-dir", "x"]) == 0
    (cfg,) = seen
    assert cfg.data.dataset == "toy/demo" and cfg.loop.prompt_format == "toy"
    assert cfg.model.model == str(demo.TOY_MODEL_DIR)
    assert cfg.loop.max_rounds == 1 and cfg.run.output_dir == "x"  # the user's flags win over the preset


def test_solve_with_a_dataset_keeps_the_library_defaults(monkeypatch):
    import arcsl.solve

    seen = []
    monkeypatch.setattr(arcsl.solve, "solve", lambda cfg: seen.append(cfg))
    assert cli.main(["solve", "--dataset", "arc-agi-1/evaluation"]) == 0
    assert seen[0].model.model == "barc0/Llama-3.1-ARC-Potpourri-Induction-8B"
    assert seen[0].loop == LoopConfig()


def test_compare_runs_both_arms_and_tabulates(tmp_path):
    tasks = {t.task.id: t for t in demo_tasks()}
    right = tasks["stripes-8"].program  # solves stripes-8, draws wrong stripes elsewhere
    cfg = demo_config(str(tmp_path))
    cfg = replace(cfg, data=replace(cfg.data, task_ids=["stripes-8", "frames-8"]),
                  loop=replace(cfg.loop, initial_predictions=8, predictions_per_round=8, max_rounds=1),
                  run=replace(cfg.run, progress=False))
    rows = compare(cfg, engine=ScriptedEngine({0: [right]}, num_adapters=cfg.loop.tasks_in_flight))
    assert [(a.task_id, a.solved, b.solved) for a, b in rows] == [("stripes-8", True, True), ("frames-8", False, False)]
    stripes, frames = rows
    assert stripes[1].predictions == 16 and frames[1].predictions == 16  # search alone: the whole budget at once
    assert frames[0].predictions == 16 and stripes[0].predictions == 8   # solved tasks stop early
    assert 0 < frames[0].best_train_score < 1
    table = (tmp_path / "comparison.md").read_text()
    assert "| **solved** | **1 / 2** | **1 / 2** |" in table
    for arm in ("search-and-learn", "search-only"):
        assert (tmp_path / arm / "submission.json").exists()
