"""Scoring preference pairs: `pair_logps`, each side as its own (padded or packed) sequences or, with
`train.share_prompt`, chosen and rejected in one row that holds their prompt once.

A preference pair's two sequences share their prompt: scored as two padded (or packed) sequences,
the prompt's tokens go through the model twice. On multi-turn transcripts the prompt is most of a
pair's tokens (`bench` measures the share: `real_shared_prefix_tokens`), so a row

    [prompt | chosen response | rejected response]

with the rejected response's positions continuing from the prompt's end (not from the chosen
response's), and an attention mask under which the rejected response sees the prompt and itself but
not the chosen response, gives both sequences' log-probs with the prompt computed once (forward and
backward). This is the "shared prefix" layout of prefix-sharing attention kernels, here as a plain
4D mask passed to the model (transformers uses a 4D mask as given).

The prompt's last column predicts the first token of both responses: its logits are read twice.
Logits are computed only at the columns that predict a response token (`logps.scored_logits`).
`shared_prompt_agrees` checks once per model that this layout scores as the padded one does.
"""

from __future__ import annotations

import weakref

import torch

from alignbench.data.batching import slices, trim_padding
from alignbench.data.tokenizing import build_sequences
from alignbench.models.logps import selects_logits, sequence_logps


def pair_logps(model, tokens: dict, batch_size: int, device, padding_free: bool = False,
               share_prompt: bool = False) -> dict[str, torch.Tensor]:
    """Summed response log-probs and token counts of chosen and rejected, no gradient; `share_prompt`:
    both sides of a pair in one row (`shared_prompt_pair_logps`), else each side's sequences on their own."""
    out = {k: [] for k in ("chosen", "chosen_n", "rejected", "rejected_n")}

    def side(name, sl):  # trimmed on the host
        return trim_padding(*(tokens[f"{name}_{k}"][sl] for k in ("input_ids", "attention_mask", "response_mask")))

    with torch.no_grad():
        for sl in slices(len(tokens["chosen_input_ids"]), batch_size):
            if share_prompt:
                scored = shared_prompt_pair_logps(model, side("chosen", sl), side("rejected", sl), device)
            else:
                chosen, rejected = (sequence_logps(model, *(t.to(device) for t in side(s, sl)), padding_free)
                                    for s in ("chosen", "rejected"))
                scored = (chosen[0], rejected[0], chosen[1], rejected[1])
            for key, value in zip(("chosen", "rejected", "chosen_n", "rejected_n"), scored):
                out[key].append(value.float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def shared_prompt_rows(chosen: tuple, rejected: tuple) -> dict:
    """Per pair, one row [prompt | chosen | rejected] from right-padded (input_ids, attention_mask,
    response_mask) of each side with the same prompt tokens. Returns input_ids, position_ids,
    segment (0 prompt, 1 chosen, 2 rejected, 3 padding) [pairs, width] and the scored tokens as
    (row, column whose logits predict it, target token, which side) lists."""
    (c_ids, c_attn, c_resp), (r_ids, r_attn, r_resp) = chosen, rejected
    rows, scored = [], {"row": [], "column": [], "target": [], "side": []}
    for b in range(c_ids.shape[0]):
        c_len, r_len = int(c_attn[b].sum()), int(r_attn[b].sum())
        p = int((c_resp[b, :c_len] == 0).sum())  # the prompt: the tokens before the response
        if p != int((r_resp[b, :r_len] == 0).sum()) or not torch.equal(c_ids[b, :p], r_ids[b, :p]):
            raise ValueError(f"pair {b}: chosen and rejected do not share their prompt tokens")
        c, r = c_ids[b, p:c_len], r_ids[b, p:r_len]
        ids = torch.cat([c_ids[b, :c_len], r])
        positions = torch.cat([torch.arange(c_len), p + torch.arange(len(r))])
        segment = torch.cat([torch.zeros(p, dtype=torch.long), torch.ones(len(c), dtype=torch.long),
                             torch.full((len(r),), 2, dtype=torch.long)])
        rows.append((ids, positions, segment))
        for side, tokens, start in ((0, c, p), (1, r, c_len)):
            # token k of a response is predicted by the column before it: the prompt's last for k = 0
            columns = [p - 1] + list(range(start, start + len(tokens) - 1))
            scored["row"] += [b] * len(tokens)
            scored["column"] += columns
            scored["target"] += tokens.tolist()
            scored["side"] += [side] * len(tokens)
    width = max(len(ids) for ids, _, _ in rows)
    out = {"input_ids": torch.zeros(len(rows), width, dtype=torch.long),
           "position_ids": torch.zeros(len(rows), width, dtype=torch.long),
           "segment": torch.full((len(rows), width), 3, dtype=torch.long)}
    for b, (ids, positions, segment) in enumerate(rows):
        out["input_ids"][b, : len(ids)], out["position_ids"][b, : len(ids)] = ids, positions
        out["segment"][b, : len(ids)] = segment
    return out | {k: torch.tensor(v, dtype=torch.long) for k, v in scored.items()}


def shared_prompt_mask(segment: torch.Tensor) -> torch.Tensor:
    """[rows, 1, width, width] boolean mask, True where query i may attend key j: causal, and
    within the query's own sequence (its response and the prompt); a padding column attends only itself."""
    width = segment.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment.device).tril()
    q, k = segment.unsqueeze(2), segment.unsqueeze(1)
    same = (q == k) | ((k == 0) & (q != 3))
    own = torch.eye(width, dtype=torch.bool, device=segment.device)
    return ((causal & same) | own).unsqueeze(1)


def _model_mask(model, mask: torch.Tensor) -> torch.Tensor:
    """The boolean mask as the model's attention wants it: boolean for SDPA, additive for eager."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", "sdpa") == "eager":
        return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    return mask


def shared_prompt_pair_logps(model, chosen: tuple, rejected: tuple, device=None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          torch.Tensor, torch.Tensor]:
    """(chosen log-probs [B], rejected log-probs [B], chosen token counts [B], rejected counts [B]):
    `sequence_logps` of each side, with the prompt computed once per pair (`shared_prompt_rows`).
    The sides are best given on the host: the rows are built there and moved to `device` (default:
    the sides' device) once."""
    device = chosen[0].device if device is None else device
    rows = {k: v.to(device) for k, v in shared_prompt_rows(tuple(t.cpu() for t in chosen),
                                                           tuple(t.cpu() for t in rejected)).items()}
    n = chosen[0].shape[0]
    keep = torch.zeros_like(rows["input_ids"], dtype=torch.bool)
    keep[rows["row"], rows["column"]] = True
    # each scored token's place among the kept columns, which come out in row-major order
    place = torch.cumsum(keep.flatten(), 0).view_as(keep) - 1
    index = place[rows["row"], rows["column"]]
    mask = _model_mask(model, shared_prompt_mask(rows["segment"]))
    kwargs = dict(input_ids=rows["input_ids"], position_ids=rows["position_ids"], attention_mask=mask, use_cache=False)
    if selects_logits(model):
        logits = model(**kwargs, logits_to_keep=keep).logits
    else:
        logits = model(**kwargs).logits[keep]
    logits = logits.float()[index]
    per_token = logits.gather(-1, rows["target"].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    which = rows["row"] + n * rows["side"]  # chosen of pair b at b, rejected at n + b
    sums = per_token.new_zeros(2 * n).index_add(0, which, per_token)
    counts = per_token.new_zeros(2 * n).index_add(0, which, torch.ones_like(per_token))
    return sums[:n], sums[n:], counts[:n], counts[n:]


_AGREES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def shared_prompt_agrees(model, vocab_size: int, device, rtol: float = 1e-3) -> bool:
    """Whether `model` scores the shared-prompt layout as it scores padded sequences (a model whose
    attention ignores a custom 4D mask, or that has no position ids, does not). Checked once per
    model object on two synthetic pairs, in eval mode (no dropout)."""
    module = getattr(model, "module", model)
    if module in _AGREES:
        return _AGREES[module]
    g = torch.Generator().manual_seed(0)
    tokens = lambda n: torch.randint(0, vocab_size, (n,), generator=g).tolist()  # noqa: E731
    prompts = [tokens(5), tokens(3)]
    sides = [build_sequences(prompts, [tokens(a), tokens(b)], 0, 64) for a, b in ((4, 1), (2, 6))]
    was_training = module.training
    module.eval()
    try:
        padded = [sequence_logps(module, *(t.to(device) for t in side))[0] for side in sides]
        shared = shared_prompt_pair_logps(module, sides[0], sides[1], device)[:2]
        agrees = all(torch.allclose(a.float(), b.float(), rtol=rtol, atol=1e-3) for a, b in zip(padded, shared))
    except Exception:  # noqa: BLE001 - a model that rejects a 4D mask or position ids scores padded
        agrees = False
    finally:
        module.train(was_training)
    _AGREES[module] = agrees
    return agrees
