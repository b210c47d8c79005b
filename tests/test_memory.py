"""Memory planning without running out: the fine-tuner checkpoints before a micro-batch that would not fit,
and kept decoders give way to a new one. Tested on CPU with made-up GPU figures (`FakeMemory`); the probe
that measures the figures on a GPU is in tests/test_gpu.py."""

import pytest
from tiny_lm import COMPLETION, PROMPT, one_thread, tiny_engine, tokenizer  # noqa: F401 (fixtures)

from arcsl.config import FinetuneConfig, SamplingConfig
from arcsl.engine.memory import ActivationModel, choose_checkpointing

MODEL = ActivationModel(fixed=100, per_token=10, fixed_checkpointed=100, per_checkpointed_token=2, per_loss_token=5)


class FakeMemory:
    """A GPU with `free` bytes available, as `GpuMemory.available` would say."""

    def __init__(self, free: float):
        self.free = free

    def available(self) -> float:
        return self.free


def test_activation_bytes_grow_with_tokens_and_loss_tokens():
    assert MODEL.bytes(1000, 100, False) == 100 + 10_000 + 500
    assert MODEL.bytes(1000, 100, True) == 100 + 2_000 + 500


def test_a_micro_batch_is_checkpointed_only_when_it_would_not_fit_plain():
    assert choose_checkpointing(1000, 100, MODEL, 10_600) == (False, True)
    assert choose_checkpointing(1000, 100, MODEL, 10_599) == (True, True)
    assert choose_checkpointing(1000, 100, MODEL, 2_599) == (True, False)  # not even checkpointed


def planned_engine(tokenizer, free: float):
    engine = tiny_engine(tokenizer)
    engine.finetuner.memory, engine.finetuner.activations = FakeMemory(free), MODEL
    return engine


def test_long_micro_batches_are_checkpointed_from_the_start_without_running_out(tokenizer):
    engine = planned_engine(tokenizer, 0)
    long, short = (engine.codec.encode_example(PROMPT, c) for c in (COMPLETION, "ok"))
    # the budget (90 % of free) holds the short example plain, the long one only checkpointed
    engine.finetuner.memory.free = MODEL.bytes(len(short[0]) + 2, len(long[0]) - long[1], False) / 0.9
    assert MODEL.bytes(len(long[0]), len(long[0]) - long[1], True) < 0.9 * engine.finetuner.memory.free
    examples = [(PROMPT, COMPLETION), (PROMPT, "ok"), (PROMPT, COMPLETION)]
    cfg = FinetuneConfig(learning_rate=3e-3, max_seq_len=256, max_tokens_per_micro_batch=256, examples_per_step=1)
    stats = engine.finetune(examples, cfg)
    assert (stats.num_oom_retries, stats.num_checkpointed) == (0, 2)  # the two long ones
    assert engine.finetuner.checkpoint_from_tokens is None  # nothing learnt from an error
    cfg.gradient_checkpointing = True
    assert stats.losses == pytest.approx(tiny_engine(tokenizer).finetune(examples, cfg).losses, rel=1e-5)


def test_the_samplers_memory_is_released_when_even_checkpointing_would_not_fit(tokenizer):
    engine = planned_engine(tokenizer, 0)
    engine.sample([PROMPT], SamplingConfig(num_samples=2, max_new_tokens=8))
    assert engine.decoders.kept
    released = []

    def release():
        released.append(True)
        engine.decoders.clear()
        engine.finetuner.memory.free = 1e12  # what the decoders held

    engine.finetuner.release_memory = release
    stats = engine.finetune([(PROMPT, COMPLETION)] * 2, FinetuneConfig(max_seq_len=256, examples_per_step=1))
    assert released == [True] and not engine.decoders.kept  # once: the memory stayed free
    assert (stats.num_oom_retries, stats.num_checkpointed) == (0, 0)  # plain, once the memory was back


def test_kept_decoders_make_way_for_a_new_one_that_needs_their_memory(tokenizer):
    engine = tiny_engine(tokenizer)
    cfg = SamplingConfig(num_samples=2, max_new_tokens=8)
    first = engine.decoders.get(1, 2, cfg)
    second = engine.decoders.get(2, 2, cfg, need=100, available=lambda: 1000)
    assert list(engine.decoders.kept.values()) == [first, second]  # room for both
    freed = iter([10, 10, 1000])  # each decoder dropped frees memory: the third look finds enough
    third = engine.decoders.get(3, 2, cfg, need=100, available=lambda: next(freed))
    assert list(engine.decoders.kept.values()) == [third]
    assert engine.decoders.get(3, 2, cfg, need=third.nbytes, available=lambda: 0) is third  # it holds what it needs
    fourth = engine.decoders.get(4, 2, cfg)
    assert engine.decoders.get(3, 2, cfg, need=third.nbytes + 100, available=lambda: 0) is third
    assert list(engine.decoders.kept.values()) == [third] and fourth.nbytes  # the other made way for its temporaries
