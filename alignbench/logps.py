"""Log-probabilities of response tokens: the one quantity every objective is a function of."""

from __future__ import annotations

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so left- and right-padded batches score alike."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | ..t) for t < T-1, shape [B, T-1].

    gather minus logsumexp instead of a full log_softmax: the same numbers without a
    second [B, T, V] tensor, which matters for 150k-token vocabularies.
    """
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    return logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def forward_token_logps(model, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token log-probs [B, T-1], logits [B, T, V]) of a causal LM forward."""
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).logits
    return token_logps(logits, input_ids), logits


def sequence_logps(model, input_ids, attention_mask, response_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs [B], number of response tokens [B]).

    `response_mask[b, t]` is 1 where token t belongs to the response (EOS included).
    """
    per_token, _ = forward_token_logps(model, input_ids, attention_mask)
    mask = response_mask[:, 1:].to(per_token.dtype)
    return (per_token * mask).sum(-1), mask.sum(-1)
