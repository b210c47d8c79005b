"""`HFEngine`: the `Engine` over a Hugging Face causal LM with LoRA adapters (peft), composed of its parts.

One long-lived object per GPU samples completions and fine-tunes LoRA adapters. Everything expensive
is built once, in `__init__`: the model, the LoRA wrapper, the optimizers, a copy of the initial LoRA
values. A round then costs only its sampling and training, and `reset()` between tasks costs
milliseconds. The parts, each readable and tested alone:

    tokens.py          PromptCodec: chat template, prompt and example encoding, end and padding tokens
    planner.py         which prompts and samples decode together, within a row cap and a memory budget
    decoders.py        DecoderCache: decoders (caches, CUDA graphs) kept between calls; the compile probe
    memory.py          GpuMemory: what the GPU has available; the fine-tuner's activation model
    adapters.py        AdapterVersions: a version per adapter, the key of every cache derived from its values
    decode_weights.py  the fast sampler's fused weights, with the LoRA stacked, merged or mixed per row
    sampler.py         the decoders and the decode loop
    finetune.py        Finetuner: the LoRA training loop, one optimizer per adapter
    training_kernels.py  Liger's fused kernels in the model's own forward, which fine-tuning runs

What is covered: `load_engine` (hub id or local path; bf16 on GPU, fp32 on CPU; optional 4-bit base weights on
GPU); sampling in planned batches, the row cap halved on out-of-memory and the batch retried; several adapters
(`ModelConfig.num_adapters`, one per task or task group searched together), each fine-tuned, reset, saved and
loaded on its own, and one `sample` call decoding prompts of different adapters in one batch; adapters saved
and loaded as peft safetensors; a saved adapter as every adapter's starting point (`ModelConfig.adapter`:
reset returns to it), or merged into the base weights (`merge_adapter`); each sample streamed to the caller as
it stops (`on_complete`), and the host's waits for the GPU lent to it (`idle`).

What is not covered: training several adapters in one step, multi-GPU models. DoRA, LoRA biases and 4-bit
base weights sample through the model's own forward (`CacheDecoder`), which is slower.
"""

import json
import numbers
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from arcsl.config import FinetuneConfig, ModelConfig, SamplingConfig
from arcsl.engine.adapters import AdapterVersions, saved_adapter_file
from arcsl.engine.decode_weights import DecodeWeights
from arcsl.engine.decoders import DecoderCache
from arcsl.engine.finetune import Finetuner
from arcsl.engine.memory import SAFETY, GpuMemory
from arcsl.engine.planner import CPU_ROW_CAP, BatchLimits, ModelShape, batch_bytes, initial_work, next_batch
from arcsl.engine.sampler import CacheDecoder, PromptNoise, RowState, generate
from arcsl.engine.tokens import PromptCodec
from arcsl.engine.training_kernels import apply_training_kernels
from arcsl.engine.types import (Completion, Example, FinetuneStats, Idle, OnComplete, Prompt, SampleResult, SampleStats,
                                StopRule)

TRAINING_STATE = "training_state.pt"  # beside a checkpoint's adapter files: the optimizer state


def _prompt_seeds(seed: int | Sequence[int], num_prompts: int) -> list[int]:
    if isinstance(seed, numbers.Integral):
        return [seed + i for i in range(num_prompts)]
    if len(seed) != num_prompts:
        raise ValueError(f"seed has {len(seed)} entries for {num_prompts} prompts; give one int or one per prompt")
    return [int(s) for s in seed]


def _cap_memory(device: torch.device, gb: float) -> int | None:
    """Caps this process's GPU memory at `gb` GiB (the allocator refuses more; 0: the whole GPU, which also lifts
    an earlier engine's cap: the cap is the process's); returns the cap in bytes, or None."""
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    cap = int(gb * 2**30)
    if cap > total:
        raise ValueError(f"--gpu-memory-gb {gb}: the GPU has {total / 2**30:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(cap / total if cap else 1.0, device)
    return cap or None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _adapter_weights(path: str | Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(saved_adapter_file(path)), device=str(device))


def _set_adapter(model, weights: dict[str, torch.Tensor], name: str, path: str | Path) -> None:
    """Copies a saved adapter's weights into the model's adapter `name`; refuses one of another shape."""
    from peft.utils import set_peft_model_state_dict

    try:
        result = set_peft_model_state_dict(model, weights, adapter_name=name)
    except RuntimeError as e:  # a size mismatch: another rank
        raise ValueError(f"adapter at {path} does not fit this model's LoRA (another --lora-rank?): "
                         f"{str(e).splitlines()[-1][:200]}") from None
    if result.unexpected_keys:
        raise ValueError(f"adapter at {path} does not match this model's LoRA (other --lora-targets?): "
                         f"{result.unexpected_keys[:3]} ...")


def _check_adapter_config(path: str | Path, cfg: ModelConfig) -> None:
    """A saved adapter must have the LoRA settings of this run to start its adapters from it (its scale would
    differ otherwise); merged into the base weights, any adapter does."""
    file = Path(path) / "adapter_config.json"
    saved = json.loads(file.read_text()) if file.is_file() else {}
    ours = {"r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "use_rslora": cfg.use_rslora, "use_dora": cfg.use_dora}
    differ = [f"{k} {saved.get(k)!r} (this run: {v!r})" for k, v in ours.items() if saved.get(k, v) != v]
    if differ:
        raise ValueError(f"--adapter {path}: its LoRA settings differ: {', '.join(differ)}; give this run the same "
                         "--lora-rank/--lora-alpha/--use-rslora/--use-dora, or --merge-adapter")


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
        self.adapter_names = ["default"] + [f"adapter{k}" for k in range(1, cfg.num_adapters)]  # peft's names
        if cfg.adapter and cfg.merge_adapter:  # into the base weights: the adapters then start from zero on it
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, cfg.adapter).merge_and_unload()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.lora_seed)
            self.model = get_peft_model(model, lora)  # LoRA weights in float32 (peft's default)
            for name in self.adapter_names[1:]:
                self.model.add_adapter(name, lora)  # its values become the first adapter's (Finetuner)
        self.active_adapter = 0  # peft's active adapter: the one training and the model's own forward use
        self.lm = self.model.get_base_model()
        self.device = self.lm.get_output_embeddings().weight.device
        dtype = self.lm.get_input_embeddings().weight.dtype
        self.autocast_dtype = dtype if dtype in (torch.bfloat16, torch.float16) else None
        if self.autocast_dtype is not None:
            # autocast runs the float32 LoRA in bf16; peft's own cast of the input to float32 would only
            # add a float32 copy of every LoRA input (memory in training)
            for module in self.model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.cast_input_dtype_enabled = False
        if cfg.adapter and not cfg.merge_adapter:  # every adapter starts from it, and reset returns to it
            weights = _adapter_weights(cfg.adapter, self.device)
            _check_adapter_config(cfg.adapter, cfg)
            _set_adapter(self.model, weights, "default", cfg.adapter)
        # Liger's kernels in the model's own forward: fine-tuning's, and the slow path's sampling
        self.uses_liger = apply_training_kernels(self.lm, cfg.training_kernels)
        self.codec = PromptCodec(self.lm, tokenizer)
        self.shape = ModelShape.from_config(self.lm.config)
        slow_because = DecodeWeights.unsupported(self.lm)
        if slow_because is not None:
            warnings.warn(f"sampling through the model's own forward (slower), not the fast path: {slow_because}",
                          stacklevel=2)
        self.weights = DecodeWeights(self.lm, self.adapter_names) if slow_because is None else None
        self.is_fast = self.weights is not None  # else sampling runs the model's own forward, prompt by prompt
        self.decoders = DecoderCache(self.weights, self.device) if self.is_fast else None
        self.versions = AdapterVersions(cfg.num_adapters)
        self.initial_lora_is_zero = self.weights is not None and self.weights.lora_is_zero
        params = [[p for n, p in self.model.named_parameters() if n.split(".")[-2] == name]  # ...lora_A.<name>.weight
                  for name in self.adapter_names]
        self.row_cap_after_oom: int | None = None  # sticky: once a batch size failed, stay below it
        cap = _cap_memory(self.device, cfg.gpu_memory_gb)
        self.memory = GpuMemory(self.device, cap, lambda: self.decoders.pool_bytes if self.decoders else 0) \
            if self.device.type == "cuda" else None
        self.finetuner = Finetuner(self.lm, params, self.codec.pad_id, self.autocast_dtype,
                                   self.release_sampler_memory, self.memory)
        self.model.eval()

    # --- sampling -----------------------------------------------------------------------------------

    def sample(self, prompts: Sequence[Prompt], cfg: SamplingConfig, seed: int | Sequence[int] = 0,
               adapters: Sequence[int] | None = None, stop: StopRule | None = None,
               stop_at: float | None = None, on_complete: OnComplete | None = None,
               idle: Idle | None = None) -> SampleResult:
        """`cfg.num_samples` completions per prompt, prompt i through adapter `adapters[i]` (None: adapter 0),
        each ending at an end token, where `stop` says, or at `cfg.max_new_tokens`. Prompt i's samples draw
        from its own seed (`seed[i]`, or `seed + i` for one int), so a prompt, its seed and its adapter give the
        same texts whichever prompts share the call (up to the arithmetic of other batch shapes on a GPU).
        Prompts of different adapters share batches; greedy texts are those of each adapter's prompts alone.
        From `stop_at` (time.monotonic(): a deadline) on, no batch starts and the samples still running are
        dropped: a prompt may then get fewer samples, or none.

        `on_complete(i, j, completion)` hears each sample at the stop check where it ends, built as it is
        returned; the samples of a batch retried after running out of memory are heard again. `idle(seconds)`
        gets the host's waits for the device at those checks (see `sampler.generate`)."""
        start = time.perf_counter()
        if stop is not None and not cfg.ignore_eos and self.codec.tokenizer is None:
            raise ValueError("a stop rule reads text, and this engine has no tokenizer")
        adapters = self._check_adapters(adapters, len(prompts))
        ids = [self.codec.encode_prompt(p) for p in prompts]
        generators = [torch.Generator(self.device).manual_seed(s) for s in _prompt_seeds(seed, len(prompts))]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        merge_s = 0.0
        try:
            if self.weights is not None:
                merge_start = time.perf_counter()
                self._prepare_weights(adapters, cfg.merge_lora)
                self._sync()
                merge_s = time.perf_counter() - merge_start
            rows, timing = self._sample_ids(ids, adapters, cfg, generators, None if cfg.ignore_eos else stop,
                                            stop_at, on_complete, idle)
        finally:
            if self.weights is not None and self.weights.is_merged:
                self.weights.restore()  # asynchronous on a GPU: overlaps with what the caller does next
        completions = [self._completions([x for x in r if x.finish_reason != "deadline"]) for r in rows]
        total = time.perf_counter() - start
        num_output = sum(c.num_tokens for cs in completions for c in cs)
        stats = SampleStats(
            num_prompts=len(prompts), num_samples=sum(map(len, completions)), num_batches=timing["batches"],
            num_oom_retries=timing["ooms"], num_prompt_tokens=timing["prompt_tokens"], num_output_tokens=num_output,
            prefill_s=timing["prefill"], decode_s=timing["decode"], total_s=total,
            output_tokens_per_s=num_output / total, peak_memory_gb=self._peak_memory_gb(),
            capture_s=timing["capture"], merge_s=merge_s)
        return SampleResult(completions, stats)

    def _prepare_weights(self, adapters: list[int], merge: bool) -> None:
        """The used adapters' LoRA where decode reads it. When they all hold one version (one adapter, or
        adapters all at their initial values), that version alone: stacked, merged or skipped if zero; else
        every used adapter's factors, each row masked to its own (never merged)."""
        versions = self.versions.of(adapters or [0])
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
            self.versions.check(adapter)
        return list(adapters)

    def _sample_ids(self, ids: list[list[int]], adapters: list[int], cfg: SamplingConfig,
                    generators: list[torch.Generator], stop: StopRule | None, stop_at: float | None,
                    on_complete: OnComplete | None, idle: Idle | None) -> tuple[list[list[RowState]], dict]:
        rows: list[list[RowState]] = [[] for _ in ids]
        lengths = [len(p) for p in ids]
        work = initial_work(lengths, cfg.num_samples)
        timing = {"prefill": 0.0, "decode": 0.0, "capture": 0.0, "prompt_tokens": 0, "batches": 0, "ooms": 0}
        while work and (stop_at is None or time.monotonic() < stop_at):
            batch, per_prompt, rest = next_batch(work, lengths, cfg.max_new_tokens, self.shape, self._limits(cfg))
            try:
                results = self._run_batch([ids[i] for i in batch], [adapters[i] for i in batch], per_prompt, cfg,
                                          PromptNoise([generators[i] for i in batch], per_prompt), stop, timing,
                                          stop_at, self._streamer(on_complete, batch, per_prompt, rows), idle)
            except torch.OutOfMemoryError:
                results = None
            if results is None:  # outside the except block, so the failed batch's tensors are freed
                self._shrink_after_oom(len(batch) * per_prompt)
                work = [(i, per_prompt) for i in batch] + rest  # the same work, planned again under the new cap
                timing["ooms"] += 1
                continue
            work = rest
            for k, i in enumerate(batch):
                rows[i].extend(results[k * per_prompt:(k + 1) * per_prompt])
        return rows, timing

    def _streamer(self, on_complete: OnComplete | None, batch: list[int], per_prompt: int,
                  rows: list[list[RowState]]) -> Callable[[int, RowState], None] | None:
        """`generate`'s `on_row_end` for a batch of prompts `batch`: its row k is sample number
        (samples the prompt had before this batch) + k % per_prompt of prompt batch[k // per_prompt]."""
        if on_complete is None:
            return None
        first = [len(rows[i]) for i in batch]

        def on_row_end(k: int, row: RowState) -> None:
            on_complete(batch[k // per_prompt], first[k // per_prompt] + k % per_prompt, self._completions([row])[0])
        return on_row_end

    def _limits(self, cfg: SamplingConfig) -> BatchLimits:
        """This call's batch limits: the row cap, and on a GPU what available memory allows (kept decoders give
        theirs back when a new batch needs it)."""
        cap = cfg.max_batch_size or (1 << 30 if self.device.type == "cuda" else CPU_ROW_CAP)
        cap = min(cap, self.row_cap_after_oom or cap)
        if self.memory is None:
            return BatchLimits(cap, None, self.is_fast)
        return BatchLimits(cap, SAFETY * (self.memory.available() + (self.decoders.nbytes if self.decoders else 0)),
                           self.is_fast)

    def _shrink_after_oom(self, failed_rows: int) -> None:
        if failed_rows <= 1:
            raise torch.OutOfMemoryError("out of memory with a single sequence per batch")
        self.row_cap_after_oom = failed_rows // 2
        self.release_sampler_memory()

    def release_sampler_memory(self) -> None:
        """Drops the decoders kept between calls (their caches and CUDA graphs); the next call rebuilds them."""
        if self.decoders is not None:
            self.decoders.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _run_batch(self, prompts: list[list[int]], adapters: list[int], per_prompt: int, cfg: SamplingConfig,
                   noise: PromptNoise, stop: StopRule | None, timing: dict, stop_at: float | None,
                   on_row_end: Callable[[int, RowState], None] | None, idle: Idle | None) -> list[RowState]:
        if self.is_fast:
            need = batch_bytes(self.shape, len(prompts), per_prompt, max(map(len, prompts)), cfg.max_new_tokens, True)
            available = (lambda: SAFETY * self.memory.available()) if self.memory else (lambda: float("inf"))
            decoder = self.decoders.get(len(prompts), per_prompt, cfg, need, available)
            decoder.load(prompts, adapters)
        else:  # one prompt per batch, through the model's own forward with the prompt's adapter active
            self._activate(adapters[0])
            decoder = CacheDecoder(self.lm, prompts, per_prompt, self.autocast_dtype)
        captured = decoder.capture_s
        start = time.perf_counter()
        logits = decoder.prefill()
        self._sync()
        prefilled = time.perf_counter()
        stop_ids = [] if cfg.ignore_eos else self.codec.stop_ids
        rows = generate(decoder, logits, cfg, stop_ids, noise, self.codec.tokenizer, stop, stop_at, on_row_end, idle)
        capture = decoder.capture_s - captured
        timing["prefill"] += prefilled - start
        timing["decode"] += time.perf_counter() - prefilled - capture
        timing["capture"] += capture
        timing["prompt_tokens"] += sum(len(p) for p in prompts)
        timing["batches"] += 1
        return rows

    def _completions(self, rows: list[RowState]) -> list[Completion]:
        texts = self.codec.decode([r.tokens[:r.end - (r.finish_reason == "eos")] for r in rows])
        return [Completion(text[:r.text_end] if r.text_end is not None else text, r.end, r.finish_reason)
                for text, r in zip(texts, rows)]

    # --- fine-tuning --------------------------------------------------------------------------------

    def finetune(self, examples: Sequence[Example], cfg: FinetuneConfig, seed: int = 0, adapter: int = 0,
                 stop_at: float | None = None) -> FinetuneStats:
        """Trains `adapter`'s LoRA on (prompt, completion) pairs; the loss covers the completion and its end
        token. The adapter's optimizer state carries over between calls until its `reset`; other adapters
        are untouched. No step starts at or after `stop_at` (time.monotonic())."""
        self.versions.check(adapter)
        if not examples:
            raise ValueError("finetune needs at least one example")
        seqs = [self.codec.encode_example(p, c) for p, c in examples]
        self._sync()  # the base weights' restore after sampling, if still running, is waited for here, untimed
        self._activate(adapter)
        self.versions.changed(adapter)  # before training: an interrupted call leaves no cache believing the old values
        return self.finetuner.run(seqs, cfg, seed, adapter, stop_at)

    def reset(self, adapter: int | None = None) -> None:
        """`adapter`'s LoRA (None: every adapter's) back to its initial values, in place, and its optimizer
        state cleared."""
        if adapter is not None:
            self.versions.check(adapter)
        for k in range(self.num_adapters) if adapter is None else [adapter]:
            self.finetuner.reset(k)
            self.versions.reset(k)

    def _activate(self, adapter: int) -> None:
        """Makes `adapter` the one the model's own forward (training, `CacheDecoder`) computes with."""
        if adapter != self.active_adapter:
            self.model.set_adapter(self.adapter_names[adapter])  # also makes only its parameters trainable
            self.active_adapter = adapter

    def save_adapter(self, path: str | Path, adapter: int = 0) -> None:
        """Writes `adapter`'s adapter_model.safetensors and adapter_config.json into `path` (peft's format,
        which vLLM reads)."""
        self.versions.check(adapter)
        name, path = self.adapter_names[adapter], Path(path)
        self.model.save_pretrained(str(path), selected_adapters=[name])
        if name != "default":  # peft writes the files of any other adapter into a folder named after it
            for written in (path / name).iterdir():
                written.replace(path / written.name)
            (path / name).rmdir()

    def load_adapter(self, path: str | Path, adapter: int = 0) -> None:
        """Copies saved LoRA weights into `adapter` in place (same rank and targets); clears its optimizer."""
        self.versions.check(adapter)
        weights = _adapter_weights(path, self.device)  # its errors before anything changes
        self.versions.changed(adapter)
        _set_adapter(self.model, weights, self.adapter_names[adapter], path)
        self.finetuner.clear_optimizer(adapter)

    def save_checkpoint(self, path: str | Path, adapter: int = 0) -> None:
        """`save_adapter`, plus the adapter's optimizer state (training_state.pt): enough to go on training."""
        self.save_adapter(path, adapter)
        torch.save(self.finetuner.optimizer_state(adapter), Path(path) / TRAINING_STATE)

    def load_checkpoint(self, path: str | Path, adapter: int = 0) -> None:
        """Puts a `save_checkpoint` back: the LoRA values and the optimizer state (the warm-up goes on too)."""
        state = torch.load(Path(path) / TRAINING_STATE, map_location=self.device)
        self.load_adapter(path, adapter)
        self.finetuner.load_optimizer_state(adapter, state)

    # --- helpers ------------------------------------------------------------------------------------

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _peak_memory_gb(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 1e9 if self.device.type == "cuda" else 0.0
