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

    python -m arcsl.toy.offline_experiment --transfer --seeds 0 1 2 --output-dir out/toy-offline

Transfer, after the above: 8 other out-of-distribution tasks (`transfer_tasks`: the same kinds of drawing
with other shapes, positions, colours and canvases, and random programs of another seed), searched with 128
programs per task from the shipped model and from each seed's offline adapter (learnt on the demo tasks
only). Writes OUTPUT_DIR/transfer.md.
"""

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from arcsl.config import DataConfig, OfflineConfig, SolveConfig
from arcsl.grids import task_to_json
from arcsl.toy.demo import _arm_results, _canvases, _lattice, _square_grid, compare, demo_config, random_tasks
from arcsl.toy.tasks import Call, ToyTask, make_task

HALF = 64  # programs per task of each offline search


def transfer_tasks() -> list[ToyTask]:
    """8 tasks of 8-16 calls that the offline adapter never saw: the demo's kinds of drawing (squares, pixel
    lattices, stripes, frames) with other sizes, positions, orientations and colours, and random programs
    of another generator seed; 2 train pairs + 1 test on noisy 10 x 10 canvases."""
    columns = [Call("line", (1, c, 8, c, 2 + c % 2)) for c in range(1, 9)]  # vertical, other colours
    frames = [Call("border", (1, 1, 8, 8, 6)), Call("border", (3, 3, 6, 6, 7))] + \
             [Call("pixel", (r, c, 8)) for r, c in ((0, 0), (0, 9), (9, 0), (9, 9), (4, 4), (5, 5))]
    return [
        make_task("squares-9b", _canvases([0, 0, 5], noise=0.25, seed=20), _square_grid(3, 2, 0, 4, 1), 2),
        make_task("pixels-16b", _canvases([0, 2, 0], noise=0.25, seed=21), _lattice(4, 0, 3, 7), 2),
        make_task("pixels-9b", _canvases([0, 0, 4], noise=0.2, seed=22), _lattice(3, 2, 3, 6), 2),
        make_task("columns-8", _canvases([0, 5, 0], noise=0.3, seed=23), columns, 2),
        make_task("frames-8b", _canvases([0, 0, 0], noise=0.3, seed=24), frames, 2),
    ] + random_tasks(seed=23, calls=(8, 10, 12), suffix="b")


def run_transfer(seed: int, out: Path, tasks_file: Path) -> dict[str, list[str]]:
    """The transfer tasks' solved ids, searched from the shipped model and from the seed's offline adapter."""
    adapter = out / "offline-adapter"
    if not (adapter / "adapter_model.safetensors").exists():
        raise SystemExit(f"{adapter}: no offline adapter; run the experiment without --transfer first")
    cfg = demo_config(str(out / "transfer"))
    cfg = replace(cfg, data=DataConfig(dataset=str(tasks_file)), run=replace(cfg.run, progress=False),
                  loop=replace(cfg.loop, seed=seed))
    arms = {"shipped model": "", "offline adapter (demo tasks)": str(adapter)}
    return {name: sorted(t for t, r in search(cfg, out / "transfer" / name.split()[0], 128, a).items() if r.solved)
            for name, a in arms.items()}


def table(results: dict[int, dict[str, list[str]]]) -> str:
    """Markdown: per seed and arm, how many and which tasks were solved; the totals."""
    arms = list(next(iter(results.values())))
    lines = ["| seed | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for seed, solved in results.items():
        lines.append(f"| {seed} | " + " | ".join(f"{len(solved[a])} ({', '.join(solved[a]) or '-'})" for a in arms)
                     + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(len(s[a]) for s in results.values())}**" for a in arms) + " |")
    return "\n".join(lines)


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
    parser.add_argument("--transfer", action="store_true",
                        help="search the transfer tasks from the shipped model and each seed's offline adapter")
    parser.add_argument("--output-dir", default="out/toy-offline")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    if args.transfer:
        tasks_file = out / "transfer_tasks.json"
        out.mkdir(parents=True, exist_ok=True)
        tasks_file.write_text(json.dumps({t.task.id: task_to_json(t.task) | {"program": t.program}
                                          for t in transfer_tasks()}))
        results = {seed: run_transfer(seed, out / f"seed-{seed}", tasks_file) for seed in args.seeds}
        name = "transfer.md"
    else:
        results = {seed: run_seed(seed, out / f"seed-{seed}", args.epochs, args.group_size) for seed in args.seeds}
        name = "results.md"
    text = table(results)
    print("\n" + text)
    (out / name).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
