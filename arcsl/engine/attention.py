"""The decode step's attention on a GPU, as two Triton kernels: many samples sharing one prompt's KV cache,
each with its own cache of the tokens it has generated.

`SharedPrefixDecoder` decodes `rows_per_prompt` samples ("rows") of each prompt together. A row's query
heads attend to (1) its prompt's KV cache, stored once for all the prompt's rows, and (2) the row's own
step cache (one slot per decode step, slots 0..step_index valid). `decode_attention` computes this in two
launches per layer:

1. `_prompt_kernel` (flash-decoding over the shared prompt): one program per (block of BLOCK_M queries,
   prompt x KV head, split of the prompt). The queries of a (prompt, KV head) are the `group` query heads
   that read that KV head, of all the prompt's rows (rows_per_prompt * group of them, e.g. 128 * 4), so one
   pass over the prompt's keys and values serves every row as a matrix product (native GQA: KV heads are
   never expanded). The prompt is split along its length when (query blocks x prompts x KV heads) would not
   fill the GPU; each split writes its normalised output and its log-sum-exp (float32). A prompt's length
   is read from a device tensor and slots past it are never read.
2. `_own_kernel` (the row's own tokens, then the merge): one program per (row, KV head). It writes the
   step's new key and value to the row's step cache (the step's KV write, folded in), attends the group's
   query heads to slots 0..step_index (the new token from registers, the older slots from the cache; the loop
   stops at step_index, read from its device tensor, so one compiled kernel and one CUDA graph serve every
   step of a step-cache width), merges that with the prompt splits by their log-sum-exps and writes the
   result in o_proj's input layout (rows, heads * head_dim), in the model's dtype.

Both use an online softmax with float32 accumulators, base-2 exponents (the scale is multiplied by log2(e)),
and tl.dot on the caches' own dtype (bf16/fp16; float32 with input_precision="ieee", i.e. no TF32, so a
float32 model's decode stays exact enough for greedy equality). Everything a launch reads that changes
between steps comes from device tensors at fixed addresses (step_index, prompt lengths), and the launch
configuration depends only on shapes, so the launches can be captured in a CUDA graph (the decoder compiles
them in its warm-up run, before capture).

Why hand-written: the library decode kernels (FlashAttention's, FlashInfer's cascade/shared-prefix
attention, vLLM's) each want their own cache layout (paged tables, their own KV formats) or host-side plans
that change with the step; arcsl keeps a dense per-prompt cache plus a static per-row step cache and replays
one graph across steps, and a prompt shared by 128+ rows is best read once as a matrix product.

Not covered: head_dim > 128, other dtypes, GPUs older than compute capability 8.0 for bf16 (`supported`
says no and the decoder runs its PyTorch path); sliding windows, ALiBi or soft-capping (models with them do
not reach the fast path at all: `DecodeWeights.unsupported`). The PyTorch path is also the CPU path and
the reference the tests compare against. Setting ARCSL_ATTENTION=torch in the environment turns the kernels
off (for A/B measurements).
"""

import functools
import math
import os
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch path runs
    triton = None

ENABLED = os.environ.get("ARCSL_ATTENTION", "triton") != "torch"
LOG2E = 1.0 / math.log(2.0)
MAX_HEAD_DIM = 128  # Llama 3, Mistral, Qwen2.5 and Qwen3 models: 128; larger tiles would spill registers


@dataclass(frozen=True)
class Config:
    """Launch settings. `programs`: the prompt kernel splits the prompt until it has at least this many
    programs (0: the GPU's multiprocessor count); `max_splits` caps that (1: no split). `float32_parts`: the
    prompt splits' outputs are kept in float32 (else in the model's dtype: half the traffic between the two
    kernels, up to ~2 bf16 units in the last place of error instead of ~1)."""
    block_m: int = 128
    block_n: int = 64
    prompt_warps: int = 8
    prompt_stages: int = 3
    block_s: int = 64
    own_warps: int = 4
    own_stages: int = 3
    programs: int = 0
    max_splits: int = 16
    float32_parts: bool = True


DEFAULT = Config()
FLOAT32 = Config(block_m=64, block_n=32, prompt_warps=8, prompt_stages=2, block_s=32, own_stages=2)  # no tensor cores


def supported(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether `decode_attention` runs for this device, dtype and head size (else use the PyTorch path)."""
    if not ENABLED or triton is None or device.type != "cuda" or head_dim > MAX_HEAD_DIM:
        return False
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    return dtype != torch.bfloat16 or _capability(device.index)[0] >= 8


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@functools.cache
def _multiprocessors(index: int | None) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _pow2(n: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(n))


def config_for(dtype: torch.dtype, head_dim: int) -> Config:
    return FLOAT32 if dtype == torch.float32 else DEFAULT


def prompt_splits(prompt_cap: int, query_blocks: int, num_prompts: int, num_kv_heads: int, block_n: int,
                  programs: int, max_splits: int) -> tuple[int, int]:
    """(splits, keys per split): the prompt's capacity cut into equal chunks of whole key blocks so that the
    prompt kernel has at least `programs` programs, at most `max_splits` chunks and no empty trailing chunk."""
    blocks = triton.cdiv(prompt_cap, block_n)
    wanted = triton.cdiv(programs, query_blocks * num_prompts * num_kv_heads)
    splits = max(1, min(blocks, max_splits, wanted))
    chunk = triton.cdiv(blocks, splits) * block_n
    return triton.cdiv(prompt_cap, chunk), chunk


def decode_attention(q: torch.Tensor, kv_new: torch.Tensor, step_kv: torch.Tensor, step_index: torch.Tensor,
                     prompt_kv: torch.Tensor, prompt_lengths: torch.Tensor, prompt_cap: int, scale: float,
                     config: Config | None = None) -> torch.Tensor:
    """One decode step's attention for one layer; also writes the step's K/V into `step_kv`.

    Shapes: q (rows, kv, group, d) (the step's rotated queries; query head j = kv head j // group);
    kv_new (2, rows, kv, d) (the step's rotated key and its value); step_kv (2, rows, kv, step_cap, d) (the
    rows' step caches; slot step_index is written, slots 0..step_index read); step_index (1,) integer;
    prompt_kv (2, prompts, kv, capacity, d) (slots < prompt_lengths[p] valid, < prompt_cap read at most);
    prompt_lengths (prompts,) integer (any stride). Row r samples prompt r // (rows / prompts).
    Returns (rows, kv * group * d) in q's dtype. The caches' last dimension must be contiguous.
    """
    rows, num_kv, group, d = q.shape
    num_prompts = prompt_kv.shape[1]
    m = rows // num_prompts
    cfg = config or config_for(q.dtype, d)
    ieee = q.dtype == torch.float32
    upcast = q.dtype == torch.bfloat16 and not q.is_cuda  # only the CPU interpreter runs on CPU tensors
    block_d = _pow2(d)
    block_m = min(cfg.block_m, _pow2(m * group))
    query_blocks = triton.cdiv(m * group, block_m)
    programs = cfg.programs or (_multiprocessors(q.device.index) if q.is_cuda else 1)
    splits, chunk = prompt_splits(prompt_cap, query_blocks, num_prompts, num_kv, cfg.block_n, programs,
                                  cfg.max_splits)
    part_out = torch.empty(splits, num_prompts * num_kv, m * group, d, device=q.device,
                           dtype=torch.float32 if cfg.float32_parts else q.dtype)
    part_lse = torch.empty(splits, num_prompts * num_kv, m * group, device=q.device, dtype=torch.float32)
    qk_scale = scale * LOG2E
    q, kv_new = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, kv_new))
    assert step_kv.stride(-1) == 1 and prompt_kv.stride(-1) == 1, "the caches' head dimension must be contiguous"
    _prompt_kernel[(query_blocks, num_prompts * num_kv, splits)](
        q, prompt_kv[0], prompt_kv[1], prompt_lengths, part_out, part_lse,
        q.stride(0), q.stride(1), q.stride(2),
        prompt_kv.stride(1), prompt_kv.stride(2), prompt_kv.stride(3), prompt_lengths.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        num_kv, m, group, d, chunk, qk_scale,
        BLOCK_M=block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, IEEE=ieee, UPCAST=upcast,
        num_warps=cfg.prompt_warps, num_stages=cfg.prompt_stages)
    out = torch.empty(rows, num_kv * group * d, device=q.device, dtype=q.dtype)
    _own_kernel[(rows, num_kv)](
        q, kv_new, step_kv, step_index, part_out, part_lse, out,
        q.stride(0), q.stride(1), q.stride(2), kv_new.stride(0), kv_new.stride(1), kv_new.stride(2),
        step_kv.stride(0), step_kv.stride(1), step_kv.stride(2), step_kv.stride(3),
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), num_kv, m, group, d, splits, qk_scale,
        BLOCK_G=_pow2(group), BLOCK_S=cfg.block_s, BLOCK_D=block_d, IEEE=ieee, UPCAST=upcast,
        num_warps=cfg.own_warps, num_stages=cfg.own_stages)
    return out


if triton is not None:
    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
        if UPCAST:  # Triton's CPU interpreter multiplies bf16 as raw integers: give it float32
            a, b = a.to(tl.float32), b.to(tl.float32)
        if IEEE:
            out = tl.dot(a, b, input_precision="ieee")
        else:
            out = tl.dot(a, b)
        return out

    @triton.jit
    def _attend(q, k_ptr, v_ptr, n, n_in, stride_n, dim, d_in, qk_scale, m_i, l_i, acc,
                IEEE: tl.constexpr, UPCAST: tl.constexpr):
        """One block of keys and values (slots `n`, those in `n_in`) into an online softmax: the running
        maximum `m_i`, sum `l_i` and output `acc` (float32, base-2 exponents) after it."""
        k = tl.load(k_ptr + n[None, :] * stride_n + dim[:, None], mask=n_in[None, :] & d_in[:, None], other=0.0)
        s = _dot(q, k, IEEE, UPCAST) * qk_scale
        s = tl.where(n_in[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        w = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(w, 1)
        v = tl.load(v_ptr + n[:, None] * stride_n + dim[None, :], mask=n_in[:, None] & d_in[None, :], other=0.0)
        acc = acc * alpha[:, None] + _dot(w.to(v.dtype), v, IEEE, UPCAST)
        return m_new, l_i, acc

    @triton.jit
    def _prompt_kernel(q_ptr, k_ptr, v_ptr, len_ptr, o_ptr, lse_ptr,
                       sq_row, sq_kv, sq_g, sk_p, sk_kv, sk_n, s_len, so_s, so_pk, so_q, sl_s, sl_pk,
                       num_kv, m, group, head_dim, chunk, qk_scale,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
                       UPCAST: tl.constexpr):
        """Queries (block, prompt x kv head) against keys [split * chunk, its end or the prompt's length)."""
        block, pk, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        p, h = pk // num_kv, pk % num_kv
        qi = block * BLOCK_M + tl.arange(0, BLOCK_M)  # query i: row p * m + i // group, head h * group + i % group
        q_in = qi < m * group
        dim = tl.arange(0, BLOCK_D)
        d_in = dim < head_dim
        row = (p * m + qi // group).to(tl.int64)
        q = tl.load(q_ptr + row[:, None] * sq_row + h * sq_kv + (qi % group)[:, None] * sq_g + dim[None, :],
                    mask=q_in[:, None] & d_in[None, :], other=0.0)
        length = tl.load(len_ptr + p * s_len).to(tl.int32)
        lo = split * chunk
        hi = tl.minimum(lo + chunk, length)
        base = p.to(tl.int64) * sk_p + h * sk_kv
        k_ptr += base
        v_ptr += base
        m_i = tl.full([BLOCK_M], -1e30, tl.float32)  # finite: exp2(m_old - m_new) is never exp2(nan)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            m_i, l_i, acc = _attend(q, k_ptr, v_ptr, n, n < hi, sk_n, dim, d_in, qk_scale, m_i, l_i, acc,
                                    IEEE, UPCAST)
        # an empty split (past the prompt's length): output 0, lse ~ -1e30 (weight 0 in the merge)
        lse = m_i + tl.log2(tl.maximum(l_i, 1e-30))
        acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        out = o_ptr + split * so_s + pk * so_pk + qi[:, None] * so_q + dim[None, :]
        tl.store(out, acc.to(o_ptr.dtype.element_ty), mask=q_in[:, None] & d_in[None, :])
        tl.store(lse_ptr + split * sl_s + pk * sl_pk + qi, lse, mask=q_in)

    @triton.jit
    def _own_kernel(q_ptr, new_ptr, cache_ptr, step_ptr, po_ptr, pl_ptr, out_ptr,
                    sq_row, sq_kv, sq_g, sn_kv, sn_row, sn_h, sc_kv, sc_row, sc_h, sc_n,
                    so_s, so_pk, so_q, sl_s, sl_pk, s_out,
                    num_kv, m, group, head_dim, splits, qk_scale,
                    BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
                    UPCAST: tl.constexpr):
        """Row r's query heads of KV head h against its own tokens, merged with the prompt's splits."""
        r, h = tl.program_id(0), tl.program_id(1)
        g = tl.arange(0, BLOCK_G)
        g_in = g < group
        dim = tl.arange(0, BLOCK_D)
        d_in = dim < head_dim
        q = tl.load(q_ptr + r.to(tl.int64) * sq_row + h * sq_kv + g[:, None] * sq_g + dim[None, :],
                    mask=g_in[:, None] & d_in[None, :], other=0.0)
        new = new_ptr + r.to(tl.int64) * sn_row + h * sn_h + dim
        k_new = tl.load(new, mask=d_in, other=0.0)
        v_new = tl.load(new + sn_kv, mask=d_in, other=0.0)
        step = tl.load(step_ptr).to(tl.int32)
        k_ptr = cache_ptr + r.to(tl.int64) * sc_row + h * sc_h
        v_ptr = k_ptr + sc_kv
        tl.store(k_ptr + step * sc_n + dim, k_new, mask=d_in)  # the step's KV write
        tl.store(v_ptr + step * sc_n + dim, v_new, mask=d_in)
        # the new token first (its weight is 1 at its own maximum), then slots 0..step-1 from the cache
        m_i = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], 1) * qk_scale
        l_i = tl.full([BLOCK_G], 1.0, tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32) + v_new.to(tl.float32)[None, :]
        for start in range(0, step, BLOCK_S):
            n = start + tl.arange(0, BLOCK_S)
            m_i, l_i, acc = _attend(q, k_ptr, v_ptr, n, n < step, sc_n, dim, d_in, qk_scale, m_i, l_i, acc,
                                    IEEE, UPCAST)
        # merge: out = sum_i 2^(lse_i - top) o_i / sum_i 2^(lse_i - top) over own and the prompt's splits
        top = m_i + tl.log2(l_i)
        weight = tl.full([BLOCK_G], 1.0, tl.float32)
        acc = acc / l_i[:, None]
        pk = (r // m) * num_kv + h
        qi = (r % m) * group + g
        for split in range(splits):
            lse = tl.load(pl_ptr + split * sl_s + pk * sl_pk + qi, mask=g_in, other=-float("inf"))
            part = tl.load(po_ptr + split * so_s + pk * so_pk + qi[:, None] * so_q + dim[None, :],
                           mask=g_in[:, None] & d_in[None, :], other=0.0).to(tl.float32)
            top_new = tl.maximum(top, lse)
            a = tl.exp2(top - top_new)
            b = tl.exp2(lse - top_new)
            acc = acc * a[:, None] + part * b[:, None]
            weight = weight * a + b
            top = top_new
        acc = acc / weight[:, None]
        out = out_ptr + r.to(tl.int64) * s_out + (h * group + g)[:, None] * head_dim + dim[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=g_in[:, None] & d_in[None, :])
