"""`arcsl demo`, the embedded default: shipped tasks and model (from a wheel too), the preset, the two arms."""

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from arcsl import catalog, cli
from arcsl.config import SolveConfig
from arcsl.grids import load_tasks
from arcsl.toy import demo
from arcsl.toy.demo import DEMO_TASKS, compare, demo_config, demo_tasks, search_only
from arcsl.toy.prompt import TOY_FORMAT
from arcsl.workers import engine_config
from tests.fakes import ScriptedEngine

REPO = Path(__file__).resolve().parents[1]


def test_shipped_tasks_are_the_generated_ones(tmp_path):
    demo.write_tasks(tmp_path / "tasks.json")
    assert json.loads((tmp_path / "tasks.json").read_text()) == json.loads(DEMO_TASKS.read_text())
    loaded = load_tasks(catalog.resolve_dataset(demo_config().data).dataset).tasks
    assert [t.id for t in loaded] == [t.task.id for t in demo_tasks()]
    assert all(8 <= t.num_calls <= 25 for t in demo_tasks())  # out of distribution: pretraining had 1-5


def test_the_demo_loads_one_adapter_per_task_in_flight():
    cfg = demo_config()
    assert cfg.run.tasks_in_flight > 1 and engine_config(cfg).num_adapters == cfg.run.tasks_in_flight


def test_search_only_has_the_same_budget():
    cfg = demo_config()
    alone = search_only(cfg)
    assert alone.loop.max_rounds == 0
    assert alone.loop.initial_programs == cfg.loop.total_programs == alone.loop.total_programs


def test_demo_runs_the_preset_under_the_users_flags(monkeypatch):
    seen = []
    monkeypatch.setattr(demo, "compare", lambda cfg, fmt: seen.append((cfg, fmt)))
    assert cli.main(["demo", "--max-rounds", "1", "--output-dir", "x"]) == 0
    [(cfg, fmt)] = seen
    assert cfg.data.dataset == str(DEMO_TASKS) and fmt is TOY_FORMAT
    assert cfg.model.model == demo_config().model.model and Path(cfg.model.model).is_dir()
    assert cfg.loop.max_rounds == 1 and cfg.run.output_dir == "x"  # the user's flags win over the preset


def test_solve_without_flags_uses_the_defaults_its_help_shows(monkeypatch, capsys):
    import arcsl.solve

    seen = []
    monkeypatch.setattr(arcsl.solve, "solve", lambda cfg, fmt, started=None: seen.append(cfg))
    monkeypatch.setattr(cli.catalog, "check_model", lambda name: None)  # the hub is not reachable from tests
    assert cli.main(["solve"]) == 0
    assert seen == [SolveConfig()]
    with pytest.raises(SystemExit):
        cli.main(["solve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"(default: {SolveConfig().model.model})" in shown and "(default: arc-agi-1/evaluation)" in shown
    assert "arcsl demo" in shown  # where the CPU demo went


def test_compare_runs_both_arms_and_tabulates(tmp_path):
    tasks = {t.task.id: t for t in demo_tasks()}
    right = tasks["stripes-8"].program  # solves stripes-8, draws wrong stripes elsewhere
    cfg = demo_config(str(tmp_path))
    cfg = replace(cfg, data=catalog.resolve_dataset(replace(cfg.data, task_ids=["stripes-8", "frames-8"])),
                  loop=replace(cfg.loop, initial_programs=8, programs_per_round=8, max_rounds=1),
                  run=replace(cfg.run, progress=False))
    rows = compare(cfg, TOY_FORMAT, engine=ScriptedEngine({0: [right]}, num_adapters=cfg.run.tasks_in_flight))
    assert [(a.task_id, a.solved, b.solved) for a, b in rows] == [("stripes-8", True, True), ("frames-8", False, False)]
    stripes, frames = rows
    assert stripes[1].num_programs == 16 and frames[1].num_programs == 16  # search alone: the whole budget at once
    assert frames[0].num_programs == 16 and stripes[0].num_programs == 8   # solved tasks stop early
    assert 0 < frames[0].best_train_score < 1
    table = (tmp_path / "comparison.md").read_text()
    assert "| **solved** | **1 / 2** | **1 / 2** |" in table
    for arm in ("search-and-learn", "search-only"):
        assert (tmp_path / arm / "submission.json").exists()


def test_a_wheel_carries_the_shipped_model_and_tasks_and_runs_the_demo_outside_the_repository(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, cwd=tmp_path, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("arcsl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"arcsl/toy/demo_tasks.json", "arcsl/toy/shipped_model/model.safetensors",
            "arcsl/toy/shipped_model/tokenizer.json", "arcsl/toy/shipped_model/config.json"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    # the wheel's arcsl first on the path, the repository nowhere on it; the dependencies from this environment
    env = os.environ | {"PYTHONPATH": str(site)}
    script = ("import sys, arcsl; print(arcsl.__file__); from arcsl.cli import main; sys.exit(main(["
              "'demo', '--task-ids', 'stripes-8', '--initial-programs', '8', '--programs-per-round', '8', "
              "'--max-rounds', '1', '--tasks-in-flight', '1', '--num-workers', '1', '--no-progress', "
              "'--output-dir', 'out']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(str(site / "arcsl"))
    assert "| stripes-8 |" in (tmp_path / "out" / "comparison.md").read_text()


def test_a_task_one_arm_did_not_reach_shows_as_not_reached():
    from arcsl.toy.demo import ArmResult, comparison_table

    a, b = ArmResult("a", True, 1.0, 8), ArmResult("b", False, 0.5, 16)
    table = comparison_table([(a, ArmResult("a", False, 0.2, 16)), (b, None), (None, ArmResult("c", True, 1.0, 16))])
    assert "| b | no (0.500, 16 programs) | not reached |" in table and "| c | not reached | **solved**" in table
    assert "| **solved** | **1 / 3** | **1 / 3** |" in table


def test_the_transfer_tasks_are_out_of_distribution_and_disjoint_from_the_demos():
    from arcsl.toy.offline_experiment import transfer_tasks

    tasks = transfer_tasks()
    ids = [t.task.id for t in tasks]
    assert len(set(ids)) == 8 and not set(ids) & {t.task.id for t in demo_tasks()}
    assert all(8 <= t.num_calls <= 16 for t in tasks)  # pretraining had 1-5 calls
    demo_grids = {p.input.tobytes() for t in demo_tasks() for p in t.task.train + t.task.test}
    assert not demo_grids & {p.input.tobytes() for t in tasks for p in t.task.train + t.task.test}


def test_the_refinement_experiments_fresh_sets_are_new_out_of_distribution_tasks_per_seed(tmp_path):
    from arcsl.grids import load_tasks
    from arcsl.toy.refine_experiment import ArmOutcome, arm_configs, fresh_tasks_file, table

    zero, one = (load_tasks(str(fresh_tasks_file(seed, tmp_path / str(seed)))).tasks for seed in (0, 1))
    assert len(zero) == 8 and len({t.id for t in zero}) == 8
    assert not any(a.train[0].output.tobytes() == b.train[0].output.tobytes() for a, b in zip(zero, one))
    arms = arm_configs(demo_config(), 8)
    assert arms["search alone"].loop.total_programs == arms["+ refinement"].loop.total_programs == 128
    assert arms["+ refinement"].loop.refine_programs == 8 and arms["search-and-learn"].loop.refine_programs == 0
    assert arms["+ refinement, not learnt"].relabel.refine_examples == 0
    outcome = {a: ArmOutcome(["x"], []) for a in arms}
    text = table({("demo", 0): outcome, ("demo", 1): outcome | {"search alone": ArmOutcome([], [])}})
    assert "| **demo, total** | | **1** | **2** | **2** | **2** |" in text and "both missed: none" in text
