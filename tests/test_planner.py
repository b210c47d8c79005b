"""The batch planner, a pure function of shapes and a memory budget: tested on CPU with made-up GPU numbers."""

from arcsl.engine.planner import (BatchLimits, ModelShape, batch_bytes, initial_work, next_batch, plan_batches,
                                  round_up)

LLAMA_8B = ModelShape(num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, hidden_size=4096,
                      intermediate_size=14336, vocab_size=128256)
GB = 1e9


def unlimited(max_rows: int = 1 << 30, shares: bool = True) -> BatchLimits:
    return BatchLimits(max_rows, None, shares)


def test_longest_prompts_come_first_and_ties_keep_their_order():
    assert initial_work([100, 300, 100, 200], 8) == [(1, 8), (3, 8), (0, 8), (2, 8)]


def test_prompts_asking_as_many_samples_share_a_batch_up_to_the_row_cap():
    plan = plan_batches([1000] * 5, 8, 256, LLAMA_8B, unlimited(max_rows=16))
    assert plan == [([0, 1], 8), ([2, 3], 8), ([4], 8)]


def test_a_prompt_with_more_samples_than_the_cap_is_split_over_batches():
    assert plan_batches([50], 10, 64, LLAMA_8B, unlimited(max_rows=4)) == [([0], 4), ([0], 4), ([0], 2)]


def test_the_fallback_decoder_takes_one_prompt_a_batch():
    assert plan_batches([50, 50], 2, 64, LLAMA_8B, unlimited(shares=False)) == [([0], 2), ([1], 2)]


def test_a_batch_stays_within_the_memory_budget():
    one_prompt = batch_bytes(LLAMA_8B, 1, 128, 1000, 1024, True)
    limits = BatchLimits(1 << 30, 2.5 * one_prompt, True)
    plan = plan_batches([1000] * 4, 128, 1024, LLAMA_8B, limits)
    assert [len(b) for b, _ in plan] == [2, 2]
    assert all(batch_bytes(LLAMA_8B, len(b), n, 1000, 1024, True) <= limits.memory_bytes for b, n in plan)


def test_samples_of_one_prompt_are_halved_until_they_fit():
    budget = batch_bytes(LLAMA_8B, 1, 40, 4000, 1024, True)  # 64 rows do not fit, 32 do
    batch, per_prompt, rest = next_batch([(0, 64)], [4000], 1024, LLAMA_8B, BatchLimits(1 << 30, budget, True))
    assert (batch, per_prompt, rest) == ([0], 32, [(0, 32)])


def test_sharing_the_prompt_cache_saves_a_prompt_copy_per_sample():
    shared = batch_bytes(LLAMA_8B, 1, 128, 4000, 256, True)
    copied = batch_bytes(LLAMA_8B, 1, 128, 4000, 256, False)
    kv_per_token = 2 * 32 * 8 * 128 * 2  # K and V, bf16, every layer: 128 KiB
    assert copied - shared == kv_per_token * 127 * round_up(4000, 256)
    assert copied > 70 * GB > 10 * shared  # why the fast path batches 128 samples of a long prompt on one GPU


def test_no_memory_budget_on_cpu_leaves_only_the_row_cap():
    plan = plan_batches([8000] * 3, 64, 4096, LLAMA_8B, unlimited(max_rows=64))
    assert plan == [([0], 64), ([1], 64), ([2], 64)]
