"""The decode step's attention kernels (arcsl.engine.attention) against the PyTorch path they replace
(`sampler.two_part_attention`) and against attention computed in float64, on random caches: GQA groups of 2,
4 and 7, head sizes 16 to 128 (powers of two and not), 1-3 prompts of unequal lengths with padding, 1-8
rows per prompt, the first, a middle and the last step of a step cache; bf16 and float32. Also: the step's
K/V written into the step cache, and slots past a prompt's length or past the step never read.

On CUDA the compiled kernels run (and a decoder with CUDA graphs is compared with its PyTorch path). Without
CUDA they run under Triton's CPU interpreter, which must be switched on (TRITON_INTERPRET=1) before triton is
first imported: `test_the_kernel_tests_pass_under_tritons_cpu_interpreter` runs this file again in a
subprocess with it. Without Triton (CI's CPU wheel), these tests skip.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arcsl.engine import attention
from arcsl.engine.sampler import EAGER_OPS, rotate, two_part_attention

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.fixture(scope="module")
def kernels():
    """The attention module, where its kernels can run in this process."""
    if attention.triton is None:
        pytest.skip("needs triton")
    if not CUDA and not INTERPRETED:
        pytest.skip("no GPU: these run under Triton's interpreter, in test_the_kernel_tests_pass_under_tritons_"
                    "cpu_interpreter's subprocess")
    return attention


@pytest.mark.skipif(CUDA or INTERPRETED or not HAS_TRITON, reason="runs where the kernels need the interpreter "
                    "(no GPU) and Triton is installed")
def test_the_kernel_tests_pass_under_tritons_cpu_interpreter():
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "not interpreter"], cwd=root, env=os.environ | {"TRITON_INTERPRET": "1"},
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


# several blocks and splits, the splits' outputs in the model's dtype
SMALL = dict(block_m=16, block_n=16, block_s=16, programs=64, max_splits=4, float32_parts=False)

# (prompts' lengths, rows per prompt, kv heads, group, head_dim, prompt_cap, step_cap, step)
CASES = [
    ([300], 8, 2, 4, 128, 320, 64, 37),  # Llama's group and head size, one long prompt
    ([40, 7, 64], 2, 2, 7, 64, 64, 64, 0),  # Qwen2.5-7B's group, three prompts, the first step
    ([5, 30], 1, 1, 4, 24, 32, 64, 63),  # head_dim 24 (tiny Qwen3/Mistral), one row each, the last slot
    ([17, 50], 5, 2, 2, 16, 64, 128, 100),  # the tiny test models' shape (head_dim 16, group 2)
]


def make_inputs(lengths, m, kv, group, d, prompt_cap, step_cap, step, dtype, garbage=0.0):
    """Random queries and caches in the decoder's layouts; slots past a prompt's length and past the step
    hold `garbage` (the decoder keeps zeros there)."""
    gen = torch.Generator().manual_seed(len(lengths) * 1000 + d + step)
    num_prompts, rows = len(lengths), len(lengths) * m
    qkv = torch.randn(rows, (kv * group + 2 * kv) * d, generator=gen)
    capacity = prompt_cap + 32  # the decoder's cache may be longer than this batch's bucket
    prompt_kv = torch.randn(2, num_prompts, kv, capacity, d, generator=gen)
    step_kv = torch.randn(2, rows, kv, step_cap, d, generator=gen)
    for p, n in enumerate(lengths):
        prompt_kv[:, p, :, n:] = garbage
    step_kv[:, :, :, step:] = garbage  # slot `step` is written by the step
    ones, zeros = torch.ones(rows, d), torch.zeros(rows, d)  # rotary angle 0: q and k as drawn
    q_own, q_shared, kv_new = rotate(qkv.to(dtype), ones.to(dtype), zeros.to(dtype), kv, m)
    lengths_t = torch.tensor(lengths)
    bias = torch.where(torch.arange(capacity) < lengths_t[:, None], 0.0, float("-inf"))
    return dict(q_own=q_own, q_shared=q_shared, kv_new=kv_new, step_kv=step_kv.to(dtype),
                prompt_kv=prompt_kv.to(dtype), prompt_bias=bias.repeat_interleave(kv, dim=0)[:, None],
                first_position=lengths_t.repeat_interleave(m), step_index=torch.tensor([step]), m=m, kv=kv,
                prompt_cap=prompt_cap, scale=d ** -0.5)


def to_device(x: dict) -> dict:
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in x.items()}


def torch_path(x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    step_kv = x["step_kv"].clone()
    width = step_kv.shape[3]
    step_bias = torch.where(torch.arange(width, device=step_kv.device) <= x["step_index"], 0.0,
                            float("-inf"))[None, None]
    out = two_part_attention(EAGER_OPS, x["q_own"], x["q_shared"], x["kv_new"], step_kv, x["step_index"], step_bias,
                             width, x["prompt_kv"], x["prompt_bias"], x["prompt_cap"], x["scale"])
    return out, step_kv


def kernel_path(kernels, x: dict, config=None) -> tuple[torch.Tensor, torch.Tensor]:
    step_kv = x["step_kv"].clone()
    out = kernels.decode_attention(x["q_own"].unflatten(0, (-1, x["kv"])), x["kv_new"][:, :, :, 0], step_kv,
                                   x["step_index"], x["prompt_kv"], x["first_position"][::x["m"]], x["prompt_cap"],
                                   x["scale"], config)
    return out, step_kv


def exact(x: dict) -> torch.Tensor:
    """Softmax attention over each row's prompt slots and own slots 0..step, in float64."""
    kv, m, step = x["kv"], x["m"], int(x["step_index"])
    q = x["q_own"].double().unflatten(0, (-1, kv))  # (rows, kv, group, d)
    new = x["kv_new"].double()[:, :, :, 0]  # (2, rows, kv, d)
    out = []
    for r in range(q.shape[0]):
        p, n = r // m, int(x["first_position"][r])
        keys, values = (torch.cat([x["prompt_kv"][j, p, :, :n].double(), x["step_kv"][j, r, :, :step].double(),
                                   new[j, r, :, None]], dim=1) for j in (0, 1))  # (kv, slots, d)
        weights = torch.softmax(q[r] @ keys.transpose(1, 2) * x["scale"], dim=-1)
        out.append((weights @ values).flatten())
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"len{c[0]}-m{c[1]}-kv{c[2]}-g{c[3]}-d{c[4]}-step{c[7]}")
@pytest.mark.parametrize("small", [False, True], ids=["default", "small-blocks"])
def test_the_kernels_compute_what_the_pytorch_path_computes(kernels, case, dtype, small):
    x = to_device(make_inputs(*case, dtype=dtype))
    config = kernels.Config(**SMALL) if small else None
    ours, our_cache = kernel_path(kernels, x, config)
    theirs, their_cache = torch_path(x)
    assert ours.shape == theirs.shape and ours.dtype == dtype
    assert torch.equal(our_cache, their_cache)  # the step's K/V written to its slot, nothing else touched
    truth = exact({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in x.items()})
    if dtype == torch.float32:
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.double().cpu(), truth, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-2, atol=2e-2)
        # a few units in bf16's last place (2^-8 relative); the PyTorch path: under 2 here
        error = (ours.double().cpu() - truth).abs() / (2**-8 * truth.abs() + 2e-3)
        assert error.max().item() < (4 if small else 2)


@pytest.mark.parametrize("case", CASES[:2], ids=["long-prompt", "three-prompts"])
def test_slots_past_a_prompts_length_or_past_the_step_are_never_read(kernels, case):
    x = to_device(make_inputs(*case, dtype=torch.float32, garbage=float("nan")))
    ours, _ = kernel_path(kernels, x, kernels.Config(**SMALL))
    truth = exact({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in x.items()})
    torch.testing.assert_close(ours.double().cpu(), truth, rtol=1e-5, atol=1e-5)


def test_the_prompt_is_split_only_as_far_as_the_gpu_needs():
    if attention.triton is None:
        pytest.skip("needs triton")
    split = attention.prompt_splits
    # Llama-3.1-8B shape on 132 multiprocessors: 1 prompt x 8 KV heads x 4 query blocks = 32 programs, 5 splits
    # wanted, in chunks of whole key blocks
    assert split(1024, 4, 1, 8, 64, 132, 16) == (4, 256)  # 16 key blocks: 4 splits of 4 blocks
    assert split(1024, 32, 1, 8, 64, 132, 16) == (1, 1024)  # 256 programs already: no split
    assert split(256, 1, 1, 8, 64, 1000, 16) == (4, 64)  # never more splits than key blocks
    assert split(1024, 1, 1, 1, 64, 1000, 3) == (3, 384)  # at most max_splits; the last chunk is shorter


def test_the_pytorch_path_runs_where_the_kernels_do_not():
    assert not attention.supported(torch.device("cpu"), torch.bfloat16, 128)
    if CUDA and attention.triton is not None:
        cuda = torch.device("cuda")
        assert attention.supported(cuda, torch.float32, 24)
        assert not attention.supported(cuda, torch.float64, 128)
        assert not attention.supported(cuda, torch.bfloat16, 256)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_a_decoder_with_graphs_gives_the_same_logits_with_the_kernels_as_without(kernels, monkeypatch, dtype):
    """Captured steps across two step-cache widths (one graph with the kernels, two without), two prompts of
    unequal lengths; the kernels read step_index and the prompts' lengths from the device at each replay."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from arcsl.config import ModelConfig
    from arcsl.engine.hf import HFEngine
    from arcsl.engine.sampler import SharedPrefixDecoder, compiled_ops

    config = LlamaConfig(vocab_size=512, hidden_size=1024, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=0, eos_token_id=1)  # head_dim 128, group 4
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    engine = HFEngine(model, None, ModelConfig(lora_rank=4))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 512, (n,), generator=gen).tolist() for n in (300, 40)]
    tokens = torch.randint(2, 512, (80, 2 * 4), generator=gen).cuda()

    def run(enabled: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(attention, "ENABLED", enabled)
        decoder = SharedPrefixDecoder(engine.weights, 2, 4, 80, use_graphs=True, ops=compiled_ops())
        decoder.load(prompts)
        logits = [decoder.prefill()]
        for step in range(79):
            logits.append(decoder.step(tokens[step], step).clone())
        # the kernels read the step from the device: one graph for all steps; the PyTorch path, one per width
        assert len(decoder.graphs) == (1 if enabled else 2)
        return logits

    ours, theirs = run(True), run(False)
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2  # bf16: the two paths round differently
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert ((a - b).norm() / b.norm()).item() < tolerance, step
