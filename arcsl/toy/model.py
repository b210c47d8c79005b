"""The small Llama that writes toy programs: its configuration, built from `ModelConfig` and the tokenizer.

The default (hidden 256, 6 layers, 8 heads, MLP 512, tied embeddings) has about 3.9M parameters,
15 MB in float32: small enough to ship in the repository and to sample 25-line programs on two CPU
cores. It is a stock `LlamaForCausalLM`, so the engine loads the saved folder with
`AutoModelForCausalLM` like any other model.
"""

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from arcsl.toy.config import ModelConfig

TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=2048)


def make_llama_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """The Hugging Face config: vocabulary and special ids from the tokenizer, sizes from `cfg`."""
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A freshly initialised model (seed torch first for a reproducible init)."""
    return LlamaForCausalLM(make_llama_config(cfg, tokenizer))


def num_parameters(model: LlamaForCausalLM) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
