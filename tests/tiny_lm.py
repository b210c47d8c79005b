"""A tiny Llama and a tiny byte-level BPE tokenizer with a Llama-3-style chat template, built in code:
the engine tests never download anything."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from arcsl.config import ModelConfig
from arcsl.engine.hf import HFEngine
from arcsl.engine.types import ChatPrompt

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "<|finetune_right_pad_id|>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
            "{{ m['content'] }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CORPUS = ["def transform(input_grid):\n    return input_grid\n", "```python\nprint('hello world')\n```\n",
          "Black Blue Red Green Yellow\n", "Here is the code:\n"] * 10

PROMPT = ChatPrompt([{"role": "system", "content": "You solve puzzles."},
                     {"role": "user", "content": "Black Blue Red"}], assistant_prefix="Here is the code:\n")
OTHER_PROMPT = ChatPrompt([{"role": "user", "content": "Green Green Yellow Black Black Blue"}])
COMPLETION = "```python\ndef transform(input_grid):\n    return input_grid\n```\nDone."


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                  pad_token="<|finetune_right_pad_id|>")
    tok.chat_template = TEMPLATE
    return tok


def tiny_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """Two layers, grouped-query attention (4 heads, 2 KV heads); weights from `seed`."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.1, attn_implementation="sdpa")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_engine(tokenizer, seed: int = 0, **lora) -> HFEngine:
    return HFEngine(tiny_llama(tokenizer, seed), tokenizer, ModelConfig(model="tiny", lora_rank=8, **lora))


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny matrices: a second thread only adds contention (10x slower on a loaded 2-core machine)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
