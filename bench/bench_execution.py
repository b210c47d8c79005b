"""Program execution against sampling: does running a round's programs take longer than sampling them?

Examples:
    python bench/bench_execution.py --tiny                                                # CPU smoke run
    python bench/bench_execution.py --engine-json $OUT/engine.json --out $OUT/execution.json   # GPU machine

A round is 128 BARC-style programs (bench_sandbox.py's mix: connected components, flood fills, crops and
blits, lines, recolouring; 5 % raise, 1 % loop until the timeout), each run on the train and test inputs of
an augmented view of an ARC-AGI-1 evaluation task, in a sandbox pool of one worker per core with the default
timeout (5 s), as the loop runs them. Five rounds, one per task of median size. Sampling the same round
takes 128 samples x 400 tokens (the seeds' median answer) at the sampler's measured output rate: the warm
"1 prompt x 128" figure of bench_engine.py's JSON (--engine-json), or --sample-tok-s.
Prints a table, then one JSON line.
"""

import argparse
import json
import os
import random
import time

import numpy as np

from benchlib import _sandbox_bench, dataset, finish, median_tasks, print_table

from arcsl.augment import augment, random_augmentation
from arcsl.config import SandboxConfig
from arcsl.sandbox import Job, SandboxPool


def sampling_rate(engine_json: str | None, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "--sample-tok-s"
    if engine_json and os.path.exists(engine_json):
        rows = json.loads(open(engine_json).read()).get("sampling", [])
        row = next((r for r in rows if r.get("case") == "1 prompt x 128" and "output_tok_s" in r), None)
        if row:
            return float(row["output_tok_s"]), f"{engine_json}: 1 prompt x 128, {row['output_tok_s']} tok/s"
    return None, "no sampling figure"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="16 programs a round, 2 rounds (smoke run)")
    parser.add_argument("--engine-json", default=None, help="bench_engine.py's JSON, for the sampling rate")
    parser.add_argument("--sample-tok-s", type=float, default=None, help="sampling output tokens/s to compare with")
    parser.add_argument("--tokens-per-sample", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(argv)

    sandbox = _sandbox_bench()
    num_programs, num_rounds = (16, 2) if args.tiny else (128, 5)
    ids = median_tasks("arc-agi-1/evaluation", num_rounds)
    tasks = {t.id: t for t in dataset("arc-agi-1/evaluation") if t.id in ids}
    rng, choice = np.random.default_rng(args.seed), random.Random(args.seed)
    cfg = SandboxConfig()
    rows = []
    with SandboxPool(cfg) as pool:
        pool.run([Job(sandbox.TRIVIAL, [np.zeros((3, 3), dtype=np.uint8)])] * pool.num_workers)  # warm-up
        for task_id in ids:
            task = tasks[task_id]
            jobs = []
            for program in sandbox.make_mix(num_programs, choice):
                view = augment(task, random_augmentation(task, rng))
                jobs.append(Job(program, [p.input for p in view.train] + [p.input for p in view.test]))
            started = time.perf_counter()
            results = pool.run(jobs)
            seconds = time.perf_counter() - started
            errors = {}
            for r in results:
                key = "ok" if r.error is None else str(r.error)
                errors[key] = errors.get(key, 0) + 1
            rows.append({"task": task_id, "programs": num_programs, "seconds": round(seconds, 3),
                         "programs_per_s": round(num_programs / seconds, 1), "results": errors})
        workers = pool.num_workers

    rate, source = sampling_rate(args.engine_json, args.sample_tok_s)
    sampling_s = num_programs * args.tokens_per_sample / rate if rate else None
    worst = max(r["seconds"] for r in rows)
    result = {"bench": "execution", "date": time.strftime("%Y-%m-%d"), "cpu_cores": os.cpu_count(),
              "workers": workers, "timeout_s": cfg.timeout_s, "rounds": rows,
              "mean_round_s": round(sum(r["seconds"] for r in rows) / len(rows), 3), "max_round_s": worst,
              "sampling_source": source,
              "sampling_round_s": round(sampling_s, 2) if sampling_s else None,
              "execution_keeps_up": worst <= sampling_s if sampling_s else None}
    print_table(f"execution of a round's programs ({workers} workers, timeout {cfg.timeout_s:g} s)", rows,
                ["task", "programs", "seconds", "programs_per_s", "results"])
    print(f"sampling the same round ({num_programs} x {args.tokens_per_sample} tokens, {source}): "
          f"{result['sampling_round_s']} s; execution keeps up: {result['execution_keeps_up']}")
    return finish(result, args.out)


if __name__ == "__main__":
    main()
