"""Per-round overhead: everything in a round that is not sampling, program execution or optimizer steps.

Examples:
    python bench/bench_overhead.py --tiny                                        # CPU smoke run
    PYTHONUNBUFFERED=1 python bench/bench_overhead.py --out $OUT/overhead.json   # GPU, Llama-3.1-8B shape

The engine calls of a task as the loop makes them: sample -> finetune -> sample -> reset -> sample, on BARC
prompts of 16 augmented views of an ARC-AGI-1 evaluation task (benchlib's code tokenizer), 8 samples each,
and 16 examples of the same prompts with BARC-style answers. Every call is timed wall-clock between two
GPU synchronisations; its work is what the engine measures inside it (prefill and decode steps of a
sample, optimizer steps of a finetune). Overhead = the rest: tokenisation, batch planning, the LoRA merge
or refresh, CUDA-graph captures and compilation, cache clearing, detokenisation, data preparation, the
reset. After a sample with the LoRA merged, the copy back of the base weights runs on the GPU after the
call has returned; its time is reported apart ("restore_s"): the loop runs the round's programs meanwhile.
A warm-up sequence comes first (the first round of a run compiles and captures); the sequence is then
measured twice, with the LoRA merged while sampling and not. Prints a table, then one JSON line.
"""

import argparse
import time
from dataclasses import replace

import numpy as np

from benchlib import (build_model, code_tokenizer, dataset, finish, header, median_tasks, pick_device, print_table,
                      program_completion, programs, sync)

from arcsl.augment import augment, random_augmentation
from arcsl.config import FinetuneConfig, ModelConfig, SamplingConfig
from arcsl.engine.hf import HFEngine
from arcsl.prompting import barc_prompt


def views_and_examples(num_views: int, seed: int) -> tuple[list, list]:
    """BARC prompts of augmented views of a median-size ARC-AGI-1 evaluation task, and training examples."""
    [task_id] = median_tasks("arc-agi-1/evaluation", 1)
    task = next(t for t in dataset("arc-agi-1/evaluation") if t.id == task_id)
    rng = np.random.default_rng(seed)
    prompts = [barc_prompt(augment(task, random_augmentation(task, rng))) for _ in range(num_views)]
    pool = programs()
    return prompts, [(p, program_completion(pool[i % len(pool)])) for i, p in enumerate(prompts)]


def timed_call(engine: HFEngine, name: str, call) -> dict:
    """Runs one engine call between synchronisations; splits its time into work and overhead."""
    sync(engine.device)
    start = time.perf_counter()
    out = call()
    returned = time.perf_counter()
    sync(engine.device)  # after a merged sample: the base weights' asynchronous restore
    restore = time.perf_counter() - returned
    wall = returned - start
    row = {"call": name, "wall_s": round(wall, 4), "restore_s": round(restore, 4)}
    if name == "sample":
        s = out.stats
        work = s.prefill_s + s.decode_s
        row |= {"work_s": round(work, 4), "capture_s": round(s.capture_s, 4), "merge_s": round(s.merge_s, 4)}
    elif name == "finetune":
        work = out.seconds
        row["work_s"] = round(work, 4)
    else:
        work = 0.0
    row["overhead_s"] = round(wall - work, 4)
    return row


def run_sequence(engine: HFEngine, prompts, examples, sampling: SamplingConfig,
                 finetuning: FinetuneConfig) -> list[dict]:
    calls = [("sample", lambda: engine.sample(prompts, sampling, seed=1)),
             ("finetune", lambda: engine.finetune(examples, finetuning, seed=1)),
             ("sample", lambda: engine.sample(prompts, sampling, seed=2)),
             ("reset", engine.reset),
             ("sample", lambda: engine.sample(prompts, sampling, seed=3))]
    return [timed_call(engine, name, call) for name, call in calls]


def rounds(calls: list[dict]) -> dict:
    """Overhead per round: a learning round is finetune + sample, a task's first round reset + sample."""
    learning = calls[1]["overhead_s"] + calls[2]["overhead_s"]
    first = calls[3]["overhead_s"] + calls[4]["overhead_s"]
    return {"learning_round_overhead_s": round(learning, 4), "first_round_overhead_s": round(first, 4),
            "restore_s": max(c["restore_s"] for c in calls)}


def compile_count() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke run)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--views", type=int, default=None, help="prompts per sample call; default: 2 tiny, 16")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 8 tiny, 64 on the GPU")
    args = parser.parse_args(argv)

    device = pick_device(args.tiny)
    tokenizer = code_tokenizer(tiny=args.tiny)
    model = build_model("tiny" if args.tiny else "llama-3.1-8b", device, len(tokenizer) if args.tiny else None)
    engine = HFEngine(model, tokenizer, ModelConfig(model="random-llama", lora_rank=32, lora_alpha=32))
    views = args.views or (2 if args.tiny else 16)
    prompts, examples = views_and_examples(views, seed=0)
    new = args.max_new_tokens or (8 if args.tiny else 64)
    sampling = SamplingConfig(num_samples=8, max_new_tokens=new, ignore_eos=True)
    finetuning = FinetuneConfig()
    result = header("overhead", device, argv) | {
        "model": "tiny llama" if args.tiny else "llama-3.1-8b shape, random bf16",
        "views": views, "samples_per_view": 8, "new_tokens": new, "examples": len(examples),
        "prompt_tokens": [len(engine.codec.encode_prompt(p)) for p in prompts]}
    print(f"{result['device']}: {views} views x 8 samples x {new} new tokens, "
          f"prompts of {min(result['prompt_tokens'])}-{max(result['prompt_tokens'])} tokens", flush=True)

    started = time.perf_counter()
    result["warm_up"] = run_sequence(engine, prompts, examples, sampling, finetuning)
    result["warm_up_s"] = round(time.perf_counter() - started, 1)
    compiled = compile_count()
    for merge in (True, False):
        calls = run_sequence(engine, prompts, examples, replace(sampling, merge_lora=merge), finetuning)
        result["merged" if merge else "not_merged"] = {"calls": calls, **rounds(calls)}
    result["compilations_after_warm_up"] = compile_count() - compiled

    for key in ("merged", "not_merged"):
        print_table(f"LoRA {key.replace('_', ' ')}: seconds per engine call", result[key]["calls"],
                    ["call", "wall_s", "work_s", "overhead_s", "capture_s", "merge_s", "restore_s"])
        print({k: v for k, v in result[key].items() if k != "calls"})
    print(f"compilations after the warm-up: {result['compilations_after_warm_up']}")
    return finish(result, args.out)


if __name__ == "__main__":
    main()
