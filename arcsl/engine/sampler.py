"""Batched sampling from a causal LM: every prompt is prefilled once and its samples decoded together.

What is covered:
- `SharedPrefixDecoder` (Llama, Mistral, Qwen2/2.5 and Qwen3 models; weights from `decode_weights.
  DecodeWeights`, which says what the families share and where they differ): the prompt's KV cache is stored
  once and attended by all of its samples (never copied per sample); each sample's own tokens go to a
  static cache. Attention runs in two parts, prompt and own tokens, merged by their log-sum-exp, with the
  KV heads never expanded (native GQA): on a GPU as two Triton kernels per layer (`attention`, which also
  writes the step's K/V), elsewhere (and for shapes they do not cover) as PyTorch operations
  (`two_part_attention`). A decoder lives as long as the engine: its caches are reused by every batch of
  the same shape, and its decode steps, captured as CUDA graphs once per prompt-length bucket (and, on the
  PyTorch path, step-cache width), are replayed across calls and rounds (the weights they read are updated
  in place). The prompts of a batch are prefilled together, padded to the longest. Each prompt may use its own
  LoRA adapter (the weights then mix adapters; a static one-hot mask per row picks its adapter's block).
- the decode step's elementwise pieces (`rms_norm`, `add_rms_norm`, `silu_mul`, `rotate`, `softmax_lse`,
  `merge_parts`) as plain functions; `compiled_ops()` gives them compiled by torch.compile, once per
  process, so each becomes one fused kernel (a step has ~16 kernels per layer instead of ~75).
- `CacheDecoder`: any Hugging Face causal LM through its own forward; the prompt is prefilled once and its
  cache copied to each sample. Slower; the fallback for architectures the fast path does not know.
- token choice (`token_choice.pick_tokens`): greedy, temperature, top-p and min-p sampling from explicit
  noise, without sorting the vocabulary; `PromptNoise` draws each prompt's rows from that prompt's own
  generator, so a sample depends on its prompt's seed, not on which prompts share its batch (as long as its
  samples are not split over batches or retried after running out of memory, and up to the arithmetic of
  other batch shapes on a GPU).
- `generate`: the decode loop, with stops at EOS/end-of-turn or where the caller's stop rule (a `StopRule`,
  e.g. the prompt format's) says the text is complete; the sampler does not know what the rule looks for.
  On CPU, where a step costs in proportion to its rows, a prompt whose samples have all stopped leaves the
  batch. Each sample is handed to the caller at the check where it stops (`on_row_end`), and on a GPU the
  host's wait at each check is given to the caller (`idle`), e.g. to run the finished samples' programs.

What is not covered: continuous batching (a batch runs until its last sample stops; on a GPU a finished
sample still occupies its row, which costs little because a decode step is bound by reading the weights),
paged KV caches, speculative decoding, sliding-window attention, beam search.
"""

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half

from arcsl.config import SamplingConfig
from arcsl.engine import attention
from arcsl.engine.planner import ALIGN, PREFILL_TOKENS, PROMPT_ALIGN, round_up
from arcsl.engine.token_choice import PromptNoise, pick_tokens
from arcsl.engine.types import StopRule

# families whose decoder layout the fast path re-implements (q/k/v/o, rotary, pre-norm, SiLU MLP; biases, q/k norms)
FAST_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
CHECK_EVERY = 16  # decode steps between host syncs (stop checks); finished samples run on until then


# --- the fused pieces of a decode step --------------------------------------------------------------
# Plain tensor functions with no module state, so that torch.compile traces each one once for all layers.


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream plus a layer's output, and that sum normalised for the next layer."""
    x = x + delta
    return x, F.rms_norm(x, (x.shape[-1],), weight, eps)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """Llama's MLP activation on the fused gate and up projections. Shape: (..., 2i) -> (..., i)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rotate(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_kv_heads: int, rows_per_prompt: int,
           q_norm: torch.Tensor | None = None, k_norm: torch.Tensor | None = None, eps: float = 0.0,
           shared: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Rotary embedding of one decode step's queries and keys, in the layouts attention reads; first their
    per-head RMSNorm where the model has one (Qwen3: `q_norm`, `k_norm`).

    Shapes: qkv (rows, (heads + 2 kv) * d), cos and sin (rows, d) -> q_own (rows * kv, group, d),
    q_shared (prompts * kv, m * group, d) with m = rows_per_prompt (None unless `shared`: the GPU kernels
    read q_own only), kv_new (2, rows, kv, 1, d): K and V. Query head j reads KV head j // group, as Hugging
    Face's repeat_kv.
    """
    rows, d = qkv.shape[0], cos.shape[-1]
    heads = qkv.shape[1] // d - 2 * num_kv_heads
    group = heads // num_kv_heads
    q, k, v = qkv.view(rows, -1, d).split([heads, num_kv_heads, num_kv_heads], dim=1)
    if q_norm is not None:
        q, k = F.rms_norm(q, (d,), q_norm, eps), F.rms_norm(k, (d,), k_norm, eps)
    cos, sin = cos[:, None], sin[:, None]
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    q_own, kv_new = q.reshape(rows * num_kv_heads, group, d), torch.stack([k, v])[:, :, :, None]
    if not shared:
        return q_own, None, kv_new
    q_shared = q.view(-1, rows_per_prompt, num_kv_heads, group, d).transpose(1, 2)
    return q_own, q_shared.reshape(-1, rows_per_prompt * group, d), kv_new


def softmax_lse(scores: torch.Tensor, bias: torch.Tensor, scale: float,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention weights (in `dtype`) and their log-sum-exp, from float32 q.k scores and an additive bias."""
    scores = torch.add(bias, scores, alpha=scale)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.exp(scores - lse).to(dtype), lse


def merge_parts(shared: torch.Tensor, shared_lse: torch.Tensor, own: torch.Tensor, own_lse: torch.Tensor,
                num_kv_heads: int, rows_per_prompt: int) -> torch.Tensor:
    """Attention over prompt and own tokens from the attention over each, in o_proj's input layout.

    The prompt's share is exp(lse_p) / (exp(lse_p) + exp(lse_o)) = sigmoid(lse_p - lse_o), in float32.
    Shapes: shared (prompts * kv, m * group, d), own (rows * kv, group, d), lse (..., 1) -> (rows, heads * d).
    """
    kv, m = num_kv_heads, rows_per_prompt
    group, d = own.shape[-2:]
    shared = shared.view(-1, kv, m, group, d).transpose(1, 2)
    shared_lse = shared_lse.view(-1, kv, m, group, 1).transpose(1, 2)
    own, own_lse = own.view(-1, m, kv, group, d), own_lse.view(-1, m, kv, group, 1)
    out = torch.lerp(own.float(), shared.float(), torch.sigmoid(shared_lse - own_lse))
    return out.to(own.dtype).reshape(-1, kv * group * d)


@dataclass(frozen=True, slots=True)
class DecodeOps:
    rms_norm: Callable
    add_rms_norm: Callable
    silu_mul: Callable
    rotate: Callable
    softmax_lse: Callable
    merge_parts: Callable


EAGER_OPS = DecodeOps(rms_norm, add_rms_norm, silu_mul, rotate, softmax_lse, merge_parts)


def _probe(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) * x


def check_compiler(device: torch.device, dtype: torch.dtype, backend: str = "inductor") -> None:
    """Compiles and runs a small function on `device`: raises if torch.compile cannot work there."""
    torch.compile(_probe, backend=backend, fullgraph=True)(torch.ones(4, device=device, dtype=dtype))


@functools.cache
def compiled_ops(backend: str = "inductor") -> DecodeOps:
    """The decode pieces under torch.compile, built once per process: later calls, rounds and decoders
    reuse the compiled code (new shapes recompile once, after which their sizes are symbolic)."""
    return DecodeOps(*(torch.compile(getattr(EAGER_OPS, f.name), backend=backend, fullgraph=True)
                       for f in fields(DecodeOps)))


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q @ k^T in float32. Shapes: q (b, m, d), k (b, n, d) -> (b, m, n)."""
    if q.is_cuda and q.dtype != torch.float32:
        # bf16 operands, float32 result: the accuracy of a flash kernel without a float32 copy of the cache
        return torch.bmm(q, k.transpose(1, 2), out_dtype=torch.float32)
    return torch.bmm(q, k.transpose(1, 2)).float()


def two_part_attention(ops: DecodeOps, q_own: torch.Tensor, q_shared: torch.Tensor, kv_new: torch.Tensor,
                       step_kv: torch.Tensor, step_index: torch.Tensor, step_bias: torch.Tensor, width: int,
                       prompt_kv: torch.Tensor, prompt_bias: torch.Tensor, prompt_cap: int,
                       scale: float) -> torch.Tensor:
    """One layer's decode attention as PyTorch operations (the CPU path, and the reference of the GPU
    kernels in `attention`); also writes the step's K/V into `step_kv`.

    Shapes: q_own, q_shared and kv_new as `rotate` gives them; step_kv (2, rows, kv, step_cap, d), of which
    the first `width` slots are read, masked by step_bias (1, 1, width); prompt_kv (2, prompts, kv, capacity,
    d), the first `prompt_cap` slots read, masked by prompt_bias (prompts * kv, 1, >= prompt_cap).
    Returns (rows, heads * d) in the caches' dtype.
    """
    kv, d, dtype = step_kv.shape[2], step_kv.shape[-1], step_kv.dtype
    m = q_own.shape[0] // (kv * prompt_kv.shape[1])
    step_kv.index_copy_(3, step_index, kv_new)
    keys, values = (step_kv[j, :, :, :width].reshape(-1, width, d) for j in (0, 1))
    own, own_lse = ops.softmax_lse(attention_scores(q_own, keys), step_bias, scale, dtype)
    own = torch.bmm(own, values)
    # all queries of one prompt's rows against its cache in one matrix product
    keys, values = (prompt_kv[j, :, :, :prompt_cap].reshape(-1, prompt_cap, d) for j in (0, 1))
    bias = prompt_bias[:, :, :prompt_cap]
    shared, shared_lse = ops.softmax_lse(attention_scores(q_shared, keys), bias, scale, dtype)
    shared = torch.bmm(shared, values)
    return ops.merge_parts(shared, shared_lse, own, own_lse, kv, m)


# --- decoders -----------------------------------------------------------------------------------------


class SharedPrefixDecoder:
    """Decodes `rows_per_prompt` samples of each of `num_prompts` prompts as one batch.

    Caches, per layer: prompt K/V (2, num_prompts, kv_heads, prompt_cap, head_dim), written by `prefill`;
    sample K/V (2, rows, kv_heads, step_cap, head_dim), one slot per decode step. Row r samples prompt
    r // rows_per_prompt. Use: `load(prompts, adapters)`, `prefill()`, then `step()` per token; `load` again
    for the next batch of the same shape (the caches and captured graphs are kept).

    Args:
        weights: the model's weights as the fast path reads them (`decode_weights.DecodeWeights`).
        max_steps: most decode steps of a batch (max_new_tokens - 1).
        use_graphs: capture each step shape once as a CUDA graph and replay it (GPU only).
        ops: the decode pieces, eager (`EAGER_OPS`) or compiled (`compiled_ops()`).
    """

    def __init__(self, weights, num_prompts: int, rows_per_prompt: int, max_steps: int, use_graphs: bool,
                 ops: DecodeOps = EAGER_OPS):
        self.w, self.ops, self.use_graphs = weights, ops, use_graphs
        self.rows_per_prompt, self.batch_prompts = rows_per_prompt, num_prompts
        self.device, self.dtype = weights.embed.weight.device, weights.embed.weight.dtype
        self.step_cap = round_up(max(max_steps, 1), ALIGN)
        self.prompt_kv = self.prompt_bias = None
        self.prompt_capacity = self.prompt_cap = 0
        self.prompts: list[list[int]] = []
        self.slots = torch.arange(self.step_cap, device=self.device)
        self.fused_attention = attention.supported(self.device, self.dtype, weights.head_dim)
        # On CPU a decode step costs in proportion to its rows, so a prompt whose samples have all stopped
        # leaves the batch (`keep_prompts`); on a GPU a step is bound by reading the weights, and the graphs
        # need fixed shapes.
        self.can_narrow = self.device.type == "cpu" and not use_graphs
        self._allocate_rows()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if use_graphs else None
        self.capture_s = 0.0  # time spent capturing graphs (and compiling), for the caller's accounting
        self.pool_bytes = 0  # memory the graphs' private pool reserved: only they can use it

    def _allocate_rows(self) -> None:
        """The per-row buffers, for the batch's full shape."""
        w = self.w
        self.num_prompts, self.num_rows = self.batch_prompts, self.batch_prompts * self.rows_per_prompt
        # zeros, not empty: masked slots get weight 0, and 0 * NaN from stale memory would poison the sum
        self.step_kv = torch.zeros(len(w.layers), 2, self.num_rows, w.num_kv_heads, self.step_cap, w.head_dim,
                                   device=self.device, dtype=self.dtype)
        # static inputs of the decode step: the graphs read them from these addresses
        self.tokens = torch.zeros(self.num_rows, dtype=torch.long, device=self.device)
        self.step_index = torch.zeros(1, dtype=torch.long, device=self.device)
        self.first_position = torch.zeros(self.num_rows, dtype=torch.long, device=self.device)
        # one-hot adapter of each prompt and row, read by the projections while the weights mix adapters
        self.prompt_adapters = torch.zeros(self.num_prompts, w.num_adapters, 1, device=self.device, dtype=self.dtype)
        self.row_adapters = torch.zeros(self.num_rows, w.num_adapters, 1, device=self.device, dtype=self.dtype)

    @property
    def nbytes(self) -> int:
        """Memory dropping this decoder gives back: its caches and its graphs' pool."""
        return self.step_kv.nbytes + (self.prompt_kv.nbytes if self.prompt_kv is not None else 0) + self.pool_bytes

    def load(self, prompts: list[list[int]], adapters: list[int] | None = None) -> None:
        """Makes the decoder ready for `prompts`: caches cleared, prompt lengths, positions and adapters
        (one per prompt, default 0; used while the weights mix adapters) set."""
        if len(prompts) != self.batch_prompts:
            raise ValueError(f"this decoder takes {self.batch_prompts} prompts, got {len(prompts)}")
        if self.num_prompts != self.batch_prompts:  # narrowed by the last batch: back to the full shape
            self._allocate_rows()
            self.prompt_capacity = 0
        cap = round_up(max(len(p) for p in prompts), PROMPT_ALIGN)
        if cap > self.prompt_capacity:  # grow; the graphs read the old buffers, so they go too
            self.graphs.clear()
            self.pool_bytes = 0  # the pool is freed with its last graph
            # and its handle may not be captured into again (torch asserts "use_count > 0"): a new pool
            self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
            self.prompt_kv = self.prompt_bias = None
            w = self.w
            self.prompt_kv = torch.zeros(len(w.layers), 2, self.num_prompts, w.num_kv_heads, cap, w.head_dim,
                                         device=self.device, dtype=self.dtype)
            self.prompt_bias = torch.zeros(self.num_prompts * w.num_kv_heads, 1, cap, device=self.device)
            self.prompt_capacity = cap
        self.prompts, self.prompt_cap = prompts, cap
        self.step_kv.zero_()
        self.prompt_kv.zero_()
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        slots = torch.arange(self.prompt_capacity, device=self.device)
        bias = torch.where(slots < lengths[:, None], 0.0, float("-inf"))
        self.prompt_bias.copy_(bias.repeat_interleave(self.w.num_kv_heads, dim=0)[:, None])
        self.first_position.copy_(lengths.repeat_interleave(self.rows_per_prompt))
        adapters = torch.tensor(adapters or [0] * len(prompts), device=self.device)
        one_hot = F.one_hot(adapters, self.w.num_adapters).to(self.dtype)[:, :, None]
        self.prompt_adapters.copy_(one_hot)
        self.row_adapters.copy_(one_hot.repeat_interleave(self.rows_per_prompt, dim=0))

    def keep_prompts(self, keep: list[int]) -> None:
        """Decodes only the rows of prompts `keep` (indices into the current prompts, in order) from the next
        step on; the others' samples have all stopped. Only where `can_narrow`; `load` restores the full batch."""
        assert self.can_narrow, "narrowing needs an eager CPU decoder"
        p = torch.tensor(keep, device=self.device)
        m, kv = self.rows_per_prompt, self.w.num_kv_heads
        r = (p[:, None] * m + torch.arange(m, device=self.device)).flatten()
        self.step_kv = self.step_kv.index_select(2, r)
        self.tokens = self.tokens.index_select(0, r)
        self.first_position = self.first_position.index_select(0, r)
        self.row_adapters = self.row_adapters.index_select(0, r)
        self.prompt_adapters = self.prompt_adapters.index_select(0, p)
        self.prompt_kv = self.prompt_kv.index_select(2, p)
        self.prompt_bias = self.prompt_bias.view(self.num_prompts, kv, 1, -1).index_select(0, p).flatten(0, 1)
        self.prompts = [self.prompts[i] for i in keep]
        self.num_prompts, self.num_rows = len(keep), len(keep) * m

    # --- prefill ------------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        """Runs the prompts (a few at a time, padded to the longest), filling the prompt caches.
        Returns first-token logits, float32 (rows, vocab)."""
        last, start = [], 0
        while start < self.num_prompts:
            end = start + 1
            while end < self.num_prompts and (end + 1 - start) * max(map(len, self.prompts[start:end + 1])) \
                    <= PREFILL_TOKENS:
                end += 1
            last.append(self._prefill_group(start, end))
            start = end
        return torch.cat(last).float().repeat_interleave(self.rows_per_prompt, dim=0)

    def _prefill_group(self, start: int, end: int) -> torch.Tensor:
        # Right padding under a causal mask: a real token never sees a pad, and the pads' cache slots are
        # masked by prompt_bias, so padding changes nothing.
        w, prompts = self.w, self.prompts[start:end]
        b, n = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(b, n, dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, :len(p)] = torch.tensor(p)
        x = w.embed(ids.to(self.device))
        cos, sin = w.rotary(x, torch.arange(n, device=self.device)[None])
        h = rms_norm(x, w.layers[0].input_norm, w.eps)
        mask = self.prompt_adapters[start:end, None]  # (b, 1, adapters, 1): one adapter for all of a prompt's tokens
        for i, layer in enumerate(w.layers):
            q, k, v = w.project(layer.qkv, h, mask).view(b, n, -1, w.head_dim).transpose(1, 2).split(
                [w.num_heads, w.num_kv_heads, w.num_kv_heads], dim=1)
            if layer.q_norm is not None:
                q, k = rms_norm(q, layer.q_norm, w.qk_eps), rms_norm(k, layer.k_norm, w.qk_eps)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.prompt_kv[i, 0, start:end, :, :n] = k
            self.prompt_kv[i, 1, start:end, :, :n] = v
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=w.scale, enable_gqa=True)
            out = w.project(layer.o, out.transpose(1, 2).reshape(b, n, -1), mask)
            x, h = add_rms_norm(x, out, layer.post_norm, w.eps)
            x, h = add_rms_norm(x, w.project(layer.down, silu_mul(w.project(layer.gate_up, h, mask)), mask),
                                w.next_norm(i), w.eps)
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        return w.head(h[torch.arange(b, device=self.device), lengths - 1])

    # --- decode -------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Feeds each row's token number `step` (0-based); returns the next logits, float32 (rows, vocab)."""
        self.tokens.copy_(tokens)
        self.step_index.fill_(step)
        # the PyTorch path attends only to the filled part of the step cache, in power-of-two buckets so few
        # graphs are needed; the kernels read the step from the device, so one graph serves every step
        width = self.step_cap if self.fused_attention else min(self.step_cap, max(ALIGN, 1 << step.bit_length()))
        if not self.use_graphs:
            return self._forward(width, self.prompt_cap)
        # merged (or zero) LoRA: no LoRA products; mixed adapters: every adapter's, masked per row
        key = (self.prompt_cap, width, self.w.apply_lora, self.w.is_mixed)
        if key not in self.graphs:
            started = time.perf_counter()
            self.graphs[key] = self._capture(width)
            self.capture_s += time.perf_counter() - started
        graph, logits = self.graphs[key]
        graph.replay()
        return logits

    def _capture(self, width: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # The step is idempotent (it rewrites the same cache slot from the same inputs), so the warm-up run
        # (which also compiles new shapes) on the current inputs is harmless.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward(width, self.prompt_cap)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):  # entering it empties the allocator's cache
            reserved = torch.cuda.memory_reserved(self.device)  # a host-side count: legal while capturing
            logits = self._forward(width, self.prompt_cap)
        self.pool_bytes += torch.cuda.memory_reserved(self.device) - reserved  # what the pool grew by
        return graph, logits

    def _forward(self, width: int, prompt_cap: int) -> torch.Tensor:
        w, ops = self.w, self.ops
        x = w.embed(self.tokens)
        cos, sin = w.rotary(x, (self.first_position + self.step_index)[:, None])
        cos, sin = cos[:, 0], sin[:, 0]
        # rank 3 like the prompt's bias, so that one compiled softmax_lse serves both parts (PyTorch path only)
        step_bias = None if self.fused_attention else \
            torch.where(self.slots[:width] <= self.step_index, 0.0, float("-inf"))[None, None]
        h = ops.rms_norm(x, w.layers[0].input_norm, w.eps)
        mask = self.row_adapters
        for i, layer in enumerate(w.layers):
            attn = self._attention(i, w.project(layer.qkv, h, mask), cos, sin, step_bias, width, prompt_cap)
            x, h = ops.add_rms_norm(x, w.project(layer.o, attn, mask), layer.post_norm, w.eps)
            delta = w.project(layer.down, ops.silu_mul(w.project(layer.gate_up, h, mask)), mask)
            x, h = ops.add_rms_norm(x, delta, w.next_norm(i), w.eps)
        return w.head(h).float()

    def _attention(self, i, qkv, cos, sin, step_bias, width, prompt_cap) -> torch.Tensor:
        w, kv, m = self.w, self.w.num_kv_heads, self.rows_per_prompt
        layer = w.layers[i]
        q_own, q_shared, kv_new = self.ops.rotate(qkv, cos, sin, kv, m, layer.q_norm, layer.k_norm, w.qk_eps,
                                                  not self.fused_attention)
        if self.fused_attention:
            # a prompt's length is its rows' first position
            return attention.decode_attention(q_own.unflatten(0, (-1, kv)), kv_new[:, :, :, 0], self.step_kv[i],
                                              self.step_index, self.prompt_kv[i], self.first_position[::m],
                                              prompt_cap, w.scale)
        return two_part_attention(self.ops, q_own, q_shared, kv_new, self.step_kv[i], self.step_index, step_bias,
                                  width, self.prompt_kv[i], self.prompt_bias, prompt_cap, w.scale)


class CacheDecoder:
    """Decodes the samples of one prompt through the model's own forward (any HF causal LM).

    The prompt is prefilled once and its cache repeated to each sample; no CUDA graphs (the HF cache grows
    each step), no reuse across calls.
    """

    def __init__(self, lm, prompts: list[list[int]], rows_per_prompt: int, autocast_dtype: torch.dtype | None):
        if len(prompts) != 1:
            raise ValueError(f"CacheDecoder takes one prompt per batch, got {len(prompts)}")
        self.lm, self.prompt, self.num_rows = lm, prompts[0], rows_per_prompt
        self.device = lm.get_output_embeddings().weight.device
        self.autocast = torch.autocast(self.device.type, dtype=autocast_dtype or torch.float32,
                                       enabled=autocast_dtype is not None)
        self.cache = None
        self.capture_s = 0.0
        self.can_narrow = False  # one prompt a batch: nothing to drop

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        with self.autocast:
            out = self.lm(input_ids=torch.tensor([self.prompt], device=self.device), use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        self.cache.batch_repeat_interleave(self.num_rows)
        return out.logits[:, -1].float().expand(self.num_rows, -1)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        with self.autocast:
            out = self.lm(input_ids=tokens[:, None], past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].float()


# --- the decode loop --------------------------------------------------------------------------------


@dataclass(slots=True)
class RowState:
    """One sample while it is decoded: its tokens so far, the text seen by the stop check, how it ended."""
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    end: int | None = None  # tokens generated when it stopped, the stop token included
    finish_reason: str = "length"
    text_end: int | None = None  # cut the final text here (where the stop rule said)


def generate(decoder, logits: torch.Tensor, cfg: SamplingConfig, stop_ids: list[int],
             noise: PromptNoise | None, tokenizer, stop: StopRule | None = None,
             stop_at: float | None = None, on_row_end: Callable[[int, RowState], None] | None = None,
             idle: Callable[[float], None] | None = None) -> list[RowState]:
    """Samples from the prefilled `decoder` (`logits`: its first-token logits) until every row has stopped
    or has `cfg.max_new_tokens`; returns one finished `RowState` per row.

    Stops: a token in `stop_ids` (EOS, end of turn; not part of the text), or `stop` answering for the text
    so far (the text is cut where it says). `tokenizer` is needed only for `stop`. At `stop_at`
    (time.monotonic(), read after every step) the rows still running end with finish_reason "deadline".

    Stops are found at a host sync every CHECK_EVERY steps. `on_row_end(i, row)` hears row i there once it
    has stopped, its state final (rows ended by the deadline are not heard). `idle(seconds)` is called while
    the host waits for the device at a sync (on CUDA, in slices of 1 ms while the step's tokens are copied to
    the host; on CPU, once per sync with 0), so the caller can work while the device decodes.
    """
    rows = [RowState() for _ in range(decoder.num_rows)]
    out = torch.zeros(decoder.num_rows, cfg.max_new_tokens, dtype=torch.long, device=logits.device)
    live = slice(None)  # the rows of `rows` the decoder samples: all, until it is narrowed
    checked = 0
    for step in range(cfg.max_new_tokens):
        out[live, step] = pick_tokens(logits, cfg.temperature, cfg.top_p, noise, cfg.min_p)
        done = step + 1
        late = stop_at is not None and time.monotonic() >= stop_at  # a host clock read: no sync
        if late or done == cfg.max_new_tokens or done % CHECK_EVERY == 0:
            new = _to_host(out[:, checked:done], idle)  # the only host sync: once per CHECK_EVERY steps
            ended = _check_stops(rows, new, checked, set(stop_ids), stop, tokenizer)
            checked = done
            if on_row_end is not None:
                for i in ended:
                    on_row_end(i, rows[i])
            if all(r.end is not None for r in rows):
                break
            if late:
                for row in rows:
                    if row.end is None:
                        row.finish_reason = "deadline"
                break
            if decoder.can_narrow:
                live = _drop_stopped_prompts(decoder, rows, live, noise)
        if done < cfg.max_new_tokens:
            logits = decoder.step(out[live, step], step)
    for i, row in enumerate(rows):
        if row.end is None:
            row.end = len(row.tokens)
            if on_row_end is not None and row.finish_reason == "length":
                on_row_end(i, row)
    return rows


def _to_host(tokens: torch.Tensor, idle: Callable[[float], None] | None) -> list[list[int]]:
    """`tokens` as lists, once the device has computed them; `idle` gets the wait (see `generate`)."""
    if idle is None:
        return tokens.tolist()
    if tokens.device.type != "cuda":
        idle(0)  # nothing to wait for: one look, so the caller's work keeps moving between syncs
        return tokens.tolist()
    host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
    host.copy_(tokens, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    while not copied.query():
        idle(0.001)  # short slices: the device waits for the host from the copy's end to the slice's
    return host.tolist()


def _drop_stopped_prompts(decoder, rows: list[RowState], live: slice | torch.Tensor,
                          noise: PromptNoise | None) -> slice | torch.Tensor:
    """Narrows `decoder` (and `noise`) to the prompts with a sample still running; returns the rows it then decodes."""
    by_prompt = torch.arange(len(rows))[live].view(-1, decoder.rows_per_prompt)
    keep = [p for p, prompt_rows in enumerate(by_prompt.tolist()) if any(rows[i].end is None for i in prompt_rows)]
    if len(keep) == len(by_prompt):
        return live
    decoder.keep_prompts(keep)
    if noise is not None:
        noise.keep(keep)
    return by_prompt[keep].flatten().to(decoder.device)


def _check_stops(rows: list[RowState], new: list[list[int]], offset: int, stop_ids: set[int],
                 stop: StopRule | None, tokenizer) -> list[int]:
    """Adds the new tokens of the rows still running and ends those that stopped; returns the rows it ended."""
    live = [i for i, r in enumerate(rows) if r.end is None]
    for i in live:
        rows[i].tokens.extend(new[i])
    eos_at = {i: next((j for j, t in enumerate(new[i]) if t in stop_ids), None) for i in live}
    if stop is not None:
        # decode only the new tokens; a rule that looks for ASCII marks cannot miss one split across chunks
        pieces = tokenizer.batch_decode([new[i][:eos_at[i]] for i in live], skip_special_tokens=False)
        for i, piece in zip(live, pieces):
            rows[i].text += piece
            if stop(rows[i].text) is not None:
                _stop_where_rule_says(rows[i], offset, tokenizer, stop)
    for i in live:
        if rows[i].end is None and eos_at[i] is not None:
            rows[i].end, rows[i].finish_reason = offset + eos_at[i] + 1, "eos"
    return [i for i in live if rows[i].end is not None]


def _stop_where_rule_says(row: RowState, offset: int, tokenizer, stop: StopRule) -> None:
    # the first token count (within the last chunk) whose full text the rule ends
    for end in range(offset + 1, len(row.tokens) + 1):
        cut = stop(tokenizer.decode(row.tokens[:end], skip_special_tokens=False))
        if cut is not None:
            row.end, row.finish_reason, row.text_end = end, "stop", cut
            return
    # decoding in chunks can differ from decoding at once in whitespace (some tokenizers strip a leading
    # space); then stop at the chunk's end and keep the full text
    row.end, row.finish_reason = len(row.tokens), "stop"
