"""Shared test fixtures."""

from __future__ import annotations

import pytest

_SENTENCES = [
    "Human: What is a good book to read?",
    "Assistant: I liked the film, the acting was great and the story was fun.",
    "The food was bad and the service was slow, but the music was lovely.",
    "User: Tell me about the weather today. Assistant: It is sunny and warm.",
    "A short review of a long movie with a happy ending and a sad middle.",
]


def make_tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on a few sentences (no download) with
    <|pad|>, <|bos|>, <|eos|> specials, wrapped in PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_SENTENCES * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>")


@pytest.fixture
def tiny_tokenizer():
    return make_tiny_tokenizer()
