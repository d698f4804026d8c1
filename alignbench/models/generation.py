"""Sampling from the policy itself, batched with the KV cache and left padding; log-probs of what
was sampled; responses decoded whole.

`sample` runs its own ancestral-sampling loop instead of `model.generate`: every token is drawn
from softmax(logits / temperature) and nothing else. `generate` merges the model's own
`generation_config` into any configuration it is given (repetition penalty, no-repeat n-grams,
minimum length, top-k/top-p, forced or suppressed tokens, bad words...), so a hub model whose
config sets one of these would not be sampled from pi: the sampled KL estimate would be biased
and PPO's importance ratios off-policy. The loop draws the same random numbers in the same order
as `generate`'s multinomial sampling (one draw per row per step, finished rows padded).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from alignbench.data.tokenizing import prompt_ids
from alignbench.models.logps import forward_token_logps, position_ids_from_mask

REPLACEMENT_CHARACTER = "\ufffd"


@dataclass
class Samples:
    """Sampled responses to prompts, as text and as one left-padded token tensor."""

    prompts: list[str]
    responses: list[str]
    input_ids: torch.Tensor       # [B, P+R]: left-padded prompt, then response, then right padding
    attention_mask: torch.Tensor  # [B, P+R]
    response_mask: torch.Tensor   # [B, P+R]: 1 on response tokens (EOS included)
    prompt_width: int             # P: response tokens start at this column

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)


def _forward_arguments(model) -> tuple[str, bool]:
    """(name of the KV-cache argument, whether `logits_to_keep` is accepted) of the underlying
    transformers model: `past_key_values` before transformers 5, `cache` after."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    params = inspect.signature(type(base).forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def sample_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                  temperature: float, eos_id: int, pad_id: int) -> torch.Tensor:
    """Response tokens [B, <= max_new_tokens]: token t ~ softmax(logits_t / temperature), from the
    global torch RNG; after its EOS a row is padded with `pad_id`. Stops early once every row ended."""
    cache_arg, keeps_logits = _forward_arguments(model)
    extra = {"logits_to_keep": 1} if keeps_logits else {}
    positions = position_ids_from_mask(attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, **extra)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    tokens = []
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if temperature != 1.0:
            logits = logits / temperature
        token = torch.multinomial(torch.softmax(logits, -1), num_samples=1).squeeze(1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        tokens.append(token)
        done |= token == eos_id
        if len(tokens) == max_new_tokens or bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], 1)
        positions = positions[:, -1:] + 1
        cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        out = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=positions,
                    use_cache=True, **{cache_arg: cache}, **extra)
    return torch.stack(tokens, 1)


def decode_response(tokenizer, token_ids: list[int]) -> str:
    """The response's text, decoded whole (one `decode` of all its tokens, never token by token).

    Byte-level tokens can hold part of a character, and a sampled sequence of them need not be
    UTF-8: the token budget can cut a character in two, and a model can sample a stray byte
    token (the built-in model does). The decoder turns each such run of bytes into U+FFFD; those
    bytes are not text, so the replacement characters are dropped. The tokens themselves (what
    log-probs, KL and lengths are computed on) are kept as sampled."""
    return tokenizer.decode(token_ids, skip_special_tokens=True).replace(REPLACEMENT_CHARACTER, "")


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
           max_prompt_length: int, batch_size: int, seed: int, device) -> Samples:
    """One sampled response per prompt, from the model in eval mode (dropout off): pure
    temperature sampling, so at temperature 1 the samples are the model's own distribution and
    the KL estimate is valid."""
    was_training = model.training
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = prompt_ids(prompts[start:start + batch_size], tokenizer, max_prompt_length)
        # A seed per chunk: the same prompts get the same random stream for policy and reference.
        torch.manual_seed(seed + start)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed + start)
        resp = sample_tokens(model, ids.to(device), mask.to(device), max_new_tokens=max_new_tokens,
                             temperature=temperature, eos_id=eos, pad_id=pad).cpu()
        # Keep tokens up to and including the first EOS.
        is_eos = (resp == eos).long()
        after_eos = (is_eos.cumsum(-1) - is_eos) > 0
        resp_mask = (~after_eos).long()
        resp = resp.masked_fill(after_eos, pad)
        chunks.append((ids, mask, resp, resp_mask))
    model.train(was_training)
    return _assemble(prompts, chunks, tokenizer)


def _assemble(prompts: list[str], chunks: list, tokenizer) -> Samples:
    """The chunks' prompts and responses in one left-padded tensor, and each response's text."""
    pad = tokenizer.pad_token_id
    prompt_width = max(c[0].shape[1] for c in chunks)
    resp_width = max(c[2].shape[1] for c in chunks)
    all_ids, all_mask, all_resp_mask, texts = [], [], [], []
    for ids, mask, resp, resp_mask in chunks:
        texts += [decode_response(tokenizer, row[row_mask.bool()].tolist()) for row, row_mask in zip(resp, resp_mask)]
        pad_left = prompt_width - ids.shape[1]
        pad_right = resp_width - resp.shape[1]
        ids = torch.nn.functional.pad(ids, (pad_left, 0), value=pad)
        mask = torch.nn.functional.pad(mask, (pad_left, 0), value=0)
        resp = torch.nn.functional.pad(resp, (0, pad_right), value=pad)
        resp_mask = torch.nn.functional.pad(resp_mask, (0, pad_right), value=0)
        all_ids.append(torch.cat([ids, resp], 1))
        all_mask.append(torch.cat([mask, resp_mask], 1))
        all_resp_mask.append(torch.cat([torch.zeros_like(mask), resp_mask], 1))
    return Samples(prompts=list(prompts), responses=texts, input_ids=torch.cat(all_ids),
                   attention_mask=torch.cat(all_mask), response_mask=torch.cat(all_resp_mask),
                   prompt_width=prompt_width)


@torch.no_grad()
def response_token_logps(model, samples: Samples, batch_size: int, device) -> torch.Tensor:
    """Per-token log-probs of the sampled response tokens, [B, R] (0 outside the response)."""
    out = []
    for s in range(0, len(samples.prompts), batch_size):
        ids = samples.input_ids[s:s + batch_size].to(device)
        mask = samples.attention_mask[s:s + batch_size].to(device)
        per_token, _ = forward_token_logps(model, ids, mask)
        resp_mask = samples.response_mask[s:s + batch_size, 1:].to(device)
        # column t of per_token scores token t+1; response tokens start at prompt_width
        out.append((per_token * resp_mask)[:, samples.prompt_width - 1:])
    return torch.cat(out)
