"""Throughput and overhead of the sandbox (arcsl/sandbox.py) on this machine.

    python bench/bench_sandbox.py                      # the figures in bench/RESULTS.md
    python bench/bench_sandbox.py --num-mix 300        # quicker

Workloads, each program run on the same 4 random 30x30 grids:
- trivial: `from common import *` and return the input, --num-trivial programs;
- recycled: the same, plus a mention of `__name__`, which makes the worker discard its child after
  the job (sandbox_worker.could_change_process); a quarter as many programs;
- mix: BARC-style programs (connected components, flood fill, crops and blits, lines, numpy
  recolouring); 5 % raise an exception and 1 % loop until the timeout (--timeout-s).

Measured:
- programs/s with the default number of workers (one per core);
- overhead per program = (1-worker pool time - in-process time) / programs, where in-process
  means what a harness without a sandbox does: compile, exec in a fresh dict, seed, call on int64
  copies, check the output. Timing-out programs are left out of this comparison (in-process
  they would never return). The pool's own work runs on the other core while the worker runs,
  so "CPU overhead" also counts it: (CPU of pool + worker - CPU in-process) / programs;
- what recycling costs: (recycled - trivial) per program, one worker, i.e. forking a fresh child
  from the worker's clean supervisor instead of reusing the child;
- what one timing-out program costs the pool: (mix time - same mix without its timeouts)
  x workers / timeouts, against its own timeout; the wall time of one program that catches
  every exception and loops (its child is killed at the timeout and a fresh one forked), and the
  startup time of a whole new worker (what a crash of the worker's supervisor costs).
Prints a table, then one JSON line.
"""

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from arcsl.config import SandboxConfig  # noqa: E402
from arcsl.sandbox import DSL_PATH, ErrorKind, Job, SandboxPool  # noqa: E402

HEADER = "from common import *\n\nimport numpy as np\nfrom typing import *\n\n"

TRIVIAL = HEADER + "def transform(input_grid):\n    return input_grid\n"
RECYCLED = HEADER + "def transform(input_grid):\n    assert __name__\n    return input_grid\n"

MIX = {
    "largest_object_red": HEADER + '''# concepts: objects, size
# description: the largest object turns red
def transform(input_grid):
    output_grid = input_grid.copy()
    objects = find_connected_components(input_grid, background=Color.BLACK, connectivity=4, monochromatic=True)
    largest = max(objects, key=lambda obj: np.sum(obj != Color.BLACK))
    output_grid[largest != Color.BLACK] = Color.RED
    return output_grid
''',
    "fill_background_from_corner": HEADER + '''# concepts: flood fill, cropping
# description: fill the background reachable from the corner with gray, then crop
def transform(input_grid):
    output_grid = input_grid.copy()
    flood_fill(output_grid, 0, 0, Color.GRAY, connectivity=4)
    x, y, width, height = bounding_box(input_grid, background=Color.BLACK)
    return output_grid[x:x + width, y:y + height]
''',
    "stack_sprites": HEADER + '''# concepts: objects, blitting
# description: crop every object and paste the sprites in a row on a black canvas
def transform(input_grid):
    objects = find_connected_components(input_grid, background=Color.BLACK, connectivity=8, monochromatic=False)
    output_grid = np.zeros_like(input_grid)
    x = 0
    for obj in sorted(objects, key=lambda o: -np.sum(o != Color.BLACK))[:6]:
        sprite = crop(obj, background=Color.BLACK)
        if x + sprite.shape[0] > output_grid.shape[0] or sprite.shape[1] > output_grid.shape[1]:
            break
        blit_sprite(output_grid, sprite, x=x, y=0, background=Color.BLACK)
        x += sprite.shape[0]
    return output_grid
''',
    "rays_from_pixels": HEADER + '''# concepts: lines, pixels
# description: every blue pixel shoots a blue line downwards until it hits something
def transform(input_grid):
    output_grid = input_grid.copy()
    for x, y in np.argwhere(input_grid == Color.BLUE):
        draw_line(output_grid, x, y + 1, direction=(0, 1), color=Color.BLUE, stop_at_color=Color.NOT_BLACK)
    return output_grid
''',
    "recolor_by_size": HEADER + '''# concepts: counting, recolouring
# description: objects are recoloured by their size: 1 blue, 2 red, bigger green
def transform(input_grid):
    output_grid = np.zeros_like(input_grid)
    for obj in find_connected_components(input_grid, background=Color.BLACK, connectivity=4):
        size = np.sum(obj != Color.BLACK)
        output_grid[obj != Color.BLACK] = Color.BLUE if size == 1 else Color.RED if size == 2 else Color.GREEN
    return output_grid
''',
    "mirror_and_overlay": HEADER + '''# concepts: symmetry
# description: overlay the grid with its left-right mirror image
def transform(input_grid):
    mirrored = input_grid[::-1, :]
    return np.where(input_grid != Color.BLACK, input_grid, mirrored)
''',
}
RAISES = HEADER + "def transform(input_grid):\n    objects = find_connected_components(input_grid)\n    return objects[1000]\n"
TIMES_OUT = HEADER + "def transform(input_grid):\n    while True:\n        pass\n"
SWALLOWS_TIMEOUT = HEADER + ("import time\ndef transform(input_grid):\n    while True:\n        try:\n"
                             "            while True:\n                time.sleep(0.01)\n        except BaseException:\n            pass\n")


def make_inputs(rng: np.random.Generator) -> list[np.ndarray]:
    """4 grids of 30x30 with sparse coloured blobs on black, stored as uint8 like task grids."""
    grids = []
    for _ in range(4):
        colors = rng.integers(1, 10, size=(30, 30))
        blobs = rng.random((30, 30)) < 0.25
        grids.append(np.where(blobs, colors, 0).astype(np.uint8))
    return grids


def make_mix(num: int, rng: random.Random) -> list[str]:
    names = list(MIX)
    num_raise, num_timeout = round(0.05 * num), round(0.01 * num)
    programs = [RAISES] * num_raise + [TIMES_OUT] * num_timeout
    programs += [MIX[names[i % len(names)]] for i in range(num - len(programs))]
    rng.shuffle(programs)
    return programs


def run_in_process(programs: list[str], inputs: list[np.ndarray]) -> tuple[float, dict]:
    """Run the programs without a sandbox; return (seconds, {"cpu_s": CPU seconds})."""
    sys.path.insert(0, str(DSL_PATH.parent))  # so that `from common import *` finds the DSL
    started, cpu_started = time.perf_counter(), time.process_time()
    for source in programs:
        namespace = {"__name__": "__program__"}
        try:
            exec(compile(source, "<program>", "exec"), namespace)
            for grid in inputs:
                random.seed(0)
                np.random.seed(0)
                output = namespace["transform"](np.array(grid, dtype=np.int64))
                assert isinstance(output, np.ndarray) and output.ndim == 2 and 0 <= output.min() and output.max() <= 9
        except Exception:
            pass
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    sys.path.remove(str(DSL_PATH.parent))
    return elapsed, {"cpu_s": cpu}


def run_pool(pool: SandboxPool, programs: list[str], inputs: list[np.ndarray]) -> tuple[float, dict]:
    """Run the programs in the pool; return (seconds, {"cpu_s": CPU of pool + workers, result counts})."""
    workers_cpu = sum(map(group_cpu_seconds, pool.worker_pids))
    started, cpu_started = time.perf_counter(), time.process_time()
    results = pool.run([Job(source, inputs) for source in programs])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    stats = {"cpu_s": cpu + sum(map(group_cpu_seconds, pool.worker_pids)) - workers_cpu}  # exact while no worker is replaced
    for r in results:
        key = "ok" if r.error is None else str(r.error)
        stats[key] = stats.get(key, 0) + 1
    return elapsed, stats


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time so far of a worker: its process group, children it reaped included."""
    ticks = 0
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:  # pgrp
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            if int(entry) == pgid:
                ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: discarded children
    return ticks / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, numpy {np.__version__}"


def best_of(rounds: int, measure) -> tuple[float, dict]:
    """The fastest of several rounds: other processes on a small machine only ever add time."""
    return min((measure() for _ in range(rounds)), key=lambda timed: timed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-trivial", type=int, default=2000, help="trivial programs")
    parser.add_argument("--num-mix", type=int, default=1000, help="programs in the BARC-style mix")
    parser.add_argument("--timeout-s", type=float, default=1.0, help="per-program timeout for the benchmark")
    parser.add_argument("--rounds", type=int, default=3, help="repeat each measurement, keep the fastest")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DSL_PATH.exists():
        sys.exit(f"{DSL_PATH} is missing: the benchmark runs BARC-style programs that import it")

    inputs = make_inputs(np.random.default_rng(args.seed))
    trivial = [TRIVIAL] * args.num_trivial
    recycled = [RECYCLED] * max(1, args.num_trivial // 4)
    mix = make_mix(args.num_mix, random.Random(args.seed))
    mix_no_timeouts = [p for p in mix if p is not TIMES_OUT]
    num_timeouts = len(mix) - len(mix_no_timeouts)
    warm_up = trivial[:50] + mix_no_timeouts[:50]

    # --- overhead: the same programs in this process and in a pool of one worker, rounds
    # interleaved so that both see the same load from whatever else runs on the machine
    with SandboxPool(SandboxConfig(sandbox_workers=1, timeout_s=args.timeout_s)) as pool:
        run_in_process(warm_up, inputs)  # imports, the DSL, scipy
        run_pool(pool, warm_up, inputs)
        rounds = [(run_in_process(trivial, inputs), run_pool(pool, trivial, inputs),
                   run_in_process(mix_no_timeouts, inputs), run_pool(pool, mix_no_timeouts, inputs),
                   run_pool(pool, recycled, inputs))
                  for _ in range(args.rounds)]
    (inproc_trivial, inproc_trivial_stats), (one_trivial, one_trivial_stats), (inproc_mix, inproc_mix_stats), \
        (one_mix, one_mix_stats), (one_recycled, one_recycled_stats) = \
        (min((r[k] for r in rounds), key=lambda timed: timed[0]) for k in range(5))
    recycle_ms = 1000 * (one_recycled / len(recycled) - one_trivial / len(trivial))
    recycle_cpu_ms = 1000 * (one_recycled_stats["cpu_s"] / len(recycled) - one_trivial_stats["cpu_s"] / len(trivial))

    # --- throughput with one worker per core, and what timeouts cost
    with SandboxPool(SandboxConfig(timeout_s=args.timeout_s)) as pool:
        num_workers = pool.num_workers
        run_pool(pool, warm_up, inputs)
        all_trivial, counts_trivial = best_of(args.rounds, lambda: run_pool(pool, trivial, inputs))
        all_mix, counts_mix = best_of(args.rounds, lambda: run_pool(pool, mix, inputs))
        timeouts = pool.run([Job(TIMES_OUT, inputs)] * num_workers)
        assert all(r.error is ErrorKind.TIMEOUT for r in timeouts), timeouts
        timeout_elapsed = max(r.elapsed_s for r in timeouts)
        all_mix_no_timeouts, _ = best_of(args.rounds, lambda: run_pool(pool, mix_no_timeouts, inputs))
        started = time.perf_counter()
        swallowed = pool.run([Job(SWALLOWS_TIMEOUT, inputs)])[0]
        swallow_wall = time.perf_counter() - started
        assert swallowed.error is ErrorKind.TIMEOUT, swallowed

    def start_one_worker() -> tuple[float, dict]:
        started = time.perf_counter()
        SandboxPool(SandboxConfig(sandbox_workers=1)).close()
        return time.perf_counter() - started, {}

    startup, _ = best_of(args.rounds, start_one_worker)  # what replacing a killed worker costs

    timeout_cost = (all_mix - all_mix_no_timeouts) * num_workers / max(num_timeouts, 1)

    def row(programs, seconds, stats, in_process, in_process_stats, one_worker, one_worker_stats, num_compared):
        return dict(programs=len(programs), workers=num_workers, seconds=seconds, programs_per_s=len(programs) / seconds,
                    in_process_ms=1000 * in_process / num_compared, one_worker_ms=1000 * one_worker / num_compared,
                    overhead_ms=1000 * (one_worker - in_process) / num_compared,
                    cpu_overhead_ms=1000 * (one_worker_stats["cpu_s"] - in_process_stats["cpu_s"]) / num_compared,
                    results={k: v for k, v in stats.items() if k != "cpu_s"})

    rows = {
        "trivial": row(trivial, all_trivial, counts_trivial, inproc_trivial, inproc_trivial_stats, one_trivial, one_trivial_stats, len(trivial)),
        "mix": row(mix, all_mix, counts_mix, inproc_mix, inproc_mix_stats, one_mix, one_mix_stats, len(mix_no_timeouts)),
    }

    print(f"sandbox benchmark, {datetime.date.today()}, {machine()}")
    print(f"seed {args.seed}, timeout {args.timeout_s:g} s, 4 inputs of 30x30 per program, best of {args.rounds} rounds")
    print(f"{'workload':<8} {'programs':>8} {'workers':>7} {'prog/s':>7} {'in-proc ms':>10} {'1-worker ms':>11} "
          f"{'overhead ms':>11} {'CPU overhead ms':>15}  results")
    for name, r in rows.items():
        print(f"{name:<8} {r['programs']:>8} {r['workers']:>7} {r['programs_per_s']:>7.0f} {r['in_process_ms']:>10.3f} "
              f"{r['one_worker_ms']:>11.3f} {r['overhead_ms']:>11.3f} {r['cpu_overhead_ms']:>15.3f}  {r['results']}")
    print(f"one timing-out program costs the pool {timeout_cost:.2f} worker-s in the mix ({num_timeouts} of them), "
          f"and holds its worker {timeout_elapsed:.3f} s; its timeout: {args.timeout_s:g} s")
    print(f"recycling the child after a program costs {recycle_ms:.2f} ms wall, {recycle_cpu_ms:.2f} ms CPU "
          f"({one_recycled_stats.get('ok', 0)} of {len(recycled)} ok)")
    print(f"one program that catches every exception and loops: {swallow_wall:.2f} s wall (killed at the timeout); "
          f"a whole new worker takes {startup:.2f} s to start")
    print(json.dumps({"date": str(datetime.date.today()), "machine": machine(), "seed": args.seed, "timeout_s": args.timeout_s,
                      "rounds": args.rounds, **{f"{name}_{k}": v for name, r in rows.items() for k, v in r.items() if k != "results"},
                      "timeout_cost_worker_s": timeout_cost, "timeout_elapsed_s": timeout_elapsed, "swallowed_timeout_wall_s": swallow_wall,
                      "recycle_ms": recycle_ms, "recycle_cpu_ms": recycle_cpu_ms,
                      "worker_startup_s": startup}))


if __name__ == "__main__":
    main()
