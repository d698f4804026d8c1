"""Log-probabilities of response tokens: the one quantity every objective is a function of."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from alignbench.data.batching import slices, trim_padding


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


def sequence_logps(model, input_ids, attention_mask, response_mask,
                   padding_free: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs [B], number of response tokens [B]).

    `response_mask[b, t]` is 1 where token t belongs to the response (EOS included).
    `padding_free`: pack the sequences into fewer rows first (`packed_sequence_logps`); the same
    numbers up to float rounding, with no compute spent on padding.
    """
    if padding_free:
        return packed_sequence_logps(model, input_ids, attention_mask, response_mask)
    per_token, _ = forward_token_logps(model, input_ids, attention_mask)
    mask = response_mask[:, 1:].to(per_token.dtype)
    return (per_token * mask).sum(-1), mask.sum(-1)


def pack_rows(lengths: list[int], width: int) -> tuple[list[int], list[int], int]:
    """First-fit decreasing bin packing of sequences into rows of `width` tokens.

    Returns (row of each sequence, its offset in the row, number of rows). Every length must
    be <= width. Deterministic: ties keep the input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[int] = []
    row, offset = [0] * len(lengths), [0] * len(lengths)
    for i in order:
        n = lengths[i]
        r = next((r for r, f in enumerate(free) if f >= n), len(free))
        if r == len(free):
            free.append(width)
        row[i], offset[i] = r, width - free[r]
        free[r] -= n
    return row, offset, len(free)


@dataclass
class PackedBatch:
    """Sequences packed several to a row: [rows, width] tensors and the sequence each token is from."""
    input_ids: torch.Tensor
    position_ids: torch.Tensor  # restart at 0 for every sequence; 0 on a row's trailing padding
    response_mask: torch.Tensor
    sequence: torch.Tensor  # index of the source row of each token (0 on padding)
    n_sequences: int
    targets: torch.Tensor | None = None  # `pack_batch`'s `targets`, packed alike


def pack_batch(input_ids, attention_mask, response_mask, targets=None) -> PackedBatch:
    """Pack a padded batch first-fit into rows as wide as the batch (see `packed_sequence_logps`);
    `targets`: one more [batch, width] tensor to pack alongside."""
    device = input_ids.device
    batch, width = input_ids.shape
    keep = attention_mask.bool()
    lengths = keep.sum(1).cpu()
    row, offset, n_rows = pack_rows(lengths.tolist(), width)
    starts = torch.tensor(row) * width + torch.tensor(offset)
    seq_begin = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(int(lengths.sum())) - seq_begin.repeat_interleave(lengths)
    dest = (starts.repeat_interleave(lengths) + within).to(device)

    def packed(values):
        out = torch.zeros(n_rows * width, dtype=values.dtype, device=device)
        out[dest] = values
        return out.view(n_rows, width)

    return PackedBatch(input_ids=packed(input_ids[keep]), position_ids=packed(within.to(device)),
                       response_mask=packed(response_mask[keep]),
                       sequence=packed(torch.arange(batch).repeat_interleave(lengths).to(device)), n_sequences=batch,
                       targets=None if targets is None else packed(targets[keep]))


def next_of(t: torch.Tensor) -> torch.Tensor:
    """t[:, i + 1] at column i (0 in the last column): each token's successor, in place of the token."""
    return torch.nn.functional.pad(t[:, 1:], (0, 1))


def packed_sequence_logps(model, input_ids, attention_mask, response_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` with the batch's sequences packed several to a row, no padding computed.

    Batches padded to their longest sequence spend ~40% of a step on padding on the built-in
    task. Packing first-fit into rows as wide as the batch and passing position ids that restart
    at 0 for each sequence (and no attention mask) makes transformers build a block-diagonal
    causal mask, so no token attends across sequences: the padding-free layout of TRL's
    `padding_free` and of flash-attention varlen kernels. Trailing padding in a row has position
    0 throughout, so each pad token is a one-token sequence of its own.

    Each packed token carries the token after it in its sequence as its target: a sequence's last
    token is not fed (its output would score nothing, and under a causal mask nothing else
    depends on it), its first is never a target (as in the padded layout, where it has no
    predecessor). Logits are computed only at the columns whose target is a response token
    (`scored_logits`).
    """
    has_next = attention_mask.bool() & next_of(attention_mask).bool()
    p = pack_batch(input_ids, has_next, next_of(response_mask), targets=next_of(input_ids))
    scores = p.response_mask != 0  # padding's is 0
    # selected before the forward: on a GPU the boolean indexing syncs while nothing is queued yet
    targets, index = p.targets[scores].unsqueeze(-1), p.sequence[scores]
    logits = scored_logits(model, p.input_ids, p.position_ids, scores).float()
    per_token = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    sums = per_token.new_zeros(p.n_sequences).index_add(0, index, per_token)
    counts = per_token.new_zeros(p.n_sequences).index_add(0, index, torch.ones_like(per_token))
    return sums, counts


def scored_logits(model, input_ids, position_ids, keep: torch.Tensor) -> torch.Tensor:
    """The logits [K, V] of the K `keep` columns of a [rows, width] batch, in row-major order.

    Through transformers' `logits_to_keep` (a boolean mask) where the model honours it: the LM
    head and the log-softmax then run on the scored columns only (prompts are a third of the
    built-in task's tokens, and the head is a large share of a small model's step). The full
    logits otherwise (`selects_logits`).
    """
    if selects_logits(model):
        return model(input_ids=input_ids, position_ids=position_ids, use_cache=False, logits_to_keep=keep).logits
    return model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[keep]


_SELECTS_LOGITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def selects_logits(model) -> bool:
    """Whether `model(..., logits_to_keep=<bool [rows, width]>)` returns the logits of those columns.

    transformers >= 5 decoders (Llama, Qwen2, GPTNeoX, ...) and peft wrappers of them do; an older
    or custom model may ignore the argument, reject it or read it as something else. Checked once
    per model object on a synthetic batch in eval mode (no dropout), against the full logits;
    compiled models keep the full logits (a boolean mask's data-dependent shape breaks the graph).
    """
    module = getattr(model, "module", model)  # DDP: check the wrapped model, not a collective forward
    if module not in _SELECTS_LOGITS:
        _SELECTS_LOGITS[module] = not hasattr(module, "_orig_mod") and _selected_logits_agree(module)
    return _SELECTS_LOGITS[module]


@torch.no_grad()
def _selected_logits_agree(model) -> bool:
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab_size:
        return False
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (2, 6), generator=torch.Generator().manual_seed(0)).to(device)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2]], device=device)
    keep = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 0, 1, 1, 0, 0]], dtype=torch.bool, device=device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        full = model(input_ids=ids, position_ids=positions, use_cache=False).logits[keep].float()
        kept = model(input_ids=ids, position_ids=positions, use_cache=False, logits_to_keep=keep).logits.float()
    except Exception:  # noqa: BLE001 - a model that rejects the argument keeps the full logits
        return False
    finally:
        for m, training in modes:
            m.training = training
    # 1% of the largest logit: above a bf16 (autocast) head's rounding, far below what other columns give
    tol = 1e-2 * float(full.abs().max())
    return kept.shape == full.shape and bool(torch.allclose(kept, full, rtol=0, atol=tol))


@torch.no_grad()
def packing_agrees(model, vocab_size: int, device, rtol: float = 1e-3) -> bool:
    """Whether `model` scores packed sequences as it scores padded ones.

    transformers decoders build the block-diagonal mask from restarting position ids; a model
    that ignores position ids, or an attention implementation that ignores the packed layout,
    would let tokens attend across sequences. Checked once per loaded model on a synthetic batch.
    """
    g = torch.Generator().manual_seed(0)
    lengths = (9, 5, 3, 7)
    width = max(lengths)
    ids = torch.randint(0, vocab_size, (len(lengths), width), generator=g)
    attn = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    resp = attn.clone()
    resp[:, :2] = 0
    ids, attn, resp = ids.to(device), attn.to(device), resp.to(device)
    padded, _ = sequence_logps(model, ids, attn, resp)
    packed, _ = packed_sequence_logps(model, ids, attn, resp)
    return bool(torch.allclose(packed.float(), padded.float(), rtol=rtol, atol=rtol))


def unpaired_logps(model, tokens: dict, batch_size: int, device, prefix: str = "",
                   padding_free: bool = False) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for sl in slices(len(tokens[f"{prefix}input_ids"]), batch_size):
            ids, attn, resp = trim_padding(*(tokens[f"{prefix}{k}"][sl] for k in ("input_ids", "attention_mask", "response_mask")))
            out.append(sequence_logps(model, ids.to(device), attn.to(device), resp.to(device),
                                      padding_free)[0].float().cpu())
    return torch.cat(out)
