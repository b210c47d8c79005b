"""Does refinement help, and does learning it in hindsight matter? Four arms at the same number of programs per
task, on the demo's tasks and on freshly generated out-of-distribution tasks, over several seeds.

    python -m arcsl.toy.refine_experiment --seeds 0 1 2 --output-dir out/toy-refine

Per seed and task set, the demo's settings (`demo.demo_config`: 16 programs, then 7 rounds of fine-tuning and 16
more; 128 programs per task) in four arms:
- search alone: 128 programs from the shipped model;
- search-and-learn: the demo's;
- + refinement: search-and-learn where each round after the first spends `--refine-programs` of its 16 programs
  on refining the task's best attempts so far (arcsl/refine.py), and learns its refinements in hindsight;
- + refinement, not learnt: the same, with `--refine-examples 0` (refinements are sampled, and trained on as
  ordinary relabelled attempts, but never as refinements).
Task sets: `demo` (the 8 tasks of `toy/demo`) and `fresh` (8 random programs of 8-11 calls on noisy 10 x 10
canvases, two per number of calls, from generator seeds 1000 + the seed and 2000 + the seed: a new set per seed,
never tuned on).
A task is solved when one program is exact on every train and test grid (the oracle); the table also counts the
solved tasks whose two submitted answers (pass@2) miss, which the selection must avoid. Writes
OUTPUT_DIR/results.md and each arm's run folder; an arm already finished (its results store has every task) is
not run again.

    python -m arcsl.toy.refine_experiment --probe

The refiner alone, without search or learning: for tasks of 3, 5 and 7 calls (10 per number, generator seed 7)
the parent is the task's program without its last call, shown with what it drew; 8 refinements each from the
shipped model at the demo's sampling settings, and 8 fresh samples from the plain prompt for comparison; prints
how many of each are exact on the train pairs, and how many refinements copy the parent unchanged.
"""

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from arcsl.config import DataConfig, SolveConfig
from arcsl.grids import task_to_json
from arcsl.toy.demo import DEMO_DATASET, demo_config, random_tasks, search_only

ARMS = ("search alone", "search-and-learn", "+ refinement", "+ refinement, not learnt")
FRESH_CALLS = (8, 9, 10, 11)
NUM_TASKS = 8  # in either task set


@dataclass(frozen=True, slots=True)
class ArmOutcome:
    solved: list[str]        # tasks with one program exact on train and test
    missed_at_2: list[str]   # solved tasks whose two submitted answers are both wrong


def fresh_tasks_file(seed: int, out: Path) -> Path:
    """The seed's fresh out-of-distribution tasks, written as a dataset file."""
    tasks = random_tasks(1000 + seed, FRESH_CALLS, "a") + random_tasks(2000 + seed, FRESH_CALLS, "b")
    path = out / "fresh_tasks.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({t.task.id: task_to_json(t.task) | {"program": t.program} for t in tasks}))
    return path


def arm_configs(cfg: SolveConfig, refine_programs: int) -> dict[str, SolveConfig]:
    refining = replace(cfg, loop=replace(cfg.loop, refine_programs=refine_programs))
    return {"search alone": search_only(cfg), "search-and-learn": cfg, "+ refinement": refining,
            "+ refinement, not learnt": replace(refining, relabel=replace(cfg.relabel, refine_examples=0))}


def run_arm(cfg: SolveConfig, output_dir: Path, num_tasks: int) -> ArmOutcome:
    from arcsl.catalog import prompt_format
    from arcsl.solve import solve
    from arcsl.store import open_store

    store_file = output_dir / "results.sqlite"
    done = False
    if store_file.exists():
        with open_store(store_file, resume=True) as store:
            done = len(store.finished_task_ids()) == num_tasks
    if not done:
        solve(replace(cfg, run=replace(cfg.run, output_dir=str(output_dir), resume=store_file.exists())),
              prompt_format(cfg.loop.prompt_format))
    with open_store(store_file, resume=True) as store:
        scores = store.task_scores()
    solved = sorted(s.task_id for s in scores if s.oracle_pass_at_n)
    return ArmOutcome(solved, sorted(s.task_id for s in scores if s.oracle_pass_at_n and not s.solved_at_2))


def run_seed(seed: int, task_set: str, out: Path, refine_programs: int) -> dict[str, ArmOutcome]:
    from arcsl.catalog import resolve_dataset

    cfg = demo_config()
    dataset = DEMO_DATASET if task_set == "demo" else str(fresh_tasks_file(seed, out))
    cfg = replace(cfg, data=resolve_dataset(DataConfig(dataset=dataset)),
                  loop=replace(cfg.loop, seed=seed), run=replace(cfg.run, progress=False))
    outcomes = {name: run_arm(arm, out / name.replace(" ", "_").replace(",", "").replace("+", "plus"), NUM_TASKS)
                for name, arm in arm_configs(cfg, refine_programs).items()}
    (out / "outcomes.json").write_text(json.dumps({k: [v.solved, v.missed_at_2] for k, v in outcomes.items()}))
    return outcomes


def table(results: dict[tuple[str, int], dict[str, ArmOutcome]]) -> str:
    """Markdown: per task set and seed, each arm's solved tasks; totals per task set; pass@2 misses."""
    lines = ["| tasks | seed | " + " | ".join(ARMS) + " |", "|---" * (len(ARMS) + 2) + "|"]
    for (task_set, seed), arms in results.items():
        lines.append(f"| {task_set} | {seed} | " + " | ".join(
            f"{len(arms[a].solved)} ({', '.join(arms[a].solved) or '-'})" for a in ARMS) + " |")
    for task_set in dict.fromkeys(k[0] for k in results):
        rows = [arms for (s, _), arms in results.items() if s == task_set]
        lines.append(f"| **{task_set}, total** | | " + " | ".join(
            f"**{sum(len(r[a].solved) for r in rows)}**" for a in ARMS) + " |")
    missed = sorted({t for arms in results.values() for a in ARMS for t in arms[a].missed_at_2})
    lines.append("")
    lines.append(f"Solved tasks whose two submitted answers both missed: {', '.join(missed) or 'none'}.")
    return "\n".join(lines)


def probe_refiner(calls: tuple[int, ...] = (3, 5, 7), num_tasks: int = 10) -> dict[int, tuple[int, int, int, int]]:
    """calls -> (refinements exact on train, refinements that copy the parent, fresh samples exact on train, samples
    of each kind) from the shipped model."""
    import numpy as np

    from arcsl.engine.hf import load_engine
    from arcsl.toy.config import TaskConfig
    from arcsl.toy.prompt import refine_prompt, task_prompt
    from arcsl.toy.tasks import apply_calls, generate_tasks, parse_program, program_text, run_calls
    from arcsl.workers import engine_config

    cfg = demo_config()
    engine = load_engine(engine_config(cfg))
    def drawn_calls(text: str, task) -> tuple[list | None, bool]:
        try:
            drawn = parse_program(text)
            outputs = [apply_calls(p.input, drawn) for p in task.train]
        except ValueError:  # not a program of the generator's form, or a call the DSL refuses
            return None, False
        return drawn, all(np.array_equal(o, p.output) for o, p in zip(outputs, task.train))

    results, sampling = {}, replace(cfg.sampling, num_samples=8)
    for n in calls:
        exact = copies = fresh = total = 0
        for toy in generate_tasks(7, num_tasks, n, TaskConfig()):
            parent = parse_program(toy.program)[:-1]
            prompt = refine_prompt(toy.task, program_text(parent), run_calls(parent, [p.input for p in toy.task.train]))
            refined, plain = engine.sample([prompt, task_prompt(toy.task)], sampling, seed=[0, 1]).completions
            for c in refined:
                drawn, is_exact = drawn_calls(c.text, toy.task)
                exact, copies = exact + is_exact, copies + (drawn == parent)
            fresh += sum(drawn_calls(c.text, toy.task)[1] for c in plain)
            total += len(refined)
        results[n] = (exact, copies, fresh, total)
        print(f"{n} calls, the last one missing: {exact} of {total} refinements exact ({copies} copy the parent); "
              f"{fresh} of {total} fresh samples exact", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--task-sets", nargs="+", choices=["demo", "fresh"], default=["demo", "fresh"])
    parser.add_argument("--refine-programs", type=int, default=8,
                        help="programs of each later round that refine (of the demo's 16)")
    parser.add_argument("--output-dir", default="out/toy-refine")
    parser.add_argument("--probe", action="store_true", help="only the refiner's accuracy by number of calls")
    args = parser.parse_args(argv)
    if args.probe:
        probe_refiner()
        return 0
    out = Path(args.output_dir)
    results = {}
    for task_set in args.task_sets:
        for seed in args.seeds:
            results[task_set, seed] = run_seed(seed, task_set, out / task_set / f"seed-{seed}", args.refine_programs)
            text = table(results)
            (out / "results.md").write_text(text + "\n")  # what is done so far survives an interruption
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
