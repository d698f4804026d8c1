"""Tokenising records: token ids with BOS first on prompts and EOS last on responses, the token
budget (`filter_records` drops what cannot fit and counts what is cut; `fit_prompt` cuts a long
prompt from the left), and the right-padded training tensors
(`tokenize_pairs`, `tokenize_unpaired`, `build_sequences`) and left-padded generation prompts
(`prompt_ids`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from alignbench.data.records import DataError, PreferenceRecord, UnpairedRecord


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"]) if texts else []


def prompt_tokens(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Prompt token ids with BOS first when the tokenizer has one (and the text does not already)."""
    bos = tokenizer.bos_token_id
    ids = token_ids(tokenizer, prompts)
    if bos is None:
        return ids
    return [p if p[:1] == [bos] else [bos] + p for p in ids]


def eos_id(tokenizer) -> int:
    """The EOS id every response ends with; a DataError when the tokenizer has none."""
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token; responses must end with one")
    return tokenizer.eos_token_id


def response_tokens(tokenizer, responses: list[str]) -> list[list[int]]:
    """Response token ids with EOS last."""
    eos = eos_id(tokenizer)
    return [r + [eos] for r in token_ids(tokenizer, responses)]


def pad_id(tokenizer) -> int:
    """The padding id: the tokenizer's pad token, else EOS (padding is masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)


def fit_prompt(tokens: list[int], max_prompt_length: int, bos: int | None) -> list[int]:
    """A prompt's tokens cut from the LEFT to `max_prompt_length`: BOS (when it leads) and the last
    tokens, the turns next to the reply. A prompt that fits is returned as it is."""
    if len(tokens) <= max_prompt_length:
        return tokens
    head = [bos] if bos is not None and tokens[:1] == [bos] else []
    return head + tokens[len(tokens) - (max_prompt_length - len(head)):]


def filter_records(records: list, tokenizer, max_length: int, max_prompt_length: int,
                   long_prompts: str = "drop") -> tuple[list, Counter, Counter]:
    """(kept records, drops by reason, truncations by part) under the token budget.

    A prompt over max_prompt_length tokens (BOS included) is dropped ('prompt_too_long') with
    `long_prompts='drop'`, or kept and counted in truncations['prompt'] with 'truncate_left'
    (tokenising then keeps its last tokens, `fit_prompt`). A prompt that leaves no response token
    within max_length is always dropped. Pairs whose responses become identical when cut to
    max_length are dropped ('chosen_equals_rejected': their loss would carry no signal); a response
    cut at max_length is counted in truncations['response']."""
    if not records:
        return [], Counter(), Counter()
    bos = tokenizer.bos_token_id
    prompts = prompt_tokens(tokenizer, [r.prompt for r in records])
    paired = isinstance(records[0], PreferenceRecord)
    responses = ([response_tokens(tokenizer, [r.chosen for r in records]),
                  response_tokens(tokenizer, [r.rejected for r in records])] if paired
                 else [response_tokens(tokenizer, [r.completion for r in records])])
    kept, drops, truncated = [], Counter(), Counter()
    for i, record in enumerate(records):
        n = len(prompts[i])
        fitted = len(fit_prompt(prompts[i], max_prompt_length, bos)) if long_prompts == "truncate_left" else n
        if fitted > max_prompt_length or fitted >= max_length:
            drops["prompt_too_long"] += 1
            continue
        room = max_length - fitted
        if paired and responses[0][i][:room] == responses[1][i][:room]:
            drops["chosen_equals_rejected"] += 1
            continue
        truncated["prompt"] += n > max_prompt_length
        truncated["response"] += any(len(side[i]) > room for side in responses)
        kept.append(record)
    return kept, drops, +truncated


def build_sequences(prompt_tokens: list[list[int]], completion_tokens: list[list[int]], pad_id: int,
                    max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion sequences: (input_ids, attention_mask, response_mask), each [N, T].

    Completions (EOS already appended by the caller) are cut so each sequence has at most
    max_length tokens; prompts are never cut. response_mask is 1 on the completion tokens
    (aligned with input_ids: the tokens whose log-probs are summed). T is the longest sequence."""
    if len(prompt_tokens) != len(completion_tokens):
        raise ValueError(f"{len(prompt_tokens)} prompts but {len(completion_tokens)} completions")
    sequences = []
    for prompt, completion in zip(prompt_tokens, completion_tokens):
        room = max_length - len(prompt)
        if room < 1:
            raise DataError(f"a prompt of {len(prompt)} tokens leaves no response token within "
                            f"max_length={max_length} (records must pass filter_records before tokenising)")
        sequences.append((prompt, completion[:room]))
    width = max((len(p) + len(c) for p, c in sequences), default=0)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (prompt, completion) in enumerate(sequences):
        n_p, n = len(prompt), len(prompt) + len(completion)
        input_ids[i, :n] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[i, :n] = 1
        response_mask[i, n_p:n] = 1
    return input_ids, attention_mask, response_mask


def _fitted_prompts(tokenizer, prompts: list[str], max_prompt_length: int) -> list[list[int]]:
    """Prompt tokens, each cut from the left to max_prompt_length (`fit_prompt`): only records
    kept by `filter_records` with long_prompts=truncate_left are ever cut here."""
    bos = tokenizer.bos_token_id
    return [fit_prompt(p, max_prompt_length, bos) for p in prompt_tokens(tokenizer, prompts)]


def tokenize_pairs(records: list[PreferenceRecord], tokenizer, max_length: int,
                   max_prompt_length: int) -> dict[str, torch.Tensor]:
    """[BOS] prompt + response + EOS for chosen and rejected, both padded to one width.

    Keys: chosen_input_ids, chosen_attention_mask, chosen_response_mask, the same for
    rejected_*, and prompt_lengths [N] (prompt tokens incl. BOS)."""
    prompts = _fitted_prompts(tokenizer, [r.prompt for r in records], max_prompt_length)
    chosen = response_tokens(tokenizer, [r.chosen for r in records])
    rejected = response_tokens(tokenizer, [r.rejected for r in records])
    ids, attn, resp = build_sequences(prompts + prompts, chosen + rejected, pad_id(tokenizer), max_length)
    n = len(records)
    return {
        "chosen_input_ids": ids[:n], "chosen_attention_mask": attn[:n], "chosen_response_mask": resp[:n],
        "rejected_input_ids": ids[n:], "rejected_attention_mask": attn[n:], "rejected_response_mask": resp[n:],
        "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long),
    }


def tokenize_unpaired(records: list[UnpairedRecord], tokenizer, max_length: int,
                      max_prompt_length: int) -> dict[str, Any]:
    """KTO examples: input_ids, attention_mask, response_mask, desirable (bool), prompt_lengths,
    plus the untruncated token lists prompt_tokens (BOS first) and completion_tokens (EOS last)
    for building mismatched (prompt_i, completion_j) sequences with `build_sequences`."""
    prompts = _fitted_prompts(tokenizer, [r.prompt for r in records], max_prompt_length)
    completions = response_tokens(tokenizer, [r.completion for r in records])
    ids, attn, resp = build_sequences(prompts, completions, pad_id(tokenizer), max_length)
    return {
        "input_ids": ids, "attention_mask": attn, "response_mask": resp,
        "desirable": torch.tensor([r.desirable for r in records], dtype=torch.bool),
        "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long),
        "prompt_tokens": prompts,
        "completion_tokens": completions,
    }


def prompt_ids(prompts: list[str], tokenizer, max_prompt_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LEFT-padded ([BOS] prompt) input_ids and attention_mask for generation. A prompt longer than
    max_prompt_length keeps BOS and its last tokens (the ones next to the reply)."""
    rows = _fitted_prompts(tokenizer, prompts, max_prompt_length)
    width = max((len(r) for r in rows), default=0)
    input_ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, width - len(r):] = 1
    return input_ids, attention_mask
