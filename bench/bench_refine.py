"""Refinement benchmark: the engine's cost of a refined program against a fresh one.

Examples:
    python bench/bench_refine.py --tiny                                        # CPU smoke run, seconds
    PYTHONUNBUFFERED=1 python bench/bench_refine.py --out $OUT/refine.json     # GPU, Llama-3.1-8B shape

One ARC-AGI-1 evaluation task of median size (benchlib.median_tasks), BARC prompts with benchlib's code
tokenizer (realistic token counts for BARC text), a model of the Llama-3.1-8B shape (--arch: another of
benchlib.ARCHS) with random bf16 weights. Three sampling calls of 128 programs each, through `HFEngine.sample`:
- fresh: 16 augmented views (dihedral, keep-background colours, train order; numpy rng seeded) x 8 samples,
  prompts `barc_prompt(view)`;
- refine: 16 parents x 8 refinements: each parent a BARC-style program of benchlib.programs() (header and
  comments; drawn from the longer half of the pool) shown in a view of its own with feedback; its outputs are
  the view's expected outputs with one colour changed (a numpy recolouring, no sandbox), so every example shows
  a grid of the expected shape and its X mask: the longest feedback a refine prompt has (an error or a wrong
  shape is shorter). Prompts `barc_refine_prompt(view, program, feedback)`, as `refine.parent_view` frames them;
- mixed: 8 fresh views + 8 parents in one call, as a round with refinement runs.
Every sample decodes the same number of tokens (ignore_eos), so the difference is the longer prompt: its
prefill, and the decode steps' longer attention. Each call runs twice: the first ("cold") compiles and
captures the CUDA graphs of its shape, the second ("warm") is the one reported; both are in the JSON.
Prints a table, then one JSON line. Target: refine / fresh total time per program at most 1.3.
"""

import argparse
import json
import statistics
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchlib import (ARCHS, build_model, code_tokenizer, dataset, error_text, finish, header, median_tasks,
                      pick_device, print_table, programs, sync)

from arcsl.augment import augment, random_augmentation
from arcsl.config import ModelConfig, SamplingConfig
from arcsl.engine.hf import HFEngine
from arcsl.grids import Grid, Task
from arcsl.prompting import Feedback, barc_prompt, barc_refine_prompt

DATASET = "arc-agi-1/evaluation"
TARGET = 1.3  # refine / fresh, total time per program


def views(task: Task, num: int, rng: np.random.Generator) -> list[Task]:
    return [augment(task, random_augmentation(task, rng, use_dihedral=True, colors="keep-background",
                                              shuffle_train=True)) for _ in range(num)]


def wrong_output(expected: Grid, rng: np.random.Generator) -> Grid:
    """The expected grid with one of its colours changed: right shape, some cells wrong."""
    out = np.array(expected)
    colours = sorted(set(np.unique(out).tolist()) - {0}) or [int(out.flat[0])]
    old = int(rng.choice(colours))
    out[out == old] = old % 9 + 1  # 1..8 -> the next colour, 9 -> 1, 0 -> 1: always another colour
    return out


def parent_pool() -> list[str]:
    """The longer half of benchlib.programs() (object programs and recolourings): nearer BARC answers' length."""
    pool = programs()
    median = statistics.median(len(p) for p in pool)
    return [p for p in pool if len(p) >= median]


def refine_prompts(task: Task, num: int, rng: np.random.Generator) -> tuple[list, list[str]]:
    """`num` refine prompts, each a parent program in its own view with its (wrong) outputs there."""
    pool, prompts, parents = parent_pool(), [], []
    for view in views(task, num, rng):
        program = pool[int(rng.integers(len(pool)))]
        feedback = Feedback(outputs=tuple(wrong_output(p.output, rng) for p in view.train))
        prompts.append(barc_refine_prompt(view, program, feedback))
        parents.append(program)
    return prompts, parents


def stats_dict(s) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(s).items()}


def run_case(engine: HFEngine, name: str, prompts: list, cfg: SamplingConfig, seed: int) -> dict:
    """The call twice (cold, then warm; seeds `seed` and `seed + 1`); per-program figures of the warm one."""
    tokens = [len(engine.codec.encode_prompt(p)) for p in prompts]
    runs = {}
    for label, s in (("cold", seed), ("warm", seed + 1)):
        sync(engine.device)
        runs[label] = engine.sample(prompts, cfg, seed=s).stats
        sync(engine.device)
    warm, n = runs["warm"], len(prompts) * cfg.num_samples
    return dict(case=name, prompts=len(prompts), programs=n, prompt_tokens=round(statistics.mean(tokens), 1),
                prompt_tokens_min=min(tokens), prompt_tokens_max=max(tokens),
                prefill_s=round(warm.prefill_s, 4), decode_s=round(warm.decode_s, 4), total_s=round(warm.total_s, 4),
                prefill_ms_per_program=round(1000 * warm.prefill_s / n, 3),
                decode_ms_per_program=round(1000 * warm.decode_s / n, 3),
                total_ms_per_program=round(1000 * warm.total_s / n, 3),
                cold_total_s=round(runs["cold"].total_s, 3), batches=warm.num_batches,
                peak_gb=round(warm.peak_memory_gb, 1), warm=stats_dict(warm), cold=stats_dict(runs["cold"]))


def ratios(case: dict, base: dict) -> dict:
    return {part: round(case[f"{part}_ms_per_program"] / base[f"{part}_ms_per_program"], 3)
            for part in ("total", "prefill", "decode")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke run)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--arch", default="llama-3.1-8b", choices=[a for a in ARCHS if not a.startswith("tiny")],
                        help="model shape on a GPU")
    parser.add_argument("--views", type=int, default=None,
                        help="fresh views, and parents, per call (mixed: half each); default: 2 tiny, 16")
    parser.add_argument("--samples", type=int, default=None, help="samples per prompt; default: 2 tiny, 8")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="per sample; default: 8 tiny, 512")
    parser.add_argument("--seed", type=int, default=0, help="augmentations, parents and sampling")
    args = parser.parse_args(argv)
    num = args.views or (2 if args.tiny else 16)
    samples = args.samples or (2 if args.tiny else 8)
    new = args.max_new_tokens or (8 if args.tiny else 512)
    if num < 2 or num % 2:
        parser.error("--views must be even and at least 2 (the mixed call takes half of each)")

    device = pick_device(args.tiny)
    start = time.perf_counter()
    tokenizer = code_tokenizer(tiny=args.tiny)
    arch = "tiny" if args.tiny else args.arch
    model = build_model(arch, device, len(tokenizer) if args.tiny else None)
    engine = HFEngine(model, tokenizer, ModelConfig(model=arch, lora_rank=32, lora_alpha=32))
    sync(device)
    [task_id] = median_tasks(DATASET, 1)
    task = next(t for t in dataset(DATASET) if t.id == task_id)
    rng = np.random.default_rng(args.seed)
    fresh = [barc_prompt(v) for v in views(task, num, rng)]
    refine, parents = refine_prompts(task, num, rng)
    cfg = SamplingConfig(num_samples=samples, max_new_tokens=new, ignore_eos=True, temperature=1.0, top_p=0.95)
    result = header("refine", device, argv) | {
        "model": "tiny llama" if args.tiny else f"{args.arch} shape, random bf16", "seed": args.seed,
        "task": task_id, "task_cells": task.num_cells, "train_pairs": len(task.train),
        "settings": {"views": num, "samples_per_prompt": samples, "max_new_tokens": new, "ignore_eos": True,
                     "temperature": 1.0, "top_p": 0.95},
        "parent_program_tokens": [len(tokenizer(p, add_special_tokens=False).input_ids) for p in parents],
        "setup_s": round(time.perf_counter() - start, 1)}
    print(f"{result['device']}: task {task_id} ({task.num_cells} cells), {num} prompts x {samples} samples x {new} "
          f"new tokens per call; setup {result['setup_s']} s", flush=True)

    half = num // 2
    cases = {"fresh": fresh, "refine": refine, "mixed": fresh[:half] + refine[:half]}
    rows = result["cases"] = []
    for name, prompts in cases.items():
        try:
            rows.append(run_case(engine, name, prompts, cfg, seed=args.seed))
        except Exception as e:  # keep the other cases' figures
            traceback.print_exc()
            rows.append(dict(case=name, error=error_text(e)))
            result["errors"][name] = rows[-1]["error"]
            engine.release_sampler_memory()
            continue
        print(f"{name}: {rows[-1]['prompt_tokens']} prompt tokens, {rows[-1]['total_ms_per_program']} ms per program "
              f"(cold call {rows[-1]['cold_total_s']} s)", flush=True)
        if args.out:  # what is done so far survives a time limit
            Path(args.out).write_text(json.dumps(result) + "\n")
    by_name = {r["case"]: r for r in rows if "error" not in r}
    if "fresh" in by_name:
        for name in ("refine", "mixed"):
            if name in by_name:
                result[f"{name}_over_fresh"] = ratios(by_name[name], by_name["fresh"])
    if "refine_over_fresh" in result:
        result["within_target"] = result["refine_over_fresh"]["total"] <= TARGET
    result["compile_error"] = engine.decoders.compile_error if engine.decoders else None

    print_table(f"{samples} samples x {new} tokens per prompt, every sample to the limit (warm calls; "
                "ms per program = call time / programs)", rows,
                ["case", "prompts", "programs", "prompt_tokens", "prefill_s", "decode_s", "total_s",
                 "prefill_ms_per_program", "decode_ms_per_program", "total_ms_per_program", "cold_total_s",
                 "batches", "peak_gb"])
    for name in ("refine", "mixed"):
        if f"{name}_over_fresh" in result:
            print(f"{name} / fresh per program: {result[f'{name}_over_fresh']}")
    if "within_target" in result:
        print(f"refine / fresh total per program {result['refine_over_fresh']['total']} (target: at most {TARGET}): "
              f"{'met' if result['within_target'] else 'not met'}")
    return finish(result, args.out)


if __name__ == "__main__":
    main()
