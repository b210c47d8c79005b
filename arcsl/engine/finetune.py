"""LoRA fine-tuning on (prompt, completion) token sequences: a plain loop that lives as long as the engine.

What is covered:
- `Finetuner`: one AdamW (fused on GPU) per adapter over its LoRA parameters, created once; a linear
  warm-up counted from the adapter's last reset, then a constant, linear or cosine learning rate
  (`lr_factor`); gradient accumulation over micro-batches of up to a token budget, either length-sorted
  rows padded to their longest or (`packing`) examples packed into one row without padding; gradient
  clipping; optional gradient checkpointing; `reset(adapter)` copies the initial LoRA values back in place
  and drops that adapter's optimizer state (milliseconds). Every adapter starts from the same initial
  values (one copy is kept).
- memory, planned (GPU): before each micro-batch, its activation memory (`memory.ActivationModel`,
  measured once by a probe) is set against what the GPU has available; it is checkpointed only if it would
  not fit plain, and the sampler's kept memory is released first if even that would not fit. Short
  sequences keep training at full speed, long ones fit, and a capped GPU needs no out-of-memory retry.
  The activation model is measured on plain causal rows: a packed micro-batch under SDPA (a dense block
  mask) takes more, and may need the out-of-memory backstop below.
- out of memory (the backstop): the step is retried with gradient checkpointing for micro-batches as long as
  the one that failed (and longer ones, from then on), then once more after the sampler's kept memory is
  released.
- `collate`: right padding with a dedicated pad token and a loss mask over exactly the completion tokens
  (and the end token that closes them); packed, one row whose position ids restart at each example, from
  which transformers builds a block-diagonal causal mask (each example attends only to itself). A packed
  row's boundary predicts nothing: each example starts with prompt tokens, outside the loss mask.
- `completion_loss`: logits are computed only at the positions that predict completion tokens, so a
  4k-token prompt never materialises a 4k x vocab logits tensor.
- data parallelism (`DataParallel`, set by `arcsl finetune` when several processes train one LoRA): every
  process sees the same steps; each runs its share of a step's examples, the loss normalised by the whole
  step's completion tokens, and one all-reduce sums the gradients (and the loss), so every process takes the
  step one process would have taken, up to the order of the float sums.

What is not covered: training several adapters in one step (a call trains one; the caller makes it the
model's active adapter), data parallelism in the per-task rounds (there tasks are sharded over the workers,
not batches). Fused kernels (Liger's) are put in the model's forward by the engine at load
(`training_kernels`), not here.
"""

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arcsl.config import FinetuneConfig
from arcsl.engine.memory import SAFETY, ActivationModel, GpuMemory, choose_checkpointing, measure_activations
from arcsl.engine.tokens import Tokenized
from arcsl.engine.types import FinetuneStats


def collate(batch: list[Tokenized], pad_id: int, device,
            packing: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Ids, the loss mask (True on completion tokens and the end token) and position ids. Right-padded rows
    (b, T), position ids None (the model's own); packed, one row (1, sum of lengths), positions restarting at
    0 for each example."""
    if packing:
        ids = torch.tensor([t for seq, _ in batch for t in seq])
        loss_mask = torch.cat([torch.arange(len(seq)) >= n for seq, n in batch])
        positions = torch.cat([torch.arange(len(seq)) for seq, _ in batch])
        return ids[None].to(device), loss_mask[None].to(device), positions[None].to(device)
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, (ids, num_prompt) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        loss_mask[row, num_prompt:len(ids)] = True
    return input_ids.to(device), loss_mask.to(device), None


def completion_loss(lm, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                    position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy over the masked tokens. Shapes: (b, T) each -> scalar."""
    # No attention mask: with right padding, a causal mask alone keeps real tokens from seeing pads, and it
    # lets SDPA use its causal kernel with the KV heads unexpanded. Packed rows pass position ids that
    # restart, from which transformers makes the block-diagonal mask (it does so only without a mask).
    hidden = lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    predicts = loss_mask[:, 1:]  # hidden state i predicts token i + 1
    logits = lm.get_output_embeddings()(hidden[:, :-1][predicts]).float()
    return F.cross_entropy(logits, input_ids[:, 1:][predicts], reduction="sum")


def lr_factor(schedule: str, step: int, warmup_steps: int, horizon: int, start: int = 0) -> float:
    """The learning rate's multiplier at optimizer step `step` (0-based, since the adapter's reset): a linear
    warm-up over `warmup_steps`, then 1 (constant) or a linear or cosine decay from step `start` (or the
    warm-up's end, if later) that would reach 0 at step `horizon`."""
    warmup = min(1.0, (step + 1) / (warmup_steps + 1))
    if schedule == "constant":
        return warmup
    begin = max(start, warmup_steps)
    done = min(1.0, max(0.0, (step - begin) / max(1, horizon - begin)))
    return warmup * (1.0 - done if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * done)))


def num_steps(num_examples: int, cfg: FinetuneConfig) -> int:
    """The optimizer steps `cfg.num_epochs` epochs over `num_examples` examples take."""
    return cfg.num_epochs * -(-num_examples // cfg.examples_per_step)


def micro_batches(seqs: list[Tokenized], max_tokens: int, packing: bool = False) -> list[list[Tokenized]]:
    """Longest first; each micro-batch holds as many as fit in `max_tokens` padded tokens, or with `packing`
    in `max_tokens` tokens (first fit: each example goes to the first micro-batch it fits in)."""
    batches: list[list[Tokenized]] = []
    sizes: list[int] = []
    for seq in sorted(seqs, key=lambda s: len(s[0]), reverse=True):
        if packing:
            fit = next((i for i, size in enumerate(sizes) if size + len(seq[0]) <= max_tokens), None)
        else:
            grows = batches and (len(batches[-1]) + 1) * len(batches[-1][0][0]) <= max_tokens  # padded to the first
            fit = len(batches) - 1 if grows else None
        if fit is None:
            batches.append([seq])
            sizes.append(len(seq[0]))
        else:
            batches[fit].append(seq)
            sizes[fit] += len(seq[0])
    return batches


@dataclass(frozen=True, slots=True)
class DataParallel:
    """This process's place among `world_size` processes that train one LoRA together (torch.distributed is
    initialised by the caller)."""
    rank: int
    world_size: int

    def shard(self, seqs: list[Tokenized]) -> list[Tokenized]:
        """This process's share of a step's examples: dealt out longest first, so the tokens come out even."""
        return sorted(seqs, key=lambda s: len(s[0]), reverse=True)[self.rank::self.world_size]

    def sum(self, params: list[torch.nn.Parameter], loss: torch.Tensor) -> None:
        """Sums every process's gradients of `params` and `loss` in place, in one all-reduce."""
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]  # a share may be empty
        flat = torch.cat([g.flatten() for g in grads] + [loss.reshape(1).to(grads[0].dtype)])
        dist.all_reduce(flat)
        start = 0
        for p, g in zip(params, grads):
            p.grad = flat[start:start + g.numel()].view_as(g)
            start += g.numel()
        loss.copy_(flat[-1])


class Finetuner:
    """The training state of one engine: each adapter's LoRA parameters and optimizer, and their initial values.

    Args:
        params: per adapter, its LoRA parameters, in the same order for every adapter. The first adapter's
            values are the initial values of all: the others are set to them here.
        release_memory: frees memory held elsewhere (the sampler's kept caches) when a micro-batch needs it.
        memory: the GPU's available memory, to plan checkpointing; None (CPU): only the out-of-memory backstop.
    """

    def __init__(self, lm, params: list[list[torch.nn.Parameter]], pad_id: int,
                 autocast_dtype: torch.dtype | None, release_memory: Callable[[], None] | None = None,
                 memory: GpuMemory | None = None):
        shapes = [[p.shape for p in ps] for ps in params]
        assert all(s == shapes[0] for s in shapes), f"adapters differ in their LoRA parameters: {len(shapes)} adapters"
        self.lm, self.params, self.pad_id = lm, params, pad_id
        self.device = params[0][0].device
        self.autocast_dtype = autocast_dtype
        self.release_memory, self.memory = release_memory, memory
        self.activations: ActivationModel | None = None  # measured at the first GPU call (`measure_activations`)
        self.released = False  # whether this step released the sampler's memory (at most once a step)
        self.initial = [p.detach().clone() for p in params[0]]
        self.grad_bytes = 4 * sum(p.numel() for p in params[0])  # one adapter's float32 gradients
        # built once: per-round trainer construction was the largest overhead of the slow implementation
        self.optimizers = [torch.optim.AdamW(ps, lr=1e-4, fused=self.device.type == "cuda") for ps in params]
        self.num_steps = [0] * len(params)  # per adapter, optimizer steps since its last reset: warm-up and schedule
        self.decay = (0, 0)  # (start, end): the steps over which the running call's linear or cosine decay runs
        # sticky, learnt from out-of-memory errors: micro-batches of at least this many tokens (padding included) are
        # checkpointed (memory does not change between tasks, so neither does the limit)
        self.checkpoint_from_tokens: int | None = None
        self.counts = {"checkpointed": 0, "oom_retries": 0}
        self.micro_batch: tuple[int, bool] = (0, False)  # (tokens with padding, checkpointed) of the one running
        self.data_parallel: DataParallel | None = None  # set when several processes train this LoRA together
        for adapter in range(1, len(params)):
            self.reset(adapter)

    @torch.no_grad()
    def reset(self, adapter: int) -> None:
        """The adapter's initial LoRA values back in place, its optimizer state dropped: as good as fresh."""
        for p, p0 in zip(self.params[adapter], self.initial):
            p.copy_(p0)
        self.clear_optimizer(adapter)

    def clear_optimizer(self, adapter: int) -> None:
        optimizer = self.optimizers[adapter]
        optimizer.state.clear()  # AdamW re-creates zeroed moments at its next step
        optimizer.zero_grad(set_to_none=True)
        self.num_steps[adapter] = 0

    def optimizer_state(self, adapter: int) -> dict:
        """What training `adapter` further needs besides its LoRA values: its AdamW moments and step count."""
        return {"optimizer": self.optimizers[adapter].state_dict(), "num_steps": self.num_steps[adapter]}

    def load_optimizer_state(self, adapter: int, state: dict) -> None:
        self.optimizers[adapter].load_state_dict(state["optimizer"])
        self.num_steps[adapter] = state["num_steps"]

    def run(self, seqs: list[Tokenized], cfg: FinetuneConfig, seed: int, adapter: int = 0,
            stop_at: float | None = None) -> FinetuneStats:
        """Trains `adapter` (the model's active one) on `seqs` for `cfg.num_epochs` epochs; the order is
        shuffled with `seed`. No step starts at or after `stop_at` (time.monotonic(): a deadline). Examples
        longer than `cfg.max_seq_len` are dropped (counted in the stats), all of them if none fits."""
        kept = [s for s in seqs if len(s[0]) <= cfg.max_seq_len]
        if not kept:
            return FinetuneStats(num_examples=0, num_dropped=len(seqs), num_steps=0, num_tokens=0, num_loss_tokens=0,
                                 losses=[], seconds=0.0, examples_per_s=0.0, tokens_per_s=0.0, peak_memory_gb=0.0)
        rng = random.Random(seed)
        self.counts = {"checkpointed": 0, "oom_retries": 0}
        self.lm.train()
        if self.memory is not None and self.activations is None:  # once per engine
            if self.release_memory is not None:  # the probe must not be the one to run out of memory
                self.release_memory()
            self.activations = measure_activations(self._probe, self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start, losses = time.perf_counter(), []
        num_planned = num_steps(len(kept), cfg)
        # a decay over schedule_steps from the reset (a training made of calls), or over this call's steps
        first = self.num_steps[adapter]
        self.decay = (0, cfg.schedule_steps) if cfg.schedule_steps else (first, first + num_planned)
        try:
            for _ in range(cfg.num_epochs):
                order = rng.sample(kept, len(kept))
                for i in range(0, len(order), cfg.examples_per_step):
                    if stop_at is not None and time.monotonic() >= stop_at:
                        break
                    losses.append(self._step(order[i:i + cfg.examples_per_step], cfg, adapter))
            losses = torch.stack(losses).tolist() if losses else []  # one host sync for the whole call
        finally:
            self.lm.eval()
            self._set_checkpointing(False)
        seconds = time.perf_counter() - start
        num_tokens = cfg.num_epochs * sum(len(ids) for ids, _ in kept)
        return FinetuneStats(
            num_examples=len(kept), num_dropped=len(seqs) - len(kept), num_steps=len(losses),
            num_tokens=num_tokens, num_loss_tokens=cfg.num_epochs * sum(len(ids) - n for ids, n in kept),
            losses=losses, seconds=seconds, examples_per_s=cfg.num_epochs * len(kept) / seconds,
            tokens_per_s=num_tokens / seconds,
            peak_memory_gb=torch.cuda.max_memory_allocated(self.device) / 1e9 if self.device.type == "cuda" else 0.0,
            num_checkpointed=self.counts["checkpointed"], num_oom_retries=self.counts["oom_retries"],
            num_steps_skipped=num_planned - len(losses))

    def _step(self, seqs: list[Tokenized], cfg: FinetuneConfig, adapter: int) -> torch.Tensor:
        """One optimizer step over `seqs`; on out of memory, the step starts again with less memory use."""
        self.released = False
        while True:
            try:
                return self._try_step(seqs, cfg, adapter)
            except torch.OutOfMemoryError:
                pass
            # outside the except block, so the failed step's tensors are freed; the gradients accumulated so
            # far are dropped and the whole step is done again
            self.optimizers[adapter].zero_grad(set_to_none=True)
            self.counts["oom_retries"] += 1
            tokens, checkpointed = self.micro_batch
            if not checkpointed:
                self.checkpoint_from_tokens = min(tokens, self.checkpoint_from_tokens or tokens)
            elif self.release_memory is not None and not self.released:
                self._release()
            else:
                raise torch.OutOfMemoryError(f"out of memory on a micro-batch of {tokens} tokens, with "
                                             "gradient checkpointing and the sampler's memory released")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _try_step(self, seqs: list[Tokenized], cfg: FinetuneConfig, adapter: int) -> torch.Tensor:
        num_loss_tokens = sum(len(ids) - n for ids, n in seqs)  # the whole step's, whichever share runs here
        total = torch.zeros((), device=self.device)
        mine = self.data_parallel.shard(seqs) if self.data_parallel else seqs
        for k, batch in enumerate(micro_batches(mine, cfg.max_tokens_per_micro_batch, cfg.packing)):
            # padded, the longest first; or packed
            tokens = sum(len(ids) for ids, _ in batch) if cfg.packing else len(batch) * len(batch[0][0])
            limit = self.checkpoint_from_tokens
            checkpointed = cfg.gradient_checkpointing or (limit is not None and tokens >= limit)
            if self.activations is not None:
                checkpointed |= self._needs_checkpointing(tokens, sum(len(ids) - n for ids, n in batch), k > 0)
            self.micro_batch = (tokens, checkpointed)
            self._set_checkpointing(checkpointed)
            self.counts["checkpointed"] += checkpointed
            input_ids, loss_mask, positions = collate(batch, self.pad_id, self.device, cfg.packing)
            total += self._forward_backward(input_ids, loss_mask, positions, num_loss_tokens)
        if self.data_parallel is not None:
            self.data_parallel.sum(self.params[adapter], total)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params[adapter], cfg.max_grad_norm)
        optimizer = self.optimizers[adapter]
        start, end = self.decay
        factor = lr_factor(cfg.lr_schedule, self.num_steps[adapter], cfg.warmup_steps, end, start)
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = cfg.learning_rate * factor, cfg.weight_decay
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.num_steps[adapter] += 1
        return total

    def _forward_backward(self, input_ids: torch.Tensor, loss_mask: torch.Tensor, positions: torch.Tensor | None,
                          denominator: int) -> torch.Tensor:
        """The loss of one micro-batch over `denominator`, its gradients accumulated; returns it detached."""
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            loss = completion_loss(self.lm, input_ids, loss_mask, positions) / denominator
        loss.backward()
        return loss.detach()

    def _needs_checkpointing(self, tokens: int, loss_tokens: int, has_grads: bool) -> bool:
        """Whether a micro-batch must be checkpointed to fit in the memory available now (after the first
        micro-batch of a step, its gradients are allocated already); the sampler's memory is released first
        if even checkpointed it would not fit."""
        budget = SAFETY * self.memory.available() + (self.grad_bytes if has_grads else 0)  # counted in the fixed part
        checkpointed, fits = choose_checkpointing(tokens, loss_tokens, self.activations, budget)
        if not fits and not self.released and self.release_memory is not None:
            self._release()
            return self._needs_checkpointing(tokens, loss_tokens, has_grads)
        return checkpointed

    def _release(self) -> None:
        self.release_memory()
        self.released = True

    def _probe(self, tokens: int, loss_tokens: int, checkpointed: bool) -> None:
        """One forward and backward of a `tokens`-long sequence with the loss on its last `loss_tokens`;
        the gradients are dropped."""
        ids = torch.arange(tokens, device=self.device)[None] % self.lm.config.vocab_size
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, tokens - loss_tokens:] = True
        self._set_checkpointing(checkpointed)
        self._forward_backward(ids, mask, None, 1)
        self._set_checkpointing(False)
        for p in self.lm.parameters():
            p.grad = None

    def _set_checkpointing(self, enabled: bool) -> None:
        if enabled and not self.lm.is_gradient_checkpointing:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif not enabled and self.lm.is_gradient_checkpointing:
            self.lm.gradient_checkpointing_disable()
