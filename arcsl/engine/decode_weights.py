"""The fast sampler's view of a model's weights, with its LoRA adapters stacked or merged in place.

The layout is Llama's (pre-norm decoder layers: RMSNorm, q/k/v/o attention with rotary positions, RMSNorm, a
SiLU-gated MLP), which Mistral, Qwen2/Qwen2.5 and Qwen3 share with three differences the fast path covers:
biases on linear layers (Qwen2's q/k/v; Llama's optional attention and MLP biases), a per-head RMSNorm on
queries and keys before the rotary embedding (Qwen3), and a head size that is not hidden / heads (Qwen3,
some Mistrals). Tied embeddings need nothing (the head is the model's own output layer).

`DecodeWeights` stores q/k/v and gate/up weights (and biases) fused (the model's own layers become views of
them, so this costs no memory). A call that samples with one adapter keeps its LoRA either as stacked factors
refreshed in place before sampling, or merged into the base weights while sampling and then restored
exactly from a copy made once (pinned host memory on a GPU; the copy back runs asynchronously, overlapped
with whatever the caller does next). A call that mixes adapters keeps every adapter's stacked factors side
by side and masks each row's low-rank activations to its own adapter's block, so that one batch decodes
several adapters: two matrix products and one elementwise product per projection, on buffers whose
addresses never change (CUDA graphs replay them); only the blocks of adapters that changed are refreshed.

What is not covered: sliding-window attention, other activations, DoRA, LoRA biases, 4-bit weights
(`DecodeWeights.unsupported` says which config field or layer; the engine then samples through the model's
own forward).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from arcsl.engine.sampler import FAST_MODEL_TYPES


@dataclass(slots=True)
class Projection:
    """One or several linear layers that read the same input, as one weight (out, in).

    `bias` is the layers' biases side by side (zeros for a layer without one), or None if none has one.
    `members` are the layers with a LoRA: (peft LoRA layer, its first output row, its number of rows).
    `lora_a` (sum of ranks, in) stacks their A factors, `lora_b` (out, sum of ranks) holds scaling * B of
    each in its own block (zeros elsewhere), so the LoRA of the whole group is two matrix products.
    `mixed_a` (adapters * sum of ranks, in) and `mixed_b` (out, adapters * sum of ranks) hold every adapter's
    `lora_a` and `lora_b` side by side, adapter k in block k; made by the first call that mixes adapters.
    """
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    members: list[tuple[object, int, int]] = field(default_factory=list)
    lora_a: torch.Tensor | None = None
    lora_b: torch.Tensor | None = None
    mixed_a: torch.Tensor | None = None
    mixed_b: torch.Tensor | None = None


@dataclass(slots=True)
class LayerWeights:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: Projection
    o: Projection
    gate_up: Projection
    down: Projection
    q_norm: torch.Tensor | None = None  # per-head RMSNorm weights of queries and keys (Qwen3), or None
    k_norm: torch.Tensor | None = None


def _lora_factors(module, adapter: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, scaling) of the peft adapter named `adapter` in a plain LoRA layer."""
    return module.lora_A[adapter].weight.detach(), module.lora_B[adapter].weight.detach(), module.scaling[adapter]


def _stack_factors(proj: Projection, adapter: str, a_out: torch.Tensor, b_out: torch.Tensor) -> None:
    """Writes the group's LoRA of `adapter` into `a_out` (sum of ranks, in) and `b_out` (out, sum of ranks),
    whose entries outside the members' blocks stay as they are (zero)."""
    column = 0
    for module, row, rows in proj.members:
        a, b, scaling = _lora_factors(module, adapter)
        a_out[column:column + a.shape[0]].copy_(a)
        b_out[row:row + rows, column:column + a.shape[0]].copy_(b * scaling)
        column += a.shape[0]


def _is_plain_lora(module) -> bool:
    from peft.tuners.lora import Linear as LoraLinear

    if type(module) is not LoraLinear or module.merged or module.disable_adapters or len(module.active_adapters) != 1:
        return False
    is_plain = all(name not in module.lora_variant and not module.lora_bias.get(name) for name in module.lora_A)
    return is_plain and _is_plain_linear(module.base_layer)


def _is_plain_linear(module) -> bool:
    return type(module) is torch.nn.Linear


def _fuse(modules: list) -> Projection:
    """The base weights of `modules` as one tensor; each base layer's weight becomes a view of it (no copy
    is kept, and training, which runs the model's own layers, sees the same values)."""
    linears = [m if _is_plain_linear(m) else m.base_layer for m in modules]
    if len(linears) == 1:
        weight, bias = linears[0].weight.data, linears[0].bias
        bias = None if bias is None else bias.data
    else:
        weight = torch.cat([linear.weight.data for linear in linears])
        has_bias = any(linear.bias is not None for linear in linears)
        bias = torch.cat([linear.bias.data if linear.bias is not None else weight.new_zeros(linear.out_features)
                          for linear in linears]) if has_bias else None
        row = 0
        for linear in linears:
            linear.weight.data = weight[row:row + linear.out_features]
            if linear.bias is not None:
                linear.bias.data = bias[row:row + linear.out_features]
            row += linear.out_features
    proj, row = Projection(weight, bias), 0
    for module, linear in zip(modules, linears):
        if module is not linear:
            proj.members.append((module, row, linear.out_features))
        row += linear.out_features
    if proj.members:
        rank = sum(m.lora_A[m.active_adapters[0]].weight.shape[0] for m, _, _ in proj.members)  # equal for all adapters
        proj.lora_a = weight.new_zeros(rank, weight.shape[1])
        proj.lora_b = weight.new_zeros(weight.shape[0], rank)
    return proj


class DecodeWeights:
    """The weights of a model of a fast-path family with peft LoRA adapters, as `SharedPrefixDecoder` reads them.

    Tensors keep their addresses for the engine's life (CUDA graphs read them there); only their values
    change: `prepare` before sampling with one adapter (its factors refreshed, or its LoRA merged into the
    weights), `prepare_mixed` before sampling with several, `restore` after a merge (the base weights copied
    back from a copy made at the first merge: exact).

    Args:
        adapters: the peft adapter names; adapter k (in `prepare`, `prepare_mixed` and the adapter masks that
            `project` reads) is `adapters[k]`.
    """

    def __init__(self, lm, adapters: Sequence[str] = ("default",)):
        decoder, config = lm.get_decoder(), lm.config
        self.embed, self.rotary, self.head = decoder.embed_tokens, decoder.rotary_emb, lm.get_output_embeddings()
        self.final_norm, self.eps = decoder.norm.weight, decoder.norm.variance_epsilon
        attn = decoder.layers[0].self_attn
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scale = attn.head_dim, attn.scaling
        # Qwen3's q/k norms: their own epsilon (the config's rms_norm_eps, as the layer norms')
        self.qk_eps = attn.q_norm.variance_epsilon if hasattr(attn, "q_norm") else self.eps
        self.layers = [LayerWeights(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                                    _fuse([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                                    _fuse([layer.self_attn.o_proj]),
                                    _fuse([layer.mlp.gate_proj, layer.mlp.up_proj]), _fuse([layer.mlp.down_proj]),
                                    *_qk_norms(layer.self_attn))
                       for layer in decoder.layers]
        self.projections = [p for layer in self.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)
                            if p.members]
        self.adapters = list(adapters)
        self.apply_lora = True  # decode computes the LoRA products (False: merged, or the LoRA adds nothing)
        self.is_merged = False
        self.is_mixed = False  # decode reads every adapter's factors and masks each row to its own adapter
        self.lora_version: int | None = None  # the version `lora_a` / `lora_b` hold
        self.mixed_versions: list[int | None] = [None] * len(self.adapters)  # per adapter, the version its block holds
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # pristine base weights

    @staticmethod
    def unsupported(lm) -> str | None:
        """Why the fast path would not compute this model exactly (the config field or layer, in words), or
        None: a family it knows (`FAST_MODEL_TYPES`), SiLU MLP, full attention in every layer, and on every
        linear layer either no LoRA or one plain LoRA (no DoRA, LoRA bias or quantised base)."""
        config = lm.config
        if config.model_type not in FAST_MODEL_TYPES:
            return f"config.model_type={config.model_type!r} (the fast path knows {', '.join(FAST_MODEL_TYPES)})"
        if config.hidden_act != "silu":
            return f"config.hidden_act={config.hidden_act!r} (the fast path computes SiLU)"
        # decided as the models decide it: Qwen's layer_types, Mistral's sliding_window alone
        if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
            return f"config.layer_types has sliding_attention (sliding_window={config.sliding_window})"
        if config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
            return f"config.sliding_window={config.sliding_window} (sliding-window attention)"
        for i, layer in enumerate(lm.get_decoder().layers):
            for name, m in (("q_proj", layer.self_attn.q_proj), ("k_proj", layer.self_attn.k_proj),
                            ("v_proj", layer.self_attn.v_proj), ("o_proj", layer.self_attn.o_proj),
                            ("gate_proj", layer.mlp.gate_proj), ("up_proj", layer.mlp.up_proj),
                            ("down_proj", layer.mlp.down_proj)):
                if not (_is_plain_linear(m) or _is_plain_lora(m)):
                    return f"layer {i} {name} is a {type(m).__name__} (not a plain linear layer or plain LoRA: " \
                           "DoRA, a LoRA bias, several active adapters or a quantised base)"
        return None

    @property
    def num_adapters(self) -> int:
        return len(self.adapters)

    @property
    def lora_is_zero(self) -> bool:
        """Every B factor of the first adapter is zero (a fresh peft LoRA): the adapter adds nothing."""
        return all(not _lora_factors(m, self.adapters[0])[1].any() for p in self.projections for m, _, _ in p.members)

    def next_norm(self, i: int) -> torch.Tensor:
        """The norm weight applied after layer i: the next layer's input norm, or the final norm."""
        return self.layers[i + 1].input_norm if i + 1 < len(self.layers) else self.final_norm

    def project(self, proj: Projection, x: torch.Tensor, adapter_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x @ W^T, plus the LoRA of the group unless it is in the weights. Shape: (..., in) -> (..., out).

        `adapter_mask`, read only while adapters are mixed: 1 at each row's adapter, 0 at the others, in a
        shape that broadcasts to (..., num_adapters, 1): (rows, num_adapters, 1) in decode, (prompts, 1,
        num_adapters, 1) in prefill.
        """
        y = F.linear(x, proj.weight, proj.bias)
        if proj.lora_a is None or not self.apply_lora:
            return y
        if self.is_mixed:
            # every adapter's low-rank activations, then all but the row's own adapter's block zeroed
            low = (x @ proj.mixed_a.t()).unflatten(-1, (self.num_adapters, -1)) * adapter_mask
            y.view(-1, y.shape[-1]).addmm_(low.reshape(-1, proj.mixed_a.shape[0]), proj.mixed_b.t())
        else:
            y.view(-1, y.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]) @ proj.lora_a.t(), proj.lora_b.t())
        return y

    @torch.no_grad()
    def prepare(self, merge: bool, lora_version: int, lora_is_zero: bool, adapter: int = 0) -> None:
        """Puts one adapter's LoRA where decode reads it: into the weights (`merge`), or into the stacked
        factors (refreshed only when they hold another version)."""
        assert not self.is_merged, "prepare() again before restore()"
        self.is_mixed = False
        self.apply_lora = not (merge or lora_is_zero)
        if merge and not lora_is_zero:
            self._merge(self.adapters[adapter])
        elif self.apply_lora and self.lora_version != lora_version:
            for proj in self.projections:
                _stack_factors(proj, self.adapters[adapter], proj.lora_a, proj.lora_b)
            self.lora_version = lora_version

    @torch.no_grad()
    def prepare_mixed(self, lora_versions: dict[int, int]) -> None:
        """Puts the LoRA of every adapter in `lora_versions` (adapter -> version) into its block of the mixed
        factors, for a batch whose rows use different adapters; blocks that hold that version already are kept."""
        assert not self.is_merged, "prepare_mixed() before restore()"
        self.is_mixed, self.apply_lora = True, True
        for proj in self.projections:
            if proj.mixed_a is None:  # once per engine, so that engines that never mix pay no memory
                proj.mixed_a = proj.lora_a.new_zeros(self.num_adapters * proj.lora_a.shape[0], proj.lora_a.shape[1])
                proj.mixed_b = proj.lora_b.new_zeros(proj.lora_b.shape[0], self.num_adapters * proj.lora_b.shape[1])
        for adapter, version in lora_versions.items():
            if self.mixed_versions[adapter] == version:
                continue
            for proj in self.projections:
                rank = proj.lora_a.shape[0]
                block = slice(adapter * rank, (adapter + 1) * rank)
                _stack_factors(proj, self.adapters[adapter], proj.mixed_a[block], proj.mixed_b[:, block])
            self.mixed_versions[adapter] = version

    def _merge(self, adapter: str) -> None:
        if self.saved is None:  # once per engine: the base weights never change otherwise
            self.saved = [(p.weight, _saved_copy(p.weight)) for p in self.projections]
        self.is_merged = True  # from the first change on: restore() puts back whatever a failure left
        for proj in self.projections:
            for module, row, rows in proj.members:
                a, b, scaling = _lora_factors(module, adapter)
                weight = proj.weight[row:row + rows]
                # W + scaling * B @ A in float32, rounded once to the weights' dtype
                weight.copy_(torch.addmm(weight.float(), b.float(), a.float(), alpha=scaling))

    @torch.no_grad()
    def restore(self) -> None:
        """The exact base weights back after a merge. On a GPU the copy is queued on the current stream and
        the call returns at once: later GPU work (training) waits for it, the CPU does not."""
        for weight, saved in self.saved or []:
            weight.copy_(saved, non_blocking=True)
        self.is_merged = False


def _qk_norms(attn) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The per-head RMSNorm weights of queries and keys (Qwen3), or (None, None)."""
    if not hasattr(attn, "q_norm"):
        return None, None
    return attn.q_norm.weight, attn.k_norm.weight


def _saved_copy(weight: torch.Tensor) -> torch.Tensor:
    """A copy of a GPU tensor in pinned host memory (fast to copy back, asynchronously); a clone on CPU."""
    if weight.device.type != "cuda":
        return weight.clone()
    return torch.empty(weight.shape, dtype=weight.dtype, pin_memory=True).copy_(weight)
