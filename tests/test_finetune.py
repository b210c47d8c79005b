"""Fine-tuning: the loss mask, the completion-only loss, batching, and learning one example by heart."""

import pytest
import torch
import torch.nn.functional as F
from tiny_lm import COMPLETION, PROMPT, one_thread, tiny_engine, tokenizer  # noqa: F401 (fixtures)

from arcsl.config import FinetuneConfig, SamplingConfig
from arcsl.engine import finetune
from arcsl.engine.finetune import collate, completion_loss, lr_factor, micro_batches
from arcsl.prompting import code_end

GREEDY = SamplingConfig(num_samples=1, temperature=0, max_new_tokens=60)


def test_loss_mask_covers_exactly_the_completion_and_its_end_token(tokenizer):
    engine = tiny_engine(tokenizer)
    short = engine.codec.encode_example(PROMPT, "ok")
    ids, mask, positions = collate([engine.codec.encode_example(PROMPT, COMPLETION), short], engine.codec.pad_id, "cpu")
    assert tokenizer.decode(ids[0][mask[0]]) == COMPLETION + "<|eot_id|>"
    assert tokenizer.decode(ids[0][~mask[0]]) == engine.codec.render(PROMPT)
    assert tokenizer.decode(ids[1][mask[1]]) == "ok<|eot_id|>"
    assert (ids[1, len(short[0]):] == engine.codec.pad_id).all() and not mask[1, len(short[0]):].any()
    assert engine.codec.pad_id not in engine.codec.stop_ids  # padding with EOS would teach the model never to stop
    assert positions is None  # padded rows: the model's own positions


def test_completion_loss_equals_the_full_logits_loss_on_the_masked_tokens(tokenizer):
    engine = tiny_engine(tokenizer)
    ids, mask, _ = collate([engine.codec.encode_example(PROMPT, COMPLETION)], engine.codec.pad_id, "cpu")
    with torch.no_grad():
        logits = engine.lm(input_ids=ids).logits[0, :-1]
        full = F.cross_entropy(logits[mask[0, 1:]], ids[0, 1:][mask[0, 1:]], reduction="sum")
        assert torch.allclose(completion_loss(engine.lm, ids, mask), full, rtol=1e-5)


def test_right_padding_needs_no_attention_mask(tokenizer):
    engine = tiny_engine(tokenizer)
    long, short = engine.codec.encode_example(PROMPT, COMPLETION), engine.codec.encode_example(PROMPT, "ok")
    with torch.no_grad():
        apart = sum(completion_loss(engine.lm, *collate([s], engine.codec.pad_id, "cpu")) for s in (long, short))
        together = completion_loss(engine.lm, *collate([long, short], engine.codec.pad_id, "cpu"))
    assert torch.allclose(apart, together, rtol=1e-5)


def test_packed_examples_attend_only_to_themselves_and_lose_what_they_lose_alone(tokenizer):
    engine = tiny_engine(tokenizer)
    long, short = engine.codec.encode_example(PROMPT, COMPLETION), engine.codec.encode_example(PROMPT, "ok")
    ids, mask, positions = collate([long, short], engine.codec.pad_id, "cpu", packing=True)
    assert ids.shape == (1, len(long[0]) + len(short[0])) and engine.codec.pad_id not in ids
    assert positions[0].tolist() == list(range(len(long[0]))) + list(range(len(short[0])))
    assert tokenizer.decode(ids[0][mask[0]]) == COMPLETION + "<|eot_id|>" + "ok<|eot_id|>"
    with torch.no_grad():
        apart = sum(completion_loss(engine.lm, *collate([s], engine.codec.pad_id, "cpu")) for s in (long, short))
        packed = completion_loss(engine.lm, ids, mask, positions)
        unmasked = completion_loss(engine.lm, ids, mask)  # one sequence: the short one sees the long one
    assert torch.allclose(apart, packed, rtol=1e-5) and not torch.allclose(apart, unmasked, rtol=1e-5)


def test_micro_batches_are_sorted_by_length_and_within_the_token_budget():
    seqs = [([0] * n, 1) for n in (5, 30, 12, 29, 6, 11)]
    batches = micro_batches(seqs, max_tokens=60)
    assert [[len(ids) for ids, _ in b] for b in batches] == [[30, 29], [12, 11, 6, 5]]
    assert all(len(b) * len(b[0][0]) <= 60 for b in batches)
    packed = micro_batches(seqs, max_tokens=45, packing=True)  # first fit, longest first, by real tokens
    assert [[len(ids) for ids, _ in b] for b in packed] == [[30, 12], [29, 11, 5], [6]]


def test_packing_trains_as_padding_does(tokenizer):
    examples = [(PROMPT, COMPLETION), (PROMPT, "ok"), (PROMPT, COMPLETION[:40])] * 2
    cfg = FinetuneConfig(learning_rate=3e-3, max_seq_len=256, max_tokens_per_micro_batch=512, examples_per_step=3)
    padded = tiny_engine(tokenizer).finetune(examples, cfg)
    cfg.packing = True
    packed = tiny_engine(tokenizer).finetune(examples, cfg)
    assert packed.num_steps == padded.num_steps == 2 and packed.losses == pytest.approx(padded.losses, rel=1e-4)


def test_examples_longer_than_max_seq_len_are_dropped(tokenizer):
    engine = tiny_engine(tokenizer)
    cfg = FinetuneConfig(max_seq_len=100, max_tokens_per_micro_batch=100)
    stats = engine.finetune([(PROMPT, "ok"), (PROMPT, COMPLETION * 3)], cfg)
    assert (stats.num_examples, stats.num_dropped, stats.num_steps) == (1, 1, 1)


def test_thirty_steps_on_one_example_make_greedy_decoding_reproduce_it(tokenizer):
    engine = tiny_engine(tokenizer)
    cfg = FinetuneConfig(learning_rate=3e-3, max_seq_len=256, max_tokens_per_micro_batch=256)
    stats = engine.finetune([(PROMPT, COMPLETION)] * 30, cfg)
    assert stats.num_steps == 30 and stats.losses[-1] < 0.2 * stats.losses[0]
    [[learned]] = engine.sample([PROMPT], GREEDY).completions
    assert (learned.text, learned.finish_reason) == (COMPLETION, "eos")  # it learned to stop, too
    [[stopped]] = engine.sample([PROMPT], SamplingConfig(num_samples=1, temperature=0, max_new_tokens=60),
                                stop=code_end).completions
    assert (stopped.text, stopped.finish_reason) == (COMPLETION[:COMPLETION.index("```\n", 3) + 3], "stop")


def test_gradient_checkpointing_gives_the_same_training(tokenizer):
    cfg = FinetuneConfig(learning_rate=3e-3, max_seq_len=256, max_tokens_per_micro_batch=256)
    plain = tiny_engine(tokenizer).finetune([(PROMPT, COMPLETION)] * 3, cfg).losses
    engine = tiny_engine(tokenizer)
    cfg.gradient_checkpointing = True
    checkpointed = engine.finetune([(PROMPT, COMPLETION)] * 3, cfg)
    assert checkpointed.losses == pytest.approx(plain, rel=1e-5)
    assert not engine.lm.is_gradient_checkpointing  # switched off again for sampling


def test_dora_trains_and_samples_through_the_modules_own_forward(tokenizer):
    engine = tiny_engine(tokenizer, use_dora=True)
    engine.finetune([(PROMPT, COMPLETION)] * 3, FinetuneConfig(learning_rate=3e-3, max_seq_len=256,
                                                                max_tokens_per_micro_batch=256))
    [[completion]] = engine.sample([PROMPT], GREEDY).completions
    ids = torch.tensor([engine.codec.encode_prompt(PROMPT)])
    out = engine.lm.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=engine.codec.stop_ids,
                             pad_token_id=engine.codec.pad_id)[0, ids.shape[1]:].tolist()
    end = next((i for i, t in enumerate(out) if t in engine.codec.stop_ids), len(out))
    assert completion.text == tokenizer.decode(out[:end])


def test_a_micro_batch_out_of_memory_is_retried_with_checkpointing_from_its_length_on(tokenizer, monkeypatch):
    engine = tiny_engine(tokenizer)
    long, short = (len(engine.codec.encode_example(PROMPT, c)[0]) for c in (COMPLETION, "ok"))
    loss = finetune.completion_loss

    def small_memory(lm, input_ids, loss_mask, position_ids):  # longer than `short`: only when checkpointed
        if input_ids.numel() > short and not lm.is_gradient_checkpointing:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return loss(lm, input_ids, loss_mask, position_ids)

    monkeypatch.setattr(finetune, "completion_loss", small_memory)
    examples = [(PROMPT, COMPLETION), (PROMPT, "ok"), (PROMPT, COMPLETION)]
    cfg = FinetuneConfig(learning_rate=3e-3, max_seq_len=256, max_tokens_per_micro_batch=256)
    stats = engine.finetune(examples, cfg)
    assert (stats.num_oom_retries, stats.num_checkpointed) == (1, 2)  # the first long one failed once
    assert engine.finetuner.checkpoint_from_tokens == long
    cfg.gradient_checkpointing = True
    assert stats.losses == pytest.approx(tiny_engine(tokenizer).finetune(examples, cfg).losses, rel=1e-5)


def test_the_learning_rate_warms_up_then_stays_or_decays_linearly_or_by_a_cosine():
    assert [lr_factor("constant", k, 2, 10) for k in range(4)] == pytest.approx([1 / 3, 2 / 3, 1, 1])
    assert [lr_factor("linear", k, 0, 4) for k in range(5)] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    assert [lr_factor("cosine", k, 0, 4) for k in (0, 2, 4, 9)] == pytest.approx([1, 0.5, 0, 0])
    assert [lr_factor("linear", k, 2, 6) for k in (2, 4)] == pytest.approx([1, 0.5])  # decay after the warm-up
    assert [lr_factor("linear", k, 0, 8, start=4) for k in (4, 6)] == pytest.approx([1, 0.5])  # a later call's


def test_a_decaying_schedule_spans_the_call_or_schedule_steps(tokenizer):
    engine = tiny_engine(tokenizer)
    cfg = FinetuneConfig(learning_rate=1e-3, lr_schedule="linear", max_seq_len=256, max_tokens_per_micro_batch=256)
    engine.finetune([(PROMPT, "ok")] * 4, cfg)  # steps 0-3 of a 4-step call: the last at a quarter
    assert engine.finetuner.optimizers[0].param_groups[0]["lr"] == pytest.approx(2.5e-4)
    engine.finetune([(PROMPT, "ok")] * 2, cfg)  # the next call (a round) decays again, over its own 2 steps
    assert engine.finetuner.optimizers[0].param_groups[0]["lr"] == pytest.approx(5e-4)
    cfg.schedule_steps = 8  # a longer training made of calls (arcsl finetune): steps 6-7 of 8
    engine.finetune([(PROMPT, "ok")] * 2, cfg)
    assert engine.finetuner.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 / 8)
