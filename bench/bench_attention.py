"""Attention benchmark: the decode step's Triton kernels (arcsl.engine.attention) against the PyTorch path they
replace (sampler.two_part_attention with the compiled pieces), per decode step of a Llama-3.1-8B-shaped model.

Examples (GPU only):
    PYTHONUNBUFFERED=1 python bench/bench_attention.py --out $OUT/attention.json
    python bench/bench_attention.py --heads 28 --kv-heads 4 --layers 28 --configs default   # Qwen2.5-7B's shape

Shape (defaults): 32 query heads, 8 KV heads, head_dim 128, 32 layers, bf16; 1 prompt of 1,000 tokens (cache
bucket 1,024) x 128 rows; step caches of 256 slots, read at the last step of the widths 16, 128 and 256
(step_index = width - 1; the PyTorch path reads the whole width, the kernels slots 0..step_index). Each layer
has its own caches, as in the decoder (a layer's data is not in L2 from the one before), and one step (all
layers) is captured as a CUDA graph after a warm-up on a side stream, as the decoder does, then replayed:
the times exclude launch overhead. A kernel configuration's graph is captured once and replayed at every
width (step_index is read from the device). Each configuration's output is checked against the PyTorch
path's (`max_diff`). `floor_ms`: reading the prompt's K/V and the rows' own K/V (slots 0..step_index) once per
layer at the copy bandwidth measured here. Prints a table, then one JSON line.
"""

import argparse
import traceback
from dataclasses import asdict, replace

import torch

from benchlib import error_text, finish, header, print_table

from arcsl.engine import attention
from arcsl.engine.planner import PROMPT_ALIGN, round_up
from arcsl.engine.sampler import compiled_ops, rotate, two_part_attention


def configs(multiprocessors: int) -> dict[str, attention.Config]:
    """The default and variants of it, one setting changed each (so that a difference has one cause)."""
    base = attention.DEFAULT
    return {"default": base,
            "bf16 parts": replace(base, float32_parts=False),
            "no split": replace(base, max_splits=1),
            "2 splits at most": replace(base, max_splits=2),
            "2 waves": replace(base, programs=2 * multiprocessors),
            "block_m 64": replace(base, block_m=64, prompt_warps=4),
            "block_n 128": replace(base, block_n=128, prompt_stages=2),
            "prompt 2 stages": replace(base, prompt_stages=2),
            "own s32 4 stages": replace(base, block_s=32, own_stages=4),
            "own s32 3 stages": replace(base, block_s=32, own_stages=3),
            "own s128 8 warps": replace(base, block_s=128, own_warps=8, own_stages=2),
            "own 2 stages": replace(base, own_stages=2),
            "own 8 warps": replace(base, own_warps=8)}


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second that a large device-to-device copy moves (read + write)."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    return 2 * x.numel() * 10 / (start.elapsed_time(end) / 1000)


def capture(step) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def replay_ms(graph: torch.cuda.CUDAGraph, replays: int) -> float:
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--rows-per-prompt", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=1000)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 128, 256])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--configs", nargs="*", default=None, help="only these kernel configurations (names)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or attention.triton is None:
        raise SystemExit("bench_attention needs a CUDA GPU and triton")
    device, dtype = torch.device("cuda"), torch.bfloat16
    layers, kv, d, m = args.layers, args.kv_heads, args.head_dim, args.rows_per_prompt
    num_prompts = args.prompts
    rows, prompt_cap, step_cap = num_prompts * m, round_up(args.prompt_len, PROMPT_ALIGN), max(args.widths)
    result = header("attention", device, argv) | {
        "shape": dict(layers=layers, heads=args.heads, kv_heads=kv, head_dim=d, prompts=num_prompts,
                      rows_per_prompt=m, prompt_len=args.prompt_len, prompt_cap=prompt_cap, step_cap=step_cap)}
    bandwidth = copy_bandwidth(device)
    result["copy_gb_s"] = round(bandwidth / 1e9)
    print(f"{result['device']}, torch {result['torch']}, triton {attention.triton.__version__}, "
          f"copy bandwidth {result['copy_gb_s']} GB/s", flush=True)

    gen = torch.Generator(device).manual_seed(0)
    prompt_kv = torch.randn(layers, 2, num_prompts, kv, prompt_cap, d, device=device, generator=gen, dtype=dtype)
    prompt_kv[..., args.prompt_len:, :] = 0
    step_kv = torch.randn(layers, 2, rows, kv, step_cap, d, device=device, generator=gen, dtype=dtype)
    qkv = torch.randn(rows, (args.heads + 2 * kv) * d, device=device, generator=gen, dtype=dtype)
    angle = torch.rand(rows, d, device=device, generator=gen) * 6.28
    q_own, q_shared, kv_new = rotate(qkv, angle.cos().to(dtype), angle.sin().to(dtype), kv, m)
    lengths = torch.full((num_prompts,), args.prompt_len, device=device)
    bias = torch.where(torch.arange(prompt_cap, device=device) < lengths[:, None], 0.0, float("-inf"))
    prompt_bias = bias.repeat_interleave(kv, dim=0)[:, None]
    step_index = torch.zeros(1, dtype=torch.long, device=device)
    scale = d ** -0.5
    ops = compiled_ops()

    def torch_step(width: int, outs: list):
        step_bias = torch.where(torch.arange(width, device=device) <= step_index, 0.0, float("-inf"))[None, None]
        outs[:] = [two_part_attention(ops, q_own, q_shared, kv_new, step_kv[i], step_index, step_bias, width,
                                      prompt_kv[i], prompt_bias, prompt_cap, scale) for i in range(layers)]

    def kernel_step(config: attention.Config, outs: list):
        outs[:] = [attention.decode_attention(q_own.unflatten(0, (-1, kv)), kv_new[:, :, :, 0], step_kv[i],
                                              step_index, prompt_kv[i], lengths, prompt_cap, scale, config)
                   for i in range(layers)]

    def floor_ms(step: int) -> float:
        read = 2 * layers * kv * d * 2 * (num_prompts * args.prompt_len + rows * (step + 1))  # K and V, bf16
        return 1000 * read / (bandwidth / 2)  # the copy moved read + write bytes

    table = []
    torch_ms, torch_outs = {}, {}
    for width in args.widths:
        step_index.fill_(width - 1)
        outs = []
        try:
            graph = capture(lambda: torch_step(width, outs))
            torch_ms[width] = replay_ms(graph, args.replays)
            torch_outs[width] = outs[0].clone()
            table.append(dict(width=width, path="pytorch", step_ms=round(torch_ms[width], 3),
                              layer_us=round(1000 * torch_ms[width] / layers, 1), speedup=1.0,
                              floor_ms=round(floor_ms(width - 1), 3)))
        except Exception as e:
            traceback.print_exc()
            table.append(dict(width=width, path="pytorch", error=error_text(e)))
            result["errors"][f"pytorch {width}"] = error_text(e)
        torch.cuda.empty_cache()
    chosen = {name: c for name, c in configs(torch.cuda.get_device_properties(device).multi_processor_count).items()
              if args.configs is None or name in args.configs}
    for name, config in chosen.items():
        outs = []
        try:
            step_index.fill_(step_cap - 1)
            graph = capture(lambda: kernel_step(config, outs))
        except Exception as e:
            traceback.print_exc()
            table.append(dict(width="all", path=name, error=error_text(e)))
            result["errors"][name] = error_text(e)
            continue
        for width in args.widths:
            step_index.fill_(width - 1)
            ms = replay_ms(graph, args.replays)
            diff = (outs[0].float() - torch_outs[width].float()).abs().max().item() if width in torch_outs else None
            table.append(dict(width=width, path=name, step_ms=round(ms, 3), layer_us=round(1000 * ms / layers, 1),
                              speedup=round(torch_ms[width] / ms, 2) if width in torch_ms else None,
                              floor_ms=round(floor_ms(width - 1), 3),
                              max_diff=None if diff is None else round(diff, 4)))
        graph = None  # its pool goes back
        torch.cuda.empty_cache()
    table.sort(key=lambda r: (r["width"] if isinstance(r["width"], int) else 0, r.get("step_ms", 1e9)))
    print_table("attention per decode step (all layers), CUDA graph replays", table,
                ["width", "path", "step_ms", "layer_us", "speedup", "floor_ms", "max_diff"])
    result["rows"] = table
    result["configs"] = {name: asdict(c) for name, c in chosen.items()}
    best = {}
    for row in table:
        if row["path"] != "pytorch" and "step_ms" in row and row["step_ms"] < best.get(row["width"], (1e9,))[0]:
            best[row["width"]] = (row["step_ms"], row["path"])
    result["best"] = {str(w): dict(step_ms=ms, config=name) for w, (ms, name) in best.items()}
    return finish(result, args.out)


if __name__ == "__main__":
    main()
