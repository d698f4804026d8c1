"""Batched sampling with the KV cache and left padding; log-probs of what was sampled."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignbench.data.tokenizing import prompt_ids
from alignbench.models.logps import forward_token_logps


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


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
           max_prompt_length: int, batch_size: int, seed: int, device) -> Samples:
    """One sampled response per prompt (pure temperature sampling: no top-k/top-p, so the
    sampled distribution is the model's own and the KL estimate is valid at temperature 1)."""
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    chunks = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = prompt_ids(prompts[start:start + batch_size], tokenizer, max_prompt_length)
        # A seed per chunk: the same prompts get the same random stream for policy and reference.
        torch.manual_seed(seed + start)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed + start)
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device),
            do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
            max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
        ).cpu()
        resp = out[:, ids.shape[1]:]
        # Keep tokens up to and including the first EOS.
        is_eos = (resp == eos).long()
        after_eos = (is_eos.cumsum(-1) - is_eos) > 0
        resp_mask = (~after_eos).long()
        resp = resp.masked_fill(after_eos, tokenizer.pad_token_id)
        chunks.append((ids, mask, resp, resp_mask))
    model.train(was_training)

    prompt_width = max(c[0].shape[1] for c in chunks)
    resp_width = max(c[2].shape[1] for c in chunks)
    all_ids, all_mask, all_resp_mask, texts = [], [], [], []
    for ids, mask, resp, resp_mask in chunks:
        pad_left = prompt_width - ids.shape[1]
        pad_right = resp_width - resp.shape[1]
        ids = torch.nn.functional.pad(ids, (pad_left, 0), value=tokenizer.pad_token_id)
        mask = torch.nn.functional.pad(mask, (pad_left, 0), value=0)
        resp = torch.nn.functional.pad(resp, (0, pad_right), value=tokenizer.pad_token_id)
        resp_mask = torch.nn.functional.pad(resp_mask, (0, pad_right), value=0)
        all_ids.append(torch.cat([ids, resp], 1))
        all_mask.append(torch.cat([mask, resp_mask], 1))
        all_resp_mask.append(torch.cat([torch.zeros_like(mask), resp_mask], 1))
        texts += tokenizer.batch_decode(resp, skip_special_tokens=True)
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
