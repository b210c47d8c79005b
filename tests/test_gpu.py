"""GPU-only paths, skipped without CUDA: run on the device before an engine change lands, and the result goes
in the change's note. A small Llama-shaped model with random bf16 weights; nothing is downloaded.

Covered here: memory planning under `--gpu-memory-gb` (the activation probe's predictions, sampling and
fine-tuning without out-of-memory retries under a cap, with and without Liger's training kernels, kept
decoders making way). The other GPU-only paths have their `gpu` tests beside their CPU ones: each family's
CUDA graphs, compiled pieces and merged / stacked / mixed adapters in test_families.py, the attention kernels
in test_attention.py, the token-choice kernel in test_token_choice.py, Liger's kernels in
test_training_kernels.py.
"""

import importlib.util

import pytest
import torch

from arcsl.config import FinetuneConfig, ModelConfig, SamplingConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GiB = 2**30


@pytest.fixture(autouse=True)
def whole_gpu():
    """A capped engine caps the process: each test starts with the whole GPU and frees what it used."""
    torch.cuda.set_per_process_memory_fraction(1.0)
    yield
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def small_llama():
    """Llama-3.1-8B's layer and vocabulary sizes with 2 layers instead of 32: 1.5B parameters, 3 GB in bf16
    (its activations per token and per layer are the 8B's)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=16384,
                         bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").eval()


def engine(**model):
    from arcsl.engine.hf import HFEngine

    # by default the plain model's forward: the activation probe's measured limits (the xfail below) are its
    return HFEngine(small_llama(), None, ModelConfig(**{"lora_rank": 16, "num_adapters": 2,
                                                        "training_kernels": "none"} | model))


def random_example(length: int, completion: int, gen: torch.Generator) -> tuple[list[int], list[int]]:
    ids = torch.randint(10, 128000, (length,), generator=gen).tolist()
    return ids[:length - completion - 1], ids[length - completion - 1:-1]  # the engine adds the end token


@pytest.mark.xfail(strict=True, reason="known limit, measured 2026-12-03 on the H200: plain (not checkpointed) "
                   "activations grow faster than the 256->512-token probe's slope; at 4,096 tokens the estimate was "
                   "1.24 GB against 2.02 GB measured. A plain micro-batch chosen from it can run out once; the "
                   "backstop then checkpoints that length on")
def test_the_activation_probe_predicts_long_micro_batches_within_a_quarter():
    e = engine()
    e.finetune([random_example(64, 16, torch.Generator().manual_seed(0))], FinetuneConfig(max_seq_len=64,
                                                                                          max_tokens_per_micro_batch=64))
    model, finetuner = e.finetuner.activations, e.finetuner
    assert model is not None
    finetuner.lm.train()
    for tokens, loss_tokens, checkpointed in ((4096, 256, False), (8192, 1024, False), (8192, 1024, True)):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        finetuner._probe(tokens, loss_tokens, checkpointed)
        measured = torch.cuda.max_memory_allocated() - before
        predicted = model.bytes(tokens, loss_tokens, checkpointed)
        assert predicted == pytest.approx(measured, rel=0.25), (tokens, checkpointed, measured, predicted, model)
    finetuner.lm.eval()


@pytest.mark.parametrize("kernels", ["none", pytest.param("liger", marks=pytest.mark.skipif(
    importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel"))])
def test_a_capped_engine_samples_and_fine_tunes_without_running_out_of_memory(kernels):
    e = engine(gpu_memory_gb=8, training_kernels=kernels)  # weights 3 GB of it, the fast path's fused copies 1.8
    gen = torch.Generator().manual_seed(0)
    prompts = [random_example(700, 0, gen)[0] for _ in range(16)]
    cfg = SamplingConfig(num_samples=8, max_new_tokens=256, ignore_eos=True)
    for seed in (1, 2):  # the second call finds the first one's decoders kept
        stats = e.sample(prompts, cfg, seed=seed).stats
        assert stats.num_oom_retries == 0 and stats.peak_memory_gb * 1e9 <= 8 * GiB, (seed, stats)
    examples = [random_example(4096, 256, gen) for _ in range(2)]
    stats = e.finetune(examples, FinetuneConfig(max_seq_len=4096, max_tokens_per_micro_batch=8192))
    assert stats.num_oom_retries == 0 and stats.peak_memory_gb * 1e9 <= 8 * GiB, stats
    assert e.sample(prompts, cfg, seed=3, adapters=[0, 1] * 8).stats.num_oom_retries == 0  # mixed adapters


def test_without_a_cap_a_short_micro_batch_trains_plain():
    e = engine()
    stats = e.finetune([random_example(512, 64, torch.Generator().manual_seed(0))] * 2,
                       FinetuneConfig(max_seq_len=512, max_tokens_per_micro_batch=1024))
    assert (stats.num_checkpointed, stats.num_oom_retries) == (0, 0)


def test_a_kept_decoder_decodes_longer_prompts_than_before_as_a_new_one_does():
    """A decoder kept from a call of short prompts grows its prompt cache for longer ones (refine prompts are
    about twice a task's prompt); its graphs are captured again in a new pool (capturing into the old pool,
    freed with its graphs, failed an internal assert of torch's allocator on 2026-12-08)."""
    from arcsl.engine.hf import HFEngine
    from tiny_lm import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer()

    def tiny_gpu_engine() -> HFEngine:
        return HFEngine(tiny_llama(tokenizer).to("cuda"), tokenizer, ModelConfig(model="tiny", lora_rank=4,
                                                                                training_kernels="none"))

    short, long = ["Black Blue Red " * 4] * 2, ["Green Black Yellow " * 60, "Blue Red " * 90]
    greedy = SamplingConfig(num_samples=2, temperature=0.0, max_new_tokens=24, ignore_eos=True)
    kept = tiny_gpu_engine()
    kept.sample(short, greedy)
    grown = kept.sample(long, greedy).completions
    fresh = tiny_gpu_engine().sample(long, greedy).completions
    assert len(kept.codec.encode_prompt(long[0])) > 256  # past the short prompts' cache bucket
    assert [[c.text for c in cs] for cs in grown] == [[c.text for c in cs] for cs in fresh]
    assert all(c.text for cs in grown for c in cs)
