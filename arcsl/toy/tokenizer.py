"""The toy model's tokenizer: one token per character, plus one token for each fixed DSL phrase.

Built with the `tokenizers` library and saved in Hugging Face format, so `AutoTokenizer` loads it
like any other. Characters are the printable ASCII set and the newline, so any prompt or program
text round-trips exactly; the program header, each `    g = name(g, ` line start, `, `, `)\\n` and
the footer are single tokens, which makes a drawing call 7-11 tokens and keeps sampling a
25-line program on a CPU fast.

Special tokens: `<pad>` (padding, never a target), `<s>` (prepended to every encoded text),
`</s>` (ends a completion), `<unk>` (any character outside the set).
"""

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

from arcsl.toy.tasks import FOOTER, HEADER, LINE_PREFIXES

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
CHARACTERS = tuple(chr(i) for i in range(32, 127)) + ("\n",)
PHRASES = (HEADER, *LINE_PREFIXES, ", ", ")\n", FOOTER)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer; ids are fixed: specials 0-3, characters 4-99, phrases after."""
    specials = (PAD, BOS, EOS, UNK)
    vocab = {token: i for i, token in enumerate(specials + CHARACTERS)}
    # BPE with no merges is a character-level model with an unknown token; Fuse joins tokens back with no spaces
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, normalized=False) for t in specials])
    backend.add_tokens([AddedToken(t, normalized=False) for t in PHRASES])
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, clean_up_tokenization_spaces=False)


def save_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Build the tokenizer and save it (tokenizer.json + tokenizer_config.json) into `path`."""
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(path))
    return tokenizer
