"""Engine benchmark: sampling throughput, several adapters in one call, the decode step's parts and kernels, LoRA
fine-tuning at 2k-9.7k tokens next to the sampler's kept memory, reset time, and checks that the fast paths
compute what the model computes.

Examples:
    python bench/bench_engine.py --tiny                    # CPU smoke run, seconds (CI keeps it working)
    PYTHONUNBUFFERED=1 python bench/bench_engine.py --out $OUT/engine.json   # GPU, Llama-3.1-8B shape

The model has the Llama-3.1-8B architecture (vocab 128,256, 32 layers, hidden 4,096, 8 KV heads; --arch picks
another of benchlib.ARCHS, e.g. qwen3-4b) with random weights built directly on the device in bf16; prompts
and completions are random token ids, so no tokenizer or download is needed. Everything runs through the
real engine path: `HFEngine.sample`, `HFEngine.finetune`, `HFEngine.reset`. The LoRA is trained for a step
first, so sampling pays for it (merged or not). Each sampling case runs twice with the same shape: the first call ("cold") captures its CUDA
graphs, the second ("warm", the steady state of a run's later rounds) reuses them. The engine holds
`NUM_ADAPTERS` adapters; everything but the adapters section and the paths check uses adapter 0. Prints
tables, then one JSON line.
"""

import argparse
import json
import statistics
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from benchlib import (ARCHS, build_model, code_tokenizer, error_text, finish, header, pick_device, print_table,
                      random_ids, sync)

from arcsl.config import FinetuneConfig, ModelConfig, SamplingConfig
from arcsl.engine.hf import HFEngine
from arcsl.engine.token_choice import PromptNoise, pick_tokens, pick_tokens_by_sort

NUM_ADAPTERS = 5  # the most adapters the adapters section mixes
LORA = ModelConfig(model="random-llama", lora_rank=32, lora_alpha=32, num_adapters=NUM_ADAPTERS)
BASE = SamplingConfig(temperature=1.0, top_p=0.95, ignore_eos=True)


# --- sampling ---------------------------------------------------------------------------------------


def sampling_cases(tiny: bool) -> list[tuple[str, int, int, dict]]:
    """(name, prompts, samples per prompt, SamplingConfig changes)."""
    if tiny:
        return [("1 prompt x 8", 1, 8, {}), ("4 prompts x 2", 4, 2, {}),
                ("1 prompt x 8, LoRA not merged", 1, 8, {"merge_lora": False})]
    return [("1 prompt x 128", 1, 128, {}), ("8 prompts x 16", 8, 16, {}), ("1 prompt x 512", 1, 512, {}),
            ("16 prompts x 8", 16, 8, {}),
            ("1 prompt x 128, LoRA not merged", 1, 128, {"merge_lora": False}),
            ("1 prompt x 128, not compiled", 1, 128, {"compile_decode": False}),
            ("1 prompt x 128, top-p 1", 1, 128, {"top_p": 1.0}),
            ("1 prompt x 16", 1, 16, {}), ("1 prompt x 64", 1, 64, {})]


def bench_sampling(engine: HFEngine, tiny: bool, vocab: int, num_cases: int | None) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    prompt_len, new = (64, 16) if tiny else (1000, 256)
    prompts = [random_ids(prompt_len, vocab, gen) for _ in range(16)]
    rows = []
    for name, num_prompts, n, changes in sampling_cases(tiny)[:num_cases]:
        cfg = replace(BASE, num_samples=n, max_new_tokens=new, **changes)
        try:
            cold = engine.sample(prompts[:num_prompts], cfg, seed=0).stats
            s = engine.sample(prompts[:num_prompts], cfg, seed=1).stats
        except Exception as e:  # keep the other cases' figures
            traceback.print_exc()
            rows.append(dict(case=name, error=error_text(e)))
            engine.release_sampler_memory()
            continue
        rows.append(dict(case=name, prompt_tokens=prompt_len, samples=num_prompts * n, new_tokens=new,
                         output_tok_s=round(s.output_tokens_per_s), cold_output_tok_s=round(cold.output_tokens_per_s),
                         decode_tok_s=round(s.num_output_tokens / s.decode_s),
                         decode_ms_per_step=round(1000 * s.decode_s / (s.num_batches * (new - 1)), 2),
                         prefill_s=round(s.prefill_s, 3), merge_s=round(s.merge_s, 4),
                         overhead_s=round(s.total_s - s.prefill_s - s.decode_s, 3),
                         cold_capture_s=round(cold.capture_s, 2), total_s=round(s.total_s, 3),
                         batches=s.num_batches, peak_gb=round(s.peak_memory_gb, 1)))
        print(f"sampling  {name}: {rows[-1]['output_tok_s']} output tok/s (cold {rows[-1]['cold_output_tok_s']})",
              flush=True)
    return rows


# --- several adapters -------------------------------------------------------------------------------


def adapter_cases(k: int, r: int) -> dict[str, tuple[list[list[tuple[int, int]]], dict]]:
    """name -> (its calls, each a list of (prompt, adapter); SamplingConfig changes)."""
    mixed, single = [(i, i) for i in range(k)], [(i, 0) for i in range(k)]
    return {f"{k} adapters x {r}, one call (mixed)": ([mixed], {}),
            f"1 adapter x {k * r}, one call": ([single], {}),
            f"1 adapter x {k * r}, one call, LoRA not merged": ([single], {"merge_lora": False}),
            f"{k} calls of 1 adapter x {r} (tasks one by one)": ([[pair] for pair in mixed], {})}


def bench_adapters(engine: HFEngine, tiny: bool, vocab: int) -> list[dict]:
    """K adapters x R samples in one call (each adapter its own prompt; the LoRA is not merged and every
    row reads its own adapter's factors) against 1 adapter x K*R samples of the same prompts, and against
    K calls of R samples (tasks searched one after another). Each adapter is first trained a step on data of
    its own, so that they differ. Warm calls (second of each shape)."""
    k, r = (3, 4) if tiny else (NUM_ADAPTERS, 16)
    gen = torch.Generator().manual_seed(6)
    prompt_len, new = (64, 16) if tiny else (1000, 256)
    prompts = [random_ids(prompt_len, vocab, gen) for _ in range(k)]
    for adapter in range(k):
        example = (random_ids(64, vocab, gen), random_ids(8, vocab, gen))
        engine.finetune([example], FinetuneConfig(), seed=adapter, adapter=adapter)
    rows = []
    for name, (calls, changes) in adapter_cases(k, r).items():
        cfg = replace(BASE, num_samples=r, max_new_tokens=new, **changes)
        try:
            for seed in (0, 1):  # the first captures the graphs, the second is timed
                stats = [engine.sample([prompts[i] for i, _ in call], cfg, seed, [a for _, a in call]).stats
                         for call in calls]
        except Exception as e:  # keep the other cases' figures
            traceback.print_exc()
            rows.append(dict(case=name, error=error_text(e)))
            engine.release_sampler_memory()
            continue
        tokens, total = sum(s.num_output_tokens for s in stats), sum(s.total_s for s in stats)
        decode = sum(s.decode_s for s in stats)
        steps = sum(s.num_batches for s in stats) * (new - 1)
        rows.append(dict(case=name, calls=len(calls), samples=k * r, new_tokens=new, output_tok_s=round(tokens / total),
                         decode_ms_per_step=round(1000 * decode / steps, 2),
                         rows_per_step=k * r // len(calls), total_s=round(total, 3),
                         merge_s=round(sum(s.merge_s for s in stats), 4)))
        print(f"adapters  {name}: {rows[-1]['output_tok_s']} output tok/s, "
              f"{rows[-1]['decode_ms_per_step']} ms per step", flush=True)
    return rows


def cuda_ms(fn, repeats: int = 20) -> float:
    """Median milliseconds of `fn()` on the GPU, timed with events after a warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 3)


def bench_step_parts(engine: HFEngine, vocab: int) -> dict:
    """Where a decode step's time goes, 1 prompt x 128 at a step-cache width of 256: the captured graph
    (the model) and the token choice (noise, softmax, the kept set, the draw): without sorting (the engine's)
    and by sorting the vocabulary (the textbook method, the engine's before), on logits as flat as a random
    model's (std 1.3) and more peaked (std 3); and the weight-read floor."""
    cfg = replace(BASE, num_samples=128, max_new_tokens=256)
    engine.sample([random_ids(1000, vocab, torch.Generator().manual_seed(4))], cfg)
    decoder = next(d for key, d in engine.decoders.kept.items() if key[:2] == (1, 128))
    tokens = torch.zeros(128, dtype=torch.long, device=engine.device)
    noise = PromptNoise([torch.Generator(engine.device).manual_seed(0)], 128)  # 1 prompt x 128, as in a run
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.lm.parameters() if not p.requires_grad)
    parts = {"graph_ms": cuda_ms(lambda: decoder.step(tokens, 200))}
    for spread in (1.3, 3.0):
        logits = torch.randn(128, vocab, device=engine.device, generator=torch.Generator(engine.device).manual_seed(1))
        logits *= spread
        for name, top_p, min_p in (("top_p_0.95", 0.95, 0.0), ("top_p_0.5", 0.5, 0.0), ("min_p_0.05", 1.0, 0.05),
                                   ("top_p_1", 1.0, 0.0)):
            parts[f"pick_{name}_std_{spread}_ms"] = cuda_ms(lambda: pick_tokens(logits, 1.0, top_p, noise, min_p))
            if name == "top_p_0.95":
                parts[f"pick_by_sort_{name}_std_{spread}_ms"] = cuda_ms(
                    lambda: pick_tokens_by_sort(logits, 1.0, top_p, noise, min_p))
    return parts | {"weights_gb": round(weight_bytes / 1e9, 2),
                    "weight_read_ms_at_4.3_tb_s": round(weight_bytes / 4.3e12 * 1000, 2)}


def profile_step(engine: HFEngine, vocab: int) -> dict:
    """The decode step of 1 prompt x 128 (width 256) run outside its CUDA graph under torch.profiler: GPU time
    per kernel name (the top 25, summed over the step's layers), against the graph's total."""
    from torch.profiler import ProfilerActivity, profile

    cfg = replace(BASE, num_samples=128, max_new_tokens=256)
    engine.sample([random_ids(1000, vocab, torch.Generator().manual_seed(4))], cfg)
    decoder = next(d for key, d in engine.decoders.kept.items() if key[:2] == (1, 128))
    decoder.step_index.fill_(200)
    for _ in range(3):
        decoder._forward(256, decoder.prompt_cap)
    sync(engine.device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            decoder._forward(256, decoder.prompt_cap)
        sync(engine.device)
    kernels = sorted(((e.key, e.device_time_total / 5 / 1000, e.count // 5) for e in prof.key_averages()
                      if e.device_time_total > 0), key=lambda k: -k[1])
    total = sum(ms for _, ms, _ in kernels)
    return {"kernel_ms_per_step": round(total, 3), "kernels_per_step": sum(n for _, _, n in kernels),
            "top": [{"kernel": name[:90], "ms": round(ms, 3), "calls": n} for name, ms, n in kernels[:25]]}


# --- fine-tuning ------------------------------------------------------------------------------------


def finetune_lengths(tiny: bool) -> list[int]:
    return [128, 256] if tiny else [2048, 4096, 8192, 9728]


def keep_sampler_memory(engine: HFEngine, tiny: bool, vocab: int) -> float:
    """Leaves in GPU memory what a run's sampler keeps between rounds: the decoder of 16 views x 8 samples
    of 3,000-token prompts with up to 1,024 new tokens (caches prefilled). Returns its GB."""
    num, prompt_len, new = (2, 40, 16) if tiny else (16, 3000, 1024)
    gen = torch.Generator().manual_seed(5)
    decoder = engine.decoders.get(num, 8, replace(BASE, num_samples=8, max_new_tokens=new))
    decoder.load([random_ids(prompt_len, vocab, gen) for _ in range(num)])
    decoder.prefill()
    return round(decoder.nbytes / 1e9, 1)


def bench_finetune(engine: HFEngine, tiny: bool, vocab: int) -> list[dict]:
    """Every length alone (only the model resident) and next to the sampler's kept memory. Out of memory
    switches gradient checkpointing on for that length (the engine's own fallback), as in a run."""
    gen = torch.Generator().manual_seed(2)
    completion, num = (32, 2) if tiny else (512, 4)
    rows = []
    for resident in (False, True):
        engine.release_sampler_memory()
        engine.finetuner.checkpoint_from_tokens = None
        kept_gb = keep_sampler_memory(engine, tiny, vocab) if resident else 0.0
        for length in finetune_lengths(tiny):
            name = f"{length} tokens" + (f", sampler keeps {kept_gb} GB" if resident else "")
            examples = [(random_ids(length - completion - 1, vocab, gen), random_ids(completion, vocab, gen))
                        for _ in range(num)]
            cfg = FinetuneConfig(learning_rate=1e-5, max_seq_len=length, max_tokens_per_micro_batch=length)
            try:
                engine.finetune(examples[:1], cfg, seed=0)  # warm-up: allocator, kernels; learns the OOM limit
                s = engine.finetune(examples, cfg, seed=0)
            except Exception as e:
                traceback.print_exc()
                rows.append(dict(case=name, error=error_text(e)))
                continue
            rows.append(dict(case=name, seq_len=length, sampler_gb=kept_gb, samples_s=round(s.examples_per_s, 2),
                             tokens_s=round(s.tokens_per_s), s_per_step=round(s.seconds / s.num_steps, 3),
                             checkpointed=f"{s.num_checkpointed}/{s.num_steps}", peak_gb=round(s.peak_memory_gb, 1)))
            print(f"finetune  {name}: {rows[-1]['tokens_s']} tok/s, checkpointed {rows[-1]['checkpointed']}",
                  flush=True)
    engine.release_sampler_memory()
    return rows


# --- checks -----------------------------------------------------------------------------------------


def check_decoder(engine: HFEngine, tiny: bool, vocab: int) -> dict:
    """The engine's decode path (merged LoRA, compiled and graphed on a GPU) against the model's own forward
    over the whole sequence: relative error of the logits after the prefill and 3 decode steps. The model's
    forward with its own KV cache is measured the same way, as the yardstick for rounding noise between
    two equal computations (bf16 on GPU)."""
    gen = torch.Generator().manual_seed(3)
    length = 40 if tiny else 1000
    train = [(random_ids(length, vocab, gen), random_ids(32, vocab, gen)) for _ in range(2)]
    engine.finetune(train, FinetuneConfig(learning_rate=1e-3, max_seq_len=length + 33))  # a LoRA that is not 0
    ids = random_ids(length, vocab, gen)
    autocast = torch.autocast(engine.device.type, dtype=engine.autocast_dtype or torch.float32,
                              enabled=engine.autocast_dtype is not None)

    def last_logits(input_ids: list[int], **kwargs):
        out = engine.lm(input_ids=torch.tensor([input_ids], device=engine.device), logits_to_keep=1, **kwargs)
        return out.logits[0, -1].float(), out.past_key_values

    refs, yardstick, sequence = [], [], list(ids)
    with torch.no_grad(), autocast:  # the reference first: the model's forward needs the unmerged weights
        cached, cache = last_logits(ids, use_cache=True)
        for _ in range(4):
            ref, _ = last_logits(sequence)
            refs.append(ref)
            yardstick.append(((cached - ref).norm() / ref.norm()).item())
            sequence.append(int(ref.argmax()))
            cached, cache = last_logits(sequence[-1:], past_key_values=cache, use_cache=True)
    cfg = replace(BASE, num_samples=2, max_new_tokens=9)
    engine.weights.prepare(cfg.merge_lora, engine.versions[0], lora_is_zero=False)
    try:
        decoder = engine.decoders.get(1, 2, cfg)
        decoder.load([ids])
        ours, logits = [], decoder.prefill()
        for step, ref in enumerate(refs):
            ours.append(((logits[1] - ref).norm() / ref.norm()).item())
            logits = decoder.step(torch.full((2,), sequence[length + step], device=engine.device), step)
    finally:
        engine.weights.restore()
    engine.reset()
    return {"relative_error_per_step": [float(f"{e:.2e}") for e in ours],
            "hf_cache_relative_error_per_step": [float(f"{e:.2e}") for e in yardstick]}


def adapter_texts(engine: HFEngine, prompts: list[str], cfg: SamplingConfig, mixed: bool) -> list[list[str]]:
    """Greedy texts of `prompts` through adapter 0, then through adapter 1: from one call that mixes the two
    adapters, or from one call per adapter."""
    n = len(prompts)
    if mixed:
        out = engine.sample(prompts * 2, cfg, adapters=[0] * n + [1] * n).completions
    else:
        out = [cs for a in (0, 1) for cs in engine.sample(prompts, cfg, adapters=[a] * n).completions]
    return [[c.text for c in cs] for cs in out]


def check_paths_agree(device: torch.device) -> dict:
    """Greedy decoding of a tiny float32 model with two differently trained adapters through every path: CPU
    eager with the LoRA merged, not merged and the adapters mixed in one call, and on a GPU compiled + CUDA
    graphs (merged, not merged, mixed) and eager without graphs (alone, mixed). The texts must be identical."""
    tokenizer = code_tokenizer(tiny=True)
    lora = replace(LORA, lora_rank=8, num_adapters=2)
    cpu = HFEngine(build_model("tiny", torch.device("cpu"), len(tokenizer)), tokenizer, lora)
    prompts = ["def transform(input_grid):\n", "Black Blue Red\nGreen Green Black\n"]
    for adapter, completion in enumerate(["    return np.rot90(input_grid)\n", "    return input_grid.copy()\n"]):
        cpu.finetune([(p, completion) for p in prompts] * 4, FinetuneConfig(learning_rate=1e-2), adapter=adapter)
    greedy = SamplingConfig(num_samples=2, temperature=0, max_new_tokens=40, ignore_eos=True)
    variants = {"cpu merged": ({}, False), "cpu not merged": ({"merge_lora": False}, False), "cpu mixed": ({}, True)}
    texts = {name: adapter_texts(cpu, prompts, replace(greedy, **changes), mixed)
             for name, (changes, mixed) in variants.items()}
    if device.type == "cuda":
        gpu = HFEngine(build_model("tiny", torch.device("cpu"), len(tokenizer)).to(device), tokenizer, lora)
        for adapter in (0, 1):
            with tempfile.TemporaryDirectory() as path:
                cpu.save_adapter(path, adapter)
                gpu.load_adapter(path, adapter)
        eager = {"compile_decode": False, "cuda_graphs": False}
        for name, (changes, mixed) in {"gpu compiled graphs merged": ({}, False),
                                       "gpu compiled graphs not merged": ({"merge_lora": False}, False),
                                       "gpu compiled graphs mixed": ({}, True),
                                       "gpu eager no graphs": (eager, False),
                                       "gpu eager no graphs mixed": (eager, True)}.items():
            texts[name] = adapter_texts(gpu, prompts, replace(greedy, **changes), mixed)
        if gpu.decoders.compile_error:
            texts["gpu compile error"] = gpu.decoders.compile_error
    reference = texts["cpu not merged"]
    return {"paths": sorted(texts), "identical": all(t == reference for t in texts.values()),
            "adapters_differ": reference[:len(prompts)] != reference[len(prompts):],
            "differing": [name for name, t in texts.items() if t != reference]}


def bench_reset(engine: HFEngine) -> dict:
    times = []
    for _ in range(10):
        sync(engine.device)
        start = time.perf_counter()
        engine.reset(0)  # one task's adapter
        sync(engine.device)
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 5), "max_s": round(max(times), 5),
            "lora_tensors": len(engine.finetuner.params[0]),
            "lora_params": sum(p.numel() for p in engine.finetuner.params[0])}


# --- report -----------------------------------------------------------------------------------------


def print_report(result: dict) -> None:
    print_table("sampling (random ids, every sample runs to max tokens; warm = second call of the shape)",
                result.get("sampling", []), ["case", "samples", "output_tok_s", "cold_output_tok_s", "decode_tok_s",
                                             "decode_ms_per_step", "prefill_s", "overhead_s", "peak_gb"])
    print_table("several adapters in one call (random ids, warm calls)", result.get("adapters", []),
                ["case", "calls", "samples", "rows_per_step", "output_tok_s", "decode_ms_per_step", "total_s",
                 "merge_s"])
    if "step_parts" in result:
        print(f"\ndecode step parts (1 x 128, width 256): {result['step_parts']}")
    if "profile" in result:
        print_table(f"decode step kernels outside the graph (1 x 128, width 256; "
                    f"{result['profile']['kernel_ms_per_step']} ms in {result['profile']['kernels_per_step']} kernels)",
                    result["profile"]["top"], ["kernel", "ms", "calls"])
    print_table("LoRA fine-tuning (rank 32, all linear layers)", result.get("finetune", []),
                ["case", "samples_s", "tokens_s", "s_per_step", "checkpointed", "peak_gb"])
    if "check" in result:
        check = result["check"]
        print(f"\ncheck: relative error of the decode logits vs the full forward {check['relative_error_per_step']}; "
              f"HF's own cached decode {check['hf_cache_relative_error_per_step']}")
    if "paths" in result:
        print(f"greedy paths agree: {result['paths']}")
    if "reset" in result:
        r = result["reset"]
        print(f"reset: median {r['median_s'] * 1000:.2f} ms, max {r['max_s'] * 1000:.2f} ms "
              f"({r['lora_tensors']} LoRA tensors, {r['lora_params'] / 1e6:.1f} M parameters)")
    for name, error in result["errors"].items():
        print(f"{name} failed: {error}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke run)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--arch", default="llama-3.1-8b", choices=[a for a in ARCHS if not a.startswith("tiny")],
                        help="model shape on a GPU")
    parser.add_argument("--num-cases", type=int, default=None, help="only the first N sampling cases")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["sampling", "adapters", "finetune", "step_parts", "profile", "check", "paths", "reset"])
    args = parser.parse_args(argv)

    device = pick_device(args.tiny)
    start = time.perf_counter()
    model = build_model("tiny" if args.tiny else args.arch, device)
    engine = HFEngine(model, None, LORA)
    sync(device)
    result = header("engine", device, argv) | {
        "model": "tiny llama" if args.tiny else f"{args.arch} shape, random bf16",
        "lora": f"rank 32, alpha 32, rsLoRA, all linear layers, {NUM_ADAPTERS} adapters",
        "setup_s": round(time.perf_counter() - start, 1)}
    print(f"{result['device']}, torch {result['torch']}, transformers {result['transformers']}, "
          f"peft {result['peft']}, model and engine built in {result['setup_s']} s", flush=True)
    vocab = model.config.vocab_size
    # one step, so that the LoRA is not zero and sampling pays for it
    engine.finetune([(random_ids(64, vocab, torch.Generator().manual_seed(0)), [5] * 8)], FinetuneConfig())
    sections = {"sampling": lambda: bench_sampling(engine, args.tiny, vocab, args.num_cases),
                "adapters": lambda: bench_adapters(engine, args.tiny, vocab),
                "finetune": lambda: bench_finetune(engine, args.tiny, vocab),
                "step_parts": lambda: bench_step_parts(engine, vocab),
                "profile": lambda: profile_step(engine, vocab),
                "check": lambda: check_decoder(engine, args.tiny, vocab),
                "paths": lambda: check_paths_agree(device),
                "reset": lambda: bench_reset(engine)}
    if device.type != "cuda":
        args.skip += ["step_parts", "profile"]
    for name, run in sections.items():
        if name in args.skip:
            continue
        try:
            result[name] = run()
        except Exception as e:  # a failed section must not lose the others' figures
            traceback.print_exc()
            result["errors"][name] = error_text(e)
        if args.out:  # what is done so far survives a time limit
            Path(args.out).write_text(json.dumps(result) + "\n")
    result["compile_error"] = engine.decoders.compile_error
    print_report(result)
    return finish(result, args.out)


if __name__ == "__main__":
    main()
