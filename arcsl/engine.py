"""The model engine: one long-lived object per GPU that samples completions and fine-tunes a LoRA.

The engine knows nothing about grids: prompts (chat messages, text or token ids) in, completions out;
fine-tuning on (prompt, completion) pairs. Everything expensive is built once, in `__init__`: the
model, the LoRA wrapper, the optimizers, a copy of the initial LoRA values. A round then costs only its
sampling and training, and `reset()` between tasks costs milliseconds.

What is covered:
- `Engine`, the protocol the search loop uses (a vLLM-based engine can implement it later);
- `HFEngine`, its Hugging Face + peft implementation, and `load_engine` (hub id or local path; bf16 on
  GPU, fp32 on CPU; optional 4-bit base weights on GPU);
- prompt rendering: the chat template with the generation prompt, then the assistant prefix (the
  assistant turn is prefilled); training examples are rendered the same way, so train and sample
  texts match token for token;
- sampling (`arcsl.sampler`) in batches sized to GPU memory, halved on out-of-memory and retried;
- the fast sampler's weights (`arcsl.decode_weights`): fused, with the LoRA stacked or merged in place;
- several LoRA adapters (`ModelConfig.num_adapters`, one per task searched together): each is fine-tuned,
  reset, saved and loaded on its own, with its own optimizer; one `sample` call takes an adapter per
  prompt and decodes them in one batch (a decode step reads the base weights once for all adapters);
- sampling decoders kept across calls (their caches and CUDA graphs are reused round after round);
- fine-tuning (`arcsl.finetune`), reset, and adapters saved/loaded as peft safetensors.

What is not covered: training several adapters in one step, multi-GPU models, tokenizers without a chat
template for `ChatPrompt` (use plain text or token ids). DoRA, LoRA biases and 4-bit base weights sample through
the model's own forward (`CacheDecoder`), which is slower.
"""

import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from arcsl.config import FinetuneConfig, ModelConfig, SamplingConfig
from arcsl.decode_weights import DecodeWeights
from arcsl.finetune import Finetuner, FinetuneStats, Tokenized
from arcsl.sampler import (ALIGN, EAGER_OPS, PREFILL_TOKENS, PROMPT_ALIGN, CacheDecoder, DecodeOps,
                           RowState, SharedPrefixDecoder, check_compiler, compiled_ops, generate, round_up)

CPU_BATCH_SIZE = 64  # sequences decoded together on CPU when max_batch_size is 0
MAX_DECODERS = 2  # sampling decoders (caches + CUDA graphs) kept between calls, least recently used dropped


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """Chat messages ({"role", "content"}) rendered with the model's template; the assistant turn is
    prefilled with `assistant_prefix`, and completions continue it."""
    messages: list[dict[str, str]]
    assistant_prefix: str = ""


Prompt = ChatPrompt | str | list[int]  # str: raw text (no template); list[int]: token ids as they are
Example = tuple[Prompt, str | list[int]]  # (prompt, completion: the assistant text after the prefix)


@dataclass(frozen=True, slots=True)
class Completion:
    text: str  # without the stop token; cut just after the closing fence when finish_reason == "stop"
    num_tokens: int  # tokens generated, the stop token included
    finish_reason: str  # "stop" (closed its code block), "eos" (end-of-turn or EOS token) or "length"


@dataclass(frozen=True, slots=True)
class SampleStats:
    num_prompts: int
    num_samples: int
    num_batches: int
    num_oom_retries: int
    num_prompt_tokens: int  # tokens prefilled: each prompt once per batch it is in, not once per sample
    num_output_tokens: int  # tokens generated, stop tokens included
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


class Engine(Protocol):
    """What the search loop needs from a model; an engine over vLLM or a toy model can implement it.

    An engine holds one or more LoRA adapters, numbered from 0, all starting from the same values; each is
    trained and reset on its own (one per task, when several tasks are searched together).
    """
    num_adapters: int

    def sample(self, prompts: Sequence[Prompt], cfg: SamplingConfig, seed: int = 0,
               adapters: Sequence[int] | None = None) -> SampleResult:
        """`cfg.num_samples` completions of each prompt, prompt i through adapter `adapters[i]` (None: all
        through adapter 0); reproducible for a given seed."""

    def finetune(self, examples: Sequence[Example], cfg: FinetuneConfig, seed: int = 0,
                 adapter: int = 0) -> FinetuneStats:
        """Trains `adapter` on (prompt, completion) pairs; its training state carries over until its `reset`."""

    def reset(self, adapter: int | None = None) -> None:
        """`adapter` (None: every adapter) back to its initial values with a fresh optimizer (between tasks)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_engine(cfg: ModelConfig) -> "HFEngine":
    """Loads `cfg.model` (hub id or local directory) with its tokenizer and wraps it in an `HFEngine`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(cfg.device)
    kwargs = {"dtype": torch.bfloat16 if device.type == "cuda" else torch.float32,
              "device_map": str(device), "attn_implementation": "sdpa"}
    if cfg.load_in_4bit:
        if device.type != "cuda":
            raise ValueError(f"--load-in-4bit needs a GPU (bitsandbytes); device is {device}")
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)
    return HFEngine(model, AutoTokenizer.from_pretrained(cfg.model), cfg)


def end_of_turn_id(tokenizer) -> int:
    """The token the chat template writes after an assistant message (Llama-3: <|eot_id|>), else EOS."""
    if tokenizer.chat_template is None:
        return tokenizer.eos_token_id
    marker = "ARCSL-END-PROBE"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False)
    after = tokenizer(text.split(marker, 1)[1], add_special_tokens=False).input_ids
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return after[0] if after and after[0] in special else tokenizer.eos_token_id


def pick_pad_id(tokenizer, vocab_size: int, end_ids: set[int]) -> int:
    """A padding id that is no end token: padding with EOS would teach the model never to stop."""
    if tokenizer is not None:
        for candidate in (tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|finetune_right_pad_id|>")):
            if candidate is not None and candidate not in end_ids and candidate != tokenizer.unk_token_id:
                return candidate
    # a pad is never attended (right padding, causal mask) nor a target, so any other id is as good
    return next(i for i in range(vocab_size) if i not in end_ids)


class HFEngine:
    """Engine over a Hugging Face causal LM with `cfg.num_adapters` LoRA adapters (peft).

    Args:
        model: the causal LM, already on its device (fp32 on CPU, bf16 on GPU).
        tokenizer: its tokenizer, or None when prompts and completions are token ids (benchmarks).
        cfg: LoRA settings and the number of adapters (the model fields are for `load_engine`).
    """

    def __init__(self, model, tokenizer, cfg: ModelConfig):
        from peft import LoraConfig, get_peft_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.target_modules, use_rslora=cfg.use_rslora, use_dora=cfg.use_dora,
                          bias="none", task_type="CAUSAL_LM")
        self.num_adapters = cfg.num_adapters
        self.adapter_names = ["default"] + [f"slot{k}" for k in range(1, cfg.num_adapters)]  # peft's names
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.lora_seed)
            self.model = get_peft_model(model, lora)  # LoRA weights in float32 (peft's default)
            for name in self.adapter_names[1:]:
                self.model.add_adapter(name, lora)  # its values become the first adapter's (Finetuner)
        self.active_adapter = 0  # peft's active adapter: the one training and the model's own forward use
        self.lm = self.model.get_base_model()
        self.tokenizer = tokenizer
        self.device = self.lm.get_output_embeddings().weight.device
        dtype = self.lm.get_input_embeddings().weight.dtype
        self.autocast_dtype = dtype if dtype in (torch.bfloat16, torch.float16) else None
        if self.autocast_dtype is not None:
            # autocast runs the float32 LoRA in bf16; peft's own cast of the input to float32 would only
            # add a float32 copy of every LoRA input (memory in training)
            for module in self.model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.cast_input_dtype_enabled = False
        self.eos_ids = _eos_ids(self.lm, tokenizer)
        self.end_of_turn_id = end_of_turn_id(tokenizer) if tokenizer is not None else self.eos_ids[0]
        stop = set(self.eos_ids) | {self.end_of_turn_id}
        self.stop_ids = sorted(stop)
        self.pad_id = pick_pad_id(tokenizer, self.lm.config.vocab_size, stop)
        self.weights = DecodeWeights(self.lm, self.adapter_names) if DecodeWeights.supports(self.lm) else None
        self.is_fast = self.weights is not None  # else sampling runs the model's own forward, prompt by prompt
        self.decoders: OrderedDict[tuple, SharedPrefixDecoder] = OrderedDict()  # least recently used first
        self.compile_error: str | None = None  # why decode runs eagerly although compilation was asked for
        self.is_compiler_checked = False
        # per adapter, its LoRA's identity for the sampler: 0 = the initial values (which every adapter starts
        # from and a reset restores exactly), else a number no other LoRA state had (finetune, load_adapter)
        self.lora_versions = [0] * cfg.num_adapters
        self.num_lora_changes = 0
        self.initial_lora_is_zero = self.weights is not None and self.weights.lora_is_zero
        params = [[p for n, p in self.model.named_parameters() if n.split(".")[-2] == name]  # ...lora_A.<name>.weight
                  for name in self.adapter_names]
        self.finetuner = Finetuner(self.lm, params, self.pad_id, self.autocast_dtype, self.release_sampler_memory)
        self.row_cap_after_oom: int | None = None  # sticky: once a batch size failed, stay below it
        self.model.eval()

    # --- prompts ------------------------------------------------------------------------------------

    def render(self, prompt: ChatPrompt) -> str:
        """The prompt text the model sees: chat template, generation prompt, assistant prefix."""
        text = self.tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        return text + prompt.assistant_prefix

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer: pass prompts and completions as token ids")
        if isinstance(prompt, ChatPrompt):
            # the template already starts with BOS; the tokenizer must not add a second one
            return self.tokenizer(self.render(prompt), add_special_tokens=False).input_ids
        return self.tokenizer(prompt).input_ids

    def encode_example(self, prompt: Prompt, completion: str | list[int]) -> Tokenized:
        """(prompt ids + completion ids + end token, number of prompt ids). Prompt and completion are
        tokenised apart, as at sampling time, where the completion's tokens follow the prompt's."""
        prompt_ids = self.encode_prompt(prompt)
        if isinstance(completion, str):
            completion = self.tokenizer(completion, add_special_tokens=False).input_ids
        end = self.end_of_turn_id if isinstance(prompt, ChatPrompt) else self.eos_ids[0]
        return prompt_ids + completion + [end], len(prompt_ids)

    # --- sampling -----------------------------------------------------------------------------------

    def sample(self, prompts: Sequence[Prompt], cfg: SamplingConfig, seed: int = 0,
               adapters: Sequence[int] | None = None) -> SampleResult:
        """`cfg.num_samples` completions per prompt, prompt i through adapter `adapters[i]` (None: adapter 0).
        Same seed, same prompts and adapters, same batch plan: same texts. Prompts of different adapters
        share batches; greedy texts are those of sampling each adapter's prompts alone."""
        start = time.perf_counter()
        if cfg.stop_at_code_end and not cfg.ignore_eos and self.tokenizer is None:
            raise ValueError("stop_at_code_end needs a tokenizer; this engine has none")
        adapters = self._check_adapters(adapters, len(prompts))
        ids = [self.encode_prompt(p) for p in prompts]
        generator = torch.Generator(self.device).manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        merge_s = 0.0
        try:
            if self.weights is not None:
                merge_start = time.perf_counter()
                self._prepare_weights(adapters, cfg.merge_lora)
                self._sync()
                merge_s = time.perf_counter() - merge_start
            rows, timing = self._sample_ids(ids, adapters, cfg, generator)
        finally:
            if self.weights is not None and self.weights.is_merged:
                self.weights.restore()  # asynchronous on a GPU: overlaps with what the caller does next
        completions = [self._completions(r) for r in rows]
        total = time.perf_counter() - start
        num_output = sum(c.num_tokens for cs in completions for c in cs)
        stats = SampleStats(
            num_prompts=len(prompts), num_samples=len(prompts) * cfg.num_samples, num_batches=timing["batches"],
            num_oom_retries=timing["ooms"], num_prompt_tokens=timing["prompt_tokens"], num_output_tokens=num_output,
            prefill_s=timing["prefill"], decode_s=timing["decode"], total_s=total,
            output_tokens_per_s=num_output / total, peak_memory_gb=self._peak_memory_gb(),
            capture_s=timing["capture"], merge_s=merge_s)
        return SampleResult(completions, stats)

    def _prepare_weights(self, adapters: list[int], merge: bool) -> None:
        """The used adapters' LoRA where decode reads it. When they all hold one state (one adapter, or
        adapters all at their initial values), that state alone: stacked, merged or skipped if zero; else
        every used adapter's factors, each row masked to its own (never merged)."""
        versions = {k: self.lora_versions[k] for k in sorted(set(adapters or [0]))}
        if len(set(versions.values())) > 1:
            self.weights.prepare_mixed(versions)
            return
        adapter, version = next(iter(versions.items()))
        self.weights.prepare(merge, version, version == 0 and self.initial_lora_is_zero, adapter)

    def _check_adapters(self, adapters: Sequence[int] | None, num_prompts: int) -> list[int]:
        if adapters is None:
            return [0] * num_prompts
        if len(adapters) != num_prompts:
            raise ValueError(f"adapters has {len(adapters)} entries for {num_prompts} prompts; give one per prompt")
        for adapter in adapters:
            self._check_adapter(adapter)
        return list(adapters)

    def _check_adapter(self, adapter: int) -> None:
        if not 0 <= adapter < self.num_adapters:
            raise ValueError(f"adapter {adapter} does not exist: this engine has num_adapters={self.num_adapters} "
                             f"(adapters 0 to {self.num_adapters - 1})")

    def _sample_ids(self, ids: list[list[int]], adapters: list[int], cfg: SamplingConfig,
                    generator: torch.Generator) -> tuple[list[list[RowState]], dict]:
        rows: list[list[RowState]] = [[] for _ in ids]
        # longest prompts first: similar lengths share a batch, and the largest batch fails first
        queue = deque((i, cfg.num_samples) for i in sorted(range(len(ids)), key=lambda i: -len(ids[i])))
        timing = {"prefill": 0.0, "decode": 0.0, "capture": 0.0, "prompt_tokens": 0, "batches": 0, "ooms": 0}
        while queue:
            batch, per_prompt = self._next_batch(queue, ids, cfg)
            try:
                results = self._run_batch([ids[i] for i in batch], [adapters[i] for i in batch], per_prompt, cfg,
                                          generator, timing)
            except torch.OutOfMemoryError:
                results = None
            if results is None:  # outside the except block, so the failed batch's tensors are freed
                self._shrink_after_oom(len(batch) * per_prompt)
                queue.extendleft((i, per_prompt) for i in reversed(batch))
                timing["ooms"] += 1
                continue
            for k, i in enumerate(batch):
                rows[i].extend(results[k * per_prompt:(k + 1) * per_prompt])
        return rows, timing

    def _next_batch(self, queue: deque, ids: list[list[int]], cfg: SamplingConfig) -> tuple[list[int], int]:
        """Pops the next batch: prompts with the same number of samples, within the row and memory limits."""
        first, count = queue[0]
        cap = self._row_cap(cfg)
        if count > cap or not self._fits(1, count, len(ids[first]), cfg):
            take = min(count, cap)
            while take > 1 and not self._fits(1, take, len(ids[first]), cfg):
                take //= 2
            queue[0] = (first, count - take)  # the rest of this prompt's samples come in later batches
            if queue[0][1] == 0:
                queue.popleft()
            return [first], take
        batch = [queue.popleft()[0]]
        while (self.is_fast and queue and queue[0][1] == count and (len(batch) + 1) * count <= cap
               and self._fits(len(batch) + 1, count, len(ids[batch[0]]), cfg)):
            batch.append(queue.popleft()[0])
        return batch, count

    def _row_cap(self, cfg: SamplingConfig) -> int:
        cap = cfg.max_batch_size or (1 << 30 if self.device.type == "cuda" else CPU_BATCH_SIZE)
        return min(cap, self.row_cap_after_oom or cap)

    def _fits(self, num_prompts: int, per_prompt: int, prompt_len: int, cfg: SamplingConfig) -> bool:
        """Whether a batch's caches and temporaries fit in free GPU memory (estimate; OOM is the backstop)."""
        if self.device.type != "cuda":
            return True
        c = self.lm.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 2  # K and V, bf16
        rows, prompt_cap = num_prompts * per_prompt, round_up(prompt_len, PROMPT_ALIGN)
        cached_prompt = num_prompts * prompt_cap if self.is_fast else rows * prompt_cap  # shared or copied
        kv = per_token * (cached_prompt + rows * round_up(cfg.max_new_tokens, ALIGN))
        sampling = rows * c.vocab_size * 24  # logits, probabilities, sorted copy, order (int64), noise
        scores = rows * c.num_attention_heads * max(prompt_cap, cfg.max_new_tokens) * 8  # float32, two copies
        prefill_tokens = min(num_prompts * prompt_cap, max(PREFILL_TOKENS, prompt_cap))
        prefill = prefill_tokens * (c.intermediate_size * 3 + c.hidden_size * 8) * 2
        # the decoders kept from earlier calls give their memory back when a batch needs it
        free = self._free_memory() + sum(d.nbytes for d in self.decoders.values())
        return kv + sampling + scores + prefill <= 0.9 * free

    def _free_memory(self) -> int:
        return torch.cuda.mem_get_info(self.device)[0] + torch.cuda.memory_reserved(self.device) \
            - torch.cuda.memory_allocated(self.device)

    def _shrink_after_oom(self, failed_rows: int) -> None:
        if failed_rows <= 1:
            raise torch.OutOfMemoryError("out of memory with a single sequence per batch")
        self.row_cap_after_oom = failed_rows // 2
        self.release_sampler_memory()

    def release_sampler_memory(self) -> None:
        """Drops the decoders kept between calls (their caches and CUDA graphs); the next call rebuilds them."""
        self.decoders.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _run_batch(self, prompts: list[list[int]], adapters: list[int], per_prompt: int, cfg: SamplingConfig,
                   generator: torch.Generator, timing: dict) -> list[RowState]:
        if self.is_fast:
            decoder = self._decoder(len(prompts), per_prompt, cfg)
            decoder.load(prompts, adapters)
        else:  # one prompt per batch, through the model's own forward with the prompt's adapter active
            self._activate(adapters[0])
            decoder = CacheDecoder(self.lm, prompts, per_prompt, self.autocast_dtype)
        captured = decoder.capture_s
        start = time.perf_counter()
        logits = decoder.prefill()
        self._sync()
        prefilled = time.perf_counter()
        stop_ids = [] if cfg.ignore_eos else self.stop_ids
        rows = generate(decoder, logits, cfg, stop_ids, generator, self.tokenizer)
        capture = decoder.capture_s - captured
        timing["prefill"] += prefilled - start
        timing["decode"] += time.perf_counter() - prefilled - capture
        timing["capture"] += capture
        timing["prompt_tokens"] += sum(len(p) for p in prompts)
        timing["batches"] += 1
        return rows

    def _decoder(self, num_prompts: int, per_prompt: int, cfg: SamplingConfig) -> SharedPrefixDecoder:
        """The decoder for this batch shape: kept from an earlier call (caches and graphs reused) or new."""
        use_graphs = cfg.cuda_graphs and self.device.type == "cuda"
        ops = self._decode_ops(cfg.compile_decode and self.device.type == "cuda")
        key = (num_prompts, per_prompt, round_up(max(cfg.max_new_tokens - 1, 1), ALIGN), use_graphs, ops is EAGER_OPS)
        decoder = self.decoders.pop(key, None)
        if decoder is None:
            while len(self.decoders) >= MAX_DECODERS:
                self.decoders.popitem(last=False)
            decoder = SharedPrefixDecoder(self.weights, num_prompts, per_prompt, cfg.max_new_tokens - 1, use_graphs,
                                          ops)
        self.decoders[key] = decoder
        return decoder

    def _decode_ops(self, compiled: bool) -> DecodeOps:
        if compiled and self.compile_error is None and not self.is_compiler_checked:
            try:  # once per engine: a machine without a working compiler decodes eagerly
                check_compiler(self.device, self.lm.dtype)
                self.is_compiler_checked = True
            except Exception as e:  # torch.compile fails in many ways (no Triton, no C compiler, ...)
                self.compile_error = f"{type(e).__name__}: {e}"[:500]
                warnings.warn(f"torch.compile failed, decoding without it: {self.compile_error}")
        return compiled_ops() if compiled and self.is_compiler_checked else EAGER_OPS

    def _completions(self, rows: list[RowState]) -> list[Completion]:
        kept = [r.tokens[:r.end - (r.finish_reason == "eos")] for r in rows]
        texts = (self.tokenizer.batch_decode(kept, skip_special_tokens=False) if self.tokenizer is not None
                 else [""] * len(rows))
        return [Completion(text[:r.text_end] if r.text_end is not None else text, r.end, r.finish_reason)
                for text, r in zip(texts, rows)]

    # --- fine-tuning --------------------------------------------------------------------------------

    def finetune(self, examples: Sequence[Example], cfg: FinetuneConfig, seed: int = 0,
                 adapter: int = 0) -> FinetuneStats:
        """Trains `adapter`'s LoRA on (prompt, completion) pairs; the loss covers the completion and its end
        token. The adapter's optimizer state carries over between calls until its `reset`; other adapters
        are untouched."""
        self._check_adapter(adapter)
        if not examples:
            raise ValueError("finetune needs at least one example")
        seqs = [self.encode_example(p, c) for p, c in examples]
        self._sync()  # the base weights' restore after sampling, if still running, is waited for here, untimed
        self._activate(adapter)
        self._lora_changed(adapter)
        return self.finetuner.run(seqs, cfg, seed, adapter)

    def reset(self, adapter: int | None = None) -> None:
        """`adapter`'s LoRA (None: every adapter's) back to its initial values, in place, and its optimizer
        state cleared."""
        if adapter is not None:
            self._check_adapter(adapter)
        for k in range(self.num_adapters) if adapter is None else [adapter]:
            self.finetuner.reset(k)
            self.lora_versions[k] = 0  # the initial values, bit for bit

    def _lora_changed(self, adapter: int) -> None:
        self.num_lora_changes += 1
        self.lora_versions[adapter] = self.num_lora_changes

    def _activate(self, adapter: int) -> None:
        """Makes `adapter` the one the model's own forward (training, `CacheDecoder`) computes with."""
        if adapter != self.active_adapter:
            self.model.set_adapter(self.adapter_names[adapter])  # also makes only its parameters trainable
            self.active_adapter = adapter

    def save_adapter(self, path: str | Path, adapter: int = 0) -> None:
        """Writes `adapter`'s adapter_model.safetensors and adapter_config.json into `path` (peft's format,
        which vLLM reads)."""
        self._check_adapter(adapter)
        name, path = self.adapter_names[adapter], Path(path)
        self.model.save_pretrained(str(path), selected_adapters=[name])
        if name != "default":  # peft writes the files of any other adapter into a folder named after it
            for written in (path / name).iterdir():
                written.replace(path / written.name)
            (path / name).rmdir()

    def load_adapter(self, path: str | Path, adapter: int = 0) -> None:
        """Copies saved LoRA weights into `adapter` in place (same rank and targets); clears its optimizer."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        self._check_adapter(adapter)
        weights = load_file(str(Path(path) / "adapter_model.safetensors"), device=str(self.device))
        result = set_peft_model_state_dict(self.model, weights, adapter_name=self.adapter_names[adapter])
        if result.unexpected_keys:
            raise ValueError(f"adapter at {path} does not match this model's LoRA: {result.unexpected_keys[:3]} ...")
        self.finetuner.clear_optimizer(adapter)
        self._lora_changed(adapter)

    # --- helpers ------------------------------------------------------------------------------------

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _peak_memory_gb(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 1e9 if self.device.type == "cuda" else 0.0


def _eos_ids(lm, tokenizer) -> list[int]:
    """EOS ids from the tokenizer and the generation config (Llama-3.1 lists three), first = tokenizer's."""
    def as_list(x) -> list:
        return x if isinstance(x, list) else [x]

    configured = as_list(lm.generation_config.eos_token_id) if lm.generation_config is not None else []
    first = [tokenizer.eos_token_id] if tokenizer is not None else []
    ids = [i for i in first + configured + as_list(lm.config.eos_token_id) if i is not None]
    if not ids:
        raise ValueError("the model has no EOS token (tokenizer, generation config and config all lack one)")
    return list(dict.fromkeys(ids))
