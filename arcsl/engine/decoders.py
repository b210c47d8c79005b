"""The fast sampler's decoders, kept between sampling calls, and the decision to compile their pieces.

A `SharedPrefixDecoder` owns its KV caches and its captured CUDA graphs; building one costs allocations
and captures, so the engine keeps the last few (by batch shape) and a later call, or a later round,
reuses them, as long as memory allows: a batch that needs their memory has the least recently used
dropped first (the batch planner counts their memory as available for that reason). They hold no adapter
state: the weights they read are updated in place before each call, keyed by adapter version
(`adapters.py`), so a kept decoder can never decode with stale LoRA values.

Compilation (`torch.compile` of the decode step's small pieces) is probed once per cache: a machine
without a working compiler decodes eagerly, with one warning saying why.
"""

import gc
import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch

from arcsl.config import SamplingConfig
from arcsl.engine.planner import ALIGN, round_up
from arcsl.engine.sampler import EAGER_OPS, DecodeOps, SharedPrefixDecoder, check_compiler, compiled_ops

MAX_DECODERS = 2  # decoders (caches + CUDA graphs) kept between calls, least recently used dropped


class DecoderCache:
    """The decoders of one engine, least recently used first; `get` builds or reuses one per batch shape."""

    def __init__(self, weights, device: torch.device):
        self.weights, self.device = weights, device
        self.kept: OrderedDict[tuple, SharedPrefixDecoder] = OrderedDict()
        self.compile_error: str | None = None  # why decode runs eagerly although compilation was asked for
        self.is_compiler_checked = False

    @property
    def nbytes(self) -> int:
        """Memory they hold (caches and graph pools), which a new batch may take back."""
        return sum(d.nbytes for d in self.kept.values())

    @property
    def pool_bytes(self) -> int:
        """Memory their graphs' private pools reserve, which nothing else can use while they are kept."""
        return sum(d.pool_bytes for d in self.kept.values())

    def get(self, num_prompts: int, per_prompt: int, cfg: SamplingConfig, need: float = 0,
            available: Callable[[], float] = lambda: float("inf")) -> SharedPrefixDecoder:
        """The decoder for this batch shape: kept from an earlier call (caches and graphs reused) or new. The
        batch needs `need` bytes, of which a kept decoder holds its own already; the others kept are dropped,
        least recently used first, until `available()` covers the rest."""
        use_graphs = cfg.cuda_graphs and self.device.type == "cuda"
        ops = self.decode_ops(cfg.compile_decode and self.device.type == "cuda")
        key = (num_prompts, per_prompt, round_up(max(cfg.max_new_tokens - 1, 1), ALIGN), use_graphs, ops is EAGER_OPS)
        decoder = self.kept.pop(key, None)
        own = decoder.nbytes if decoder is not None else 0
        while self.kept and (len(self.kept) >= MAX_DECODERS or available() < need - own):
            self.kept.popitem(last=False)
            self._free()
        if decoder is None:
            decoder = SharedPrefixDecoder(self.weights, num_prompts, per_prompt, cfg.max_new_tokens - 1, use_graphs, ops)
        self.kept[key] = decoder
        return decoder

    def clear(self) -> None:
        """Drops every kept decoder (their caches and graphs); the next call rebuilds what it needs."""
        self.kept.clear()
        self._free()

    def _free(self) -> None:
        """Gives a dropped decoder's memory back at once: what a reference cycle holds, and its graphs' pool,
        which the allocator would otherwise keep reserved (and the next `available()` would not see)."""
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def decode_ops(self, compiled: bool) -> DecodeOps:
        if compiled and self.compile_error is None and not self.is_compiler_checked:
            try:  # once: a machine without a working compiler decodes eagerly
                check_compiler(self.device, self.weights.embed.weight.dtype)
                self.is_compiler_checked = True
            except Exception as e:  # torch.compile fails in many ways (no Triton, no C compiler, ...)
                self.compile_error = f"{type(e).__name__}: {e}"[:500]
                warnings.warn(f"torch.compile failed, decoding without it: {self.compile_error}")
        return compiled_ops() if compiled and self.is_compiler_checked else EAGER_OPS
