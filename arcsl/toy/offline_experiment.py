"""The seeds' offline experiment in miniature, on the demo's toy tasks: learning across tasks against
learning per task and against search alone, at the same number of programs per task.

    python -m arcsl.toy.offline_experiment --seeds 0 1 2 --output-dir out/toy-offline

Per seed, four arms over the 8 demo tasks (the demo's settings otherwise, `demo.demo_config`):
- search-and-learn: the demo's (16 programs, then 7 rounds of fine-tuning on the task's relabelled
  attempts and 16 more programs): 128 programs per task;
- search alone: 128 programs from the shipped model;
- offline: a search of 64 programs from the shipped model, then `arcsl finetune` on all 8 tasks'
  relabelled attempts (`--examples-per-task 8 --select spread`, the demo's fine-tuning settings, 8 epochs)
  into one adapter, then a second search of 64 programs from that adapter: 128 programs per task, and a
  task counts as solved when either search solved it;
- offline, second search only: the 64 programs from the adapter (is the adapter better than the model?);
- task groups: search-and-learn with `--task-group-size K` (default 4): K tasks learn in one adapter, each
  round fine-tuning it once on all of their relabelled attempts.
Prints a table per seed and the totals, and writes them to OUTPUT_DIR/results.md.
"""

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from arcsl.config import OfflineConfig, SolveConfig
from arcsl.toy.demo import _arm_results, compare, demo_config

HALF = 64  # programs per task of each offline search


def run_arm(cfg: SolveConfig, output_dir: Path) -> dict:
    from arcsl.catalog import prompt_format
    from arcsl.solve import solve

    solve(replace(cfg, run=replace(cfg.run, output_dir=str(output_dir))), prompt_format(cfg.loop.prompt_format))
    return _arm_results(output_dir)


def search(cfg: SolveConfig, output_dir: Path, programs: int, adapter: str = "") -> dict:
    return run_arm(replace(cfg, loop=replace(cfg.loop, initial_programs=programs, max_rounds=0),
                           model=replace(cfg.model, adapter=adapter)), output_dir)


def run_seed(seed: int, out: Path, epochs: int, group_size: int) -> dict[str, list[str]]:
    """The solved tasks of each arm for one seed."""
    from arcsl.catalog import PROMPT_FORMATS, prompt_format, resolve_dataset
    from arcsl.offline import finetune_offline

    cfg = demo_config(str(out / "demo"))
    cfg = replace(cfg, data=resolve_dataset(cfg.data))  # the shipped name -> its file, as the CLI does
    cfg = replace(cfg, loop=replace(cfg.loop, seed=seed), run=replace(cfg.run, progress=False))
    rows = compare(cfg, prompt_format(cfg.loop.prompt_format))
    first = search(cfg, out / "offline-first", HALF)
    adapter = out / "offline-adapter"
    if not (adapter / "adapter_model.safetensors").exists():
        finetune_offline(OfflineConfig(from_run=[str(out / "offline-first")], output_dir=str(adapter),
                                       examples_per_task=8, select="spread", seed=seed, progress=False),
                         cfg.model, replace(cfg.finetune, num_epochs=epochs), cfg.relabel, PROMPT_FORMATS)
    second = search(cfg, out / "offline-second", HALF, adapter=str(adapter))
    groups = run_arm(replace(cfg, loop=replace(cfg.loop, task_group_size=group_size)), out / f"groups-of-{group_size}")
    solved = {"search-and-learn": [r.task_id for r, _ in rows if r is not None and r.solved],
              "search alone": [r.task_id for _, r in rows if r is not None and r.solved],
              "offline": sorted({t for arm in (first, second) for t, r in arm.items() if r.solved}),
              "offline, second search": sorted(t for t, r in second.items() if r.solved),
              f"groups of {group_size}": sorted(t for t, r in groups.items() if r.solved)}
    (out / "solved.json").write_text(json.dumps(solved, indent=1))
    return solved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the offline fine-tuning")
    parser.add_argument("--group-size", type=int, default=4, help="tasks per adapter in the task-groups arm")
    parser.add_argument("--output-dir", default="out/toy-offline")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    results = {seed: run_seed(seed, out / f"seed-{seed}", args.epochs, args.group_size) for seed in args.seeds}
    arms = list(next(iter(results.values())))
    lines = ["| seed | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for seed, solved in results.items():
        lines.append(f"| {seed} | " + " | ".join(f"{len(solved[a])} ({', '.join(solved[a]) or '-'})" for a in arms)
                     + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(len(s[a]) for s in results.values())}**" for a in arms) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    (out / "results.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
