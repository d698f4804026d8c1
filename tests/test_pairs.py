"""alignbench.models.pairs: a pair's chosen and rejected scored in one row holding their prompt once
(`train.share_prompt`): the layout worked out by hand, and the same log-probs and gradients as
scoring the two sides apart."""

from __future__ import annotations

import pytest
import torch

from alignbench.data.records import PreferenceRecord
from alignbench.data.tokenizing import tokenize_pairs
from alignbench.models.builtin import build_tiny_model
from alignbench.models.logps import sequence_logps
from alignbench.models.pairs import (pair_logps, shared_prompt_agrees, shared_prompt_mask, shared_prompt_pair_logps,
                                     shared_prompt_rows)
from alignbench.models.settings import TinySizes
from helpers import FAST, count_calls, make_tiny_tokenizer


def side(ids: list[list[int]], prompt_lengths: list[int]):
    """Right-padded (input_ids, attention_mask, response_mask) of token lists whose first tokens are the prompt."""
    width = max(map(len, ids))
    out = [torch.zeros(len(ids), width, dtype=torch.long) for _ in range(3)]
    for b, (seq, p) in enumerate(zip(ids, prompt_lengths)):
        out[0][b, : len(seq)], out[1][b, : len(seq)], out[2][b, p: len(seq)] = torch.tensor(seq), 1, 1
    return tuple(out)


def test_the_shared_row_by_hand():
    # pair 0: prompt [5, 6, 7], chosen [8, 9], rejected [10]; pair 1: prompt [4], chosen [3], rejected [2, 1]
    chosen = side([[5, 6, 7, 8, 9], [4, 3]], [3, 1])
    rejected = side([[5, 6, 7, 10], [4, 2, 1]], [3, 1])
    rows = shared_prompt_rows(chosen, rejected)
    assert rows["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10], [4, 3, 2, 1, 0, 0]]
    # the rejected reply's positions continue from the prompt's end, not from the chosen reply's
    assert rows["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 1, 2, 0, 0]]
    assert rows["segment"].tolist() == [[0, 0, 0, 1, 1, 2], [0, 1, 2, 2, 3, 3]]
    # each response token, the column predicting it: the prompt's last column predicts both first tokens
    assert list(zip(rows["row"].tolist(), rows["column"].tolist(), rows["target"].tolist(), rows["side"].tolist())) == [
        (0, 2, 8, 0), (0, 3, 9, 0), (0, 2, 10, 1), (1, 0, 3, 0), (1, 0, 2, 1), (1, 2, 1, 1)]
    mask = shared_prompt_mask(rows["segment"])[:, 0].int()
    assert mask[0].tolist() == [[1, 0, 0, 0, 0, 0],
                                [1, 1, 0, 0, 0, 0],
                                [1, 1, 1, 0, 0, 0],
                                [1, 1, 1, 1, 0, 0],
                                [1, 1, 1, 1, 1, 0],
                                [1, 1, 1, 0, 0, 1]]  # the rejected token sees the prompt and itself, not chosen
    assert mask[1, 4].tolist() == [0, 0, 0, 0, 1, 0] and mask[1, 3].tolist() == [1, 0, 1, 1, 0, 0]


def test_a_pair_whose_sides_have_different_prompts_is_refused():
    with pytest.raises(ValueError, match="pair 0: chosen and rejected do not share their prompt tokens"):
        shared_prompt_rows(side([[5, 6, 8]], [2]), side([[5, 7, 8]], [2]))


@pytest.fixture(scope="module")
def model_and_pairs():
    tokenizer = make_tiny_tokenizer(400)
    model = build_tiny_model(TinySizes(400, 32, 64, 2, 2, 256), tokenizer, seed=0).eval()
    records = [PreferenceRecord("Human: What is a good book to read?" * (i + 1), " I liked the film" * (i % 3 + 1),
                                " The food was bad" + " and slow" * i) for i in range(5)]
    tokens = tokenize_pairs(records, tokenizer, 200, 150)
    keys = ("input_ids", "attention_mask", "response_mask")
    return model, tokens, *(tuple(tokens[f"{s}_{k}"] for k in keys) for s in ("chosen", "rejected"))


def test_the_shared_row_scores_and_trains_as_the_two_sequences(model_and_pairs):
    model, _, chosen, rejected = model_and_pairs
    model.zero_grad()
    (c, c_n), (r, r_n) = sequence_logps(model, *chosen), sequence_logps(model, *rejected)
    (c.sum() - 2 * r.sum()).backward()
    apart = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    sc, sr, sc_n, sr_n = shared_prompt_pair_logps(model, chosen, rejected)
    (sc.sum() - 2 * sr.sum()).backward()
    shared = [p.grad.clone() for p in model.parameters()]
    assert torch.equal(sc_n, c_n) and torch.equal(sr_n, r_n) and c_n.min() > 0
    assert torch.allclose(sc, c, atol=1e-4) and torch.allclose(sr, r, atol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(apart, shared))
    assert max(float(g.abs().max()) for g in shared) > 1e-3  # there was a gradient to compare


def test_pair_logps_with_the_shared_prompt_and_the_model_check(model_and_pairs):
    model, tokens, _, _ = model_and_pairs
    apart, shared = pair_logps(model, tokens, 2, torch.device("cpu")), pair_logps(model, tokens, 2, "cpu", share_prompt=True)
    assert set(shared) == {"chosen", "rejected", "chosen_n", "rejected_n"} and shared["chosen"].shape == (5,)
    assert all(torch.allclose(apart[k], shared[k], atol=1e-4) for k in apart)
    assert shared_prompt_agrees(model, 400, torch.device("cpu")) is True

    class IgnoresTheMask(torch.nn.Module):  # attends across the whole row: the check says no
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask=None, **kwargs):
            if attention_mask is not None and attention_mask.dim() == 4:
                attention_mask = None
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    assert shared_prompt_agrees(IgnoresTheMask(), 400, torch.device("cpu")) is False


def test_a_dpo_run_with_the_shared_prompt_trains_as_the_default_layout(workdir, monkeypatch):
    """train.share_prompt=true on the built-in task: checked at load and used, and the first steps'
    losses are the default layout's up to float rounding (one row per pair, the prompt computed once)."""
    from alignbench.config import compose
    from alignbench.tracking.null import NullTracker
    from alignbench.training import offline
    from alignbench.training.run import train

    shared_steps = count_calls(monkeypatch, offline, "shared_prompt_pair_logps")
    losses = {}
    for share in (False, True):
        tracker = NullTracker()
        result = train(compose([*FAST, "train.max_steps=3", "train.log_every=1", f"train.share_prompt={share}"]),
                       tracker)
        losses[share] = [m["train/loss"] for _, m in tracker.metrics if "train/loss" in m]
        assert result.metrics["eval/kl"] is not None
    assert len(shared_steps) == 3  # every training step of the second run used the shared row
    assert len(losses[True]) == 3 and losses[True] == pytest.approx(losses[False], abs=1e-4)
    assert losses[True][0] == pytest.approx(0.6931, abs=1e-3)  # step 1: policy == reference, the DPO loss is log 2
