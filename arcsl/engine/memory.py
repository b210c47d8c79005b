"""What the engine may still allocate on its GPU, and what fine-tuning a micro-batch will allocate.

Both are needed to plan work without running out of memory under `--gpu-memory-gb` (a 24 GB card, or a
bigger one capped there): the sampler plans batches within `GpuMemory.available()` plus what its kept
decoders hold, and the fine-tuner switches gradient checkpointing on before a micro-batch that would not
fit, instead of learning it from an out-of-memory error.

`GpuMemory.available()` reads PyTorch's caching allocator: memory cached but unused is available (the
allocator frees it when it needs more), except the private pools of the kept decoders' CUDA graphs,
which only those graphs can use. Under a cap the allocator refuses more than the cap of reserved memory.

`ActivationModel` is measured, not derived from the architecture: five short forward/backward passes
(256 to 2,048 tokens, plain and checkpointed, the loss over 1 token or over half of them) give the bytes
per token, per checkpointed token and per loss token on the actual model, attention kernel and LoRA
settings (a family's layer layout, dropout and kernels change them, and no formula keeps up). Activation
memory is linear in the tokens with SDPA's memory-efficient kernels, so the slopes extrapolate: on the
Llama-3.1-8B shape the 8k-token estimates held (bench/bench_memory.py). A model whose memory grows faster
than linearly (a small 8-layer model did, 2x the estimate at 4k tokens) is caught by the out-of-memory
backstop.

What is not covered: other processes on the same GPU beyond what `torch.cuda.mem_get_info` sees at the
moment of the call; fragmentation (the 0.9 safety factors of the callers cover it).
"""

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

PROBE_TOKENS = 512  # tokens of the activation probe: large enough to swamp constant workspaces, cheap to run
SAFETY = 0.9  # plan within this fraction of what is available (fragmentation, workspaces)


class GpuMemory:
    """What this process may still allocate on `device`, under an optional cap (bytes).

    Args:
        unusable: bytes reserved but not allocatable by others (the kept decoders' graph pools).
    """

    def __init__(self, device: torch.device, cap: int | None, unusable: Callable[[], int] = lambda: 0):
        self.device, self.cap, self.unusable = device, cap, unusable

    def available(self) -> int:
        reserved = torch.cuda.memory_reserved(self.device)
        allocated = torch.cuda.memory_allocated(self.device)
        held = allocated + self.unusable()  # what no new tensor can use
        free = torch.cuda.mem_get_info(self.device)[0] + reserved - held
        if self.cap is not None:  # the GPU's free memory is not ours beyond the cap
            free = min(free, self.cap - held)
        return max(0, free)


@dataclass(frozen=True, slots=True)
class ActivationModel:
    """Bytes a fine-tuning micro-batch allocates beyond what is resident: a constant (the LoRA gradients and
    workspaces) and a slope per padded token, each plain or with gradient checkpointing, plus per loss token
    (its logits and their gradients)."""
    fixed: float
    per_token: float
    fixed_checkpointed: float
    per_checkpointed_token: float
    per_loss_token: float

    def bytes(self, tokens: int, loss_tokens: int, checkpointed: bool) -> float:
        fixed, per_token = ((self.fixed_checkpointed, self.per_checkpointed_token) if checkpointed
                            else (self.fixed, self.per_token))
        return fixed + per_token * tokens + self.per_loss_token * loss_tokens


def choose_checkpointing(tokens: int, loss_tokens: int, model: ActivationModel, budget: float) -> tuple[bool, bool]:
    """(checkpointed, fits) for a micro-batch within `budget` bytes: plain when it fits, else checkpointed;
    `fits` is False when even checkpointed it does not (the caller frees what it can first)."""
    if model.bytes(tokens, loss_tokens, False) <= budget:
        return False, True
    return True, model.bytes(tokens, loss_tokens, True) <= budget


def measure_activations(run_micro_batch: Callable[[int, int, bool], None], device: torch.device,
                        tokens: int = PROBE_TOKENS) -> ActivationModel:
    """Probes the model: `run_micro_batch(tokens, loss_tokens, checkpointed)` runs one forward and backward
    (the caller drops its gradients after). Each run's peak above the memory allocated before it gives a
    point; slopes come from two lengths (constants cancel), plain at `tokens` / 2 and `tokens`, checkpointed
    at `tokens` and 4 x `tokens` (it allocates little per token, so its slope needs the longer run to show).
    The random generators are left as found."""
    def peak(length: int, loss_tokens: int, checkpointed: bool) -> float:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.random.fork_rng(devices=[device]):
            state = random.getstate()
            run_micro_batch(length, loss_tokens, checkpointed)
            random.setstate(state)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)

    half, full, loss = peak(tokens // 2, 1, False), peak(tokens, 1, False), peak(tokens, tokens // 2, False)
    short, long = peak(tokens, 1, True), peak(4 * tokens, 1, True)
    per_token = max(0.0, (full - half) / (tokens - tokens // 2))
    per_checkpointed_token = max(0.0, (long - short) / (3 * tokens))
    return ActivationModel(fixed=full - per_token * tokens, per_token=per_token,
                           fixed_checkpointed=short - per_checkpointed_token * tokens,
                           per_checkpointed_token=per_checkpointed_token,
                           per_loss_token=max(0.0, (loss - full) / (tokens // 2 - 1)))
