"""Engine benchmark: sampling and LoRA fine-tuning throughput, reset time, peak memory.

Examples:
    python bench/bench_engine.py --tiny                    # CPU smoke run, seconds (CI keeps it working)
    PYTHONUNBUFFERED=1 python bench/bench_engine.py --out $OUT/engine.json   # GPU, Llama-3.1-8B shape

The model has the Llama-3.1-8B architecture (vocab 128,256, 32 layers, hidden 4,096, 8 KV heads) with
random weights built directly on the device in bf16; prompts and completions are random token ids, so no
tokenizer or download is needed. Everything runs through the real engine path: `HFEngine.sample`,
`HFEngine.finetune`, `HFEngine.reset`. Each case is warmed up first. Prints a table, then one JSON line.
"""

import argparse
import datetime
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arcsl.config import FinetuneConfig, ModelConfig, SamplingConfig  # noqa: E402
from arcsl.engine import HFEngine  # noqa: E402
from arcsl.sampler import SharedPrefixDecoder  # noqa: E402

LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
                rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=0, eos_token_id=1)


def build_model(tiny: bool, device: torch.device):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**(TINY if tiny else LLAMA_8B))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: an 8B CPU init would take minutes
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_ids(n: int, vocab: int, gen: torch.Generator) -> list[int]:
    low, high = (1000, vocab - 300) if vocab > 2000 else (10, vocab)  # clear of Llama-3's special tokens
    return torch.randint(low, high, (n,), generator=gen).tolist()


def error_text(e: Exception) -> str:
    return "out of memory" if isinstance(e, torch.OutOfMemoryError) else f"{type(e).__name__}: {e}"[:300]


# --- cases ------------------------------------------------------------------------------------------


def bench_sampling(engine: HFEngine, tiny: bool, vocab: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    prompt_len, new = (64, 16) if tiny else (1000, 256)
    cases = [("1 prompt x 8", 1, 8, True), ("4 prompts x 2", 4, 2, True)] if tiny else [
        ("1 prompt x 128", 1, 128, True), ("1 prompt x 64", 1, 64, True), ("1 prompt x 256", 1, 256, True),
        ("8 prompts x 16", 8, 16, True), ("1 prompt x 128, no CUDA graph", 1, 128, False)]
    prompts = [random_ids(prompt_len, vocab, gen) for _ in range(8)]
    for graphs in (True, False):  # warm-up: kernels, cuBLAS handles, the allocator
        warm = SamplingConfig(num_samples=cases[0][2], max_new_tokens=min(new, 32), ignore_eos=True,
                              stop_at_code_end=False, cuda_graphs=graphs)
        engine.sample(prompts[:1], warm, seed=0)
    rows = []
    for name, num_prompts, n, graphs in cases:
        cfg = SamplingConfig(num_samples=n, temperature=1.0, top_p=0.95, max_new_tokens=new, ignore_eos=True,
                             stop_at_code_end=False, cuda_graphs=graphs)
        try:
            s = engine.sample(prompts[:num_prompts], cfg, seed=0).stats
        except Exception as e:  # keep the other cases' figures
            traceback.print_exc()
            rows.append(dict(case=name, error=error_text(e)))
            continue
        rows.append(dict(case=name, prompt_tokens=prompt_len, samples=num_prompts * n, new_tokens=new,
                         output_tok_s=round(s.output_tokens_per_s),
                         decode_tok_s=round(s.num_output_tokens / s.decode_s),
                         decode_ms_per_step=round(1000 * s.decode_s / (s.num_batches * (new - 1)), 2),
                         prefill_s=round(s.prefill_s, 3), total_s=round(s.total_s, 3), batches=s.num_batches,
                         peak_gb=round(s.peak_memory_gb, 1)))
        print(f"sampling  {name}: {rows[-1]['output_tok_s']} output tok/s", flush=True)
    return rows


def bench_finetune(engine: HFEngine, tiny: bool, vocab: int) -> list[dict]:
    gen = torch.Generator().manual_seed(2)
    completion, num = (32, 2) if tiny else (512, 6)
    cases = [(128, 1, False), (256, 1, False)] if tiny else [
        (2048, 1, False), (4096, 1, False), (4096, 2, False), (8192, 1, False), (8192, 1, True), (4096, 1, True)]
    rows = []
    for length, per_micro, ckpt in cases:
        name = f"{length} tokens, {per_micro}/micro-batch" + (", checkpointing" if ckpt else "")
        examples = [(random_ids(length - completion - 1, vocab, gen), random_ids(completion, vocab, gen))
                    for _ in range(num)]
        cfg = FinetuneConfig(learning_rate=1e-5, examples_per_step=per_micro, max_seq_len=length,
                             max_tokens_per_micro_batch=length * per_micro, gradient_checkpointing=ckpt)
        error = None
        try:
            engine.finetune(examples[:per_micro], cfg, seed=0)  # warm-up: allocator, kernels
            s = engine.finetune(examples, cfg, seed=0)
        except Exception as e:  # out of memory, typically; keep the other cases' figures
            error = error_text(e)
        if error is not None:  # outside the except block, so the failed step's tensors are freed
            engine.finetuner.optimizer.zero_grad(set_to_none=True)
            if engine.device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(dict(case=name, error=error))
            continue
        rows.append(dict(case=name, seq_len=length, samples_s=round(s.examples_per_s, 2),
                         tokens_s=round(s.tokens_per_s), s_per_step=round(s.seconds / s.num_steps, 3),
                         peak_gb=round(s.peak_memory_gb, 1)))
        print(f"finetune  {name}: {rows[-1]['tokens_s']} tok/s", flush=True)
    return rows


def check_decoder(engine: HFEngine, tiny: bool, vocab: int) -> dict:
    """Fast decode path vs the model's own forward over the whole sequence: relative error of the logits
    after the prefill and after 3 decode steps. The model's forward with its own KV cache is measured the
    same way, as the yardstick for rounding noise between two equal computations (bf16 on GPU)."""
    gen = torch.Generator().manual_seed(3)
    length = 40 if tiny else 1000
    train = [(random_ids(length, vocab, gen), random_ids(32, vocab, gen)) for _ in range(2)]
    engine.finetune(train, FinetuneConfig(learning_rate=1e-3, max_seq_len=length + 33))  # a LoRA that is not 0
    ids = random_ids(length, vocab, gen)
    decoder = SharedPrefixDecoder(engine.lm, [ids], 2, 8, engine.device.type == "cuda", engine.autocast_dtype)
    autocast = torch.autocast(engine.device.type, dtype=engine.autocast_dtype or torch.float32,
                              enabled=engine.autocast_dtype is not None)

    def last_logits(input_ids: list[int], **kwargs):
        out = engine.lm(input_ids=torch.tensor([input_ids], device=engine.device), logits_to_keep=1, **kwargs)
        return out.logits[0, -1].float(), out.past_key_values

    ours, yardstick = [], []
    with torch.no_grad(), autocast:
        logits = decoder.prefill()
        cached, cache = last_logits(ids, use_cache=True)
        for step in range(4):
            ref, _ = last_logits(ids)
            ours.append(((logits[1] - ref).norm() / ref.norm()).item())
            yardstick.append(((cached - ref).norm() / ref.norm()).item())
            token = int(ref.argmax())
            ids = ids + [token]
            logits = decoder.step(torch.full((2,), token, device=engine.device), step)
            cached, cache = last_logits([token], past_key_values=cache, use_cache=True)
    engine.reset()
    return {"relative_error_per_step": [float(f"{e:.2e}") for e in ours],
            "hf_cache_relative_error_per_step": [float(f"{e:.2e}") for e in yardstick]}


def bench_reset(engine: HFEngine) -> dict:
    times = []
    for _ in range(10):
        sync(engine.device)
        start = time.perf_counter()
        engine.reset()
        sync(engine.device)
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 5), "max_s": round(max(times), 5),
            "lora_tensors": len(engine.finetuner.params),
            "lora_params": sum(p.numel() for p in engine.finetuner.params)}


# --- report -----------------------------------------------------------------------------------------


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n{title}")
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        if "error" in r:
            print(f"{r['case'].ljust(widths[0])}  {r['error']}")
        else:
            print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))


def print_report(result: dict) -> None:
    print_table("sampling (random ids, every sample runs to max tokens)", result.get("sampling", []),
                ["case", "samples", "output_tok_s", "decode_tok_s", "decode_ms_per_step", "prefill_s", "peak_gb"])
    print_table("LoRA fine-tuning (rank 32, all linear layers)", result.get("finetune", []),
                ["case", "samples_s", "tokens_s", "s_per_step", "peak_gb"])
    if "check" in result:
        check = result["check"]
        print(f"\ncheck: relative error of the decode logits vs the full forward {check['relative_error_per_step']}; "
              f"HF's own cached decode {check['hf_cache_relative_error_per_step']}")
    if "reset" in result:
        r = result["reset"]
        print(f"reset: median {r['median_s'] * 1000:.2f} ms, max {r['max_s'] * 1000:.2f} ms "
              f"({r['lora_tensors']} LoRA tensors, {r['lora_params'] / 1e6:.1f} M parameters)")
    for name, error in result["errors"].items():
        print(f"{name} failed: {error}")


# --- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke run)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sampling", "finetune", "check", "reset"])
    args = parser.parse_args(argv)

    import peft
    import transformers

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny matrices: threads only contend
    start = time.perf_counter()
    model = build_model(args.tiny, device)
    engine = HFEngine(model, None, ModelConfig(model="random-llama", lora_rank=32, lora_alpha=32))
    sync(device)
    result = {"bench": "engine", "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
              "model": "tiny llama" if args.tiny else "llama-3.1-8b shape, random bf16",
              "lora": "rank 32, alpha 32, rsLoRA, all linear layers",
              "setup_s": round(time.perf_counter() - start, 1), "errors": {}}
    print(f"{result['device']}, torch {result['torch']}, transformers {result['transformers']}, "
          f"peft {result['peft']}, model and engine built in {result['setup_s']} s", flush=True)
    vocab = model.config.vocab_size
    sections = {"sampling": lambda: bench_sampling(engine, args.tiny, vocab),
                "finetune": lambda: bench_finetune(engine, args.tiny, vocab),
                "check": lambda: check_decoder(engine, args.tiny, vocab),
                "reset": lambda: bench_reset(engine)}
    for name, run in sections.items():
        if name in args.skip:
            continue
        try:
            result[name] = run()
        except Exception as e:  # a failed section must not lose the others' figures
            traceback.print_exc()
            result["errors"][name] = error_text(e)
    print_report(result)
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
