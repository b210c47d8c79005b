"""Token choice: draws follow the exact top-p / min-p distribution, and the sort-free method picks the same
token as sorting, given the same noise (on CPU; on a GPU also the Triton kernel)."""

import pytest
import torch

from arcsl.engine.token_choice import PromptNoise, _pick_torch, pick_tokens, pick_tokens_by_sort

N = 40000  # draws per distribution: a total-variation distance of ~0.01 is then well above the noise


def noise(rows: int, seed: int = 0, device: str = "cpu") -> PromptNoise:
    return PromptNoise([torch.Generator(device).manual_seed(seed)], rows)


def exact(logits: torch.Tensor, temperature: float, top_p: float, min_p: float) -> torch.Tensor:
    """The distribution top-p and min-p define, by their definitions, token by token."""
    p = torch.softmax(logits.double() / temperature, dim=-1)
    keep = torch.tensor([p[p > pi].sum() <= top_p and pi >= min_p * p.max() for pi in p])
    return torch.where(keep, p, 0.0) / p[keep].sum()


@pytest.mark.parametrize("temperature, top_p, min_p", [(0.7, 1.0, 0.0), (1.0, 0.7, 0.0), (1.3, 0.9, 0.0),
                                                       (1.0, 1.0, 0.12), (1.0, 0.9, 0.3), (0.5, 0.2, 0.0)])
def test_draws_follow_the_exact_distribution(temperature, top_p, min_p):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.4, 0.0, -1.0, -3.0])
    picked = pick_tokens(logits.expand(N, -1), temperature, top_p, noise(N), min_p)
    freq = torch.bincount(picked, minlength=len(logits)).double() / N
    want = exact(logits, temperature, top_p, min_p)
    assert (freq[want == 0] == 0).all()  # never a token outside the kept set
    assert 0.5 * (freq - want).abs().sum() < 0.01  # total variation distance


def test_the_nucleus_is_kept_even_when_the_race_keeps_picking_outside_it():
    # one token holds 0.9, 3000 others share 0.1: with top-p 0.5 only the first is kept, while the unfiltered
    # race picks one of the others a tenth of the time, so rows need several rounds
    logits = torch.cat([torch.tensor([0.0]), torch.full((3000,), -10.3)])
    logits = logits + 0.01 * torch.randn(3001, generator=torch.Generator().manual_seed(1))
    assert (pick_tokens(logits.expand(2000, -1), 1.0, 0.5, noise(2000)) == 0).all()


@pytest.mark.parametrize("temperature, top_p, min_p", [(1.0, 0.95, 0.0), (0.8, 0.5, 0.0), (1.0, 1.0, 0.05),
                                                       (1.2, 0.9, 0.02), (1.0, 1.0, 0.0)])
def test_same_token_as_sorting_given_the_same_noise(temperature, top_p, min_p):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(300, 5000, generator=g) * torch.linspace(0.5, 6, 300)[:, None]  # flat to peaked rows
    fast = pick_tokens(logits, temperature, top_p, noise(300, seed=3), min_p)
    assert torch.equal(fast, pick_tokens_by_sort(logits, temperature, top_p, noise(300, seed=3), min_p))


def test_greedy_picks_the_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, -1.0, 0.0]])
    assert pick_tokens(logits, 0.0, 0.5, None).tolist() == [1, 0]


def test_rows_draw_from_their_own_prompts_generators():
    logits = torch.zeros(6, 50)
    two = PromptNoise([torch.Generator().manual_seed(4), torch.Generator().manual_seed(5)], 3)
    both = pick_tokens(logits, 1.0, 1.0, two)
    assert torch.equal(both[3:], pick_tokens(logits[3:], 1.0, 1.0, noise(3, seed=5)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature, top_p, min_p", [(1.0, 0.95, 0.0), (0.7, 0.3, 0.0), (1.0, 1.0, 0.05),
                                                       (1.0, 0.9, 0.05), (1.0, 1.0, 0.0)])
def test_gpu_kernel_picks_what_the_batched_method_and_sorting_pick(dtype, temperature, top_p, min_p):
    g = torch.Generator("cuda").manual_seed(6)
    # a Llama-sized vocabulary (not a multiple of the kernel's block), flat to peaked rows
    logits = (torch.randn(256, 128_256, generator=g, device="cuda")
              * torch.linspace(0.5, 8, 256, device="cuda")[:, None]).to(dtype)
    e = noise(256, seed=7, device="cuda")(logits)
    kernel = pick_tokens(logits, temperature, top_p, noise(256, seed=7, device="cuda"), min_p)
    batched = _pick_torch(logits, e, 1 / temperature, top_p, min_p)
    by_sort = pick_tokens_by_sort(logits, temperature, top_p, noise(256, seed=7, device="cuda"), min_p)
    assert torch.equal(kernel, batched)
    # sorting orders tied probabilities arbitrarily, so where the nucleus ends inside a tie it keeps an arbitrary
    # part of it (we keep all of it); bf16 logits tie often, float32 ones do not. Summation order differs too:
    # a token whose mass above sits within rounding of top_p may differ; with these logits none does
    if dtype == torch.float32:
        assert torch.equal(kernel, by_sort)
