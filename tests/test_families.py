"""The fast path for each model family it knows (Llama, Mistral, Qwen2/2.5, Qwen3): greedy texts identical to
the model's own forward with the LoRA merged, stacked and mixed; exact prefill logits; the base weights back
bit for bit; and a model it cannot compute falls back with the reason. Tiny random models, float32, CPU."""

import tempfile
from dataclasses import replace

import pytest
import torch
from tiny_lm import OTHER_PROMPT, PROMPT, one_thread, tokenizer  # noqa: F401 (fixtures)
from transformers import AutoConfig, AutoModelForCausalLM

from arcsl.config import FinetuneConfig, ModelConfig, SamplingConfig
from arcsl.engine.hf import HFEngine

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=1024, initializer_range=0.1, rms_norm_eps=1e-6)
FAMILIES = {
    "llama": dict(model_type="llama"),
    "llama-biases": dict(model_type="llama", attention_bias=True, mlp_bias=True),
    "mistral": dict(model_type="mistral", head_dim=24, sliding_window=None),
    "qwen2": dict(model_type="qwen2", use_sliding_window=False, tie_word_embeddings=False),  # q/k/v biases
    "qwen3": dict(model_type="qwen3", head_dim=24, tie_word_embeddings=True),  # q/k norms, head_dim != 64 / 4
}
GREEDY = SamplingConfig(num_samples=2, temperature=0, max_new_tokens=24)
TRAIN = FinetuneConfig(learning_rate=1e-2, num_epochs=2)


def family_model(tokenizer, family: str, seed: int = 0, **changes):
    settings = COMMON | FAMILIES[family] | changes
    config = AutoConfig.for_model(settings.pop("model_type"), vocab_size=len(tokenizer), **settings,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():  # biases and norm weights start at 0 and 1: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def trained_engine(tokenizer, family: str, num_adapters: int = 1) -> HFEngine:
    """An engine whose adapters each learnt something different (B factors not zero)."""
    engine = HFEngine(family_model(tokenizer, family), tokenizer,
                      ModelConfig(model=family, lora_rank=4, num_adapters=num_adapters))
    for adapter, completion in enumerate(["```python\nprint('hello world')\n```", "Black Blue Red Green"][:num_adapters]):
        engine.finetune([(PROMPT, completion), (OTHER_PROMPT, completion)] * 2, TRAIN, adapter=adapter)
    return engine


def own_forward_texts(engine: HFEngine, prompts, adapter: int = 0) -> list[str]:
    """Greedy texts from the model's own forward (peft's LoRA layers, unmerged), one per prompt."""
    engine._activate(adapter)
    texts = []
    for prompt in prompts:
        ids = torch.tensor([engine.codec.encode_prompt(prompt)])
        out = engine.lm.generate(ids, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                                 eos_token_id=engine.codec.stop_ids, pad_token_id=engine.codec.pad_id)
        new = out[0, ids.shape[1]:].tolist()
        end = next((i for i, t in enumerate(new) if t in engine.codec.stop_ids), len(new))
        texts.append(engine.codec.tokenizer.decode(new[:end]))
    return texts


def texts(result) -> list[list[str]]:
    return [[c.text for c in cs] for cs in result.completions]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_takes_the_fast_path_and_decodes_greedily_like_its_own_forward(tokenizer, family):
    engine = trained_engine(tokenizer, family)
    assert engine.is_fast, family
    base = [p.detach().clone() for p in engine.lm.parameters() if not p.requires_grad]
    expected = own_forward_texts(engine, [PROMPT, OTHER_PROMPT])
    for merge in (True, False):
        assert texts(engine.sample([PROMPT, OTHER_PROMPT], replace(GREEDY, merge_lora=merge))) == \
            [[t] * 2 for t in expected], (family, merge)
    assert all(torch.equal(a, b) for a, b in zip(base, (p for p in engine.lm.parameters() if not p.requires_grad)))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_decodes_mixed_adapters_like_each_adapter_alone(tokenizer, family):
    engine = trained_engine(tokenizer, family, num_adapters=2)
    expected = [own_forward_texts(engine, [PROMPT], adapter)[0] for adapter in (0, 1)]
    assert expected[0] != expected[1]  # the adapters learnt different things
    result = engine.sample([PROMPT, PROMPT], GREEDY, adapters=[0, 1])
    assert engine.weights.is_mixed and texts(result) == [[t] * 2 for t in expected]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_prefill_logits_are_its_own_forwards(tokenizer, family):
    engine = trained_engine(tokenizer, family)
    ids = engine.codec.encode_prompt(PROMPT)
    engine.weights.prepare(merge=False, lora_version=engine.versions[0], lora_is_zero=False)
    decoder = engine.decoders.get(1, 2, GREEDY)
    decoder.load([ids])
    ours = decoder.prefill()[0]
    with torch.no_grad():
        theirs = engine.lm(input_ids=torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family, changes, field", [
    ("mistral", {"sliding_window": 16}, "config.sliding_window=16"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 0}, "sliding_attention"),
    ("llama", {"hidden_act": "gelu"}, "config.hidden_act='gelu'"),
])
def test_a_model_the_fast_path_cannot_compute_falls_back_naming_the_field(tokenizer, family, changes, field):
    with pytest.warns(UserWarning, match="model's own forward") as caught:
        engine = HFEngine(family_model(tokenizer, family, **changes), tokenizer, ModelConfig(model=family, lora_rank=4))
    [message] = [str(w.message) for w in caught if "model's own forward" in str(w.message)]
    assert not engine.is_fast and field in message
    assert len(texts(engine.sample([PROMPT], GREEDY))[0]) == 2  # it still samples


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_each_family_with_graphs_and_compiled_decode_equals_its_own_forward(tokenizer, family):
    """float32 on the GPU: CUDA graphs and compiled decode pieces, LoRA merged / stacked / mixed, greedy texts
    identical to the model's own forward; bf16: prefill logits within bf16 rounding of its own forward."""
    engine = trained_engine(tokenizer, family, num_adapters=2)  # trained on CPU, then moved with its adapters
    gpu = HFEngine(family_model(tokenizer, family).cuda(), tokenizer,  # its own forward: transformers' (not Liger's)
                   ModelConfig(model=family, lora_rank=4, num_adapters=2, training_kernels="none"))
    for adapter in (0, 1):
        with tempfile.TemporaryDirectory() as path:
            engine.save_adapter(path, adapter)
            gpu.load_adapter(path, adapter)
    assert gpu.is_fast and gpu.device.type == "cuda"
    expected = [own_forward_texts(gpu, [PROMPT, OTHER_PROMPT], adapter) for adapter in (0, 1)]
    for merge in (True, False):
        for adapter in (0, 1):
            result = gpu.sample([PROMPT, OTHER_PROMPT], replace(GREEDY, merge_lora=merge), adapters=[adapter] * 2)
            assert texts(result) == [[t] * 2 for t in expected[adapter]], (family, merge, adapter)
    mixed = gpu.sample([PROMPT, PROMPT], GREEDY, adapters=[0, 1])
    assert texts(mixed) == [[expected[0][0]] * 2, [expected[1][0]] * 2]
    assert gpu.decoders.compile_error is None

    bf16 = HFEngine(family_model(tokenizer, family).to("cuda", torch.bfloat16), tokenizer,
                    ModelConfig(model=family, lora_rank=4, training_kernels="none"))
    ids = bf16.codec.encode_prompt(PROMPT)
    decoder = bf16.decoders.get(1, 2, GREEDY)
    decoder.load([ids])
    ours = decoder.prefill()[0]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        theirs = bf16.lm(input_ids=torch.tensor([ids], device="cuda")).logits[0, -1].float()
    assert ((ours - theirs).norm() / theirs.norm()).item() < 2e-2
