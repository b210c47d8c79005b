"""Rounds are free? `arcsl solve` with 1, 3 and 7 learning rounds at a fixed number of programs per task.

Examples:
    python bench/bench_rounds.py                                                  # tiny model on CPU, seconds
    PYTHONUNBUFFERED=1 python bench/bench_rounds.py --arch llama-3.1-8b --out $OUT/rounds.json   # GPU, ~8 min
    PYTHONUNBUFFERED=1 python bench/bench_rounds.py --arch llama-3.1-8b --num-tasks 8 --tasks-in-flight 4 \
        --out $OUT/rounds_k4.json   # 8 tasks, 4 at a time
    PYTHONUNBUFFERED=1 python bench/bench_rounds.py --arch llama-3.1-8b --num-tasks 8 --tasks-in-flight 0 \
        --out $OUT/rounds_rows.json  # rounds + 1 tasks at a time: 128 rows per decode step in every configuration

Each configuration runs `arcsl.solve.solve` (the whole loop: views, sampling, sandbox execution, scoring,
relabelling, fine-tuning, reset, the results store, submission and reports) on the same ARC-AGI-1
evaluation tasks of median size, with the same total per task: P programs (P/(R+1) per search, R
learning rounds) and T relabelled training examples (T/R per round, --train-examples). The model has
random weights, so it writes garbage: every sample is generated to exactly --max-new-tokens tokens
(SamplingConfig.ignore_eos, benchmarks only), and then its text is replaced by a BARC-style program
(benchlib.ProgramEngine), so that execution, relabelling and fine-tuning get realistic work. Prompts are
tokenised by benchlib's code tokenizer (~1 token per grid cell, like Llama-3's). The per-task wall time is
the sum of the loop's own phase timings; the per-round breakdown is their mean over the tasks. With
--tasks-in-flight K, K tasks share each round (one sampling call, one LoRA adapter each): a task's timings
are its own phases plus 1/K of the shared ones, so per-task times are shares of the wall time.
A warm-up (compilation, first CUDA graphs) runs before the first configuration. Prints tables, one JSON line.

Execution: each program goes to the sandbox as its sample stops and runs while the others are decoded
(inside "sampling"); the phase "execution" is only the tail after the sampling call. Each configuration
reports that tail's share of the wall time, over the run and in its worst round (target: <= 5 %). With
ignore_eos every sample of a call stops at the same step, so all programs reach the sandbox when the
sampling ends and the tail is all of the execution. A real model's samples stop at different steps:
--mean-new-tokens L makes 1/L of the vocabulary end-of-sequence tokens, so (random weights sampling
near-uniformly) samples stop after ~L tokens on average, geometrically spread, at most --max-new-tokens.
--slow-programs F makes a fraction F of the programs spin until the sandbox's timeout (5 s), like the one
BARC program in a hundred that never ends. Example (both, the issue-17 case):
    python bench/bench_rounds.py --arch llama-3.1-8b --num-tasks 2 --tasks-in-flight 2 --rounds 1 \
        --mean-new-tokens 200 --slow-programs 0.01
"""

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchlib import (ProgramEngine, build_model, code_tokenizer, dataset, finish, header, median_tasks,
                      pick_device, print_table, random_ids)

from arcsl.config import (DataConfig, FinetuneConfig, LoopConfig, ModelConfig, RelabelConfig, RunConfig,
                          SamplingConfig, SandboxConfig, SolveConfig)
from arcsl.engine.hf import HFEngine
from arcsl.loop import adapters_needed
from arcsl.prompting import BARC_FORMAT, barc_prompt
from arcsl.solve import solve
from arcsl.store import open_store

DATASET = "arc-agi-1/evaluation"


def tasks_in_flight(args, rounds: int) -> int:
    """K for a configuration: --tasks-in-flight, or with 0, rounds + 1 (at most the tasks there are), so
    that every configuration's searches decode the same number of rows: K x programs / (rounds + 1)."""
    return args.tasks_in_flight or min(args.num_tasks, rounds + 1)


def solve_config(args, rounds: int, task_ids: list[str], output_dir: Path) -> SolveConfig:
    per_search = args.programs // (rounds + 1)
    in_flight = tasks_in_flight(args, rounds)
    return SolveConfig(
        data=DataConfig(dataset=DATASET, task_ids=task_ids),
        model=ModelConfig(model=f"random {args.arch}", lora_rank=args.lora_rank, lora_alpha=32,
                          num_adapters=adapters_needed(in_flight, args.task_group_size)),
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens, ignore_eos=not args.mean_new_tokens),
        finetune=FinetuneConfig(),
        relabel=RelabelConfig(max_examples=args.train_examples // rounds),
        loop=LoopConfig(initial_programs=per_search, programs_per_round=per_search, max_rounds=rounds,
                        samples_per_view=args.samples_per_view, stop="never", task_group_size=args.task_group_size),
        sandbox=SandboxConfig(),
        run=RunConfig(output_dir=str(output_dir), progress=False, tasks_in_flight=in_flight))


def check_args(args) -> None:
    for rounds in args.rounds:
        per_search = args.programs // (rounds + 1)
        if per_search * (rounds + 1) != args.programs or per_search % args.samples_per_view:
            raise ValueError(f"--programs {args.programs} must split into {rounds + 1} searches of a multiple "
                             f"of --samples-per-view {args.samples_per_view}")
        if args.train_examples % rounds:
            raise ValueError(f"--train-examples {args.train_examples} must split evenly over {rounds} rounds")


def warm_up(engine: HFEngine, args) -> float:
    """What a run pays once, before its first task: compiling the decode step (two batch shapes, after which
    sizes are symbolic), the trainer's first step, the first merge of a LoRA (its host copy is made then)."""
    started = time.perf_counter()
    vocab = engine.lm.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    cfg = SamplingConfig(num_samples=args.samples_per_view, max_new_tokens=args.max_new_tokens, ignore_eos=True)
    for num_prompts in (1, 2):
        engine.sample([random_ids(300, vocab, gen) for _ in range(num_prompts)], cfg)
    engine.finetune([(random_ids(300, vocab, gen), random_ids(50, vocab, gen))], FinetuneConfig())
    engine.sample([random_ids(300, vocab, gen)], cfg)
    engine.reset()
    return time.perf_counter() - started


def measure(args, rounds: int, task_ids: list[str], engine: ProgramEngine, work_dir: Path) -> dict:
    output_dir = work_dir / f"rounds_{rounds}"
    shutil.rmtree(output_dir, ignore_errors=True)
    engine.sample_stats, engine.finetune_stats = [], []
    started = time.perf_counter()
    solve(solve_config(args, rounds, task_ids, output_dir), BARC_FORMAT, engine=engine)
    wall = time.perf_counter() - started
    with open_store(output_dir / "results.sqlite", resume=True) as store:
        timings = store.phase_timings()
    per_task, per_round = defaultdict(float), defaultdict(lambda: defaultdict(float))
    for t in timings:
        per_task[t.task_id] += t.seconds
        per_round[t.round][t.phase] += t.seconds / len(task_ids)
    execution = sum(r["execution"] for r in per_round.values())
    return {"rounds": rounds, "tasks_in_flight": tasks_in_flight(args, rounds),
            "programs_per_search": args.programs // (rounds + 1),
            "train_examples_per_round": args.train_examples // rounds,
            "examples_trained": sum(s.num_examples for s in engine.finetune_stats),
            "finetune_calls": len(engine.finetune_stats),
            "task_s": {k: round(v, 2) for k, v in per_task.items()},
            "mean_task_s": round(statistics.mean(per_task.values()), 2),
            "phase_s_per_task": {phase: round(sum(r[phase] for r in per_round.values()), 2)
                                 for phase in sorted({t.phase for t in timings})},
            "per_round": {r: {phase: round(s, 3) for phase, s in phases.items()}
                          for r, phases in sorted(per_round.items())},
            # the execution tail (after the sampling call) as a fraction of the wall time: all rounds, each round
            "execution_share": round(execution / sum(sum(r.values()) for r in per_round.values()), 4),
            "execution_share_per_round": {r: round(phases["execution"] / sum(phases.values()), 4)
                                          for r, phases in sorted(per_round.items())},
            "capture_s_per_task": round(sum(s.capture_s for s in engine.sample_stats) / len(task_ids), 2),
            "output_tokens": sum(s.num_output_tokens for s in engine.sample_stats),
            "mean_sample_tokens": round(sum(s.num_output_tokens for s in engine.sample_stats)
                                        / max(sum(s.num_samples for s in engine.sample_stats), 1), 1),
            "solve_wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", choices=["tiny", "llama-3.1-8b"])
    parser.add_argument("--num-tasks", type=int, default=None, help="default: 1 tiny, 5")
    parser.add_argument("--rounds", type=int, nargs="+", default=None, help="default: 1 2 tiny, 1 3 7")
    parser.add_argument("--programs", type=int, default=None, help="per task; default: 12 tiny, 128")
    parser.add_argument("--samples-per-view", type=int, default=None, help="default: 2 tiny, 8")
    parser.add_argument("--train-examples", type=int, default=None, help="per task, all rounds; default: 2 tiny, 21")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="per sample; default: 8 tiny, 400")
    parser.add_argument("--tasks-in-flight", type=int, default=1,
                        help="tasks searched together, one LoRA adapter each (RunConfig.tasks_in_flight); "
                             "0 = rounds + 1 per configuration (equal rows per decode step)")
    parser.add_argument("--task-group-size", type=int, default=1,
                        help="tasks that learn together in one adapter (LoopConfig.task_group_size)")
    parser.add_argument("--mean-new-tokens", type=int, default=0,
                        help="samples stop after about this many tokens on average (1/L of the vocabulary ends a "
                             "sample); 0 = every sample is --max-new-tokens long")
    parser.add_argument("--slow-programs", type=float, default=0.0,
                        help="fraction of the programs that run until the sandbox's timeout")
    parser.add_argument("--work-dir", default=None, help="where the runs' output directories go (default: a temp dir)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    tiny = args.arch == "tiny"
    defaults = {"num_tasks": (1, 5), "rounds": ([1, 2], [1, 3, 7]), "programs": (12, 128),
                "samples_per_view": (2, 8), "train_examples": (2, 21), "max_new_tokens": (8, 400)}
    for name, (small, large) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else large)
    check_args(args)

    device = pick_device(tiny)
    tokenizer = code_tokenizer(tiny=tiny)
    model = build_model(args.arch, device, len(tokenizer) if tiny else None)
    if args.mean_new_tokens:  # every L-th id ends a sample: a stop chance of ~1/L per step
        vocab = model.config.vocab_size
        model.generation_config.eos_token_id = list(range(vocab - 1, 0, -args.mean_new_tokens))
    args.lora_rank = 8 if tiny else 32
    num_adapters = max(adapters_needed(tasks_in_flight(args, rounds), args.task_group_size) for rounds in args.rounds)
    engine = HFEngine(model, tokenizer, ModelConfig(model=args.arch, lora_rank=args.lora_rank, lora_alpha=32,
                                                    num_adapters=num_adapters))
    task_ids = median_tasks(DATASET, args.num_tasks)
    result = header("rounds", device, argv) | {
        "model": f"{args.arch}, random weights", "tasks": task_ids,
        "prompt_tokens": {t.id: len(engine.codec.encode_prompt(barc_prompt(t)))
                          for t in dataset(DATASET) if t.id in task_ids},
        "settings": {k: getattr(args, k) for k in [*defaults, "tasks_in_flight", "task_group_size", "mean_new_tokens",
                                                     "slow_programs"]}}
    result["warm_up_s"] = round(warm_up(engine, args), 1)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="arcsl_rounds_"))
    programs = ProgramEngine(engine, slow=args.slow_programs)
    result["configs"] = configs = []
    for rounds in args.rounds:
        configs.append(measure(args, rounds, task_ids, programs, work_dir))
        if args.out:  # what is done so far survives a time limit
            Path(args.out).write_text(json.dumps(result) + "\n")
    times = [c["mean_task_s"] for c in configs]
    result["spread"] = round(max(times) / min(times) - 1, 3)  # (slowest - fastest) / fastest
    result["within_15_percent"] = result["spread"] <= 0.15
    result["max_round_execution_share"] = max(max(c["execution_share_per_round"].values()) for c in configs)
    result["execution_within_5_percent"] = result["max_round_execution_share"] <= 0.05

    print_table("per task (mean over tasks, seconds)", [
        {"rounds": c["rounds"], "in_flight": c["tasks_in_flight"], "task_s": c["mean_task_s"], **c["phase_s_per_task"],
         "exec_%": round(100 * c["execution_share"], 2), "capture_s": c["capture_s_per_task"],
         "examples": c["examples_trained"]} for c in configs],
        ["rounds", "in_flight", "task_s", "sampling", "execution", "exec_%", "relabelling", "finetuning", "reset",
         "other", "capture_s", "examples"])
    for c in configs:
        print_table(f"{c['rounds']} rounds: seconds per round (mean over tasks; execution: the tail after sampling)",
                    [{"round": r, **phases, "exec_%": round(100 * c["execution_share_per_round"][r], 2)}
                     for r, phases in c["per_round"].items()],
                    ["round", "sampling", "execution", "exec_%", "relabelling", "finetuning", "reset", "other"])
    print(f"\nslowest / fastest configuration: +{100 * result['spread']:.1f} % "
          f"(target: within 15 %): {'met' if result['within_15_percent'] else 'not met'}")
    print(f"execution tail after sampling, worst round: {100 * result['max_round_execution_share']:.2f} % of its wall "
          f"time (target: <= 5 %): {'met' if result['execution_within_5_percent'] else 'not met'}")
    return finish(result, args.out)


if __name__ == "__main__":
    main()
