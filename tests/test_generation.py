"""Sampling and the log-probs of what was sampled: seeded, EOS-truncated, equal to a plain forward;
responses decoded whole, with no replacement character for bytes that are not a character."""

from __future__ import annotations

import pytest
import torch

from alignbench.config import compose
from alignbench.models.generation import decode_response, response_token_logps, sample
from alignbench.models.builtin import build_tiny_model
from alignbench.training.settings import model_settings

PROMPTS = ["Human: What is a good book to read?", "The food was", "Tell me about the weather today.",
           "A short review", "User: hello", "Assistant: I liked the film, the acting was great"]
MAX_NEW = 12
CPU = torch.device("cpu")


@pytest.fixture
def model(tiny_tokenizer):
    """An untrained tiny model whose EOS logit is raised, so some samples end early and some do not."""
    cfg = compose(["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2"])
    m = build_tiny_model(model_settings(cfg.model).tiny, tiny_tokenizer, seed=0)
    eos_bias = torch.zeros(len(tiny_tokenizer))
    eos_bias[tiny_tokenizer.eos_token_id] = 3.0
    m.lm_head.register_forward_hook(lambda module, inputs, logits: logits + eos_bias)
    return m.eval()


def draw(model, tokenizer, seed, prompts=PROMPTS, batch_size=4):
    return sample(model, tokenizer, prompts, max_new_tokens=MAX_NEW, temperature=1.0, max_prompt_length=32,
                  batch_size=batch_size, seed=seed, device=CPU)


def test_same_seed_same_samples_other_seed_others(model, tiny_tokenizer):
    a, b, c = draw(model, tiny_tokenizer, 3), draw(model, tiny_tokenizer, 3), draw(model, tiny_tokenizer, 4)
    assert a.responses == b.responses
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.response_mask, b.response_mask)
    assert a.responses != c.responses
    # A seed per chunk: the first chunk's prompts get the same samples whatever follows them.
    first = draw(model, tiny_tokenizer, 3, prompts=PROMPTS[:4])
    assert first.responses == a.responses[:4]


def test_shapes_masks_and_eos_truncation(model, tiny_tokenizer):
    s = draw(model, tiny_tokenizer, 1)
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    n, width = s.input_ids.shape
    assert n == len(PROMPTS) and len(s.responses) == len(PROMPTS) and s.prompts == PROMPTS
    assert s.attention_mask.shape == s.response_mask.shape == (n, width)
    assert 0 < width - s.prompt_width <= MAX_NEW
    assert not s.response_mask[:, : s.prompt_width].any()
    assert torch.equal(s.lengths, s.response_mask.sum(-1))
    assert ((s.lengths >= 1) & (s.lengths <= MAX_NEW)).all()
    ended = 0
    for row in range(n):
        length = int(s.lengths[row])
        resp = s.input_ids[row, s.prompt_width:]
        mask = s.response_mask[row, s.prompt_width:]
        assert mask[:length].all() and not mask[length:].any()  # the response is one contiguous block
        assert (resp[:length - 1] != eos).all()  # no EOS inside a response
        if resp[length - 1] == eos:
            ended += 1
        else:
            assert length == MAX_NEW  # a response without EOS ran to the token budget
        assert (resp[length:] == pad).all() and not s.attention_mask[row, s.prompt_width + length:].any()
        whole = tiny_tokenizer.decode(resp[:length], skip_special_tokens=True)
        assert s.responses[row] == whole.replace("\ufffd", "")  # the untrained model samples stray byte tokens
    assert 0 < ended < n  # the fixture's EOS bias gives both kinds


def direct_response_logps(model, s, row) -> torch.Tensor:
    """Log-probs of row's response tokens from one unpadded forward pass: [BOS] prompt response."""
    keep = s.attention_mask[row].bool()
    ids = s.input_ids[row][keep]
    n_prompt = int(s.attention_mask[row, : s.prompt_width].sum())
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0].float()
    logps = torch.log_softmax(logits[:-1], -1).gather(-1, ids[1:, None]).squeeze(-1)
    return logps[n_prompt - 1:]  # position t predicts token t+1: the response starts at n_prompt


@pytest.mark.parametrize("batch_size", [2, 8])
def test_response_token_logps_equal_a_direct_forward(model, tiny_tokenizer, batch_size):
    s = draw(model, tiny_tokenizer, 2)
    got = response_token_logps(model, s, batch_size, CPU)
    assert got.shape == (len(PROMPTS), s.input_ids.shape[1] - s.prompt_width)
    for row in range(len(PROMPTS)):
        length = int(s.lengths[row])
        expected = direct_response_logps(model, s, row)
        assert expected.shape == (length,)
        torch.testing.assert_close(got[row, :length], expected, atol=1e-4, rtol=1e-4)
        assert (got[row, :length] < 0).all()
        assert (got[row, length:] == 0).all()  # nothing counted after EOS


def test_decode_response_keeps_whole_characters_only(tiny_tokenizer):
    ids = tiny_tokenizer("café €", add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids[-1:]) == "\ufffd"  # "€" is three byte-level tokens here
    assert decode_response(tiny_tokenizer, ids) == "café €"
    assert decode_response(tiny_tokenizer, ids[:-1]) == "café "  # cut inside "€": its first two bytes dropped
    assert decode_response(tiny_tokenizer, ids[:4]) == "caf"  # cut inside "é"
    stray = ids[:3] + ids[-1:] + ids[:3]  # a lone continuation byte sampled mid-text
    assert tiny_tokenizer.decode(stray) == "caf\ufffdcaf" and decode_response(tiny_tokenizer, stray) == "cafcaf"
    assert decode_response(tiny_tokenizer, ids + [tiny_tokenizer.eos_token_id]) == "café €"


def test_a_response_cut_inside_a_character_ends_on_a_whole_character(tiny_tokenizer):
    """A model that spells "café €" token by token, cut by the budget inside the euro sign."""
    plan = tiny_tokenizer("café €", add_special_tokens=False)["input_ids"]
    cfg = compose(["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2"])
    m = build_tiny_model(model_settings(cfg.model).tiny, tiny_tokenizer, seed=0).eval()
    steps = []

    def spell(module, inputs, logits):
        forced = torch.full_like(logits, -1e4)
        forced[..., plan[min(len(steps), len(plan) - 1)]] = 0.0
        steps.append(1)
        return forced

    m.lm_head.register_forward_hook(spell)
    s = sample(m, tiny_tokenizer, PROMPTS[:2], max_new_tokens=len(plan) - 1, temperature=1.0, max_prompt_length=32,
               batch_size=2, seed=0, device=CPU)
    assert s.input_ids[:, s.prompt_width:].tolist() == [plan[:-1]] * 2  # the tokens as sampled
    assert s.responses == ["café ", "café "]
