"""Tiny, randomly initialised Hugging Face chat models built locally for tests.

Nothing is downloaded: the tokenizer is a byte-level BPE whose vocabulary is the
256 byte symbols plus a few ChatML special tokens (no merges, so every string
encodes without unknown tokens), and the model is a 2-layer LlamaForCausalLM with
hidden size 32.  Weights are seeded, and the generation config is greedy, so the
output for a given prompt is deterministic on a given torch build; it suppresses
every non-printable byte, so replies are short printable-ASCII gibberish (at least
one character: end of turn is suppressed on the first step).

With ``phrases`` the model writes only those (each one token, e.g. whole sub-question
lines) and end of turn: a decomposer whose every reply parses, and whose sampled replies
differ, for tests of sampling and screening decompositions.
"""

from __future__ import annotations

import os
from pathlib import Path

# ChatML, the format of the default SmolLM2 model: role headers, <|im_end|> as end of turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer(phrases=()):
    """A PreTrainedTokenizerFast over raw bytes with ChatML specials and a chat template;
    each of ``phrases`` is one more token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte-level characters
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for sym in byte_symbols:
        vocab[sym] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    if phrases:
        fast.add_tokens([AddedToken(p, normalized=False, special=False) for p in phrases])
    return fast


def build_tiny_chat_model(path: str | os.PathLike, *, seed: int = 0, phrases=(), tokenizer=None) -> Path:
    """Save a tiny random LlamaForCausalLM chat model (config, weights, tokenizer,
    chat template, greedy generation config) into `path` and return it as a Path.

    Loadable with `AutoModelForCausalLM.from_pretrained(path)` /
    `AutoTokenizer.from_pretrained(path)` and servable by `transformers serve`.
    Takes well under a second.

    ``tokenizer``: a real tokenizer instead of the byte-level one (llama.cpp's converter
    recognises only tokenizers of published models, and its BPE needs merges, so the GGUF
    tests use the embedded model's). Its generation config is then plain greedy, which is
    what llama.cpp does too.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    byte_level = tokenizer is None
    tokenizer = build_tiny_tokenizer(phrases) if byte_level else tokenizer

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,  # the default 0.02 makes a tied tiny model echo its last input token
        tie_word_embeddings=False,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config).eval()
    finally:
        torch.random.set_rng_state(state)

    if not byte_level:
        model.generation_config = GenerationConfig(
            do_sample=False, max_new_tokens=16, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path
    specials = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    printable = {tokenizer.convert_tokens_to_ids(t) for t in tokenizer.tokenize("".join(map(chr, range(0x20, 0x7F))))}
    if phrases:
        printable = set(tokenizer.convert_tokens_to_ids(list(phrases)))
    model.generation_config = GenerationConfig(
        do_sample=False,
        max_new_tokens=16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # A random model may emit end-of-turn first; never let the reply be empty.
        begin_suppress_tokens=specials,
        # Only printable ASCII or end of turn after that: readable text, never broken UTF-8.
        suppress_tokens=sorted(set(range(len(tokenizer))) - printable - {tokenizer.eos_token_id}),
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
