"""Fused training kernels: Liger's Triton RMSNorm, SwiGLU and rotary kernels in the model's own forward, which
fine-tuning runs (and sampling only on the slow path, `CacheDecoder`; the fast path has its own decode step).

Liger (the `liger-kernel` package, the `gpu` extra) is the library made for this; arcsl only decides when to
use it, checks that it can, and applies it to one model instance:

- "auto" (the default): used when liger-kernel is installed, the model is on a GPU and its family's norms and
  MLP are Llama's (`FAMILIES`; the same list as the fast path's today, kept apart because a family added there
  need not fit the forwards below); otherwise not, with a warning saying why when the model is on a GPU.
- "liger": required; any of those missing is an error naming `--training-kernels`.
- "none": not used.

How it is applied, and why not with Liger's own `apply_liger_kernel_to_*`: those also replace the family's
module classes and rotary function in transformers for the whole process, so every model of the family built
later (a CPU model included, where Triton cannot run) would get them. Here the norm and MLP modules of this
model get Liger's functions as their forward (the weights stay the model's); the cos tensor its rotary module
returns is tagged, and the family's rotary function is wrapped once by a switch that calls Liger's for a tagged
cos and transformers' own otherwise. The tag travels with the tensors, so it holds on any thread (a CUDA
backward, which recomputes checkpointed layers, runs on the device's own thread) and for this model only.
Not reversible: a model once patched stays patched. Liger's fused linear cross-entropy is not used:
`finetune.completion_loss` already computes logits only where the loss needs them.
"""

import importlib
import importlib.util
import types
import warnings

from arcsl.config import TRAINING_KERNELS

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")  # pre-norm decoders with SwiGLU MLPs and rotary attention
NORMS = ("input_layernorm", "post_attention_layernorm")
HEAD_NORMS = ("q_norm", "k_norm")  # Qwen3's per-head norms

TAG = "arcsl_liger"  # on a patched model, and on the cos tensors its rotary module returns


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def why_not_liger(config, device_type: str, installed: bool) -> str | None:
    """Why Liger's kernels cannot be used for a model of this config on this device, or None if they can."""
    if device_type != "cuda":
        return f"its Triton kernels need a GPU (the model is on {device_type})"
    if not installed:
        return "liger-kernel is not installed (pip install 'arcsl[gpu]')"
    if config.model_type not in FAMILIES:
        return f"model_type {config.model_type!r} is not one of {', '.join(FAMILIES)}"
    if getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
        return f"hidden_act {config.hidden_act!r} is not SiLU"
    return None


def apply_training_kernels(lm, mode: str) -> bool:
    """Applies `mode` ("auto", "liger" or "none") to the causal LM `lm` (the base model, not a peft wrapper);
    returns whether its forward now runs Liger's kernels. Raises ValueError where "liger" cannot be met."""
    if mode not in TRAINING_KERNELS:
        raise ValueError(f"--training-kernels must be one of {', '.join(TRAINING_KERNELS)}; got {mode!r}")
    if mode == "none":
        return False
    if getattr(lm, TAG, False):
        return True
    device_type = lm.get_input_embeddings().weight.device.type
    reason = why_not_liger(lm.config, device_type, device_type == "cuda" and liger_installed())
    if reason is None:
        try:
            patch_model(lm)
            return True
        except ImportError as e:  # installed but broken (e.g. a Triton it does not support)
            reason = f"liger-kernel could not be imported: {e}"
    if mode == "liger":
        raise ValueError(f"--training-kernels liger: {reason}")
    if device_type == "cuda":
        warnings.warn(f"fine-tuning without Liger's fused kernels: {reason}", stacklevel=3)
    return False


def patch_model(lm) -> None:
    """Liger's kernels in `lm`'s norms, MLPs and rotary embedding (raises ImportError without liger-kernel)."""
    from liger_kernel.transformers.functional import liger_rms_norm, liger_swiglu

    _wrap_rope(importlib.import_module(type(lm).__module__))  # first: it imports the last Liger function

    def norm_forward(self, x):  # HF's Llama-style RMSNorm: float32 statistics, the weight applied in x's dtype
        return liger_rms_norm(x, self.weight, self.variance_epsilon, 0.0, "llama", True)

    def mlp_forward(self, x):
        return self.down_proj(liger_swiglu(self.gate_proj(x), self.up_proj(x)))

    body = lm.get_decoder()
    rotary = body.rotary_emb.forward

    def rotary_forward(*args, **kwargs):
        cos, sin = rotary(*args, **kwargs)
        setattr(cos, TAG, True)
        return cos, sin

    norms = [body.norm] + [getattr(layer, name) for layer in body.layers for name in NORMS]
    norms += [getattr(layer.self_attn, name) for layer in body.layers for name in HEAD_NORMS
              if hasattr(layer.self_attn, name)]
    for norm in norms:
        norm.forward = types.MethodType(norm_forward, norm)
    for layer in body.layers:
        layer.mlp.forward = types.MethodType(mlp_forward, layer.mlp)
    body.rotary_emb.forward = rotary_forward
    setattr(lm, TAG, True)


def _wrap_rope(modeling: types.ModuleType) -> None:
    """Puts the switch in front of the family's rotary function (once per family module)."""
    original = modeling.apply_rotary_pos_emb
    if hasattr(original, "arcsl_original"):
        return
    from liger_kernel.transformers.functional import liger_rope

    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if not args and not kwargs and getattr(cos, TAG, False):
            return liger_rope(q, k, cos, sin)
        return original(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb.arcsl_original = original
    modeling.apply_rotary_pos_emb = apply_rotary_pos_emb
