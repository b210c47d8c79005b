"""Sampling: the shared-prefix decoder against the model's own forward, token choice, stop rules."""

import torch
from tiny_lm import COMPLETION, OTHER_PROMPT, PROMPT, one_thread, tiny_engine, tokenizer  # noqa: F401 (fixtures)

from arcsl.config import FinetuneConfig, SamplingConfig
from arcsl.engine.sampler import CHECK_EVERY, EAGER_OPS, CacheDecoder, SharedPrefixDecoder, compiled_ops, generate
from arcsl.engine.token_choice import PromptNoise
from arcsl.prompting import code_end


def texts(result):
    return [[c.text for c in cs] for cs in result.completions]


def test_greedy_shared_prefix_matches_naive_generate(tokenizer):
    engine = tiny_engine(tokenizer)
    cfg = SamplingConfig(num_samples=3, temperature=0, max_new_tokens=40)
    result = engine.sample([PROMPT, OTHER_PROMPT], cfg)  # two prompts of different lengths in one batch
    assert result.stats.num_batches == 1
    for prompt, completions in zip([PROMPT, OTHER_PROMPT], result.completions):
        ids = torch.tensor([engine.codec.encode_prompt(prompt)] * 3)  # the naive way: the prompt once per sample
        out = engine.lm.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=engine.codec.stop_ids,
                                 pad_token_id=engine.codec.pad_id)
        for row, completion in zip(out[:, ids.shape[1]:].tolist(), completions):
            end = next((i for i, t in enumerate(row) if t in engine.codec.stop_ids), len(row))
            assert completion.text == tokenizer.decode(row[:end])
            assert completion.num_tokens == min(end + 1, 40)


def test_seeded_sampling_is_reproducible_and_matches_the_per_sample_cache(tokenizer):
    engine = tiny_engine(tokenizer)
    prompt = engine.codec.encode_prompt(PROMPT)

    def run(decoder_type, seed):
        if decoder_type is CacheDecoder:
            decoder = CacheDecoder(engine.lm, [prompt], 6, None)
        else:
            decoder = SharedPrefixDecoder(engine.weights, 1, 6, 29, False)
            decoder.load([prompt])
        cfg = SamplingConfig(max_new_tokens=30, temperature=1.0, top_p=0.9)
        rows = generate(decoder, decoder.prefill(), cfg, [], PromptNoise([torch.Generator().manual_seed(seed)], 6), None)
        return [r.tokens[:r.end] for r in rows]

    shared = run(SharedPrefixDecoder, 7)
    assert shared == run(SharedPrefixDecoder, 7)
    assert shared == run(CacheDecoder, 7)  # same draws, same distribution: same tokens
    assert shared != run(SharedPrefixDecoder, 8)
    assert len({tuple(t) for t in shared}) > 1  # the samples of one prompt differ from each other


def test_a_prompts_samples_depend_on_its_seed_not_on_the_prompts_beside_it(tokenizer):
    engine = tiny_engine(tokenizer)
    cfg = SamplingConfig(num_samples=3, max_new_tokens=20, temperature=1.0)

    def texts(prompts, seeds):
        return [[c.text for c in cs] for cs in engine.sample(prompts, cfg, seed=seeds).completions]

    [alone] = texts([PROMPT], [5])
    assert texts([OTHER_PROMPT, PROMPT, OTHER_PROMPT], [1, 5, 2])[1] == alone  # other neighbours, other places
    assert texts([PROMPT, PROMPT], [5, 6])[0] == alone and texts([PROMPT], [6])[0] != alone


class ScriptedDecoder:
    """Logits that force each row's scripted tokens (then token 0), to test the loop's stop rules."""

    can_narrow = False

    def __init__(self, rows: list[list[int]], vocab_size: int):
        self.rows, self.vocab_size, self.num_rows, self.num_steps = rows, vocab_size, len(rows), 0

    def logits(self, position: int) -> torch.Tensor:
        out = torch.full((self.num_rows, self.vocab_size), -1e9)
        for i, row in enumerate(self.rows):
            out[i, row[position] if position < len(row) else 0] = 0.0
        return out

    def prefill(self):
        return self.logits(0)

    def step(self, tokens, step):
        self.num_steps += 1
        return self.logits(step + 1)


def test_a_stop_rule_cuts_where_it_says_and_end_tokens_still_stop(tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    fenced = tokenizer("Sure:\n```python\nx = 1\n```\nand more text", add_special_tokens=False).input_ids
    plain = tokenizer("no code here", add_special_tokens=False).input_ids + [eot]
    decoder = ScriptedDecoder([fenced, plain], len(tokenizer))
    cfg = SamplingConfig(max_new_tokens=60, temperature=0)
    rows = generate(decoder, decoder.prefill(), cfg, [eot], None, tokenizer, stop=code_end)
    closing = next(n for n in range(1, len(fenced) + 1) if code_end(tokenizer.decode(fenced[:n])))
    assert (rows[0].finish_reason, rows[0].end) == ("stop", closing)
    assert tokenizer.decode(rows[0].tokens[:rows[0].end])[:rows[0].text_end] == "Sure:\n```python\nx = 1\n```"
    assert (rows[1].finish_reason, rows[1].end) == ("eos", len(plain))


def test_decoding_ends_once_every_sample_has_stopped(tokenizer):
    decoder = ScriptedDecoder([[7, 8, 1], [9, 1]], len(tokenizer))
    cfg = SamplingConfig(max_new_tokens=500, temperature=0)
    rows = generate(decoder, decoder.prefill(), cfg, [1], None, tokenizer)
    assert [r.end for r in rows] == [3, 2]
    assert decoder.num_steps < CHECK_EVERY  # not 499: the batch stops at the first check after all ended


def greedy_tokens(engine, ops, prompts, rows_per_prompt=2, steps=24, adapters=None):
    decoder = SharedPrefixDecoder(engine.weights, len(prompts), rows_per_prompt, steps - 1, False, ops)
    decoder.load([engine.codec.encode_prompt(p) for p in prompts], adapters)
    cfg = SamplingConfig(max_new_tokens=steps, temperature=0)
    return [r.tokens for r in generate(decoder, decoder.prefill(), cfg, [], None, None)]


def test_the_compiled_decode_step_gives_the_eager_tokens(tokenizer):
    # torch.compile traces each decode piece whole (fullgraph); the "eager" backend runs the traced graphs as
    # they are, so this checks the tracing. Inductor's fused kernels are checked against this CPU path on a
    # GPU by bench/bench_engine.py (compiling them on a CPU takes minutes).
    engine = tiny_engine(tokenizer)
    prompts = [PROMPT, OTHER_PROMPT]
    assert greedy_tokens(engine, compiled_ops("eager"), prompts) == greedy_tokens(engine, EAGER_OPS, prompts)


def test_the_compiled_decode_step_gives_the_eager_tokens_with_mixed_adapters(tokenizer):
    engine = tiny_engine(tokenizer, num_adapters=2)
    engine.finetune([(PROMPT, COMPLETION)] * 3, FinetuneConfig(learning_rate=3e-3, max_seq_len=256,
                                                               max_tokens_per_micro_batch=256), adapter=1)
    engine.weights.prepare_mixed({0: engine.versions[0], 1: engine.versions[1]})
    prompts, adapters = [PROMPT, PROMPT], [0, 1]
    eager = greedy_tokens(engine, EAGER_OPS, prompts, adapters=adapters)
    assert eager[0] != eager[2]  # rows 0-1 read adapter 0, rows 2-3 adapter 1: their tokens differ
    assert greedy_tokens(engine, compiled_ops("eager"), prompts, adapters=adapters) == eager


def test_narrowing_to_some_prompts_decodes_them_as_the_full_batch_would(tokenizer):
    engine = tiny_engine(tokenizer, num_adapters=2)
    engine.finetune([(PROMPT, COMPLETION)] * 3, FinetuneConfig(learning_rate=3e-3, max_seq_len=256,
                                                               max_tokens_per_micro_batch=256), adapter=1)
    engine.weights.prepare_mixed({0: engine.versions[0], 1: engine.versions[1]})
    prompts = [engine.codec.encode_prompt(p) for p in (PROMPT, OTHER_PROMPT, PROMPT)]
    decoder = SharedPrefixDecoder(engine.weights, 3, 2, 15, False)

    def greedy(narrow_at=None):
        decoder.load(prompts, [0, 0, 1])
        logits, tokens, rows = decoder.prefill(), [], torch.arange(6)
        for step in range(12):
            picked = logits.argmax(-1)
            tokens.append(dict(zip(rows.tolist(), picked.tolist())))
            if step == narrow_at:
                decoder.keep_prompts([0, 2])  # prompt 1's rows (2, 3) leave
                rows, picked = rows[[0, 1, 4, 5]], picked[[0, 1, 4, 5]]
            logits = decoder.step(picked, step)
        return [[t[r] for t in tokens if r in t] for r in range(6)]

    full, narrowed = greedy(), greedy(narrow_at=4)
    assert decoder.can_narrow and decoder.num_rows == 4
    for r in (0, 1, 4, 5):
        assert narrowed[r] == full[r]
    assert narrowed[2] == full[2][:5] and narrowed[0] != narrowed[4]  # adapter 1's rows stayed adapter 1's
    assert greedy() == full  # the next load restores the full batch


class NarrowingDecoder(ScriptedDecoder):
    """A scripted decoder of `num_prompts` prompts that records how `generate` narrows it."""
    can_narrow, device = True, torch.device("cpu")

    def __init__(self, rows, vocab_size, rows_per_prompt):
        super().__init__(rows, vocab_size)
        self.rows_per_prompt, self.live, self.kept, self.fed = rows_per_prompt, list(range(len(rows))), [], []

    def logits(self, position):
        return super().logits(position)[self.live]

    def keep_prompts(self, keep):
        m = self.rows_per_prompt
        self.kept.append(keep)
        self.live = [self.live[p * m + i] for p in keep for i in range(m)]

    def step(self, tokens, step):
        self.fed.append(len(tokens))
        return super().step(tokens, step)


def test_a_prompt_whose_samples_all_stopped_leaves_the_batch(tokenizer):
    long = [5] * 40 + [1]
    decoder = NarrowingDecoder([[7, 1], [8, 9, 1], long, [6, 1]], len(tokenizer), rows_per_prompt=2)
    cfg = SamplingConfig(max_new_tokens=100, temperature=0)
    rows = generate(decoder, decoder.prefill(), cfg, [1], None, tokenizer)
    assert decoder.kept == [[1]]  # prompt 0 (rows 0, 1) stopped before the first check; prompt 1 runs on
    assert decoder.fed[CHECK_EVERY - 2] == 4 and decoder.fed[CHECK_EVERY - 1] == 2  # narrowed at the first check
    assert [r.tokens[:r.end] for r in rows] == [[7, 1], [8, 9, 1], long, [6, 1]]


def test_a_row_is_heard_at_the_check_where_it_stops_and_a_row_cut_by_the_deadline_is_never(tokenizer):
    decoder = ScriptedDecoder([[7, 1], [5] * 40 + [1], [6] * 200], len(tokenizer))
    heard, waits = [], []
    rows = generate(decoder, decoder.prefill(), SamplingConfig(max_new_tokens=100, temperature=0), [1], None,
                    tokenizer, on_row_end=lambda i, row: heard.append((i, row.end, decoder.num_steps)),
                    idle=waits.append)
    assert heard == [(0, 2, CHECK_EVERY - 1), (1, 41, 3 * CHECK_EVERY - 1), (2, 100, 99)]  # as each check finds it
    assert [r.finish_reason for r in rows] == ["eos", "eos", "length"]
    assert waits == [0] * (100 // CHECK_EVERY + 1)  # on CPU, one look per check: nothing to wait for
    decoder = ScriptedDecoder([[1], [5, 5, 1]], len(tokenizer))
    heard = []
    rows = generate(decoder, decoder.prefill(), SamplingConfig(max_new_tokens=100, temperature=0), [1], None,
                    tokenizer, stop_at=0.0, on_row_end=lambda i, row: heard.append(i))
    assert [r.finish_reason for r in rows] == ["eos", "deadline"] and heard == [0]


def test_the_engine_streams_each_sample_once_as_it_returns_it(tokenizer):
    engine = tiny_engine(tokenizer)
    heard, waits = {}, []

    def on_complete(i, j, completion):
        assert (i, j) not in heard
        heard[i, j] = completion

    def first_e(text):  # a stop rule that ends samples at different lengths
        return text.index("e") + 1 if "e" in text else None

    cfg = SamplingConfig(num_samples=3, max_new_tokens=40, temperature=1.0)
    result = engine.sample([PROMPT, OTHER_PROMPT], cfg, seed=3, stop=first_e, on_complete=on_complete,
                           idle=waits.append)
    assert heard == {(i, j): c for i, cs in enumerate(result.completions) for j, c in enumerate(cs)}
    assert {c.finish_reason for c in heard.values()} == {"stop", "length"} and waits and set(waits) == {0}
