"""A small GPU's memory on a big one: sampling and fine-tuning under `--gpu-memory-gb`, with no out-of-memory retry.

Examples:
    python bench/bench_memory.py --tiny                                          # CPU smoke run (no cap on CPU)
    PYTHONUNBUFFERED=1 python bench/bench_memory.py --gb 24 --out $OUT/memory.json   # H200 as a 24 GB card (L4)

Llama-3.1-8B shape, random bf16 weights, LoRA rank 32 on all linear layers, 2 adapters. The engine is built with
`ModelConfig.gpu_memory_gb`: the process is capped there (`torch.cuda.set_per_process_memory_fraction`) and
the batch planner plans within the cap. Sampling: 16 prompts of 1,500 tokens x 8 samples x 512 new tokens
(a search of 16 views), twice; fine-tuning: 2 examples of 4k and 2 of 8k tokens. Reports, per call, the
out-of-memory retries (the target is 0), the batches, the throughput, the peak memory and what the engine saw
as available before it; and the fine-tuner's activation model with each micro-batch's plan (the estimate
against the budget). Prints a table, then one JSON line.
"""

import argparse
import time

import torch

from benchlib import build_model, finish, header, pick_device, print_table, random_ids

from arcsl.config import FinetuneConfig, ModelConfig, SamplingConfig
from arcsl.engine.hf import HFEngine


def gib(n: float) -> float:
    return round(n / 2**30, 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke run)")
    parser.add_argument("--gb", type=float, default=24.0, help="the memory cap, GiB (default: 24, a Kaggle L4)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(argv)

    device = pick_device(args.tiny)
    model = build_model("tiny" if args.tiny else "llama-3.1-8b", device)
    cfg = ModelConfig(lora_rank=32, lora_alpha=32, num_adapters=2, gpu_memory_gb=0 if args.tiny else args.gb)
    engine = HFEngine(model, None, cfg)
    vocab, gen = model.config.vocab_size, torch.Generator().manual_seed(0)
    prompt_len, new_tokens, seq_lens = (50, 16, [64, 128]) if args.tiny else (1500, 512, [4096, 8192])
    prompts = [random_ids(prompt_len, vocab, gen) for _ in range(16)]
    sampling = SamplingConfig(num_samples=8, max_new_tokens=new_tokens, ignore_eos=True)
    rows, plans = [], []
    finetuner, needs = engine.finetuner, engine.finetuner._needs_checkpointing

    def traced(tokens, loss_tokens, has_grads):  # each micro-batch's plan, as the fine-tuner made it
        available = engine.memory.available() if engine.memory else 0
        checkpointed = needs(tokens, loss_tokens, has_grads)
        a = finetuner.activations
        plans.append({"tokens": tokens, "available_gib": gib(available),
                      "plain_gib": gib(a.bytes(tokens, loss_tokens, False)),
                      "checkpointed_gib": gib(a.bytes(tokens, loss_tokens, True)), "checkpointed": checkpointed,
                      "released": finetuner.released})
        return checkpointed

    finetuner._needs_checkpointing = traced
    for call in (1, 2):
        available = gib(engine.memory.available()) if engine.memory else None
        kept = gib(engine.decoders.nbytes) if engine.decoders else None
        s = engine.sample(prompts, sampling, seed=call).stats
        rows.append({"call": f"sample {call}", "oom_retries": s.num_oom_retries, "batches": s.num_batches,
                     "tok_s": round(s.output_tokens_per_s), "seconds": round(s.total_s, 1),
                     "peak_gib": gib(s.peak_memory_gb * 1e9), "available_gib": available, "kept_gib": kept})
    for length in seq_lens:
        completion = min(256, length // 4)
        examples = [(random_ids(length - completion - 1, vocab, gen), random_ids(completion, vocab, gen))
                    for _ in range(2)]  # `length` tokens with the end token the engine adds
        started = time.perf_counter()
        available = gib(engine.memory.available()) if engine.memory else None
        f = engine.finetune(examples, FinetuneConfig(max_seq_len=8192, max_tokens_per_micro_batch=8192))
        rows.append({"call": f"finetune {length}", "oom_retries": f.num_oom_retries,
                     "checkpointed": f.num_checkpointed, "tok_s": round(f.tokens_per_s),
                     "seconds": round(time.perf_counter() - started, 1),
                     "peak_gib": gib(f.peak_memory_gb * 1e9), "available_gib": available})
    a = finetuner.activations
    model = a and {"fixed_mib": round(a.fixed / 2**20), "per_token_kib": round(a.per_token / 2**10, 1),
                   "fixed_checkpointed_mib": round(a.fixed_checkpointed / 2**20),
                   "per_checkpointed_token_kib": round(a.per_checkpointed_token / 2**10, 1),
                   "per_loss_token_kib": round(a.per_loss_token / 2**10, 1)}
    result = header("memory", device, argv) | {"cap_gib": cfg.gpu_memory_gb, "calls": rows,
                                               "activation_model": model, "micro_batches": plans}
    print_table(f"under a cap of {cfg.gpu_memory_gb} GiB", rows,
                ["call", "oom_retries", "batches", "checkpointed", "tok_s", "seconds", "peak_gib", "available_gib"])
    print_table("fine-tuning micro-batches", plans, list(plans[0]) if plans else [])
    print("activation model:", model)
    return finish(result, args.out)


if __name__ == "__main__":
    main()
