"""The engine: prompt rendering, special tokens, reset, adapters (one or several), batching under memory limits,
loading."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from tiny_lm import COMPLETION, OTHER_PROMPT, PROMPT, one_thread, tiny_engine, tiny_llama, tokenizer  # noqa: F401

from arcsl.config import FinetuneConfig, ModelConfig, SamplingConfig
from arcsl.engine import decode_weights
from arcsl.engine.hf import HFEngine, load_engine
from arcsl.engine.sampler import SharedPrefixDecoder

GREEDY = SamplingConfig(num_samples=2, temperature=0, max_new_tokens=30)
TRAIN = FinetuneConfig(learning_rate=3e-3, max_seq_len=256, max_tokens_per_micro_batch=256)


def greedy_texts(engine) -> list[list[str]]:
    return [[c.text for c in cs] for cs in engine.sample([PROMPT, OTHER_PROMPT], GREEDY).completions]


def test_chat_prompt_is_the_template_then_the_prefix_with_a_single_bos(tokenizer):
    engine = tiny_engine(tokenizer)
    text = engine.codec.render(PROMPT)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nHere is the code:\n")
    ids = engine.codec.encode_prompt(PROMPT)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids) == text


def test_end_of_turn_comes_from_the_chat_template_and_padding_is_neither(tokenizer):
    engine = tiny_engine(tokenizer)
    assert tokenizer.convert_ids_to_tokens(engine.codec.end_of_turn_id) == "<|eot_id|>"
    assert set(engine.codec.stop_ids) == {engine.codec.end_of_turn_id, tokenizer.eos_token_id}
    assert tokenizer.convert_ids_to_tokens(engine.codec.pad_id) == "<|finetune_right_pad_id|>"


def test_reset_gives_bit_identical_greedy_outputs_to_a_fresh_adapter(tokenizer):
    engine = tiny_engine(tokenizer)
    fresh = greedy_texts(engine)
    engine.finetune([(PROMPT, COMPLETION)] * 5, TRAIN)
    assert greedy_texts(engine) != fresh
    engine.reset()
    assert greedy_texts(engine) == fresh
    assert greedy_texts(tiny_engine(tokenizer)) == fresh  # a new engine, same seeds
    decoder = SharedPrefixDecoder(engine.weights, 1, 1, 1, False)
    new = SharedPrefixDecoder(tiny_engine(tokenizer).weights, 1, 1, 1, False)
    decoder.load([engine.codec.encode_prompt(PROMPT)])
    new.load([engine.codec.encode_prompt(PROMPT)])
    assert torch.equal(decoder.prefill(), new.prefill())  # bit for bit, not only the argmax
    # and training after a reset repeats training from scratch: the optimizer state was cleared too
    first = engine.finetune([(PROMPT, COMPLETION)] * 3, TRAIN).losses
    engine.reset()
    assert engine.finetune([(PROMPT, COMPLETION)] * 3, TRAIN).losses == first


def test_a_saved_adapter_loads_into_a_fresh_engine(tokenizer, tmp_path):
    trained = tiny_engine(tokenizer)
    trained.finetune([(PROMPT, COMPLETION)] * 5, TRAIN)
    trained.save_adapter(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 8
    other = tiny_engine(tokenizer)
    other.load_adapter(tmp_path)
    assert greedy_texts(other) == greedy_texts(trained)


def base_weights(engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.lm.parameters() if not p.requires_grad]


def test_merged_and_unmerged_lora_decode_like_the_model_and_the_base_weights_come_back_exactly(tokenizer):
    engine = tiny_engine(tokenizer)
    fresh = greedy_texts(engine)
    engine.finetune([(PROMPT, COMPLETION)] * 5, TRAIN)
    before = base_weights(engine)
    merged = engine.sample([PROMPT, OTHER_PROMPT], replace(GREEDY, merge_lora=True)).completions
    assert all(torch.equal(a, b) for a, b in zip(before, base_weights(engine)))  # restored bit for bit
    unmerged = engine.sample([PROMPT, OTHER_PROMPT], replace(GREEDY, merge_lora=False)).completions
    assert [[c.text for c in cs] for cs in merged] == [[c.text for c in cs] for cs in unmerged] != fresh
    ids = torch.tensor([engine.codec.encode_prompt(PROMPT)])  # the model's own forward, LoRA layers and all
    out = engine.lm.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=engine.codec.stop_ids,
                             pad_token_id=engine.codec.pad_id)[0, ids.shape[1]:].tolist()
    end = next((i for i, t in enumerate(out) if t in engine.codec.stop_ids), len(out))
    assert merged[0][0].text == tokenizer.decode(out[:end])


def test_the_base_weights_come_back_when_sampling_fails_with_the_lora_merged(tokenizer, monkeypatch):
    engine = tiny_engine(tokenizer)
    engine.finetune([(PROMPT, COMPLETION)] * 2, TRAIN)
    before = base_weights(engine)

    def fail(*args):
        assert engine.weights.is_merged  # the failure happens while the weights hold the LoRA
        raise RuntimeError("failed mid-sampling")

    monkeypatch.setattr(engine, "_sample_ids", fail)
    with pytest.raises(RuntimeError, match="mid-sampling"):
        engine.sample([PROMPT], GREEDY)
    assert all(torch.equal(a, b) for a, b in zip(before, base_weights(engine)))


def test_decoders_are_kept_across_calls_and_read_the_current_lora(tokenizer):
    engine = tiny_engine(tokenizer)
    greedy_texts(engine)
    [decoder] = engine.decoders.kept.values()
    engine.finetune([(PROMPT, COMPLETION)] * 5, TRAIN)
    for merge in (True, False):
        kept = engine.sample([PROMPT, OTHER_PROMPT], replace(GREEDY, merge_lora=merge)).completions
        assert list(engine.decoders.kept.values()) == [decoder]  # same caches (and, on a GPU, the same graphs)
        engine.release_sampler_memory()
        rebuilt = engine.sample([PROMPT, OTHER_PROMPT], replace(GREEDY, merge_lora=merge)).completions
        assert kept == rebuilt
        decoder = engine.decoders.kept[next(iter(engine.decoders.kept))]


def test_out_of_memory_halves_the_batch_and_retries(tokenizer, monkeypatch):
    engine = tiny_engine(tokenizer)
    expected = greedy_texts(engine)
    prefill = SharedPrefixDecoder.prefill

    def small_memory(self):
        if self.num_rows > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return prefill(self)

    monkeypatch.setattr(SharedPrefixDecoder, "prefill", small_memory)
    result = engine.sample([PROMPT, OTHER_PROMPT], GREEDY)
    assert [[c.text for c in cs] for cs in result.completions] == expected
    assert (result.stats.num_oom_retries, result.stats.num_batches) == (1, 2)
    assert engine.row_cap_after_oom == 2  # later calls start below the size that failed


def test_the_samples_of_a_prompt_are_split_over_batches_when_they_exceed_the_batch_size(tokenizer):
    engine = tiny_engine(tokenizer)
    cfg = SamplingConfig(num_samples=5, temperature=0, max_new_tokens=10, max_batch_size=2)
    result = engine.sample([PROMPT, OTHER_PROMPT], cfg)
    assert result.stats.num_batches == 6 and [len(cs) for cs in result.completions] == [5, 5]
    assert len({c.text for c in result.completions[0]}) == 1  # greedy: every split gives the same text


def test_an_engine_without_tokenizer_takes_token_ids(tokenizer):
    engine = HFEngine(tiny_llama(tokenizer), None, ModelConfig(model="tiny", lora_rank=4))
    cfg = SamplingConfig(num_samples=3, max_new_tokens=8, ignore_eos=True)
    result = engine.sample([[5, 6, 7], [8, 9]], cfg)
    assert result.stats.num_output_tokens == 2 * 3 * 8
    assert engine.finetune([([5, 6, 7], [9, 10])], FinetuneConfig()).num_loss_tokens == 3
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.sample([PROMPT], cfg)


def test_load_engine_reads_the_model_and_tokenizer_from_a_directory(tokenizer, tmp_path):
    tiny_llama(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    engine = load_engine(ModelConfig(model=str(tmp_path), device="cpu", lora_rank=4, lora_targets="attention"))
    assert engine.lm.dtype == torch.float32 and engine.codec.render(PROMPT) == tiny_engine(tokenizer).codec.render(PROMPT)
    lora = {n.split(".")[-4] for n, p in engine.model.named_parameters() if p.requires_grad}
    assert lora == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_load_engine_refuses_4bit_without_a_gpu():
    with pytest.raises(ValueError, match="load-in-4bit"):
        load_engine(ModelConfig(model="unused", device="cpu", load_in_4bit=True))


@pytest.mark.parametrize("make", [
    lambda: SamplingConfig(top_p=0), lambda: SamplingConfig(temperature=-1), lambda: SamplingConfig(num_samples=0),
    lambda: FinetuneConfig(max_seq_len=9000, max_tokens_per_micro_batch=8192),
    lambda: FinetuneConfig(learning_rate=0),
    lambda: ModelConfig(device="tpu"), lambda: ModelConfig(lora_rank=0), lambda: ModelConfig(lora_dropout=1.0),
    lambda: ModelConfig(num_adapters=0), lambda: ModelConfig(gpu_memory_gb=-1),
])
def test_configs_reject_bad_values(make):
    with pytest.raises(ValueError):
        make()


# --- several adapters ---------------------------------------------------------------------------------

SHORT = "```python\nprint('hello world')\n```"


def adapter_params(engine, adapter: int) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.finetuner.params[adapter]]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def three_adapters(tokenizer, **lora) -> HFEngine:
    """Adapter 0 fresh, adapters 1 and 2 trained on different completions."""
    engine = tiny_engine(tokenizer, num_adapters=3, **lora)
    engine.finetune([(PROMPT, COMPLETION)] * 5, TRAIN, adapter=1)
    engine.finetune([(PROMPT, SHORT), (OTHER_PROMPT, SHORT)] * 3, TRAIN, adapter=2)
    return engine


def alone(engine, prompts, adapters, cfg) -> list[list[str]]:
    """Each prompt sampled in a call of its own, through its adapter alone."""
    return [[c.text for c in engine.sample([p], cfg, adapters=[k]).completions[0]] for p, k in zip(prompts, adapters)]


def test_num_adapters_gives_adapters_that_all_start_as_a_one_adapter_engine(tokenizer):
    engine = tiny_engine(tokenizer, num_adapters=3)
    single = tiny_engine(tokenizer)
    assert len(engine.finetuner.params) == 3 and len(engine.finetuner.optimizers) == 3
    assert all(same(adapter_params(engine, k), adapter_params(single, 0)) for k in range(3))
    params = [{id(p) for p in ps} for ps in engine.finetuner.params]
    assert not params[0] & params[1] and not params[1] & params[2]  # their own tensors, not shared ones
    assert [[c.text for c in cs] for cs in engine.sample([PROMPT], GREEDY, adapters=[2]).completions] \
        == greedy_texts(single)[:1]


@pytest.mark.parametrize("merge", [True, False])
def test_a_mixed_adapter_call_gives_each_prompt_the_greedy_texts_of_its_adapter_alone(tokenizer, merge):
    engine = three_adapters(tokenizer)
    prompts, adapters = [PROMPT, PROMPT, OTHER_PROMPT, PROMPT], [0, 1, 2, 2]
    cfg = replace(GREEDY, merge_lora=merge)
    expected = alone(engine, prompts, adapters, cfg)
    assert len({texts[0] for texts in (expected[0], expected[1], expected[3])}) == 3  # the adapters differ
    result = engine.sample(prompts, cfg, adapters=adapters)
    assert engine.weights.is_mixed and result.stats.num_batches == 1  # one batch for all three adapters
    assert [[c.text for c in cs] for cs in result.completions] == expected


def test_a_mixed_call_reads_each_adapters_current_lora_and_refreshes_only_those_that_changed(tokenizer, monkeypatch):
    engine = three_adapters(tokenizer)
    prompts, adapters = [PROMPT, PROMPT, PROMPT], [0, 1, 2]
    before = engine.sample(prompts, GREEDY, adapters=adapters).completions
    engine.finetune([(PROMPT, COMPLETION)] * 3, TRAIN, adapter=2)  # adapter 2 now learns adapter 1's text
    refreshed, stack = [], decode_weights._stack_factors

    def recording(proj, adapter, *out):
        refreshed.append(adapter)
        stack(proj, adapter, *out)

    monkeypatch.setattr(decode_weights, "_stack_factors", recording)
    mixed = [[c.text for c in cs] for cs in engine.sample(prompts, GREEDY, adapters=adapters).completions]
    assert set(refreshed) == {"adapter2"}
    assert mixed[2] != [c.text for c in before[2]]
    assert mixed == alone(engine, prompts, adapters, replace(GREEDY, merge_lora=False))


def test_adapters_in_one_state_sample_through_the_one_adapter_path(tokenizer):
    engine = tiny_engine(tokenizer, num_adapters=2)
    fresh = engine.sample([PROMPT, OTHER_PROMPT], GREEDY, adapters=[0, 1])
    assert not engine.weights.is_mixed and not engine.weights.apply_lora  # fresh adapters add nothing
    engine.finetune([(PROMPT, COMPLETION)] * 3, TRAIN, adapter=1)
    engine.reset(1)
    assert engine.sample([PROMPT, OTHER_PROMPT], GREEDY, adapters=[0, 1]).completions == fresh.completions
    assert not engine.weights.is_mixed  # a reset adapter is back in the initial state, bit for bit


def test_finetuning_one_adapter_leaves_the_others_unchanged(tokenizer):
    engine = tiny_engine(tokenizer, num_adapters=3)
    engine.finetune([(PROMPT, SHORT)] * 2, TRAIN, adapter=2)
    before = [adapter_params(engine, k) for k in range(3)]
    fresh_texts = engine.sample([PROMPT], GREEDY, adapters=[0]).completions
    engine.finetune([(PROMPT, COMPLETION)] * 3, TRAIN, adapter=1)
    assert same(adapter_params(engine, 0), before[0]) and same(adapter_params(engine, 2), before[2])
    assert not same(adapter_params(engine, 1), before[1])
    assert engine.sample([PROMPT], GREEDY, adapters=[0]).completions == fresh_texts


def test_reset_of_one_adapter_resets_only_it_and_reset_without_one_resets_all(tokenizer):
    engine = tiny_engine(tokenizer, num_adapters=2)
    initial = adapter_params(engine, 0)
    engine.finetune([(PROMPT, COMPLETION)] * 2, TRAIN, adapter=0)
    engine.finetune([(PROMPT, SHORT)] * 2, TRAIN, adapter=1)
    trained = adapter_params(engine, 0)
    engine.reset(1)
    assert same(adapter_params(engine, 1), initial) and same(adapter_params(engine, 0), trained)
    assert not engine.finetuner.optimizers[1].state and engine.finetuner.optimizers[0].state
    engine.finetune([(PROMPT, SHORT)] * 2, TRAIN, adapter=1)
    engine.reset()
    assert all(same(adapter_params(engine, k), initial) for k in range(2))
    assert not any(o.state for o in engine.finetuner.optimizers)


def test_each_adapter_has_its_own_optimizer_state_and_warm_up(tokenizer):
    cfg = replace(TRAIN, warmup_steps=3)
    first, second = [(PROMPT, COMPLETION)] * 2, [(OTHER_PROMPT, COMPLETION)] * 2
    straight = tiny_engine(tokenizer, num_adapters=2)
    straight.finetune(first, cfg, adapter=0)
    expected = straight.finetune(second, cfg, adapter=0).losses
    interleaved = tiny_engine(tokenizer, num_adapters=2)
    interleaved.finetune(first, cfg, adapter=0)
    interleaved.finetune([(PROMPT, SHORT)] * 3, cfg, adapter=1)  # between adapter 0's two calls
    assert interleaved.finetune(second, cfg, adapter=0).losses == expected
    assert same(adapter_params(interleaved, 0), adapter_params(straight, 0))
    assert interleaved.finetuner.num_steps == [4, 3]


def test_seeded_sampling_with_mixed_adapters_is_reproducible(tokenizer):
    engine = three_adapters(tokenizer)
    cfg = SamplingConfig(num_samples=3, temperature=1.0, max_new_tokens=20)

    def run(seed):
        return [[c.text for c in cs] for cs in engine.sample([PROMPT, OTHER_PROMPT], cfg, seed, [1, 2]).completions]

    assert run(5) == run(5) != run(6)


def test_an_adapter_saved_from_one_adapter_loads_into_another(tokenizer, tmp_path):
    engine = three_adapters(tokenizer)
    engine.save_adapter(tmp_path, adapter=2)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 8
    assert (tmp_path / "adapter_model.safetensors").is_file() and not any(p.is_dir() for p in tmp_path.iterdir())
    other = tiny_engine(tokenizer, num_adapters=2)
    other.load_adapter(tmp_path, adapter=1)
    expected = engine.sample([PROMPT, OTHER_PROMPT], GREEDY, adapters=[2, 2]).completions
    assert other.sample([PROMPT, OTHER_PROMPT], GREEDY, adapters=[1, 1]).completions == expected
    assert same(adapter_params(other, 0), adapter_params(tiny_engine(tokenizer), 0))  # adapter 0 untouched


def test_without_the_fast_path_a_mixed_call_samples_each_prompt_with_its_adapter(tokenizer):
    engine = three_adapters(tokenizer, use_dora=True)
    assert not engine.is_fast
    prompts, adapters = [PROMPT, PROMPT, PROMPT], [0, 1, 2]
    expected = alone(engine, prompts, adapters, GREEDY)
    assert len({texts[0] for texts in expected}) == 3
    assert [[c.text for c in cs] for cs in engine.sample(prompts, GREEDY, adapters=adapters).completions] == expected


@pytest.mark.parametrize("call", [
    lambda e, path: e.sample([PROMPT, PROMPT], GREEDY, adapters=[0, 2]),
    lambda e, path: e.sample([PROMPT], GREEDY, adapters=[-1]),
    lambda e, path: e.finetune([(PROMPT, SHORT)], TRAIN, adapter=2),
    lambda e, path: e.reset(7),
    lambda e, path: e.save_adapter(path, adapter=2),
    lambda e, path: e.load_adapter(path, adapter=-1),
])
def test_a_bad_adapter_index_is_a_value_error_naming_it_and_num_adapters(tokenizer, tmp_path, call):
    engine = tiny_engine(tokenizer, num_adapters=2)
    with pytest.raises(ValueError, match=r"adapter (2|-1|7) does not exist: this engine has num_adapters=2"):
        call(engine, tmp_path)


def test_adapters_must_give_one_adapter_per_prompt(tokenizer):
    engine = tiny_engine(tokenizer, num_adapters=2)
    with pytest.raises(ValueError, match="adapters has 1 entries for 2 prompts"):
        engine.sample([PROMPT, OTHER_PROMPT], GREEDY, adapters=[1])


def test_the_engine_boundary_and_the_loop_import_no_torch():
    code = ("import sys, arcsl.engine.types, arcsl.engine.planner, arcsl.engine.adapters, arcsl.loop; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_loaded_adapter_is_never_sampled_with_the_values_it_replaced(tokenizer, tmp_path):
    engine = tiny_engine(tokenizer, num_adapters=2)
    engine.finetune([(PROMPT, COMPLETION)] * 5, TRAIN, adapter=0)
    engine.save_adapter(tmp_path / "a", adapter=0)
    engine.finetune([(OTHER_PROMPT, "no")] * 5, TRAIN, adapter=1)
    prompts = [PROMPT, PROMPT]
    for merge in (True, False):  # adapter 1 alone (stacked or merged), then mixed with adapter 0
        cfg = replace(GREEDY, merge_lora=merge)
        before = engine.sample(prompts[:1], cfg, adapters=[1]).completions
        engine.load_adapter(tmp_path / "a", adapter=1)
        after = engine.sample(prompts[:1], cfg, adapters=[1]).completions
        assert after != before and after == engine.sample(prompts[:1], cfg, adapters=[0]).completions
        mixed = engine.sample(prompts, cfg, adapters=[0, 1]).completions
        assert mixed[0] == mixed[1] == after[0]
        engine.finetune([(OTHER_PROMPT, "no")] * 5, TRAIN, adapter=1)  # adapter 1 differs again for the next pass


def test_sampling_ends_at_stop_at_without_the_samples_it_had_not_finished(tokenizer, monkeypatch):
    import time

    import arcsl.engine.hf
    import arcsl.engine.sampler

    engine = tiny_engine(tokenizer)
    engine.finetune([(PROMPT, "ok"), (OTHER_PROMPT, "ok")] * 15, TRAIN)  # some samples now end after 3 tokens
    cfg = SamplingConfig(num_samples=4, max_new_tokens=64, max_batch_size=4)  # a batch per prompt
    past = engine.sample([PROMPT, OTHER_PROMPT], cfg, stop_at=0.0)  # already past: no batch starts
    assert past.completions == [[], []] and past.stats.num_batches == 0 and past.stats.num_samples == 0
    full = engine.sample([PROMPT, OTHER_PROMPT], cfg).completions

    class Clock:  # each look at the clock takes a second: the deadline passes during the first batch
        now = 0.0

        def monotonic(self):
            self.now += 1.0
            return self.now

        perf_counter = staticmethod(time.perf_counter)

    clock = Clock()
    monkeypatch.setattr(arcsl.engine.hf, "time", clock)
    monkeypatch.setattr(arcsl.engine.sampler, "time", clock)
    lengths = {c.num_tokens for cs in full for c in cs}
    assert min(lengths) == 3 < max(lengths)  # "ok" and the end token, or more: the cuts below keep some, drop some
    for stop_at, steps in ((2.5, 2), (3.5, 3), (4.5, 4)):  # late after 2 steps (all still running), 3, 4
        clock.now = 0.0
        cut = engine.sample([PROMPT, OTHER_PROMPT], cfg, stop_at=stop_at)
        assert cut.stats.num_batches == 1  # the other prompt's batch never starts
        first = max(cut.completions, key=len)
        assert cut.completions == [first, []] or cut.completions == [[], first]
        uncut = full[cut.completions.index(first)]
        assert first == [c for c in uncut if c.num_tokens <= steps]  # the finished ones, as uncut
        assert cut.stats.num_samples == len(first)


def test_every_adapter_starts_from_a_saved_adapter_and_reset_returns_to_it(tokenizer, tmp_path):
    greedy = replace(GREEDY, num_samples=1)
    trained = tiny_engine(tokenizer)
    trained.finetune([(PROMPT, COMPLETION)] * 30, TRAIN)
    trained.save_adapter(tmp_path / "start")
    [[learned]] = trained.sample([PROMPT], greedy).completions
    assert learned.text != greedy_texts(tiny_engine(tokenizer))[0][0]  # training changed what greedy writes
    engine = tiny_engine(tokenizer, adapter=str(tmp_path / "start"), num_adapters=2)
    for adapter in (0, 1):
        assert engine.sample([PROMPT], greedy, adapters=[adapter]).completions == [[learned]]
    engine.finetune([(PROMPT, "ok")] * 20, TRAIN, adapter=1)
    assert engine.sample([PROMPT], greedy, adapters=[1]).completions != [[learned]]
    engine.reset(1)
    assert engine.sample([PROMPT], greedy, adapters=[1]).completions == [[learned]]  # back to the saved adapter
    merged = tiny_engine(tokenizer, adapter=str(tmp_path / "start"), merge_adapter=True)
    assert merged.initial_lora_is_zero  # its own LoRA starts from zero, on the merged weights
    assert merged.sample([PROMPT], greedy).completions == [[learned]]


def test_a_saved_adapter_of_other_lora_settings_is_refused_unless_merged(tokenizer, tmp_path):
    tiny_engine(tokenizer).save_adapter(tmp_path / "r8")
    with pytest.raises(ValueError, match=r"its LoRA settings differ: r 8 \(this run: 4\)"):
        HFEngine(tiny_llama(tokenizer), tokenizer, ModelConfig(model="tiny", lora_rank=4, adapter=str(tmp_path / "r8")))
    HFEngine(tiny_llama(tokenizer), tokenizer, ModelConfig(model="tiny", lora_rank=4, adapter=str(tmp_path / "r8"),
                                                           merge_adapter=True))
    with pytest.raises(ValueError, match="no adapter_model.safetensors there"):
        tiny_engine(tokenizer, adapter=str(tmp_path))
    with pytest.raises(ValueError, match="--merge-adapter needs --adapter"):
        ModelConfig(merge_adapter=True)
