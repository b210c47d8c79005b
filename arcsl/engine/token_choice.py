"""Choosing each row's next token from its logits: greedy, or a draw with temperature, top-p and min-p.

A draw is an "exponential race": with one standard exponential variable E_i per token (from seeded
generators, so draws are reproducible), the token with the largest p_i / E_i is a draw from p, and the
largest among a subset is a draw from p restricted to that subset, renormalised. Top-p and min-p keep
upper sets of the distribution (every token at least as likely as a kept one is kept):
- top-p: token i is kept when the mass of the tokens strictly more likely than i is at most top_p (the
  textbook rule, "sort, keep the prefix whose mass before a token is <= top_p", up to ties);
- min-p: token i is kept when p_i >= min_p * max p (SOAR samples with min-p 0.05).
Both are measured on the distribution after temperature; with both set, a token must pass both.

No full-vocabulary sort: the winner is the first token *in race order* that is kept, and whether a token
is kept takes one pass (the mass above it). So: the race's leader among the tokens not yet ruled out;
if it fails, it and every token no more likely than it are out (the kept set is an upper set), and the
race is run again among the rest. The token with the largest p is always kept, so this ends; a draw
passes on the first try with probability >= top_p, so a row takes ~3 passes over its logits on average
(max and sum, the race, one check), against an O(vocab log vocab) sort. On a GPU one Triton program per
row runs these passes with its own loop (no host sync: the rows that need a second try do not hold up the
others' kernel launches); elsewhere the same algorithm runs as batched PyTorch operations. Written here
because the libraries that sample without sorting (e.g. FlashInfer's rejection samplers) draw their own
random numbers, and arcsl's samples are a function of each prompt's seed (`PromptNoise`).

`pick_tokens_by_sort` is the textbook method, kept as the reference that the tests and the engine
benchmark compare against.
"""

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch path runs
    triton = None


class PromptNoise:
    """Standard exponential noise for a batch's rows: prompt i's `rows_per_prompt` rows from `generators[i]`."""

    def __init__(self, generators: list[torch.Generator], rows_per_prompt: int):
        self.generators, self.rows_per_prompt = list(generators), rows_per_prompt

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        noise, m = torch.empty(like.shape, device=like.device, dtype=torch.float32), self.rows_per_prompt
        assert noise.shape[0] == m * len(self.generators), \
            f"{noise.shape[0]} rows for {len(self.generators)} prompts of {m} rows"
        for i, generator in enumerate(self.generators):
            noise[i * m:(i + 1) * m].exponential_(generator=generator)
        return noise

    def keep(self, prompts: list[int]) -> None:
        """Only these prompts (indices into the current ones) still draw: the batch was narrowed to them."""
        self.generators = [self.generators[p] for p in prompts]


TINY = 1e-30  # floor on the noise: an exponential draw of exactly 0 would make its token win whatever its p


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float, noise: PromptNoise | None,
                min_p: float = 0.0) -> torch.Tensor:
    """Next token per row; temperature 0 is greedy (no noise needed). Shape: (rows, vocab) -> (rows,).

    `logits` in any float dtype; the arithmetic is float32. Rows with a NaN logit give an unspecified token.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    e = noise(logits)
    if logits.is_cuda and triton is not None:
        return _pick_triton(logits, e, 1.0 / temperature, top_p, min_p)
    return _pick_torch(logits, e, 1.0 / temperature, top_p, min_p)


def _pick_torch(logits: torch.Tensor, e: torch.Tensor, inv_temperature: float, top_p: float,
                min_p: float) -> torch.Tensor:
    """The race with rejection of unkept leaders, as batched tensor operations (one pass per round)."""
    z = logits.float() * inv_temperature
    m = z.max(dim=-1, keepdim=True).values
    w = torch.exp(z - m)  # p times a row constant; the most likely token has 1
    total = w.sum(dim=-1, keepdim=True)
    score = z - torch.log(e.clamp_min(TINY))  # log(p / E) up to a row constant
    lowest = m + math.log(min_p) if min_p > 0 else torch.full_like(m, -math.inf)  # min-p, in z
    rows = torch.arange(z.shape[0], device=z.device)
    floor = torch.full_like(m, -math.inf)  # tokens at or below it are ruled out (exclusive bound on z)
    pick = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    todo = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
    while True:
        allowed = (z > floor) & (z >= lowest)
        leader = torch.where(allowed, score, -math.inf).argmax(dim=-1)
        z_leader = z[rows, leader][:, None]
        kept = z_leader >= lowest
        if top_p < 1:
            kept &= torch.where(z > z_leader, w, 0.0).sum(dim=-1, keepdim=True) <= top_p * total
        kept = kept.squeeze(-1)
        pick = torch.where(todo & kept, leader, pick)
        todo &= ~kept
        if not todo.any():
            return pick
        floor = torch.where(todo[:, None], z_leader, floor)


def pick_tokens_by_sort(logits: torch.Tensor, temperature: float, top_p: float, noise: PromptNoise | None,
                        min_p: float = 0.0) -> torch.Tensor:
    """`pick_tokens` by sorting every row: the textbook top-p (and min-p), the reference for tests and benchmarks."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() * (1.0 / temperature), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # mass before this token already exceeds top_p
    outside |= sorted_probs < min_p * sorted_probs[:, :1]
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    e = noise(logits).clamp_min(TINY).gather(-1, order)
    return order.gather(-1, (sorted_probs / e).argmax(dim=-1, keepdim=True)).squeeze(-1)


# --- the GPU kernel -----------------------------------------------------------------------------------

BLOCK = 2048  # logits per loop iteration of a row's program


def _pick_triton(logits: torch.Tensor, e: torch.Tensor, inv_temperature: float, top_p: float,
                 min_p: float) -> torch.Tensor:
    rows, vocab = logits.shape
    logits, e = logits.contiguous(), e.contiguous()
    out = torch.empty(rows, dtype=torch.long, device=logits.device)
    log_min_p = math.log(min_p) if min_p > 0 else -math.inf
    _race_kernel[(rows,)](logits, e, out, vocab, inv_temperature, log_min_p, top_p, CHECK_MASS=top_p < 1,
                          BLOCK=BLOCK, num_warps=16)
    return out


if triton is not None:
    @triton.jit
    def _race_kernel(logits_ptr, noise_ptr, out_ptr, vocab, inv_temperature, log_min_p, top_p,
                     CHECK_MASS: tl.constexpr, BLOCK: tl.constexpr):
        """One row per program: pass 1 finds the row's max, sum of exp and race leader; each later pass checks
        the current leader (mass strictly above it) and finds the next leader among the tokens above it."""
        row = tl.program_id(0).to(tl.int64)
        logits_ptr += row * vocab
        noise_ptr += row * vocab
        offsets = tl.arange(0, BLOCK)
        lowest_float = -3.4e38  # finite, so that exp(m_old - m_new) is never exp(nan)
        m = lowest_float
        total = 0.0
        best, leader = -float("inf"), 0
        for start in range(0, vocab, BLOCK):
            idx = start + offsets
            inside = idx < vocab
            z = tl.load(logits_ptr + idx, mask=inside, other=-float("inf")).to(tl.float32) * inv_temperature
            e = tl.load(noise_ptr + idx, mask=inside, other=1.0)
            m_new = tl.maximum(m, tl.max(z, 0))
            total = total * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
            m = m_new
            score = tl.where(inside, z - tl.log(tl.maximum(e, 1e-30)), -float("inf"))
            block_best = tl.max(score, 0)
            if block_best > best:  # strict: the first index wins ties, as torch.argmax
                best, leader = block_best, start + tl.argmax(score, 0, tie_break_left=True)
        lowest = m + log_min_p
        z_leader = tl.load(logits_ptr + leader).to(tl.float32) * inv_temperature
        kept = z_leader >= lowest
        if CHECK_MASS:
            kept = kept & (z_leader >= m)  # the most likely token needs no check: nothing is above it
        while not kept:
            above = 0.0
            best, next_leader = -float("inf"), leader
            for start in range(0, vocab, BLOCK):
                idx = start + offsets
                inside = idx < vocab
                z = tl.load(logits_ptr + idx, mask=inside, other=-float("inf")).to(tl.float32) * inv_temperature
                higher = z > z_leader
                if CHECK_MASS:
                    above += tl.sum(tl.where(higher, tl.exp(z - m), 0.0), 0)
                e = tl.load(noise_ptr + idx, mask=inside, other=1.0)
                score = tl.where(higher & (z >= lowest), z - tl.log(tl.maximum(e, 1e-30)), -float("inf"))
                block_best = tl.max(score, 0)
                if block_best > best:
                    best, next_leader = block_best, start + tl.argmax(score, 0, tie_break_left=True)
            ok = z_leader >= lowest
            if CHECK_MASS:
                ok = ok & (above <= top_p * total)
            # ruled out: it and every token no more likely; the next leader may pass without a pass of its own
            leader = tl.where(ok, leader, next_leader)
            z_leader = tl.load(logits_ptr + leader).to(tl.float32) * inv_temperature
            again = z_leader >= lowest
            if CHECK_MASS:
                again = again & (z_leader >= m)
            kept = ok | again
        tl.store(out_ptr + row, leader)
