"""The batch planner, a pure function of shapes and a memory budget: tested on CPU with made-up GPU numbers."""

from tiny_lm import tokenizer  # noqa: F401 (fixture)

from arcsl.engine.planner import (ADAPTER_BYTES_PER_PARAM, BatchLimits, ModelShape, adapters_that_fit, batch_bytes,
                                  initial_work, next_batch, plan_batches, round_up)

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


# --- what the weights and adapters take -------------------------------------------------------------

def test_the_llama_8b_shape_counts_its_weights_and_lora_parameters():
    assert LLAMA_8B.num_params() == 8_030_261_248 - 4096 * 1  # 8.03B: every weight but the final norm's
    assert LLAMA_8B.lora_params(32, "all-linear") == 83_886_080
    assert LLAMA_8B.lora_params(16, ["q_proj", "v_proj", "lm_head"]) == 32 * 16 * (4096 * 2 + 4096 + 1024)


def test_lora_parameters_are_those_peft_creates(tokenizer):
    from peft import LoraConfig, get_peft_model
    from tiny_lm import tiny_llama

    model = tiny_llama(tokenizer)
    shape = ModelShape.from_config(model.config)
    for targets in ("all-linear", ["q_proj", "down_proj"]):
        peft = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=4, target_modules=targets))
        assert shape.lora_params(4, targets) == sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n)
    assert shape.num_params() + model.config.hidden_size == sum(p.numel() for p in model.parameters())


def test_adapters_take_half_of_what_the_weights_leave():
    per_adapter = 83_886_080 * ADAPTER_BYTES_PER_PARAM  # 1.17 GB at rank 32
    weights = LLAMA_8B.num_params() * 2
    assert adapters_that_fit(LLAMA_8B, weights + 8 * per_adapter, 32, "all-linear") == 4
    assert adapters_that_fit(LLAMA_8B, 24 * 2**30, 32, "all-linear") == 4  # a 24 GB card
    assert adapters_that_fit(LLAMA_8B, 24 * 2**30, 256, "all-linear") == 1  # never fewer than one
    assert adapters_that_fit(LLAMA_8B, 24 * 2**30, 256, "all-linear", bytes_per_weight=0.56) == 1
    assert adapters_that_fit(LLAMA_8B, 24 * 2**30, 64, "all-linear", bytes_per_weight=0.56) == 4
