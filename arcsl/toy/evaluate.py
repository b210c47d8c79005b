"""Evaluate the toy model: pass@k by number of drawing calls, in and out of distribution.

Examples:
    python -m arcsl.toy.evaluate                                  # the shipped model, writes docs/toy_eval.{json,png}
    python -m arcsl.toy.evaluate --num-tasks 10 --ood-calls 6 10 --ood-sides 12 \
        --output out/eval.json --plot out/eval.png

Rows of the table:
- in distribution: 1-5 calls on 4..10 x 10 grids, shapes up to the grid's side (the pretraining tasks);
- more calls: 6-25 calls on 10x10 grids with shapes of side <= 5 (so that 25 visible calls fit);
- larger grids: 1-5 calls on square grids of 12 or 15 cells a side (coordinates >= 10 never seen).

A task is solved when one of the k sampled programs reproduces every train and test output.
Programs are not executed as Python: `execute_program` parses the generator's exact straight-line
format and applies the calls with `tasks.apply_calls`, so nothing untrusted runs here.
"""

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from arcsl.grids import Grid
from arcsl.toy.config import EvalConfig, TaskConfig
from arcsl.toy.prompt import task_prompt
from arcsl.toy.tasks import ToyTask, apply_calls, generate_task, parse_program

OOD_CALLS_TASKS = TaskConfig(min_side=10, max_side=10, max_shape_side=5)


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    task_id: str
    group: str  # "in", "calls" or "side"
    num_calls: int
    side: int  # largest grid side
    num_samples: int
    num_correct: int  # programs right on every train and test pair
    num_errors: int  # programs that failed to parse or run
    best_cell_accuracy: float  # best fraction of right cells over the test outputs (0 when none ran)

    @property
    def is_solved(self) -> bool:
        return self.num_correct > 0


# --- running programs ---------------------------------------------------------------------------

def execute_program(program: str, inputs: list[Grid]) -> list[np.ndarray] | None:
    """The program's outputs on `inputs`, or None if it is not a toy program or fails on any input."""
    try:
        calls = parse_program(program)  # the exact straight-line format, or nothing runs
        return [apply_calls(x, calls) for x in inputs]
    except ValueError:  # not the format, or a call the DSL refuses (point outside, bad colour, bent line)
        return None


def score_programs(toy: ToyTask, programs: list[str], group: str) -> TaskOutcome:
    """How many of `programs` solve `toy`, and how close the best one comes on the test outputs."""
    pairs = toy.task.train + toy.task.test
    num_correct = num_errors = 0
    best = 0.0
    for program in programs:
        outputs = execute_program(program, [p.input for p in pairs])
        if outputs is None:
            num_errors += 1
            continue
        is_right = [o.shape == p.output.shape and bool((o == p.output).all()) for o, p in zip(outputs, pairs)]
        num_correct += all(is_right)
        test_cells = [(o == p.output).mean() if o.shape == p.output.shape else 0.0
                      for o, p in zip(outputs[len(toy.task.train):], toy.task.test)]
        best = max(best, float(np.mean(test_cells)))
    side = max(max(p.input.shape) for p in pairs)
    return TaskOutcome(toy.task.id, group, toy.num_calls, side, len(programs), num_correct, num_errors, best)


# --- sampling -----------------------------------------------------------------------------------

def sample_programs(model, tokenizer, toys: list[ToyTask], num_samples: int, temperature: float,
                    seed: int) -> list[list[str]]:
    """`num_samples` programs for each task, sampled together with `model.generate`."""
    prompts = [task_prompt(t.task) for t in toys]
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    max_calls = max(t.num_calls for t in toys)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                             num_return_sequences=num_samples, max_new_tokens=16 * max_calls + 32,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(toys))]


def evaluate_tasks(model, tokenizer, toys: list[ToyTask], group: str, cfg: EvalConfig) -> list[TaskOutcome]:
    """Sample and score every task, `cfg.tasks_per_batch` tasks per generate call (similar lengths together)."""
    order = sorted(range(len(toys)), key=lambda i: (toys[i].task.num_cells, toys[i].num_calls))
    outcomes: dict[int, TaskOutcome] = {}
    for start in range(0, len(order), cfg.tasks_per_batch):
        chunk = order[start:start + cfg.tasks_per_batch]
        programs = sample_programs(model, tokenizer, [toys[i] for i in chunk], cfg.num_samples,
                                   cfg.temperature, cfg.seed + start)
        for i, p in zip(chunk, programs):
            outcomes[i] = score_programs(toys[i], p, group)
    return [outcomes[i] for i in range(len(toys))]


# --- the table ----------------------------------------------------------------------------------

def make_task_sets(cfg: EvalConfig) -> dict[tuple[str, int], list[ToyTask]]:
    """Evaluation tasks by (group, value): ("in", calls), ("calls", calls), ("side", side)."""
    sets = {}
    for n in cfg.in_calls:
        rng = np.random.default_rng([cfg.seed, 0, n])
        sets["in", n] = [generate_task(f"in-{n}c-{i:03d}", n, rng, TaskConfig()) for i in range(cfg.num_tasks)]
    for n in cfg.ood_calls:
        rng = np.random.default_rng([cfg.seed, 1, n])
        sets["calls", n] = [generate_task(f"ood-{n}c-{i:03d}", n, rng, OOD_CALLS_TASKS)
                            for i in range(cfg.num_ood_tasks)]
    for side in cfg.ood_sides:
        rng = np.random.default_rng([cfg.seed, 2, side])
        task_cfg = TaskConfig(min_side=side, max_side=side)
        sets["side", side] = [generate_task(f"ood-{side}x{side}-{i:03d}", int(rng.integers(1, 6)), rng, task_cfg)
                              for i in range(cfg.num_ood_tasks)]
    return sets


def summarise(outcomes: list[TaskOutcome]) -> dict:
    """pass@k, the mean fraction of right samples (an estimate of pass@1), errors and best test-cell accuracy."""
    n = len(outcomes)
    return {"tasks": n,
            "pass_at_k": sum(o.is_solved for o in outcomes) / n,
            "pass_at_1": sum(o.num_correct / o.num_samples for o in outcomes) / n,
            "error_rate": sum(o.num_errors / o.num_samples for o in outcomes) / n,
            "best_cell_accuracy": sum(o.best_cell_accuracy for o in outcomes) / n}


def format_table(rows: list[dict], k: int) -> str:
    """A markdown table, one row per task set."""
    head = f"| set | calls | grid side | tasks | pass@{k} | pass@1 | errors | best test-cell accuracy |\n" \
           "|---|---|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['set']} | {r['calls']} | {r['side']} | {r['tasks']} | {r['pass_at_k']:.0%} | {r['pass_at_1']:.0%} | "
        f"{r['error_rate']:.0%} | {r['best_cell_accuracy']:.1%} |\n" for r in rows)


def plot_rows(rows: list[dict], k: int, path: Path) -> None:
    """pass@k, pass@1 and the best sample's right test cells against the number of calls."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_calls = [r for r in rows if r["set"] != "larger grids"]
    x = [r["calls"] for r in by_calls]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(x, [100 * r["pass_at_k"] for r in by_calls], "o-", label=f"pass@{k}")
    ax.plot(x, [100 * r["pass_at_1"] for r in by_calls], "s--", label="pass@1")
    ax.plot(x, [100 * r["best_cell_accuracy"] for r in by_calls], "^:", label=f"best of {k}: test cells right")
    ax.axvspan(0.5, 5.5, color="0.9", label="pretraining range")
    ax.set_xlabel("drawing calls in the task")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax.set_title("Toy model: solved tasks by number of drawing calls")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(cfg: EvalConfig) -> dict:
    """Run every task set; returns the rows, the per-task outcomes and the run's facts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_dir)
    tokenizer.padding_side = "left"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(cfg.model_dir, dtype=torch.float32).to(device).eval()
    names = {"in": "in distribution", "calls": "more calls", "side": "larger grids"}
    rows, outcomes = [], []
    for (group, value), toys in make_task_sets(cfg).items():
        t0 = time.time()
        result = evaluate_tasks(model, tokenizer, toys, group, cfg)
        outcomes += result
        calls = value if group != "side" else "1-5"
        side = value if group == "side" else ("4-10" if group == "in" else 10)
        rows.append({"set": names[group], "calls": calls, "side": side, **summarise(result),
                     "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return {"config": asdict(cfg), "device": device, "threads": torch.get_num_threads(),
            "seconds": round(time.time() - start, 1), "rows": rows, "outcomes": [asdict(o) for o in outcomes]}


def main(argv: list[str] | None = None) -> int:
    from arcsl.cli import add_config_args, config_from_args

    parser = argparse.ArgumentParser(prog="python -m arcsl.toy.evaluate", description=__doc__.split("\n")[0])
    list_fields = ("in_calls", "ood_calls", "ood_sides")
    add_config_args(parser, EvalConfig, skip=list_fields)
    defaults = EvalConfig()
    for name in list_fields:
        parser.add_argument("--" + name.replace("_", "-"), nargs="*", type=int, default=getattr(defaults, name),
                            help=f"(default: {getattr(defaults, name)})")
    args = parser.parse_args(argv)
    cfg = config_from_args(EvalConfig, args, **{n: getattr(args, n) for n in list_fields})
    result = evaluate(cfg)
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(result, indent=1))
    plot_rows(result["rows"], cfg.num_samples, Path(cfg.plot))
    print(format_table(result["rows"], cfg.num_samples))
    print(f"{result['seconds']} s on {result['device']} ({result['threads']} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
