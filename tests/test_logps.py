"""alignbench.models.logps: padding-free (packed) scoring gives the same log-probs and gradients as
padded batches."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from alignbench.models import logps as logps_mod
from alignbench.models.logps import (pack_batch, pack_rows, packed_sequence_logps, packing_agrees, scored_logits,
                                     selects_logits, sequence_logps)


def test_pack_rows_first_fit_decreasing_by_hand():
    # longest first: 5 -> row 0 (1 left), 4 -> row 1 (2 left), 3 fits nowhere -> row 2, 2 -> row 1 at offset 4
    assert pack_rows([5, 3, 2, 4], 6) == ([0, 2, 1, 1], [0, 0, 4, 0], 3)
    assert pack_rows([6, 6], 6) == ([0, 1], [0, 0], 2)
    assert pack_rows([1, 1, 1], 6) == ([0, 0, 0], [0, 1, 2], 1)


def test_pack_batch_layout_by_hand():
    ids = torch.tensor([[11, 12, 13, 0], [21, 22, 0, 0], [31, 32, 33, 34]])
    attn = (ids != 0).long()
    resp = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1]])
    p = pack_batch(ids, attn, resp)
    # lengths 3, 2, 4 into width 4, longest first: 4 fills row 0; 3 opens row 1 (1 left);
    # 2 fits in neither and opens row 2
    assert p.input_ids.tolist() == [[31, 32, 33, 34], [11, 12, 13, 0], [21, 22, 0, 0]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 0]]
    assert p.sequence.tolist() == [[2, 2, 2, 2], [0, 0, 0, 0], [1, 1, 0, 0]]
    assert p.response_mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 0], [0, 1, 0, 0]]
    two = pack_batch(ids[1:2].repeat(2, 1), attn[1:2].repeat(2, 1), resp[1:2].repeat(2, 1))
    assert two.input_ids.tolist() == [[21, 22, 21, 22]] and two.position_ids.tolist() == [[0, 1, 0, 1]]


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=64))


def ragged_batch(left_pad: bool):
    g = torch.Generator().manual_seed(1)
    lengths, width = [12, 5, 9, 3, 7, 12], 12
    ids = torch.randint(1, 50, (len(lengths), width), generator=g)
    attn = torch.zeros_like(ids)
    resp = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        cols = slice(width - n, width) if left_pad else slice(0, n)
        attn[i, cols] = 1
        resp[i, cols] = 1
        resp[i, (width - n if left_pad else 0):(width - n if left_pad else 0) + 2] = 0  # a 2-token prompt
    return ids * attn, attn, resp


@pytest.mark.parametrize("left_pad", [False, True])
def test_packed_logps_and_gradients_equal_padded(left_pad):
    model = tiny_llama()
    ids, attn, resp = ragged_batch(left_pad)
    padded, n_padded = sequence_logps(model, ids, attn, resp)
    grads_padded = torch.autograd.grad(padded.sum(), list(model.parameters()))
    packed, n_packed = packed_sequence_logps(model, ids, attn, resp)
    grads_packed = torch.autograd.grad(packed.sum(), list(model.parameters()))
    assert torch.equal(n_packed, n_padded) and n_packed.tolist() == [10, 3, 7, 1, 5, 10]
    assert torch.allclose(packed, padded, atol=1e-5), (packed - padded).abs().max()
    assert pack_batch(ids, attn, resp).input_ids.shape[0] < ids.shape[0]  # it did pack
    for a, b in zip(grads_packed, grads_padded):
        assert torch.allclose(a, b, atol=1e-5)


def test_packing_is_checked_per_model():
    assert packing_agrees(tiny_llama(), 50, torch.device("cpu"))
    torch.manual_seed(0)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=64))
    assert packing_agrees(neox, 50, torch.device("cpu"))  # Pythia's architecture honours it too

    class IgnoresPositions(torch.nn.Module):
        """Mixes every earlier token of the row (across packed sequences): must be refused."""

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 50)

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
            x = self.emb(input_ids).cumsum(1)
            return SimpleNamespace(logits=x)

    assert not packing_agrees(IgnoresPositions(), 50, torch.device("cpu"))


def test_loaded_model_falls_back_to_padding_when_packing_disagrees(monkeypatch, workdir, caplog):
    from alignbench.models import loading as models_mod
    from alignbench.config import compose
    from alignbench.training.settings import run_settings
    from alignbench.training.setup import prepare
    from helpers import FAST

    assert prepare(run_settings(compose(FAST))).models.padding_free  # the built-in model packs
    assert not prepare(run_settings(compose([*FAST, "train.padding_free=false"]))).models.padding_free
    monkeypatch.setattr(models_mod, "packing_agrees", lambda *a, **k: False)
    monkeypatch.setattr(models_mod, "_PACKING_AGREES", {})  # the check is memoised per model and process
    assert not prepare(run_settings(compose(FAST))).models.padding_free
    assert "train.padding_free ignored" in caplog.text


def test_scored_logits_are_the_full_logits_at_the_kept_columns():
    model = tiny_llama()
    ids = torch.randint(1, 50, (2, 5), generator=torch.Generator().manual_seed(2))
    positions = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    keep = torch.tensor([[0, 1, 0, 1, 0], [0, 0, 1, 1, 0]], dtype=torch.bool)
    assert selects_logits(model)
    kept = scored_logits(model, ids, positions, keep)
    full = model(input_ids=ids, position_ids=positions, use_cache=False).logits  # no cache: packed rows' mask
    assert kept.shape == (4, 50)  # row-major: (0, 1), (0, 3), (1, 2), (1, 3)
    assert torch.allclose(kept, torch.stack([full[0, 1], full[0, 3], full[1, 2], full[1, 3]]), atol=1e-6)


def full_logits_only(monkeypatch):
    """`packed_sequence_logps` with the fallback of a model that cannot select: the LM head on every fed column."""
    monkeypatch.setattr(logps_mod, "selects_logits", lambda model: False)


@pytest.mark.parametrize("left_pad", [False, True])
def test_selected_logits_give_the_full_logits_log_probs_and_gradients(monkeypatch, left_pad):
    model = tiny_llama()
    ids, attn, resp = ragged_batch(left_pad)
    sums, counts = packed_sequence_logps(model, ids, attn, resp)
    grads = torch.autograd.grad(sums.sum(), list(model.parameters()))
    full_logits_only(monkeypatch)
    full_sums, full_counts = packed_sequence_logps(model, ids, attn, resp)
    full_grads = torch.autograd.grad(full_sums.sum(), list(model.parameters()))
    assert counts.tolist() == full_counts.tolist() == [10, 3, 7, 1, 5, 10]
    assert torch.allclose(sums, full_sums, rtol=0, atol=1e-5), (sums - full_sums).abs().max()
    for a, b in zip(grads, full_grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-5)


def test_a_model_that_ignores_logits_to_keep_is_scored_from_its_full_logits():
    class UniformLM(torch.nn.Module):
        """Equal logits over 4 tokens at every column: each scored token has log-prob -log 4."""

        config = SimpleNamespace(vocab_size=4)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, input_ids, position_ids=None, use_cache=False, **ignored):
            self.fed = input_ids
            return SimpleNamespace(logits=self.w + torch.zeros(*input_ids.shape, 4))

    model = UniformLM()
    ids = torch.tensor([[1, 2, 3, 0], [1, 2, 3, 3]])
    attn = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    resp = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    assert not selects_logits(model)  # it returns [rows, width, 4] whatever logits_to_keep says
    sums, counts = packed_sequence_logps(model, ids, attn, resp)
    assert counts.tolist() == [2, 2]
    assert torch.allclose(sums, torch.tensor([-2 * math.log(4), -2 * math.log(4)]))
    # each sequence less its last token (it scores nothing), longest first: [1, 2, 3] then [1, 2]
    assert model.fed.tolist() == [[1, 2, 3, 0], [1, 2, 0, 0]]


def test_selected_logits_for_neox_lora_and_bf16_autocast(monkeypatch):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=64))
    lora = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                   target_modules=["q_proj", "v_proj"]))
    bf16 = tiny_llama()
    ids, attn, resp = ragged_batch(left_pad=False)
    selected = {}
    for name, model in (("neox", neox), ("lora", lora), ("bf16", bf16)):
        assert selects_logits(model), name
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
            selected[name] = packed_sequence_logps(model, ids, attn, resp)[0]
    full_logits_only(monkeypatch)
    for name, model in (("neox", neox), ("lora", lora), ("bf16", bf16)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"), torch.no_grad():
            full = packed_sequence_logps(model, ids, attn, resp)[0]
        tol = 1e-2 if name == "bf16" else 1e-5  # sums near -39; bf16 logits round to ~3 digits (equal on CPU today)
        assert torch.allclose(selected[name], full, rtol=0, atol=tol), (name, (selected[name] - full).abs().max())


def test_compiled_models_keep_the_full_logits():
    model = tiny_llama()
    model._orig_mod = torch.nn.Identity()  # what torch.compile's wrapper has; no compiling here
    assert not selects_logits(model)
