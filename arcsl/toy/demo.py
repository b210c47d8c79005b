"""`arcsl demo`, the embedded default: search and learn against search alone, on toy tasks, on a CPU.

The shipped model (`arcsl/toy/shipped_model`, in the wheel too) was pretrained on tasks with 1-5 drawing calls. The demo tasks
need 8-25 calls: out of distribution, where the model alone writes about 5 lines and stops. The
demo runs the same tasks twice with the same number of programs per task: once search-and-learn
(a search, then rounds of fine-tuning on hindsight-relabelled attempts and searching again), once
search alone (all programs from the pretrained model), and prints one table comparing them.
With the shipped model (run 6), over seeds 0-2, search-and-learn solves 2, 0 and 2 of the 8, search alone
1, 0 and 0 (docs/toy.md; run 5 solved 1-4 over seeds 0-4).

    python -m arcsl.toy.demo --write-tasks     # regenerate arcsl/toy/demo_tasks.json (seeded)
    arcsl demo                                  # the demo; every flag of `arcsl solve` applies

Its settings (`demo_config`) differ from the library defaults in three ways, each measured (docs/toy.md):
- no augmented views. A 4M-parameter model does not carry what it learns in one rotation or colouring to
  another, so every prompt shows the task as it is and each round's LoRA learns the task's own lines.
  With views, no setting tried solved a task; without them, every setting of the sweep solved 1-4 of 8.
- many small rounds (16 programs, then 7 rounds of 16), and up to 8 relabelled programs per round, the
  best ones, each without the lines that change no output (`prune_programs`).
- all 8 tasks in flight, one adapter each: a round samples them in one engine call, in batches of 64 rows,
  where a CPU decode step costs about half as much per row as with one task's 16.

What is not covered: settings for other models. Both arms fit in about 4.5 minutes on 2 CPU cores.
"""

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from arcsl.config import (DataConfig, FinetuneConfig, LoopConfig, ModelConfig, RelabelConfig, RunConfig,
                          SamplingConfig, SolveConfig)
from arcsl.grids import task_to_json
from arcsl.prompting import PromptFormat
from arcsl.toy import draw
from arcsl.toy.config import SHIPPED_MODEL_DIR, TaskConfig
from arcsl.toy.tasks import Call, ToyTask, generate_tasks, make_task

DEMO_TASKS = Path(__file__).with_name("demo_tasks.json")
DEMO_DATASET = "toy/demo"  # its name for --dataset (arcsl.catalog maps it to DEMO_TASKS)


# --- the tasks ----------------------------------------------------------------------------------

def _canvases(colors: list[int], noise: float = 0.0, seed: int = 0, side: int = 10) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [draw.noisy(side, side, c, noise, rng) if noise else draw.blank(side, side, c) for c in colors]


def _square_grid(n: int, side: int, start: int, step: int, color: int) -> list[Call]:
    """n x n filled squares of `side` cells, the first at (start, start), `step` cells apart."""
    return [Call("rect", (start + i * step, start + j * step, start + i * step + side - 1,
                          start + j * step + side - 1, color)) for i in range(n) for j in range(n)]


def _lattice(n: int, start: int, step: int, color: int) -> list[Call]:
    """n x n pixels, the first at (start, start), `step` cells apart."""
    return [Call("pixel", (start + step * i, start + step * j, color)) for i in range(n) for j in range(n)]


def demo_tasks() -> list[ToyTask]:
    """The shipped out-of-distribution tasks: 8-25 calls on 10 x 10 grids, 2 train pairs + 1 test."""
    stripes = [Call("line", (r, 1, r, 8, 6 + r % 2)) for r in range(1, 9)]  # alternating: not one rect
    diagonals = [Call("line", (0, c, 9 - c, 9, 5)) for c in range(0, 10, 2)] + \
                [Call("line", (r, 0, 9, 9 - r, 5)) for r in range(2, 10, 2)]
    frames = [Call("border", (0, 0, 9, 9, 1)), Call("border", (2, 2, 7, 7, 2)), Call("rect", (4, 4, 5, 5, 3))] + \
             [Call("pixel", (r, c, 4)) for r, c in ((1, 1), (1, 8), (8, 1), (8, 8), (3, 3))]
    # noisy canvases: a program cannot fake a pattern by carving a large rectangle with background
    # lines (exact on plain train canvases, wrong on a test canvas of another colour)
    tasks = [
        make_task("squares-9", _canvases([0, 0, 7], noise=0.25, seed=0), _square_grid(3, 2, 1, 3, 4), 2),
        make_task("pixels-16", _canvases([0, 1, 0], noise=0.25, seed=1), _lattice(4, 1, 2, 3), 2),
        make_task("pixels-25", _canvases([0, 0, 0], noise=0.2, seed=2), _lattice(5, 0, 2, 9), 2),
        make_task("stripes-8", _canvases([0, 3, 0], noise=0.3, seed=3), stripes, 2),
        make_task("diagonals-9", _canvases([0, 0, 2], noise=0.25, seed=4), diagonals, 2),
        make_task("frames-8", _canvases([0, 0, 0], noise=0.3, seed=5), frames, 2),
    ]
    return tasks + random_tasks(seed=11, calls=(8, 12))


def random_tasks(seed: int, calls: tuple[int, ...], suffix: str = "") -> list[ToyTask]:
    """One random program per number of `calls` on a noisy 10 x 10 canvas, named random-<calls><suffix>."""
    cfg = TaskConfig(min_side=10, max_side=10, max_shape_side=4, noise_probability=1.0, max_noise_density=0.3)
    tasks = []
    for num_calls in calls:
        generated = generate_tasks(seed=seed, num_tasks=1, num_calls=num_calls, cfg=cfg)[0]
        tasks.append(replace(generated, task=replace(generated.task, id=f"random-{num_calls}{suffix}")))
    return tasks


def write_tasks(path: Path = DEMO_TASKS) -> None:
    data = {t.task.id: task_to_json(t.task) | {"program": t.program} for t in demo_tasks()}
    path.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")


# --- the settings -------------------------------------------------------------------------------

def demo_config(output_dir: str = "out/demo") -> SolveConfig:
    """The defaults of `arcsl demo`: the shipped toy model on the demo tasks."""
    return SolveConfig(
        data=DataConfig(dataset=DEMO_DATASET),
        model=ModelConfig(model=str(SHIPPED_MODEL_DIR), lora_rank=16, lora_alpha=16.0),
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=400),
        finetune=FinetuneConfig(learning_rate=1e-3, num_epochs=2, examples_per_step=4, max_seq_len=2048,
                                max_tokens_per_micro_batch=8192),
        relabel=RelabelConfig(relabel_rounds="all", max_examples=8, prune_programs=True),
        loop=LoopConfig(initial_programs=16, programs_per_round=16, max_rounds=7, samples_per_view=8,
                        stop="one-solution", prompt_format="toy",
                        augment_dihedral=False, augment_colors="none", augment_train_order=False),
        run=RunConfig(output_dir=output_dir, workers=1, tasks_in_flight=8))


# --- search and learn against search alone ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ArmResult:
    """One task under one arm (search-and-learn or search alone)."""
    task_id: str
    solved: bool            # one program is exact on every train and test grid
    best_train_score: float
    num_programs: int


def search_only(cfg: SolveConfig) -> SolveConfig:
    """The same budget of programs per task as `cfg` at most uses, all from the pretrained model."""
    loop = replace(cfg.loop, initial_programs=cfg.loop.total_programs, max_rounds=0)
    return replace(cfg, loop=loop)


def compare(cfg: SolveConfig, prompt_format: PromptFormat,
            engine=None) -> list[tuple[ArmResult | None, ArmResult | None]]:
    """Run search-and-learn then search alone into two sub-folders of cfg.run.output_dir; print the table.
    A row per task either arm finished; None where the other arm did not (its deadline came first).

    Args:
        prompt_format: the format cfg.loop.prompt_format names (TOY_FORMAT for the demo's settings).
        engine: an `Engine` to use instead of loading `cfg.model` (tests).
    """
    from arcsl.engine.hf import load_engine
    from arcsl.solve import solve
    from arcsl.workers import engine_config

    out = Path(cfg.run.output_dir)
    if engine is None and cfg.run.workers == 1 and cfg.run.tasks_in_flight:  # once for both arms (auto is
        engine = load_engine(engine_config(cfg))  # resolved by each arm's solve, which then loads its own)
    arms = {}
    for name, arm_cfg in (("search-and-learn", cfg), ("search-only", search_only(cfg))):
        print(f"\n== {name} ==", file=sys.stderr)
        arm_cfg = replace(arm_cfg, run=replace(cfg.run, output_dir=str(out / name)))
        solve(arm_cfg, prompt_format, engine=engine)
        arms[name] = _arm_results(out / name)
    learn, alone = arms["search-and-learn"], arms["search-only"]
    # a deadline can leave an arm short of some tasks: those show as not reached
    rows = [(learn.get(k), alone.get(k)) for k in list(learn) + [k for k in alone if k not in learn]]
    table = comparison_table(rows)
    print("\n" + table)
    (out / "comparison.md").write_text(table + "\n")
    return rows


def _arm_results(run_dir: Path) -> dict[str, ArmResult]:
    from arcsl.report import best_score_by_round
    from arcsl.store import open_store

    with open_store(run_dir / "results.sqlite", resume=True) as store:
        scores = store.task_scores()
        curves = best_score_by_round(store, [s.task_id for s in scores])
        return {s.task_id: ArmResult(s.task_id, bool(s.oracle_pass_at_n), max(curves[s.task_id], default=0.0),
                                     s.n_preds) for s in scores}


def comparison_table(rows: list[tuple[ArmResult | None, ArmResult | None]]) -> str:
    """Markdown: per task, solved and best train score under each arm ("not reached" where the arm did not
    finish it), then the totals over all the rows."""
    lines = ["| task | search-and-learn | search only |", "|---|---|---|"]

    def cell(r: ArmResult | None) -> str:
        if r is None:
            return "not reached"
        return f"{'**solved**' if r.solved else 'no'} ({r.best_train_score:.3f}, {r.num_programs} programs)"

    def solved(arm: int) -> int:
        return sum(row[arm] is not None and row[arm].solved for row in rows)

    for learn, alone in rows:
        lines.append(f"| {(learn or alone).task_id} | {cell(learn)} | {cell(alone)} |")
    lines.append(f"| **solved** | **{solved(0)} / {len(rows)}** | **{solved(1)} / {len(rows)}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-tasks", action="store_true", help=f"write {DEMO_TASKS.name} and exit")
    args = parser.parse_args(argv)
    if args.write_tasks:
        write_tasks()
        print(DEMO_TASKS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
