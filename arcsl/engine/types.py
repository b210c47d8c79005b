"""The engine boundary: what goes into a model engine and what comes out, with no torch in sight.

The search loop, the toy domain and tests speak to an engine only through these types, so importing
them is cheap (a test checks that torch is not imported) and an engine over another backend (vLLM, a
remote server, a scripted fake) implements `Engine` without touching the rest of arcsl.

- `Prompt`: chat messages with a prefilled assistant turn (`ChatPrompt`), raw text, or token ids.
- `StopRule`: where a completion may end before an end token. The engine calls it on the text decoded so
  far and stops the sample when it answers; it knows nothing of what the rule looks for (a prompt format
  owns its rule: BARC's stops after its program's code block).
- `Completion`, `SampleStats`, `SampleResult`: one sampling call's texts and costs.
- `OnComplete`, `Idle`: optional hooks of `Engine.sample`, so that the caller can use each completion as soon
  as it stops (e.g. run its program) while the engine decodes the others.
- `FinetuneStats`: one fine-tuning call's costs.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from arcsl.config import FinetuneConfig, SamplingConfig


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """Chat messages ({"role", "content"}) rendered with the model's template; the assistant turn is
    prefilled with `assistant_prefix`, and completions continue it."""
    messages: list[dict[str, str]]
    assistant_prefix: str = ""


Prompt = ChatPrompt | str | list[int]  # str: raw text (no template); list[int]: token ids as they are
Example = tuple[Prompt, str | list[int]]  # (prompt, completion: the assistant text after the prefix)

StopRule = Callable[[str], int | None]
"""completion text so far -> None while it may go on, or the length of the text to keep once it is complete.
It must be monotone: once it answers for a text, it answers the same for every text that extends it."""


OnComplete = Callable[[int, int, "Completion"], None]
"""(prompt index, sample index, completion): a sample has stopped, before `sample` returns."""

Idle = Callable[[float], None]
"""seconds: the engine is waiting for its device; the caller may work for at most that long (0: a quick look)."""


@dataclass(frozen=True, slots=True)
class Completion:
    text: str  # without the end token; cut where the stop rule said when finish_reason == "stop"
    num_tokens: int  # tokens generated, the end token included
    finish_reason: str  # "stop" (the stop rule ended it), "eos" (end-of-turn or EOS token) or "length"


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleStats:
    num_prompts: int
    num_samples: int
    num_batches: int
    num_oom_retries: int
    num_prompt_tokens: int  # tokens prefilled: each prompt once per batch it is in, not once per sample
    num_output_tokens: int  # tokens generated, end tokens included
    prefill_s: float
    decode_s: float
    total_s: float  # everything, tokenisation and CUDA-graph capture included
    output_tokens_per_s: float  # num_output_tokens / total_s
    peak_memory_gb: float  # 0 on CPU
    capture_s: float = 0.0  # CUDA-graph captures (and first compilations of new shapes); not in decode_s
    merge_s: float = 0.0  # LoRA merged into the weights or its factors refreshed (with any wait for the
    # previous call's copy back of the base weights), before the first batch


@dataclass(frozen=True, slots=True)
class SampleResult:
    completions: list[list[Completion]]  # per prompt, its samples
    stats: SampleStats


@dataclass(frozen=True, slots=True, kw_only=True)
class FinetuneStats:
    num_examples: int  # examples trained on (per epoch)
    num_dropped: int  # examples longer than max_seq_len, skipped
    num_steps: int
    num_tokens: int  # real (unpadded) tokens processed, all epochs
    num_loss_tokens: int  # completion tokens the loss was taken on, all epochs
    losses: list[float]  # mean loss per completion token, per optimizer step
    seconds: float
    examples_per_s: float
    tokens_per_s: float
    peak_memory_gb: float  # 0 on CPU
    num_checkpointed: int = 0  # micro-batches run with gradient checkpointing, all epochs
    num_oom_retries: int = 0  # steps started again after running out of memory
    num_steps_skipped: int = 0  # steps not taken because `stop_at` came first


class Engine(Protocol):
    """What the search loop needs from a model; an engine over vLLM or a toy model can implement it.

    An engine holds one or more LoRA adapters, numbered from 0, all starting from the same values; each is
    trained and reset on its own (one per task or task group, when several are searched together).
    """
    num_adapters: int

    def sample(self, prompts: Sequence[Prompt], cfg: SamplingConfig, seed: int | Sequence[int] = 0,
               adapters: Sequence[int] | None = None, stop: StopRule | None = None,
               stop_at: float | None = None, on_complete: OnComplete | None = None,
               idle: Idle | None = None) -> SampleResult:
        """`cfg.num_samples` completions of each prompt, prompt i through adapter `adapters[i]` (None: all
        through adapter 0), each ending at an end token, at `stop`'s answer or at `cfg.max_new_tokens`.
        Prompt i draws from its own seed (`seed[i]`, or `seed + i` for one int), not from its neighbours'.
        At `stop_at` (time.monotonic(): a deadline) the call ends soon after, without the samples it had not
        finished: a prompt may then get fewer than `cfg.num_samples`, or none.

        Streaming, both optional (an engine may ignore them; the returned completions are what counts):
        `on_complete(i, j, completion)` hears sample j of prompt i once it has stopped, as it will be
        returned. A sample may be heard and then sampled again (a batch retried after running out of
        memory: heard again, or not returned if the deadline came first). `idle(seconds)` lets the caller
        work while the engine waits for its device, for at most `seconds` each call."""

    def finetune(self, examples: Sequence[Example], cfg: FinetuneConfig, seed: int = 0, adapter: int = 0,
                 stop_at: float | None = None) -> FinetuneStats:
        """Trains `adapter` on (prompt, completion) pairs; its training state carries over until its `reset`.
        No optimizer step starts at or after `stop_at` (time.monotonic(); a deadline), so a call ends at most
        one step after it."""

    def reset(self, adapter: int | None = None) -> None:
        """`adapter` (None: every adapter) back to its initial values with a fresh optimizer (between tasks)."""
