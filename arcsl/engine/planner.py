"""Batch planning for sampling: which prompts decode together, and how many samples of each.

A sampling call asks for `num_samples` completions of each prompt. The planner cuts that work into
batches of rows (one row per sample), longest prompts first (similar lengths share a batch, and the
largest batch fails first if memory runs out), within a row cap and a memory budget. It is a pure
function of shapes and numbers: the engine measures the memory, the planner only counts, so every rule
here is tested on a CPU.

The memory model counts what a batch allocates on top of the weights: the prompt KV caches (once per
prompt when the decoder shares a prompt's cache among its samples, once per sample otherwise), the
step KV caches, the sampling temporaries over the vocabulary, the attention scores, and the prefill's
activations. It is an estimate; the engine's out-of-memory retry (a smaller row cap, the same work
planned again) is the backstop.

The weights, adapters and optimizer states are resident when a call starts; `adapters_that_fit` counts
them once, before the engine is built, to bound how many tasks (one adapter each) a GPU holds in flight.

What is not covered: continuous batching (a batch runs until its last row stops).
"""

from collections.abc import Sequence
from dataclasses import dataclass

ALIGN = 64  # step-cache lengths are rounded up to this, so graphs are reused
PROMPT_ALIGN = 256  # prompt-cache lengths too: one graph serves all prompts of a 256-token bucket
PREFILL_TOKENS = 16384  # most padded tokens prefilled in one forward (bounds the prefill's activations)
CPU_ROW_CAP = 64  # rows decoded together on CPU when no cap is given (a CPU step costs in proportion to rows)
GPU_PREFERRED_ROWS = 128  # rows a GPU decode step wants at least: below, a step costs about the same (weight-read bound)
# an adapter's bytes per LoRA parameter: its float32 values (4), AdamW's two float32 moments (8), and its
# bf16 factors stacked for decoding with mixed adapters (2)
ADAPTER_BYTES_PER_PARAM = 14
ADAPTER_SHARE = 0.5  # of the memory the weights leave, what adapters may take; the rest is for batches and training

Work = list[tuple[int, int]]  # (prompt index, samples still to draw), in the order they will be batched


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The sizes of a decoder-only transformer that decide a batch's memory."""
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    kv_bytes: int = 2  # bytes per cached K or V value (bf16)

    @classmethod
    def from_config(cls, c) -> "ModelShape":
        """From a Hugging Face model config (Llama-style field names)."""
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls(c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, head_dim, c.hidden_size,
                   c.intermediate_size, c.vocab_size)


    def linear_layers(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of a block, by its Llama-style module name."""
        q, kv, h, i = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.hidden_size, \
            self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def num_params(self) -> int:
        """Weights of the blocks and of the (untied) embedding and output layers."""
        blocks = sum(a * b for a, b in self.linear_layers().values()) + 2 * self.hidden_size
        return self.num_layers * blocks + 2 * self.vocab_size * self.hidden_size

    def lora_params(self, rank: int, targets: str | Sequence[str]) -> int:
        """Parameters of one LoRA adapter of `rank` on `targets` ("all-linear" or module names; names the
        block does not have count nothing)."""
        layers = self.linear_layers()
        names = layers if targets == "all-linear" else [t for t in targets if t in layers]
        return self.num_layers * sum(rank * sum(layers[n]) for n in names)


def adapters_that_fit(shape: ModelShape, memory_bytes: float, rank: int, targets: str | Sequence[str],
                      bytes_per_weight: float = 2) -> int:
    """How many adapters, each with its optimizer state, take no more than `ADAPTER_SHARE` of what the
    weights (`bytes_per_weight` each: 2 in bf16, about 0.56 in 4 bits) leave of `memory_bytes`; at least 1."""
    left = memory_bytes - shape.num_params() * bytes_per_weight
    return max(1, int(ADAPTER_SHARE * left // (shape.lora_params(rank, targets) * ADAPTER_BYTES_PER_PARAM)))


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_rows: int                 # most rows in one batch
    memory_bytes: float | None    # what one batch may allocate; None: not counted (CPU)
    shares_prompt_cache: bool     # the fast decoder: a prompt's KV is stored once for all of its samples, and
    # several prompts may share a batch; the fallback decoder copies it per sample and takes one prompt a batch


def batch_bytes(shape: ModelShape, num_prompts: int, per_prompt: int, prompt_len: int, max_new_tokens: int,
                shares_prompt_cache: bool) -> int:
    """Bytes a batch of `num_prompts` prompts (the longest `prompt_len` tokens) x `per_prompt` samples allocates."""
    per_token = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * shape.kv_bytes  # K and V
    rows, prompt_cap = num_prompts * per_prompt, round_up(prompt_len, PROMPT_ALIGN)
    cached_prompt = num_prompts * prompt_cap if shares_prompt_cache else rows * prompt_cap
    kv = per_token * (cached_prompt + rows * round_up(max_new_tokens, ALIGN))
    sampling = rows * shape.vocab_size * 24  # logits, probabilities, sorted copy, order (int64), noise
    # each captured step graph keeps its float32 logits: one per power-of-two step-cache width on the PyTorch
    # attention path (counted here for both paths; the GPU kernels need only one)
    graphs = (round_up(max_new_tokens, ALIGN) // ALIGN - 1).bit_length() + 1
    sampling += graphs * rows * shape.vocab_size * 4
    scores = rows * shape.num_heads * max(prompt_cap, max_new_tokens) * 8  # float32, two copies
    prefill_tokens = min(num_prompts * prompt_cap, max(PREFILL_TOKENS, prompt_cap))
    prefill = prefill_tokens * (shape.intermediate_size * 3 + shape.hidden_size * 8) * 2
    return kv + sampling + scores + prefill


def initial_work(lengths: Sequence[int], num_samples: int) -> Work:
    """Every prompt's samples still to draw, longest prompts first (ties in prompt order)."""
    return [(i, num_samples) for i in sorted(range(len(lengths)), key=lambda i: -lengths[i])]


def next_batch(work: Work, lengths: Sequence[int], max_new_tokens: int, shape: ModelShape,
               limits: BatchLimits) -> tuple[list[int], int, Work]:
    """The next batch of `work`: (its prompts, samples of each, the work left after it).

    The first prompt's samples come first: all of them if they fit, else as many as fit (halving from the
    row cap), the rest left for later batches. Prompts after it join the batch while they ask for as many
    samples, the rows stay within the cap and the batch within the memory budget (fast decoder only).
    """
    def fits(num_prompts: int, per_prompt: int) -> bool:
        return limits.memory_bytes is None or batch_bytes(
            shape, num_prompts, per_prompt, lengths[first], max_new_tokens, limits.shares_prompt_cache
        ) <= limits.memory_bytes

    assert work, "no work left to batch"
    (first, count), rest = work[0], list(work[1:])
    cap = limits.max_rows
    if count > cap or not fits(1, count):
        take = min(count, cap)
        while take > 1 and not fits(1, take):
            take //= 2
        left = [(first, count - take)] if count > take else []
        return [first], take, left + rest
    batch = [first]
    while (limits.shares_prompt_cache and rest and rest[0][1] == count and (len(batch) + 1) * count <= cap
           and fits(len(batch) + 1, count)):
        batch.append(rest.pop(0)[0])
    return batch, count, rest


def plan_batches(lengths: Sequence[int], num_samples: int, max_new_tokens: int, shape: ModelShape,
                 limits: BatchLimits) -> list[tuple[list[int], int]]:
    """The whole plan of a call that does not run out of memory: (prompts, samples of each) per batch."""
    work, plan = initial_work(lengths, num_samples), []
    while work:
        batch, per_prompt, work = next_batch(work, lengths, max_new_tokens, shape, limits)
        plan.append((batch, per_prompt))
    return plan
