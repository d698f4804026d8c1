"""Batch order and batch shape, shared by every loop that walks over tokenised examples."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch


def index_batches(n: int, batch_size: int, permutation: Callable[[int], Sequence[int]]) -> Iterator[torch.Tensor]:
    """Endless batches of example indices. Each epoch is a fresh `permutation(n)` appended to what
    is left of the previous one, so every example is seen once before any is seen twice and no
    batch is short. The caller owns the random generator behind `permutation`."""
    order = torch.empty(0, dtype=torch.long)
    while True:
        if len(order) < batch_size:
            order = torch.cat([order, torch.as_tensor(permutation(n), dtype=torch.long)])
        yield order[:batch_size]
        order = order[batch_size:]


def slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most `batch_size` covering range(n) (scoring in order, no shuffling)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor):
    """Drop the columns that are padding in every row: tokenised sets are right-padded to the
    whole set's longest sequence, a batch only to its own."""
    width = int(attention_mask.sum(0).nonzero().max()) + 1
    return input_ids[:, :width], attention_mask[:, :width], response_mask[:, :width]
