"""Batched sampling from a causal LM: every prompt is prefilled once and its samples decoded together.

What is covered:
- `SharedPrefixDecoder` (Llama-layout models): the prompt's KV cache is stored once and attended by all of
  its samples (never copied per sample); each sample's own tokens go to a static cache. Attention runs in
  two parts, prompt and own tokens, merged by their log-sum-exp, with the KV heads never expanded (native
  GQA). The decode step has static shapes, so on a GPU it is captured once per cache-length bucket and
  replayed as a CUDA graph (no per-kernel launch cost).
- `CacheDecoder`: any Hugging Face causal LM through its own forward; the prompt is prefilled once and its
  cache copied to each sample. Slower; the fallback for architectures the fast path does not know.
- `pick_tokens`: greedy, temperature and top-p sampling with an explicit generator (reproducible).
- `generate`: the decode loop, with stops at EOS/end-of-turn or at the end of the first ``` code block.

What is not covered: continuous batching (a batch runs until its last sample stops; a finished sample
still occupies its row, which costs little because a decode step is bound by reading the weights),
paged KV caches, speculative decoding, sliding-window attention, beam search.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from arcsl.config import SamplingConfig

FAST_MODEL_TYPES = ("llama",)  # decoder layout the fast path re-implements (q/k/v/o, rotary, pre-norm, MLP)
CHECK_EVERY = 16  # decode steps between host syncs (stop checks); finished samples run on until then
ALIGN = 64  # cache lengths are rounded up to this, so graphs are reused


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


# --- token choice -----------------------------------------------------------------------------------


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row from float32 logits; temperature 0 is greedy. Shape: (b, vocab) -> (b,).

    Sampling draws one exponential variable E per candidate and takes argmax(p / E), which is a draw from p
    (the "exponential race"): no renormalisation after top-p, and `generator` makes it reproducible.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1:
        noise = torch.empty_like(probs).exponential_(generator=generator)
        return (probs / noise).argmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # mass before this token already covers top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    noise = torch.empty_like(sorted_probs).exponential_(generator=generator)
    return order.gather(-1, (sorted_probs / noise).argmax(dim=-1, keepdim=True)).squeeze(-1)


def code_block_end(text: str) -> int | None:
    """Index just past the fence that closes the first ``` block of `text`, or None while it is open."""
    opening = text.find("```")
    if opening < 0:
        return None
    line_end = text.find("\n", opening)
    if line_end < 0:
        return None
    closing = text.find("\n```", line_end)
    return None if closing < 0 else closing + 4


# --- attention pieces -------------------------------------------------------------------------------


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q @ k^T in float32. Shapes: q (..., m, d), k (..., n, d) -> (..., m, n)."""
    if q.is_cuda and q.dtype != torch.float32:
        # bf16 operands, float32 result: the accuracy of a flash kernel without a float32 copy of the cache
        lead = q.shape[:-2]
        keys = k.reshape(-1, *k.shape[-2:]).transpose(1, 2)
        return torch.bmm(q.reshape(-1, *q.shape[-2:]), keys, out_dtype=torch.float32).view(*lead, -1, k.shape[-2])
    return (q @ k.transpose(-1, -2)).float()


def attend(q, k, v, bias, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with an additive float32 bias; also returns the log-sum-exp for merging parts.

    Shapes: q (..., m, d), k and v (..., n, d), bias broadcast to (..., m, n) -> out (..., m, d), lse (..., m, 1).
    """
    scores = torch.add(bias, attention_scores(q, k), alpha=scale)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.exp(scores - lse).to(v.dtype) @ v, lse


def merge_attention(out_a, lse_a, out_b, lse_b) -> torch.Tensor:
    """Attention over the union of two key sets, from the attention over each (float32).

    The share of set a is exp(lse_a) / (exp(lse_a) + exp(lse_b)) = sigmoid(lse_a - lse_b).
    """
    return torch.lerp(out_b.float(), out_a.float(), torch.sigmoid(lse_a - lse_b))


def lora_parts(module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A, scaling * B) of a plain peft LoRA linear layer, in `dtype`; None where the module's own forward
    must run (no LoRA, DoRA and other variants, LoRA bias, merged or disabled adapters, quantised layers)."""
    from peft.tuners.lora import Linear as LoraLinear

    if type(module) is not LoraLinear or module.merged or module.disable_adapters:
        return None
    if len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    if name in module.lora_variant or module.lora_bias.get(name):
        return None
    a = module.lora_A[name].weight.detach().to(dtype)
    return a, (module.lora_B[name].weight.detach() * module.scaling[name]).to(dtype)


# --- decoders -----------------------------------------------------------------------------------------


class SharedPrefixDecoder:
    """Decodes `rows_per_prompt` samples of each prompt as one batch (Llama-layout models).

    Caches, per layer: prompt K/V (num_prompts, kv_heads, prompt_cap, head_dim), written once by `prefill`;
    sample K/V (rows, kv_heads, step_cap, head_dim), one slot per decode step. Row r samples prompt r // m.
    """

    def __init__(self, lm, prompts: list[list[int]], rows_per_prompt: int, max_steps: int,
                 use_graphs: bool, autocast_dtype: torch.dtype | None):
        decoder = lm.get_decoder()
        self.embed, self.layers, self.norm = decoder.embed_tokens, decoder.layers, decoder.norm
        self.rotary, self.head = decoder.rotary_emb, lm.get_output_embeddings()
        attn = self.layers[0].self_attn
        self.num_heads, self.num_kv_heads = lm.config.num_attention_heads, lm.config.num_key_value_heads
        self.head_dim, self.scale = attn.head_dim, attn.scaling
        self.autocast_dtype = autocast_dtype
        # The weights do not change while sampling: LoRA factors are cast (and B scaled) once per batch,
        # so a LoRA layer costs two matrix products and no casts in each step.
        parts = {m: lora_parts(m, self.embed.weight.dtype) for m in lm.modules()}
        self.lora = {m: p for m, p in parts.items() if p is not None}
        self.prompts, self.rows_per_prompt = prompts, rows_per_prompt
        self.num_rows = len(prompts) * rows_per_prompt
        device, dtype = self.embed.weight.device, self.embed.weight.dtype
        self.prompt_cap = round_up(max(len(p) for p in prompts), ALIGN)
        self.step_cap = round_up(max(max_steps, 1), ALIGN)
        kv = (len(self.layers), len(prompts), self.num_kv_heads, self.prompt_cap, self.head_dim)
        # zeros, not empty: masked slots get weight 0, and 0 * NaN from stale memory would poison the sum
        self.prompt_k, self.prompt_v = (torch.zeros(kv, device=device, dtype=dtype) for _ in range(2))
        kv = (len(self.layers), self.num_rows, self.num_kv_heads, self.step_cap, self.head_dim)
        self.step_k, self.step_v = (torch.zeros(kv, device=device, dtype=dtype) for _ in range(2))
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        slots = torch.arange(self.prompt_cap, device=device)
        self.prompt_bias = torch.where(slots < lengths[:, None], 0.0, float("-inf"))[:, None, None, :]
        self.first_position = lengths.repeat_interleave(rows_per_prompt)  # of each row's first new token
        self.slots = torch.arange(self.step_cap, device=device)
        # static inputs of the decode step: the graph reads them from these addresses
        self.tokens = torch.zeros(self.num_rows, dtype=torch.long, device=device)
        self.step_index = torch.zeros(1, dtype=torch.long, device=device)
        self.use_graphs = use_graphs
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if use_graphs else None

    def _autocast(self):
        device_type = self.embed.weight.device.type
        return torch.autocast(device_type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None, cache_enabled=False)

    def _linear(self, module, x: torch.Tensor) -> torch.Tensor:
        parts = self.lora.get(module)
        if parts is None:
            return module(x)
        a, b = parts
        y = module.base_layer(x)
        x = x.reshape(-1, x.shape[-1])
        return torch.addmm(y.reshape(-1, y.shape[-1]), x @ a.t(), b.t()).view(y.shape)

    def _norm(self, norm, x: torch.Tensor) -> torch.Tensor:
        # one fused kernel instead of the eight of LlamaRMSNorm's eager code (same function, rounded once)
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)

    def _mlp(self, mlp, x: torch.Tensor) -> torch.Tensor:
        return self._linear(mlp.down_proj, mlp.act_fn(self._linear(mlp.gate_proj, x)) * self._linear(mlp.up_proj, x))

    def _qkv(self, attn, h, cos, sin):
        b, t = h.shape[:2]
        q = self._linear(attn.q_proj, h).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self._linear(attn.k_proj, h).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self._linear(attn.v_proj, h).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        """Runs each prompt once, filling the prompt caches. Returns first-token logits, float32 (rows, vocab)."""
        device = self.tokens.device
        last = [self._prefill_prompt(i, torch.tensor(ids, device=device)) for i, ids in enumerate(self.prompts)]
        return torch.cat(last).repeat_interleave(self.rows_per_prompt, dim=0)

    def _prefill_prompt(self, index: int, ids: torch.Tensor) -> torch.Tensor:
        n = ids.numel()
        with self._autocast():
            x = self.embed(ids[None])
            cos, sin = self.rotary(x, torch.arange(n, device=ids.device)[None])
            for i, layer in enumerate(self.layers):
                attn = layer.self_attn
                q, k, v = self._qkv(attn, self._norm(layer.input_layernorm, x), cos, sin)
                self.prompt_k[i, index, :, :n] = k[0]
                self.prompt_v[i, index, :, :n] = v[0]
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
                x = x + self._linear(attn.o_proj, out.transpose(1, 2).reshape(1, n, -1))
                x = x + self._mlp(layer.mlp, self._norm(layer.post_attention_layernorm, x))
            return self.head(self._norm(self.norm, x[:, -1])).float()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Feeds each row's token number `step` (0-based); returns the next logits, float32 (rows, vocab)."""
        self.tokens.copy_(tokens)
        self.step_index.fill_(step)
        # attend only to the filled part of the step cache, in power-of-two buckets so few graphs are needed
        width = min(self.step_cap, max(ALIGN, 1 << step.bit_length()))
        if not self.use_graphs:
            return self._forward(width)
        if width not in self.graphs:
            self.graphs[width] = self._capture(width)
        graph, logits = self.graphs[width]
        graph.replay()
        return logits

    def _capture(self, width: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # The step is idempotent (it rewrites the same cache slot from the same inputs), so the warm-up run
        # on the current inputs is harmless.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward(width)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self._forward(width)
        return graph, logits

    def _forward(self, width: int) -> torch.Tensor:
        with self._autocast():
            x = self.embed(self.tokens)[:, None]
            cos, sin = self.rotary(x, (self.first_position + self.step_index)[:, None])
            step_bias = torch.where(self.slots[:width] <= self.step_index, 0.0, float("-inf"))
            for i, layer in enumerate(self.layers):
                h = self._norm(layer.input_layernorm, x)
                x = x + self._attention(i, layer.self_attn, h, cos, sin, step_bias, width)
                x = x + self._mlp(layer.mlp, self._norm(layer.post_attention_layernorm, x))
            return self.head(self._norm(self.norm, x[:, 0])).float()

    def _attention(self, i, attn, h, cos, sin, step_bias, width):
        rows, kv, d = self.num_rows, self.num_kv_heads, self.head_dim
        group, m, n = self.num_heads // kv, self.rows_per_prompt, len(self.prompts)
        q, k, v = self._qkv(attn, h, cos, sin)
        self.step_k[i].index_copy_(2, self.step_index, k)
        self.step_v[i].index_copy_(2, self.step_index, v)
        q = q.reshape(rows, kv, group, d)  # query head j reads KV head j // group, as HF's repeat_kv
        own, own_lse = attend(q, self.step_k[i, :, :, :width], self.step_v[i, :, :, :width], step_bias, self.scale)
        # all queries of one prompt's rows against its cache in one matrix product: (prompt, kv, m*group, d)
        q = q.view(n, m, kv, group, d).transpose(1, 2).reshape(n, kv, m * group, d)
        shared, shared_lse = attend(q, self.prompt_k[i], self.prompt_v[i], self.prompt_bias, self.scale)
        shared = shared.view(n, kv, m, group, d).transpose(1, 2).reshape(rows, kv, group, d)
        shared_lse = shared_lse.view(n, kv, m, group, 1).transpose(1, 2).reshape(rows, kv, group, 1)
        out = merge_attention(shared, shared_lse, own, own_lse).to(self.embed.weight.dtype)
        return self._linear(attn.o_proj, out.reshape(rows, 1, -1))


class CacheDecoder:
    """Decodes the samples of one prompt through the model's own forward (any HF causal LM).

    Same constructor as `SharedPrefixDecoder`; `use_graphs` is ignored (the HF cache grows each step).
    """

    def __init__(self, lm, prompts: list[list[int]], rows_per_prompt: int, max_steps: int,
                 use_graphs: bool, autocast_dtype: torch.dtype | None):
        if len(prompts) != 1:
            raise ValueError(f"CacheDecoder takes one prompt per batch, got {len(prompts)}")
        self.lm, self.prompt, self.num_rows = lm, prompts[0], rows_per_prompt
        self.device = lm.get_output_embeddings().weight.device
        self.autocast = torch.autocast(self.device.type, dtype=autocast_dtype or torch.float32,
                                       enabled=autocast_dtype is not None)
        self.cache = None

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
    text_end: int | None = None  # cut the final text here (just past the closing fence)


def generate(decoder, logits: torch.Tensor, cfg: SamplingConfig, stop_ids: list[int],
             generator: torch.Generator | None, tokenizer) -> list[RowState]:
    """Samples from the prefilled `decoder` (`logits`: its first-token logits) until every row has stopped
    or has `cfg.max_new_tokens`; returns one finished `RowState` per row.

    Stop rules: a token in `stop_ids` (EOS, end of turn; not part of the text), or, with
    `cfg.stop_at_code_end`, the text closing its first ``` block (the text is cut just after the fence).
    `tokenizer` is needed only for the latter.
    """
    rows = [RowState() for _ in range(decoder.num_rows)]
    out = torch.empty(decoder.num_rows, cfg.max_new_tokens, dtype=torch.long, device=logits.device)
    checked = 0
    for step in range(cfg.max_new_tokens):
        out[:, step] = pick_tokens(logits, cfg.temperature, cfg.top_p, generator)
        done = step + 1
        if done == cfg.max_new_tokens or done % CHECK_EVERY == 0:
            new = out[:, checked:done].tolist()  # the only host sync: once per CHECK_EVERY steps
            _check_stops(rows, new, checked, set(stop_ids), cfg.stop_at_code_end, tokenizer)
            checked = done
            if all(r.end is not None for r in rows):
                break
        if done < cfg.max_new_tokens:
            logits = decoder.step(out[:, step], step)
    for row in rows:
        if row.end is None:
            row.end = len(row.tokens)
    return rows


def _check_stops(rows: list[RowState], new: list[list[int]], offset: int, stop_ids: set[int],
                 stop_at_code_end: bool, tokenizer) -> None:
    live = [i for i, r in enumerate(rows) if r.end is None]
    for i in live:
        rows[i].tokens.extend(new[i])
    eos_at = {i: next((j for j, t in enumerate(new[i]) if t in stop_ids), None) for i in live}
    if stop_at_code_end:
        # decode only the new tokens; fences are ASCII, so a character split across chunks cannot hide one
        pieces = tokenizer.batch_decode([new[i][:eos_at[i]] for i in live], skip_special_tokens=False)
        for i, piece in zip(live, pieces):
            rows[i].text += piece
            if code_block_end(rows[i].text) is not None:
                _stop_at_fence(rows[i], offset, tokenizer)
    for i in live:
        if rows[i].end is None and eos_at[i] is not None:
            rows[i].end, rows[i].finish_reason = offset + eos_at[i] + 1, "eos"


def _stop_at_fence(row: RowState, offset: int, tokenizer) -> None:
    # the first token count (within the last chunk) whose full text closes the block
    for end in range(offset + 1, len(row.tokens) + 1):
        cut = code_block_end(tokenizer.decode(row.tokens[:end], skip_special_tokens=False))
        if cut is not None:
            row.end, row.finish_reason, row.text_end = end, "stop", cut
            return
    # decoding in chunks can differ from decoding at once in whitespace (some tokenizers strip a leading
    # space); then stop at the chunk's end and keep the full text
    row.end, row.finish_reason = len(row.tokens), "stop"
