"""Prompts and completions as token ids: the chat template, the end tokens, the padding id.

A `ChatPrompt` is rendered with the model's chat template and the generation prompt, then the
assistant prefix (the assistant turn is prefilled); training examples are rendered the same way and
the completion tokenised apart, so train and sample texts match token for token. Raw text goes
through the tokenizer as it is; token ids pass untouched (benchmarks run without a tokenizer).

What is not covered: tokenizers without a chat template for `ChatPrompt` (use plain text or token ids).
"""

from arcsl.engine.types import ChatPrompt, Prompt

Tokenized = tuple[list[int], int]  # token ids (prompt + completion + end token), number of prompt tokens


class PromptCodec:
    """Encodes prompts and training examples for one model; knows its end and padding tokens.

    Args:
        lm: the Hugging Face causal LM (its config and generation config name the EOS tokens).
        tokenizer: its tokenizer, or None when prompts and completions are token ids.
    """

    def __init__(self, lm, tokenizer):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids(lm, tokenizer)
        self.end_of_turn_id = end_of_turn_id(tokenizer) if tokenizer is not None else self.eos_ids[0]
        stop = set(self.eos_ids) | {self.end_of_turn_id}
        self.stop_ids = sorted(stop)  # a sample ends at any of these
        self.pad_id = pick_pad_id(tokenizer, lm.config.vocab_size, stop)

    def render(self, prompt: ChatPrompt) -> str:
        """The prompt text the model sees: chat template, generation prompt, assistant prefix."""
        text = self.tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        return text + prompt.assistant_prefix

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer: pass prompts and completions as token ids")
        if isinstance(prompt, ChatPrompt):
            # the template already starts with BOS; the tokenizer must not add a second one
            return self.tokenizer(self.render(prompt), add_special_tokens=False).input_ids
        return self.tokenizer(prompt).input_ids

    def encode_example(self, prompt: Prompt, completion: str | list[int]) -> Tokenized:
        """(prompt ids + completion ids + end token, number of prompt ids). Prompt and completion are
        tokenised apart, as at sampling time, where the completion's tokens follow the prompt's."""
        prompt_ids = self.encode_prompt(prompt)
        if isinstance(completion, str):
            completion = self.tokenizer(completion, add_special_tokens=False).input_ids
        end = self.end_of_turn_id if isinstance(prompt, ChatPrompt) else self.eos_ids[0]
        return prompt_ids + completion + [end], len(prompt_ids)

    def decode(self, token_lists: list[list[int]]) -> list[str]:
        """Texts of completions' tokens ("" each without a tokenizer)."""
        if self.tokenizer is None:
            return [""] * len(token_lists)
        return self.tokenizer.batch_decode(token_lists, skip_special_tokens=False)


def end_of_turn_id(tokenizer) -> int:
    """The token the chat template writes after an assistant message (Llama-3: <|eot_id|>), else EOS."""
    if tokenizer.chat_template is None:
        return tokenizer.eos_token_id
    marker = "ARCSL-END-PROBE"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False)
    after = tokenizer(text.split(marker, 1)[1], add_special_tokens=False).input_ids
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return after[0] if after and after[0] in special else tokenizer.eos_token_id


def pick_pad_id(tokenizer, vocab_size: int, end_ids: set[int]) -> int:
    """A padding id that is no end token: padding with EOS would teach the model never to stop."""
    if tokenizer is not None:
        for candidate in (tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|finetune_right_pad_id|>")):
            if candidate is not None and candidate not in end_ids and candidate != tokenizer.unk_token_id:
                return candidate
    # a pad is never attended (right padding, causal mask) nor a target, so any other id is as good
    return next(i for i in range(vocab_size) if i not in end_ids)


def eos_ids(lm, tokenizer) -> list[int]:
    """EOS ids from the tokenizer and the generation config (Llama-3.1 lists three), first = tokenizer's."""
    def as_list(x) -> list:
        return x if isinstance(x, list) else [x]

    configured = as_list(lm.generation_config.eos_token_id) if lm.generation_config is not None else []
    first = [tokenizer.eos_token_id] if tokenizer is not None else []
    ids = [i for i in first + configured + as_list(lm.config.eos_token_id) if i is not None]
    if not ids:
        raise ValueError("the model has no EOS token (tokenizer, generation config and config all lack one)")
    return list(dict.fromkeys(ids))
