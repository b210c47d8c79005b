"""Training-speed benchmark (the seeds' experiment 004): LoRA fine-tuning samples/s and tokens/s against
sequence length, micro-batch size, completion length and gradient checkpointing.

Examples:
    python bench/bench_training.py --tiny                     # CPU smoke run
    PYTHONUNBUFFERED=1 python bench/bench_training.py --out $OUT/training.json    # GPU, Llama-3.1-8B shape

Random bf16 weights with the Llama-3.1-8B architecture, LoRA rank 32 on all linear layers (rsLoRA), random
token ids (the loss on the completion only). Every configuration runs through `HFEngine.finetune`: one call
of 1 example to warm up, then one timed call of 8 examples (`--examples-per-step 8`: 1 optimizer step,
micro-batches packed up to the budget, longest first). The three sweeps change one thing each against
the base configuration (4,096 tokens, completion 512, one sequence per micro-batch, no checkpointing).
A fourth sweep, packing, trains 8 examples of spread lengths (1/4 to all of --seq, 512-token completions) in
micro-batches of 2 x seq tokens, padded to the longest of each (FinetuneConfig.packing off) or packed into one
row each attending only to itself (on).
--liger then turns on Liger's Triton kernels (RMSNorm, SwiGLU, RoPE; `liger-kernel`, the `gpu` extra) the way the
engine does (`engine.training_kernels`, `--training-kernels liger`) and runs the length sweep again, so that
the fused kernels are measured against the plain model in one process (the loss is computed on the completion
positions only, so Liger's fused linear cross-entropy is not used). --sweeps and --lengths keep a subset.
Prints a table, then one JSON line.
"""

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

from benchlib import build_model, error_text, finish, header, pick_device, print_table, random_ids

from arcsl.config import FinetuneConfig, ModelConfig
from arcsl.engine.hf import HFEngine
from arcsl.engine.training_kernels import apply_training_kernels

NUM_EXAMPLES = 8


def configurations(tiny: bool) -> list[dict]:
    """(sweep, sequence tokens, completion tokens, sequences per micro-batch, checkpointing)."""
    if tiny:
        return [dict(sweep="length", seq=128, completion=32, per_micro=1, checkpointing=False),
                dict(sweep="checkpointing", seq=128, completion=32, per_micro=1, checkpointing=True),
                dict(sweep="micro-batch", seq=128, completion=32, per_micro=4, checkpointing=False),
                *(dict(sweep="packing", seq=128, completion=16, per_micro=2, checkpointing=False, packing=p)
                  for p in (False, True))]
    rows = [dict(sweep="length", seq=n, completion=512, per_micro=1, checkpointing=c)
            for n in (2048, 4096, 8192, 9728) for c in (False, True)]
    rows += [dict(sweep="micro-batch", seq=2048, completion=512, per_micro=k, checkpointing=False) for k in (2, 4, 8)]
    rows += [dict(sweep="completion", seq=4096, completion=c, per_micro=1, checkpointing=False) for c in (128, 2048)]
    rows += [dict(sweep="packing", seq=4096, completion=512, per_micro=2, checkpointing=False, packing=p)
             for p in (False, True)]
    return rows


def run(engine: HFEngine, vocab: int, c: dict) -> dict:
    gen = torch.Generator().manual_seed(c["seq"] + c["completion"])
    packing = c.get("packing")  # the packing sweep: lengths spread from seq / 4 to seq
    lengths = [c["seq"] * (4 + 12 * i // (NUM_EXAMPLES - 1)) // 16 if packing is not None else c["seq"]
               for i in range(NUM_EXAMPLES)]
    examples = [(random_ids(n - c["completion"] - 1, vocab, gen), random_ids(c["completion"], vocab, gen))
                for n in lengths]
    cfg = FinetuneConfig(learning_rate=1e-5, max_seq_len=c["seq"], examples_per_step=NUM_EXAMPLES,
                         max_tokens_per_micro_batch=c["per_micro"] * c["seq"], gradient_checkpointing=c["checkpointing"],
                         packing=bool(packing))
    engine.reset()
    engine.finetune(examples[:1], cfg, seed=0)
    s = engine.finetune(examples, cfg, seed=0)
    return c | dict(samples_s=round(s.examples_per_s, 2), tokens_s=round(s.tokens_per_s),
                    loss_tokens_s=round(s.num_loss_tokens / s.seconds), seconds=round(s.seconds, 2),
                    checkpointed=f"{s.num_checkpointed}", oom_retries=s.num_oom_retries, peak_gb=round(s.peak_memory_gb, 1))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke run)")
    parser.add_argument("--liger", action="store_true", help="then the length sweep again with Liger's kernels")
    parser.add_argument("--sweeps", nargs="*", default=None, choices=["length", "micro-batch", "completion", "packing"],
                        help="only these sweeps (--liger needs length)")
    parser.add_argument("--lengths", nargs="*", type=int, default=None, help="only these lengths in the length sweep")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    if args.liger and args.sweeps and "length" not in args.sweeps:
        parser.error("--liger repeats the length sweep: add length to --sweeps")

    device = pick_device(args.tiny)
    start = time.perf_counter()
    model = build_model("tiny" if args.tiny else "llama-3.1-8b", device)
    engine = HFEngine(model, None, ModelConfig(model="random", lora_rank=32, lora_alpha=32, training_kernels="none"))
    result = header("training", device, argv) | {
        "model": "tiny llama" if args.tiny else "llama-3.1-8b shape, random bf16", "lora": "rank 32, all linear",
        "setup_s": round(time.perf_counter() - start, 1), "rows": []}
    rows = [c for c in configurations(args.tiny) if (not args.sweeps or c["sweep"] in args.sweeps)
            and (not args.lengths or c["sweep"] != "length" or c["seq"] in args.lengths)]
    if args.liger:
        rows += [c | dict(sweep="liger") for c in rows if c["sweep"] == "length"]
    for c in rows:
        try:
            if c["sweep"] == "liger":  # from here on (the engine's fine-tuning forward picks it up)
                apply_training_kernels(model, "liger")
            result["rows"].append(run(engine, model.config.vocab_size, c))
        except Exception as e:  # keep the other configurations' figures
            traceback.print_exc()
            result["rows"].append(c | dict(error=error_text(e)))
        print(result["rows"][-1], flush=True)
        if args.out:  # what is done so far survives a time limit
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result) + "\n")
    print_table(f"LoRA fine-tuning speed, {NUM_EXAMPLES} examples a step", result["rows"],
                ["sweep", "seq", "completion", "per_micro", "checkpointing", "packing", "samples_s", "tokens_s",
                 "loss_tokens_s", "peak_gb"])
    return finish(result, args.out)


if __name__ == "__main__":
    main()
